//! Runtime uprobes: where a process's runtime library is, and at which file
//! offsets its functions start. Looked up once per file (device, inode),
//! with the file mapped read-only (page cache, no copy), on the discovery
//! thread; a file without the symbols (stripped, another version) gives
//! none, and the process keeps the syscall-only rules.
//! - libuv's thread pool (`ebpf/src/libuv.h`): the executable when it embeds
//!   libuv (Node.js links it statically and keeps its symbol table), else a
//!   mapped `libuv.so`;
//! - CPython 3.11's asyncio (`ebpf/src/asyncio.h`): the `_asyncio` extension
//!   module the process has mapped.
use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use object::{Object, ObjectSection, ObjectSymbol};

/// A runtime periscope follows with uprobes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Libuv,
    Asyncio,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Libuv => "libuv",
            Runtime::Asyncio => "asyncio",
        }
    }

    /// (kernel program, function) pairs; the first is required, the others
    /// are attached where the file has them (at least one is needed).
    pub fn points(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // uv__work_submit(loop, w, ...), then the `done` callbacks of
            // libuv's own requests, each taking `struct uv__work *w` first.
            Runtime::Libuv => &[
                ("handle_uv_work_submit", "uv__work_submit"),
                ("handle_uv_work_done", "uv__getaddrinfo_done"),
                ("handle_uv_work_done", "uv__getnameinfo_done"),
                ("handle_uv_work_done", "uv__fs_done"),
                ("handle_uv_work_done", "uv__queue_done"),
                ("handle_uv_work_done", "uv__random_done"),
                // Node.js: its JavaScript timers start here (a libuv timer
                // callback, called through a function pointer). Not its
                // immediates (`Environment::CheckImmediate`): libraries flush
                // writes from setImmediate for the callback that ran before
                // (amqplib's publishes), which the iteration's read names.
                ("handle_node_deferred", "_ZN4node11Environment9RunTimersEP10uv_timer_s"),
            ],
            Runtime::Asyncio => &[
                ("handle_asyncio_task_step", "task_step"),
                // A wakeup runs the next step from task_wakeup(task, fut), a
                // method called through its PyMethodDef (never inlined);
                // its call of task_step may be.
                ("handle_asyncio_task_step", "task_wakeup"),
                ("handle_asyncio_step_wrapper", "TaskStepMethWrapper_call"),
                ("handle_asyncio_task_init", "_asyncio_Task___init__"),
                ("handle_asyncio_future_done", "future_schedule_callbacks"),
            ],
        }
    }

    /// The file of the runtime in a process with these `maps` lines.
    fn library(self, maps: &str) -> Option<&str> {
        let wanted = |name: &str| match self {
            Runtime::Libuv => name.starts_with("libuv.so"),
            // The 3.11 layout is what the kernel side reads.
            Runtime::Asyncio => name.starts_with("_asyncio.cpython-311-"),
        };
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| Path::new(p).file_name().and_then(|n| n.to_str()).is_some_and(wanted))
    }
}

/// Files whose answer is remembered; beyond, the cache starts over.
const MAX_FILES: usize = 256;

/// A file (device, inode): uprobes attach to inodes.
pub type FileId = (u64, u64);

/// One runtime of one process: where to attach, at which file offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeHooks {
    pub runtime: Runtime,
    pub file: FileId,
    /// A path the agent can open it by (through `/proc/PID/...`, so it
    /// works across mount namespaces while that process lives).
    pub path: PathBuf,
    /// (kernel program, function, file offset), the required one first.
    pub points: Vec<(&'static str, &'static str, u64)>,
}

type Cache = HashMap<(Runtime, FileId), Option<Arc<RuntimeHooks>>>;
static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// The runtimes of `pid` periscope can hook: libuv in its executable or a
/// mapped libuv.so; asyncio's module, when mapped.
pub fn find(pid: u32) -> Vec<Arc<RuntimeHooks>> {
    let mut out = Vec::new();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let libuv = cached(Runtime::Libuv, &exe).or_else(|| {
        let lib = Runtime::Libuv.library(&maps)?;
        cached(Runtime::Libuv, &PathBuf::from(format!("/proc/{pid}/root{lib}")))
    });
    out.extend(libuv);
    if let Some(lib) = Runtime::Asyncio.library(&maps) {
        out.extend(cached(Runtime::Asyncio, &PathBuf::from(format!("/proc/{pid}/root{lib}"))));
    }
    out
}

fn cached(runtime: Runtime, path: &Path) -> Option<Arc<RuntimeHooks>> {
    let meta = std::fs::metadata(path).ok()?;
    let id = (meta.dev(), meta.ino());
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = guard.get_or_insert_with(HashMap::new);
    if let Some(known) = cache.get(&(runtime, id)) {
        // The path of this process: the one that found it may be gone.
        return known.as_ref().map(|h| Arc::new(RuntimeHooks { path: path.to_owned(), ..(**h).clone() }));
    }
    let found = match lookup(runtime, path, id) {
        Ok(found) => found.map(Arc::new),
        Err(e) => {
            tracing::debug!(path = %path.display(), "no {} symbols read: {e}", runtime.as_str());
            None
        }
    };
    if cache.len() >= MAX_FILES {
        cache.clear();
    }
    cache.insert((runtime, id), found.clone());
    found
}

