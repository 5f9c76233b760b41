//! Every protocol's service, built from `Config`, and the one place that maps a
//! [`ProtocolKind`] or [`UdpKind`] to its service. The reactor calls these methods with a kind
//! and never names a protocol; a new protocol is a field here, its construction in
//! [`Services::new`] and an arm in `stream!` (or `datagram!`).

use bytes::{Bytes, BytesMut};

use super::bin24::{Bin24Config, Bin24Service, Bin24Stored};
use super::ccm::{os_token_source, CcmConfig, CcmService};
use super::matou::{MatouConfig, MatouService};
use super::ocm::{self, OcmConfig, OcmService, RelayConfig, RelayService};
use super::room::{RoomConfig, RoomService};
use super::web::{WebConfig, WebService};
use super::{
    Clock, CloseReason, ConnId, Context, DatagramOut, DatagramService, HubOutcome, HubQueue,
    LobbyGate, Outbox, ProtocolKind, RemoteSender, StreamService, Switched, SwitchedDatagrams,
    UdpKind,
};
use crate::cluster::names::NameAnswer;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::hub::{
    Addressed, ClaimConfig, ClaimDecided, Endpoint, FormLimits, Hub, HubConfig, HubEvent, Located,
    NameOp, NamedProtocol, OcmMemberId, RemoteDelivery, Written,
};
use crate::store::{OfflineStore, StoreConfig, StoreError, StoreMetrics};

/// The largest datagram the stage-1 relay takes, as OCM's chat socket (the contract's 4096).
const UDP_DATAGRAM_IN_BYTES_MAX: usize = 4096;

/// One service per enabled protocol; `None` where the protocol is disabled.
pub struct Services {
    room: Option<RoomService>,
    bin24: Option<Bin24Stored>,
    ccm: Option<CcmService>,
    matou: Option<MatouService>,
    /// OCM's rooms: TCRP connections and the chat socket's datagrams, one service for both.
    ocm: Option<OcmService>,
    relay: Option<RelayService>,
    web: Option<WebService>,
    /// The switchboard, between the services (`--isolate`: inert, and no service sees it).
    hub: Hub,
    /// What the hub produced during the current call, drained after it.
    hub_queue: HubQueue,
    /// Lobby deliveries to OCM members, waiting for the OCM chat socket.
    ocm_deliveries: Vec<(OcmMemberId, Bytes)>,
    /// `--cluster`: where the hub's events go to and come from the other nodes.
    cluster: Option<Cluster>,
    /// Remote events handed to the hub per turn, and what is left of it this turn (0: the
    /// turn's share is spent and more may wait: the reactor comes back without sleeping).
    cluster_events_per_turn_max: usize,
    cluster_events_left: usize,
    /// `--cluster-lease-ms`: how long an OCM request waits for Redis.
    cluster_lease_ms: u64,
    /// Unit tests: what would have been published, had there been a cluster.
    #[cfg(test)]
    published: Vec<HubEvent>,
}

/// `$svc` bound to the stream service of `$kind` (through `$get`: `as_ref` or `as_mut`), then
/// `$body`; `None` when that protocol is disabled. The one match from protocol to service: each
/// arm is compiled for its own service type, so the call inside is static.
macro_rules! stream {
    ($services:expr, $get:ident, $kind:expr, $svc:ident => $body:expr) => {
        match $kind {
            ProtocolKind::Room => $services.room.$get().map(|$svc| $body),
            ProtocolKind::Bin24 => $services.bin24.$get().map(|$svc| $body),
            ProtocolKind::Ccm => $services.ccm.$get().map(|$svc| $body),
            ProtocolKind::Matou => $services.matou.$get().map(|$svc| $body),
            ProtocolKind::Ocm => $services.ocm.$get().map(|$svc| $body),
            ProtocolKind::Web => $services.web.$get().map(|$svc| $body),
        }
    };
}

/// `$svc` bound to the stream service of `$kind` and `$sw` to a [`Switched`] over `$out` at
/// `$now_ms`, then `$body`; `None` when that protocol is disabled. As `stream!`, and the hub's
/// link is handed OCM's [`LobbyGate`], so that a lobby line from any other protocol passes
/// OCM's fan-out budget (not when OCM is the service called: its lines never go to OCM
/// through the hub).
macro_rules! switched {
    ($services:expr, $kind:expr, $out:expr, $now_ms:expr, $svc:ident, $sw:ident => $body:expr) => {{
        let Services {
            room,
            bin24,
            ccm,
            matou,
            ocm,
            web,
            hub,
            hub_queue,
            ..
        } = &mut *$services;
        let now_ms: u64 = $now_ms;
        let out = $out;
        match $kind {
            ProtocolKind::Room => room.as_mut().map(|$svc| {
                let mut $sw = Switched::new(out, hub, hub_queue, ocm_gate(ocm), now_ms);
                $body
            }),
            ProtocolKind::Bin24 => bin24.as_mut().map(|$svc| {
                let mut $sw = Switched::new(out, hub, hub_queue, ocm_gate(ocm), now_ms);
                $body
            }),
            ProtocolKind::Ccm => ccm.as_mut().map(|$svc| {
                let mut $sw = Switched::new(out, hub, hub_queue, ocm_gate(ocm), now_ms);
                $body
            }),
            ProtocolKind::Matou => matou.as_mut().map(|$svc| {
                let mut $sw = Switched::new(out, hub, hub_queue, ocm_gate(ocm), now_ms);
                $body
            }),
            ProtocolKind::Ocm => ocm.as_mut().map(|$svc| {
                let mut $sw = Switched::new(out, hub, hub_queue, None, now_ms);
                $body
            }),
            ProtocolKind::Web => web.as_mut().map(|$svc| {
                let mut $sw = Switched::new(out, hub, hub_queue, ocm_gate(ocm), now_ms);
                $body
            }),
        }
    }};
}

/// Another node's CCM message to a CCM user of this node, in CCM's form; nothing if the
/// addressee is not (or no longer) a CCM user here.
fn deliver_addressed<O: Outbox>(hub: &Hub, addressed: &Addressed, out: &mut O) {
    use crate::protocol::ccm::codec::{self as ccm, MessageType};
    let kind = MessageType::parse(&addressed.kind).filter(|kind| {
        matches!(
            kind,
            MessageType::Text | MessageType::Raw | MessageType::Audio | MessageType::Streaming
        )
    });
    let (kind, to) = match (kind, hub.holder(&addressed.recipient)) {
        (Some(kind), Some((NamedProtocol::Ccm, to))) => (kind, to),
        _ => {
            log::debug!(
                "cluster: a message for {:?}, not a CCM user here, dropped",
                String::from_utf8_lossy(&addressed.recipient)
            );
            return;
        }
    };
    out.send(
        to,
        ccm::encode_head(
            kind.as_str(),
            &[
                ("Sender", &addressed.sender),
                ("Addressee", &addressed.recipient),
                ("Message-Encoding", &addressed.encoding),
            ],
            addressed.body.len(),
        ),
    );
    if !addressed.body.is_empty() {
        out.send(to, addressed.body.clone());
    }
}

/// Another node's direct message (or a web receipt) for a user of this node.
fn on_addressed<O: Outbox>(
    hub: &mut Hub,
    queue: &mut HubQueue,
    addressed: &Addressed,
    out: &mut O,
) {
    match hub.deliver_remote(addressed) {
        RemoteDelivery::Send { to, bytes } => out.send(to, bytes),
        RemoteDelivery::Notify { to, bytes, note } => {
            if !out.send_notify(to, bytes, note.0) {
                // Never queued (the recipient is closing): its receipt says so.
                if let Some(Written::Publish(receipt)) = hub.on_written(note, false) {
                    queue.publish(receipt);
                }
            }
        }
        RemoteDelivery::Publish(receipt) => queue.publish(receipt),
        RemoteDelivery::Nothing => deliver_addressed(hub, addressed, out),
    }
}

/// OCM's gate for lobby lines from the other protocols, when OCM is enabled.
fn ocm_gate(ocm: &mut Option<OcmService>) -> Option<&mut dyn LobbyGate> {
    ocm.as_mut().map(|ocm| ocm as &mut dyn LobbyGate)
}

/// As `stream!`, for the service behind a UDP socket.
macro_rules! datagram {
    ($services:expr, $get:ident, $kind:expr, $svc:ident => $body:expr) => {
        match $kind {
            UdpKind::OcmChat => $services.ocm.$get().map(|$svc| $body),
            UdpKind::OcmRelay => $services.relay.$get().map(|$svc| $body),
        }
    };
}

impl Services {
    /// Build the service of every protocol that has a port in `config`. `wake` is called by the
    /// storage thread when store completions are ready (it wakes the reactor).
    pub fn new(
        config: &Config,
        now_ms: u64,
        wake: Box<dyn Fn() + Send>,
    ) -> Result<Self, StoreError> {
        Services::build(config, now_ms, wake, |store_config, wake| {
            // In a cluster the store is shared through Redis: a user finds his stored frames
            // on whatever node he logs in to next.
            match &config.cluster {
                Some(cluster) => crate::cluster::offline::open(store_config, cluster, wake),
                None => OfflineStore::open(store_config, wake),
            }
        })
    }

    /// As [`Services::new`], with BIN24's offline store in memory (redb's in-memory backend)
    /// instead of a file in `config.data_dir`: for fuzz targets and tests, where opening and
    /// syncing a file per input costs most of the run. chatd always uses [`Services::new`].
    pub fn with_store_in_memory(
        config: &Config,
        now_ms: u64,
        wake: Box<dyn Fn() + Send>,
    ) -> Result<Self, StoreError> {
        Services::build(config, now_ms, wake, |store_config, wake| {
            OfflineStore::open_on_backend(
                store_config,
                redb::backends::InMemoryBackend::new(),
                wake,
            )
        })
    }

