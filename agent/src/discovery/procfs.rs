//! Reading `/proc`: small parsers (pure, unit-tested) plus a `ProcFs` handle
//! that applies them to one process, turning "the process went away" into
//! [`DiscoveryError::Gone`].
use std::{
    collections::HashMap,
    ffi::OsStr,
    fs,
    io::{self, Read, Seek, SeekFrom},
    os::unix::ffi::OsStrExt,
    path::PathBuf,
};

use super::DiscoveryError;

/// `PF_KTHREAD` from include/linux/sched.h: the task is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The fields of `/proc/PID/stat` discovery needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    pub flags: u64,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

impl Stat {
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
    /// Zombie (`Z`) or dead (`X`): nothing left to instrument.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses `/proc/PID/stat`. `comm` is in parentheses and may itself contain
/// spaces and `)`, so the fixed fields start after the *last* `)`.
pub(crate) fn parse_stat(s: &str) -> Option<Stat> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    if close < open {
        return None;
    }
    let comm = s[open + 1..close].to_owned();
    // Field 3 (state) is rest[0]; field N is rest[N - 3].
    let rest: Vec<&str> = s[close + 1..].split_ascii_whitespace().collect();
    Some(Stat {
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        flags: rest.get(6)?.parse().ok()?,
        start_time: rest.get(19)?.parse().ok()?,
    })
}

/// `/proc/PID/cmdline`: NUL-separated, usually NUL-terminated. Processes that
/// rewrite their title (`setproctitle`) may use spaces instead; that is kept
/// as one argument.
pub(crate) fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// The two OTel variables discovery reads from `/proc/PID/environ`:
/// (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`). Last occurrence wins.
pub(crate) fn parse_environ(raw: &[u8]) -> (Option<String>, Option<String>) {
    let mut name = None;
    let mut attrs = None;
    for var in raw.split(|&b| b == 0) {
        if let Some(v) = var.strip_prefix(b"OTEL_SERVICE_NAME=") {
            name = Some(String::from_utf8_lossy(v).into_owned());
        } else if let Some(v) = var.strip_prefix(b"OTEL_RESOURCE_ATTRIBUTES=") {
            attrs = Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    (name, attrs)
}

/// TCP state `0A` in `/proc/net/tcp{,6}`.
const TCP_LISTEN: &str = "0A";

/// Adds the LISTEN sockets of one `/proc/PID/net/tcp` or `tcp6` table to
/// `out` as socket inode -> local port. Malformed lines are skipped.
pub(crate) fn parse_listen_table(table: &str, out: &mut HashMap<u64, u16>) {
    // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
    for line in table.lines().skip(1) {
        let mut f = line.split_ascii_whitespace();
        let (Some(_sl), Some(local), Some(_remote), Some(state)) = (f.next(), f.next(), f.next(), f.next()) else {
            continue;
        };
        if state != TCP_LISTEN {
            continue;
        }
        let Some(inode) = f.nth(5).and_then(|i| i.parse::<u64>().ok()) else {
            continue;
        };
        let Some(port) = local.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok()) else {
            continue;
        };
        if inode != 0 {
            out.insert(inode, port);
        }
    }
}

/// `socket:[12345]` -> 12345.
pub(crate) fn parse_socket_link(link: &OsStr) -> Option<u64> {
    let b = link.as_bytes();
    let inner = b.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// `net:[4026531840]` -> 4026531840.
pub(crate) fn parse_ns_link(link: &OsStr) -> Option<u64> {
    let b = link.as_bytes();
    let open = b.iter().position(|&c| c == b'[')?;
    let inner = b[open + 1..].strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// Strips the ` (deleted)` suffix the kernel appends to `/proc/PID/exe` when
/// the binary was replaced or removed after exec (typical after an upgrade).
pub(crate) fn clean_exe_link(link: PathBuf) -> PathBuf {
    match link.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(b) => PathBuf::from(OsStr::from_bytes(b)),
        None => link,
    }
}

/// Whether `err` means the process no longer exists.
fn is_gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH)
}

