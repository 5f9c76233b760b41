//! The protocol services the reactor drives, and the one place that dispatches to them by
//! protocol. A new protocol adds a `ProtocolKind` variant, a field here, an arm in each match,
//! and its listener in `Server::bind`; a datagram protocol adds a `UdpKind` variant and its
//! socket there.

use std::net::SocketAddr;

use bytes::BytesMut;

use crate::chat::ConnId;
use crate::config::Config;
use crate::protocol::bin24::{Bin24Config, Bin24Service, CustodyCounts, StoreSink};
use crate::protocol::ccm::{os_token_source, CcmConfig, CcmService};
use crate::protocol::matou::{MatouConfig, MatouService};
use crate::protocol::ocm::{self, OcmConfig, OcmService, RelayConfig, RelayService};
use crate::protocol::room::{RoomConfig, RoomService};
use crate::protocol::{CloseMode, CloseReason, DatagramOut, Outbox};
use crate::store::{OfflineStore, StoreConfig, StoreError, StoreMetrics, StoreRequest};

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
    Matou,
    /// OCM's TCRP listener (rooms are created and joined over TCP).
    Ocm,
}

// Per-protocol counters are arrays indexed by `ProtocolKind::index`.
const _: () = assert!(ProtocolKind::ALL.len() == crate::stats::PROTOCOL_COUNT);

impl ProtocolKind {
    /// Every protocol, in [`ProtocolKind::index`] order.
    pub const ALL: [ProtocolKind; 5] = [
        ProtocolKind::Room,
        ProtocolKind::Bin24,
        ProtocolKind::Ccm,
        ProtocolKind::Matou,
        ProtocolKind::Ocm,
    ];

    /// This protocol's place in [`ProtocolKind::ALL`] and in `Stats::by_protocol`.
    pub fn index(self) -> usize {
        match self {
            ProtocolKind::Room => 0,
            ProtocolKind::Bin24 => 1,
            ProtocolKind::Ccm => 2,
            ProtocolKind::Matou => 3,
            ProtocolKind::Ocm => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ProtocolKind::Room => "ROOM",
            ProtocolKind::Bin24 => "BIN24",
            ProtocolKind::Ccm => "CCM",
            ProtocolKind::Matou => "MATOU",
            ProtocolKind::Ocm => "OCM",
        }
    }

    /// Whether the reactor enforces `--handshake-timeout-ms` on this protocol's connections
    /// (until the protocol marks them identified). ROOM and OCM's TCRP keep their own deadline
    /// in the protocol, with its own flag and close behaviour.
    pub(crate) fn has_reactor_handshake_deadline(self) -> bool {
        match self {
            ProtocolKind::Bin24 | ProtocolKind::Ccm | ProtocolKind::Matou => true,
            ProtocolKind::Room | ProtocolKind::Ocm => false,
        }
    }
}

/// Which datagram protocol a UDP socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpKind {
    /// OCM's chat socket: datagrams with a room and a token.
    OcmChat,
    /// The stage-1 relay: every datagram to every other recent peer.
    OcmRelay,
}

impl UdpKind {
    pub fn name(self) -> &'static str {
        match self {
            UdpKind::OcmChat => "OCM-UDP",
            UdpKind::OcmRelay => "OCM-RELAY",
        }
    }
}

/// The largest datagram the stage-1 relay takes, as OCM's chat socket (the contract's 4096).
const UDP_DATAGRAM_IN_BYTES_MAX: usize = 4096;

/// BIN24's logic and the durable store it writes through.
struct Bin24 {
    service: Bin24Service,
    store: OfflineStore,
    /// `--store-requests-max`: BIN24 input pauses while this many requests are queued.
    requests_max: usize,
}

