//! The TLS uprobes (ebpf/src/tls.h): loaded with the rest of the object,
//! attached to each OpenSSL file the discovery thread finds, once per file
//! (the kernel fires a uprobe for every process mapping that inode), up to
//! [`MAX_TLS_FILES`] files. A program that does not load, or an attach that
//! fails, costs TLS plaintext and nothing else: one log line, one count.
use std::collections::HashSet;

use aya::{
    programs::{uprobe::UProbeScope, ProgramError, UProbe},
    Ebpf,
};

use crate::discovery::tls_libraries::TlsLibrary;

/// Files the TLS uprobes attach to at most (each costs 10 uprobes).
pub const MAX_TLS_FILES: usize = 64;

/// (entry program, return program, symbol).
const TLS_PROGRAMS: &[(&str, &str, &str)] = &[
    ("handle_ssl_read", "handle_ssl_read_ret", "SSL_read"),
    ("handle_ssl_write", "handle_ssl_write_ret", "SSL_write"),
    ("handle_ssl_read_ex", "handle_ssl_read_ex_ret", "SSL_read_ex"),
    ("handle_ssl_write_ex", "handle_ssl_write_ex_ret", "SSL_write_ex"),
    ("handle_ssl_do_handshake", "handle_ssl_do_handshake_ret", "SSL_do_handshake"),
];

/// Why the TLS uprobes of one file are not (all) attached.
#[derive(Debug, thiserror::Error)]
pub enum TlsAttachError {
    #[error("the TLS uprobe programs did not load (see the log at startup)")]
    NotLoaded,
    #[error("already {MAX_TLS_FILES} TLS libraries instrumented")]
    TooMany,
    #[error("attaching {program} to {symbol} failed: {source}")]
    Attach {
        program: &'static str,
        symbol: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
}

/// Which files carry the TLS uprobes.
#[derive(Debug, Default)]
pub struct TlsProbes {
    loaded: bool,
    attached: HashSet<(u64, u64)>,
}

impl TlsProbes {
    /// Loads the TLS programs; on failure TLS connections stay opaque, as
    /// before, and the agent goes on.
    pub fn load(ebpf: &mut Ebpf) -> Self {
        let mut load = || -> Result<(), String> {
            for &(entry, ret, _) in TLS_PROGRAMS {
                for program in [entry, ret] {
                    let prog: &mut UProbe = ebpf
                        .program_mut(program)
                        .ok_or_else(|| format!("program {program} is missing from the eBPF object"))?
                        .try_into()
                        .map_err(|e| format!("{program}: {e}"))?;
                    prog.load().map_err(|e| format!("loading {program} failed: {e}"))?;
                }
            }
            Ok(())
        };
        match load() {
            Ok(()) => Self { loaded: true, attached: HashSet::new() },
            Err(e) => {
                tracing::warn!("continuing without TLS plaintext capture: {e}");
                Self::default()
            }
        }
    }

    /// Whether `library`'s file carries the uprobes already.
    pub fn is_attached(&self, library: &TlsLibrary) -> bool {
        self.attached.contains(&(library.dev, library.inode))
    }

    /// Attaches every program whose symbol the file exports; the error is
    /// the first failure (the rest are tried anyway).
    pub fn attach(&mut self, ebpf: &mut Ebpf, library: &TlsLibrary) -> Result<usize, TlsAttachError> {
        if !self.loaded {
            return Err(TlsAttachError::NotLoaded);
        }
        if self.is_attached(library) {
            return Ok(0);
        }
        if self.attached.len() >= MAX_TLS_FILES {
            return Err(TlsAttachError::TooMany);
        }
        let mut first_error = None;
        let mut attached = 0;
        for &(entry, ret, symbol) in TLS_PROGRAMS {
            let Some(&(_, offset)) = library.offsets.iter().find(|(s, _)| *s == symbol) else { continue };
            for program in [entry, ret] {
                let result = match ebpf.program_mut(program).map(<&mut UProbe>::try_from) {
                    Some(Ok(prog)) => prog.attach(offset, &library.path, UProbeScope::AllProcesses).map(|_| ()),
                    Some(Err(e)) => Err(e),
                    None => Err(ProgramError::UnexpectedProgramType),
                };
                match result {
                    Ok(()) => attached += 1,
                    Err(source) => {
                        first_error.get_or_insert(TlsAttachError::Attach { program, symbol, source: Box::new(source) });
                    }
                }
            }
        }
        // Tried once per file, whatever came of it: attaching again would
        // double the programs that did attach.
        self.attached.insert((library.dev, library.inode));
        match first_error {
            Some(e) => Err(e),
            None => Ok(attached),
        }
    }

    pub fn attached_files(&self) -> usize {
        self.attached.len()
    }
}
