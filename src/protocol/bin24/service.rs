//! The BIN24 server logic, sans-io: frames and `now_ms` in; sends, closes and store requests
//! out. The durable store is reached through [`StoreSink`] and answers through
//! [`Bin24Service::on_store_event`], so every rule is testable without sockets or disks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use log::{debug, warn};

use super::codec::{self, Frame, Name};
use super::users::UserList;
use crate::chat::{ConnId, ConnMap};
use crate::hub::{
    Bin24Direct, Bin24Relay, Bin24Step, Claim, Decision, HubEvent, NamedProtocol, Written,
    WrittenNote,
};
use crate::limits::{RateLimit, SenderBudget};
use crate::protocol::{
    CloseMode, CloseReason, HubOutcome, Outbox, ProtocolKind, HELD_INPUT_BYTES_MAX,
};
use crate::store::{StoreEvent, StoreRequest};
use crate::timer::{TimerKey, TimerWheel};

/// Where store requests go: the storage thread in the server, a recorder in tests.
pub trait StoreSink {
    fn submit(&mut self, request: StoreRequest);
}

#[derive(Clone, Debug)]
pub struct Bin24Config {
    /// A forwarded message not answered this long makes the recipient count as disconnected.
    pub ack_timeout_ms: u64,
    /// Most messages awaiting an answer from one recipient; beyond it, new messages to that
    /// recipient go to its offline store instead of its socket.
    pub unacked_per_recipient_max: usize,
    /// A backlog is loaded from the store a page of this many bytes at a time, and at most
    /// this many bytes of stored frames are queued to a connection and not yet acknowledged
    /// by its TCP peer, so a backlog (up to the store's 64 MiB per user) never trips the
    /// output limits that protect the server from slow readers.
    pub offline_window_bytes: usize,
    /// A stored frame the peer's TCP has acknowledged counts as delivered once the connection
    /// has stayed up this long after (a peer that closes with unread data resets the
    /// connection, and a reset within this time keeps the frame stored).
    pub delivery_grace_ms: u64,
    /// Most bytes of stored frames sent to one connection and not yet counted as delivered;
    /// the backlog waits beyond it.
    pub unconfirmed_bytes_per_conn_max: usize,
    /// Most bytes of stored frames in memory for every connection together: pages being
    /// loaded, loaded and not yet queued, queued and not yet acknowledged. A connection whose
    /// next page does not fit waits its turn.
    pub loaded_bytes_max: usize,
    /// A login whose TCP has acknowledged none of the stored frames it was sent for this long,
    /// while another connection waits for room in `loaded_bytes_max`, is closed as a slow
    /// consumer (its frames stay stored): otherwise logins that never read would keep their
    /// share of the budget for as long as they stay connected, and every other backlog would
    /// wait behind them. The output limits' soft duration.
    pub stalled_holder_ms: u64,
    /// With a list, only its users log in, from their addresses; a message to anyone else is
    /// refused with "507" (it could never be delivered).
    pub users: Option<UserList>,
    /// Bytes of messages one user may make online users receive per second, in all and to
    /// one recipient; over either the sender is answered "429". 0: no limit.
    pub sender_bytes_per_s_max: u64,
    pub pair_bytes_per_s_max: u64,
    pub timer_tick_ms: u64,
    /// In a cluster: a frame published for a user of another node whose answer has not come
    /// back within the ack timeout and this much more (the recipient's node's own timeout, its
    /// store's write, two trips through Redis) is stored here and its sender answered "300":
    /// the other node died, or Redis dropped the frame or its answer. The cluster's lease.
    pub crossing_grace_ms: u64,
}

impl Default for Bin24Config {
    fn default() -> Self {
        Bin24Config {
            ack_timeout_ms: 3_000,
            unacked_per_recipient_max: 10_000,
            offline_window_bytes: 256 * 1024,
            delivery_grace_ms: 5_000,
            unconfirmed_bytes_per_conn_max: 64 * 1024 * 1024,
            loaded_bytes_max: 64 * 1024 * 1024,
            stalled_holder_ms: 10_000,
            users: None,
            sender_bytes_per_s_max: 8 * 1024 * 1024,
            pair_bytes_per_s_max: 2 * 1024 * 1024,
            timer_tick_ms: 10,
            crossing_grace_ms: 3_000,
        }
    }
}

/// In a cluster, the node (and its incarnation) of a sender who is not on this one: its
/// answers ("200", "300", "507") are published for that node.
type Origin = Option<NodeId>;

/// Another node: its name and incarnation.
type NodeId = (Bytes, u64);

/// A message forwarded to an online recipient and not yet answered.
#[derive(Debug)]
struct PendingAck {
    recipient: Name,
    recipient_conn: ConnId,
    frame: Frame,
    timer: TimerKey,
    origin: Origin,
}

/// Why a store request was made, to act on its completion.
#[derive(Debug)]
enum Ticket {
    /// A message stored for `recipient`: answer its sender "300" once durable. `notify`: the
    /// node (and incarnation) this node last took `recipient` to be online on (its crossing
    /// there timed out), told once the frame is durable ([`Bin24Step::Stored`]).
    Append {
        sender: Name,
        recipient: Name,
        message_id: u32,
        origin: Origin,
        notify: Origin,
    },
    /// The next page of `user`'s stored frames, for `conn`; `reserved_bytes` of the global
    /// budget are held for it until it arrives.
    Load {
        conn: ConnId,
        user: Name,
        reserved_bytes: usize,
    },
}

/// A stored frame queued to a connection and not yet counted as delivered. The frame's bytes
/// are not kept: if it is not delivered, it is still in the store and is loaded again.
#[derive(Debug)]
struct Sent {
    seq: u64,
    /// The stored frame's SRC and messageID, which an answering client names.
    src: Name,
    message_id: u32,
    frame_bytes: usize,
    /// This connection's number for it, reported back by the reactor once acknowledged.
    note: u64,
    /// When the peer's TCP acknowledged it.
    acked_at_ms: Option<u64>,
}

/// What became of a login.
enum Login {
    Done,
    /// Refused, and the connection closed.
    Refused,
    /// In a cluster: waiting for the other nodes.
    Pending,
}

#[derive(Debug)]
struct Bin24Conn {
    peer_ip: IpAddr,
    /// Set by the first frame's SRC.
    user: Option<Name>,
    /// Pending-ack keys of messages forwarded to this connection.
    unacked: Vec<(Name, u32)>,
    /// Stored frames loaded for this connection and not yet queued to it, oldest first.
    backlog: VecDeque<(u64, Bytes)>,
    backlog_bytes: usize,
    /// Stored frames queued to it and not yet delivered, in stream order.
    sent: VecDeque<Sent>,
    /// Bytes of `sent` not yet acknowledged by the peer's TCP, and not yet delivered.
    sent_unacked_bytes: usize,
    sent_unconfirmed_bytes: usize,
    next_note: u64,
    /// The last stored seq loaded; the next page starts after it.
    cursor_seq: u64,
    /// Whether the store may hold more of this user's frames after `cursor_seq`.
    more_stored: bool,
    /// A page is being loaded for this connection.
    loading: bool,
    /// A frame for this user became durable while a page was loading: the page may have been
    /// read before it, so more may be stored whatever the page says.
    appended_while_loading: bool,
    /// Stored frames are known to wait for this connection: a page brought some, or one was
    /// stored for it while it was online. Until then (the first page at login being read) the
    /// server does not know whether anything is stored, and a new message goes live.
    backlog_known: bool,
    /// Waiting in `load_waiters` for room in the global budget.
    waiting_for_budget: bool,
    /// Stored frames sent to it that its TCP has acknowledged, ever.
    acks_seen: u64,
    /// While it holds unacknowledged stored frames: `acks_seen` at the sweep that first saw
    /// it at that count, and when (see `Bin24Config::stalled_holder_ms`).
    stalled_since: Option<(u64, u64)>,
    /// What this user's messages may make others receive; set at login.
    sending: Option<SenderBudget<Name>>,
    /// In a cluster: the first frame, whose SRC is asked of the other nodes. It is handled
    /// once the name is granted; input is left unread until then.
    claiming: Option<Frame>,
    /// In a cluster: this connection's messages being located now. At
    /// [`LOCATES_PER_CONN_MAX`] its input is left unread until one is answered, so that one
    /// sender cannot take every look-up the node may have waiting.
    locating: usize,
}

/// Messages of one connection being located at once (see `Bin24Conn::locating`).
const LOCATES_PER_CONN_MAX: usize = 64;

impl Bin24Conn {
    fn new(peer_ip: IpAddr) -> Self {
        Bin24Conn {
            peer_ip,
            user: None,
            unacked: Vec::new(),
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            sent: VecDeque::new(),
            sent_unacked_bytes: 0,
            sent_unconfirmed_bytes: 0,
            next_note: 0,
            cursor_seq: 0,
            more_stored: false,
            loading: false,
            appended_while_loading: false,
            backlog_known: false,
            waiting_for_budget: false,
            acks_seen: 0,
            stalled_since: None,
            sending: None,
            claiming: None,
            locating: 0,
        }
    }
}

