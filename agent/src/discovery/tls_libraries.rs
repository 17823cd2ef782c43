//! TLS libraries of watched processes: the OpenSSL and GnuTLS files mapped
//! by a process (`/proc/PID/maps`: `libssl.so*`, `libgnutls.so*`) and
//! executables that embed OpenSSL and
//! export its symbols (Debian's `node`), each read once per file (device,
//! inode), with the file offsets of the functions the uprobes attach to.
//! Blocking reads: the discovery thread's business.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Functions whose plaintext is captured, and the one whose syscalls tie an
/// SSL object to its socket before the first read or write.
pub const TLS_SYMBOLS: &[&str] = &["SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex", "SSL_do_handshake"];

/// GnuTLS's functions of the same shape (session, buffer, length) -> bytes,
/// and the OpenSSL name whose programs they get: `gnutls_record_recv` ->
/// SSL_read, `gnutls_record_send` -> SSL_write, `gnutls_handshake` ->
/// SSL_do_handshake.
pub const GNUTLS_SYMBOLS: &[(&str, &str)] = &[
    ("gnutls_record_recv", "SSL_read"),
    ("gnutls_record_send", "SSL_write"),
    ("gnutls_handshake", "SSL_do_handshake"),
];
/// Files remembered as read (TLS or not): beyond, the oldest verdicts are
/// forgotten and such a file may be read again.
pub const MAX_FILES_SEEN: usize = 4096;

/// How a TLS library came into a process; the label of its counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LibraryKind {
    /// A shared `libssl`.
    Shared,
    /// OpenSSL linked into the executable itself.
    Embedded,
    /// A shared `libgnutls` (wget, GnuTLS builds of curl, exim, ...).
    GnuTls,
}

impl LibraryKind {
    pub fn label(self) -> &'static str {
        match self {
            LibraryKind::Shared => "libssl",
            LibraryKind::Embedded => "embedded",
            LibraryKind::GnuTls => "gnutls",
        }
    }
}

/// One file to attach the TLS uprobes to.
#[derive(Clone, Debug)]
pub struct TlsLibrary {
    /// A path that opens the file now (through the process's root, so files
    /// in containers resolve too).
    pub path: PathBuf,
    /// The path as the process maps it (for logs).
    pub mapped_as: PathBuf,
    pub dev: u64,
    pub inode: u64,
    pub kind: LibraryKind,
    /// (symbol, file offset) of each of [`TLS_SYMBOLS`] the file exports.
    pub offsets: Vec<(&'static str, u64)>,
    /// Why the uprobes cannot go on it (a `libssl` that is not OpenSSL's).
    pub problem: Option<String>,
}

/// Reads maps and ELF files, remembering which files were read.
#[derive(Debug, Default)]
pub struct TlsFinder {
    /// (dev, inode) -> whether it was a TLS library.
    seen: HashMap<(u64, u64), bool>,
}

impl TlsFinder {
    /// The TLS libraries of `pid` not reported before. A process that is gone
    /// or unreadable has none.
    pub fn scan(&mut self, pid: u32) -> Vec<TlsLibrary> {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let mut candidates: Vec<(PathBuf, LibraryKind)> = Vec::new();
        if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            for (path, kind) in shared_tls_libraries(&maps) {
                if !candidates.iter().any(|(p, _)| p == &path) {
                    candidates.push((path, kind));
                }
            }
        }
        if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            candidates.push((exe, LibraryKind::Embedded));
        }
        let mut found = Vec::new();
        for (mapped_as, kind) in candidates {
            let path = root.join(mapped_as.strip_prefix("/").unwrap_or(&mapped_as));
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let key = (meta.dev(), meta.ino());
            if self.seen.contains_key(&key) {
                continue;
            }
            if self.seen.len() >= MAX_FILES_SEEN {
                self.seen.clear();
            }
            let (offsets, problem) = match symbol_offsets(&path, kind) {
                Ok(o) => (o, None),
                Err(e) => (Vec::new(), Some(format!("cannot read it: {e}"))),
            };
            // SSL_read and SSL_write at least; an executable without them
            // simply does not embed OpenSSL.
            let usable = ["SSL_read", "SSL_write"].iter().all(|s| offsets.iter().any(|(n, _)| n == s));
            self.seen.insert(key, usable);
            let problem = match (usable, kind) {
                (true, _) => None,
                (false, LibraryKind::Embedded) => continue,
                // A libssl that is not OpenSSL's (or is damaged): reported.
                (false, LibraryKind::Shared) => problem.or_else(|| Some("it exports no SSL_read/SSL_write".into())),
                (false, LibraryKind::GnuTls) => {
                    problem.or_else(|| Some("it exports no gnutls_record_recv/gnutls_record_send".into()))
                }
            };
            found.push(TlsLibrary { path, mapped_as, dev: key.0, inode: key.1, kind, offsets, problem });
        }
        found
    }
}

