//! A discarding OTLP/HTTP (protobuf) endpoint: reads each POST body, counts it,
//! answers 200 with an empty body (an empty protobuf message is a valid
//! Export*ServiceResponse without partial success).
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

#[derive(Default)]
pub struct SinkStats {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
}

pub fn start(port: u16) -> anyhow::Result<Arc<SinkStats>> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let stats = Arc::new(SinkStats::default());
    let s = stats.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || {
                let _ = serve(conn, &s);
            });
        }
    });
    Ok(stats)
}

fn serve(conn: TcpStream, stats: &SinkStats) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let mut body = Vec::new();
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
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
                }
            }
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
        w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")?;
    }
}