/// What custody of stored frames came to, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CustodyCounts {
    /// Stored frames counted as delivered, by how: the client answered (type 1), the
    /// connection stayed up for the grace after its TCP acknowledged them, or it closed
    /// cleanly (FIN) after acknowledging them.
    pub delivered_answered: u64,
    pub delivered_grace: u64,
    pub delivered_clean_close: u64,
    /// Stored frames sent whose connection ended before they counted as delivered: they stay
    /// stored and are sent again (a duplicate if the client had in fact read them).
    pub kept_for_redelivery: u64,
    /// Logins refused: not in `--bin24-users`, or from another address than the name's
    /// current holder.
    pub logins_refused: u64,
}

/// A byte rate whose burst always holds one largest frame, or that frame could never pass.
fn frame_rate(rate_per_s: u64) -> RateLimit {
    RateLimit {
        rate_per_s,
        burst: rate_per_s.max(codec::FRAME_BYTES_MAX as u64),
    }
}

pub struct Bin24Service {
    config: Bin24Config,
    conns: ConnMap<Bin24Conn>,
    /// The live connection holding each name.
    users: HashMap<Name, ConnId>,
    /// Keyed by (sender, messageID), as the answer names them: (its DST, its messageID).
    pending: HashMap<(Name, u32), PendingAck>,
    ack_deadlines: TimerWheel<(Name, u32)>,
    /// In a cluster: frames of local senders published for another node, by (sender,
    /// messageID), kept until that node's answer comes back (custody stays here meanwhile),
    /// with that node (told if the frame ends up stored here).
    crossing: HashMap<(Name, u32), (Frame, TimerKey, NodeId)>,
    crossing_deadlines: TimerWheel<(Name, u32)>,
    /// In a cluster: messages of local senders whose DST is being located, per DST, and per
    /// (sender, messageID). While a DST has some, every further message to it is located too
    /// (not sent from the cache, nor delivered here at once), so that the look-ups' answers,
    /// which come in the order asked, keep each sender's messages to it in order; nothing of
    /// the sender's input waits meanwhile, so its look-ups share the names thread's pipelines.
    in_location: HashMap<Name, usize>,
    locating_frames: HashMap<(Name, u32), usize>,
    tickets: HashMap<u64, Ticket>,
    next_ticket: u64,
    /// Users with a page load in flight: at most one per user, whatever its connections do.
    loading_users: HashSet<Name>,
    /// Frames submitted to each recipient's store and not yet durable (or refused). While a
    /// recipient has some, new messages to it are stored behind them (see `takes_live`).
    appending: HashMap<Name, usize>,
    /// Bytes of stored frames in memory (see `Bin24Config::loaded_bytes_max`).
    loaded_bytes: usize,
    /// Connections waiting for room in that budget, in arrival order.
    load_waiters: VecDeque<ConnId>,
    /// When logins holding that budget are next looked at for a stall.
    next_stall_sweep_ms: u64,
    /// (due, connection, note): acknowledged frames up to `note` count as delivered at `due`
    /// if their connection is still up. Pushed in time order, so a queue is a timer.
    grace: VecDeque<(u64, ConnId, u64)>,
    custody: CustodyCounts,
    /// The last time the server held BIN24 input back (store queue full): answers may have
    /// waited in its sockets, so ack timeouts in the window after do not count.
    input_held_at_ms: Option<u64>,
    /// Store failures seen; logged at the 1st, 2nd, 4th, 8th...: a stopped store fails every
    /// request, and one warning per message to an offline user would flood the log.
    store_failures: u64,
}

/// Slots of the ack wheel: 10 ms ticks, so one revolution covers about 5 s, more than the
/// default 3 s ack timeout: timers fire on their first pass.
const WHEEL_SLOT_COUNT: usize = 512;

/// How far into a connection's sent frames an answer is looked for: a client answers in the
/// order it reads, so its answer names one of the oldest; a bound keeps a flood of answers
/// naming nothing from costing a scan each.
const ANSWER_SCAN_MAX: usize = 64;

/// The SRC and messageID of a stored frame; a stored frame too short to hold them (a damaged
/// store) gets a name no answer can carry, so only the transport can confirm it.
fn stored_frame_key(bytes: &[u8]) -> (Name, u32) {
    let id = bytes
        .get(4..8)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes);
    let src = bytes
        .get(8..16)
        .and_then(|b| <&[u8; 8]>::try_from(b).ok())
        .map_or_else(|| Name::from_field(&[0; 8]), Name::from_field);
    (src, id)
}

impl Bin24Service {
    pub fn new(config: Bin24Config, now_ms: u64) -> Self {
        let ack_deadlines = TimerWheel::new(config.timer_tick_ms, WHEEL_SLOT_COUNT, now_ms);
        let crossing_deadlines = TimerWheel::new(config.timer_tick_ms, WHEEL_SLOT_COUNT, now_ms);
        Bin24Service {
            config,
            conns: ConnMap::new(),
            users: HashMap::new(),
            pending: HashMap::new(),
            ack_deadlines,
            crossing: HashMap::new(),
            crossing_deadlines,
            in_location: HashMap::new(),
            locating_frames: HashMap::new(),
            tickets: HashMap::new(),
            next_ticket: 0,
            loading_users: HashSet::new(),
            appending: HashMap::new(),
            loaded_bytes: 0,
            store_failures: 0,
            load_waiters: VecDeque::new(),
            next_stall_sweep_ms: 0,
            grace: VecDeque::new(),
            custody: CustodyCounts::default(),
            input_held_at_ms: None,
        }
    }

    /// Users online now.
    pub fn online_count(&self) -> usize {
        self.users.len()
    }

    /// Messages forwarded and not yet answered.
    pub fn unacked_count(&self) -> usize {
        self.pending.len()
    }

    /// Store requests whose completion has not arrived.
    pub fn store_requests_in_flight(&self) -> usize {
        self.tickets.len()
    }

    /// Bytes of stored frames held in memory now (pages loading, loaded, not yet acknowledged).
    pub fn loaded_bytes(&self) -> usize {
        self.loaded_bytes
    }

    pub fn custody(&self) -> CustodyCounts {
        self.custody
    }

    /// The reactor did not read a BIN24 connection at `now_ms` because the store's queue was
    /// full (backpressure).
    pub fn note_input_held(&mut self, now_ms: u64) {
        self.input_held_at_ms = Some(now_ms);
    }

    pub fn on_accept(&mut self, id: ConnId, peer_ip: IpAddr) {
        self.conns.insert(id, Bin24Conn::new(peer_ip));
    }

    /// Decode and act on every whole frame in `input`; a bad frame closes the connection.
    pub fn on_data<O: Outbox, S: StoreSink>(
        &mut self,
        id: ConnId,
        input: &mut BytesMut,
        now_ms: u64,
        out: &mut O,
        store: &mut S,
    ) {
        loop {
            let Some(conn) = self.conns.get(id) else {
                input.clear();
                return;
            };
            if conn.claiming.is_some() || conn.locating >= LOCATES_PER_CONN_MAX {
                if input.len() > HELD_INPUT_BYTES_MAX {
                    debug!(
                        "{id}: over {HELD_INPUT_BYTES_MAX} bytes sent while its login or its messages waited for the cluster"
                    );
                    self.reject(id, out);
                    input.clear();
                }
                return;
            }
            let frame = match codec::decode(input) {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(err) => {
                    debug!("{id}: {err}");
                    self.reject(id, out);
                    input.clear();
                    return;
                }
            };
            out.count_frame_in(id);
            if !self.on_frame(id, frame, now_ms, out, store) {
                input.clear();
                return;
            }
        }
    }

    /// Returns false when the connection was closed for a protocol error.
    fn on_frame<O: Outbox, S: StoreSink>(
        &mut self,
        id: ConnId,
        frame: Frame,
        now_ms: u64,
        out: &mut O,
        store: &mut S,
    ) -> bool {
        let frame_type = frame.frame_type();
        if frame_type != codec::TYPE_MESSAGE && frame_type != codec::TYPE_ANSWER {
            debug!("{id}: frame type {frame_type} from a client");
            self.reject(id, out);
            return false;
        }
        let src = frame.src();
        let Some(conn) = self.conns.get(id) else {
            return false;
        };
        let first_frame = match conn.user {
            Some(user) if user == src => false,
            Some(user) => {
                debug!("{id}: SRC {src} on the connection of {user}");
                self.reject(id, out);
                return false;
            }
            None if src.is_empty() => {
                debug!("{id}: empty SRC");
                self.reject(id, out);
                return false;
            }
            None => match self.login(id, src, out, store) {
                Login::Refused => return false,
                Login::Done => true,
                Login::Pending => {
                    if let Some(conn) = self.conns.get_mut(id) {
                        conn.claiming = Some(frame);
                    }
                    return true;
                }
            },
        };
        self.after_login(id, frame, first_frame, now_ms, out, store);
        true
    }

