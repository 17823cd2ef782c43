//! What the Go runtime hooks need from a Go executable: its Go version
//! (`.go.buildinfo`), the runtime's struct offsets for that version, and
//! where `runtime.newproc1` returns and `runtime.goexit0` starts (and, when
//! linked in, net/http's `(*persistConn).writeLoop` and `.roundTrip`, and
//! crypto/tls's `(*Conn).Read`, `.Write`, `.serverHandshake` and
//! `.clientHandshake`), as
//! file offsets. Functions are found by ELF symbol, or through the
//! function table of `.gopclntab` when the binary is stripped
//! (`-ldflags='-s -w'` drops the symbol table, never `.gopclntab`). Return
//! sites are found by decoding the function's x86-64 machine code: a
//! uretprobe would rewrite the return address on a goroutine stack, which
//! Go moves, and crash the process.
use object::{read::ReadCache, Architecture, Object, ObjectSection, ObjectSymbol, ReadRef, SectionKind, SymbolKind};
use thiserror::Error;

use crate::probes::wire::periscope_go_offsets;

/// Executables larger than this are not inspected.
const MAX_EXECUTABLE: u64 = 1 << 30;
/// Functions longer than this are not decoded (newproc1 is ~1 KiB).
const MAX_FUNCTION: u64 = 64 * 1024;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InspectError {
    #[error("cannot read the executable: {0}")]
    Read(String),
    #[error("not a Go executable")]
    NotGo,
    #[error("Go executable for {0}, the runtime hooks support amd64 only")]
    Architecture(String),
    #[error("no Go version in .go.buildinfo (Go before 1.18?)")]
    NoVersion,
    #[error("{0}: no runtime offsets known for this Go version (supported: {SUPPORTED})")]
    UnsupportedVersion(String),
    #[error("{0} not found (neither in the symbol table nor in .gopclntab)")]
    FunctionMissing(&'static str),
    #[error("{0}: no RET instruction decoded")]
    NoReturn(&'static str),
}

impl InspectError {
    /// The `reason` label of the counter.
    pub fn reason(&self) -> &'static str {
        match self {
            InspectError::Read(_) => "unreadable",
            InspectError::NotGo => "not go",
            InspectError::Architecture(_) => "unsupported architecture",
            InspectError::NoVersion | InspectError::UnsupportedVersion(_) => "unsupported version",
            InspectError::FunctionMissing(_) | InspectError::NoReturn(_) => "runtime not understood",
        }
    }
}

/// Go versions whose runtime offsets are known (checked against DWARF of a
/// real build: `agent/tests/kernel_context.rs`).
pub const SUPPORTED: &str = "go1.19";

/// The runtime's struct offsets on amd64 for a Go version (`go1.19.8`).
/// go1.19 (runtime/runtime2.go): g.m 48, g.goid 152, m.curg 192.
pub fn runtime_offsets(version: &str) -> Option<periscope_go_offsets> {
    let minor: u32 = version.strip_prefix("go1.")?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    match minor {
        19 => Some(periscope_go_offsets { g_goid: 152, g_m: 48, m_curg: 192, _pad: 0 }),
        _ => None,
    }
}

/// A Go executable the hooks can be attached to.
#[derive(Clone, Debug)]
pub struct GoBinary {
    pub version: String,
    pub offsets: periscope_go_offsets,
    /// File offsets of the RET instructions of runtime.newproc1.
    pub newproc1_returns: Vec<u64>,
    /// The call of runqput after newproc1 in runtime.newproc.func1, new
    /// goroutine in RBX ([`newg_call_site`]): when found, the creation
    /// hook goes there instead of on newproc1's RETs.
    pub newg_call: Option<u64>,
    /// File offset of runtime.goexit0's entry probe ([`entry_site`]).
    pub goexit0: u64,
    /// net/http's client, when linked in: the entry probes of
    /// (*persistConn).writeLoop and (*persistConn).roundTrip.
    pub http_write_loop: Option<u64>,
    pub http_round_trip: Option<u64>,
    /// crypto/tls, when linked in: where its plaintext can be read.
    pub tls: Option<GoTlsSites>,
    /// Functions were found through .gopclntab (no symbol table).
    pub stripped: bool,
}

/// File offsets of crypto/tls's `(*Conn).Read` and `(*Conn).Write`, and of
/// the handshakes linked in (`serverHandshake`, `clientHandshake`: called
/// once per connection, unlike `handshakeContext`, which every Read and
/// Write call): each entry and every RET of each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GoTlsSites {
    pub read: u64,
    pub read_returns: Vec<u64>,
    pub write: u64,
    pub write_returns: Vec<u64>,
    pub handshakes: Vec<u64>,
    pub handshake_returns: Vec<u64>,
}

