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

    /// Waits until the kernel signals new records.
    pub async fn wait(&mut self) -> io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        // Clear before draining: records that arrive after the drain raise
        // readiness again, so none is left behind.
        guard.clear_ready();
        Ok(())
    }

    /// Hands every available record to `on_record`; returns how many.
    pub fn drain(&mut self, mut on_record: impl FnMut(&[u8])) -> usize {
        let ring = self.fd.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            on_record(&item);
            n += 1;
        }
        n
    }
}