    /// The cluster decided the login of `id` (its first frame waited): on a grant, the login
    /// and that frame are carried out as on a node alone; on a refusal it is closed, BIN24's
    /// only refusal. Then its held input is read.
    fn on_claim_decided<O: Outbox, S: StoreSink>(
        &mut self,
        id: ConnId,
        decision: Decision,
        now_ms: u64,
        out: &mut O,
        store: &mut S,
    ) {
        let Some(frame) = self.conns.get_mut(id).and_then(|conn| conn.claiming.take()) else {
            return;
        };
        match decision {
            Decision::Granted => {
                self.logged_in(id, frame.src(), out, store);
                self.after_login(id, frame, true, now_ms, out, store);
                out.resume_input(id);
            }
            Decision::Refused { .. } => {
                debug!("{id}: login as {} refused by the cluster", frame.src());
                self.custody.logins_refused += 1;
                self.reject(id, out);
            }
        }
    }

    /// A frame of a logged-in connection; after its first, the stored frames follow.
    fn after_login<O: Outbox, S: StoreSink>(
        &mut self,
        id: ConnId,
        frame: Frame,
        first_frame: bool,
        now_ms: u64,
        out: &mut O,
        store: &mut S,
    ) {
        let src = frame.src();
        let frame_type = frame.frame_type();
        match frame_type {
            codec::TYPE_MESSAGE => self.on_message(id, frame, now_ms, out, store),
            _ => self.on_answer(id, src, frame, now_ms, out, store),
        }
        if first_frame {
            // Rule 2: after the first frame is processed, the stored frames follow.
            if let Some(conn) = self.conns.get_mut(id) {
                conn.more_stored = true;
            }
            self.pump_backlog(id, out, store);
        }
    }

    /// `src` claims connection `id`. Refused (closed, as BIN24 has no refusal frame) when a
    /// users list does not allow it from this address, or when another address holds the
    /// name: a newer login replaces the holder only from the holder's own address.
    fn login<O: Outbox, S: StoreSink>(
        &mut self,
        id: ConnId,
        src: Name,
        out: &mut O,
        store: &mut S,
    ) -> Login {
        let Some(peer_ip) = self.conns.get(id).map(|conn| conn.peer_ip) else {
            return Login::Refused;
        };
        let listed = self
            .config
            .users
            .as_ref()
            .is_none_or(|users| users.allows(&src, peer_ip));
        let holder = self.users.get(&src).copied();
        let holder_ip = holder.and_then(|older| self.conns.get(older).map(|c| c.peer_ip));
        if !listed || holder_ip.is_some_and(|ip| ip != peer_ip) {
            debug!(
                "{id}: login as {src} from {peer_ip} refused ({})",
                if listed {
                    "held from another address"
                } else {
                    "not allowed by the users list"
                }
            );
            self.custody.logins_refused += 1;
            self.reject(id, out);
            return Login::Refused;
        }
        // Switchboard rule 1: a name held in CCM or MATOU is refused, BIN24's only way (it
        // has no refusal frame). A BIN24 holder is BIN24's own rule above. In a cluster the
        // other nodes are asked first: the answer comes to `on_hub`.
        let claim = out
            .hub()
            .map(|mut link| link.claim_name(NamedProtocol::Bin24, id, src.as_bytes()));
        match claim {
            Some(Claim::Pending) => return Login::Pending,
            Some(Claim::Refused(_) | Claim::Unconfirmed) => {
                debug!("{id}: login as {src} refused (the name is held in another protocol, or unconfirmed)");
                self.custody.logins_refused += 1;
                self.reject(id, out);
                return Login::Refused;
            }
            Some(Claim::Granted) | None => {}
        }
        self.logged_in(id, src, out, store);
        Login::Done
    }

    /// `src` is `id`'s now; an older BIN24 connection of `src` gives way.
    fn logged_in<O: Outbox, S: StoreSink>(
        &mut self,
        id: ConnId,
        src: Name,
        out: &mut O,
        store: &mut S,
    ) {
        if let Some(conn) = self.conns.get_mut(id) {
            conn.user = Some(src);
        }
        out.mark_identified(id);
        if let Some(older) = self.users.insert(src, id) {
            // The newer connection wins; the older one leaves as if it disconnected, and
            // what it had not answered goes to the store for the newcomer.
            self.disconnect(older, store);
            self.users.insert(src, id);
            out.close(older, CloseReason::Replaced, CloseMode::Now);
        }
    }