/// A `/proc` mount (normally `/proc`; tests may point elsewhere).
#[derive(Debug, Clone)]
pub(crate) struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        Self { root: PathBuf::from("/proc") }
    }
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, pid: u32, file: &str) -> PathBuf {
        let mut p = self.root.join(pid.to_string());
        p.push(file);
        p
    }

    fn err(&self, pid: u32, path: PathBuf, e: io::Error) -> DiscoveryError {
        if is_gone(&e) {
            DiscoveryError::Gone { pid }
        } else {
            DiscoveryError::Io { pid, path, source: e }
        }
    }

    /// Whether `/proc/PID` still exists.
    pub fn exists(&self, pid: u32) -> bool {
        self.root.join(pid.to_string()).exists()
    }

    /// All numeric entries of the proc root (thread-group ids), sorted.
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        let mut pids: Vec<u32> = fs::read_dir(&self.root)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    pub fn stat(&self, pid: u32) -> Result<Stat, DiscoveryError> {
        let path = self.path(pid, "stat");
        let text = fs::read_to_string(&path).map_err(|e| self.err(pid, path.clone(), e))?;
        parse_stat(&text).ok_or(DiscoveryError::Parse { pid, path, what: "stat" })
    }

    /// The executable, `None` when unreadable (permissions, zombie, ...).
    pub fn exe(&self, pid: u32) -> Option<PathBuf> {
        fs::read_link(self.path(pid, "exe")).ok().map(clean_exe_link)
    }

    /// `/proc/PID/exe` itself: opening it works even when the binary lives in
    /// another mount namespace (a container).
    pub fn exe_link_path(&self, pid: u32) -> PathBuf {
        self.path(pid, "exe")
    }

    pub fn cmdline(&self, pid: u32) -> Result<Vec<String>, DiscoveryError> {
        let path = self.path(pid, "cmdline");
        let raw = fs::read(&path).map_err(|e| self.err(pid, path, e))?;
        Ok(parse_cmdline(&raw))
    }

    /// `(OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES)` from the environment the
    /// process was exec'ed with. Permission errors read as "not set".
    pub fn otel_env(&self, pid: u32) -> Result<(Option<String>, Option<String>), DiscoveryError> {
        let path = self.path(pid, "environ");
        match fs::read(&path) {
            Ok(raw) => Ok(parse_environ(&raw)),
            Err(e) if is_gone(&e) => Err(DiscoveryError::Gone { pid }),
            Err(_) => Ok((None, None)),
        }
    }

    /// The container and pod of the process, from `/proc/PID/cgroup`. `None`
    /// outside containers and when unreadable.
    pub fn container(&self, pid: u32) -> Option<crate::kubernetes::ContainerRef> {
        let text = fs::read_to_string(self.path(pid, "cgroup")).ok()?;
        crate::kubernetes::parse_cgroup(&text)
    }

    pub fn netns(&self, pid: u32) -> Option<u64> {
        fs::read_link(self.path(pid, "ns/net")).ok().and_then(|l| parse_ns_link(l.as_os_str()))
    }

    /// Inodes of all sockets the process has open. Permission errors and fds
    /// closed while listing are ignored; the process vanishing is `Gone`.
    pub fn socket_inodes(&self, pid: u32) -> Result<Vec<u64>, DiscoveryError> {
        let dir = self.path(pid, "fd");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if is_gone(&e) => return Err(DiscoveryError::Gone { pid }),
            Err(_) => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            if let Ok(link) = fs::read_link(entry.path()) {
                if let Some(inode) = parse_socket_link(link.as_os_str()) {
                    out.push(inode);
                }
            }
        }
        Ok(out)
    }

    /// LISTEN sockets (inode -> port) of the network namespace `pid` is in,
    /// from its `net/tcp` and `net/tcp6` (either may be missing: no IPv6).
    pub fn listen_table(&self, pid: u32) -> Result<HashMap<u64, u16>, DiscoveryError> {
        let mut out = HashMap::new();
        let mut any = false;
        for file in ["net/tcp", "net/tcp6"] {
            let path = self.path(pid, file);
            match fs::read_to_string(&path) {
                Ok(t) => {
                    any = true;
                    parse_listen_table(&t, &mut out);
                }
                Err(e) if is_gone(&e) && !self.exists(pid) => return Err(DiscoveryError::Gone { pid }),
                Err(_) => {}
            }
        }
        if !any && !self.exists(pid) {
            return Err(DiscoveryError::Gone { pid });
        }
        Ok(out)
    }
}

