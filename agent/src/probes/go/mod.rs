//! Go runtime hooks (issue #12): in a Go process the goroutine carries the
//! current request. Per tracked Go process: its executable is inspected on
//! the inspector thread ([`spawn_inspector`]: file reads stay out of the
//! ring-buffer loop), then uprobes go on the goroutine creations (the call
//! of runqput after newproc1, or newproc1's RET instructions),
//! runtime.goexit0 and net/http's persistConn writeLoop and
//! roundTrip (when linked in) of that process only, and
//! its runtime offsets into `go_procs`, after which the kernel names the
//! goroutine of every socket event (`ebpf/src/go_runtime.h`). When
//! crypto/tls is linked in, tls.Conn's Read, Write and handshakes get
//! uprobes at entry and at every RET too: the TLS plaintext of that
//! process (`ebpf/src/tls.h`). A binary that
//! cannot be read or understood gets one log line and a count; the process
//! keeps per-thread context.
pub mod elf;

use std::{collections::HashMap as StdHashMap, num::NonZeroU32, sync::mpsc as std_mpsc, sync::Arc};

use aya::{
    maps::{HashMap, MapData},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
        UProbe,
    },
    Ebpf,
};

use super::{program_load, take, ProbeError, Probes};
use crate::probes::wire::periscope_go_offsets;
pub use elf::{GoBinary, InspectError};

// SAFETY: a plain C struct of integers (events.h), valid for any bytes.
unsafe impl aya::Pod for periscope_go_offsets {}

const NEWPROC1_RET: &str = "handle_go_newproc1_ret";
const NEWG_CALL: &str = "handle_go_newg_call";
const GOEXIT0: &str = "handle_go_goexit0";
const HTTP_WRITE_LOOP: &str = "handle_go_http_writeloop";
const HTTP_ROUND_TRIP: &str = "handle_go_http_roundtrip";
const TLS_READ: &str = "handle_go_tls_read";
const TLS_READ_RET: &str = "handle_go_tls_read_ret";
const TLS_WRITE: &str = "handle_go_tls_write";
const TLS_WRITE_RET: &str = "handle_go_tls_write_ret";
const TLS_HANDSHAKE: &str = "handle_go_tls_handshake";
const TLS_HANDSHAKE_RET: &str = "handle_go_tls_handshake_ret";
const TLS_PROGRAMS: [&str; 6] = [TLS_READ, TLS_READ_RET, TLS_WRITE, TLS_WRITE_RET, TLS_HANDSHAKE, TLS_HANDSHAKE_RET];

/// Executables remembered by the inspector (by device and inode).
const MAX_CACHED_BINARIES: usize = 256;
/// Processes waiting for the inspector.
pub const MAX_INSPECTIONS: usize = 1024;

/// The loaded Go programs and the processes they are attached to.
pub struct GoRuntime {
    procs: HashMap<MapData, u32, periscope_go_offsets>,
    attached: StdHashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
    /// The crypto/tls programs loaded (else Go TLS stays opaque).
    tls: bool,
}

impl GoRuntime {
    /// Loads the uprobe programs (attached per process later).
    pub(super) fn load(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        for program in [NEWPROC1_RET, NEWG_CALL, GOEXIT0, HTTP_WRITE_LOOP, HTTP_ROUND_TRIP] {
            let prog: &mut UProbe = ebpf
                .program_mut(program)
                .ok_or(ProbeError::MissingProgram { program })?
                .try_into()
                .map_err(|source| program_load(program, source))?;
            prog.load().map_err(|source| program_load(program, source))?;
        }
        let procs =
            HashMap::try_from(take(ebpf, "go_procs")?).map_err(|source| ProbeError::Map { map: "go_procs", source })?;
        // Optional: without them goroutine context works, Go TLS stays opaque.
        let tls = TLS_PROGRAMS.iter().try_for_each(|&program| {
            let prog: &mut UProbe = ebpf
                .program_mut(program)
                .ok_or(ProbeError::MissingProgram { program })?
                .try_into()
                .map_err(|source| program_load(program, source))?;
            prog.load().map_err(|source| program_load(program, source))
        });
        if let Err(e) = &tls {
            tracing::warn!("continuing without Go crypto/tls plaintext capture: {e}");
        }
        Ok(Self { procs, attached: StdHashMap::new(), tls: tls.is_ok() })
    }
}

impl Probes {
    /// Whether the Go runtime programs loaded.
    pub fn go_runtime_available(&self) -> bool {
        self.go.is_some()
    }

