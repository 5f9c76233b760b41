//! The BIN24 server logic, sans-io: frames and `now_ms` in; sends, closes and store requests
//! out. The durable store is reached through [`StoreSink`] and answers through
//! [`Bin24Service::on_store_event`], so every rule is testable without sockets or disks.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use log::{debug, warn};

use super::codec::{self, Frame, Name};
use crate::chat::{ConnId, ConnMap};
use crate::protocol::{CloseMode, CloseReason, Outbox};
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
    /// Stored frames queued to a connection and not yet written, in bytes. A backlog (up to
    /// the store's 64 MiB per user) goes out a window at a time, so it never trips the output
    /// limits that protect the server from slow readers.
    pub offline_window_bytes: usize,
    pub timer_tick_ms: u64,
}

impl Default for Bin24Config {
    fn default() -> Self {
        Bin24Config {
            ack_timeout_ms: 3_000,
            unacked_per_recipient_max: 10_000,
            offline_window_bytes: 256 * 1024,
            timer_tick_ms: 10,
        }
    }
}

/// A message forwarded to an online recipient and not yet answered.
#[derive(Debug)]
struct PendingAck {
    recipient: Name,
    recipient_conn: ConnId,
    frame: Frame,
    timer: TimerKey,
}

/// Why a store request was made, to act on its completion.
#[derive(Debug)]
enum Ticket {
    /// A message stored for `recipient`: answer its sender "300" once durable.
    Append {
        sender: Name,
        recipient: Name,
        message_id: u32,
    },
    /// The stored frames of a user who just connected.
    Load { conn: ConnId },
}

#[derive(Debug, Default)]
struct Bin24Conn {
    /// Set by the first frame's SRC.
    user: Option<Name>,
    /// Pending-ack keys of messages forwarded to this connection.
    unacked: Vec<(Name, u32)>,
    /// Stored frames loaded for this connection and not yet queued to it, oldest first.
    backlog: VecDeque<(u64, Bytes)>,
    /// Bytes of stored frames queued to the socket and not yet written.
    backlog_in_flight_bytes: usize,
}

/// What a `send_notify` note stands for: the stored frame `seq` of `user`, queued to `conn`.
#[derive(Debug, Clone, Copy)]
struct DeliveryNote {
    user: Name,
    conn: ConnId,
    seq: u64,
    frame_bytes: usize,
}

pub struct Bin24Service {
    config: Bin24Config,
    conns: ConnMap<Bin24Conn>,
    /// The live connection holding each name.
    users: HashMap<Name, ConnId>,
    /// Keyed by (sender, messageID), as the answer names them: (its DST, its messageID).
    pending: HashMap<(Name, u32), PendingAck>,
    ack_deadlines: TimerWheel<(Name, u32)>,
    tickets: HashMap<u64, Ticket>,
    next_ticket: u64,
    /// Stored frames queued to a socket, by note.
    deliveries: HashMap<u64, DeliveryNote>,
    next_note: u64,
}

/// Slots of the ack wheel: 10 ms ticks, so one revolution covers about 5 s, more than the
/// default 3 s ack timeout: timers fire on their first pass.
const WHEEL_SLOT_COUNT: usize = 512;