/// One service per enabled protocol; `None` where the protocol is disabled.
pub(crate) struct Services {
    room: Option<RoomService>,
    bin24: Option<Bin24>,
    ccm: Option<CcmService>,
    matou: Option<MatouService>,
    /// OCM's rooms: TCRP connections and the chat socket's datagrams.
    ocm: Option<OcmService>,
    relay: Option<RelayService>,
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
                        frames_max: config.store_frames_max,
                        bytes_max: config.store_bytes_max,
                        group_commit_max: config.store_group_commit_max,
                    },
                    wake,
                )?;
                let service = Bin24Service::new(
                    Bin24Config {
                        ack_timeout_ms: config.bin24_ack_timeout_ms,
                        unacked_per_recipient_max: config.bin24_unacked_per_recipient_max,
                        offline_window_bytes: config.bin24_offline_window_bytes,
                        delivery_grace_ms: config.bin24_delivery_grace_ms,
                        unconfirmed_bytes_per_conn_max: config.bin24_unconfirmed_bytes_per_conn_max,
                        loaded_bytes_max: config.bin24_loaded_bytes_max,
                        users: config.bin24_users.clone(),
                        sender_bytes_per_s_max: config.bin24_sender_bytes_per_s_max,
                        pair_bytes_per_s_max: config.bin24_pair_bytes_per_s_max,
                        timer_tick_ms: config.timer_tick_ms,
                    },
                    now_ms,
                );
                Some(Bin24 {
                    service,
                    store,
                    requests_max: config.store_requests_max.max(1),
                })
            }
        };
        let ccm = config.ccm_port.map(|_| {
            CcmService::new(
                CcmConfig {
                    keepalive_idle_ms: config.ccm_keepalive_idle_ms,
                    keepalive_answer_ms: config.ccm_keepalive_answer_ms,
                    name_bytes_max: config.ccm_name_bytes_max,
                    sender_bytes_per_s_max: config.ccm_sender_bytes_per_s_max,
                    pair_bytes_per_s_max: config.ccm_pair_bytes_per_s_max,
                    timer_tick_ms: config.timer_tick_ms,
                },
                os_token_source(),
                now_ms,
            )
        });
        let matou = config.matou_port.map(|_| {
            MatouService::new(MatouConfig {
                name_bytes_max: config.matou_name_bytes_max,
                message_bytes_max: config.matou_message_bytes_max,
                string_bytes_max: config.matou_string_bytes_max,
                pending_requests_per_user_max: config.matou_pending_requests_per_user_max,
                private_requests_per_s_max: config.matou_private_requests_per_s_max,
                private_requests_per_pair_per_s_max: config
                    .matou_private_requests_per_pair_per_s_max,
            })
        });
        let ocm = config.ocm_tcp_port.and(config.ocm_udp_port).map(|_| {
            OcmService::new(
                OcmConfig {
                    tcrp_payload_bytes_max: config.ocm_tcrp_payload_bytes_max,
                    room_name_bytes_max: config.ocm_room_name_bytes_max,
                    user_name_bytes_max: config.ocm_user_name_bytes_max,
                    tcrp_request_timeout_ms: config.ocm_tcrp_request_timeout_ms,
                    idle_timeout_ms: config.ocm_idle_timeout_ms,
                    send_failures_max: config.ocm_send_failures_max,
                    rooms_max: config.ocm_rooms_max,
                    rooms_per_ip_max: config.ocm_rooms_per_ip_max,
                    room_silent_timeout_ms: config.ocm_room_silent_timeout_ms,
                    room_members_max: config.ocm_room_members_max,
                    sends_per_s_max: config.udp_sends_per_s_max,
                    sends_per_source_per_s_max: config.udp_sends_per_source_per_s_max,
                    ack_state1: config.ocm_ack_state1,
                    timer_tick_ms: config.timer_tick_ms,
                },
                ocm::os_token_source(),
                now_ms,
            )
        });
        let relay = config.ocm_relay_port.map(|_| {
            RelayService::new(
                RelayConfig {
                    idle_timeout_ms: config.ocm_idle_timeout_ms,
                    send_failures_max: config.ocm_send_failures_max,
                    peers_max: config.ocm_relay_peers_max,
                    peers_per_ip_max: config.ocm_relay_peers_per_ip_max,
                    sends_per_s_max: config.udp_sends_per_s_max,
                    sends_per_source_per_s_max: config.udp_sends_per_source_per_s_max,
                    datagram_bytes_max: UDP_DATAGRAM_IN_BYTES_MAX,
                    timer_tick_ms: config.timer_tick_ms,
                },
                now_ms,
            )
        });
        Ok(Services {
            room,
            bin24,
            ccm,
            matou,
            ocm,
            relay,
            wall_start_unix_ms,
        })
    }

    pub(crate) fn on_accept<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        id: ConnId,
        peer: SocketAddr,
        now_ms: u64,
        out: &mut O,
    ) {
        match kind {
            ProtocolKind::Room => {
                if let Some(room) = self.room.as_mut() {
                    room.on_accept(id, now_ms, out);
                }
            }
            ProtocolKind::Matou => {
                if let Some(matou) = self.matou.as_mut() {
                    matou.on_accept(id, peer.ip());
                }
            }
            ProtocolKind::Ocm => {
                if let Some(ocm) = self.ocm.as_mut() {
                    ocm.on_accept(id, peer.ip(), now_ms);
                }
            }
            ProtocolKind::Bin24 => {
                if let Some(bin24) = self.bin24.as_mut() {
                    bin24.service.on_accept(id, peer.ip());
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
            ProtocolKind::Matou => {
                if let Some(matou) = self.matou.as_mut() {
                    matou.on_data(id, input, now_ms, out);
                }
            }
            ProtocolKind::Ocm => {
                if let Some(ocm) = self.ocm.as_mut() {
                    ocm.on_data(id, input, now_ms, out);
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

    /// `id` has not identified within `--handshake-timeout-ms` (`timeout_ms`): closed, after an
    /// answer saying why where the protocol has one (CCM `Error` `not-identified`, MATOU ERROR
    /// 8); BIN24 has no error frame and closes at once.
    pub(crate) fn on_handshake_timeout<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        id: ConnId,
        timeout_ms: u64,
        out: &mut O,
    ) {
        match (kind, self.ccm.as_mut(), self.matou.as_mut()) {
            (ProtocolKind::Ccm, Some(ccm), _) => ccm.on_handshake_timeout(id, timeout_ms, out),
            (ProtocolKind::Matou, _, Some(matou)) => {
                matou.on_handshake_timeout(id, timeout_ms, out)
            }
            _ => out.close(id, CloseReason::HandshakeTimeout, CloseMode::Now),
        }
    }

    pub(crate) fn on_close<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        id: ConnId,
        reason: CloseReason,
        out: &mut O,
    ) {
        match kind {
            ProtocolKind::Room => {
                if let Some(room) = self.room.as_mut() {
                    room.on_close(id, out);
                }
            }
            ProtocolKind::Bin24 => {
                if let Some(bin24) = self.bin24.as_mut() {
                    bin24.service.on_close(id, reason, out, &mut bin24.store);
                }
            }
            ProtocolKind::Ccm => {
                if let Some(ccm) = self.ccm.as_mut() {
                    ccm.on_close(id);
                }
            }
            ProtocolKind::Matou => {
                if let Some(matou) = self.matou.as_mut() {
                    matou.on_close(id, out);
                }
            }
            ProtocolKind::Ocm => {
                if let Some(ocm) = self.ocm.as_mut() {
                    ocm.on_close(id);
                }
            }
        }
    }

    /// A datagram arrived on a UDP socket of `kind`; answers go out through `out` (that socket).
    pub(crate) fn on_datagram<D: DatagramOut>(
        &mut self,
        kind: UdpKind,
        from: SocketAddr,
        datagram: &[u8],
        now_ms: u64,
        out: &mut D,
    ) {
        match kind {
            UdpKind::OcmChat => {
                if let Some(ocm) = self.ocm.as_mut() {
                    ocm.on_datagram(from, datagram, now_ms, out);
                }
            }
            UdpKind::OcmRelay => {
                if let Some(relay) = self.relay.as_mut() {
                    relay.on_datagram(from, datagram, now_ms, out);
                }
            }
        }
    }

    /// A buffer of `id` queued with `send_notify` was acknowledged by the peer's TCP (or
    /// never will be).
    pub(crate) fn on_notify<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        id: ConnId,
        note: u64,
        acked: bool,
        now_ms: u64,
        out: &mut O,
    ) {
        match kind {
            ProtocolKind::Room | ProtocolKind::Ccm | ProtocolKind::Matou | ProtocolKind::Ocm => {}
            ProtocolKind::Bin24 => {
                if let Some(bin24) = self.bin24.as_mut() {
                    bin24
                        .service
                        .on_notify(id, note, acked, now_ms, out, &mut bin24.store);
                }
            }
        }
    }

    /// Hand completed store requests to their protocol.
    pub(crate) fn on_store_events<O: Outbox>(&mut self, out: &mut O) {
        if let Some(bin24) = self.bin24.as_mut() {
            while let Some(event) = bin24.store.try_recv() {
                bin24.service.on_store_event(event, out, &mut bin24.store);
            }
        }
    }

    /// Whether BIN24 input must wait: the store's queue is at `--store-requests-max`, so
    /// reading more frames (each may become a store request) would only grow memory. Reading
    /// resumes when the storage thread has caught up.
    pub(crate) fn bin24_input_paused(&self) -> bool {
        self.bin24
            .as_ref()
            .is_some_and(|bin24| bin24.store.pending() >= bin24.requests_max)
    }

    /// Whether to hold a BIN24 connection's input back now (see `bin24_input_paused`); when
    /// so, BIN24 is told, so that answers waiting unread meanwhile do not time out.
    pub(crate) fn bin24_hold_input(&mut self, now_ms: u64) -> bool {
        let held = self.bin24_input_paused();
        if held {
            if let Some(bin24) = self.bin24.as_mut() {
                bin24.service.note_input_held(now_ms);
            }
        }
        held
    }

    /// Bytes BIN24 and its store hold for clients: stored frames in memory, and requests
    /// waiting for the storage thread (counted at the largest frame each).
    pub(crate) fn held_bytes(&self) -> usize {
        self.bin24.as_ref().map_or(0, |bin24| {
            bin24.service.loaded_bytes().saturating_add(
                bin24
                    .store
                    .pending()
                    .saturating_mul(crate::protocol::bin24::codec::FRAME_BYTES_MAX),
            )
        })
    }

    /// The store's gauges and counters, when BIN24 (and so the store) is enabled.
    pub(crate) fn store_metrics(&self) -> Option<StoreMetrics> {
        self.bin24.as_ref().map(|bin24| {
            let custody: CustodyCounts = bin24.service.custody();
            StoreMetrics {
                delivered_answered: custody.delivered_answered,
                delivered_grace: custody.delivered_grace,
                delivered_clean_close: custody.delivered_clean_close,
                kept_for_redelivery: custody.kept_for_redelivery,
                logins_refused: custody.logins_refused,
                loaded_bytes: bin24.service.loaded_bytes() as u64,
                ..bin24.store.metrics()
            }
        })
    }

    /// Make everything submitted to the store durable, and stop its thread (at shutdown).
    pub(crate) fn close_store(&mut self) -> Result<(), StoreError> {
        match self.bin24.take() {
            Some(bin24) => bin24.store.close(),
            None => Ok(()),
        }
    }

    /// Run every service's due timers. `ocm_datagrams` is OCM's chat socket (a removed member
    /// is told over UDP).
    pub(crate) fn on_timers<O: Outbox, D: DatagramOut>(
        &mut self,
        now_ms: u64,
        out: &mut O,
        ocm_datagrams: &mut D,
    ) {
        if let Some(room) = self.room.as_mut() {
            room.on_timers(now_ms, out);
        }
        if let Some(bin24) = self.bin24.as_mut() {
            bin24.service.on_timers(now_ms, out, &mut bin24.store);
        }
        if let Some(ccm) = self.ccm.as_mut() {
            ccm.on_timers(now_ms, out);
        }
        if let Some(ocm) = self.ocm.as_mut() {
            ocm.on_timers(now_ms, out, ocm_datagrams);
        }
        if let Some(relay) = self.relay.as_mut() {
            relay.on_timers(now_ms);
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
            self.ocm.as_ref().and_then(OcmService::next_deadline_ms),
            self.relay.as_ref().and_then(RelayService::next_deadline_ms),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_indexes_its_own_counters() {
        for (at, kind) in ProtocolKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), at, "{kind:?}");
        }
    }
}