/// Whether the ELF file looks like a Go binary: it has a `.go.buildinfo`,
/// `.gopclntab` or `.note.go.buildid` section. Reads only the ELF header, the
/// section headers and the section-name table. 64-bit little-endian only.
pub(crate) fn is_go_elf<R: Read + Seek>(r: &mut R) -> io::Result<bool> {
    let mut hdr = [0u8; 64];
    r.read_exact(&mut hdr)?;
    if &hdr[..4] != b"\x7fELF" || hdr[4] != 2 || hdr[5] != 1 {
        return Ok(false);
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let shoff = u64_at(&hdr, 0x28);
    let shentsize = usize::from(u16_at(&hdr, 0x3a));
    let shnum = usize::from(u16_at(&hdr, 0x3c));
    let shstrndx = usize::from(u16_at(&hdr, 0x3e));
    if shoff == 0 || shentsize < 64 || shnum == 0 || shstrndx >= shnum {
        return Ok(false);
    }
    let mut shdrs = vec![0u8; shentsize * shnum];
    r.seek(SeekFrom::Start(shoff))?;
    r.read_exact(&mut shdrs)?;
    let sh = |i: usize| &shdrs[i * shentsize..i * shentsize + 64];
    let strtab = sh(shstrndx);
    let (str_off, str_size) = (u64_at(strtab, 0x18), u64_at(strtab, 0x20));
    if str_size > 1 << 20 {
        return Ok(false);
    }
    let mut names = vec![0u8; str_size as usize];
    r.seek(SeekFrom::Start(str_off))?;
    r.read_exact(&mut names)?;
    for i in 0..shnum {
        let off = u32_at(sh(i), 0) as usize;
        let Some(rest) = names.get(off..) else {
            continue;
        };
        let name = rest.split(|&b| b == 0).next().unwrap_or_default();
        if matches!(name, b".go.buildinfo" | b".gopclntab" | b".note.go.buildid") {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_tricky_comm() {
        let s = "1234 (my (weird) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 1000 200 18446744073709551615";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.comm, "my (weird) proc");
        assert_eq!(st.state, 'S');
        assert_eq!(st.ppid, 1);
        assert_eq!(st.flags, 4194560);
        assert_eq!(st.start_time, 987654);
        assert!(!st.is_kernel_thread());
        let k = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0";
        let k = parse_stat(k).unwrap();
        assert!(k.is_kernel_thread());
        assert_eq!(k.start_time, 5);
        assert!(parse_stat("12 (x) S 1").is_none());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn cmdline_and_environ() {
        assert_eq!(parse_cmdline(b"python3\0-m\0http.server\0"), ["python3", "-m", "http.server"]);
        assert_eq!(parse_cmdline(b"nginx: worker process"), ["nginx: worker process"]);
        assert!(parse_cmdline(b"").is_empty());
        let env = b"PATH=/bin\0OTEL_SERVICE_NAME=a\0OTEL_RESOURCE_ATTRIBUTES=x=1\0OTEL_SERVICE_NAME=b\0XOTEL_SERVICE_NAME=c\0";
        assert_eq!(parse_environ(env), (Some("b".into()), Some("x=1".into())));
        assert_eq!(parse_environ(b"A=1\0"), (None, None));
    }

    #[test]
    fn listen_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F91 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 100 0 0 10 0
   3: garbage
";
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 444 1 0000000000000000 100 0 0 10 0
";
        let mut m = HashMap::new();
        parse_listen_table(tcp, &mut m);
        parse_listen_table(tcp6, &mut m);
        assert_eq!(m.len(), 3);
        assert_eq!(m[&111], 8080);
        assert_eq!(m[&333], 80);
        assert_eq!(m[&444], 443);
        assert!(!m.contains_key(&222), "ESTABLISHED must not count");
    }

    #[test]
    fn links() {
        assert_eq!(parse_socket_link(OsStr::new("socket:[98765]")), Some(98765));
        assert_eq!(parse_socket_link(OsStr::new("pipe:[98765]")), None);
        assert_eq!(parse_socket_link(OsStr::new("/dev/null")), None);
        assert_eq!(parse_ns_link(OsStr::new("net:[4026531833]")), Some(4026531833));
        assert_eq!(clean_exe_link(PathBuf::from("/usr/sbin/nginx (deleted)")), PathBuf::from("/usr/sbin/nginx"));
        assert_eq!(clean_exe_link(PathBuf::from("/bin/sh")), PathBuf::from("/bin/sh"));
    }

    /// A minimal ELF64 with a section-name table and one named section.
    fn fake_elf(section: &[u8]) -> Vec<u8> {
        let mut names = vec![0u8];
        names.extend_from_slice(b".shstrtab\0");
        let sec_name_off = names.len() as u32;
        names.extend_from_slice(section);
        names.push(0);
        let names_off = 64u64;
        let shoff = names_off + names.len() as u64;
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&names);
        let mut sh = |name: u32, off: u64, size: u64| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&off.to_le_bytes());
            h[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            f.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, names_off, names.len() as u64);
        sh(sec_name_off, 0, 0);
        f
    }

    #[test]
    fn go_elf_detection() {
        use std::io::Cursor;
        assert!(is_go_elf(&mut Cursor::new(fake_elf(b".go.buildinfo"))).unwrap());
        assert!(is_go_elf(&mut Cursor::new(fake_elf(b".gopclntab"))).unwrap());
        assert!(!is_go_elf(&mut Cursor::new(fake_elf(b".rodata"))).unwrap());
        assert!(!is_go_elf(&mut Cursor::new(b"#!/bin/sh\n".repeat(10))).unwrap());
        // This test binary is Rust, not Go.
        let mut me = fs::File::open("/proc/self/exe").unwrap();
        assert!(!is_go_elf(&mut me).unwrap());
        // A real Go binary, when the machine has one.
        for go in ["/usr/local/bin/docker", "/usr/local/go/bin/go", "/usr/bin/containerd"] {
            if let Ok(mut f) = fs::File::open(go) {
                let mut head = [0u8; 4];
                if f.read_exact(&mut head).is_ok() && &head == b"\x7fELF" {
                    f.rewind().unwrap();
                    let go_like = {
                        let mut all = Vec::new();
                        fs::File::open(go).unwrap().read_to_end(&mut all).unwrap();
                        all.windows(14).any(|w| w == b"\xff Go buildinf:")
                    };
                    assert_eq!(is_go_elf(&mut f).unwrap(), go_like, "{go}");
                }
            }
        }
    }
}
