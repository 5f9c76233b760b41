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
