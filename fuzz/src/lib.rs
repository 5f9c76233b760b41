//! What the fuzz targets share: cutting an input into the chunks a socket might deliver,
//! driving a decoder over them with its contract checked, and reading a service target's
//! input as a list of operations on a few connections.

use std::fmt::Debug;

use bytes::BytesMut;
use switchboard::protocol::{CloseMode, CloseReason, ConnId};

/// Cut `data` into reads, as a socket may deliver them. The first byte decides how: below
/// 128 it is one cut at that fraction of the rest (0 means no cut), from 128 on the rest comes
/// in reads of `byte - 127` bytes (1 to 128).
pub fn split_reads(data: &[u8]) -> Vec<&[u8]> {
    let Some((&how, rest)) = data.split_first() else {
        return Vec::new();
    };
    if how < 128 {
        let at = usize::from(how) * rest.len() / 127;
        let (head, tail) = rest.split_at(at.min(rest.len()));
        vec![head, tail]
    } else {
        rest.chunks(usize::from(how - 127)).collect()
    }
}

/// Feed `reads` one after the other into one buffer and decode after each until the decoder
/// stops, checking the contract every stream decoder here shares:
/// - `Ok(Some)` cut a non-empty frame from the front of the buffer, nothing else;
/// - `Ok(None)` consumed nothing;
/// - an error consumed nothing, and ends the stream (framing is lost).
///
/// `on_frame` gets each frame and the bytes it was cut from, and returns how many raw bytes
/// follow it on the stream unframed (a MATOU file's bytes), which are skipped.
pub fn drive_decoder<T, E: Debug>(
    reads: &[&[u8]],
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, E>,
    mut on_frame: impl FnMut(T, &[u8]) -> u64,
) {
    let mut buf = BytesMut::new();
    let mut skip_bytes: u64 = 0;
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            if skip_bytes > 0 {
                let n = usize::try_from(skip_bytes)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let _ = buf.split_to(n);
                skip_bytes -= n as u64;
                if skip_bytes > 0 {
                    break;
                }
            }
            let before = buf.to_vec();
            match decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(buf.len() < before.len(), "a frame consumed nothing");
                    let consumed = before.len() - buf.len();
                    assert_eq!(
                        &buf[..],
                        &before[consumed..],
                        "a frame not cut from the front"
                    );
                    skip_bytes = on_frame(frame, &before[..consumed]);
                }
                Ok(None) => {
                    assert_eq!(&buf[..], &before[..], "Ok(None) consumed bytes");
                    break;
                }
                Err(_) => {
                    assert_eq!(&buf[..], &before[..], "an error consumed bytes");
                    return;
                }
            }
        }
    }
}

/// A service target's input, read as operations. Every read is total: past the end it
/// yields zeros and empty slices, so any input is a valid (if short) program.
pub struct Ops<'a> {
    data: &'a [u8],
}

impl<'a> Ops<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Ops { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// A slot number below [`SLOTS`].
    pub fn slot(&mut self) -> usize {
        usize::from(self.byte()) % SLOTS
    }

    /// A length byte, then up to that many bytes.
    pub fn chunk(&mut self) -> &'a [u8] {
        let len = usize::from(self.byte()).min(self.data.len());
        let (chunk, rest) = self.data.split_at(len);
        self.data = rest;
        chunk
    }
}

/// Connection slots a service target plays with: enough for rooms, links and name clashes.
pub const SLOTS: usize = 4;

/// The reactor's side of a few connections: which are open, under which generation, and
/// each one's unconsumed input (kept between reads, as the reactor keeps its read buffer).
#[derive(Default)]
pub struct Conns {
    generation: [u32; SLOTS],
    open: [bool; SLOTS],
    pub input: [BytesMut; SLOTS],
}

impl Conns {
    pub fn id(&self, slot: usize) -> ConnId {
        ConnId::new(slot as u32, self.generation[slot] + 1)
    }

    pub fn is_open(&self, slot: usize) -> bool {
        self.open[slot]
    }

    /// Open `slot` if it is not: its id, to hand to `on_accept`.
    pub fn accept(&mut self, slot: usize) -> Option<ConnId> {
        if self.open[slot] {
            return None;
        }
        self.open[slot] = true;
        Some(self.id(slot))
    }

    /// Close `slot` if it is open: its id, to hand to `on_close`. The slot's next connection
    /// gets a new generation, as in the reactor.
    pub fn close(&mut self, slot: usize) -> Option<ConnId> {
        if !self.open[slot] {
            return None;
        }
        let id = self.id(slot);
        self.open[slot] = false;
        self.generation[slot] = self.generation[slot].wrapping_add(1);
        self.input[slot].clear();
        Some(id)
    }

    /// The open slot `id` names, if any.
    pub fn slot_of(&self, id: ConnId) -> Option<usize> {
        (0..SLOTS).find(|&slot| self.open[slot] && self.id(slot) == id)
    }

    /// Every connection the service asked to close that is still open, closed here as the
    /// reactor would close it: the ids to hand to `on_close`.
    pub fn take_closed(
        &mut self,
        closed: &mut Vec<(ConnId, CloseReason, CloseMode)>,
    ) -> Vec<ConnId> {
        let mut gone = Vec::new();
        for (id, _, _) in closed.drain(..) {
            if let Some(slot) = self.slot_of(id) {
                gone.extend(self.close(slot));
            }
        }
        gone
    }
}

/// Service output may go only to connections that are open: never to one the service was
/// told is gone, nor to a stale generation of a reused slot.
pub fn assert_to_open<'x>(conns: &Conns, recipients: impl IntoIterator<Item = &'x ConnId>) {
    for &to in recipients {
        assert!(
            conns.slot_of(to).is_some(),
            "output to {to:?}, which is not an open connection"
        );
    }
}