/// Paths of the `libssl` and `libgnutls` files a `/proc/PID/maps` text maps.
pub fn shared_tls_libraries(maps: &str) -> Vec<(PathBuf, LibraryKind)> {
    let mut out: Vec<(PathBuf, LibraryKind)> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let Some(path) = line.split_whitespace().nth(5) else { continue };
        if !path.starts_with('/') {
            continue;
        }
        let name = Path::new(path).file_name().and_then(|n| n.to_str()).unwrap_or("");
        let kind = if name.starts_with("libssl") {
            LibraryKind::Shared
        } else if name.starts_with("libgnutls.so") {
            LibraryKind::GnuTls
        } else {
            continue;
        };
        if name.contains(".so") && !out.iter().any(|(p, _)| p == Path::new(path)) {
            out.push((PathBuf::from(path), kind));
        }
    }
    out
}

/// File offsets of the [`TLS_SYMBOLS`] an ELF file defines (symbol table
/// or dynamic symbols); for GnuTLS, of its [`GNUTLS_SYMBOLS`], under their
/// OpenSSL names.
pub fn symbol_offsets(path: &Path, kind: LibraryKind) -> Result<Vec<(&'static str, u64)>, String> {
    let map = super::runtime_hooks::Mapped::open(path)?;
    if kind != LibraryKind::GnuTls {
        return super::runtime_hooks::symbol_offsets(map.bytes(), TLS_SYMBOLS);
    }
    let names: Vec<&'static str> = GNUTLS_SYMBOLS.iter().map(|(g, _)| *g).collect();
    let found = super::runtime_hooks::symbol_offsets(map.bytes(), &names)?;
    Ok(found
        .into_iter()
        .filter_map(|(g, at)| GNUTLS_SYMBOLS.iter().find(|(n, _)| *n == g).map(|(_, ssl)| (*ssl, at)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libssl_paths_come_from_maps_once_each() {
        let maps = "7f0-7f1 r--p 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3\n\
                    7f1-7f2 r-xp 00001000 08:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3\n\
                    7f2-7f3 r-xp 00000000 08:01 124 /usr/lib/x86_64-linux-gnu/libcrypto.so.3\n\
                    7f3-7f4 rw-p 00000000 00:00 0 [heap]\n\
                    7f4-7f5 r-xp 00000000 08:01 125 /opt/app/libssl-abc123.so.3 (deleted)\n\
                    7f5-7f6 r-xp 00000000 08:01 126 /usr/lib/x86_64-linux-gnu/libgnutls.so.30.34.3\n\
                    7f6-7f7 r-xp 00000000 08:01 127 /usr/lib/x86_64-linux-gnu/libgnutls-dane.so.0\n";
        assert_eq!(
            shared_tls_libraries(maps),
            vec![
                (PathBuf::from("/usr/lib/x86_64-linux-gnu/libssl.so.3"), LibraryKind::Shared),
                (PathBuf::from("/opt/app/libssl-abc123.so.3"), LibraryKind::Shared),
                (PathBuf::from("/usr/lib/x86_64-linux-gnu/libgnutls.so.30.34.3"), LibraryKind::GnuTls),
            ]
        );
    }

    /// The host's libssl, when it has one: every symbol found, at distinct offsets.
    #[test]
    fn the_hosts_libssl_exports_every_symbol() {
        let Some(path) = ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/aarch64-linux-gnu/libssl.so.3"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            return;
        };
        let offsets = symbol_offsets(path, LibraryKind::Shared).unwrap();
        assert_eq!(offsets.len(), TLS_SYMBOLS.len(), "{offsets:?}");
        let mut at: Vec<u64> = offsets.iter().map(|(_, o)| *o).collect();
        at.sort_unstable();
        at.dedup();
        assert_eq!(at.len(), TLS_SYMBOLS.len());
    }

    /// The host's libgnutls, when it has one: its three functions, under
    /// the OpenSSL names whose programs they get.
    #[test]
    fn the_hosts_libgnutls_exports_the_record_functions() {
        let Some(path) = ["/usr/lib/x86_64-linux-gnu/libgnutls.so.30", "/usr/lib/aarch64-linux-gnu/libgnutls.so.30"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            return;
        };
        let mut names: Vec<&str> = symbol_offsets(path, LibraryKind::GnuTls).unwrap().iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        assert_eq!(names, ["SSL_do_handshake", "SSL_read", "SSL_write"]);
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        let path = std::env::temp_dir().join(format!("periscope-not-elf-{}", std::process::id()));
        std::fs::write(&path, b"#!/bin/sh\n").unwrap();
        assert!(symbol_offsets(&path, LibraryKind::Shared).is_err());
        assert!(symbol_offsets(&path, LibraryKind::GnuTls).is_err());
        let _ = std::fs::remove_file(&path);
    }
}
