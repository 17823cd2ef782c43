//! Load generators: wrk (closed loop, saturating), pgbench, and a fixed-rate
//! open-loop HTTP/1.1 generator written here (wrk2 is not packaged by Debian).
use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::util::percentile;

/// What one load run measured.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    /// Completed requests (transactions for pgbench).
    pub requests: u64,
    /// Throughput per second.
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Only the fixed-rate generator: p99.9 and the max, and the service
    /// time percentiles (from the actual send rather than the schedule).
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
    pub service_p50_us: Option<f64>,
    pub service_p99_us: Option<f64>,
    /// Socket errors, timeouts, non-2xx responses, failed transactions.
    pub errors: u64,
}

/// Runs `wrk -t1 -c{conns} -d{secs}s --latency url`.
pub fn wrk(url: &str, conns: u32, dur: Duration) -> anyhow::Result<LoadResult> {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{conns}"), &format!("-d{}s", dur.as_secs()), "--latency", url])
        .stdin(Stdio::null())
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("parsing wrk output:\n{text}"))
}

fn wrk_duration_us(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        "m" => v * 60e6,
        _ => return None,
    })
}

pub fn parse_wrk(text: &str) -> anyhow::Result<LoadResult> {
    let mut r = LoadResult::default();
    for line in text.lines() {
        let l = line.trim();
        let words: Vec<&str> = l.split_whitespace().collect();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            r.rate = v.trim().parse()?;
        } else if words.len() >= 3 && words[1] == "requests" && words[2] == "in" {
            r.requests = words[0].parse()?;
        } else if words.len() == 2 && words[0] == "50%" {
            r.p50_us = wrk_duration_us(words[1]).context("p50")?;
        } else if words.len() == 2 && words[0] == "99%" {
            r.p99_us = wrk_duration_us(words[1]).context("p99")?;
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            r.errors += v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>()?;
        }
    }
    if r.rate == 0.0 || r.requests == 0 {
        bail!("no requests completed");
    }
    Ok(r)
}

/// pgbench's summary plus its per-transaction log (latency in µs, third field).
pub fn parse_pgbench(summary: &str, logs: &[String]) -> anyhow::Result<LoadResult> {
    let mut r = LoadResult::default();
    for line in summary.lines() {
        if let Some(v) = line.strip_prefix("number of transactions actually processed:") {
            r.requests = v.split_whitespace().next().unwrap_or("0").split('/').next().unwrap_or("0").parse()?;
        } else if let Some(v) = line.strip_prefix("number of failed transactions:") {
            r.errors += v.split_whitespace().next().unwrap_or("0").parse::<u64>()?;
        } else if let Some(v) = line.strip_prefix("tps = ") {
            r.rate = v.split_whitespace().next().unwrap_or("0").parse()?;
        }
    }
    let mut lat: Vec<u64> =
        logs.iter().flat_map(|l| l.lines()).filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()).collect();
    lat.sort_unstable();
    if r.requests == 0 || lat.is_empty() {
        bail!("pgbench completed no transaction:\n{summary}");
    }
    r.p50_us = percentile(&lat, 50.0) as f64;
    r.p99_us = percentile(&lat, 99.0) as f64;
    Ok(r)
}

