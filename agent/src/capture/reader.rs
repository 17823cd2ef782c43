//! The ring buffer behind an AsyncFd: wait for readiness, then drain every
//! record in place (records are borrowed and released after the callback).
use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

pub struct RingReader {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl RingReader {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd lives
        // (the AsyncFd owns the RingBuf), so the fd is not closed while registered.
        let fd = unsafe { AsyncFd::register(ring)? };
        Ok(Self { fd })
    }

    /// Waits until records are available, then hands each one to `on_record`.
    /// Returns the number of records drained.
    pub async fn drain(&mut self, mut on_record: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut guard = self.fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            on_record(&item);
            n += 1;
        }
        guard.clear_ready();
        Ok(n)
    }
}