/// Inspects the executable at `path` (only the parts needed are read).
pub fn inspect_file(path: &std::path::Path) -> Result<GoBinary, InspectError> {
    let file = std::fs::File::open(path).map_err(|e| InspectError::Read(e.to_string()))?;
    let len = file.metadata().map_err(|e| InspectError::Read(e.to_string()))?.len();
    if len > MAX_EXECUTABLE {
        return Err(InspectError::Read(format!("{len} bytes, more than the {MAX_EXECUTABLE} inspected")));
    }
    let cache = ReadCache::new(file);
    inspect(&cache)
}

/// A function's address range, where it was found.
struct Function {
    address: u64,
    size: u64,
}

pub fn inspect<'a, R: ReadRef<'a>>(data: R) -> Result<GoBinary, InspectError> {
    let file = object::File::parse(data).map_err(|e| InspectError::Read(e.to_string()))?;
    let Some(buildinfo) = file.section_by_name(".go.buildinfo") else {
        return Err(InspectError::NotGo);
    };
    if file.architecture() != Architecture::X86_64 {
        return Err(InspectError::Architecture(format!("{:?}", file.architecture())));
    }
    let info = buildinfo.data().map_err(|e| InspectError::Read(e.to_string()))?;
    let version = go_version(info).ok_or(InspectError::NoVersion)?;
    let offsets = runtime_offsets(&version).ok_or_else(|| InspectError::UnsupportedVersion(version.clone()))?;

    const NAMES: [&str; 9] = [
        "runtime.newproc1",
        "runtime.goexit0",
        "net/http.(*persistConn).writeLoop",
        "net/http.(*persistConn).roundTrip",
        "crypto/tls.(*Conn).Read",
        "crypto/tls.(*Conn).Write",
        "crypto/tls.(*Conn).serverHandshake",
        "crypto/tls.(*Conn).clientHandshake",
        "runtime.newproc.func1",
    ];
    let mut found: [Option<Function>; 9] = Default::default();
    for symbol in file.symbols() {
        if symbol.kind() != SymbolKind::Text {
            continue;
        }
        if let Some(i) = symbol.name().ok().and_then(|n| NAMES.iter().position(|&w| w == n)) {
            found[i] = Some(Function { address: symbol.address(), size: symbol.size() });
        }
    }
    let stripped = found[..2].iter().any(Option::is_none);
    if stripped {
        let pclntab = file.section_by_name(".gopclntab").ok_or(InspectError::FunctionMissing(NAMES[0]))?;
        let table = pclntab.data().map_err(|e| InspectError::Read(e.to_string()))?;
        for (i, name) in NAMES.iter().enumerate() {
            if found[i].is_none() {
                found[i] = pclntab_function(table, name);
            }
        }
    }
    let [Some(newproc1), Some(goexit0), write_loop, round_trip, tls_read, tls_write, server_handshake, client_handshake, newproc_closure] =
        found
    else {
        let i = found.iter().position(Option::is_none).unwrap_or(0);
        return Err(InspectError::FunctionMissing(NAMES[i]));
    };
    let text = |f: &Function, name: &'static str| -> Result<(u64, &'a [u8]), InspectError> {
        let section = file
            .sections()
            .find(|s| s.kind() == SectionKind::Text && s.address() <= f.address && f.address < s.address() + s.size())
            .ok_or(InspectError::FunctionMissing(name))?;
        let (section_offset, _) = section.file_range().ok_or(InspectError::FunctionMissing(name))?;
        let file_offset = f.address - section.address() + section_offset; // inside the section: no overflow
        let size = f.size.min(MAX_FUNCTION);
        let bytes = section
            .data_range(f.address, size)
            .ok()
            .flatten()
            .ok_or_else(|| InspectError::Read(format!("the code of {name}")))?;
        Ok((file_offset, bytes))
    };
    // Where an entry probe goes, as a file offset.
    let entry = |f: &Function, name: &'static str| -> Result<u64, InspectError> {
        let (offset, code) = text(f, name)?;
        Ok(entry_site(code, f.address) - f.address + offset)
    };
    // (entry, RETs) as file offsets; no RET is an error.
    let entry_and_returns = |f: &Function, name: &'static str| -> Result<(u64, Vec<u64>), InspectError> {
        let (offset, code) = text(f, name)?;
        let returns: Vec<u64> = return_sites(code, f.address).into_iter().map(|at| at - f.address + offset).collect();
        if returns.is_empty() {
            return Err(InspectError::NoReturn(name));
        }
        Ok((entry_site(code, f.address) - f.address + offset, returns))
    };
    let (_, newproc1_returns) = entry_and_returns(&newproc1, NAMES[0])?;
    let newg_call = newproc_closure.and_then(|f| {
        let (offset, code) = text(&f, NAMES[8]).ok()?;
        newg_call_site(code, f.address, newproc1.address).map(|at| at - f.address + offset)
    });
    // Read and Write, or nothing; the handshakes that are linked in (a
    // handshake not followed would leave the first request of a server
    // connection, read along with the client's Finished, unseen).
    let tls = match (tls_read, tls_write) {
        (Some(r), Some(w)) => {
            let sites = || -> Result<GoTlsSites, InspectError> {
                let (read, read_returns) = entry_and_returns(&r, NAMES[4])?;
                let (write, write_returns) = entry_and_returns(&w, NAMES[5])?;
                let mut t = GoTlsSites { read, read_returns, write, write_returns, ..Default::default() };
                for (f, name) in [(server_handshake, NAMES[6]), (client_handshake, NAMES[7])] {
                    if let Some(f) = f {
                        let (entry, returns) = entry_and_returns(&f, name)?;
                        t.handshakes.push(entry);
                        t.handshake_returns.extend(returns);
                    }
                }
                Ok(t)
            };
            sites().ok()
        }
        _ => None,
    };
    Ok(GoBinary {
        version,
        offsets,
        newproc1_returns,
        newg_call,
        goexit0: entry(&goexit0, NAMES[1])?,
        http_write_loop: write_loop.and_then(|f| entry(&f, NAMES[2]).ok()),
        http_round_trip: round_trip.and_then(|f| entry(&f, NAMES[3]).ok()),
        tls,
        stripped,
    })
}