fn lookup(runtime: Runtime, path: &Path, file: FileId) -> Result<Option<RuntimeHooks>, String> {
    let map = Mapped::open(path)?;
    let names: Vec<&'static str> = runtime.points().iter().map(|(_, f)| *f).collect();
    let offsets = symbol_offsets(map.bytes(), &names)?;
    let points: Vec<(&'static str, &'static str, u64)> = runtime
        .points()
        .iter()
        .filter_map(|&(program, function)| {
            offsets.iter().find(|(n, _)| *n == function).map(|&(_, offset)| (program, function, offset))
        })
        .collect();
    let required = runtime.points()[0].1;
    if points.first().map(|p| p.1) != Some(required) || points.len() < 2 {
        return Ok(None);
    }
    Ok(Some(RuntimeHooks { runtime, file, path: path.to_owned(), points }))
}

/// File offsets of the named functions defined in an ELF file (symbol
/// table, else dynamic symbols), in the order of `names`.
pub fn symbol_offsets(elf: &[u8], names: &[&'static str]) -> Result<Vec<(&'static str, u64)>, String> {
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF file: {e}"))?;
    let mut found: Vec<Option<u64>> = vec![None; names.len()];
    for sym in file.symbols().chain(file.dynamic_symbols()) {
        if !sym.is_definition() {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        let Some(i) = names.iter().position(|n| *n == name) else { continue };
        if found[i].is_some() {
            continue;
        }
        let Some(section) = sym.section_index().and_then(|i| file.section_by_index(i).ok()) else { continue };
        let Some((offset, _)) = section.file_range() else { continue };
        let Some(at) = sym.address().checked_sub(section.address()) else { continue };
        found[i] = Some(at + offset);
    }
    Ok(names.iter().zip(found).filter_map(|(n, o)| o.map(|o| (*n, o))).collect())
}

/// A file mapped read-only (shared with the page cache; unmapped on drop).
pub(crate) struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("open: {e}"))?;
        let len = file.metadata().map_err(|e| format!("stat: {e}"))?.len() as usize;
        if len == 0 {
            return Err("empty file".into());
        }
        use std::os::fd::AsRawFd;
        // SAFETY: a read-only private mapping of a file we hold open; the
        // pointer is only read through `bytes()` while `self` lives.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Mapped { ptr, len })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until drop. A file
        // truncated under us would fault; executables being run cannot be
        // written (ETXTBSY), and libraries are replaced, not rewritten.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn periscope_libuv_offset_probe(x: u64) -> u64 {
        x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ 0x5eed
    }

    /// A function of the test binary itself: the bytes at the file offset
    /// found are the bytes of its code in memory.
    #[test]
    fn offsets_point_at_the_functions_code() {
        let exe = std::env::current_exe().unwrap();
        let map = Mapped::open(&exe).unwrap();
        let got = symbol_offsets(map.bytes(), &["periscope_libuv_offset_probe", "no_such_function_here"]).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        let offset = got[0].1 as usize;
        let f: extern "C" fn(u64) -> u64 = periscope_libuv_offset_probe;
        assert_eq!(f(1), periscope_libuv_offset_probe(1));
        // SAFETY: reading 16 bytes of this function's own code.
        let in_memory = unsafe { std::slice::from_raw_parts(f as *const u8, 16) };
        assert_eq!(&map.bytes()[offset..offset + 16], in_memory);
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        assert!(symbol_offsets(b"#!/bin/sh\necho hi\n", &["main"]).unwrap_err().contains("not an ELF"));
    }

    /// Node here embeds libuv: its submit and dns callback are found
    /// (skipped where node is not installed).
    #[test]
    fn node_embeds_libuv() {
        let Ok(meta) = std::fs::metadata("/usr/bin/node") else { return };
        let h = lookup(Runtime::Libuv, Path::new("/usr/bin/node"), (meta.dev(), meta.ino())).unwrap().expect("libuv");
        let names: Vec<&str> = h.points.iter().map(|p| p.1).collect();
        assert_eq!(names[0], "uv__work_submit");
        assert!(names.contains(&"uv__getaddrinfo_done"), "{names:?}");
    }

    #[test]
    fn libraries_are_found_by_file_name_in_maps() {
        let maps = "7f00-7f10 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libuv.so.1.0.0\n\
                    7f20-7f30 r-xp 00000000 08:01 124 /opt/py/lib-dynload/_asyncio.cpython-311-x86_64-linux-gnu.so\n";
        assert_eq!(Runtime::Libuv.library(maps), Some("/usr/lib/x86_64-linux-gnu/libuv.so.1.0.0"));
        assert_eq!(
            Runtime::Asyncio.library(maps),
            Some("/opt/py/lib-dynload/_asyncio.cpython-311-x86_64-linux-gnu.so")
        );
        let py312 = "7f20-7f30 r-xp 00000000 08:01 124 /x/_asyncio.cpython-312-x86_64-linux-gnu.so\n";
        assert_eq!(Runtime::Asyncio.library(py312), None, "another layout: not hooked");
    }
}
