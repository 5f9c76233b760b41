//! A [`HubOut`] that records, for sans-io tests of the hub and of the services behind it.

use bytes::Bytes;

use super::{Endpoint, HubEvent, HubOut, ProtocolKind};

#[derive(Debug, Default)]
pub struct RecordingHubOut {
    /// Every delivery, in order.
    pub delivered: Vec<(ProtocolKind, Endpoint, Bytes)>,
    /// Every event the hub acted on, in order.
    pub events: Vec<HubEvent>,
}

impl RecordingHubOut {
    /// What was delivered to `to`, in order.
    pub fn delivered_to(&self, to: Endpoint) -> Vec<Bytes> {
        self.delivered
            .iter()
            .filter(|(_, endpoint, _)| *endpoint == to)
            .map(|(_, _, bytes)| bytes.clone())
            .collect()
    }

    /// Forget what was recorded so far.
    pub fn clear(&mut self) {
        self.delivered.clear();
        self.events.clear();
    }
}

impl HubOut for RecordingHubOut {
    fn deliver(&mut self, protocol: ProtocolKind, to: Endpoint, bytes: Bytes) {
        self.delivered.push((protocol, to, bytes));
    }

    fn event(&mut self, event: &HubEvent) {
        self.events.push(event.clone());
    }
}
