//! Compiles the kernel programs in `ebpf/` with clang and generates the Rust
//! twins of `ebpf/include/events.h` with bindgen, both into OUT_DIR.
use std::{env, path::PathBuf, process::Command};

/// Target architectures the kernel programs build for: Rust's name (also
/// `uname -m`, and the directory of that architecture's `vmlinux.h` under
/// `ebpf/include/`) and the kernel's (`__TARGET_ARCH_*` of bpf_tracing.h).
const ARCHES: &[(&str, &str)] = &[("x86_64", "x86"), ("aarch64", "arm64")];

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let ebpf = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../ebpf");
    let clang = env::var("PERISCOPE_CLANG").unwrap_or_else(|_| "clang-19".into());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap();

    println!("cargo:rerun-if-changed={}", ebpf.display());
    println!("cargo:rerun-if-env-changed=PERISCOPE_CLANG");

    let Some(&(_, kernel_arch)) = ARCHES.iter().find(|(rust, _)| *rust == arch) else {
        let known: Vec<&str> = ARCHES.iter().map(|(rust, _)| *rust).collect();
        println!("cargo::error=the kernel programs build for {}, not {arch}", known.join(", "));
        return;
    };
    let vmlinux = ebpf.join("include").join(&arch);
    if !vmlinux.join("vmlinux.h").exists() {
        println!(
            "cargo::error=no ebpf/include/{arch}/vmlinux.h; on an {arch} host with BTF run: \
             bpftool btf dump file /sys/kernel/btf/vmlinux format c > ebpf/include/{arch}/vmlinux.h"
        );
        return;
    }

    let object = out.join("periscope.bpf.o");
    let status = Command::new(&clang)
        .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{kernel_arch}"))
        .arg(format!("-I{}", vmlinux.display()))
        .arg(format!("-I{}", ebpf.join("include").display()))
        .arg(format!("-I{}", ebpf.join("src").display()))
        .arg("-c")
        .arg(ebpf.join("src/periscope.bpf.c"))
        .arg("-o")
        .arg(&object)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {clang} ({e}); install clang-19 and libbpf-dev (cargo xtask deps)"));
    assert!(status.success(), "{clang} failed to compile ebpf/src/periscope.bpf.c");

    bindgen::Builder::default()
        .header(ebpf.join("include/events.h").display().to_string())
        .allowlist_type("periscope_.*")
        .allowlist_var("PERISCOPE_.*")
        .default_enum_style(bindgen::EnumVariation::Rust { non_exhaustive: false })
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(true)
        .generate()
        .expect("bindgen failed on ebpf/include/events.h")
        .write_to_file(out.join("events.rs"))
        .expect("cannot write events.rs");
}
