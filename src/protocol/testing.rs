//! An [`Outbox`] that records, for sans-io tests and benches of the protocol logic.

use bytes::Bytes;

use super::{CloseMode, CloseReason, ConnId, Outbox};

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

    fn count_frame_in(&mut self) {
        self.frames_in += 1;
    }
}
