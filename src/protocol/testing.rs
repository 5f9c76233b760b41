//! An [`Outbox`] that records, for sans-io tests and benches of the protocol logic.

use std::net::SocketAddr;

use bytes::Bytes;

use super::{CloseMode, CloseReason, ConnId, DatagramDrop, DatagramOut, DatagramSent, Outbox};

#[derive(Debug, Default)]
pub struct RecordingOutbox {
    /// Every send, in order.
    pub sent: Vec<(ConnId, Bytes)>,
    /// Every `send_notify`, in order: (to, bytes, note). The test decides when to report it.
    pub notified: Vec<(ConnId, Bytes, u64)>,
    /// Every close request, in order.
    pub closed: Vec<(ConnId, CloseReason, CloseMode)>,
    pub rejected: u64,
    pub frames_in: u64,
    /// Every `mark_identified`, in order.
    pub identified: Vec<ConnId>,
    /// Every `resume_input`, in order.
    pub resumed: Vec<ConnId>,
}

impl RecordingOutbox {
    /// What was sent to `id`, in order.
    pub fn sent_to(&self, id: ConnId) -> Vec<Bytes> {
        self.sent
            .iter()
            .filter(|(to, _)| *to == id)
            .map(|(_, bytes)| bytes.clone())
            .collect()
    }

    /// Forget what was recorded so far.
    pub fn clear(&mut self) {
        self.sent.clear();
        self.notified.clear();
        self.closed.clear();
    }
}

impl Outbox for RecordingOutbox {
    fn send(&mut self, to: ConnId, bytes: Bytes) {
        self.sent.push((to, bytes));
    }

    fn send_notify(&mut self, to: ConnId, bytes: Bytes, note: u64) -> bool {
        self.notified.push((to, bytes, note));
        true
    }

    fn close(&mut self, id: ConnId, reason: CloseReason, mode: CloseMode) {
        self.closed.push((id, reason, mode));
    }

    fn count_rejected(&mut self) {
        self.rejected += 1;
    }

    fn count_frame_in(&mut self, _from: ConnId) {
        self.frames_in += 1;
    }

    fn mark_identified(&mut self, id: ConnId) {
        self.identified.push(id);
    }

    fn resume_input(&mut self, id: ConnId) {
        self.resumed.push(id);
    }
}

/// A [`DatagramOut`] that records, for sans-io tests of datagram protocols. Sends to an
/// address in `failing` report [`DatagramSent::Failed`]; `full` makes every send report
/// [`DatagramSent::Dropped`] (a full socket buffer).
#[derive(Debug, Default)]
pub struct RecordingDatagrams {
    /// Every datagram sent, in order (failed and dropped ones are not recorded here).
    pub sent: Vec<(SocketAddr, Bytes)>,
    pub failing: Vec<SocketAddr>,
    pub full: bool,
    pub failed: u64,
    pub dropped_out: u64,
    pub dropped_in: Vec<DatagramDrop>,
    pub datagrams_in: u64,
}

impl RecordingDatagrams {
    /// What was sent to `to`, in order.
    pub fn sent_to(&self, to: SocketAddr) -> Vec<Bytes> {
        self.sent
            .iter()
            .filter(|(addr, _)| *addr == to)
            .map(|(_, bytes)| bytes.clone())
            .collect()
    }

    /// Forget what was sent and dropped so far (the failure settings stay).
    pub fn clear(&mut self) {
        self.sent.clear();
        self.dropped_in.clear();
    }
}

impl DatagramOut for RecordingDatagrams {
    fn send_to(&mut self, to: SocketAddr, bytes: &[u8]) -> DatagramSent {
        if self.full {
            self.dropped_out += 1;
            return DatagramSent::Dropped;
        }
        if self.failing.contains(&to) {
            self.failed += 1;
            return DatagramSent::Failed;
        }
        self.sent.push((to, Bytes::copy_from_slice(bytes)));
        DatagramSent::Sent
    }

    fn count_dropped_in(&mut self, why: DatagramDrop) {
        self.dropped_in.push(why);
    }

    fn count_datagram_in(&mut self) {
        self.datagrams_in += 1;
    }
}

/// A small deterministic generator (xorshift64*) for randomized tests: a failure replays
/// exactly from its seed. Not for anything that needs real randomness.
#[derive(Debug)]
pub struct TestRng(pub u64);

impl TestRng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}
