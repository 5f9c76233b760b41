//! The protocol services the reactor drives, and the one place that dispatches to them by
//! protocol. A new protocol adds a `ProtocolKind` variant, a field here, an arm in each match,
//! and its listener in `Server::bind`.

use bytes::BytesMut;

use crate::chat::ConnId;
use crate::config::Config;
use crate::protocol::bin24::{Bin24Config, Bin24Service, StoreSink};
use crate::protocol::ccm::{os_token_source, CcmConfig, CcmService};
use crate::protocol::room::{RoomConfig, RoomService};
use crate::protocol::Outbox;
use crate::store::{OfflineStore, StoreConfig, StoreError, StoreRequest};

impl StoreSink for OfflineStore {
    fn submit(&mut self, request: StoreRequest) {
        OfflineStore::submit(self, request);
    }
}

/// Which wire protocol a listener or connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolKind {
    Room,
    Bin24,
    Ccm,
}

impl ProtocolKind {
    pub fn name(self) -> &'static str {
        match self {
            ProtocolKind::Room => "ROOM",
            ProtocolKind::Bin24 => "BIN24",
            ProtocolKind::Ccm => "CCM",
        }
    }
}

/// BIN24's logic and the durable store it writes through.
struct Bin24 {
    service: Bin24Service,
    store: OfflineStore,
}

/// One service per enabled protocol; `None` where the protocol is disabled.
pub(crate) struct Services {
    room: Option<RoomService>,
    bin24: Option<Bin24>,
    ccm: Option<CcmService>,
    /// The Unix time in ms when the server's clock read 0: CCM's HTTP answer is dated.
    wall_start_unix_ms: u64,
}

