//! The measured servers, each in the bench's own temp dir, each stopped when
//! dropped: nginx (1 worker, `return 200`), a Node.js `http` server, a Go
//! net/http server (`go_server.go`, built here), and a PostgreSQL cluster of
//! its own (initdb + pg_ctl as user postgres; the system clusters are never
//! touched).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};

use super::util::{children, wait_port};

pub struct Nginx {
    child: Child,
    pub port: u16,
}

impl Nginx {
    pub fn start(dir: &Path, port: u16) -> anyhow::Result<Self> {
        Self::start_with(dir.join("nginx"), port, "")
    }

    /// nginx serving HTTPS (TLS 1.3, a self-signed certificate made here
    /// with the openssl CLI), the plaintext through libssl's SSL_read and
    /// SSL_write, which periscope's TLS uprobes read.
    pub fn start_tls(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let dir = dir.join("nginx-tls");
        std::fs::create_dir_all(&dir)?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let ok = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running openssl req")?
            .success();
        anyhow::ensure!(ok, "openssl req failed to make a self-signed certificate");
        let tls = format!(
            " ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.3",
            cert.display(),
            key.display()
        );
        Self::start_with(dir, port, &tls)
    }

    /// `listen` takes `listen_extra` after the address (TLS settings).
    fn start_with(dir: PathBuf, port: u16, listen_extra: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 120s;\n\
                 client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n\
                 uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
                 server {{\n    listen 127.0.0.1:{port}{listen_extra};\n    location / {{ default_type text/plain; return 200 \"hello\\n\"; }}\n  }}\n}}\n",
                d = dir.display()
            ),
        )?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .stdin(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let n = Nginx { child, port };
        wait_port(port, Duration::from_secs(10))?;
        Ok(n)
    }

    /// The master and its worker.
    pub fn pids(&self) -> Vec<u32> {
        let mut p = vec![self.child.id()];
        p.extend(children(self.child.id()));
        p
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of master and worker.
        super::util::stop_child(&mut self.child, libc::SIGQUIT);
    }
}

pub struct Node {
    child: Child,
    pub port: u16,
}

impl Node {
    pub fn start(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let script = dir.join("server.js");
        std::fs::write(
            &script,
            "const http = require('http');\n\
             const body = 'hello\\n';\n\
             const server = http.createServer((req, res) => {\n\
             \x20 res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': body.length });\n\
             \x20 res.end(body);\n});\n\
             server.keepAliveTimeout = 120000;\n\
             server.listen(Number(process.env.PORT), '127.0.0.1');\n",
        )?;
        let child = Command::new("node")
            .arg(&script)
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .spawn()
            .context("starting node")?;
        let n = Node { child, port };
        wait_port(port, Duration::from_secs(10))?;
        Ok(n)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct GoServer {
    child: Child,
    pub port: u16,
}

impl GoServer {
    /// Builds `go_server.go` as agent/tests/support/go.rs builds the test
    /// fixtures (Debian's golang-go, GOPATH mode, offline), then starts it.
    pub fn start(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bench/go_server.go");
        let dir = dir.join("go");
        std::fs::create_dir_all(&dir)?;
        let bin = dir.join("go_server");
        let out = Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .env("GOPATH", "/usr/share/gocode")
            .env("GO111MODULE", "off")
            .env("GOCACHE", dir.join("cache"))
            .env_remove("GOFLAGS")
            .stdin(Stdio::null())
            .output()
            .context("running go build (cargo xtask deps installs golang-go)")?;
        if !out.status.success() {
            bail!("go build {} failed: {}", src.display(), String::from_utf8_lossy(&out.stderr));
        }
        let child =
            Command::new(&bin).arg(port.to_string()).stdin(Stdio::null()).spawn().context("starting go_server")?;
        let g = GoServer { child, port };
        wait_port(port, Duration::from_secs(10))?;
        Ok(g)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for GoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Postgres {
    bindir: PathBuf,
    data: PathBuf,
    pub port: u16,
}

/// The newest installed PostgreSQL's bin directory.
pub fn pg_bindir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed under /usr/lib/postgresql")?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists() && p.join("pgbench").exists())
        .collect();
    versions.sort();
    versions.pop().map(|v| v.1).context("no PostgreSQL with initdb and pgbench under /usr/lib/postgresql")
}

fn as_postgres(cmd: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", cmd.display()))?;
    if !out.status.success() {
        bail!(
            "{} {:?} failed: {}{}",
            cmd.display(),
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Postgres {
    /// initdb + start on 127.0.0.1:`port` + `pgbench -i -s scale`.
    pub fn start(dir: &Path, port: u16, scale: u32) -> anyhow::Result<Self> {
        let bindir = pg_bindir()?;
        let root = dir.join("pg");
        std::fs::create_dir_all(&root)?;
        // The temp dir itself is root's; postgres needs to reach its own subdir.
        Command::new("chmod").arg("755").arg(dir).status()?;
        Command::new("chown").args(["postgres:postgres"]).arg(&root).status()?;
        let data = root.join("data");
        let d = data.to_str().context("temp path is not UTF-8")?.to_owned();
        as_postgres(&bindir.join("initdb"), &["-D", &d, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])?;
        let pg = Postgres { bindir: bindir.clone(), data, port };
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=50",
            root.display()
        );
        as_postgres(
            &bindir.join("pg_ctl"),
            &["-D", &d, "-l", root.join("log").to_str().unwrap(), "-o", &opts, "-w", "-t", "60", "start"],
        )?;
        let out = Command::new(bindir.join("pgbench"))
            .args([
                "-i",
                "-q",
                "-s",
                &scale.to_string(),
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "postgres",
            ])
            .stdin(Stdio::null())
            .output()
            .context("pgbench -i")?;
        if !out.status.success() {
            bail!("pgbench -i failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(pg)
    }

    pub fn pgbench(&self) -> PathBuf {
        self.bindir.join("pgbench")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(
            &self.bindir.join("pg_ctl"),
            &["-D", self.data.to_str().unwrap_or(""), "-m", "fast", "-w", "stop"],
        );
    }
}