/// Open-loop generator: `conns` keep-alive connections, one thread each;
/// request k of connection i is due at t0 + (k*conns + i)/rate. Latency is
/// measured from the due time (so a server or generator that falls behind
/// shows up in the latency, like wrk2's coordinated-omission correction) and,
/// separately, from the actual send (service time).
pub fn fixed_rate(
    port: u16,
    rate: f64,
    conns: usize,
    dur: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<LoadResult> {
    let request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: periscope-bench\r\n\r\n";
    let t0 = Instant::now() + Duration::from_millis(50);
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let end = t0 + dur;
    let mut threads = Vec::new();
    for i in 0..conns {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || -> anyhow::Result<(Vec<u64>, Vec<u64>, u64)> {
            // 1 µs timer slack: sleeps end close to the due time.
            // SAFETY: prctl on the calling thread only.
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64);
            }
            let mut sched = Vec::with_capacity((dur.as_secs_f64() * rate / conns as f64) as usize + 16);
            let mut service = Vec::with_capacity(sched.capacity());
            let mut errors = 0u64;
            let mut conn: Option<TcpStream> = None;
            let mut buf = vec![0u8; 4096];
            let first = t0 + Duration::from_secs_f64(i as f64 / rate);
            let mut k: u32 = 0;
            loop {
                let due = first + interval * k;
                k += 1;
                if due >= end || stop.load(Ordering::Relaxed) {
                    break;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let sent = Instant::now();
                let ok = (|| -> std::io::Result<()> {
                    if conn.is_none() {
                        let s = TcpStream::connect(("127.0.0.1", port))?;
                        s.set_nodelay(true)?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                        conn = Some(s);
                    }
                    let s = conn.as_mut().unwrap();
                    s.write_all(request)?;
                    read_response(s, &mut buf)
                })();
                let done = Instant::now();
                match ok {
                    Ok(()) => {
                        sched.push(done.duration_since(due).as_nanos() as u64);
                        service.push(done.duration_since(sent).as_nanos() as u64);
                    }
                    Err(_) => {
                        errors += 1;
                        conn = None;
                    }
                }
            }
            Ok((sched, service, errors))
        }));
    }
    let mut sched = Vec::new();
    let mut service = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (a, b, e) = t.join().map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        sched.extend(a);
        service.extend(b);
        errors += e;
    }
    let elapsed = Instant::now().saturating_duration_since(t0).min(dur).as_secs_f64();
    sched.sort_unstable();
    service.sort_unstable();
    let us = |ns: u64| ns as f64 / 1e3;
    Ok(LoadResult {
        requests: sched.len() as u64,
        rate: sched.len() as f64 / elapsed,
        p50_us: us(percentile(&sched, 50.0)),
        p99_us: us(percentile(&sched, 99.0)),
        p999_us: Some(us(percentile(&sched, 99.9))),
        max_us: Some(us(sched.last().copied().unwrap_or(0))),
        service_p50_us: Some(us(percentile(&service, 50.0))),
        service_p99_us: Some(us(percentile(&service, 99.0))),
        errors,
    })
}

/// Reads one HTTP/1.1 response with a Content-Length body.
fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
        if let Some(h) = find(&buf[..have], b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..h]).map_err(|_| std::io::ErrorKind::InvalidData)?;
            if !head.starts_with("HTTP/1.1 200") {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                })
                .ok_or(std::io::ErrorKind::InvalidData)?;
            let total = h + 4 + len;
            if total > buf.len() {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            while have < total {
                let n = s.read(&mut buf[have..total])?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                have += n;
            }
            return Ok(());
        }
        if have == buf.len() {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk() {
        let t = "Running 5s test @ http://127.0.0.1:18080/\n  1 threads and 16 connections\n  Latency Distribution\n     50%   61.00us\n     75%   67.00us\n     90%    2.13ms\n     99%    8.95ms\n  1030421 requests in 5.10s, 150.35MB read\n  Socket errors: connect 0, read 2, write 0, timeout 3\nRequests/sec: 202051.65\n";
        let r = parse_wrk(t).unwrap();
        assert_eq!(r.requests, 1030421);
        assert_eq!(r.p50_us, 61.0);
        assert_eq!(r.p99_us, 8950.0);
        assert_eq!(r.errors, 5);
        assert!((r.rate - 202051.65).abs() < 1e-6);
    }

    #[test]
    fn parses_pgbench() {
        let s = "number of transactions actually processed: 250847\nnumber of failed transactions: 0 (0.000%)\ntps = 50220.112269 (without initial connection time)\n";
        let logs = vec!["0 1 150 0 1700000000 1\n1 1 300 0 1700000000 2\n".to_owned()];
        let r = parse_pgbench(s, &logs).unwrap();
        assert_eq!(r.requests, 250847);
        assert_eq!(r.p50_us, 150.0);
        assert_eq!(r.p99_us, 300.0);
    }
}
