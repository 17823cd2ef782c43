//! An OTLP/HTTP (protobuf) endpoint for xtask commands: reads each POST body,
//! counts it, answers 200 with an empty body (an empty protobuf message is a
//! valid Export*ServiceResponse without partial success). `start` discards
//! the bodies (bench, soak); `start_recording` also keeps the bodies posted to
//! `/v1/traces` for decoding (compare), up to a byte budget.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use anyhow::bail;

/// Bodies kept by a recording sink at most (the rest are counted in `dropped`).
const KEEP_BYTES: usize = 1 << 30;

#[derive(Default)]
pub struct SinkStats {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    /// Trace bodies not kept because the budget was spent.
    pub dropped: AtomicU64,
    keep: bool,
    traces: Mutex<(usize, Vec<Vec<u8>>)>,
}

impl SinkStats {
    /// The `/v1/traces` bodies received so far (ExportTraceServiceRequest
    /// protobuf), taken out of the sink.
    pub fn take_traces(&self) -> Vec<Vec<u8>> {
        let mut kept = self.traces.lock().unwrap();
        kept.0 = 0;
        std::mem::take(&mut kept.1)
    }
}

/// A discarding sink on 127.0.0.1:`port`.
pub fn start(port: u16) -> anyhow::Result<Arc<SinkStats>> {
    Ok(listen(port, false)?.0)
}

/// A sink that keeps trace bodies, on 127.0.0.1:`port` (0: any free port);
/// returns the port it listens on.
pub fn start_recording(port: u16) -> anyhow::Result<(Arc<SinkStats>, u16)> {
    listen(port, true)
}

fn listen(port: u16, keep: bool) -> anyhow::Result<(Arc<SinkStats>, u16)> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let port = listener.local_addr()?.port();
    let stats = Arc::new(SinkStats { keep, ..SinkStats::default() });
    let s = stats.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || {
                let _ = serve(conn, &s);
            });
        }
    });
    Ok((stats, port))
}

fn serve(conn: TcpStream, stats: &SinkStats) -> anyhow::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut len = 0usize;
        let mut chunked = false;
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let traces = line.split_whitespace().nth(1).is_some_and(|p| p.ends_with("/v1/traces"));
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked") {
                    chunked = true;
                } else if k.eq_ignore_ascii_case("content-encoding") && !v.trim().eq_ignore_ascii_case("identity") {
                    bail!("compressed OTLP body ({}): configure the exporter without compression", v.trim());
                }
            }
        }
        let body = if chunked { read_chunked(&mut r)? } else { read_exact_vec(&mut r, len)? };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        if stats.keep && traces {
            let mut kept = stats.traces.lock().unwrap();
            if kept.0 + body.len() <= KEEP_BYTES {
                kept.0 += body.len();
                kept.1.push(body);
            } else {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")?;
    }
}

fn read_exact_vec(r: &mut impl Read, len: usize) -> std::io::Result<Vec<u8>> {
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

fn read_chunked(r: &mut impl BufRead) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)?;
        if size == 0 {
            // Trailers until the empty line.
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > KEEP_BYTES {
            bail!("chunked body larger than {KEEP_BYTES} bytes");
        }
        body.extend(read_exact_vec(r, size)?);
        line.clear();
        r.read_line(&mut line)?; // CRLF after the chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(port: u16, path: &str, head: &str, body: &[u8]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(format!("POST {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n").as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn recording_sink_keeps_trace_bodies_only() {
        let (stats, port) = start_recording(0).unwrap();
        assert!(post(port, "/v1/traces", "Content-Length: 3\r\n", b"abc").starts_with("HTTP/1.1 200"));
        assert!(post(port, "/v1/metrics", "Content-Length: 2\r\n", b"xy").starts_with("HTTP/1.1 200"));
        let chunked = b"2\r\nde\r\n1\r\nf\r\n0\r\n\r\n";
        assert!(post(port, "/v1/traces", "Transfer-Encoding: chunked\r\n", chunked).starts_with("HTTP/1.1 200"));
        assert_eq!(stats.requests.load(Ordering::Relaxed), 3);
        assert_eq!(stats.take_traces(), vec![b"abc".to_vec(), b"def".to_vec()]);
        assert!(stats.take_traces().is_empty());
    }
}
