//! ROOM: the nickname chat room of the original Python TCP-Chat-Room (seed 002).
//!
//! A connection is first asked `alias?`; its first chunk is its alias. Members then have
//! every chunk relayed verbatim to every member, the sender included. Joins and leaves are
//! announced with the alias as a Python bytes repr, as the original prints it.

pub mod codec;

use bytes::{Bytes, BytesMut};

use crate::chat::{ConnMap, MemberList};
use crate::hub::{Endpoint, LobbyMessage};
use crate::protocol::{enter_lobby, Clock, Context, StreamService};
use crate::protocol::{CloseMode, CloseReason, ConnId, Outbox, ProtocolKind};
use crate::timer::{TimerKey, TimerWheel};

#[derive(Clone, Debug)]
pub struct RoomConfig {
    /// A connection that has not sent a non-empty alias this long after accept is closed.
    pub handshake_timeout_ms: u64,
    pub timer_tick_ms: u64,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            handshake_timeout_ms: 60_000,
            timer_tick_ms: 10,
        }
    }
}

#[derive(Debug)]
enum RoomConn {
    /// Asked for its alias; not a member yet, receives nothing else.
    AwaitingAlias { deadline: TimerKey },
    /// In the room. `index` is its place in the member list; `alias` is kept for the
    /// switchboard (the sender's name N of what it says), `alias_repr` for ROOM's notices.
    Member {
        alias: Bytes,
        alias_repr: Bytes,
        index: usize,
    },
}

/// The ROOM server logic, sans-io.
pub struct RoomService {
    config: RoomConfig,
    conns: ConnMap<RoomConn>,
    members: MemberList,
    handshake_deadlines: TimerWheel<ConnId>,
}

/// Slots of the handshake wheel: with 10 ms ticks one revolution is about 10 s, so the
/// default 60 s deadline goes round a few times, which the wheel skips cheaply.
const WHEEL_SLOT_COUNT: usize = 1024;

impl RoomService {
    pub fn new(config: RoomConfig, now_ms: u64) -> Self {
        let handshake_deadlines = TimerWheel::new(config.timer_tick_ms, WHEEL_SLOT_COUNT, now_ms);
        RoomService {
            config,
            conns: ConnMap::new(),
            members: MemberList::default(),
            handshake_deadlines,
        }
    }

    /// Members in the room (connections past the alias).
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// `now_ms` is the reactor's clock rounded down to the millisecond, so the real accept
    /// lies anywhere in `now_ms..now_ms + 1`: the deadline counts from the millisecond's end,
    /// as the reactor's own handshake deadline does (`limits::handshake_deadline_ms`), or a
    /// connection accepted late in its millisecond would be closed up to 1 ms early.
    pub fn on_accept<O: Outbox>(&mut self, id: ConnId, now_ms: u64, out: &mut O) {
        let deadline_ms = now_ms
            .saturating_add(1)
            .saturating_add(self.config.handshake_timeout_ms);
        let deadline = self.handshake_deadlines.insert(deadline_ms, id);
        self.conns.insert(id, RoomConn::AwaitingAlias { deadline });
        out.send(id, Bytes::from_static(codec::ALIAS_PROMPT));
    }

    /// Bytes arrived for `id`: the alias first, then chunks to relay. Consumes all of `input`.
    pub fn on_data<O: Outbox>(&mut self, id: ConnId, input: &mut BytesMut, out: &mut O) {
        loop {
            match self.conns.get(id) {
                None => {
                    // Not ours (already closed): nothing from it may reach the room.
                    input.clear();
                    return;
                }
                Some(RoomConn::AwaitingAlias { .. }) => {
                    let Some(alias) = codec::take_alias(input) else {
                        return;
                    };
                    if alias.is_empty() {
                        // The deadline keeps running: a client cannot stay forever by
                        // sending empty aliases.
                        out.send(id, Bytes::from_static(codec::ALIAS_PROMPT));
                    } else {
                        self.join(id, &alias, out);
                    }
                }
                Some(RoomConn::Member { alias, .. }) => {
                    if let Some(chunk) = codec::take_chunk(input) {
                        out.count_frame_in(id);
                        // The switchboard costs a ROOM-only server one check per chunk.
                        let said = match out.hub() {
                            Some(link) if link.hub.has_audience_besides(ProtocolKind::Room) => {
                                Some(LobbyMessage::from_room(alias, &chunk))
                            }
                            _ => None,
                        };
                        self.broadcast(chunk, out);
                        if let (Some(said), Some(mut link)) = (said, out.hub()) {
                            // ROOM has no per-sender budget to charge (its input rate and
                            // each recipient's output limits bound a sender, as in ROOM).
                            link.say(said, Endpoint::Conn(id), |_| true);
                        }
                    }
                    return;
                }
            }
        }
    }

