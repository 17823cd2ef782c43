//! Throw-away database servers for the SQL integration tests: a PostgreSQL
//! 15 cluster (initdb + postgres, run as user `postgres`) and a MariaDB
//! server (mariadb-install-db + mariadbd, run as user `mysql`), each with its
//! own data directory under the temp dir, its own port on 127.0.0.1 and its
//! own unix socket. The system's default clusters and services are never
//! touched. Setup statements go through the unix socket (no TCP, so never
//! seen by periscope). Dropping the guard stops the server and removes the
//! directory, pass or fail.
#![allow(dead_code)]

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::agent::{free_port, wait_for};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The application role and password every client logs in with.
pub const USER: &str = "app";
pub const PASSWORD: &str = "secret";
/// The application database (db.namespace).
pub const DATABASE: &str = "shop";

fn user_ids(name: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, name]).output().expect("id");
        assert!(out.status.success(), "no system user {name}: install the server package (cargo xtask deps)");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

fn own_dir(tag: &str, user: &str) -> (PathBuf, u32, u32) {
    let dir = std::env::temp_dir().join(format!("periscope-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (uid, gid) = user_ids(user);
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    (dir, uid, gid)
}

fn check(what: &str, out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops `child` with `signal`, then SIGKILL after `grace`.
fn stop(child: &mut Child, signal: i32, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SAFETY: kill(2) on the pid of a child we started and have not reaped.
    unsafe { libc::kill(child.id() as i32, signal) };
    let start = Instant::now();
    while start.elapsed() < grace {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A PostgreSQL 15 server (the `postgres` process itself is our child, so
/// its pid is the postmaster's). Clients authenticate with SCRAM over TCP.
pub struct Postgres {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl Postgres {
    /// initdb + postgres on a free port; creates role `app` (password
    /// `secret`) owning database `shop` with table `unicorn`.
    pub fn start(tag: &str) -> Postgres {
        Self::start_with(tag, &[])
    }

    /// The same with extra settings (`name=value`, as `-c` options; they win
    /// over the defaults above).
    pub fn start_with(tag: &str, settings: &[&str]) -> Postgres {
        let (dir, uid, gid) = own_dir(&format!("pg-{tag}"), "postgres");
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, "postgres-admin\n").unwrap();
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        let data = dir.join("data");
        check(
            "initdb",
            Command::new(format!("{PG_BIN}/initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"])
                .args(["-E", "UTF8", "--locale=C.UTF-8"])
                .arg(format!("--pwfile={}", pwfile.display()))
                .uid(uid)
                .gid(gid)
                .current_dir(&dir)
                .output()
                .expect("cannot run initdb (cargo xtask deps installs postgresql)"),
        );
        let port = free_port();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        std::os::unix::fs::chown(dir.join("server.log"), Some(uid), Some(gid)).unwrap();
        let child = Command::new(format!("{PG_BIN}/postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", &format!("port={port}")])
            .args(["-c", &format!("unix_socket_directories={}", dir.display())])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=80", "-c", "shared_buffers=16MB", "-c", "ssl=off"])
            .args(settings.iter().flat_map(|s| ["-c", s]))
            .uid(uid)
            .gid(gid)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start postgres");
        let mut pg = Postgres { port, dir, child };
        let sock = pg.dir.join(format!(".s.PGSQL.{port}"));
        wait_for("postgres to accept connections", Duration::from_secs(30), || {
            if let Ok(Some(status)) = pg.child.try_wait() {
                panic!("postgres exited: {status}\n{}", log_tail(&pg.dir.join("server.log")));
            }
            (sock.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).then_some(())
        });
        // The server may listen before it accepts logins (startup recovery).
        wait_for("postgres to accept logins", Duration::from_secs(30), || {
            pg.try_admin("postgres", "SELECT 1").ok().map(|_| ())
        });
        pg.admin("postgres", &format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"));
        pg.admin("postgres", &format!("CREATE DATABASE {DATABASE} OWNER {USER}"));
        pg.admin(
            DATABASE,
            &format!("CREATE TABLE unicorn (id serial PRIMARY KEY, name text UNIQUE NOT NULL); ALTER TABLE unicorn OWNER TO {USER}"),
        );
        pg
    }

    /// The postmaster's pid (backends are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn try_admin(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(format!("{PG_BIN}/psql"))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", db])
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `sql` as superuser over the unix socket; returns psql's
    /// unaligned output.
    pub fn admin(&self, db: &str, sql: &str) -> String {
        self.try_admin(db, sql).unwrap_or_else(|e| panic!("admin SQL {sql:?} failed: {e}"))
    }

    /// libpq keyword/value connection string over TCP.
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DATABASE}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: fast shutdown (backends are told to end).
        stop(&mut self.child, libc::SIGINT, Duration::from_secs(15));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A MariaDB server; clients log in as `app`/`secret` (mysql_native_password)
/// over TCP.
pub struct MariaDb {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl MariaDb {
    pub fn start(tag: &str) -> MariaDb {
        let (dir, _, _) = own_dir(&format!("mariadb-{tag}"), "mysql");
        let data = dir.join("data");
        check(
            "mariadb-install-db",
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args(["--user=mysql", "--auth-root-authentication-method=normal", "--skip-test-db"])
                .args(["--skip-name-resolve", "--innodb-buffer-pool-size=16M"])
                .current_dir(&dir)
                .output()
                .expect("cannot run mariadb-install-db (cargo xtask deps installs mariadb-server)"),
        );
        let port = free_port();
        let sock = dir.join("mysqld.sock");
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", sock.display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", dir.join("server.log").display()))
            .args(["--bind-address=127.0.0.1", "--user=mysql", "--skip-log-bin", "--skip-name-resolve"])
            .args(["--innodb-buffer-pool-size=16M", "--max-connections=20"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start mariadbd");
        let mut db = MariaDb { port, dir, child };
        wait_for("mariadbd to accept logins", Duration::from_secs(60), || {
            if let Ok(Some(status)) = db.child.try_wait() {
                panic!("mariadbd exited: {status}\n{}", log_tail(&db.dir.join("server.log")));
            }
            (sock.exists() && db.try_admin("SELECT 1").is_ok()).then_some(())
        });
        db.admin(&format!(
            "CREATE DATABASE {DATABASE}; CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT ALL ON {DATABASE}.* TO '{USER}'@'%'; \
             CREATE TABLE {DATABASE}.unicorn (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64) NOT NULL UNIQUE)"
        ));
        db
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    fn try_admin(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-u", "root", "-N", "-B", "-e", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `sql` as root over the unix socket.
    pub fn admin(&self, sql: &str) -> String {
        self.try_admin(sql).unwrap_or_else(|e| panic!("admin SQL {sql:?} failed: {e}"))
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        stop(&mut self.child, libc::SIGTERM, Duration::from_secs(20));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
