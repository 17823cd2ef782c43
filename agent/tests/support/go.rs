//! Go fixtures (agent/tests/fixtures/go) built with Debian's golang-go and
//! golang-github-lib-pq-dev: GOPATH mode, offline.
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `fixtures/go/<name>.go` into `<out>` under a per-test-process
/// directory, with `flags` (e.g. `-ldflags=-s -w`); returns its path.
pub fn build(name: &str, out: &str, flags: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/go/{name}.go"));
    let dir = std::env::temp_dir().join(format!("periscope-go-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(out);
    let status = Command::new("go")
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&path)
        .arg(&src)
        .env("GOPATH", "/usr/share/gocode")
        .env("GO111MODULE", "off")
        .env("GOCACHE", dir.join("cache"))
        .env_remove("GOFLAGS")
        .status()
        .expect("go is needed (cargo xtask deps installs golang-go and golang-github-lib-pq-dev)");
    assert!(status.success(), "go build {name} {flags:?} failed");
    path
}