    fn build(
        config: &Config,
        now_ms: u64,
        wake: Box<dyn Fn() + Send>,
        open_store: impl FnOnce(StoreConfig, Box<dyn Fn() + Send>) -> Result<OfflineStore, StoreError>,
    ) -> Result<Self, StoreError> {
        let room = ProtocolKind::Room.is_served(config).then(|| {
            RoomService::new(
                RoomConfig {
                    handshake_timeout_ms: config.room_handshake_timeout_ms,
                    timer_tick_ms: config.timer_tick_ms,
                },
                now_ms,
            )
        });
        let bin24 = match ProtocolKind::Bin24.is_served(config) {
            false => None,
            true => {
                let store = open_store(
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
                        stalled_holder_ms: config.output_soft_duration_ms,
                        users: config.bin24_users.clone(),
                        sender_bytes_per_s_max: config.bin24_sender_bytes_per_s_max,
                        pair_bytes_per_s_max: config.bin24_pair_bytes_per_s_max,
                        timer_tick_ms: config.timer_tick_ms,
                        crossing_grace_ms: config
                            .cluster
                            .as_ref()
                            .map_or(0, |cluster| cluster.lease_ms),
                    },
                    now_ms,
                );
                Some(Bin24Stored::new(service, store, config.store_requests_max))
            }
        };
        let ccm = ProtocolKind::Ccm.is_served(config).then(|| {
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
        let matou = ProtocolKind::Matou.is_served(config).then(|| {
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
        let ocm = ProtocolKind::Ocm.is_served(config).then(|| {
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
        let relay = UdpKind::OcmRelay.port(config).map(|_| {
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
        let web = ProtocolKind::Web.is_served(config).then(|| {
            WebService::new(WebConfig {
                origins: config.web_origins.clone(),
                message_bytes_max: config.web_message_bytes_max,
                text_bytes_max: config.web_text_bytes_max,
                messages_per_s_max: config.web_messages_per_s_max,
                ..WebConfig::default()
            })
        });
        let hub = Hub::new(HubConfig {
            clustered: config.cluster.is_some(),
            name_claims: config.cluster.as_ref().map(|cluster| ClaimConfig {
                wait_ms: crate::cluster::names::claim_wait_ms(cluster.lease_ms),
                pending_max: crate::cluster::names::CLAIMS_PENDING_MAX,
                // What BIN24's custody of a crossing message waits too (ack timeout + lease).
                web_receipts: crate::hub::ReceiptConfig {
                    wait_ms: config.bin24_ack_timeout_ms.saturating_add(cluster.lease_ms),
                    per_sender_max: config.web_receipts_per_sender_max,
                    max: config.web_receipts_max,
                },
            }),
            isolated: config.isolate,
            ocm_lobby_room: config.lobby_ocm_room.clone(),
            limits: FormLimits {
                matou_message_bytes_max: config.matou_message_bytes_max,
                matou_string_bytes_max: config.matou_string_bytes_max,
                bin24_sender_bytes_per_s_max: config.bin24_sender_bytes_per_s_max,
                bin24_pair_bytes_per_s_max: config.bin24_pair_bytes_per_s_max,
                ..FormLimits::default()
            },
        });
        Ok(Services {
            room,
            bin24,
            ccm,
            matou,
            ocm,
            relay,
            web,
            hub,
            hub_queue: HubQueue::default(),
            ocm_deliveries: Vec::new(),
            cluster: None,
            cluster_events_per_turn_max: config.cluster_events_per_turn_max.max(1),
            cluster_events_left: config.cluster_events_per_turn_max.max(1),
            cluster_lease_ms: config
                .cluster
                .as_ref()
                .map_or(0, |cluster| cluster.lease_ms),
            #[cfg(test)]
            published: Vec::new(),
        })
    }

    /// Join the cluster: from now on every lobby event the hub acts on is published, and the
    /// other nodes' events are handed to the hub in [`Services::on_wake`].
    pub fn join_cluster(&mut self, cluster: Cluster) {
        self.hub_queue.collect_events = true;
        if let Some(ocm) = self.ocm.as_mut() {
            ocm.join_cluster(
                Bytes::copy_from_slice(cluster.node_name()),
                cluster.incarnation(),
                crate::cluster::names::claim_wait_ms(self.cluster_lease_ms),
            );
        }
        self.cluster = Some(cluster);
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// A new loop turn: the per-turn budgets start again.
    #[inline]
    pub fn start_turn(&mut self) {
        self.cluster_events_left = self.cluster_events_per_turn_max;
    }

    /// Whether this turn's share of remote events is spent: more may wait, and the reactor
    /// must come back to them without sleeping (their wake-up came already).
    #[inline]
    pub fn has_cluster_backlog(&self) -> bool {
        self.cluster.is_some() && self.cluster_events_left == 0
    }

    /// The other nodes' events, not seen before, to the local lobby members (never published
    /// again: the hub does not report them as events).
    /// At most `--cluster-events-per-turn-max` a turn ([`Services::start_turn`]); the rest
    /// wait unread on the subscription, and [`Services::has_cluster_backlog`] brings the
    /// reactor back.
    fn on_cluster<O: Outbox>(&mut self, clock: &Clock, out: &mut O) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        cluster.set_now_ms(clock.now_ms);
        while self.cluster_events_left > 0 {
            let Some((node, event)) = cluster.try_recv() else {
                break;
            };
            self.cluster_events_left -= 1;
            match event {
                HubEvent::Said(message) => {
                    // OCM's members are reached within its fan-out budget, charged to the
                    // sender on its node as a local sender's line is.
                    let sender = message.sender.clone();
                    let source = RemoteSender {
                        node: &node,
                        origin: message.origin,
                        sender: &sender,
                    };
                    let ocm = &mut self.ocm;
                    self.hub
                        .say_remote(message, &mut self.hub_queue, |to, recipients| {
                            to != ProtocolKind::Ocm
                                || ocm.as_mut().is_none_or(|ocm| {
                                    ocm.admit_remote(source, recipients, clock.now_ms)
                                })
                        })
                }
                HubEvent::Presence(presence) => {
                    self.hub.announce_remote(&presence, &mut self.hub_queue)
                }
                HubEvent::Direct(_) => {}
                HubEvent::Addressed(addressed) => {
                    if addressed.to_node[..] == *cluster.node_name()
                        && addressed.to_incarnation == cluster.incarnation()
                    {
                        on_addressed(&mut self.hub, &mut self.hub_queue, &addressed, out);
                    }
                }
                HubEvent::Private(link) => {
                    if link.to_node[..] == *cluster.node_name()
                        && link.to_incarnation == cluster.incarnation()
                    {
                        self.hub_queue.hand_over(HubOutcome::MatouRemote(link));
                    }
                }
                HubEvent::Bin24(relay) => {
                    if relay.to_node[..] == *cluster.node_name()
                        && relay.to_incarnation == cluster.incarnation()
                    {
                        self.hub_queue.hand_over(HubOutcome::Bin24Remote(relay));
                    }
                }
                HubEvent::Ocm(event) => {
                    // Acted on with the OCM socket (`flush_ocm_deliveries`), this turn.
                    if let Some(ocm) = self.ocm.as_mut() {
                        ocm.queue_remote_event(event);
                    }
                }
            }
        }
        let lapsed = cluster.take_lapsed_nodes();
        for (node, incarnation) in &lapsed {
            for (to, no_receipt) in self.hub.forget_node(node, *incarnation) {
                out.send(to, no_receipt);
            }
        }
        if let Some(ocm) = self.ocm.as_mut().filter(|_| !lapsed.is_empty()) {
            ocm.queue_lapsed_nodes(lapsed);
        }
        if cluster.take_bin24_recheck() {
            self.hub_queue.hand_over(HubOutcome::Bin24Resubscribed);
        }
        if cluster.take_ocm_resync() {
            if let Some(ocm) = self.ocm.as_mut() {
                ocm.resync_rooms();
            }
        }
        let mut ocm_answers = Vec::new();
        while let Some(answer) = cluster.try_recv_ocm() {
            ocm_answers.push(answer);
        }
        // After every local event of this turn was queued: the roster is read at its place
        // in this node's sequence.
        if cluster.roster_due() {
            cluster.publish_rosters(self.hub.lobby_roster());
        }
        self.on_name_answers(clock.now_ms, out);
        for answer in ocm_answers {
            self.on_ocm_answer(answer, clock, out);
        }
        self.drain(clock, out);
    }

    /// The OCM service's operations for the OCM rooms thread, in order. A create or join that
    /// cannot be queued is answered as Redis unreachable (500), a look-up as not found.
    fn send_ocm_ops<O: Outbox>(&mut self, clock: &Clock, out: &mut O) {
        use crate::cluster::ocm::{CreateAnswer, JoinAnswer, OcmAnswer, OcmOp};
        while self.ocm.as_ref().is_some_and(OcmService::has_cluster_ops) {
            let ops = self
                .ocm
                .as_mut()
                .map(OcmService::take_cluster_ops)
                .unwrap_or_default();
            let mut refused = Vec::new();
            for op in ops {
                let Some(Err(op)) = self.cluster.as_mut().map(|cluster| cluster.send_ocm_op(op))
                else {
                    continue;
                };
                log::warn!("cluster: the OCM rooms thread's queue is full; an operation refused");
                refused.push(match *op {
                    OcmOp::Create { request, .. } => OcmAnswer::Created {
                        request,
                        created: CreateAnswer::Unavailable,
                    },
                    OcmOp::Join { request, .. } => OcmAnswer::Joined {
                        request,
                        answer: JoinAnswer::Unavailable,
                    },
                    OcmOp::Lookup { token } => OcmAnswer::Looked {
                        token,
                        record: Err(()),
                    },
                    // A read of a room's members is made again after the next outage.
                    OcmOp::Members { .. } | OcmOp::Leave { .. } | OcmOp::Close { .. } => continue,
                });
            }
            for answer in refused {
                self.on_ocm_answer(answer, clock, out);
            }
        }
    }

    /// An answer of the OCM rooms thread to the OCM service (its TCRP answers go to `out`).
    fn on_ocm_answer<O: Outbox>(
        &mut self,
        answer: crate::cluster::ocm::OcmAnswer,
        clock: &Clock,
        out: &mut O,
    ) {
        let Services {
            ocm,
            hub,
            hub_queue,
            ..
        } = self;
        if let Some(ocm) = ocm.as_mut() {
            let mut sw = Switched::new(out, hub, hub_queue, None, clock.now_ms);
            ocm.on_cluster_answer(answer, clock.now_ms, &mut sw);
        }
    }

    /// The names thread's answers.
    fn on_name_answers<O: Outbox>(&mut self, now_ms: u64, out: &mut O) {
        while let Some(answer) = self.cluster.as_mut().and_then(Cluster::try_recv_name) {
            self.on_name_answer(answer, now_ms, out);
        }
    }

    /// A waiting claim is decided (its service is told through the hub queue); a name another
    /// node took from this one closes its holder here.
    fn on_name_answer<O: Outbox>(&mut self, answer: NameAnswer, now_ms: u64, out: &mut O) {
        match answer {
            NameAnswer::Claimed {
                token,
                name,
                answer,
            } => {
                if let Some(decided) = self.hub.on_claim_answer(token, &name, answer) {
                    self.hub_queue.hand_over(HubOutcome::NameClaim(decided));
                }
            }
            NameAnswer::Lost { name } => {
                if let Some(conn) = self.hub.on_name_lost(&name) {
                    out.close(conn, CloseReason::Replaced, super::CloseMode::Now);
                }
            }
            NameAnswer::Located { token, holder } => {
                if let Some(located) = self.hub.on_located(token, holder, now_ms) {
                    self.on_located(located, now_ms, out);
                }
            }
        }
    }

    /// A message to a name held elsewhere: published for the node that holds it, or its
    /// sender told no user has that name.
    fn on_located<O: Outbox>(&mut self, located: Located, now_ms: u64, out: &mut O) {
        match located {
            Located::Send { from, event } => {
                if let Some(cluster) = self.cluster.as_mut() {
                    cluster.publish(&event);
                }
                self.hub_queue.hand_over(HubOutcome::CcmLocated { from });
            }
            Located::Private { from, link, found } => {
                let at = found.then(|| (link.to_node.clone(), link.to_incarnation));
                let dst = link.dst.clone();
                if found {
                    self.hub_queue.publish(HubEvent::Private(link));
                }
                self.hub_queue
                    .hand_over(HubOutcome::MatouLocated { from, dst, at });
            }
            Located::Bin24 { from, frame, at } => {
                self.hub_queue
                    .hand_over(HubOutcome::Bin24Located { from, frame, at });
            }
            Located::Bin24Relocated { frame, at } => {
                self.hub_queue
                    .hand_over(HubOutcome::Bin24Relocated { frame, at });
            }
            Located::CcmToBin24 { from, message, at } => {
                // Made a BIN24 frame here (BIN24's limits, the sender's messageID) and handed
                // to BIN24 as a located frame: published for that node under BIN24's custody
                // here (kept and stored here if no answer comes back), as a BIN24 sender's.
                match self.hub.ccm_to_remote_bin24(from, &message, now_ms) {
                    Ok(frame) => self.hub_queue.hand_over(HubOutcome::Bin24Located {
                        from,
                        frame: frame.into_bytes(),
                        at: Some(at),
                    }),
                    Err(error) => out.send(
                        from,
                        error.unwrap_or_else(|| {
                            crate::hub::render::ccm_error(
                                crate::protocol::ccm::Reason::UnknownAddressee,
                                "no user has that name",
                            )
                        }),
                    ),
                }
                self.hub_queue.hand_over(HubOutcome::CcmLocated { from });
            }
            Located::WebSend { from, mut event } => {
                if let (Some(cluster), HubEvent::Addressed(addressed)) =
                    (self.cluster.as_mut(), &mut event)
                {
                    // Its receipt comes back to this node.
                    addressed.from_node = Bytes::copy_from_slice(cluster.node_name());
                    addressed.from_incarnation = cluster.incarnation();
                    cluster.publish(&event);
                }
                self.hub_queue.hand_over(HubOutcome::WebLocated { from });
            }
            Located::WebToBin24 { from, message, at } => {
                // As a CCM sender's (above): BIN24's custody here, its answer back as `sent`.
                match self
                    .hub
                    .web_to_remote_bin24(from, &message, now_ms, &mut self.hub_queue)
                {
                    Ok(frame) => self.hub_queue.hand_over(HubOutcome::Bin24Located {
                        from,
                        frame: frame.into_bytes(),
                        at: Some(at),
                    }),
                    Err(reason) => out.send(
                        from,
                        crate::protocol::web::json::error(message.request, reason),
                    ),
                }
                self.hub_queue.hand_over(HubOutcome::WebLocated { from });
            }
            Located::WebRefused {
                from,
                request,
                reason,
            } => {
                out.send(from, crate::protocol::web::json::error(request, reason));
                self.hub_queue.hand_over(HubOutcome::WebLocated { from });
            }
            Located::Unknown { from, recipient } => {
                log::debug!(
                    "{from}: no node holds {:?}",
                    String::from_utf8_lossy(&recipient)
                );
                out.send(
                    from,
                    crate::hub::render::ccm_error(
                        crate::protocol::ccm::Reason::UnknownAddressee,
                        "no user has that name",
                    ),
                );
                self.hub_queue.hand_over(HubOutcome::CcmLocated { from });
            }
        }
    }

    /// Claims whose deadline passed without the cluster's answer are refused (their services
    /// told through the hub queue).
    fn expire_claims<O: Outbox>(&mut self, now_ms: u64, out: &mut O) {
        for located in self.hub.expire_locates(now_ms) {
            self.on_located(located, now_ms, out);
        }
        for (to, no_receipt) in self.hub.expire_web_receipts(now_ms) {
            out.send(to, no_receipt);
        }
        for decided in self.hub.expire_claims(now_ms) {
            log::warn!(
                "{}: name claim not confirmed by the cluster within its deadline; refused",
                decided.conn
            );
            self.hub_queue.hand_over(HubOutcome::NameClaim(decided));
        }
    }

    /// The hub's name operations to the names thread, in order. One that cannot be queued
    /// (the thread is far behind) is a claim refused as unconfirmed at once, or a release
    /// left to the key's expiry.
    fn send_name_ops(&mut self) {
        while self.hub.has_name_ops() {
            for op in self.hub.take_name_ops() {
                let refused = match self
                    .cluster
                    .as_mut()
                    .map(|cluster| cluster.send_name_op(op))
                {
                    Some(Err(NameOp::Claim { token, name, .. })) => Some((token, name)),
                    _ => None,
                };
                let decided: Option<ClaimDecided> = refused.and_then(|(token, name)| {
                    self.hub
                        .on_claim_answer(token, &name, crate::hub::ClaimAnswer::Unavailable)
                });
                if let Some(decided) = decided {
                    self.hub_queue.hand_over(HubOutcome::NameClaim(decided));
                }
            }
        }
    }

    /// The switchboard.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Names claimed across the cluster, for the admin port; `None` for a node alone.
    pub fn name_metrics(&self) -> Option<crate::metrics::NameMetrics> {
        let counts = self.hub.claim_counts()?;
        Some(crate::metrics::NameMetrics {
            held: self
                .hub
                .names_held()
                .saturating_sub(self.hub.claims_waiting()) as u64,
            waiting: self.hub.claims_waiting() as u64,
            counts,
        })
    }

    /// The switchboard's counts and lobby, for the admin port; `None` under `--isolate`.
    pub fn switchboard_metrics(&self) -> Option<crate::metrics::SwitchboardMetrics> {
        if self.hub.is_isolated() {
            return None;
        }
        let mut lobby_members = [0; ProtocolKind::COUNT];
        for kind in ProtocolKind::ALL {
            lobby_members[kind.index()] = self.hub.lobby_count(kind) as u64;
        }
        let protocols = ProtocolKind::ALL
            .into_iter()
            .filter(|&kind| stream!(self, as_ref, kind, _s => ()).is_some())
            .collect();
        Some(crate::metrics::SwitchboardMetrics {
            protocols,
            counts: *self.hub.counts(),
            lobby_members,
        })
    }

    /// Hand what the hub produced during the last call to where it goes: deliveries to
    /// connections through `out` (connection ids are global across protocols), to OCM members
    /// to the OCM socket's queue, and each outcome to its service (whose call may produce
    /// more). One check when the hub produced nothing, as on every ROOM-only chunk.
    #[inline]
    fn drain<O: Outbox>(&mut self, clock: &Clock, out: &mut O) {
        if !self.hub_queue.is_empty() || self.hub.has_name_ops() {
            self.drain_queue(clock, out);
        }
        if self.ocm.as_ref().is_some_and(OcmService::has_cluster_ops) {
            self.send_ocm_ops(clock, out);
            self.drain_queue(clock, out);
        }
    }

    fn drain_queue<O: Outbox>(&mut self, clock: &Clock, out: &mut O) {
        while !self.hub_queue.is_empty() || self.hub.has_name_ops() {
            self.send_name_ops();
            for (_, endpoint, bytes) in self.hub_queue.deliveries.drain(..) {
                match endpoint {
                    Endpoint::Conn(id) => out.send(id, bytes),
                    Endpoint::Ocm(member) => self.ocm_deliveries.push((member, bytes)),
                }
            }
            if let Some(cluster) = self.cluster.as_mut() {
                for mut event in self.hub_queue.events.drain(..) {
                    // Its answer comes back to this node.
                    match &mut event {
                        HubEvent::Private(link) => {
                            link.from_node = Bytes::copy_from_slice(cluster.node_name());
                            link.from_incarnation = cluster.incarnation();
                        }
                        HubEvent::Bin24(relay) => {
                            relay.from_node = Bytes::copy_from_slice(cluster.node_name());
                            relay.from_incarnation = cluster.incarnation();
                        }
                        _ => {}
                    }
                    cluster.publish(&event);
                }
            } else {
                #[cfg(test)]
                self.published.append(&mut self.hub_queue.events);
                self.hub_queue.events.clear();
            }
            let outcomes = std::mem::take(&mut self.hub_queue.outcomes);
            for outcome in outcomes {
                let kind = outcome.service();
                switched!(self, kind, &mut *out, clock.now_ms, s, sw => s.on_hub(outcome, clock, &mut sw));
            }
        }
    }

    /// See [`StreamService::reactor_handshake_deadline`].
    pub fn reactor_handshake_deadline(&self, kind: ProtocolKind) -> bool {
        stream!(self, as_ref, kind, s => s.reactor_handshake_deadline()).unwrap_or(false)
    }

    pub fn on_accept<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        id: ConnId,
        cx: &Context,
        out: &mut O,
    ) {
        switched!(self, kind, &mut *out, cx.now_ms, s, sw => StreamService::on_accept(s, id, cx, &mut sw));
        self.drain(&cx.clock(), out);
    }

    pub fn on_data<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        id: ConnId,
        input: &mut BytesMut,
        cx: &Context,
        out: &mut O,
    ) {
        switched!(self, kind, &mut *out, cx.now_ms, s, sw => StreamService::on_data(s, id, input, cx, &mut sw));
        self.drain(&cx.clock(), out);
    }

    pub fn on_burst_end<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        id: ConnId,
        input: &mut BytesMut,
        cx: &Context,
        out: &mut O,
    ) {
        switched!(self, kind, &mut *out, cx.now_ms, s, sw => StreamService::on_burst_end(s, id, input, cx, &mut sw));
        self.drain(&cx.clock(), out);
    }

    pub fn on_handshake_timeout<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        id: ConnId,
        timeout_ms: u64,
        cx: &Context,
        out: &mut O,
    ) {
        let handled = switched!(self, kind, &mut *out, cx.now_ms, s, sw => {
            StreamService::on_handshake_timeout(s, id, timeout_ms, cx, &mut sw)
        });
        if handled.is_none() {
            // No service to say why (not reachable: only enabled protocols have connections).
            out.close(id, CloseReason::HandshakeTimeout, super::CloseMode::Now);
        }
        self.drain(&cx.clock(), out);
    }

    pub fn on_close<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        id: ConnId,
        reason: CloseReason,
        cx: &Context,
        out: &mut O,
    ) {
        switched!(self, kind, &mut *out, cx.now_ms, s, sw => StreamService::on_close(s, id, reason, cx, &mut sw));
        // Whatever the protocol: the connection leaves the lobby (announced to the others) and
        // its name is free. After the service, whose own users hear of it first.
        if !self.hub.is_isolated() {
            self.hub.disconnect(id, &mut self.hub_queue);
        }
        self.drain(&cx.clock(), out);
    }

    pub fn on_notify<O: Outbox>(
        &mut self,
        kind: ProtocolKind,
        id: ConnId,
        note: u64,
        acked: bool,
        clock: &Clock,
        out: &mut O,
    ) {
        switched!(self, kind, &mut *out, clock.now_ms, s, sw => StreamService::on_notify(s, id, note, acked, clock, &mut sw));
        self.drain(clock, out);
    }

    /// See [`StreamService::hold_input`].
    pub fn hold_input(&mut self, kind: ProtocolKind, clock: &Clock) -> bool {
        stream!(self, as_mut, kind, s => StreamService::hold_input(s, clock)).unwrap_or(false)
    }

    /// Whether any service still holds input back.
    pub fn input_held(&self) -> bool {
        ProtocolKind::ALL
            .into_iter()
            .any(|kind| stream!(self, as_ref, kind, s => s.input_held()).unwrap_or(false))
    }

    /// A datagram arrived on the UDP socket of `kind`; answers go out through `out` (that
    /// socket), and what the switchboard delivers to connections through `conns`.
    pub fn on_datagram<O: Outbox, D: DatagramOut>(
        &mut self,
        kind: UdpKind,
        datagram: &[u8],
        cx: &Context,
        conns: &mut O,
        out: &mut D,
    ) {
        let mut switched =
            SwitchedDatagrams::new(out, &mut self.hub, &mut self.hub_queue, cx.now_ms);
        datagram!(self, as_mut, kind, s => {
            DatagramService::on_datagram(s, datagram, cx, &mut switched)
        });
        self.drain(&cx.clock(), conns);
        if kind == UdpKind::OcmChat {
            self.flush_ocm_deliveries(&cx.clock(), conns, out);
        }
    }

    /// Whether the switchboard has lobby deliveries waiting for the OCM chat socket (queued
    /// during a call that did not have it): the reactor then calls
    /// [`Services::flush_ocm_deliveries`] with it, once per turn.
    #[inline]
    pub fn has_ocm_deliveries(&self) -> bool {
        !self.ocm_deliveries.is_empty()
            || self.ocm.as_ref().is_some_and(OcmService::has_socket_work)
    }

    /// Send the waiting lobby deliveries to OCM members through `out`, the OCM chat socket. A
    /// member found unreachable leaves at once, and what the hub says of it (presence) goes to
    /// connections through `conns`.
    pub fn flush_ocm_deliveries<O: Outbox, D: DatagramOut>(
        &mut self,
        clock: &Clock,
        conns: &mut O,
        out: &mut D,
    ) {
        if !self.has_ocm_deliveries() {
            return;
        }
        if let Some(ocm) = self.ocm.as_mut().filter(|ocm| ocm.has_socket_work()) {
            let mut switched =
                SwitchedDatagrams::new(out, &mut self.hub, &mut self.hub_queue, clock.now_ms);
            ocm.on_socket_work(clock.now_ms, &mut switched);
        }
        match self.ocm.as_mut() {
            Some(ocm) => {
                let mut switched =
                    SwitchedDatagrams::new(out, &mut self.hub, &mut self.hub_queue, clock.now_ms);
                for (member, bytes) in self.ocm_deliveries.drain(..) {
                    DatagramService::on_hub_delivery(ocm, member, &bytes, &mut switched);
                }
            }
            None => self.ocm_deliveries.clear(),
        }
        self.drain(clock, conns);
    }

    /// Run the due timers of every stream service, and the deadlines of name claims.
    pub fn on_timers<O: Outbox>(&mut self, clock: &Clock, out: &mut O) {
        if self
            .hub
            .next_claim_deadline_ms()
            .is_some_and(|deadline| deadline <= clock.now_ms)
        {
            self.expire_claims(clock.now_ms, out);
            self.drain(clock, out);
        }
        for kind in ProtocolKind::ALL {
            switched!(self, kind, &mut *out, clock.now_ms, s, sw => StreamService::on_timers(s, clock, &mut sw));
            self.drain(clock, out);
        }
    }

    /// Run the due timers of the service behind the UDP socket of `kind`, which sends on
    /// `datagrams`.
    pub fn on_datagram_timers<O: Outbox, D: DatagramOut>(
        &mut self,
        kind: UdpKind,
        clock: &Clock,
        out: &mut O,
        datagrams: &mut D,
    ) {
        // The hub is reached through the socket: OCM's timers remove members over it.
        let mut switched =
            SwitchedDatagrams::new(datagrams, &mut self.hub, &mut self.hub_queue, clock.now_ms);
        datagram!(self, as_mut, kind, s => {
            DatagramService::on_timers(s, clock, out, &mut switched)
        });
        self.drain(clock, out);
        if kind == UdpKind::OcmChat {
            self.flush_ocm_deliveries(clock, out, datagrams);
        }
    }

    /// The earliest deadline of any service.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let streams = ProtocolKind::ALL.into_iter().filter_map(|kind| {
            stream!(self, as_ref, kind, s => StreamService::next_deadline_ms(s)).flatten()
        });
        let datagrams = UdpKind::ALL.into_iter().filter_map(|kind| {
            datagram!(self, as_ref, kind, s => DatagramService::next_deadline_ms(s)).flatten()
        });
        streams
            .chain(datagrams)
            .chain(self.hub.next_claim_deadline_ms())
            .chain(self.cluster.as_ref().and_then(Cluster::next_deadline_ms))
            .min()
    }

    /// The end of a loop turn: the cluster's PUBLISHes of this turn go to Redis, and its
    /// links' deadlines are looked at (`Cluster::flush`).
    pub fn flush_cluster(&mut self, now_ms: u64) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.flush(now_ms);
        }
    }

    /// A cluster link's socket signalled readiness: it is read this turn.
    pub fn on_cluster_link_event(&mut self) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.on_link_event();
        }
    }

    /// Hand work completed off the loop's thread to its service.
    pub fn on_wake<O: Outbox>(&mut self, clock: &Clock, out: &mut O) {
        for kind in ProtocolKind::ALL {
            switched!(self, kind, &mut *out, clock.now_ms, s, sw => s.on_wake(clock, &mut sw));
            self.drain(clock, out);
        }
        self.on_cluster(clock, out);
    }

    /// Bytes the services hold for clients beyond the output queues.
    pub fn held_bytes(&self) -> usize {
        ProtocolKind::ALL
            .into_iter()
            .filter_map(|kind| stream!(self, as_ref, kind, s => s.held_bytes()))
            .fold(0, usize::saturating_add)
    }

    /// The offline store's gauges and counters, when a service has a store.
    pub fn store_metrics(&self) -> Option<StoreMetrics> {
        ProtocolKind::ALL
            .into_iter()
            .find_map(|kind| stream!(self, as_ref, kind, s => s.store_metrics()).flatten())
    }

    /// The server is stopping: every service makes durable what must survive. The first
    /// failure is returned, after every service has been asked.
    pub fn shut_down(&mut self) -> Result<(), StoreError> {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.shut_down();
        }
        let mut result = Ok(());
        for kind in ProtocolKind::ALL {
            if let Some(Err(err)) = stream!(self, as_mut, kind, s => s.shut_down()) {
                if result.is_ok() {
                    result = Err(err);
                }
            }
        }
        result
    }
}