    /// `id` is gone (EOF, error, timeout or any other close): a member's leave is announced to
    /// those who remain.
    pub fn on_close<O: Outbox>(&mut self, id: ConnId, out: &mut O) {
        match self.conns.remove(id) {
            Some(RoomConn::AwaitingAlias { deadline }) => {
                self.handshake_deadlines.cancel(deadline);
            }
            Some(RoomConn::Member {
                alias_repr, index, ..
            }) => {
                if let Some(moved) = self.members.remove(index) {
                    if let Some(RoomConn::Member {
                        index: moved_index, ..
                    }) = self.conns.get_mut(moved)
                    {
                        *moved_index = index;
                    }
                }
                self.broadcast(codec::leave_notice(&alias_repr), out);
            }
            None => {}
        }
    }

    /// The earliest time [`RoomService::on_timers`] has work, if any.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.handshake_deadlines.next_deadline_ms()
    }

    /// Close connections whose handshake deadline has passed.
    pub fn on_timers<O: Outbox>(&mut self, now_ms: u64, out: &mut O) {
        while let Some(id) = self.handshake_deadlines.poll_expired(now_ms) {
            if let Some(RoomConn::AwaitingAlias { .. }) = self.conns.get(id) {
                out.close(id, CloseReason::HandshakeTimeout, CloseMode::Now);
            }
        }
    }

    fn join<O: Outbox>(&mut self, id: ConnId, alias: &[u8], out: &mut O) {
        let alias_repr = Bytes::from(codec::bytes_repr(alias));
        // A copy, so that an alias kept for the whole session does not pin a read buffer.
        let alias = Bytes::copy_from_slice(alias);
        let index = self.members.push(id);
        if let Some(RoomConn::AwaitingAlias { deadline }) = self.conns.insert(
            id,
            RoomConn::Member {
                alias: alias.clone(),
                alias_repr: alias_repr.clone(),
                index,
            },
        ) {
            self.handshake_deadlines.cancel(deadline);
        }
        // Past its handshake: no longer among those evicted first at the connection cap.
        out.mark_identified(id);
        self.broadcast(codec::join_notice(&alias_repr), out);
        out.send(id, Bytes::from_static(codec::GREETING));
        enter_lobby(ProtocolKind::Room, id, alias, out);
    }

    /// One buffer, shared by every member: each send is a reference count, not a copy.
    fn broadcast<O: Outbox>(&self, bytes: Bytes, out: &mut O) {
        for &member in self.members.as_slice() {
            out.send(member, bytes.clone());
        }
    }
}

/// ROOM keeps its own handshake deadline (`--room-handshake-timeout-ms`, with `alias?` asked
/// again on an empty alias), so the reactor's does not apply.
impl StreamService for RoomService {
    fn on_accept<O: Outbox>(&mut self, id: ConnId, cx: &Context, out: &mut O) {
        self.on_accept(id, cx.now_ms, out);
    }

    fn on_data<O: Outbox>(&mut self, id: ConnId, input: &mut BytesMut, _cx: &Context, out: &mut O) {
        self.on_data(id, input, out);
    }

    fn on_close<O: Outbox>(
        &mut self,
        id: ConnId,
        _reason: CloseReason,
        _cx: &Context,
        out: &mut O,
    ) {
        self.on_close(id, out);
    }

    fn on_timers<O: Outbox>(&mut self, clock: &Clock, out: &mut O) {
        self.on_timers(clock.now_ms, out);
    }

    fn next_deadline_ms(&self) -> Option<u64> {
        self.next_deadline_ms()
    }
}

#[cfg(test)]
mod tests;
