//! The protocol services the reactor drives, and the one place that dispatches to them by
//! protocol. A new protocol adds a `ProtocolKind` variant, a field here, an arm in each match,
//! and its listener in `Server::bind`.

use bytes::BytesMut;

use crate::chat::ConnId;
use crate::config::Config;
use crate::protocol::room::{RoomConfig, RoomService};
use crate::protocol::Outbox;

/// Which wire protocol a listener or connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolKind {
    Room,
}

impl ProtocolKind {
    pub fn name(self) -> &'static str {
        match self {
            ProtocolKind::Room => "ROOM",
        }
    }
}

/// One service per enabled protocol; `None` where the protocol is disabled.
pub(crate) struct Services {
    room: Option<RoomService>,
}

impl Services {
    /// Build the service of every protocol that has a port in `config`.
    pub(crate) fn new(config: &Config, now_ms: u64) -> Self {
        let room = config.room_port.map(|_| {
            RoomService::new(
                RoomConfig {
                    handshake_timeout_ms: config.room_handshake_timeout_ms,
                    timer_tick_ms: config.timer_tick_ms,
                },
                now_ms,
            )
        });
        Services { room }
    }

    pub(crate) fn on_accept<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        id: ConnId,
        now_ms: u64,
        out: &mut O,
    ) {
        match kind {
            ProtocolKind::Room => {
                if let Some(room) = self.room.as_mut() {
                    room.on_accept(id, now_ms, out);
                }
            }
        }
    }

    pub(crate) fn on_data<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        id: ConnId,
        input: &mut BytesMut,
        out: &mut O,
    ) {
        match kind {
            ProtocolKind::Room => {
                if let Some(room) = self.room.as_mut() {
                    room.on_data(id, input, out);
                }
            }
        }
    }

    pub(crate) fn on_close<O: Outbox>(&mut self, kind: ProtocolKind, id: ConnId, out: &mut O) {
        match kind {
            ProtocolKind::Room => {
                if let Some(room) = self.room.as_mut() {
                    room.on_close(id, out);
                }
            }
        }
    }

    /// Run every service's due timers.
    pub(crate) fn on_timers<O: Outbox>(&mut self, now_ms: u64, out: &mut O) {
        if let Some(room) = self.room.as_mut() {
            room.on_timers(now_ms, out);
        }
    }

    /// The earliest deadline of any service.
    pub(crate) fn next_deadline_ms(&self) -> Option<u64> {
        [self.room.as_ref().and_then(RoomService::next_deadline_ms)]
            .into_iter()
            .flatten()
            .min()
    }
}
