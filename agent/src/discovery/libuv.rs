//! Where a process's libuv is, for the thread-pool uprobes (see
//! `ebpf/src/libuv.h`): the executable when it embeds libuv (Node.js links
//! it statically and keeps its symbol table), else a `libuv.so` it has
//! mapped. Symbols are looked up once per file (device, inode), with the
//! file mapped read-only (page cache, no copy), on the discovery thread.
use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use object::{Object, ObjectSection, ObjectSymbol};

/// The submit function: `uv__work_submit(loop, w, kind, work, done)`.
pub const SUBMIT: &str = "uv__work_submit";
/// The `done` callbacks of libuv's own thread-pool requests; each takes the
/// `struct uv__work *` first. Those a build lacks are skipped.
pub const DONE: &[&str] = &[
    "uv__getaddrinfo_done",
    "uv__getnameinfo_done",
    "uv__fs_done",
    "uv__queue_done",
    "uv__random_done",
    "uv__fs_work_done",
];

/// Files whose answer is remembered; beyond, the cache starts over.
const MAX_FILES: usize = 256;

/// A file (device, inode): uprobes attach to inodes.
pub type FileId = (u64, u64);

/// The libuv of a process: where to attach, at which file offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibuvHooks {
    pub file: FileId,
    /// A path the agent can open it by (through `/proc/PID/...`, so it
    /// works across mount namespaces while that process lives).
    pub path: PathBuf,
    /// File offset of [`SUBMIT`].
    pub submit: u64,
    /// (name, file offset) of each `done` callback found.
    pub done: Vec<(&'static str, u64)>,
}

static CACHE: Mutex<Option<HashMap<FileId, Option<Arc<LibuvHooks>>>>> = Mutex::new(None);

/// The libuv of `pid`: its executable's, else the first mapped `libuv.so`.
/// None when it has none (or it cannot be read: the process falls back to
/// per-iteration context, as without the hooks).
pub fn find(pid: u32) -> Option<Arc<LibuvHooks>> {
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    if let Some(h) = cached(&exe) {
        return Some(h);
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let lib = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| Path::new(p).file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libuv.so")))?;
    cached(&PathBuf::from(format!("/proc/{pid}/root{lib}")))
}

fn cached(path: &Path) -> Option<Arc<LibuvHooks>> {
    let meta = std::fs::metadata(path).ok()?;
    let id = (meta.dev(), meta.ino());
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = guard.get_or_insert_with(HashMap::new);
    if let Some(known) = cache.get(&id) {
        // The path of this process: the one that found it may be gone.
        return known.as_ref().map(|h| Arc::new(LibuvHooks { path: path.to_owned(), ..(**h).clone() }));
    }
    let found = match lookup(path, id) {
        Ok(found) => found.map(Arc::new),
        Err(e) => {
            tracing::debug!(path = %path.display(), "no libuv symbols read: {e}");
            None
        }
    };
    if cache.len() >= MAX_FILES {
        cache.clear();
    }
    cache.insert(id, found.clone());
    found
}

fn lookup(path: &Path, file: FileId) -> Result<Option<LibuvHooks>, String> {
    let map = Mapped::open(path)?;
    let offsets = symbol_offsets(map.bytes(), &[&[SUBMIT], DONE].concat())?;
    let Some(&(_, submit)) = offsets.iter().find(|(n, _)| *n == SUBMIT) else { return Ok(None) };
    let done: Vec<(&'static str, u64)> = offsets.into_iter().filter(|(n, _)| *n != SUBMIT).collect();
    if done.is_empty() {
        return Ok(None);
    }
    Ok(Some(LibuvHooks { file, path: path.to_owned(), submit, done }))
}

/// File offsets of the named functions defined in an ELF file (symbol
/// table, else dynamic symbols), in the order of `names`.
pub fn symbol_offsets(elf: &[u8], names: &[&'static str]) -> Result<Vec<(&'static str, u64)>, String> {
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF file: {e}"))?;
    let mut found: Vec<Option<u64>> = vec![None; names.len()];
    for sym in file.symbols().chain(file.dynamic_symbols()) {
        if !sym.is_definition() || sym.kind() != object::SymbolKind::Text {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        let Some(i) = names.iter().position(|n| *n == name) else { continue };
        if found[i].is_some() {
            continue;
        }
        let Some(section) = sym.section_index().and_then(|i| file.section_by_index(i).ok()) else { continue };
        let Some((offset, _)) = section.file_range() else { continue };
        found[i] = Some(sym.address() - section.address() + offset);
    }
    Ok(names.iter().zip(found).filter_map(|(n, o)| o.map(|o| (*n, o))).collect())
}

/// A file mapped read-only (shared with the page cache; unmapped on drop).
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn open(path: &Path) -> Result<Self, String> {
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

    fn bytes(&self) -> &[u8] {
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
        assert!(symbol_offsets(b"#!/bin/sh\necho hi\n", &[SUBMIT]).unwrap_err().contains("not an ELF"));
    }

    /// Node here embeds libuv: its submit and dns callback are found (skipped
    /// where node is not installed).
    #[test]
    fn node_embeds_libuv() {
        let Ok(map) = Mapped::open(Path::new("/usr/bin/node")) else { return };
        let got = symbol_offsets(map.bytes(), &[&[SUBMIT], DONE].concat()).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| *n).collect();
        assert!(names.contains(&SUBMIT) && names.contains(&"uv__getaddrinfo_done"), "{names:?}");
    }
}