    /// Attaches the Go runtime hooks to process `pid`, running `binary`
    /// (inspected from its /proc/PID/exe). Returns the number of uprobes,
    /// and whether its crypto/tls is among them.
    pub fn instrument_go(&mut self, pid: u32, binary: &GoBinary) -> Result<(usize, bool), ProbeError> {
        let Some(go) = self.go.as_mut() else { return Ok((0, false)) };
        if go.attached.contains_key(&pid) {
            return Ok((0, false));
        }
        let tls = binary.tls.as_ref().filter(|_| go.tls);
        let target = format!("/proc/{pid}/exe");
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(ProbeError::Kernel("pid 0".into()))?);
        // One creation site (emulated by the kernel) when found, else every
        // RET of newproc1 (each a single-step trap).
        let creations: Vec<(&'static str, u64)> = match binary.newg_call {
            Some(at) => vec![(NEWG_CALL, at)],
            None => binary.newproc1_returns.iter().map(|&at| (NEWPROC1_RET, at)).collect(),
        };
        let sites = creations
            .into_iter()
            .chain([(GOEXIT0, binary.goexit0)])
            // Both or neither: a writer known to no round trip is no use.
            .chain(
                binary
                    .http_write_loop
                    .zip(binary.http_round_trip)
                    .into_iter()
                    .flat_map(|(w, r)| [(HTTP_WRITE_LOOP, w), (HTTP_ROUND_TRIP, r)]),
            )
            .chain(tls.into_iter().flat_map(|t| {
                let returns = |program, at: &[u64]| at.iter().map(move |&a| (program, a)).collect::<Vec<_>>();
                [(TLS_READ, t.read), (TLS_WRITE, t.write)]
                    .into_iter()
                    .chain(returns(TLS_HANDSHAKE, &t.handshakes))
                    .chain(returns(TLS_READ_RET, &t.read_returns))
                    .chain(returns(TLS_WRITE_RET, &t.write_returns))
                    .chain(returns(TLS_HANDSHAKE_RET, &t.handshake_returns))
            }));
        let mut links = Vec::new();
        let mut failure = None;
        for (program, offset) in sites {
            let prog: &mut UProbe = match self.ebpf.program_mut(program).map(TryInto::try_into) {
                Some(Ok(p)) => p,
                _ => {
                    failure = Some(ProbeError::MissingProgram { program });
                    break;
                }
            };
            match prog.attach(UProbeAttachLocation::AbsoluteOffset(offset), &target, scope) {
                Ok(link) => links.push((program, link)),
                Err(source) => {
                    failure = Some(ProbeError::Attach {
                        program,
                        tracepoint: format!("uprobe {target}:{offset:#x}"),
                        hint: super::failure_hint(&source).map(|h| format!(" ({h})")).unwrap_or_default(),
                        source: Box::new(source),
                    });
                    break;
                }
            }
        }
        let count = links.len();
        if failure.is_none() {
            if let Err(source) = go.procs.insert(pid, binary.offsets, 0) {
                failure = Some(ProbeError::Map { map: "go_procs", source });
            }
        }
        go.attached.insert(pid, links);
        if let Some(e) = failure {
            self.forget_go(pid);
            return Err(e);
        }
        Ok((count, tls.is_some()))
    }

    /// Detaches the Go runtime hooks of `pid` (exited or exec'd).
    pub fn forget_go(&mut self, pid: u32) {
        let Some(go) = self.go.as_mut() else { return };
        let _ = go.procs.remove(&pid);
        for (program, link) in go.attached.remove(&pid).unwrap_or_default() {
            if let Some(Ok(prog)) = self.ebpf.program_mut(program).map(<&mut UProbe>::try_from) {
                self.reaper.detach(prog, link);
            }
        }
    }
}

/// What the inspector found for a process.
#[derive(Debug)]
pub struct Inspected {
    pub pid: u32,
    pub result: Result<Arc<GoBinary>, InspectError>,
}

/// Starts the inspector thread: pids in, what their executables are out.
/// Executables are remembered by (device, inode), so a pool of identical
/// workers is read once.
pub fn spawn_inspector(answers: tokio::sync::mpsc::Sender<Inspected>) -> std::io::Result<std_mpsc::SyncSender<u32>> {
    let (requests, rx) = std_mpsc::sync_channel::<u32>(MAX_INSPECTIONS);
    std::thread::Builder::new().name("go-inspector".into()).spawn(move || {
        type Cached = Result<Arc<GoBinary>, InspectError>;
        let mut cache: StdHashMap<(u64, u64), Cached> = StdHashMap::new();
        while let Ok(pid) = rx.recv() {
            let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
            let result = match std::fs::metadata(&exe) {
                Err(e) => Err(InspectError::Read(e.to_string())),
                Ok(meta) => {
                    use std::os::unix::fs::MetadataExt;
                    let key = (meta.dev(), meta.ino());
                    if let Some(hit) = cache.get(&key) {
                        hit.clone()
                    } else {
                        let found = elf::inspect_file(&exe).map(Arc::new);
                        if cache.len() >= MAX_CACHED_BINARIES {
                            cache.clear();
                        }
                        cache.insert(key, found.clone());
                        found
                    }
                }
            };
            if answers.blocking_send(Inspected { pid, result }).is_err() {
                return;
            }
        }
    })?;
    Ok(requests)
}
