//! BIN24 as the server runs it: the logic ([`Bin24Service`]) with the durable store it writes
//! through ([`OfflineStore`]), behind the one [`StreamService`] seam. The store's completions
//! come back through the reactor's waker ([`StreamService::on_wake`]), and its queue is the
//! backpressure that holds BIN24 input back ([`StreamService::hold_input`]).

use bytes::BytesMut;

use super::codec::FRAME_BYTES_MAX;
use super::{Bin24Service, StoreSink};
use crate::protocol::{Clock, CloseReason, ConnId, Context, HubOutcome, Outbox, StreamService};
use crate::store::{OfflineStore, StoreError, StoreMetrics, StoreRequest};

impl StoreSink for OfflineStore {
    fn submit(&mut self, request: StoreRequest) {
        OfflineStore::submit(self, request);
    }
}

/// BIN24's logic and the durable store it writes through.
pub struct Bin24Stored {
    service: Bin24Service,
    /// `None` once shut down (the store's thread has stopped).
    store: Option<OfflineStore>,
    /// `--store-requests-max`: BIN24 input pauses while this many requests are queued.
    requests_max: usize,
}

impl Bin24Stored {
    pub fn new(service: Bin24Service, store: OfflineStore, requests_max: usize) -> Self {
        Bin24Stored {
            service,
            store: Some(store),
            requests_max: requests_max.max(1),
        }
    }

    /// Whether the store's queue is at `--store-requests-max`: reading more frames (each may
    /// become a store request) would only grow memory.
    fn store_full(&self) -> bool {
        self.store
            .as_ref()
            .is_some_and(|store| store.pending() >= self.requests_max)
    }
}

/// After shutdown the store is gone: nothing more may reach the service, which would submit
/// to it. (The reactor stops reading before it shuts services down, so this does not happen.)
macro_rules! with_store {
    ($self:ident, $store:ident => $body:expr) => {
        if let Some($store) = $self.store.as_mut() {
            $body
        }
    };
}

/// BIN24 has no error frame and no deadline of its own: the reactor's handshake deadline
/// applies, and its default (close at once) is BIN24's answer.
impl StreamService for Bin24Stored {
    fn reactor_handshake_deadline(&self) -> bool {
        true
    }

    fn on_accept<O: Outbox>(&mut self, id: ConnId, cx: &Context, _out: &mut O) {
        self.service.on_accept(id, cx.peer.ip());
    }

    fn on_data<O: Outbox>(&mut self, id: ConnId, input: &mut BytesMut, cx: &Context, out: &mut O) {
        with_store!(self, store => self.service.on_data(id, input, cx.now_ms, out, store));
    }

    fn on_close<O: Outbox>(&mut self, id: ConnId, reason: CloseReason, _cx: &Context, out: &mut O) {
        with_store!(self, store => self.service.on_close(id, reason, out, store));
    }

    fn on_notify<O: Outbox>(
        &mut self,
        id: ConnId,
        note: u64,
        acked: bool,
        clock: &Clock,
        out: &mut O,
    ) {
        with_store!(self, store => self.service.on_notify(id, note, acked, clock.now_ms, out, store));
    }

    fn on_timers<O: Outbox>(&mut self, clock: &Clock, out: &mut O) {
        with_store!(self, store => self.service.on_timers(clock.now_ms, out, store));
    }

    fn next_deadline_ms(&self) -> Option<u64> {
        self.service.next_deadline_ms()
    }

    fn on_hub<O: Outbox>(&mut self, outcome: HubOutcome, clock: &Clock, out: &mut O) {
        with_store!(self, store => self.service.on_hub(outcome, clock.now_ms, out, store));
    }

    fn on_wake<O: Outbox>(&mut self, _clock: &Clock, out: &mut O) {
        with_store!(self, store => {
            while let Some(event) = store.try_recv() {
                self.service.on_store_event(event, out, store);
            }
        });
    }

    /// When held, BIN24 is told, so that answers waiting unread meanwhile do not time out.
    fn hold_input(&mut self, clock: &Clock) -> bool {
        let held = self.store_full();
        if held {
            self.service.note_input_held(clock.now_ms);
        }
        held
    }

    fn input_held(&self) -> bool {
        self.store_full()
    }

    /// Stored frames in memory, and requests waiting for the storage thread (counted at the
    /// largest frame each).
    fn held_bytes(&self) -> usize {
        let pending = self.store.as_ref().map_or(0, OfflineStore::pending);
        self.service
            .loaded_bytes()
            .saturating_add(pending.saturating_mul(FRAME_BYTES_MAX))
    }

    fn store_metrics(&self) -> Option<StoreMetrics> {
        self.store.as_ref().map(|store| {
            let custody = self.service.custody();
            StoreMetrics {
                delivered_answered: custody.delivered_answered,
                delivered_grace: custody.delivered_grace,
                delivered_clean_close: custody.delivered_clean_close,
                kept_for_redelivery: custody.kept_for_redelivery,
                logins_refused: custody.logins_refused,
                loaded_bytes: self.service.loaded_bytes() as u64,
                ..store.metrics()
            }
        })
    }

    /// Make everything submitted to the store durable, and stop its thread.
    fn shut_down(&mut self) -> Result<(), StoreError> {
        match self.store.take() {
            Some(store) => store.close(),
            None => Ok(()),
        }
    }
}