impl Services {
    /// Build the service of every protocol that has a port in `config`. `wake` is called by the
    /// storage thread when store completions are ready (it wakes the reactor).
    pub(crate) fn new(
        config: &Config,
        now_ms: u64,
        wall_start_unix_ms: u64,
        wake: Box<dyn Fn() + Send>,
    ) -> Result<Self, StoreError> {
        let room = config.room_port.map(|_| {
            RoomService::new(
                RoomConfig {
                    handshake_timeout_ms: config.room_handshake_timeout_ms,
                    timer_tick_ms: config.timer_tick_ms,
                },
                now_ms,
            )
        });
        let bin24 = match config.bin24_port {
            None => None,
            Some(_) => {
                let store = OfflineStore::open(
                    StoreConfig {
                        data_dir: config.data_dir.clone(),
                        frames_per_user_max: config.offline_frames_per_user_max,
                        bytes_per_user_max: config.offline_bytes_per_user_max,
                        group_commit_max: config.store_group_commit_max,
                    },
                    wake,
                )?;
                let service = Bin24Service::new(
                    Bin24Config {
                        ack_timeout_ms: config.bin24_ack_timeout_ms,
                        unacked_per_recipient_max: config.bin24_unacked_per_recipient_max,
                        offline_window_bytes: config.bin24_offline_window_bytes,
                        timer_tick_ms: config.timer_tick_ms,
                    },
                    now_ms,
                );
                Some(Bin24 { service, store })
            }
        };
        let ccm = config.ccm_port.map(|_| {
            CcmService::new(
                CcmConfig {
                    keepalive_idle_ms: config.ccm_keepalive_idle_ms,
                    keepalive_answer_ms: config.ccm_keepalive_answer_ms,
                    name_bytes_max: config.ccm_name_bytes_max,
                    timer_tick_ms: config.timer_tick_ms,
                },
                os_token_source(),
                now_ms,
            )
        });
        Ok(Services {
            room,
            bin24,
            ccm,
            wall_start_unix_ms,
        })
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
            ProtocolKind::Bin24 => {
                if let Some(bin24) = self.bin24.as_mut() {
                    bin24.service.on_accept(id);
                }
            }
            ProtocolKind::Ccm => {
                if let Some(ccm) = self.ccm.as_mut() {
                    ccm.on_accept(id, now_ms);
                }
            }
        }
    }

    pub(crate) fn on_data<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        id: ConnId,
        input: &mut BytesMut,
        now_ms: u64,
        out: &mut O,
    ) {
        match kind {
            ProtocolKind::Room => {
                if let Some(room) = self.room.as_mut() {
                    room.on_data(id, input, out);
                }
            }
            ProtocolKind::Bin24 => {
                if let Some(bin24) = self.bin24.as_mut() {
                    bin24
                        .service
                        .on_data(id, input, now_ms, out, &mut bin24.store);
                }
            }
            ProtocolKind::Ccm => {
                let unix_secs = self.unix_secs(now_ms);
                if let Some(ccm) = self.ccm.as_mut() {
                    ccm.on_data(id, input, false, now_ms, unix_secs, out);
                }
            }
        }
    }

    /// The socket had no more to read and `input` still holds bytes: for CCM that ends a
    /// message without Content-Length (one read burst is one message).
    pub(crate) fn on_burst_end<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        id: ConnId,
        input: &mut BytesMut,
        now_ms: u64,
        out: &mut O,
    ) {
        if kind == ProtocolKind::Ccm {
            let unix_secs = self.unix_secs(now_ms);
            if let Some(ccm) = self.ccm.as_mut() {
                ccm.on_data(id, input, true, now_ms, unix_secs, out);
            }
        }
    }

    fn unix_secs(&self, now_ms: u64) -> u64 {
        self.wall_start_unix_ms.saturating_add(now_ms) / 1000
    }

    pub(crate) fn on_close<O: Outbox>(&mut self, kind: ProtocolKind, id: ConnId, out: &mut O) {
        match kind {
            ProtocolKind::Room => {
                if let Some(room) = self.room.as_mut() {
                    room.on_close(id, out);
                }
            }
            ProtocolKind::Bin24 => {
                if let Some(bin24) = self.bin24.as_mut() {
                    bin24.service.on_close(id, &mut bin24.store);
                }
            }
            ProtocolKind::Ccm => {
                if let Some(ccm) = self.ccm.as_mut() {
                    ccm.on_close(id);
                }
            }
        }
    }

    /// A buffer queued with `send_notify` was written (or never will be).
    pub(crate) fn on_notify<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        note: u64,
        written: bool,
        out: &mut O,
    ) {
        match kind {
            ProtocolKind::Room | ProtocolKind::Ccm => {}
            ProtocolKind::Bin24 => {
                if let Some(bin24) = self.bin24.as_mut() {
                    bin24
                        .service
                        .on_notify(note, written, out, &mut bin24.store);
                }
            }
        }
    }

    /// Hand completed store requests to their protocol.
    pub(crate) fn on_store_events<O: Outbox>(&mut self, out: &mut O) {
        if let Some(bin24) = self.bin24.as_mut() {
            while let Some(event) = bin24.store.try_recv() {
                bin24.service.on_store_event(event, out);
            }
        }
    }

    /// Make everything submitted to the store durable, and stop its thread (at shutdown).
    pub(crate) fn close_store(&mut self) -> Result<(), StoreError> {
        match self.bin24.take() {
            Some(bin24) => bin24.store.close(),
            None => Ok(()),
        }
    }

    /// Run every service's due timers.
    pub(crate) fn on_timers<O: Outbox>(&mut self, now_ms: u64, out: &mut O) {
        if let Some(room) = self.room.as_mut() {
            room.on_timers(now_ms, out);
        }
        if let Some(bin24) = self.bin24.as_mut() {
            bin24.service.on_timers(now_ms, out, &mut bin24.store);
        }
        if let Some(ccm) = self.ccm.as_mut() {
            ccm.on_timers(now_ms, out);
        }
    }

    /// The earliest deadline of any service.
    pub(crate) fn next_deadline_ms(&self) -> Option<u64> {
        [
            self.room.as_ref().and_then(RoomService::next_deadline_ms),
            self.bin24
                .as_ref()
                .and_then(|bin24| bin24.service.next_deadline_ms()),
            self.ccm.as_ref().and_then(CcmService::next_deadline_ms),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