impl Bin24Service {
    pub fn new(config: Bin24Config, now_ms: u64) -> Self {
        let ack_deadlines = TimerWheel::new(config.timer_tick_ms, WHEEL_SLOT_COUNT, now_ms);
        Bin24Service {
            config,
            conns: ConnMap::new(),
            users: HashMap::new(),
            pending: HashMap::new(),
            ack_deadlines,
            tickets: HashMap::new(),
            next_ticket: 0,
            deliveries: HashMap::new(),
            next_note: 0,
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

    pub fn on_accept(&mut self, id: ConnId) {
        self.conns.insert(id, Bin24Conn::default());
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
            if self.conns.get(id).is_none() {
                input.clear();
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
            out.count_frame_in();
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
        let Some(conn) = self.conns.get_mut(id) else {
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
            None => {
                conn.user = Some(src);
                out.mark_identified(id);
                if let Some(older) = self.users.insert(src, id) {
                    // The newer connection wins; the older one leaves as if it disconnected,
                    // and what it had not answered goes to the store for the newcomer.
                    self.disconnect(older, store);
                    self.users.insert(src, id);
                    out.close(older, CloseReason::Replaced, CloseMode::Now);
                }
                true
            }
        };
        match frame_type {
            codec::TYPE_MESSAGE => self.on_message(frame, now_ms, out, store),
            _ => self.on_answer(src, frame, out),
        }
        if first_frame {
            // Rule 2: after the first frame is processed, the stored frames follow.
            let ticket = self.ticket(Ticket::Load { conn: id });
            store.submit(StoreRequest::Load {
                ticket,
                user: src.as_bytes().to_vec(),
            });
        }
        true
    }

    fn on_message<O: Outbox, S: StoreSink>(
        &mut self,
        frame: Frame,
        now_ms: u64,
        out: &mut O,
        store: &mut S,
    ) {
        let sender = frame.src();
        let recipient = frame.dst();
        let message_id = frame.message_id();
        let online = self.users.get(&recipient).copied().filter(|conn| {
            self.conns
                .get(*conn)
                .is_some_and(|state| state.unacked.len() < self.config.unacked_per_recipient_max)
        });
        let Some(recipient_conn) = online else {
            self.store_for(recipient, sender, message_id, &frame, store);
            return;
        };
        // A messageID still pending (a client restarted its counter) resolves the older
        // message first: it goes to its recipient's store, so nothing is lost.
        if let Some(older) = self.pending.remove(&(sender, message_id)) {
            self.ack_deadlines.cancel(older.timer);
            self.forget_unacked(older.recipient_conn, (sender, message_id));
            self.store_for(older.recipient, sender, message_id, &older.frame, store);
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
            },
        );
        if let Some(state) = self.conns.get_mut(recipient_conn) {
            state.unacked.push((sender, message_id));
        }
    }

    /// Rule 5: forwarded verbatim (the original client's answers carry garbage after "200"),
    /// and the answered message's timer is cancelled.
    fn on_answer<O: Outbox>(&mut self, answerer: Name, frame: Frame, out: &mut O) {
        let key = (frame.dst(), frame.message_id());
        if self
            .pending
            .get(&key)
            .is_some_and(|pending| pending.recipient == answerer)
        {
            if let Some(pending) = self.pending.remove(&key) {
                self.ack_deadlines.cancel(pending.timer);
                self.forget_unacked(pending.recipient_conn, key);
            }
        }
        if let Some(&to) = self.users.get(&frame.dst()) {
            out.send(to, frame.into_bytes());
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
        store: &mut S,
    ) {
        let ticket = self.ticket(Ticket::Append {
            sender,
            recipient,
            message_id,
        });
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
    /// here) and move every message it had not answered to its offline store.
    fn disconnect<S: StoreSink>(&mut self, conn: ConnId, store: &mut S) {
        let Some(state) = self.conns.get_mut(conn) else {
            return;
        };
        let unacked = std::mem::take(&mut state.unacked);
        if let Some(user) = state.user {
            if self.users.get(&user) == Some(&conn) {
                self.users.remove(&user);
            }
        }
        for key in unacked {
            if let Some(pending) = self.pending.remove(&key) {
                self.ack_deadlines.cancel(pending.timer);
                self.store_for(pending.recipient, key.0, key.1, &pending.frame, store);
            }
        }
    }

    fn reject<O: Outbox>(&mut self, id: ConnId, out: &mut O) {
        out.count_rejected();
        out.close(id, CloseReason::ProtocolError, CloseMode::Now);
    }

    /// `id` is gone: its unanswered messages go to the store, its name is free.
    pub fn on_close<S: StoreSink>(&mut self, id: ConnId, store: &mut S) {
        self.disconnect(id, store);
        self.conns.remove(id);
    }

    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.ack_deadlines.next_deadline_ms()
    }

    /// Rule 6: an unanswered message makes its recipient count as disconnected: it is closed
    /// and everything it had not answered moves to its store (senders hear "300" when durable).
    pub fn on_timers<O: Outbox, S: StoreSink>(&mut self, now_ms: u64, out: &mut O, store: &mut S) {
        while let Some(key) = self.ack_deadlines.poll_expired(now_ms) {
            let Some(pending) = self.pending.get(&key) else {
                continue;
            };
            let recipient_conn = pending.recipient_conn;
            debug!(
                "{recipient_conn}: no answer to {}#{} in {} ms",
                key.0, key.1, self.config.ack_timeout_ms
            );
            self.disconnect(recipient_conn, store);
            out.close(recipient_conn, CloseReason::Timeout, CloseMode::Now);
        }
    }

    /// A store request completed.
    pub fn on_store_event<O: Outbox>(&mut self, event: StoreEvent, out: &mut O) {
        match event {
            StoreEvent::Appended { ticket, .. } => {
                if let Some(Ticket::Append {
                    sender,
                    recipient,
                    message_id,
                }) = self.tickets.remove(&ticket)
                {
                    self.answer(sender, recipient, message_id, codec::ANSWER_STORED, out);
                }
            }
            StoreEvent::Full { ticket } => {
                if let Some(Ticket::Append {
                    sender,
                    recipient,
                    message_id,
                }) = self.tickets.remove(&ticket)
                {
                    self.answer(sender, recipient, message_id, codec::ANSWER_STORE_FULL, out);
                }
            }
            StoreEvent::Loaded {
                ticket,
                user,
                frames,
            } => {
                let Some(Ticket::Load { conn }) = self.tickets.remove(&ticket) else {
                    return;
                };
                let Some(name) = Name::new(&user) else {
                    return;
                };
                // Only if the connection that asked still holds the name; otherwise the frames
                // stay stored for whoever connects next.
                if self.users.get(&name) != Some(&conn) {
                    return;
                }
                if let Some(state) = self.conns.get_mut(conn) {
                    state.backlog.extend(frames);
                }
                self.pump_backlog(conn, name, out);
            }
            StoreEvent::Failed { ticket, error } => {
                warn!("offline store failed: {error}");
                if let Some(Ticket::Append {
                    sender,
                    recipient,
                    message_id,
                }) = ticket.and_then(|t| self.tickets.remove(&t))
                {
                    // Not durable: the sender must not be told "300".
                    self.answer(sender, recipient, message_id, codec::ANSWER_STORE_FULL, out);
                }
            }
        }
    }

    /// Queue stored frames to `conn` while less than a window of them is unwritten.
    fn pump_backlog<O: Outbox>(&mut self, conn: ConnId, user: Name, out: &mut O) {
        let window_bytes = self.config.offline_window_bytes;
        loop {
            let Some(state) = self.conns.get_mut(conn) else {
                return;
            };
            if state.backlog_in_flight_bytes >= window_bytes {
                return;
            }
            let Some((seq, bytes)) = state.backlog.pop_front() else {
                return;
            };
            let frame_bytes = bytes.len();
            let note = self.next_note;
            self.next_note += 1;
            if !out.send_notify(conn, bytes, note) {
                // The connection is going away: the rest stays stored for next time.
                state.backlog.clear();
                return;
            }
            state.backlog_in_flight_bytes += frame_bytes;
            self.deliveries.insert(
                note,
                DeliveryNote {
                    user,
                    conn,
                    seq,
                    frame_bytes,
                },
            );
        }
    }

    /// A frame sent with `send_notify` was written to the socket (`written`), or will never be
    /// (the connection closed first). A written stored frame leaves the store, and the next
    /// part of the backlog goes out.
    pub fn on_notify<O: Outbox, S: StoreSink>(
        &mut self,
        note: u64,
        written: bool,
        out: &mut O,
        store: &mut S,
    ) {
        let Some(delivery) = self.deliveries.remove(&note) else {
            return;
        };
        if !written {
            return;
        }
        store.submit(StoreRequest::Remove {
            user: delivery.user.as_bytes().to_vec(),
            seqs: vec![delivery.seq],
        });
        if let Some(state) = self.conns.get_mut(delivery.conn) {
            state.backlog_in_flight_bytes = state
                .backlog_in_flight_bytes
                .saturating_sub(delivery.frame_bytes);
            self.pump_backlog(delivery.conn, delivery.user, out);
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
        out: &mut O,
    ) {
        if let Some(&to) = self.users.get(&sender) {
            out.send(
                to,
                codec::encode_answer(message_id, recipient, sender, text),
            );
        }
    }
}