    fn on_message<O: Outbox, S: StoreSink>(
        &mut self,
        id: ConnId,
        frame: Frame,
        now_ms: u64,
        out: &mut O,
        store: &mut S,
    ) {
        let sender = frame.src();
        let recipient = frame.dst();
        let message_id = frame.message_id();
        // Switchboard rule 4: to an online CCM user, the hub writes it in CCM's form; once it
        // is written (the note comes back to CCM's service, then here) the sender hears "200".
        // A live delivery like any other: charged to the sender's budget first.
        let to_ccm = out.hub().is_some_and(|link| {
            matches!(
                link.hub.holder(recipient.as_bytes()),
                Some((NamedProtocol::Ccm, _))
            )
        });
        if to_ccm && !self.charge_live(id, &frame, now_ms, out) {
            if let Some(link) = out.hub() {
                link.hub
                    .count_refused(ProtocolKind::Bin24, ProtocolKind::Ccm);
            }
            return;
        }
        let crossing = out
            .hub()
            .map(|link| link.hub.bin24_direct(&frame, link.queue));
        if let Some(Bin24Direct::ToCcm {
            to, bytes, note, ..
        }) = crossing
        {
            self.send_to_ccm(to, bytes, note, out, store);
            return;
        }
        if self
            .config
            .users
            .as_ref()
            .is_some_and(|users| !users.knows(&recipient))
        {
            // No such user can ever log in: storing it would only fill the disk.
            self.answer(
                sender,
                recipient,
                message_id,
                codec::ANSWER_STORE_FULL,
                None,
                out,
            );
            return;
        }
        // In a cluster a name no user of this node holds may be a BIN24 user's on another
        // node: located first (one Redis look-up, answered in the order asked), and so is
        // every message to a DST that earlier messages are being located for, so that they
        // keep their order.
        let behind = self.in_location.contains_key(&recipient);
        let remote = behind
            || !self.users.contains_key(&recipient)
                && out.hub().is_some_and(|link| {
                    link.hub.spans_nodes() && link.hub.holder(recipient.as_bytes()).is_none()
                });
        if remote {
            // Where the last look-up found DST: sent there at once (no look-up). A stale
            // entry costs a round trip: that node sends it back and it is located.
            let cached = (!behind)
                .then(|| out.hub())
                .flatten()
                .and_then(|link| link.hub.bin24_route_by_cache(recipient.as_bytes()));
            if let Some((to_node, to_incarnation)) = cached {
                if self.charge_live(id, &frame, now_ms, out) {
                    self.send_crossing(
                        frame,
                        (to_node, to_incarnation),
                        Bin24Step::CachedMessage,
                        now_ms,
                        out,
                    );
                }
                return;
            }
            let asked = out.hub().is_some_and(|link| {
                link.hub.address_bin24(
                    id,
                    Bytes::copy_from_slice(recipient.as_bytes()),
                    frame.as_bytes().clone(),
                    now_ms,
                )
            });
            if asked {
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.locating += 1;
                }
                *self.in_location.entry(recipient).or_default() += 1;
                *self
                    .locating_frames
                    .entry((sender, message_id))
                    .or_default() += 1;
                return;
            }
            // Too many messages located at once: BIN24's rules for an offline recipient.
        }
        let Some(recipient_conn) = self.live_conn(recipient) else {
            self.store_for(recipient, sender, message_id, &frame, None, store);
            return;
        };
        // Only a live delivery is charged: a stored frame reaches its recipient paced by the
        // backlog window, and the store has its own per-user and store-wide limits.
        if !self.charge_live(id, &frame, now_ms, out) {
            return;
        }
        self.deliver_live(recipient_conn, frame, None, now_ms, out, store);
    }

    /// The DST of `from`'s message `frame` was located: a BIN24 user of the node `at` holds
    /// it (the frame is published for that node, charged here as a live delivery), or no
    /// other node's BIN24 user does (BIN24's rules here: online now, or stored).
    fn on_located<O: Outbox, S: StoreSink>(
        &mut self,
        from: ConnId,
        frame: Bytes,
        at: Option<(Bytes, u64)>,
        now_ms: u64,
        out: &mut O,
        store: &mut S,
    ) {
        if let Ok(answer) = Frame::from_bytes(frame.clone()) {
            if answer.frame_type() == codec::TYPE_ANSWER {
                // An answer to a stored frame, its sender located (see `on_answer`): nothing
                // of `from` was held for it.
                self.on_answer_located(answer, at, out);
                return;
            }
        }
        let sender_here = self.conns.get(from).is_some();
        // The frame was decoded from this connection's input: it is one.
        if let Ok(frame) = Frame::from_bytes(frame) {
            let recipient = frame.dst();
            if self.located_one(frame.src(), frame.message_id(), recipient) {
                if let Some(conn) = self.conns.get_mut(from) {
                    let held = conn.locating >= LOCATES_PER_CONN_MAX;
                    conn.locating = conn.locating.saturating_sub(1);
                    if held {
                        out.resume_input(from);
                    }
                }
            }
            match at {
                Some(at) => {
                    // A sender gone meanwhile is not charged: its message was accepted.
                    if !sender_here || self.charge_live(from, &frame, now_ms, out) {
                        self.send_crossing(frame, at, Bin24Step::Message, now_ms, out);
                    }
                }
                None => {
                    let online = self.live_conn(recipient);
                    match online {
                        Some(to) if !sender_here || self.charge_live(from, &frame, now_ms, out) => {
                            self.deliver_live(to, frame, None, now_ms, out, store)
                        }
                        Some(_) => {}
                        None => self.store_for(
                            recipient,
                            frame.src(),
                            frame.message_id(),
                            &frame,
                            None,
                            store,
                        ),
                    }
                }
            }
        }
    }

    /// A message of a local sender counted in `in_location` was located (a CCM or web
    /// sender's frame, made on this node, was not counted: false).
    fn located_one(&mut self, sender: Name, message_id: u32, recipient: Name) -> bool {
        let key = (sender, message_id);
        match self.locating_frames.get_mut(&key) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                self.locating_frames.remove(&key);
            }
            None => return false,
        }
        match self.in_location.get_mut(&recipient) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                self.in_location.remove(&recipient);
            }
            None => {}
        }
        true
    }

    /// Publish the message `frame` for the node `at` (`step`: located, or from the cache),
    /// kept here until the answer comes back: custody stays here, and a frame with no answer
    /// within the ack timeout and the lease is stored here. A messageID reused meanwhile (a
    /// client restarted its counter) leaves the older one to its node.
    fn send_crossing<O: Outbox>(
        &mut self,
        frame: Frame,
        (to_node, to_incarnation): (Bytes, u64),
        step: Bin24Step,
        now_ms: u64,
        out: &mut O,
    ) {
        let key = (frame.src(), frame.message_id());
        let deadline = now_ms
            .saturating_add(self.config.ack_timeout_ms)
            .saturating_add(self.config.crossing_grace_ms);
        let timer = self.crossing_deadlines.insert(deadline, key);
        let target = (to_node.clone(), to_incarnation);
        if let Some((_, older, _)) = self.crossing.insert(key, (frame.clone(), timer, target)) {
            self.crossing_deadlines.cancel(older);
        }
        if let Some(link) = out.hub() {
            link.queue.publish(HubEvent::Bin24(Box::new(Bin24Relay {
                to_node,
                to_incarnation,
                from_node: Bytes::new(),
                from_incarnation: 0,
                step,
                frame: frame.into_bytes(),
            })));
        }
    }

    /// A message sent from the location cache came back (its DST is not on the node the
    /// cache named) and was located again: published for the node `at` as located (that node
    /// stores it if its user left meanwhile: no second trip back), or, nowhere else, BIN24's
    /// rules here (online here by now, or stored here, "300"). A frame whose custody ended
    /// meanwhile (its timer stored it here) is nothing more.
    fn on_relocated<O: Outbox, S: StoreSink>(
        &mut self,
        frame: Bytes,
        at: Option<(Bytes, u64)>,
        now_ms: u64,
        out: &mut O,
        store: &mut S,
    ) {
        let Ok(frame) = Frame::from_bytes(frame) else {
            return;
        };
        let key = (frame.src(), frame.message_id());
        if !self.crossing.contains_key(&key) {
            return;
        }
        match at {
            Some(at) => self.send_crossing(frame, at, Bin24Step::Message, now_ms, out),
            None => {
                if let Some((_, timer, _)) = self.crossing.remove(&key) {
                    self.crossing_deadlines.cancel(timer);
                }
                match self.live_conn(frame.dst()) {
                    Some(to) => self.deliver_live(to, frame, None, now_ms, out, store),
                    None => self.store_for(
                        frame.dst(),
                        frame.src(),
                        frame.message_id(),
                        &frame,
                        None,
                        store,
                    ),
                }
            }
        }
    }

    /// The sender of a stored frame answered here was located: online on node `at`, the
    /// answer goes there (its node hands it to the sender, rule 5); online here by now, it
    /// gets it; nowhere, it is dropped (rule 5).
    fn on_answer_located<O: Outbox>(
        &mut self,
        answer: Frame,
        at: Option<(Bytes, u64)>,
        out: &mut O,
    ) {
        match at {
            Some((to_node, to_incarnation)) => {
                if let Some(link) = out.hub() {
                    link.queue.publish(HubEvent::Bin24(Box::new(Bin24Relay {
                        to_node,
                        to_incarnation,
                        from_node: Bytes::new(),
                        from_incarnation: 0,
                        step: Bin24Step::Answer,
                        frame: answer.into_bytes(),
                    })));
                }
            }
            None => {
                if let Some(&to) = self.users.get(&answer.dst()) {
                    out.send(to, answer.into_bytes());
                }
            }
        }
    }

    /// The connection of `user`, online here and able to take one more live message.
    fn live_conn(&self, user: Name) -> Option<ConnId> {
        self.users
            .get(&user)
            .copied()
            .filter(|&conn| self.takes_live(conn, user))
    }

    /// Whether a new message to `user`, online on `conn`, goes to its socket now. Not while
    /// `user` is at its unanswered cap (the frame is stored instead, so a recipient that
    /// does not answer cannot make the server hold unbounded frames), nor while it has a
    /// stored backlog not yet all queued to `conn`: the new message is stored behind it, so
    /// that each sender's messages reach the recipient in the order sent (stored frames go
    /// out oldest first, and a live one sent now would overtake them).
    fn takes_live(&self, conn: ConnId, user: Name) -> bool {
        let Some(state) = self.conns.get(conn) else {
            return false;
        };
        state.unacked.len() < self.config.unacked_per_recipient_max
            && !self.has_backlog(state, user)
    }

    /// Whether frames stored for `user` (held by `state`) have yet to be queued to it: some
    /// being stored, loaded and not yet queued, or known to be stored and not yet loaded.
    fn has_backlog(&self, state: &Bin24Conn, user: Name) -> bool {
        self.appending.get(&user).is_some_and(|&count| count > 0)
            || !state.backlog.is_empty()
            || state.backlog_known
                && (state.more_stored || state.loading || state.waiting_for_budget)
    }

    /// A frame from another node (`relay.from_node`) for a user of this one: a message is
    /// delivered live (its answer timer kept here, rule 6 included) or stored here, its
    /// sender's answers published back; an answer goes to its DST if online (rule 5).
    fn on_remote<O: Outbox, S: StoreSink>(
        &mut self,
        relay: Bin24Relay,
        now_ms: u64,
        out: &mut O,
        store: &mut S,
    ) {
        let Ok(frame) = Frame::from_bytes(relay.frame) else {
            debug!(
                "cluster: a BIN24 frame from node {:?} that does not decode, dropped",
                String::from_utf8_lossy(&relay.from_node)
            );
            return;
        };
        match (relay.step, frame.frame_type()) {
            (step @ (Bin24Step::Message | Bin24Step::CachedMessage), codec::TYPE_MESSAGE) => {
                let origin = Some((relay.from_node, relay.from_incarnation));
                let recipient = frame.dst();
                let live = self.live_conn(recipient);
                if live.is_none() && self.deliver_to_other_protocol(&frame, &origin, out, store) {
                    return;
                }
                if step == Bin24Step::CachedMessage && !self.users.contains_key(&recipient) {
                    // The sender's node's cache is stale: nobody here holds DST. Sent back,
                    // so that node locates it (the user may be on a third node now) and keeps
                    // custody; not stored here.
                    if let (Some((to_node, to_incarnation)), Some(link)) = (origin, out.hub()) {
                        link.queue.publish(HubEvent::Bin24(Box::new(Bin24Relay {
                            to_node,
                            to_incarnation,
                            from_node: Bytes::new(),
                            from_incarnation: 0,
                            step: Bin24Step::Bounced,
                            frame: frame.into_bytes(),
                        })));
                    }
                    return;
                }
                match live {
                    Some(to) => self.deliver_live(to, frame, origin, now_ms, out, store),
                    None => self.store_for(
                        recipient,
                        frame.src(),
                        frame.message_id(),
                        &frame,
                        origin,
                        store,
                    ),
                }
            }
            (Bin24Step::Answer, codec::TYPE_ANSWER) => {
                // Whatever it says, the other node has dealt with the frame: custody is its.
                if let Some((_, timer, _)) =
                    self.crossing.remove(&(frame.dst(), frame.message_id()))
                {
                    self.crossing_deadlines.cancel(timer);
                }
                if let Some(&to) = self.users.get(&frame.dst()) {
                    out.send(to, frame.into_bytes());
                } else {
                    // A web user's message to another node's user: its `sent` or `error`.
                    let body = frame.body();
                    let to_web = out.hub().and_then(|link| {
                        link.hub
                            .bin24_answer_to_web(frame.dst(), frame.message_id(), &body)
                    });
                    if let Some((to, bytes)) = to_web {
                        out.send(to, bytes);
                    }
                }
            }
            (Bin24Step::Bounced, codec::TYPE_MESSAGE) => {
                // Still in this node's custody (else its timer stored it here already, and
                // this copy is nothing more): located again, bypassing the cache.
                let key = (frame.src(), frame.message_id());
                if !self.crossing.contains_key(&key) {
                    return;
                }
                let recipient = Bytes::copy_from_slice(frame.dst().as_bytes());
                let asked = out.hub().is_some_and(|link| {
                    link.hub.bin24_bounced(
                        &relay.from_node,
                        recipient,
                        frame.as_bytes().clone(),
                        now_ms,
                    )
                });
                if !asked {
                    // Too many look-ups waiting: BIN24's rules here.
                    self.on_relocated(frame.into_bytes(), None, now_ms, out, store);
                }
            }
            (Bin24Step::Stored, _) => self.on_stored_elsewhere(frame.dst(), out, store),
            (step, frame_type) => debug!(
                "cluster: a BIN24 {step:?} of type {frame_type} from node {:?}, dropped",
                String::from_utf8_lossy(&relay.from_node)
            ),
        }
    }

    /// Another node's BIN24 user's message `frame` to a name a CCM or web user holds here
    /// (rule 4 across nodes): written in that user's form, and the "200" (once its TCP
    /// acknowledged the bytes) or the "300" (it closed first: stored, as on one node) goes
    /// back to `origin`. False when no CCM or web user here holds its DST.
    fn deliver_to_other_protocol<O: Outbox, S: StoreSink>(
        &mut self,
        frame: &Frame,
        origin: &Origin,
        out: &mut O,
        store: &mut S,
    ) -> bool {
        let crossing = out.hub().map(|link| {
            link.hub
                .bin24_direct_from(frame, origin.clone(), link.queue)
        });
        let Some(Bin24Direct::ToCcm {
            to, bytes, note, ..
        }) = crossing
        else {
            return false;
        };
        self.send_to_ccm(to, bytes, note, out, store);
        true
    }

    /// Send `frame` (type 0) to its recipient, online on `recipient_conn`, and wait for the
    /// answer within the ack timeout (rule 6), whoever sent it: a BIN24 user, or a CCM user
    /// through the switchboard.
    fn deliver_live<O: Outbox, S: StoreSink>(
        &mut self,
        recipient_conn: ConnId,
        frame: Frame,
        origin: Origin,
        now_ms: u64,
        out: &mut O,
        store: &mut S,
    ) {
        let sender = frame.src();
        let recipient = frame.dst();
        let message_id = frame.message_id();
        // A messageID still pending (a client restarted its counter) resolves the older
        // message first: it goes to its recipient's store, so nothing is lost.
        if let Some(older) = self.pending.remove(&(sender, message_id)) {
            self.ack_deadlines.cancel(older.timer);
            self.forget_unacked(older.recipient_conn, (sender, message_id));
            self.store_for(
                older.recipient,
                sender,
                message_id,
                &older.frame,
                older.origin,
                store,
            );
        }
        out.send(recipient_conn, frame.as_bytes().clone());
        let timer = self.ack_deadlines.insert(
            now_ms.saturating_add(self.config.ack_timeout_ms),
            (sender, message_id),
        );
        self.pending.insert(
            (sender, message_id),
            PendingAck {
                recipient,
                recipient_conn,
                frame,
                timer,
                origin,
            },
        );
        if let Some(state) = self.conns.get_mut(recipient_conn) {
            state.unacked.push((sender, message_id));
        }
    }

    /// Charges the live delivery of `frame` from connection `id` to its sender's budget; over
    /// it the sender is answered "429" and false is returned: the frame is neither delivered
    /// nor stored.
    fn charge_live<O: Outbox>(
        &mut self,
        id: ConnId,
        frame: &Frame,
        now_ms: u64,
        out: &mut O,
    ) -> bool {
        let (sender, recipient) = (frame.src(), frame.dst());
        if self.admit_sending(id, recipient, frame.as_bytes().len(), now_ms) {
            return true;
        }
        debug!("{id}: {sender} over its sending rate; message to {recipient} refused");
        out.count_rejected();
        let message_id = frame.message_id();
        self.answer(
            sender,
            recipient,
            message_id,
            codec::ANSWER_RATE_LIMITED,
            None,
            out,
        );
        false
    }

    /// Charges a live delivery of `frame_bytes` from connection `id` to `recipient` against
    /// the sender's budget.
    fn admit_sending(
        &mut self,
        id: ConnId,
        recipient: Name,
        frame_bytes: usize,
        now_ms: u64,
    ) -> bool {
        let total = frame_rate(self.config.sender_bytes_per_s_max);
        let pair = frame_rate(self.config.pair_bytes_per_s_max);
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        conn.sending
            .get_or_insert_with(|| SenderBudget::new(total, now_ms))
            .admit(Some(recipient), frame_bytes as u64, total, pair, now_ms)
    }

    /// Rule 5: forwarded verbatim (the original client's answers carry garbage after "200"),
    /// and the answered message's timer is cancelled. An answer to a stored frame this
    /// connection was sent makes it, and every stored frame sent before it, delivered; in a
    /// cluster its sender, not online here, is located and the answer goes to its node.
    fn on_answer<O: Outbox, S: StoreSink>(
        &mut self,
        id: ConnId,
        answerer: Name,
        frame: Frame,
        now_ms: u64,
        out: &mut O,
        store: &mut S,
    ) {
        let key = (frame.dst(), frame.message_id());
        let settles_live = self
            .pending
            .get(&key)
            .is_some_and(|pending| pending.recipient == answerer);
        let mut origin = None;
        if settles_live {
            if let Some(pending) = self.pending.remove(&key) {
                self.ack_deadlines.cancel(pending.timer);
                self.forget_unacked(pending.recipient_conn, key);
                origin = pending.origin;
                // Under its unanswered cap again: what was stored meanwhile may go out.
                self.pump_backlog(pending.recipient_conn, out, store);
            }
        }
        // A sender that restarted its messageIDs may have a live message and a stored one with
        // the same key: one answer settles one of them (the live one, whose timeout would
        // close the recipient); the client's answer to the other settles the other.
        let answered = (!settles_live)
            .then(|| self.conns.get(id))
            .flatten()
            .and_then(|conn| {
                conn.sent
                    .iter()
                    .take(ANSWER_SCAN_MAX)
                    .position(|sent| (sent.src, sent.message_id) == key)
            });
        if let Some(at) = answered {
            let count = self.confirm(id, at + 1, store);
            self.custody.delivered_answered += count;
            self.pump_backlog(id, out, store);
        }
        if let Some((to_node, to_incarnation)) = origin {
            // Its sender is on another node: the answer goes back there, verbatim.
            if let Some(link) = out.hub() {
                link.queue.publish(HubEvent::Bin24(Box::new(Bin24Relay {
                    to_node,
                    to_incarnation,
                    from_node: Bytes::new(),
                    from_incarnation: 0,
                    step: Bin24Step::Answer,
                    frame: frame.into_bytes(),
                })));
            }
        } else if let Some(&to) = self.users.get(&frame.dst()) {
            out.send(to, frame.into_bytes());
        } else {
            // A web user's message (WEB): the hub turns the answer into its `sent`.
            let body = frame.body();
            let to_web = out.hub().and_then(|link| {
                link.hub
                    .bin24_answer_to_web(frame.dst(), frame.message_id(), &body)
            });
            if let Some((to, bytes)) = to_web {
                out.send(to, bytes);
            } else if answered.is_some() {
                // An answer to a stored frame whose sender is not online here: in a cluster it
                // may be online on another node (rule 5), so it is located (one Redis look-up;
                // the answerer's input is not held: answers need no order). Only these: a
                // stray answer to nobody costs no look-up. Not located (too many waiting), or
                // nobody holds the name: dropped, as rule 5 drops an answer to an offline DST.
                if let Some(link) = out.hub().filter(|link| link.hub.spans_nodes()) {
                    let sender = Bytes::copy_from_slice(frame.dst().as_bytes());
                    link.hub
                        .address_bin24(id, sender, frame.into_bytes(), now_ms);
                }
            }
        }
    }

    /// Hand a BIN24 message to a CCM user (`bytes`, its CCM form); one never queued (the CCM
    /// user is closing) is kept as for an offline recipient.
    fn send_to_ccm<O: Outbox, S: StoreSink>(
        &mut self,
        to: ConnId,
        bytes: Bytes,
        note: WrittenNote,
        out: &mut O,
        store: &mut S,
    ) {
        if out.send_notify(to, bytes, note.0) {
            return;
        }
        let unwritten = out.hub().and_then(|link| link.hub.on_written(note, false));
        if let Some(Written::Unwritten {
            recipient,
            sender,
            message_id,
            frame,
            origin,
        }) = unwritten
        {
            self.store_for(recipient, sender, message_id, &frame, origin, store);
        }
    }

    /// Store a message (as type 2, a copy that does not pin the read buffer) for `recipient`;
    /// its sender hears "300" once it is durable.
    fn store_for<S: StoreSink>(
        &mut self,
        recipient: Name,
        sender: Name,
        message_id: u32,
        frame: &Frame,
        origin: Origin,
        store: &mut S,
    ) {
        self.store_notifying(recipient, sender, message_id, frame, origin, None, store);
    }

    /// [`Bin24Service::store_for`], telling the node `notify` once the frame is durable.
    #[allow(clippy::too_many_arguments)]
    fn store_notifying<S: StoreSink>(
        &mut self,
        recipient: Name,
        sender: Name,
        message_id: u32,
        frame: &Frame,
        origin: Origin,
        notify: Origin,
        store: &mut S,
    ) {
        let ticket = self.ticket(Ticket::Append {
            sender,
            recipient,
            message_id,
            origin,
            notify,
        });
        *self.appending.entry(recipient).or_default() += 1;
        store.submit(StoreRequest::Append {
            ticket,
            user: recipient.as_bytes().to_vec(),
            frame: frame.copy_with_type(codec::TYPE_OFFLINE),
        });
    }

    fn ticket(&mut self, ticket: Ticket) -> u64 {
        let number = self.next_ticket;
        self.next_ticket += 1;
        self.tickets.insert(number, ticket);
        number
    }

    fn forget_unacked(&mut self, conn: ConnId, key: (Name, u32)) {
        if let Some(state) = self.conns.get_mut(conn) {
            if let Some(at) = state.unacked.iter().position(|k| *k == key) {
                state.unacked.swap_remove(at);
            }
        }
    }

    /// The user of `conn` is no longer reachable there: forget its name (if it still points
    /// here), move every message it had not answered to its offline store, and let go of
    /// its backlog (what was not delivered is still stored).
    fn disconnect<S: StoreSink>(&mut self, conn: ConnId, store: &mut S) {
        let Some(state) = self.conns.get_mut(conn) else {
            return;
        };
        let unacked = std::mem::take(&mut state.unacked);
        let released = state.backlog_bytes + state.sent_unacked_bytes;
        state.backlog.clear();
        state.backlog_bytes = 0;
        state.sent_unacked_bytes = 0;
        state.more_stored = false;
        let kept = state.sent.len() as u64;
        state.sent.clear();
        state.sent_unconfirmed_bytes = 0;
        self.custody.kept_for_redelivery += kept;
        self.loaded_bytes = self.loaded_bytes.saturating_sub(released);
        if let Some(user) = state.user {
            if self.users.get(&user) == Some(&conn) {
                self.users.remove(&user);
            }
        }
        for key in unacked {
            if let Some(pending) = self.pending.remove(&key) {
                self.ack_deadlines.cancel(pending.timer);
                self.store_for(
                    pending.recipient,
                    key.0,
                    key.1,
                    &pending.frame,
                    pending.origin,
                    store,
                );
            }
        }
    }

    fn reject<O: Outbox>(&mut self, id: ConnId, out: &mut O) {
        out.count_rejected();
        out.close(id, CloseReason::ProtocolError, CloseMode::Now);
    }

    /// `id` is gone: its unanswered messages go to the store, its name is free. After a clean
    /// close (`reason` PeerClosed: the peer sent FIN, which Linux does only when the closing
    /// program had read everything that had arrived), the stored frames its TCP acknowledged
    /// are delivered; after anything else (a reset, our own close) they stay stored.
    pub fn on_close<O: Outbox, S: StoreSink>(
        &mut self,
        id: ConnId,
        reason: CloseReason,
        out: &mut O,
        store: &mut S,
    ) {
        if reason == CloseReason::PeerClosed {
            let acked = self.conns.get(id).map_or(0, |conn| {
                conn.sent
                    .iter()
                    .take_while(|sent| sent.acked_at_ms.is_some())
                    .count()
            });
            let count = self.confirm(id, acked, store);
            self.custody.delivered_clean_close += count;
        }
        self.disconnect(id, store);
        self.conns.remove(id);
        self.serve_load_waiters(out, store);
    }

    pub fn next_deadline_ms(&self) -> Option<u64> {
        let grace = self.grace.front().map(|&(due, _, _)| due);
        [
            self.ack_deadlines.next_deadline_ms(),
            self.crossing_deadlines.next_deadline_ms(),
            grace,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Rule 6: an unanswered message makes its recipient count as disconnected: it is closed
    /// and everything it had not answered moves to its store (senders hear "300" when durable).
    /// Acknowledged stored frames whose grace has passed are delivered.
    pub fn on_timers<O: Outbox, S: StoreSink>(&mut self, now_ms: u64, out: &mut O, store: &mut S) {
        while let Some(key) = self.ack_deadlines.poll_expired(now_ms) {
            let Some(pending) = self.pending.get_mut(&key) else {
                continue;
            };
            let recipient_conn = pending.recipient_conn;
            let window_start_ms = now_ms.saturating_sub(self.config.ack_timeout_ms);
            if self
                .input_held_at_ms
                .is_some_and(|at| at >= window_start_ms)
            {
                // The server itself held BIN24 input back (the store's queue was full) within
                // the answer window: the answer may be waiting unread in our own socket. Not
                // the recipient's fault, so it gets a whole new window.
                pending.timer = self
                    .ack_deadlines
                    .insert(now_ms.saturating_add(self.config.ack_timeout_ms), key);
                continue;
            }
            debug!(
                "{recipient_conn}: no answer to {}#{} in {} ms",
                key.0, key.1, self.config.ack_timeout_ms
            );
            self.disconnect(recipient_conn, store);
            out.close(recipient_conn, CloseReason::Timeout, CloseMode::Now);
        }
        while let Some(key) = self.crossing_deadlines.poll_expired(now_ms) {
            let Some((frame, _, target)) = self.crossing.remove(&key) else {
                continue;
            };
            // No answer from the recipient's node: it died, or Redis lost the frame or the
            // answer. Kept here (a duplicate if that node did deliver it: at-least-once, as
            // rule 6 allows), and the sender hears "300" once it is durable.
            warn!(
                "cluster: no answer from the node of {} for {}#{} within {} ms; stored here",
                frame.dst(),
                key.0,
                key.1,
                self.config.ack_timeout_ms + self.config.crossing_grace_ms
            );
            // Its recipient may still be online there (Redis lost the frame or its answer,
            // that node was frozen a while): told once the frame is durable.
            self.store_notifying(frame.dst(), key.0, key.1, &frame, None, Some(target), store);
        }
        while let Some(&(due, conn, note)) = self.grace.front() {
            if due > now_ms {
                break;
            }
            self.grace.pop_front();
            let count = self.conns.get(conn).map_or(0, |state| {
                state
                    .sent
                    .iter()
                    .take_while(|sent| sent.note <= note && sent.acked_at_ms.is_some())
                    .count()
            });
            if count > 0 {
                let count = self.confirm(conn, count, store);
                self.custody.delivered_grace += count;
                self.pump_backlog(conn, out, store);
            }
        }
        if now_ms >= self.next_stall_sweep_ms {
            // A quarter of the stall time apart: a stall is seen within a quarter more, and
            // the sweep (every connection) stays rare.
            self.next_stall_sweep_ms =
                now_ms.saturating_add((self.config.stalled_holder_ms / 4).max(1));
            self.close_stalled_holders(now_ms, out, store);
        }
    }

    /// Logins holding stored frames their TCP has not acknowledged for
    /// `stalled_holder_ms`, while another connection waits for the budget, are closed as slow
    /// consumers: what they held goes to the connections waiting. Their frames stay stored.
    fn close_stalled_holders<O: Outbox, S: StoreSink>(
        &mut self,
        now_ms: u64,
        out: &mut O,
        store: &mut S,
    ) {
        let stall_ms = self.config.stalled_holder_ms;
        let mut stalled = Vec::new();
        for (id, state) in self.conns.iter_mut() {
            if state.sent_unacked_bytes == 0 {
                state.stalled_since = None;
                continue;
            }
            match state.stalled_since {
                Some((acks, since_ms)) if acks == state.acks_seen => {
                    if now_ms.saturating_sub(since_ms) >= stall_ms {
                        stalled.push(id);
                    }
                }
                _ => state.stalled_since = Some((state.acks_seen, now_ms)),
            }
        }
        if stalled.is_empty() {
            return;
        }
        let conns = &self.conns;
        let someone_waits = self
            .load_waiters
            .iter()
            .any(|&id| conns.get(id).is_some_and(|state| state.waiting_for_budget));
        if !someone_waits {
            return;
        }
        for id in stalled {
            debug!(
                "{id}: none of its stored frames acknowledged by its TCP in {stall_ms} ms while \
                 others wait for the loaded-bytes budget: closed as a slow consumer"
            );
            self.disconnect(id, store);
            out.close(id, CloseReason::SlowConsumer, CloseMode::Now);
        }
        self.serve_load_waiters(out, store);
    }

    /// The first `count` frames sent to `conn` are delivered: they leave the store. Returns
    /// how many that was.
    fn confirm<S: StoreSink>(&mut self, conn: ConnId, count: usize, store: &mut S) -> u64 {
        let Some(state) = self.conns.get_mut(conn) else {
            return 0;
        };
        let Some(user) = state.user else {
            return 0;
        };
        let count = count.min(state.sent.len());
        if count == 0 {
            return 0;
        }
        let mut seqs = Vec::with_capacity(count);
        let mut released = 0;
        for sent in state.sent.drain(..count) {
            seqs.push(sent.seq);
            state.sent_unconfirmed_bytes = state
                .sent_unconfirmed_bytes
                .saturating_sub(sent.frame_bytes);
            if sent.acked_at_ms.is_none() {
                // Answered before its TCP acknowledgement was seen.
                state.sent_unacked_bytes =
                    state.sent_unacked_bytes.saturating_sub(sent.frame_bytes);
                released += sent.frame_bytes;
            }
        }
        self.loaded_bytes = self.loaded_bytes.saturating_sub(released);
        store.submit(StoreRequest::Remove {
            user: user.as_bytes().to_vec(),
            seqs,
        });
        count as u64
    }

    /// A store request completed.
    pub fn on_store_event<O: Outbox, S: StoreSink>(
        &mut self,
        event: StoreEvent,
        out: &mut O,
        store: &mut S,
    ) {
        match event {
            StoreEvent::Appended { ticket, .. } => {
                if let Some(Ticket::Append {
                    sender,
                    recipient,
                    message_id,
                    origin,
                    notify,
                }) = self.tickets.remove(&ticket)
                {
                    self.answer(
                        sender,
                        recipient,
                        message_id,
                        codec::ANSWER_STORED,
                        origin,
                        out,
                    );
                    self.append_settled(recipient, true, out, store);
                    self.notify_stored(recipient, message_id, sender, notify, out);
                }
            }
            StoreEvent::Full { ticket } => {
                if let Some(Ticket::Append {
                    sender,
                    recipient,
                    message_id,
                    origin,
                    ..
                }) = self.tickets.remove(&ticket)
                {
                    self.append_settled(recipient, false, out, store);
                    self.answer(
                        sender,
                        recipient,
                        message_id,
                        codec::ANSWER_STORE_FULL,
                        origin,
                        out,
                    );
                }
            }
            StoreEvent::Loaded {
                ticket,
                frames,
                more,
                ..
            } => {
                let Some(Ticket::Load {
                    conn,
                    user,
                    reserved_bytes,
                }) = self.tickets.remove(&ticket)
                else {
                    return;
                };
                self.on_page(conn, user, reserved_bytes, Ok((frames, more)), out, store);
            }
            StoreEvent::Failed { ticket, error } => {
                self.store_failures += 1;
                if self.store_failures.is_power_of_two() {
                    warn!(
                        "offline store failed ({} failure(s) so far): {error}",
                        self.store_failures
                    );
                }
                match ticket.and_then(|t| self.tickets.remove(&t)) {
                    Some(Ticket::Append {
                        sender,
                        recipient,
                        message_id,
                        origin,
                        ..
                    }) => {
                        self.append_settled(recipient, false, out, store);
                        // Not durable: the sender must not be told "300".
                        self.answer(
                            sender,
                            recipient,
                            message_id,
                            codec::ANSWER_STORE_FULL,
                            origin,
                            out,
                        );
                    }
                    Some(Ticket::Load {
                        conn,
                        user,
                        reserved_bytes,
                    }) => self.on_page(conn, user, reserved_bytes, Err(()), out, store),
                    None => {}
                }
            }
        }
    }

    /// A frame submitted for `recipient` is durable (`stored`), or was refused. A durable one
    /// for a recipient online here (stored because it was at its unanswered cap, or behind
    /// its backlog) is sent on the same connection with the rest of its backlog, oldest first,
    /// once it is under the cap: not only at its next login.
    fn append_settled<O: Outbox, S: StoreSink>(
        &mut self,
        recipient: Name,
        stored: bool,
        out: &mut O,
        store: &mut S,
    ) {
        if let Some(count) = self.appending.get_mut(&recipient) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.appending.remove(&recipient);
            }
        }
        let Some(conn) = self.users.get(&recipient).copied() else {
            return;
        };
        if stored {
            self.mark_stored(conn);
        }
        self.pump_backlog(conn, out, store);
    }

    /// Frames may be stored for the user of `conn` that it has not been sent: its next page
    /// is read (after the one loading now, if one is), and new messages to it are stored
    /// behind them until they are all queued (`has_backlog`), so that order holds.
    fn mark_stored(&mut self, conn: ConnId) {
        if let Some(state) = self.conns.get_mut(conn) {
            state.backlog_known = true;
            if state.loading {
                state.appended_while_loading = true;
            } else {
                state.more_stored = true;
            }
        }
    }

    /// A frame from `sender` (messageID `message_id`) for `recipient` is durable here while
    /// `recipient` is not online here: in a cluster, the node it may be online on (`notify`,
    /// where its crossing timed out, and the one the location cache names) is told
    /// ([`Bin24Step::Stored`]), so that the frame reaches it on its connection now, not at
    /// its next login. One small event per such node; nothing for a node alone.
    fn notify_stored<O: Outbox>(
        &mut self,
        recipient: Name,
        message_id: u32,
        sender: Name,
        notify: Origin,
        out: &mut O,
    ) {
        if self.users.contains_key(&recipient) {
            return;
        }
        let Some(link) = out.hub() else {
            return;
        };
        if !link.hub.spans_nodes() {
            return;
        }
        let cached = link.hub.bin24_cached_location(recipient.as_bytes());
        let mut targets = notify.into_iter().collect::<Vec<_>>();
        targets.extend(cached.filter(|cached| !targets.contains(cached)));
        if targets.is_empty() {
            return;
        }
        let header = codec::encode(codec::TYPE_OFFLINE, message_id, sender, recipient, &[]);
        let Some(header) = header else {
            return;
        };
        for (to_node, to_incarnation) in targets {
            link.queue.publish(HubEvent::Bin24(Box::new(Bin24Relay {
                to_node,
                to_incarnation,
                from_node: Bytes::new(),
                from_incarnation: 0,
                step: Bin24Step::Stored,
                frame: header.clone(),
            })));
        }
    }

    /// Another node stored a frame for `user` ([`Bin24Step::Stored`]): if `user` is online
    /// here, it is loaded with its backlog and sent on the same connection, as a frame stored
    /// here for it is.
    fn on_stored_elsewhere<O: Outbox, S: StoreSink>(
        &mut self,
        user: Name,
        out: &mut O,
        store: &mut S,
    ) {
        let Some(conn) = self.users.get(&user).copied() else {
            return;
        };
        self.mark_stored(conn);
        self.pump_backlog(conn, out, store);
    }

    /// This node's subscription is back after a lost link: other nodes' `Stored` notices of
    /// the outage may be lost, so every online user's store is read once more (one page
    /// request each, waiting for room in `loaded_bytes_max` like any other).
    pub fn recheck_stored<O: Outbox, S: StoreSink>(&mut self, out: &mut O, store: &mut S) {
        let online: Vec<ConnId> = self.users.values().copied().collect();
        for conn in online {
            self.mark_stored(conn);
            self.pump_backlog(conn, out, store);
        }
    }

    /// A page of `user`'s backlog arrived for `conn` (or its load failed).
    fn on_page<O: Outbox, S: StoreSink>(
        &mut self,
        conn: ConnId,
        user: Name,
        reserved_bytes: usize,
        page: Result<(Vec<(u64, Bytes)>, bool), ()>,
        out: &mut O,
        store: &mut S,
    ) {
        self.loading_users.remove(&user);
        self.loaded_bytes = self.loaded_bytes.saturating_sub(reserved_bytes);
        let holder = self.users.get(&user).copied();
        if holder == Some(conn) {
            if let Some(state) = self.conns.get_mut(conn) {
                state.loading = false;
                match page {
                    Ok((frames, more)) => {
                        let bytes: usize = frames.iter().map(|(_, frame)| frame.len()).sum();
                        if let Some(&(last_seq, _)) = frames.last() {
                            state.cursor_seq = last_seq;
                            state.backlog_known = true;
                        }
                        state.more_stored =
                            more || std::mem::take(&mut state.appended_while_loading);
                        state.backlog.extend(frames);
                        state.backlog_bytes += bytes;
                        self.loaded_bytes += bytes;
                    }
                    // The frames stay stored; they are tried again at the next login.
                    Err(()) => {
                        state.more_stored = false;
                        state.appended_while_loading = false;
                    }
                }
            }
            self.pump_backlog(conn, out, store);
        } else if let Some(holder) = holder {
            // The page was for a connection replaced meanwhile: the name's holder now may
            // load (one load per user at a time).
            self.pump_backlog(holder, out, store);
        }
        self.serve_load_waiters(out, store);
    }

    /// Queue stored frames to `conn` while its window and its unconfirmed budget allow, and
    /// ask for the next page when the loaded ones are all queued. Nothing while it is at its
    /// unanswered cap: an answer that brings it under calls this again.
    fn pump_backlog<O: Outbox, S: StoreSink>(&mut self, conn: ConnId, out: &mut O, store: &mut S) {
        let window_bytes = self.config.offline_window_bytes;
        let unconfirmed_max = self.config.unconfirmed_bytes_per_conn_max;
        let unacked_max = self.config.unacked_per_recipient_max;
        let Some(state) = self.conns.get_mut(conn) else {
            return;
        };
        let Some(user) = state.user else {
            return;
        };
        if state.unacked.len() >= unacked_max {
            return;
        }
        while state.sent_unacked_bytes < window_bytes
            && state.sent_unconfirmed_bytes < unconfirmed_max
        {
            let Some((seq, bytes)) = state.backlog.pop_front() else {
                break;
            };
            let frame_bytes = bytes.len();
            state.backlog_bytes = state.backlog_bytes.saturating_sub(frame_bytes);
            let (src, message_id) = stored_frame_key(&bytes);
            let note = state.next_note;
            state.next_note += 1;
            if !out.send_notify(conn, bytes, note) {
                // The connection is going away: the rest stays stored for next time.
                self.loaded_bytes = self
                    .loaded_bytes
                    .saturating_sub(frame_bytes + state.backlog_bytes);
                state.backlog.clear();
                state.backlog_bytes = 0;
                state.more_stored = false;
                return;
            }
            state.sent_unacked_bytes += frame_bytes;
            state.sent_unconfirmed_bytes += frame_bytes;
            state.sent.push_back(Sent {
                seq,
                src,
                message_id,
                frame_bytes,
                note,
                acked_at_ms: None,
            });
        }
        let wants_page = state.backlog.is_empty()
            && state.more_stored
            && !state.loading
            && !state.waiting_for_budget
            && state.sent_unacked_bytes < window_bytes
            && state.sent_unconfirmed_bytes < unconfirmed_max;
        if wants_page && !self.loading_users.contains(&user) {
            self.request_page(conn, user, store);
        }
    }

    /// Load `user`'s next page for `conn` if the global budget has room, else wait in line.
    fn request_page<S: StoreSink>(&mut self, conn: ConnId, user: Name, store: &mut S) {
        let page_bytes = self.config.offline_window_bytes.max(codec::FRAME_BYTES_MAX);
        let Some(state) = self.conns.get_mut(conn) else {
            return;
        };
        if self.loaded_bytes.saturating_add(page_bytes) > self.config.loaded_bytes_max
            && self.loaded_bytes > 0
        {
            state.waiting_for_budget = true;
            self.load_waiters.push_back(conn);
            return;
        }
        state.loading = true;
        let after_seq = state.cursor_seq;
        self.loaded_bytes += page_bytes;
        self.loading_users.insert(user);
        let ticket = self.ticket(Ticket::Load {
            conn,
            user,
            reserved_bytes: page_bytes,
        });
        store.submit(StoreRequest::Load {
            ticket,
            user: user.as_bytes().to_vec(),
            after_seq,
            bytes_max: page_bytes,
        });
    }

    /// Give freed budget to the connections waiting for it, in order.
    fn serve_load_waiters<O: Outbox, S: StoreSink>(&mut self, out: &mut O, store: &mut S) {
        let page_bytes = self.config.offline_window_bytes.max(codec::FRAME_BYTES_MAX);
        while !self.load_waiters.is_empty()
            && (self.loaded_bytes.saturating_add(page_bytes) <= self.config.loaded_bytes_max
                || self.loaded_bytes == 0)
        {
            let Some(conn) = self.load_waiters.pop_front() else {
                break;
            };
            if let Some(state) = self.conns.get_mut(conn) {
                state.waiting_for_budget = false;
                self.pump_backlog(conn, out, store);
            }
        }
    }

    /// A stored frame sent with `send_notify` to `conn` was acknowledged by the peer's TCP
    /// (`acked`), or never will be (the connection closed first: nothing to do, it is still
    /// stored). An acknowledged frame is delivered once the grace passes with the connection
    /// still up; the next part of the backlog goes out.
    pub fn on_notify<O: Outbox, S: StoreSink>(
        &mut self,
        conn: ConnId,
        note: u64,
        acked: bool,
        now_ms: u64,
        out: &mut O,
        store: &mut S,
    ) {
        if !acked {
            return;
        }
        let Some(state) = self.conns.get_mut(conn) else {
            return;
        };
        let Ok(at) = state.sent.binary_search_by_key(&note, |sent| sent.note) else {
            // Already delivered (answered before its acknowledgement was seen).
            return;
        };
        let Some(sent) = state.sent.get_mut(at) else {
            return;
        };
        if sent.acked_at_ms.is_some() {
            return;
        }
        sent.acked_at_ms = Some(now_ms);
        state.acks_seen += 1;
        let frame_bytes = sent.frame_bytes;
        state.sent_unacked_bytes = state.sent_unacked_bytes.saturating_sub(frame_bytes);
        self.loaded_bytes = self.loaded_bytes.saturating_sub(frame_bytes);
        let due = now_ms.saturating_add(self.config.delivery_grace_ms);
        match self.grace.back_mut() {
            // Acknowledgements come in bursts: one entry per connection and instant.
            Some(last) if last.0 == due && last.1 == conn => last.2 = last.2.max(note),
            _ => self.grace.push_back((due, conn, note)),
        }
        self.pump_backlog(conn, out, store);
        self.serve_load_waiters(out, store);
    }

    /// What the switchboard hands BIN24 (rule 4): a CCM user's message to deliver as BIN24's
    /// own, a "200" for a BIN24 sender whose message a CCM user was written, or a message a
    /// CCM user closed before receiving, which BIN24 stores as for an offline recipient.
    pub fn on_hub<O: Outbox, S: StoreSink>(
        &mut self,
        outcome: HubOutcome,
        now_ms: u64,
        out: &mut O,
        store: &mut S,
    ) {
        match outcome {
            HubOutcome::Bin24Forward { to, frame } => {
                let recipient = frame.dst();
                if self.live_conn(recipient) == Some(to) {
                    self.deliver_live(to, frame, None, now_ms, out, store);
                } else {
                    let (src, message_id) = (frame.src(), frame.message_id());
                    self.store_for(recipient, src, message_id, &frame, None, store);
                }
            }
            HubOutcome::Bin24Answer {
                sender: _,
                answer,
                origin: Some((to_node, to_incarnation)),
            } => {
                // Another node's BIN24 user's message, written to a CCM or web user here: its
                // "200" goes back to that node, which hands it to the sender.
                if let Some(link) = out.hub() {
                    link.queue.publish(HubEvent::Bin24(Box::new(Bin24Relay {
                        to_node,
                        to_incarnation,
                        from_node: Bytes::new(),
                        from_incarnation: 0,
                        step: Bin24Step::Answer,
                        frame: answer,
                    })));
                }
            }
            HubOutcome::Bin24Answer {
                sender,
                answer,
                origin: None,
            } => {
                if let Some(&to) = self.users.get(&sender) {
                    out.send(to, answer);
                }
            }
            HubOutcome::Bin24Store {
                recipient,
                sender,
                message_id,
                frame,
                origin,
            } => self.store_for(recipient, sender, message_id, &frame, origin, store),
            HubOutcome::Bin24Located { from, frame, at } => {
                self.on_located(from, frame, at, now_ms, out, store)
            }
            HubOutcome::Bin24Remote(relay) => self.on_remote(*relay, now_ms, out, store),
            HubOutcome::Bin24Relocated { frame, at } => {
                self.on_relocated(frame, at, now_ms, out, store)
            }
            HubOutcome::Bin24Resubscribed => self.recheck_stored(out, store),
            HubOutcome::NameClaim(decided) => {
                self.on_claim_decided(decided.conn, decided.decision, now_ms, out, store)
            }
            // MATOU's.
            HubOutcome::MatouLocated { .. }
            | HubOutcome::MatouRemote(_)
            | HubOutcome::CcmLocated { .. }
            | HubOutcome::WebLocated { .. } => {}
        }
    }

    /// Answer `sender` (wherever it is connected now) about its message to `recipient`, in the
    /// contract's format: SRC = the intended recipient, DST = the sender.
    fn answer<O: Outbox>(
        &mut self,
        sender: Name,
        recipient: Name,
        message_id: u32,
        text: &[u8],
        origin: Origin,
        out: &mut O,
    ) {
        let answer = || codec::encode_answer(message_id, recipient, sender, text);
        if let Some((to_node, to_incarnation)) = origin {
            if let Some(link) = out.hub() {
                link.queue.publish(HubEvent::Bin24(Box::new(Bin24Relay {
                    to_node,
                    to_incarnation,
                    from_node: Bytes::new(),
                    from_incarnation: 0,
                    step: Bin24Step::Answer,
                    frame: answer(),
                })));
            }
        } else if let Some(&to) = self.users.get(&sender) {
            out.send(to, answer());
        } else {
            // A web user's message (WEB): the hub turns the answer into its `sent`.
            let to_web = out
                .hub()
                .and_then(|link| link.hub.bin24_answer_to_web(sender, message_id, text));
            if let Some((to, bytes)) = to_web {
                out.send(to, bytes);
            }
        }
    }
}