/// The Go version recorded in `.go.buildinfo` (Go 1.18+: inline strings).
/// Layout: "\xff Go buildinf:" (14 bytes), pointer size, flags (bit 1:
/// inline strings), padding to 32, then the version as a varint-prefixed string.
pub fn go_version(info: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !info.starts_with(MAGIC) || info.len() < 33 || info[15] & 2 == 0 {
        return None;
    }
    let (len, used) = uvarint(&info[32..])?;
    let start = 32 + used;
    let bytes = info.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
    let version = std::str::from_utf8(bytes).ok()?;
    version.starts_with("go").then(|| version.to_owned())
}

fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// A function's entry and size from `.gopclntab` (Go 1.18+ layout, magic
/// 0xfffffff0 or 0xfffffff1): a header of 8 words (nfunc, nfiles,
/// textStart, then offsets of funcnametab, cutab, filetab, pctab, and the
/// function table), the function table being nfunc+1 pairs (entry offset
/// from textStart, offset of the _func record), each _func starting with
/// its entry offset and the offset of its name in funcnametab. A function
/// ends where the next one starts.
fn pclntab_function(table: &[u8], name: &str) -> Option<Function> {
    let u32_at =
        |at: usize| -> Option<u32> { Some(u32::from_le_bytes(table.get(at..at.checked_add(4)?)?.try_into().ok()?)) };
    let word = |at: usize| -> Option<usize> {
        usize::try_from(u64::from_le_bytes(table.get(at..at.checked_add(8)?)?.try_into().ok()?)).ok()
    };
    let magic = u32_at(0)?;
    if !(magic == 0xffff_fff0 || magic == 0xffff_fff1) || table.get(7) != Some(&8) {
        return None;
    }
    let nfunc = word(8)?;
    let text_start = word(24)? as u64;
    let funcnames = word(32)?;
    let functab = word(64)?;
    // Offsets come from the file: checked, so that a damaged table ends the search.
    for i in 0..nfunc {
        let entry = functab.checked_add(i.checked_mul(8)?)?;
        let func = functab.checked_add(u32_at(entry.checked_add(4)?)? as usize)?;
        let name_off = u32_at(func.checked_add(4)?)? as usize;
        let at = funcnames.checked_add(name_off)?;
        let rest = table.get(at..at.checked_add(name.len() + 1)?)?;
        if &rest[..name.len()] == name.as_bytes() && rest[name.len()] == 0 {
            let start = u64::from(u32_at(entry)?);
            let end = u64::from(u32_at(entry.checked_add(8)?)?);
            return Some(Function { address: text_start.checked_add(start)?, size: end.checked_sub(start)? });
        }
    }
    None
}