#[cfg(test)]
impl Services {
    /// An answer as if from the names thread (no Redis in unit tests).
    fn answer_name<O: Outbox>(&mut self, answer: NameAnswer, clock: &Clock, out: &mut O) {
        self.on_name_answer(answer, clock.now_ms, out);
        self.drain(clock, out);
    }

    /// A step of a MATOU private link as if from another node.
    fn private_from_node<O: Outbox>(
        &mut self,
        link: crate::hub::PrivateLink,
        clock: &Clock,
        out: &mut O,
    ) {
        self.hub_queue
            .hand_over(HubOutcome::MatouRemote(Box::new(link)));
        self.drain(clock, out);
    }

    /// A BIN24 frame as if from `node`'s publication of `relay`.
    fn bin24_from_node<O: Outbox>(
        &mut self,
        mut relay: crate::hub::Bin24Relay,
        node: &'static [u8],
        clock: &Clock,
        out: &mut O,
    ) {
        relay.from_node = Bytes::from_static(node);
        relay.from_incarnation = 7;
        self.hub_queue
            .hand_over(HubOutcome::Bin24Remote(Box::new(relay)));
        self.drain(clock, out);
    }

    /// The BIN24 frames published since the last call, for the nodes they name.
    fn take_bin24_published(&mut self) -> Vec<crate::hub::Bin24Relay> {
        std::mem::take(&mut self.published)
            .into_iter()
            .filter_map(|event| match event {
                HubEvent::Bin24(relay) => Some(*relay),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::cluster::Envelope;
    use crate::hub::{render, ClaimAnswer};
    use crate::protocol::ccm::Reason;
    use crate::protocol::ocm::{codec as ocm_codec, json as ocm_json};
    use crate::protocol::room::codec::ALIAS_PROMPT;
    use crate::protocol::testing::{RecordingDatagrams, RecordingOutbox};
    use crate::protocol::{CloseMode, DatagramDrop};

    fn room_and_matou() -> Services {
        room_and_matou_isolated(false)
    }

    fn cx(now_ms: u64) -> Context {
        cx_from(now_ms, SocketAddr::from(([127, 0, 0, 1], 40_000)))
    }

    /// `bytes`, one read from `id` at `now_ms`; what is left unread is dropped.
    fn feed(
        services: &mut Services,
        out: &mut RecordingOutbox,
        kind: ProtocolKind,
        id: ConnId,
        bytes: &[u8],
        now_ms: u64,
    ) {
        services.on_data(kind, id, &mut BytesMut::from(bytes), &cx(now_ms), out);
    }

    /// A fresh directory for one test's offline store, `label` telling the tests apart.
    fn fresh_dir(label: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-registry-unit-{}-{label}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// The services `config` enables, BIN24's offline store in its (fresh) data directory.
    fn with_store(config: &Config) -> Services {
        match Services::new(config, 0, Box::new(|| {})) {
            Ok(services) => services,
            Err(err) => panic!("the store opens in a fresh directory: {err}"),
        }
    }

    /// A CCM message: `head` is its type line's rest and any headers before the encoding.
    fn ccm_message(head: &str, body: &str) -> BytesMut {
        BytesMut::from(
            format!(
                "CCM\\1.0 {head}\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    }

    fn bin24_name(text: &str) -> crate::protocol::bin24::codec::Name {
        match crate::protocol::bin24::codec::Name::new(text.as_bytes()) {
            Some(name) => name,
            None => panic!("a valid name"),
        }
    }

    fn bin24_frame(kind: u16, id: u32, src: &str, dst: &str, body: &[u8]) -> Bytes {
        let (src, dst) = (bin24_name(src), bin24_name(dst));
        match crate::protocol::bin24::codec::encode(kind, id, src, dst, body) {
            Some(frame) => frame,
            None => panic!("a valid frame"),
        }
    }

    /// Wakes `services` at `now_ms`, as the reactor does when the offline store has finished
    /// work, until `done`; `what` says what never happened if 10 s pass first.
    fn wake_until(
        services: &mut Services,
        out: &mut RecordingOutbox,
        now_ms: u64,
        what: &str,
        mut done: impl FnMut(&mut Services, &RecordingOutbox) -> bool,
    ) {
        let started = std::time::Instant::now();
        while !done(services, out) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{what}: {:?}",
                out.sent
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
            services.on_wake(&cx(now_ms).clock(), out);
        }
    }

    /// The BIN24 relays `services` publishes once its store has made a frame durable.
    fn published_once_stored(
        services: &mut Services,
        out: &mut RecordingOutbox,
        now_ms: u64,
    ) -> Vec<crate::hub::Bin24Relay> {
        let mut published = Vec::new();
        wake_until(services, out, now_ms, "never stored", |services, _| {
            published = services.take_bin24_published();
            !published.is_empty()
        });
        published
    }

    /// Gives the store 40 ms of wake-ups at `now_ms`, for a check that nothing more comes.
    fn wake_for_a_while(services: &mut Services, out: &mut RecordingOutbox, now_ms: u64) {
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            services.on_wake(&cx(now_ms).clock(), out);
        }
    }

    #[test]
    fn each_kind_reaches_its_own_service_and_a_disabled_one_none() {
        let mut services = room_and_matou();
        let mut out = RecordingOutbox::default();
        let (room_conn, matou_conn, ccm_conn) =
            (ConnId::new(0, 1), ConnId::new(1, 2), ConnId::new(2, 3));
        services.on_accept(ProtocolKind::Room, room_conn, &cx(0), &mut out);
        services.on_accept(ProtocolKind::Matou, matou_conn, &cx(0), &mut out);
        services.on_accept(ProtocolKind::Ccm, ccm_conn, &cx(0), &mut out);
        // Only ROOM greets at accept; CCM is disabled, so nothing answers its connection.
        assert_eq!(out.sent_to(room_conn), [ALIAS_PROMPT]);
        assert!(out.sent_to(matou_conn).is_empty());
        assert!(out.sent_to(ccm_conn).is_empty());

        // The reactor's handshake deadline is MATOU's, not ROOM's (ROOM keeps its own).
        assert!(services.reactor_handshake_deadline(ProtocolKind::Matou));
        assert!(!services.reactor_handshake_deadline(ProtocolKind::Room));
        assert!(!services.reactor_handshake_deadline(ProtocolKind::Ccm));

        // MATOU says why before the close; a disabled protocol's connection is still closed.
        services.on_handshake_timeout(ProtocolKind::Matou, matou_conn, 10, &cx(10), &mut out);
        assert_eq!(out.sent_to(matou_conn).len(), 1, "MATOU's ERROR 8");
        services.on_handshake_timeout(ProtocolKind::Ccm, ccm_conn, 10, &cx(10), &mut out);
        assert!(out
            .closed
            .contains(&(ccm_conn, CloseReason::HandshakeTimeout, CloseMode::Now)));
    }

    #[test]
    fn deadlines_and_timers_come_from_every_enabled_service() {
        let mut services = room_and_matou();
        let mut out = RecordingOutbox::default();
        assert_eq!(services.next_deadline_ms(), None);
        let id = ConnId::new(0, 1);
        services.on_accept(ProtocolKind::Room, id, &cx(0), &mut out);
        // As the reactor does: sleep until the earliest deadline, run the timers, repeat (a
        // wheel may ask to be looked at before the deadline itself, once per revolution).
        let mut turns = 0;
        while out.closed.is_empty() {
            let Some(deadline_ms) = services.next_deadline_ms() else {
                panic!("ROOM's handshake deadline is pending");
            };
            services.on_timers(&cx(deadline_ms).clock(), &mut out);
            turns += 1;
            assert!(turns < 1_000, "the deadline never came");
        }
        assert!(out
            .closed
            .contains(&(id, CloseReason::HandshakeTimeout, CloseMode::Now)));

        // No UDP service is enabled: a datagram for one reaches nothing.
        let mut datagrams = RecordingDatagrams::default();
        services.on_datagram(
            UdpKind::OcmRelay,
            b"hello",
            &cx(1),
            &mut out,
            &mut datagrams,
        );
        assert!(datagrams.sent.is_empty() && datagrams.dropped_in.is_empty());
        assert!(!services.input_held());
        assert_eq!(services.held_bytes(), 0);
        assert!(services.store_metrics().is_none());
        assert!(services.shut_down().is_ok());
    }

    fn room_and_matou_isolated(isolate: bool) -> Services {
        let config = Config {
            matou_port: Some(0),
            isolate,
            ..Config::for_tests()
        };
        match Services::new(&config, 0, Box::new(|| {})) {
            Ok(services) => services,
            Err(err) => panic!("no store is opened without BIN24: {err}"),
        }
    }

    /// A ROOM member `rui` and a MATOU user `mia`; returns their ids.
    fn seat_rui_and_mia(services: &mut Services, out: &mut RecordingOutbox) -> (ConnId, ConnId) {
        use crate::protocol::matou::codec as matou;
        let (rui, mia) = (ConnId::new(0, 1), ConnId::new(1, 2));
        services.on_accept(ProtocolKind::Room, rui, &cx(0), out);
        services.on_data(
            ProtocolKind::Room,
            rui,
            &mut BytesMut::from(&b"rui"[..]),
            &cx(0),
            out,
        );
        services.on_accept(ProtocolKind::Matou, mia, &cx(0), out);
        let mut login = BytesMut::from(&1i32.to_be_bytes()[..]);
        login.extend_from_slice(&3i32.to_be_bytes());
        login.extend_from_slice(b"mia");
        services.on_data(ProtocolKind::Matou, mia, &mut login, &cx(0), out);
        assert!(out.sent_to(mia).contains(&matou::connect_response(true)));
        out.clear();
        (rui, mia)
    }

    #[test]
    fn a_room_line_reaches_a_matou_user_through_the_hub_and_not_when_isolated() {
        use crate::protocol::matou::codec as matou;
        for isolate in [false, true] {
            let mut services = room_and_matou_isolated(isolate);
            let mut out = RecordingOutbox::default();
            let (rui, mia) = seat_rui_and_mia(&mut services, &mut out);
            services.on_data(
                ProtocolKind::Room,
                rui,
                &mut BytesMut::from(&b"rui: hi\n"[..]),
                &cx(1),
                &mut out,
            );
            // ROOM's own echo either way; MATOU hears it only through the switchboard.
            assert_eq!(out.sent_to(rui), [Bytes::from_static(b"rui: hi\n")]);
            let expected = if isolate {
                vec![]
            } else {
                vec![matou::public_broadcast(b"rui", b"hi")]
            };
            assert_eq!(out.sent_to(mia), expected, "isolate: {isolate}");
            assert_eq!(services.switchboard_metrics().is_none(), isolate);

            // rui leaves: MATOU is told (SIGN_OUT_NOTIFY) unless isolated.
            out.clear();
            services.on_close(
                ProtocolKind::Room,
                rui,
                CloseReason::PeerClosed,
                &cx(2),
                &mut out,
            );
            let expected = if isolate {
                vec![]
            } else {
                vec![matou::sign_out_notify(b"rui")]
            };
            assert_eq!(out.sent_to(mia), expected, "isolate: {isolate}");
        }
    }

    /// A BIN24 user's message to a CCM user: "200" once it is written, and when the CCM user
    /// closes before that, the frame goes to the BIN24 store (its sender hears "300" once it
    /// is durable). The note travels BIN24 -> CCM's `on_notify` -> hub -> BIN24's `on_hub`.
    #[test]
    fn a_bin24_message_to_a_ccm_user_is_answered_200_when_written_and_stored_when_not() {
        use crate::protocol::bin24::codec as bin24;
        let dir = fresh_dir("written");
        let mut services = with_store(&Config {
            bin24_port: Some(0),
            ccm_port: Some(0),
            data_dir: dir.clone(),
            ..Config::for_tests()
        });
        let mut out = RecordingOutbox::default();
        let (bob, cat) = (ConnId::new(0, 1), ConnId::new(1, 2));
        ccm_user(&mut services, &mut out, cat, "cat");
        services.on_accept(ProtocolKind::Bin24, bob, &cx(0), &mut out);
        out.clear();

        let frame = |id: u32| bin24_frame(bin24::TYPE_MESSAGE, id, "bob", "cat", b"oi");
        // Written: bob hears "200" from cat.
        feed(
            &mut services,
            &mut out,
            ProtocolKind::Bin24,
            bob,
            &frame(7),
            1,
        );
        let &[(to, ref bytes, note)] = &out.notified[..] else {
            panic!("one notified send to cat: {:?}", out.notified);
        };
        assert_eq!(to, cat);
        assert_eq!(bytes, &crate::hub::render::ccm_text(b"bob", b"cat", b"oi"));
        services.on_notify(ProtocolKind::Ccm, cat, note, true, &cx(2).clock(), &mut out);
        let (cat_name, bob_name) = (bin24_name("cat"), bin24_name("bob"));
        let delivered = bin24::encode_answer(7, cat_name, bob_name, bin24::ANSWER_DELIVERED);
        assert_eq!(out.sent_to(bob), [delivered]);

        // Not written (cat closed first): stored for cat, and bob hears "300" once durable.
        out.clear();
        feed(
            &mut services,
            &mut out,
            ProtocolKind::Bin24,
            bob,
            &frame(8),
            3,
        );
        let &[(_, _, note)] = &out.notified[..] else {
            panic!("one notified send to cat: {:?}", out.notified);
        };
        services.on_notify(
            ProtocolKind::Ccm,
            cat,
            note,
            false,
            &cx(4).clock(),
            &mut out,
        );
        let stored = bin24::encode_answer(8, cat_name, bob_name, bin24::ANSWER_STORED);
        wake_until(&mut services, &mut out, 5, "never stored", |_, out| {
            out.sent_to(bob).contains(&stored)
        });
        assert!(services.shut_down().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    // ---- rule 5: what crosses is charged, and the recipient protocol's limits apply ----

    fn cx_from(now_ms: u64, peer: SocketAddr) -> Context {
        Clock {
            now_ms,
            unix_ms: 1_700_000_000_000 + now_ms,
        }
        .with_peer(peer)
    }

    /// ROOM, CCM, MATOU and OCM (TCRP and chat socket) behind one hub, as `edit` sets them.
    fn lobby_services(edit: impl FnOnce(&mut Config)) -> Services {
        let mut config = Config {
            ccm_port: Some(0),
            matou_port: Some(0),
            ocm_tcp_port: Some(0),
            ocm_udp_port: Some(0),
            ..Config::for_tests()
        };
        edit(&mut config);
        match Services::new(&config, 0, Box::new(|| {})) {
            Ok(services) => services,
            Err(err) => panic!("no store is opened without BIN24: {err}"),
        }
    }

    fn room_member(services: &mut Services, out: &mut RecordingOutbox, id: ConnId, alias: &str) {
        services.on_accept(ProtocolKind::Room, id, &cx(0), out);
        let mut input = BytesMut::from(alias.as_bytes());
        services.on_data(ProtocolKind::Room, id, &mut input, &cx(0), out);
    }

    fn room_says(services: &mut Services, out: &mut RecordingOutbox, id: ConnId, line: &str) {
        let mut input = BytesMut::from(line.as_bytes());
        services.on_data(ProtocolKind::Room, id, &mut input, &cx(0), out);
    }

    fn ccm_user(services: &mut Services, out: &mut RecordingOutbox, id: ConnId, name: &str) {
        services.on_accept(ProtocolKind::Ccm, id, &cx(0), out);
        let mut input = ccm_message("NotDefined", name);
        services.on_data(ProtocolKind::Ccm, id, &mut input, &cx(0), out);
    }

    /// `name` creates (`host`) or joins the OCM room `room` from 127.0.0.`last`, chatting from
    /// port 40000 there; returns its token and that address.
    fn ocm_member(
        services: &mut Services,
        out: &mut RecordingOutbox,
        id: ConnId,
        room: &str,
        name: &str,
        last: u8,
        host: bool,
    ) -> (String, SocketAddr) {
        let chat = SocketAddr::from(([127, 0, 0, last], 40_000));
        let operation = if host {
            ocm_codec::OPERATION_CREATE
        } else {
            ocm_codec::OPERATION_JOIN
        };
        let payload = ocm_json::encode_request(name, chat);
        let request = match ocm_codec::encode_request(
            operation,
            ocm_codec::STATE_REQUEST,
            room.as_bytes(),
            &payload,
        ) {
            Ok(request) => request,
            Err(err) => panic!("a valid request: {err}"),
        };
        let tcp = SocketAddr::from(([127, 0, 0, last], 50_000));
        services.on_accept(ProtocolKind::Ocm, id, &cx_from(0, tcp), out);
        let mut input = BytesMut::from(&request[..]);
        services.on_data(ProtocolKind::Ocm, id, &mut input, &cx_from(0, tcp), out);
        let Some(answer) = out.sent_to(id).pop() else {
            panic!("{name} was not answered");
        };
        let mut answer = BytesMut::from(&answer[..]);
        let token = ocm_codec::decode_answer(&mut answer, 4096)
            .ok()
            .flatten()
            .and_then(|answer| {
                let json = String::from_utf8(answer.json.to_vec()).ok()?;
                ocm_json::parse_answer(&json).ok()?.token
            });
        match token {
            Some(token) => (token, chat),
            None => panic!("{name} got no token"),
        }
    }

    /// Three sends a second per source (the burst is the larger of that and a room of 2).
    fn three_sends_per_source(config: &mut Config) {
        config.udp_sends_per_source_per_s_max = 3;
        config.ocm_room_members_max = 2;
    }

    /// alice creates the OCM room `lobby` and bob joins it, on connections `ids`; returns
    /// their chat addresses.
    fn alice_and_bob_in_ocm(
        services: &mut Services,
        out: &mut RecordingOutbox,
        [alice, bob]: [ConnId; 2],
    ) -> (SocketAddr, SocketAddr) {
        let (_, alice_at) = ocm_member(services, out, alice, "lobby", "alice", 1, true);
        let (_, bob_at) = ocm_member(services, out, bob, "lobby", "bob", 2, false);
        (alice_at, bob_at)
    }

    fn ocm_says(
        services: &mut Services,
        out: &mut RecordingOutbox,
        udp: &mut RecordingDatagrams,
        (room, token, from): (&str, &str, SocketAddr),
        message: &str,
    ) {
        let datagram =
            match ocm_codec::encode_datagram(room.as_bytes(), token.as_bytes(), message.as_bytes())
            {
                Ok(datagram) => datagram,
                Err(err) => panic!("a valid datagram: {err}"),
            };
        services.on_datagram(UdpKind::OcmChat, &datagram, &cx_from(0, from), out, udp);
    }

    fn texts(udp: &RecordingDatagrams, to: SocketAddr) -> Vec<String> {
        udp.sent_to(to)
            .iter()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .collect()
    }

    /// Issue 18: a CCM `*` was charged for its CCM recipients only, so a CCM user alone in CCM
    /// could push without limit into the other protocols' lobby members.
    #[test]
    fn a_ccm_lobby_flood_is_charged_for_its_crossing_and_refused_to_its_sender() {
        // A byte a second: the budget is its smallest burst, one largest CCM delivery.
        let mut services = lobby_services(|config| config.ccm_sender_bytes_per_s_max = 1);
        let mut out = RecordingOutbox::default();
        let (rui, rita, carol) = (ConnId::new(0, 1), ConnId::new(1, 2), ConnId::new(2, 3));
        room_member(&mut services, &mut out, rui, "rui");
        room_member(&mut services, &mut out, rita, "rita");
        ccm_user(&mut services, &mut out, carol, "carol");
        out.clear();

        // Each crossing costs the two ROOM lines: 2 * 100,007 bytes, so 5 pass the burst
        // (1 MiB + 9 KiB) and the 6th does not.
        let text = "x".repeat(100_000);
        let message = ccm_message("Text\nAddressee: *", &text);
        for _ in 0..6 {
            feed(
                &mut services,
                &mut out,
                ProtocolKind::Ccm,
                carol,
                &message,
                1,
            );
        }
        let line = render::line(b"carol", text.as_bytes());
        assert_eq!(out.sent_to(rui), vec![line.clone(); 5]);
        assert_eq!(out.sent_to(rita), vec![line; 5]);
        let refused = render::ccm_error(
            Reason::RateLimited,
            "sending faster than allowed: the message was not delivered",
        );
        assert_eq!(out.sent_to(carol), [refused]);
        assert!(out.closed.is_empty(), "nobody is closed: {:?}", out.closed);
        let counts = *services.hub().counts();
        assert_eq!(counts.messages(ProtocolKind::Ccm, ProtocolKind::Room), 10);
        assert_eq!(counts.over_limit(ProtocolKind::Ccm, ProtocolKind::Room), 2);
    }

    /// Issue 18: an OCM lobby datagram was charged for the OCM room's members only, not for
    /// the other protocols' lobby members it also reaches.
    #[test]
    fn an_ocm_lobby_datagram_is_charged_for_its_crossing_to_its_fan_out_budget() {
        let mut services = lobby_services(three_sends_per_source);
        let (mut out, mut udp) = (RecordingOutbox::default(), RecordingDatagrams::default());
        let (rui, rita) = (ConnId::new(0, 1), ConnId::new(1, 2));
        room_member(&mut services, &mut out, rui, "rui");
        room_member(&mut services, &mut out, rita, "rita");
        let (alice, alice_at) = ocm_member(
            &mut services,
            &mut out,
            ConnId::new(2, 3),
            "lobby",
            "alice",
            1,
            true,
        );
        out.clear();

        // Alone in her room, alice's text reaches the two ROOM members: 2 sends of 3, then
        // 2 more are over her budget, and the datagram goes to no one.
        ocm_says(
            &mut services,
            &mut out,
            &mut udp,
            ("lobby", &alice, alice_at),
            "one",
        );
        ocm_says(
            &mut services,
            &mut out,
            &mut udp,
            ("lobby", &alice, alice_at),
            "two",
        );
        for member in [rui, rita] {
            assert_eq!(out.sent_to(member), [Bytes::from_static(b"alice: one")]);
        }
        assert_eq!(udp.dropped_in, [DatagramDrop::FanoutBudget]);
        let counts = *services.hub().counts();
        assert_eq!(counts.messages(ProtocolKind::Ocm, ProtocolKind::Room), 2);
        assert_eq!(counts.over_limit(ProtocolKind::Ocm, ProtocolKind::Room), 2);
    }

    /// Issue 18: lobby lines to OCM members did not pass OCM's fan-out budget.
    #[test]
    fn lobby_lines_to_ocm_members_pass_ocms_fan_out_budget_per_sender() {
        let mut services = lobby_services(three_sends_per_source);
        let (mut out, mut udp) = (RecordingOutbox::default(), RecordingDatagrams::default());
        let (rui, rita) = (ConnId::new(0, 1), ConnId::new(1, 2));
        room_member(&mut services, &mut out, rui, "rui");
        room_member(&mut services, &mut out, rita, "rita");
        let ids = [ConnId::new(2, 3), ConnId::new(3, 4)];
        let (alice_at, bob_at) = alice_and_bob_in_ocm(&mut services, &mut out, ids);
        out.clear();

        // Each line costs its sender 2 of its 3 sends: rui's second is over, rita has her own.
        for (from, line) in [
            (rui, "rui: one\n"),
            (rui, "rui: two\n"),
            (rita, "rita: one\n"),
        ] {
            room_says(&mut services, &mut out, from, line);
            services.flush_ocm_deliveries(&cx(0).clock(), &mut out, &mut udp);
        }
        for at in [alice_at, bob_at] {
            assert_eq!(texts(&udp, at), ["rui: one", "rita: one"]);
        }
        // ROOM itself is not limited: both members heard all three.
        assert_eq!(out.sent_to(rui).len(), 3);
        let counts = *services.hub().counts();
        assert_eq!(counts.messages(ProtocolKind::Room, ProtocolKind::Ocm), 4);
        assert_eq!(counts.over_limit(ProtocolKind::Room, ProtocolKind::Ocm), 2);
    }

    /// A lobby line from node `node`'s `sender` (ROOM), numbered `seq` on that node.
    fn remote_line(node: &'static [u8], seq: u64, sender: &'static str, text: &str) -> Envelope {
        Envelope {
            node: Bytes::from_static(node),
            incarnation: 7,
            seq,
            event: HubEvent::Said(crate::hub::LobbyMessage {
                origin: ProtocolKind::Room,
                sender: Bytes::from_static(sender.as_bytes()),
                text: Bytes::copy_from_slice(text.as_bytes()),
            }),
        }
    }

    /// Issue 20: other nodes' events were drained without bound in one turn.
    #[test]
    fn remote_events_are_handed_over_a_turns_share_at_a_time() {
        let mut services = lobby_services(|config| config.cluster_events_per_turn_max = 2);
        let (cluster, feed) = Cluster::detached(b"here");
        services.join_cluster(cluster);
        let mut out = RecordingOutbox::default();
        let rui = ConnId::new(0, 1);
        room_member(&mut services, &mut out, rui, "rui");
        out.clear();
        for seq in 1..=3 {
            feed.event(remote_line(b"there", seq, "zoe", &format!("line {seq}")));
        }
        let heard = |out: &RecordingOutbox| out.sent_to(rui).len();

        // A turn: two of the three, and the reactor is told to come back at once.
        services.start_turn();
        services.on_wake(&cx(1).clock(), &mut out);
        assert_eq!(heard(&out), 2);
        assert!(services.has_cluster_backlog());
        // More wakes in the same turn take nothing more.
        services.on_wake(&cx(1).clock(), &mut out);
        assert_eq!(heard(&out), 2);
        // Local work goes on meanwhile.
        room_says(&mut services, &mut out, rui, "rui: here\n");
        assert_eq!(heard(&out), 3);

        // The next turn takes the third, in order, and nothing is left.
        services.start_turn();
        services.on_wake(&cx(2).clock(), &mut out);
        assert_eq!(
            out.sent_to(rui),
            [
                Bytes::from_static(b"zoe: line 1"),
                Bytes::from_static(b"zoe: line 2"),
                Bytes::from_static(b"rui: here\n"),
                Bytes::from_static(b"zoe: line 3"),
            ]
        );
        assert!(!services.has_cluster_backlog());
        // Without a cluster there is never a backlog.
        let mut alone = lobby_services(|config| config.cluster_events_per_turn_max = 1);
        alone.start_turn();
        alone.on_wake(&cx(3).clock(), &mut out);
        assert!(!alone.has_cluster_backlog());
    }

    /// Issue 20: lobby lines from other nodes reached OCM members past OCM's fan-out budget.
    #[test]
    fn remote_lobby_lines_to_ocm_members_pass_ocms_fan_out_budget_per_remote_sender() {
        let mut services = lobby_services(three_sends_per_source);
        let (mut out, mut udp) = (RecordingOutbox::default(), RecordingDatagrams::default());
        let rui = ConnId::new(0, 1);
        room_member(&mut services, &mut out, rui, "rui");
        // Made before the node joins the cluster: in a cluster, OCM rooms are Redis's to
        // decide (a detached cluster has none), and this test is about lobby lines.
        let ids = [ConnId::new(1, 2), ConnId::new(2, 3)];
        let (alice_at, bob_at) = alice_and_bob_in_ocm(&mut services, &mut out, ids);
        let (cluster, feed) = Cluster::detached(b"here");
        services.join_cluster(cluster);
        out.clear();

        // Each line costs its sender 2 of its 3 sends: zoe's second is over; zed on the same
        // node, and zoe on another node, are other senders with budgets of their own.
        feed.event(remote_line(b"there", 1, "zoe", "one"));
        feed.event(remote_line(b"there", 2, "zoe", "two"));
        feed.event(remote_line(b"there", 3, "zed", "one"));
        feed.event(remote_line(b"yonder", 1, "zoe", "three"));
        services.start_turn();
        services.on_wake(&cx(0).clock(), &mut out);
        services.flush_ocm_deliveries(&cx(0).clock(), &mut out, &mut udp);
        for at in [alice_at, bob_at] {
            assert_eq!(texts(&udp, at), ["zoe: one", "zed: one", "zoe: three"]);
        }
        // ROOM has no such budget: rui heard all four.
        assert_eq!(out.sent_to(rui).len(), 4);
        let counts = *services.hub().counts();
        assert_eq!(counts.messages(ProtocolKind::Room, ProtocolKind::Ocm), 6);
        assert_eq!(counts.over_limit(ProtocolKind::Room, ProtocolKind::Ocm), 2);
    }

    /// Issue 18: an OCM member found unreachable during a lobby delivery stayed in the lobby
    /// until OCM's next datagram or timer.
    #[test]
    fn an_ocm_member_unreachable_during_a_lobby_delivery_leaves_the_lobby_at_once() {
        let mut services = lobby_services(|_| {});
        let (mut out, mut udp) = (RecordingOutbox::default(), RecordingDatagrams::default());
        let rui = ConnId::new(0, 1);
        room_member(&mut services, &mut out, rui, "rui");
        let ids = [ConnId::new(1, 2), ConnId::new(2, 3)];
        let (alice_at, bob_at) = alice_and_bob_in_ocm(&mut services, &mut out, ids);
        assert_eq!(services.hub().lobby_count(ProtocolKind::Ocm), 2);
        udp.failing.push(bob_at);
        out.clear();

        // `--ocm-send-failures-max` (3) failures in a row: bob leaves with the third.
        for n in 1..=3 {
            room_says(&mut services, &mut out, rui, &format!("rui: {n}\n"));
            services.flush_ocm_deliveries(&cx(0).clock(), &mut out, &mut udp);
        }
        assert_eq!(services.hub().lobby_count(ProtocolKind::Ocm), 1);
        assert!(out
            .sent_to(rui)
            .contains(&Bytes::from_static(b"b'bob' acabou de sair do chat!")));
        let left = ocm_codec::leave_text("bob", "lobby");
        assert_eq!(
            texts(&udp, alice_at),
            ["rui: 1", "rui: 2", "rui: 3", left.as_str()]
        );
        assert_eq!(udp.failed, 3);
    }

    /// A CCM message to a BIN24 user over the CCM sender's own budget is refused to it and
    /// counted over the limit, as one over BIN24's limits is.
    #[test]
    fn a_ccm_message_to_a_bin24_user_over_the_ccm_budget_is_counted_over_the_limit() {
        use crate::protocol::bin24::codec as bin24;
        let dir = fresh_dir("ccm-rate");
        let mut services = with_store(&Config {
            bin24_port: Some(0),
            ccm_port: Some(0),
            data_dir: dir.clone(),
            // CCM's pair limit only: its smallest burst, one largest CCM delivery.
            ccm_pair_bytes_per_s_max: 1,
            bin24_sender_bytes_per_s_max: 0,
            bin24_pair_bytes_per_s_max: 0,
            ..Config::for_tests()
        });
        let mut out = RecordingOutbox::default();
        let (bob, cat) = (ConnId::new(0, 1), ConnId::new(1, 2));
        services.on_accept(ProtocolKind::Bin24, bob, &cx(0), &mut out);
        let login = bin24_frame(bin24::TYPE_ANSWER, 0, "bob", "bob", b"200");
        feed(&mut services, &mut out, ProtocolKind::Bin24, bob, &login, 0);
        ccm_user(&mut services, &mut out, cat, "cat");
        out.clear();

        let text = "x".repeat(1000);
        let message = ccm_message("Text\nAddressee: bob", &text);
        for _ in 0..1_200 {
            feed(&mut services, &mut out, ProtocolKind::Ccm, cat, &message, 1);
        }
        let refused = render::ccm_error(
            Reason::RateLimited,
            "sending faster than allowed: the message was not delivered",
        );
        let refusals = out
            .sent_to(cat)
            .iter()
            .filter(|sent| **sent == refused)
            .count();
        let delivered = out.sent_to(bob).len();
        assert!(
            refusals > 0 && delivered > 0,
            "{refusals} refused, {delivered} delivered"
        );
        assert_eq!(refusals + delivered, 1_200);
        let counts = *services.hub().counts();
        assert_eq!(
            counts.over_limit(ProtocolKind::Ccm, ProtocolKind::Bin24),
            refusals as u64
        );
        assert_eq!(
            counts.messages(ProtocolKind::Ccm, ProtocolKind::Bin24),
            delivered as u64
        );
        assert!(services.shut_down().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn clustered(dir: &std::path::Path) -> Services {
        let config = Config {
            matou_port: Some(0),
            ccm_port: Some(0),
            bin24_port: Some(0),
            data_dir: dir.to_path_buf(),
            cluster: Some(crate::cluster::ClusterConfig {
                url: "redis://127.0.0.1:1".to_string(),
                node_name: "unit".to_string(),
                lease_ms: 500,
                roster_bytes_max: crate::cluster::ROSTER_BYTES_MAX_DEFAULT,
            }),
            ..Config::for_tests()
        };
        // Each node's offline store in memory (redb's backend): `Services::new` would put it in
        // this config's Redis, which these tests do not run (tests/cluster_store.rs does).
        match Services::with_store_in_memory(&config, 0, Box::new(|| {})) {
            Ok(services) => services,
            Err(err) => panic!("the store opens in a fresh directory: {err}"),
        }
    }

    /// One node of a two-node test, its store in `dir`'s `sub`, keeping what it publishes.
    fn node(dir: &std::path::Path, sub: &str) -> Services {
        let mut services = clustered(&dir.join(sub));
        services.hub_queue.collect_events = true;
        services
    }

    fn claimed(token: u64, name: &[u8], answer: ClaimAnswer) -> NameAnswer {
        NameAnswer::Claimed {
            token,
            name: Bytes::copy_from_slice(name),
            answer,
        }
    }

    fn located(token: u64, holder: Option<crate::hub::claims::Holder>) -> NameAnswer {
        NameAnswer::Located { token, holder }
    }

    /// On a clustered node, `id` signs in to BIN24 as `user` at `now_ms` (its first frame, an
    /// answer to nobody, claims the name) and the cluster grants the node's `token`th claim.
    fn bin24_signed_in(
        services: &mut Services,
        out: &mut RecordingOutbox,
        id: ConnId,
        user: &str,
        token: u64,
        now_ms: u64,
    ) {
        use crate::protocol::bin24::codec as bin24;
        services.on_accept(ProtocolKind::Bin24, id, &cx(now_ms), out);
        let hello = bin24_frame(bin24::TYPE_ANSWER, 0, user, "nobody", b"200");
        feed(services, out, ProtocolKind::Bin24, id, &hello, now_ms);
        let granted = claimed(token, user.as_bytes(), ClaimAnswer::Granted);
        services.answer_name(granted, &cx(now_ms).clock(), out);
    }

    /// On a clustered node, `id` identifies to CCM as `name` and the cluster grants the
    /// node's `token`th claim.
    fn ccm_signed_in(
        services: &mut Services,
        out: &mut RecordingOutbox,
        id: ConnId,
        name: &str,
        token: u64,
    ) {
        ccm_user(services, out, id, name);
        let granted = claimed(token, name.as_bytes(), ClaimAnswer::Granted);
        services.answer_name(granted, &cx(0).clock(), out);
    }

    /// In a cluster a sign-in waits for Redis's answer: nothing is answered meanwhile, the
    /// connection's further input stays unread (in order, after the answer), and the answer
    /// signs it in or refuses it in its own protocol's way, then its input is read again.
    #[test]
    fn a_clustered_sign_in_waits_for_the_cluster_and_its_input_after_it_is_read_then() {
        use crate::protocol::bin24::codec as bin24;
        use crate::protocol::matou::codec as matou;
        let dir = fresh_dir("claims");
        let mut services = clustered(&dir);
        let mut out = RecordingOutbox::default();
        let (mia, mia2, cid) = (ConnId::new(0, 1), ConnId::new(1, 2), ConnId::new(2, 3));

        // MATOU: the request and a public message in one read.
        services.on_accept(ProtocolKind::Matou, mia, &cx(0), &mut out);
        let mut input = BytesMut::from(&matou::connect_request(b"mia")[..]);
        input.extend_from_slice(&matou::public_message(b"hi"));
        services.on_data(ProtocolKind::Matou, mia, &mut input, &cx(0), &mut out);
        assert!(
            out.sent_to(mia).is_empty(),
            "nothing before the cluster answers"
        );
        assert_eq!(
            &input[..],
            &matou::public_message(b"hi")[..],
            "held, unread"
        );
        assert!(out.identified.is_empty());
        assert_eq!(
            services.next_deadline_ms(),
            Some(500),
            "the claim's deadline"
        );

        // The same name on this node meanwhile: refused at once, MATOU's way.
        services.on_accept(ProtocolKind::Matou, mia2, &cx(1), &mut out);
        let mut again = BytesMut::from(&matou::connect_request(b"mia")[..]);
        services.on_data(ProtocolKind::Matou, mia2, &mut again, &cx(1), &mut out);
        assert_eq!(out.sent_to(mia2), [matou::connect_response(false)]);

        // More input while waiting is still held.
        services.on_data(ProtocolKind::Matou, mia, &mut input, &cx(2), &mut out);
        assert!(out.sent_to(mia).is_empty());

        services.answer_name(
            claimed(1, b"mia", ClaimAnswer::Granted),
            &cx(3).clock(),
            &mut out,
        );
        assert_eq!(
            out.sent_to(mia),
            [matou::connect_response(true), matou::connect_notify(b"mia")]
        );
        assert_eq!(out.identified, [mia]);
        assert_eq!(out.resumed, [mia], "its held input is to be read again");
        // What the reactor does then: the public message follows the sign-in.
        services.on_data(ProtocolKind::Matou, mia, &mut input, &cx(3), &mut out);
        assert!(input.is_empty());
        assert_eq!(
            out.sent_to(mia).last(),
            Some(&matou::public_broadcast(b"mia", b"hi"))
        );

        // CCM: refused by the cluster (another node holds it), CCM's way; the connection
        // may try again, and waits again.
        out.clear();
        services.on_accept(ProtocolKind::Ccm, cid, &cx(4), &mut out);
        let identify = |name: &str| ccm_message("NotDefined", name);
        feed(
            &mut services,
            &mut out,
            ProtocolKind::Ccm,
            cid,
            &identify("cid"),
            4,
        );
        assert!(out.sent_to(cid).is_empty());
        services.answer_name(
            claimed(2, b"cid", ClaimAnswer::Taken),
            &cx(5).clock(),
            &mut out,
        );
        assert_eq!(
            out.sent_to(cid),
            [render::ccm_error(Reason::NameTaken, "that name is in use")]
        );
        feed(
            &mut services,
            &mut out,
            ProtocolKind::Ccm,
            cid,
            &identify("cid2"),
            6,
        );
        assert_eq!(out.sent_to(cid).len(), 1, "waiting again");

        // No answer by the deadline (the claim was made at 6 ms, the wait is the lease):
        // refused as unconfirmed, and a late answer changes nothing.
        services.on_timers(&cx(505).clock(), &mut out);
        assert_eq!(out.sent_to(cid).len(), 1);
        services.on_timers(&cx(506).clock(), &mut out);
        assert_eq!(
            out.sent_to(cid).last(),
            crate::hub::claims::unconfirmed_answer(crate::hub::NamedProtocol::Ccm).as_ref()
        );
        services.answer_name(
            claimed(3, b"cid2", ClaimAnswer::Granted),
            &cx(507).clock(),
            &mut out,
        );
        assert_eq!(out.sent_to(cid).len(), 2);
        assert_eq!(services.hub().holder(b"cid2"), None);

        // BIN24: the first frame waits with the login; refused, the connection is closed.
        let bob = ConnId::new(3, 4);
        services.on_accept(ProtocolKind::Bin24, bob, &cx(600), &mut out);
        let message = bin24_frame(bin24::TYPE_MESSAGE, 7, "bob", "bob", b"me");
        let mut input = BytesMut::from(&message[..]);
        services.on_data(ProtocolKind::Bin24, bob, &mut input, &cx(600), &mut out);
        assert!(out.sent_to(bob).is_empty() && input.is_empty());
        // Granted: the held frame is handled as the first one (a message to oneself comes
        // back).
        services.answer_name(
            claimed(4, b"bob", ClaimAnswer::Granted),
            &cx(601).clock(),
            &mut out,
        );
        assert_eq!(out.sent_to(bob).len(), 1, "the held frame was delivered");
        assert_eq!(out.resumed.last(), Some(&bob));
        let ben = ConnId::new(4, 5);
        services.on_accept(ProtocolKind::Bin24, ben, &cx(602), &mut out);
        let login = bin24_frame(bin24::TYPE_ANSWER, 0, "ben", "ben", b"200");
        feed(
            &mut services,
            &mut out,
            ProtocolKind::Bin24,
            ben,
            &login,
            602,
        );
        assert!(!out.closed.iter().any(|(id, _, _)| *id == ben));
        services.answer_name(
            claimed(5, b"ben", ClaimAnswer::Taken),
            &cx(603).clock(),
            &mut out,
        );
        assert!(out
            .closed
            .contains(&(ben, CloseReason::ProtocolError, CloseMode::Now)));
        assert!(services.shut_down().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Per-sender order across nodes: while a CCM user's message to a name held elsewhere is
    /// being located, its next messages (here a `*` one, which would reach the lobby at once)
    /// wait unread; they are handled once the cluster answered, in order.
    #[test]
    fn a_ccm_users_messages_after_one_being_located_wait_for_it() {
        let dir = fresh_dir("locate-order");
        let mut services = clustered(&dir);
        let mut out = RecordingOutbox::default();
        let (cid, cal) = (ConnId::new(0, 1), ConnId::new(1, 2));
        for (token, (id, name)) in [(1, (cid, "cid")), (2, (cal, "cal"))] {
            ccm_signed_in(&mut services, &mut out, id, name, token);
            feed(&mut services, &mut out, ProtocolKind::Ccm, id, b"", 0);
        }
        out.clear();

        // To rex, whom no user here holds, then to everyone: one read.
        let mut input = ccm_message("Text\nAddressee: rex", "first");
        let star = ccm_message("Text\nAddressee: *", "second");
        input.extend_from_slice(&star);
        services.on_data(ProtocolKind::Ccm, cid, &mut input, &cx(1), &mut out);
        assert!(out.sent_to(cal).is_empty(), "the `*` waits for the first");
        assert_eq!(&input[..], &star[..], "held, unread");

        // Nobody holds rex: cid is told, then its `*` message is read and reaches cal.
        services.answer_name(located(3, None), &cx(2).clock(), &mut out);
        assert_eq!(
            out.sent_to(cid),
            [render::ccm_error(
                Reason::UnknownAddressee,
                "no user has that name"
            )]
        );
        assert_eq!(out.resumed.last(), Some(&cid));
        services.on_data(ProtocolKind::Ccm, cid, &mut input, &cx(2), &mut out);
        assert!(input.is_empty());
        let to_cal = out.sent_to(cal).concat();
        assert!(
            to_cal.ends_with(b"Addressee: *\nMessage-Encoding: utf-8\nContent-Length: 6\n\nsecond"),
            "the `*` message, after the answer: {:?}",
            String::from_utf8_lossy(&to_cal)
        );
        assert!(services.shut_down().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// MATOU private links with a user of another node, without Redis: the request is
    /// located (answers fabricated), each step from the other node is handed over as the
    /// cluster would, and every answer is MATOU's own.
    #[test]
    fn matou_private_links_with_users_of_other_nodes_follow_the_brokers_three_steps() {
        use crate::hub::{PrivateLink, PrivateStep};
        use crate::protocol::matou::codec::{self as matou, ErrorCode};
        let dir = fresh_dir("private");
        let mut services = clustered(&dir);
        let mut out = RecordingOutbox::default();
        let mia = ConnId::new(0, 1);
        services.on_accept(ProtocolKind::Matou, mia, &cx(0), &mut out);
        let mut login = BytesMut::from(&matou::connect_request(b"mia")[..]);
        services.on_data(ProtocolKind::Matou, mia, &mut login, &cx(0), &mut out);
        services.answer_name(
            claimed(1, b"mia", ClaimAnswer::Granted),
            &cx(0).clock(),
            &mut out,
        );
        out.clear();
        let step =
            |step, src: &'static [u8], dst: &'static [u8], from: &'static [u8]| PrivateLink {
                to_node: Bytes::from_static(b"unit"),
                to_incarnation: 0,
                from_node: Bytes::from_static(from),
                from_incarnation: 9,
                step,
                src: Bytes::from_static(src),
                dst: Bytes::from_static(dst),
                address: Bytes::from_static(&[10, 0, 0, 2]),
                message_port: 5000,
                file_port: 5001,
            };
        let send = |services: &mut Services, out: &mut RecordingOutbox, packet: Bytes| {
            let mut input = BytesMut::from(&packet[..]);
            services.on_data(ProtocolKind::Matou, mia, &mut input, &cx(1), out);
        };

        // mia asks for max, whom no user here holds: located, then sent to node-b.
        send(&mut services, &mut out, matou::private_request(b"max"));
        assert!(out.sent_to(mia).is_empty());
        let at_b = Some((Bytes::from_static(b"node-b"), 9, NamedProtocol::Matou));
        services.answer_name(located(2, at_b), &cx(2).clock(), &mut out);
        assert!(out.sent_to(mia).is_empty());
        // An acceptance from another node than max's is not max's.
        services.private_from_node(
            step(PrivateStep::Accept, b"mia", b"max", b"node-c"),
            &cx(3).clock(),
            &mut out,
        );
        assert!(out.sent_to(mia).is_empty());
        services.private_from_node(
            step(PrivateStep::Accept, b"mia", b"max", b"node-b"),
            &cx(3).clock(),
            &mut out,
        );
        assert_eq!(
            out.sent_to(mia),
            [matou::private_dst_address(b"max", &[10, 0, 0, 2])]
        );
        // mia's ports go to max's node; once only.
        send(
            &mut services,
            &mut out,
            matou::private_src_ports(b"max", 1, 2),
        );
        assert_eq!(out.sent_to(mia).len(), 1);
        send(
            &mut services,
            &mut out,
            matou::private_src_ports(b"max", 1, 2),
        );
        assert_eq!(
            out.sent_to(mia).last().map(|packet| packet[..8].to_vec()),
            Some(matou::error(ErrorCode::LinkNotAccepted, b"")[..8].to_vec())
        );

        // zed, on node-b, asks mia: notified; mia accepts; zed's ports reach mia, once.
        out.clear();
        services.private_from_node(
            step(PrivateStep::Request, b"zed", b"mia", b"node-b"),
            &cx(4).clock(),
            &mut out,
        );
        assert_eq!(out.sent_to(mia), [matou::private_request_notify(b"zed")]);
        send(&mut services, &mut out, matou::private_accept(b"zed"));
        assert_eq!(out.sent_to(mia).len(), 1, "the acceptance went to node-b");
        let ports = step(PrivateStep::SrcPorts, b"zed", b"mia", b"node-b");
        services.private_from_node(ports.clone(), &cx(5).clock(), &mut out);
        services.private_from_node(ports, &cx(5).clock(), &mut out);
        assert_eq!(
            out.sent_to(mia)[1..],
            [matou::private_src_address(
                b"zed",
                &[10, 0, 0, 2],
                5000,
                5001
            )]
        );

        // Nobody holds "ned": ERROR 4 once located, and the request no longer counts.
        out.clear();
        send(&mut services, &mut out, matou::private_request(b"ned"));
        services.answer_name(located(3, None), &cx(6).clock(), &mut out);
        assert_eq!(
            out.sent_to(mia).last().map(|packet| packet[..8].to_vec()),
            Some(matou::error(ErrorCode::UnknownUser, b"")[..8].to_vec())
        );
        assert!(services.shut_down().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// BIN24 across two nodes without Redis (answers and events handed between two
    /// `Services` by hand, time fabricated): ana on node-a sends two messages to bob on
    /// node-b. Both are read and located, the look-ups answered in order; each is
    /// published once for node-b, which forwards it to bob verbatim; bob's "200" goes back to
    /// node-a and ana gets it verbatim. bob does not answer the second within the ack
    /// timeout: node-b closes him (rule 6), stores the frame, answers "300" to node-a once
    /// durable, and bob finds it (type 2) when he logs in again. A message to a name no node
    /// holds is stored on node-a ("300").
    /// While a message to a DST is being located, the next ones to it are located too, not
    /// delivered at once: here bob logs in on this very node meanwhile, and ana's second
    /// message, which could go to him live at once, waits for the first one's look-up, so he
    /// gets them in the order sent. Nothing of ana's input was held for it.
    #[test]
    fn messages_behind_a_look_up_for_the_same_recipient_keep_their_order() {
        use crate::hub::ClaimAnswer;
        use crate::protocol::bin24::codec as bin24;
        let dir = std::env::temp_dir().join(format!(
            "switchboard-registry-unit-{}-bin24-behind",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut a = clustered(&dir);
        let mut out = RecordingOutbox::default();
        fn frame(kind: u16, id: u32, src: &str, dst: &str, body: &[u8]) -> Bytes {
            let name = |text: &str| match bin24::Name::new(text.as_bytes()) {
                Some(name) => name,
                None => panic!("a valid name"),
            };
            match bin24::encode(kind, id, name(src), name(dst), body) {
                Some(frame) => frame,
                None => panic!("a valid frame"),
            }
        }
        fn sign_in(
            a: &mut Services,
            out: &mut RecordingOutbox,
            id: ConnId,
            user: &'static str,
            token: u64,
        ) {
            a.on_accept(ProtocolKind::Bin24, id, &cx(0), out);
            let hello = frame(bin24::TYPE_ANSWER, 0, user, "nobody", b"200");
            a.on_data(
                ProtocolKind::Bin24,
                id,
                &mut BytesMut::from(&hello[..]),
                &cx(0),
                out,
            );
            a.answer_name(
                claimed(token, user.as_bytes(), ClaimAnswer::Granted),
                &cx(0).clock(),
                out,
            );
        }
        let (ana, bob) = (ConnId::new(0, 1), ConnId::new(1, 1));
        sign_in(&mut a, &mut out, ana, "ana", 1);
        let first = frame(bin24::TYPE_MESSAGE, 1, "ana", "bob", b"first");
        a.on_data(
            ProtocolKind::Bin24,
            ana,
            &mut BytesMut::from(&first[..]),
            &cx(1),
            &mut out,
        );
        // bob signs in here while the first is located (his claim is token 3).
        sign_in(&mut a, &mut out, bob, "bob", 3);
        out.clear();
        let second = frame(bin24::TYPE_MESSAGE, 2, "ana", "bob", b"second");
        let mut input = BytesMut::from(&second[..]);
        a.on_data(ProtocolKind::Bin24, ana, &mut input, &cx(2), &mut out);
        assert!(input.is_empty(), "read");
        assert!(out.sent_to(bob).is_empty(), "not before the first");
        // No other node holds bob (he is this node's): both delivered here, in order.
        for token in [2, 4] {
            a.answer_name(
                NameAnswer::Located {
                    token,
                    holder: None,
                },
                &cx(3).clock(),
                &mut out,
            );
        }
        assert_eq!(out.sent_to(bob), [first, second]);

        // One sender may have 64 messages located at once; its input waits beyond, until
        // one is answered, so that it cannot take every look-up the node may have waiting.
        let mut input = BytesMut::new();
        for id in 0..65u32 {
            input.extend_from_slice(&frame(bin24::TYPE_MESSAGE, 10 + id, "ana", "zed", b"z"));
        }
        let one = frame(bin24::TYPE_MESSAGE, 74, "ana", "zed", b"z").len();
        out.clear();
        out.resumed.clear();
        a.on_data(ProtocolKind::Bin24, ana, &mut input, &cx(4), &mut out);
        assert_eq!(input.len(), one, "the 65th waits, unread");
        assert!(out.resumed.is_empty());
        a.answer_name(
            NameAnswer::Located {
                token: 5,
                holder: None,
            },
            &cx(5).clock(),
            &mut out,
        );
        assert_eq!(out.resumed, [ana], "read again once one is answered");
        assert!(a.shut_down().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bin24_messages_to_a_user_of_another_node_are_forwarded_answered_and_kept_on_timeout() {
        use crate::hub::Bin24Step;
        use crate::protocol::bin24::codec as bin24;
        let dir = fresh_dir("bin24-nodes");
        let (mut a, mut b) = (node(&dir, "a"), node(&dir, "b"));
        let (mut out_a, mut out_b) = (RecordingOutbox::default(), RecordingOutbox::default());
        let ack_timeout_ms = Config::for_tests().bin24_ack_timeout_ms;
        let (ana, bob) = (ConnId::new(0, 1), ConnId::new(0, 1));
        // Each signs in on its node: the first frame (an answer to nobody) claims the name.
        for (services, out, id, user) in [
            (&mut a, &mut out_a, ana, "ana"),
            (&mut b, &mut out_b, bob, "bob"),
        ] {
            bin24_signed_in(services, out, id, user, 1, 0);
            out.clear();
        }

        // Two messages in one read: both are read and located (the look-ups share a pipeline
        // and are answered in the order asked, which keeps the messages in order).
        let (first, second) = (
            bin24_frame(bin24::TYPE_MESSAGE, 1, "ana", "bob", b"hello bob"),
            bin24_frame(bin24::TYPE_MESSAGE, 2, "ana", "bob", b"still there?"),
        );
        let mut input = BytesMut::from(&first[..]);
        input.extend_from_slice(&second);
        a.on_data(ProtocolKind::Bin24, ana, &mut input, &cx(1), &mut out_a);
        assert!(input.is_empty(), "nothing waits unread");
        assert!(a.take_bin24_published().is_empty() && out_a.sent.is_empty());
        let at_b = || Some((Bytes::from_static(b"node-b"), 9, NamedProtocol::Bin24));
        a.answer_name(located(2, at_b()), &cx(2).clock(), &mut out_a);
        let published = a.take_bin24_published();
        let [relay] = &published[..] else {
            panic!("one frame published: {published:?}");
        };
        assert_eq!(
            (
                &relay.to_node[..],
                relay.to_incarnation,
                relay.step,
                &relay.frame
            ),
            (&b"node-b"[..], 9, Bin24Step::Message, &first)
        );
        // node-b forwards it verbatim; bob's "200" goes back to node-a, and to ana verbatim.
        b.bin24_from_node(relay.clone(), b"node-a", &cx(3).clock(), &mut out_b);
        assert_eq!(out_b.sent_to(bob), std::slice::from_ref(&first));
        let ok = bin24_frame(bin24::TYPE_ANSWER, 1, "bob", "ana", b"200");
        feed(&mut b, &mut out_b, ProtocolKind::Bin24, bob, &ok, 4);
        let answers = b.take_bin24_published();
        let [answer] = &answers[..] else {
            panic!("one answer published: {answers:?}");
        };
        assert_eq!(
            (&answer.to_node[..], answer.step, &answer.frame),
            (&b"node-a"[..], Bin24Step::Answer, &ok)
        );
        a.bin24_from_node(answer.clone(), b"node-b", &cx(5).clock(), &mut out_a);
        assert_eq!(out_a.sent_to(ana), [ok]);

        // The second message's look-up is answered: sent the same way; bob never answers.
        out_a.clear();
        out_b.clear();
        a.answer_name(located(3, at_b()), &cx(6).clock(), &mut out_a);
        let published = a.take_bin24_published();
        assert_eq!(published.len(), 1, "once: {published:?}");
        assert_eq!(
            (
                &published[0].to_node[..],
                published[0].step,
                &published[0].frame
            ),
            (&b"node-b"[..], Bin24Step::Message, &second)
        );
        b.bin24_from_node(published[0].clone(), b"node-a", &cx(7).clock(), &mut out_b);
        assert_eq!(out_b.sent_to(bob), std::slice::from_ref(&second));
        b.on_timers(&cx(7 + ack_timeout_ms - 20).clock(), &mut out_b);
        assert!(out_b.closed.is_empty(), "not before the ack timeout");
        b.on_timers(&cx(7 + ack_timeout_ms + 20).clock(), &mut out_b);
        assert_eq!(
            out_b.closed.iter().map(|c| (c.0, c.1)).collect::<Vec<_>>(),
            [(bob, CloseReason::Timeout)]
        );
        b.on_close(
            ProtocolKind::Bin24,
            bob,
            CloseReason::Timeout,
            &cx(8 + ack_timeout_ms),
            &mut out_b,
        );
        // Stored on node-b; "300" for ana is published once it is durable.
        let stored_answer = bin24_frame(bin24::TYPE_ANSWER, 2, "bob", "ana", bin24::ANSWER_STORED);
        let answers = published_once_stored(&mut b, &mut out_b, 9 + ack_timeout_ms);
        let [answer] = &answers[..] else {
            panic!("one answer: {answers:?}");
        };
        assert_eq!(
            (&answer.to_node[..], &answer.frame),
            (&b"node-a"[..], &stored_answer)
        );
        a.bin24_from_node(answer.clone(), b"node-b", &cx(10).clock(), &mut out_a);
        assert_eq!(out_a.sent_to(ana), [stored_answer]);

        // bob logs in again on node-b: the frame is there, as type 2.
        let bob_again = ConnId::new(1, 2);
        bin24_signed_in(&mut b, &mut out_b, bob_again, "bob", 2, 20);
        let mut kept = second.to_vec();
        kept[2] = bin24::TYPE_OFFLINE as u8;
        // Stored frames are sent with a note (custody: delivered once acknowledged).
        wake_until(&mut b, &mut out_b, 21, "never loaded", |_, out| {
            !out.notified.is_empty()
        });
        let notified: Vec<_> = out_b
            .notified
            .iter()
            .map(|(to, bytes, _)| (*to, bytes.clone()))
            .collect();
        assert_eq!(notified, [(bob_again, Bytes::from(kept))]);

        // bob answers it: ana is not on node-b, so node-b locates her (rule 5 across nodes)
        // and publishes the answer, verbatim, for node-a, which hands it to ana.
        out_a.clear();
        let thanks = bin24_frame(bin24::TYPE_ANSWER, 2, "bob", "ana", b"200 got it");
        feed(
            &mut b,
            &mut out_b,
            ProtocolKind::Bin24,
            bob_again,
            &thanks,
            22,
        );
        assert!(
            b.take_bin24_published().is_empty(),
            "not before the look-up"
        );
        let at_a = Some((Bytes::from_static(b"node-a"), 7, NamedProtocol::Bin24));
        b.answer_name(located(3, at_a), &cx(23).clock(), &mut out_b);
        let [relay] = &b.take_bin24_published()[..] else {
            panic!("one answer published for node-a");
        };
        assert_eq!(
            (
                &relay.to_node[..],
                relay.to_incarnation,
                relay.step,
                &relay.frame
            ),
            (&b"node-a"[..], 7, Bin24Step::Answer, &thanks)
        );
        a.bin24_from_node(relay.clone(), b"node-b", &cx(24).clock(), &mut out_a);
        assert_eq!(out_a.sent_to(ana), [thanks]);
        assert!(out_b.sent_to(bob_again).is_empty());

        // A name no node holds: stored on node-a, and ana hears "300" once durable.
        out_a.clear();
        let to_zed = bin24_frame(bin24::TYPE_MESSAGE, 3, "ana", "zed", b"anyone?");
        feed(&mut a, &mut out_a, ProtocolKind::Bin24, ana, &to_zed, 30);
        a.answer_name(located(4, None), &cx(30).clock(), &mut out_a);
        assert!(a.take_bin24_published().is_empty());
        let stored = bin24_frame(bin24::TYPE_ANSWER, 3, "zed", "ana", bin24::ANSWER_STORED);
        wake_until(&mut a, &mut out_a, 31, "never stored", |_, out| {
            !out.sent_to(ana).is_empty()
        });
        assert_eq!(out_a.sent_to(ana), [stored]);
        assert!(
            a.take_bin24_published().is_empty(),
            "no notice: no node is known to hold zed"
        );

        // node-b never answers this one (it died, or Redis lost the frame or the answer):
        // after the ack timeout and the grace (the lease), node-a keeps it and ana hears
        // "300"; the frames node-b answered above are not kept again.
        out_a.clear();
        let lost = bin24_frame(bin24::TYPE_MESSAGE, 4, "ana", "bob", b"lost?");
        feed(&mut a, &mut out_a, ProtocolKind::Bin24, ana, &lost, 40);
        // Sent from the location cache (bob at node-b: no look-up), under the same custody.
        let published = a.take_bin24_published();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].step, Bin24Step::CachedMessage);
        let lease_ms = 500;
        a.on_timers(&cx(40 + ack_timeout_ms + lease_ms - 20).clock(), &mut out_a);
        a.on_timers(&cx(40 + ack_timeout_ms + lease_ms + 20).clock(), &mut out_a);
        let kept = bin24_frame(bin24::TYPE_ANSWER, 4, "bob", "ana", bin24::ANSWER_STORED);
        let kept_ms = 41 + ack_timeout_ms + lease_ms;
        wake_until(&mut a, &mut out_a, kept_ms, "never kept", |_, out| {
            !out.sent_to(ana).is_empty()
        });
        wake_for_a_while(&mut a, &mut out_a, kept_ms + 1);
        assert_eq!(out_a.sent_to(ana), [kept]);
        // bob may still be online on node-b (Redis lost the frame or its answer): node-a tells
        // node-b, once (the crossing's node and the cache's are one), with the stored frame's
        // header, so that node-b sends it to bob now rather than at his next login.
        let notices = a.take_bin24_published();
        let header = bin24_frame(bin24::TYPE_OFFLINE, 4, "ana", "bob", b"");
        let [notice] = &notices[..] else {
            panic!("one notice: {notices:?}");
        };
        assert_eq!(
            (
                &notice.to_node[..],
                notice.to_incarnation,
                notice.step,
                &notice.frame
            ),
            (&b"node-b"[..], 9, Bin24Step::Stored, &header)
        );
        assert!(a.shut_down().is_ok() && b.shut_down().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Rule 4 across nodes: a BIN24 user on node-a and a CCM user on node-b. ana's message
    /// crosses as a `Bin24` event, node-b writes it to cat in CCM's form and, once cat's TCP
    /// acknowledged it, publishes the "200" back; one cat closes before receiving is stored
    /// on node-b and the "300" goes back. cat's message to ana is made a BIN24 frame on
    /// node-b (cat's messageID counter) and published under node-b's custody; ana's answer
    /// ends it, and cat is told nothing (CCM has no receipt).
    #[test]
    fn bin24_and_ccm_users_of_two_nodes_message_each_other_with_bin24s_answers() {
        use crate::hub::Bin24Step;
        use crate::protocol::bin24::codec as bin24;
        let dir = fresh_dir("bin24-ccm-nodes");
        let (mut a, mut b) = (node(&dir, "a"), node(&dir, "b"));
        let (mut out_a, mut out_b) = (RecordingOutbox::default(), RecordingOutbox::default());
        let (ana, cat) = (ConnId::new(0, 1), ConnId::new(0, 1));
        bin24_signed_in(&mut a, &mut out_a, ana, "ana", 1, 0);
        ccm_signed_in(&mut b, &mut out_b, cat, "cat", 1);
        out_a.clear();
        out_b.clear();
        let ccm_at_b = || Some((Bytes::from_static(b"node-b"), 9, NamedProtocol::Ccm));

        // ana -> cat: located at node-b (a CCM holder), published there as a BIN24 message.
        let first = bin24_frame(bin24::TYPE_MESSAGE, 1, "ana", "cat", b"hello cat");
        feed(&mut a, &mut out_a, ProtocolKind::Bin24, ana, &first, 1);
        a.answer_name(located(2, ccm_at_b()), &cx(1).clock(), &mut out_a);
        let [relay] = &a.take_bin24_published()[..] else {
            panic!("one frame published for node-b");
        };
        assert_eq!(
            (&relay.to_node[..], relay.step, &relay.frame),
            (&b"node-b"[..], Bin24Step::Message, &first)
        );
        // node-b writes it to cat in CCM's form; "200" once cat's TCP acknowledged it.
        b.bin24_from_node(relay.clone(), b"node-a", &cx(2).clock(), &mut out_b);
        let notified = out_b.notified.clone();
        let [(to, bytes, note)] = &notified[..] else {
            panic!("one delivery to cat: {notified:?}");
        };
        assert_eq!(
            (*to, bytes),
            (cat, &render::ccm_text(b"ana", b"cat", b"hello cat"))
        );
        let note = *note;
        assert!(
            b.take_bin24_published().is_empty(),
            "nothing before the ack"
        );
        b.on_notify(
            ProtocolKind::Ccm,
            cat,
            note,
            true,
            &cx(3).clock(),
            &mut out_b,
        );
        let [answer] = &b.take_bin24_published()[..] else {
            panic!("the 200 published for node-a");
        };
        let delivered = bin24_frame(bin24::TYPE_ANSWER, 1, "cat", "ana", bin24::ANSWER_DELIVERED);
        assert_eq!(
            (&answer.to_node[..], answer.step, &answer.frame),
            (&b"node-a"[..], Bin24Step::Answer, &delivered)
        );
        a.bin24_from_node(answer.clone(), b"node-b", &cx(4).clock(), &mut out_a);
        assert_eq!(out_a.sent_to(ana), [delivered]);

        // A second one that cat closes before receiving: stored on node-b, "300" back.
        out_a.clear();
        out_b.clear();
        let second = bin24_frame(bin24::TYPE_MESSAGE, 2, "ana", "cat", b"gone?");
        feed(&mut a, &mut out_a, ProtocolKind::Bin24, ana, &second, 5);
        a.answer_name(located(3, ccm_at_b()), &cx(5).clock(), &mut out_a);
        let [relay] = &a.take_bin24_published()[..] else {
            panic!("one frame published for node-b");
        };
        b.bin24_from_node(relay.clone(), b"node-a", &cx(6).clock(), &mut out_b);
        let note = match &out_b.notified[..] {
            [(_, _, note)] => *note,
            other => panic!("one delivery to cat: {other:?}"),
        };
        b.on_notify(
            ProtocolKind::Ccm,
            cat,
            note,
            false,
            &cx(7).clock(),
            &mut out_b,
        );
        let stored = bin24_frame(bin24::TYPE_ANSWER, 2, "cat", "ana", bin24::ANSWER_STORED);
        let answers = published_once_stored(&mut b, &mut out_b, 8);
        let [answer] = &answers[..] else {
            panic!("one answer: {answers:?}");
        };
        assert_eq!(
            (&answer.to_node[..], &answer.frame),
            (&b"node-a"[..], &stored)
        );
        a.bin24_from_node(answer.clone(), b"node-b", &cx(9).clock(), &mut out_a);
        assert_eq!(out_a.sent_to(ana), [stored]);

        // cat -> ana: located at node-a (a BIN24 holder); node-b makes the frame (cat's
        // first messageID, 0) and publishes it; cat's input is read again.
        out_a.clear();
        out_b.clear();
        let to_ana = ccm_message("Text\nAddressee: ana", "hi ana");
        feed(&mut b, &mut out_b, ProtocolKind::Ccm, cat, &to_ana, 10);
        assert!(
            b.take_bin24_published().is_empty(),
            "not before the look-up"
        );
        let bin24_at_a = Some((Bytes::from_static(b"node-a"), 7, NamedProtocol::Bin24));
        b.answer_name(located(2, bin24_at_a), &cx(10).clock(), &mut out_b);
        assert_eq!(out_b.resumed.last(), Some(&cat));
        let from_cat = bin24_frame(bin24::TYPE_MESSAGE, 0, "cat", "ana", b"hi ana");
        let [relay] = &b.take_bin24_published()[..] else {
            panic!("one frame published for node-a");
        };
        assert_eq!(
            (
                &relay.to_node[..],
                relay.to_incarnation,
                relay.step,
                &relay.frame
            ),
            (&b"node-a"[..], 7, Bin24Step::Message, &from_cat)
        );
        // node-a delivers it to ana as BIN24's own (its ack timer there); her answer goes
        // back to node-b, which tells cat nothing and keeps nothing.
        a.bin24_from_node(relay.clone(), b"node-b", &cx(11).clock(), &mut out_a);
        assert_eq!(out_a.sent_to(ana), [from_cat]);
        let ok = bin24_frame(bin24::TYPE_ANSWER, 0, "ana", "cat", b"200");
        feed(&mut a, &mut out_a, ProtocolKind::Bin24, ana, &ok, 12);
        let [answer] = &a.take_bin24_published()[..] else {
            panic!("ana's answer published for node-b");
        };
        assert_eq!((&answer.to_node[..], &answer.frame), (&b"node-b"[..], &ok));
        b.bin24_from_node(answer.clone(), b"node-a", &cx(13).clock(), &mut out_b);
        let ack_timeout_ms = Config::for_tests().bin24_ack_timeout_ms;
        b.on_timers(&cx(14 + ack_timeout_ms + 600).clock(), &mut out_b);
        wake_for_a_while(&mut b, &mut out_b, 15 + ack_timeout_ms + 600);
        assert!(out_b.sent_to(cat).is_empty(), "cat is told nothing");
        // Past the ack timeout and the lease: node-b keeps nothing for ana (answered), only
        // the frame stored for cat above.
        let frames = b.store_metrics().map(|metrics| metrics.stored_frames);
        assert_eq!(frames, Some(1), "nothing kept again");
        assert!(a.shut_down().is_ok() && b.shut_down().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
