//! Writing a connection's pending bytes, shared by every TCP scenario.

use std::io::{self, Write};

/// What writing a connection's pending bytes came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Everything pending was written.
    All,
    /// The socket buffer is full; the rest waits for the next writable event.
    WouldBlock,
    /// The connection cannot take writes any more; the text says why.
    Failed(String),
}

/// Write `out[*written..]` until it is all written or the socket would block, advancing
/// `written` by what the kernel took.
pub fn write_pending(stream: &mut impl Write, out: &[u8], written: &mut usize) -> Drained {
    while let Some(rest) = out.get(*written..).filter(|rest| !rest.is_empty()) {
        match stream.write(rest) {
            Ok(0) => return Drained::Failed("write returned 0".to_string()),
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Drained::Failed(e.to_string()),
        }
    }
    Drained::All
}

/// A connection's bytes due to go out: appended at the end, written from the front.
///
/// Offsets ([`OutBuf::end`], [`OutBuf::written`]) count every byte the buffer ever took, so a
/// message remembered by the offset just past its last byte is out once `written()` reaches it,
/// whatever was reclaimed from the front in between.
#[derive(Debug, Default)]
pub struct OutBuf {
    bytes: Vec<u8>,
    /// `bytes[..written]` are out.
    written: usize,
    /// Bytes reclaimed from the front (or dropped by `clear`) so far.
    dropped: usize,
}

/// Below this, a written prefix is left in place: moving the unwritten rest costs more than the
/// memory it frees.
const RECLAIM_BYTES_MIN: usize = 64 * 1024;

impl OutBuf {
    /// Bytes appended and not yet written.
    pub fn pending(&self) -> usize {
        self.bytes.len() - self.written
    }

    pub fn has_pending(&self) -> bool {
        self.written < self.bytes.len()
    }

    /// The offset just past the last byte appended.
    pub fn end(&self) -> usize {
        self.dropped + self.bytes.len()
    }

    /// The offset just past the last byte written.
    pub fn written(&self) -> usize {
        self.dropped + self.written
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Appends `n` zero bytes for the caller to fill in place.
    pub fn append(&mut self, n: usize) -> &mut [u8] {
        let start = self.bytes.len();
        self.bytes.resize(start + n, 0);
        &mut self.bytes[start..]
    }

    /// Takes back the last `n` bytes appended (none of them written yet).
    pub fn unappend(&mut self, n: usize) {
        let keep = self.bytes.len().saturating_sub(n).max(self.written);
        self.bytes.truncate(keep);
    }

    /// Drops everything not yet written (the connection is gone).
    pub fn clear(&mut self) {
        self.dropped += self.bytes.len();
        self.bytes.clear();
        self.written = 0;
    }

    /// Writes the pending bytes until done or `WouldBlock` (see [`write_pending`]), then
    /// reclaims the written prefix: all of it when everything is out, else once it is large
    /// and at least half the buffer.
    pub fn write_to(&mut self, stream: &mut impl Write) -> Drained {
        let drained = write_pending(stream, &self.bytes, &mut self.written);
        if self.written == self.bytes.len() {
            self.clear();
        } else if self.written >= RECLAIM_BYTES_MIN && self.written * 2 >= self.bytes.len() {
            self.bytes.drain(..self.written);
            self.dropped += self.written;
            self.written = 0;
        }
        drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `chunk` bytes per write, then would block after `capacity` in all.
    struct Sink {
        taken: Vec<u8>,
        chunk: usize,
        capacity: usize,
        interrupt_once: bool,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.interrupt_once {
                self.interrupt_once = false;
                return Err(io::ErrorKind::Interrupted.into());
            }
            let room = self.capacity - self.taken.len();
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk).min(room);
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_everything_across_short_writes_and_an_interruption() {
        let mut sink = Sink {
            taken: Vec::new(),
            chunk: 3,
            capacity: 100,
            interrupt_once: true,
        };
        let mut written = 2;
        assert_eq!(
            write_pending(&mut sink, b"xxhello world", &mut written),
            Drained::All
        );
        assert_eq!(written, 13);
        assert_eq!(sink.taken, b"hello world");
    }

    #[test]
    fn stops_at_would_block_and_resumes_where_it_stopped() {
        let mut sink = Sink {
            taken: Vec::new(),
            chunk: 4,
            capacity: 5,
            interrupt_once: false,
        };
        let mut written = 0;
        assert_eq!(
            write_pending(&mut sink, b"0123456789", &mut written),
            Drained::WouldBlock
        );
        assert_eq!(written, 5);
        sink.capacity = 10;
        assert_eq!(
            write_pending(&mut sink, b"0123456789", &mut written),
            Drained::All
        );
        assert_eq!(sink.taken, b"0123456789");
    }

    #[test]
    fn out_buf_offsets_survive_reclaiming_the_written_prefix() {
        let mut sink = Sink {
            taken: Vec::new(),
            chunk: usize::MAX,
            capacity: RECLAIM_BYTES_MIN + 10,
            interrupt_once: false,
        };
        let mut out = OutBuf::default();
        out.extend(&[1; RECLAIM_BYTES_MIN]);
        let first_end = out.end();
        out.extend(&[2; 20]);
        let second_end = out.end();
        assert_eq!(out.write_to(&mut sink), Drained::WouldBlock);
        assert!(out.written() >= first_end && out.written() < second_end);
        assert_eq!(out.pending(), 10);
        // The written prefix was large and most of the buffer: reclaimed, offsets unchanged.
        assert_eq!(out.bytes.len(), 10);
        assert_eq!(out.end(), second_end);
        out.append(3).copy_from_slice(b"abc");
        out.unappend(3);
        assert_eq!(out.end(), second_end);
        sink.capacity += 10;
        assert_eq!(out.write_to(&mut sink), Drained::All);
        assert_eq!(out.written(), second_end);
        assert!(!out.has_pending());
        assert!(
            out.bytes.is_empty(),
            "everything out: the buffer is emptied"
        );
        assert_eq!(&sink.taken[RECLAIM_BYTES_MIN..], &[2; 20]);
    }

    #[test]
    fn out_buf_keeps_a_small_written_prefix() {
        let mut sink = Sink {
            taken: Vec::new(),
            chunk: usize::MAX,
            capacity: 5,
            interrupt_once: false,
        };
        let mut out = OutBuf::default();
        out.extend(b"0123456789");
        assert_eq!(out.write_to(&mut sink), Drained::WouldBlock);
        assert_eq!((out.written(), out.pending(), out.bytes.len()), (5, 5, 10));
        out.clear();
        assert_eq!((out.written(), out.end(), out.pending()), (10, 10, 0));
    }

    #[test]
    fn a_zero_write_is_a_failure() {
        let mut sink = Sink {
            taken: Vec::new(),
            chunk: 0,
            capacity: 10,
            interrupt_once: false,
        };
        let mut written = 0;
        assert_eq!(
            write_pending(&mut sink, b"abc", &mut written),
            Drained::Failed("write returned 0".to_string())
        );
    }
}
