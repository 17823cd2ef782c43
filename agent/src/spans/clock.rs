//! Kernel timestamps are CLOCK_MONOTONIC; spans need wall-clock time.
use std::time::{SystemTime, UNIX_EPOCH};

/// Converts monotonic nanoseconds to unix nanoseconds. The offset is
/// re-measured periodically so that NTP steps are followed.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset: i128,
}

pub fn monotonic_now() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl Clock {
    pub fn new() -> Self {
        let mono = monotonic_now();
        let unix = unix_now();
        Self { offset: i128::from(unix) - i128::from(mono) }
    }

    /// A clock with a given offset (tests).
    pub fn with_offset(offset: i128) -> Self {
        Self { offset }
    }

    pub fn to_unix(&self, monotonic_ns: u64) -> u64 {
        (i128::from(monotonic_ns) + self.offset).max(0) as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_monotonic_to_wall_clock() {
        let clock = Clock::new();
        let now = clock.to_unix(monotonic_now());
        let diff = now.abs_diff(unix_now());
        assert!(diff < 50_000_000, "off by {diff} ns");
        assert_eq!(Clock::with_offset(1_000).to_unix(5), 1_005);
    }
}