/// Where an entry uprobe of the function at `address` costs least: the
/// conditional jump of Go's stack-check prologue (`CMPQ 0x10(R14), SP; JBE`,
/// or `LEAQ -n(SP), R12; CMPQ R12, 0x10(R14); JBE` for large frames) when
/// the function starts with one, else the entry itself. The kernel emulates
/// a probed jump or call, but steps any other instruction out of line, and
/// that single-step trap is what a uprobe costs most (measured: a third of
/// the box's CPU under load in the Go bench). Nothing before the jump writes
/// an argument register, the g register (R14) or SP, so the programs read
/// what they would read at the entry. A stack that must grow makes the
/// function run its prologue twice: the entry would fire twice as well.
pub fn entry_site(code: &[u8], address: u64) -> u64 {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    for _ in 0..3 {
        if !decoder.can_decode() {
            break;
        }
        let i = decoder.decode();
        if i.is_jcc_short_or_near() {
            return i.ip();
        }
        let scratch = |r: Register| matches!(r.full_register(), Register::R12 | Register::R13);
        let harmless = match i.mnemonic() {
            Mnemonic::Cmp | Mnemonic::Test => true,
            Mnemonic::Lea => i.op0_kind() == OpKind::Register && scratch(i.op0_register()),
            _ => false,
        };
        if !harmless {
            break;
        }
    }
    address
}

/// In runtime.newproc.func1 (`code` at `address`, the closure newproc runs
/// on the system stack: `newg := newproc1(...); runqput(pp, newg, true)`),
/// the direct call after the call of newproc1 (at `newproc1`), when the new
/// goroutine is in RBX there (runqput's second argument). A probed call is
/// emulated by the kernel, a probed RET is single-stepped: this site spares
/// every goroutine creation a trap. None when the code is not of that shape
/// (the hooks then stay on newproc1's RETs).
pub fn newg_call_site(code: &[u8], address: u64, newproc1: u64) -> Option<u64> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut after_newproc1 = false;
    // Registers holding the new goroutine (newproc1 returns it in RAX).
    let mut holding: Vec<Register> = Vec::new();
    while decoder.can_decode() {
        let i = decoder.decode();
        if !after_newproc1 {
            if i.is_call_near() && i.near_branch_target() == newproc1 {
                after_newproc1 = true;
                holding.push(Register::RAX);
            }
            continue;
        }
        if i.is_call_near() {
            return holding.contains(&Register::RBX).then(|| i.ip());
        }
        match i.mnemonic() {
            Mnemonic::Nop => {}
            Mnemonic::Mov if i.op0_kind() == OpKind::Register && i.op1_kind() == OpKind::Register => {
                let (to, from) = (i.op0_register().full_register(), i.op1_register().full_register());
                let copies = from == i.op1_register() && holding.contains(&from);
                holding.retain(|&r| r != to);
                if copies {
                    holding.push(to);
                }
            }
            // Anything else that names a register first may write it.
            _ if i.op_count() > 0 && i.op0_kind() == OpKind::Register => {
                let to = i.op0_register().full_register();
                holding.retain(|&r| r != to);
            }
            _ if i.op_count() > 0 && i.op0_kind() == OpKind::Memory => {}
            _ => return None, // a branch, or something not understood
        }
    }
    None
}

/// Addresses of the RET instructions of `code` (loaded at `address`),
/// decoded instruction by instruction: a 0xC3 byte inside another
/// instruction is no return site, and a uprobe there would corrupt the code.
pub fn return_sites(code: &[u8], address: u64) -> Vec<u64> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.mnemonic() == Mnemonic::Ret {
            out.push(instruction.ip());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_are_decoded_not_grepped() {
        // add rbx, 0x10 (48 83 c3 10: a 0xC3 byte that is no RET); ret; int3; ret imm16
        let code = [0x48, 0x83, 0xc3, 0x10, 0xc3, 0xcc, 0xc2, 0x08, 0x00];
        assert_eq!(return_sites(&code, 0x1000), vec![0x1004, 0x1006]);
    }

    #[test]
    fn entry_probes_go_on_the_stack_check_jump() {
        // cmp rsp, [r14+0x10]; jbe; sub rsp, 0x20 (go1.19 runtime.newproc.func1)
        let small = [0x49, 0x3b, 0x66, 0x10, 0x76, 0x57, 0x48, 0x83, 0xec, 0x20];
        assert_eq!(entry_site(&small, 0x1000), 0x1004);
        // lea r12, [rsp-0x88]; cmp r12, [r14+0x10]; jbe rel32 (a large frame)
        let large = [0x4c, 0x8d, 0xa4, 0x24, 0x78, 0xff, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0, 1, 0, 0];
        assert_eq!(entry_site(&large, 0x1000), 0x100c);
        // lea rax, [rsp-8] first: an argument register changes, stay at the entry
        let writes_rax = [0x48, 0x8d, 0x44, 0x24, 0xf8, 0x49, 0x3b, 0x66, 0x10, 0x76, 0x57];
        assert_eq!(entry_site(&writes_rax, 0x1000), 0x1000);
        // no prologue (a NOSPLIT function): mov rax, [rsp+8]; ret
        assert_eq!(entry_site(&[0x48, 0x8b, 0x44, 0x24, 0x08, 0xc3], 0x1000), 0x1000);
    }

    /// go1.19's runtime.newproc.func1 as Debian's go1.19.8 builds it.
    const NEWPROC_FUNC1: [u8; 69] = [
        0x49, 0x3b, 0x66, 0x10, 0x76, 0x57, 0x48, 0x83, 0xec, 0x20, 0x48, 0x89, 0x6c, 0x24, 0x18, 0x48, 0x8d, 0x6c,
        0x24, 0x18, 0x48, 0x8b, 0x5a, 0x10, 0x48, 0x8b, 0x4a, 0x18, 0x48, 0x8b, 0x42, 0x08, 0xe8, 0x5b, 0x00, 0x00,
        0x00, 0x49, 0x8b, 0x56, 0x30, 0x48, 0x8b, 0x92, 0xd0, 0x00, 0x00, 0x00, 0x48, 0x89, 0xc3, 0xb9, 0x01, 0x00,
        0x00, 0x00, 0x48, 0x89, 0xd0, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0xe8, 0x3b, 0x41, 0x00, 0x00,
    ];

    #[test]
    fn the_new_goroutine_is_found_at_the_call_after_newproc1() {
        let newproc1 = 0x4417e0; // call at 0x441780, rel32 0x5b
        assert_eq!(newg_call_site(&NEWPROC_FUNC1, 0x441760, newproc1), Some(0x4417a0));
        // Another callee than newproc1: no site.
        assert_eq!(newg_call_site(&NEWPROC_FUNC1, 0x441760, newproc1 + 16), None);
        // mov rcx, rax instead of mov rbx, rax: RBX is not the new goroutine.
        let mut other = NEWPROC_FUNC1;
        other[50] = 0xc1;
        assert_eq!(newg_call_site(&other, 0x441760, newproc1), None);
        // mov ebx, eax (32 bits) is no copy of a pointer.
        let mut narrow = NEWPROC_FUNC1;
        narrow[48] = 0x90; // nop; 89 c3
        assert_eq!(newg_call_site(&narrow, 0x441760, newproc1), None);
    }

    #[test]
    fn version_from_buildinfo() {
        let mut info = b"\xff Go buildinf:".to_vec();
        info.extend([8, 2]);
        info.resize(32, 0);
        info.push(8);
        info.extend(b"go1.19.8");
        assert_eq!(go_version(&info).as_deref(), Some("go1.19.8"));
        info[15] = 0; // pre-1.18: pointers, not strings
        assert_eq!(go_version(&info), None);
        assert!(runtime_offsets("go1.19.8").is_some());
        assert!(runtime_offsets("go1.20").is_none());
        assert!(runtime_offsets("devel").is_none());
    }

    /// A table whose offsets point anywhere ends the search, never panics.
    #[test]
    fn a_damaged_pclntab_finds_nothing() {
        let mut table = vec![0u8; 72];
        table[..4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        table[7] = 8;
        table[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // nfunc
        table[32..40].copy_from_slice(&(u64::MAX - 2).to_le_bytes()); // funcnametab
        table[64..72].copy_from_slice(&(u64::MAX - 4).to_le_bytes()); // functab
        assert!(pclntab_function(&table, "runtime.newproc1").is_none());
        assert!(pclntab_function(&table[..10], "runtime.newproc1").is_none());
    }

    #[test]
    fn non_go_executables_are_told_apart() {
        let me = std::env::current_exe().unwrap();
        assert_eq!(inspect_file(&me).unwrap_err(), InspectError::NotGo);
    }
}
