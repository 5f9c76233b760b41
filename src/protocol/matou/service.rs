//! The MATOU server logic, sans-io: bytes in; sends and closes out.
//!
//! The server keeps the public room (accepted users, by name) and brokers private links: it
//! remembers which requests are pending and which were accepted, and hands each side the
//! other's address. The private traffic itself never comes through here.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use log::debug;

use super::codec::{self, DecodeError, ErrorCode, Limits, Packet};
use crate::chat::{ConnId, ConnMap, MemberList};
use crate::hub::{
    Claim, Decision, Endpoint, HubEvent, LobbyMessage, NamedProtocol, PrivateLink, PrivateStep,
};
use crate::limits::{RateLimit, SenderBudget};
use crate::protocol::{
    enter_lobby, leave_hub, Clock, CloseMode, CloseReason, Context, HubOutcome, Outbox,
    ProtocolKind, StreamService, HELD_INPUT_BYTES_MAX,
};

#[derive(Clone, Debug)]
pub struct MatouConfig {
    /// Longest user name, in bytes of its UTF-8 form (the seed's 32).
    pub name_bytes_max: usize,
    /// Longest public message, in bytes of its UTF-8 form (the seed's 512).
    pub message_bytes_max: usize,
    /// The framing limit for any string: over it the stream is dropped; between the name or
    /// message limit and this one the request is refused and the connection stays.
    pub string_bytes_max: usize,
    /// Private requests one user may have waiting for an answer at once.
    pub pending_requests_per_user_max: usize,
    /// Private requests one user may send per second, to anyone, and to one other user (a
    /// repeat while pending notifies Dst again). Each request makes its Dst receive a packet:
    /// over either rate the sender gets ERROR 12 and Dst nothing, so a flood is cut at its
    /// sender instead of closing its victim as a slow consumer. A second's worth may come at
    /// once. 0: no limit.
    pub private_requests_per_s_max: u64,
    pub private_requests_per_pair_per_s_max: u64,
}

impl Default for MatouConfig {
    fn default() -> Self {
        MatouConfig {
            name_bytes_max: 32,
            message_bytes_max: 512,
            string_bytes_max: 4096,
            pending_requests_per_user_max: 64,
            private_requests_per_s_max: 20,
            private_requests_per_pair_per_s_max: 2,
        }
    }
}

/// Where a private link between Src and Dst stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Src asked; Dst has not accepted.
    Pending,
    /// Dst accepted and Src has Dst's address; the server waits for Src's ports.
    Accepted,
}

/// A connection whose name was accepted.
#[derive(Debug)]
struct User {
    name: Bytes,
    /// Index in [`MatouService::members`].
    member_index: usize,
    /// The links this user asked for (as Src), by Dst.
    links_out: HashMap<ConnId, Link>,
    /// How many of `links_out` are [`Link::Pending`], the number the limit is on.
    pending_count: usize,
    /// The users who asked this one (as Dst) for a link, so that leaving can drop their links
    /// without a scan of every user.
    links_in: HashSet<ConnId>,
    /// This user's private requests: to anyone, and to each Dst.
    requests: SenderBudget<ConnId>,
    /// In a cluster: links this user asked for to users of other nodes, by Dst's name
    /// (counted in `pending_count` until accepted).
    remote_out: HashMap<Bytes, RemoteLink>,
    /// In a cluster: users of other nodes who asked this one for a link, by Src's name, with
    /// Src's node and incarnation (where the answer goes).
    remote_in: HashMap<Bytes, (Bytes, u64)>,
}

/// A link asked of a user on another node.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RemoteLink {
    /// The node holding Dst is being looked up.
    Locating,
    /// The request went to Dst's node; Dst has not accepted.
    Pending { node: Bytes, incarnation: u64 },
    /// Dst accepted; its node waits for Src's ports.
    Accepted { node: Bytes, incarnation: u64 },
}

/// Requests from other nodes' users one user keeps at once; past it they are dropped (the
/// requester's own node bounds its pending requests, but many requesters could add up).
const REMOTE_REQUESTS_IN_MAX: usize = 256;

fn per_second(rate_per_s: u64) -> RateLimit {
    RateLimit {
        rate_per_s,
        burst: rate_per_s,
    }
}

#[derive(Debug)]
struct MatouConn {
    /// The peer's IP as the PRIVATE_*_ADDRESS packets carry it: 4 or 16 bytes.
    address: Bytes,
    user: Option<User>,
    /// A close was asked for (sign-out or protocol error): further input is ignored.
    closing: bool,
    /// In a cluster: the name asked for while the other nodes decide; input is left unread
    /// until then, so what follows the request is handled after its answer, in order.
    claiming: Option<Bytes>,
}

pub struct MatouService {
    config: MatouConfig,
    limits: Limits,
    conns: ConnMap<MatouConn>,
    /// Accepted users by name.
    users: HashMap<Bytes, ConnId>,
    /// Accepted users, for fan-out without walking a hash map.
    members: MemberList,
    /// ERROR 12, encoded once: a flood of requests is answered with as many of these, so
    /// each costs a reference count, not an allocation.
    too_many_requests: Bytes,
}

impl MatouService {
    pub fn new(config: MatouConfig) -> Self {
        let limits = Limits {
            string_bytes_max: config.string_bytes_max,
            ..Limits::default()
        };
        MatouService {
            config,
            limits,
            conns: ConnMap::new(),
            users: HashMap::new(),
            members: MemberList::default(),
            too_many_requests: codec::error(
                ErrorCode::TooManyRequests,
                b"private requests too fast: wait before asking again",
            ),
        }
    }

    /// Accepted users.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// A connection from `peer_ip` was accepted. Its address is what a private link partner
    /// will be told to connect to: an IPv4-mapped IPv6 address (a dual-stack listener) is
    /// given as the IPv4 address it is, 4 bytes.
    pub fn on_accept(&mut self, id: ConnId, peer_ip: IpAddr) {
        let address = match peer_ip.to_canonical() {
            IpAddr::V4(v4) => Bytes::copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => Bytes::copy_from_slice(&v6.octets()),
        };
        self.conns.insert(
            id,
            MatouConn {
                address,
                user: None,
                closing: false,
                claiming: None,
            },
        );
    }

    /// Bytes arrived at `now_ms`: every complete packet in `input` is handled; a partial one is
    /// left there for the next call.
    pub fn on_data<O: Outbox>(
        &mut self,
        id: ConnId,
        input: &mut BytesMut,
        now_ms: u64,
        out: &mut O,
    ) {
        loop {
            match self.conns.get(id) {
                Some(conn) if conn.claiming.is_some() => {
                    if input.len() > HELD_INPUT_BYTES_MAX {
                        debug!("{id}: over {HELD_INPUT_BYTES_MAX} bytes sent before its sign-in answer");
                        out.count_rejected();
                        self.close(id, CloseReason::ProtocolError, out);
                        input.clear();
                    }
                    return;
                }
                Some(conn) if !conn.closing => {}
                _ => {
                    input.clear();
                    return;
                }
            }
            let packet = match codec::decode_from_client(input, &self.limits) {
                Ok(Some(packet)) => packet,
                Ok(None) => return,
                Err(err) => {
                    self.fail(id, err, out);
                    input.clear();
                    return;
                }
            };
            out.count_frame_in(id);
            self.on_packet(id, packet, now_ms, out);
        }
    }

    /// `id` has not signed in within the reactor's handshake deadline (`timeout_ms` after
    /// accept): ERROR 8 (not signed in), then close once that is written.
    pub fn on_handshake_timeout<O: Outbox>(&mut self, id: ConnId, timeout_ms: u64, out: &mut O) {
        debug!("{id}: not signed in within {timeout_ms} ms");
        let reason = format!("not signed in within {timeout_ms} ms of connecting");
        out.send(id, codec::error(ErrorCode::NotSignedIn, reason.as_bytes()));
        self.close(id, CloseReason::HandshakeTimeout, out);
    }

    /// `id` is gone, whoever closed it. If it was still signed in (EOF, reset), the others
    /// learn it left; after a sign-out or a protocol error they already did.
    pub fn on_close<O: Outbox>(&mut self, id: ConnId, out: &mut O) {
        self.sign_off(id, out);
        self.conns.remove(id);
    }

    fn on_packet<O: Outbox>(&mut self, id: ConnId, packet: Packet, now_ms: u64, out: &mut O) {
        let signed_in = self.user(id).is_some();
        match packet {
            Packet::ConnectRequest { username } if !signed_in => {
                self.connect(id, &username, now_ms, out)
            }
            Packet::ConnectRequest { .. } => self.refuse(
                id,
                ErrorCode::AlreadySignedIn,
                "this connection is already signed in",
                out,
            ),
            _ if !signed_in => self.refuse(
                id,
                ErrorCode::NotSignedIn,
                "send CONNECT_REQUEST and wait for acceptance first",
                out,
            ),
            Packet::PublicMessage { message } => self.public_message(id, message, out),
            Packet::PrivateRequest { username } => self.private_request(id, &username, now_ms, out),
            Packet::PrivateAccept { username } => self.private_accept(id, &username, out),
            Packet::PrivateSrcPorts {
                username,
                message_port,
                file_port,
            } => self.private_src_ports(id, &username, message_port, file_port, out),
            Packet::PublicSignOut => {
                self.sign_off(id, out);
                self.close(id, CloseReason::Done, out);
            }
            // The client decoder yields only the packets above.
            other => self.fail(id, DecodeError::UnknownType(other.packet_type()), out),
        }
    }

    /// A name is accepted when it is free, 1..=name_bytes_max bytes, and every byte is an
    /// ASCII letter or digit. Unicode's alphanumerics were allowed once, but they let one user
    /// pass for another: a Cyrillic "аlice" or a fullwidth "ａｌｉｃｅ" reads as "alice"
    /// (issue 15), and no rule short of ASCII keeps every look-alike out.
    fn connect<O: Outbox>(&mut self, id: ConnId, name: &[u8], now_ms: u64, out: &mut O) {
        let valid = !name.is_empty()
            && name.len() <= self.config.name_bytes_max
            && name.iter().all(u8::is_ascii_alphanumeric);
        if !valid || self.users.contains_key(name) {
            debug!("{id}: name refused");
            out.count_rejected();
            out.send(id, codec::connect_response(false));
            return;
        }
        // Switchboard rule 1: a name held in BIN24 or CCM is refused too, MATOU's own way.
        // In a cluster the other nodes are asked first: the answer comes to `on_hub`.
        let claim = out
            .hub()
            .map(|mut link| link.claim_name(NamedProtocol::Matou, id, name));
        if claim == Some(Claim::Pending) {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.claiming = Some(Bytes::copy_from_slice(name));
            }
            return;
        }
        if let Some(answer) = claim.and_then(|claim| claim.refusal(NamedProtocol::Matou)) {
            debug!("{id}: name refused (held in another protocol, or unconfirmed)");
            out.count_rejected();
            out.send(id, answer.unwrap_or_else(|| codec::connect_response(false)));
            return;
        }
        self.sign_in(id, name, now_ms, out);
    }

    /// `name` is `id`'s now: accepted, and announced to the others.
    fn sign_in<O: Outbox>(&mut self, id: ConnId, name: &[u8], now_ms: u64, out: &mut O) {
        // A copy, so that a name held for the whole session does not pin the read buffer it
        // arrived in.
        let name = Bytes::copy_from_slice(name);
        let member_index = self.members.push(id);
        self.users.insert(name.clone(), id);
        if let Some(conn) = self.conns.get_mut(id) {
            conn.user = Some(User {
                name: name.clone(),
                member_index,
                links_out: HashMap::new(),
                pending_count: 0,
                links_in: HashSet::new(),
                requests: SenderBudget::new(
                    per_second(self.config.private_requests_per_s_max),
                    now_ms,
                ),
                remote_out: HashMap::new(),
                remote_in: HashMap::new(),
            });
        }
        out.mark_identified(id);
        out.send(id, codec::connect_response(true));
        self.broadcast(codec::connect_notify(&name), out);
        enter_lobby(ProtocolKind::Matou, id, name, out);
    }

    fn public_message<O: Outbox>(&mut self, id: ConnId, message: Bytes, out: &mut O) {
        let problem = if message.len() > self.config.message_bytes_max {
            Some("the message is over the size limit")
        } else {
            match std::str::from_utf8(&message) {
                Err(_) => Some("the message is not UTF-8"),
                Ok(text) if text.chars().any(char::is_control) => {
                    Some("the message has a control character")
                }
                Ok(_) => None,
            }
        };
        if let Some(reason) = problem {
            self.refuse(id, ErrorCode::InvalidMessage, reason, out);
            return;
        }
        let Some(user) = self.user(id) else {
            return;
        };
        let frame = codec::public_broadcast(&user.name, &message);
        let name = user.name.clone();
        self.broadcast(frame, out);
        if let Some(mut link) = out.hub() {
            if link.hub.has_audience_besides(ProtocolKind::Matou) {
                // MATOU has no per-sender budget for public messages to charge (its input
                // rate and each recipient's output limits bound a sender, as in MATOU).
                let said = LobbyMessage::from_matou(&name, &message);
                link.say(said, Endpoint::Conn(id), |_| true);
            }
        }
    }

    /// Src (`id`) asks Dst for a private link.
    fn private_request<O: Outbox>(
        &mut self,
        id: ConnId,
        dst_name: &[u8],
        now_ms: u64,
        out: &mut O,
    ) {
        let Some(&dst) = self.users.get(dst_name) else {
            self.private_request_remote(id, dst_name, now_ms, out);
            return;
        };
        if dst == id {
            self.refuse(
                id,
                ErrorCode::RequestToSelf,
                "a private link to oneself",
                out,
            );
            return;
        }
        let pending_max = self.config.pending_requests_per_user_max;
        let Some(src) = self.charge_request(id, Some(dst), now_ms, out) else {
            return;
        };
        // Asking again while pending only repeats the notification; asking again after an
        // accept starts over, so Dst must accept again.
        if src.links_out.get(&dst) != Some(&Link::Pending) {
            if src.pending_count >= pending_max {
                self.refuse(
                    id,
                    ErrorCode::TooManyPendingRequests,
                    "too many private requests are waiting for an answer",
                    out,
                );
                return;
            }
            src.links_out.insert(dst, Link::Pending);
            src.pending_count += 1;
        }
        let notify = codec::private_request_notify(&src.name);
        if let Some(dst_user) = self.user_mut(dst) {
            dst_user.links_in.insert(id);
        }
        out.send(dst, notify);
    }

    /// Charges one private request by `id` (to the local user `dst`, or `None`: to a user of
    /// another node) to its sender and pair budgets. Over either, `id` is told and gets `None`.
    fn charge_request<O: Outbox>(
        &mut self,
        id: ConnId,
        dst: Option<ConnId>,
        now_ms: u64,
        out: &mut O,
    ) -> Option<&mut User> {
        let sender_limit = per_second(self.config.private_requests_per_s_max);
        let pair_limit = per_second(self.config.private_requests_per_pair_per_s_max);
        // Through the field, not `user_mut`: the refusal frame is read while `src` is held.
        let src = self.conns.get_mut(id)?.user.as_mut()?;
        if !src.requests.admit(dst, 1, sender_limit, pair_limit, now_ms) {
            out.count_rejected();
            out.send(id, self.too_many_requests.clone());
            return None;
        }
        Some(src)
    }

    /// In a cluster, Dst may be a MATOU user of another node: the request goes there once
    /// located (the answer comes to `on_hub`); otherwise no user has that name.
    fn private_request_remote<O: Outbox>(
        &mut self,
        id: ConnId,
        dst_name: &[u8],
        now_ms: u64,
        out: &mut O,
    ) {
        let may_be_remote = out
            .hub()
            .is_some_and(|link| link.hub.spans_nodes() && link.hub.holder(dst_name).is_none());
        if !may_be_remote {
            self.refuse(id, ErrorCode::UnknownUser, "no user has that name", out);
            return;
        }
        let pending_max = self.config.pending_requests_per_user_max;
        // The pair limit is kept per local Dst; a remote Dst is charged to the sender's total.
        let Some(src) = self.charge_request(id, None, now_ms, out) else {
            return;
        };
        let dst = Bytes::copy_from_slice(dst_name);
        let request = PrivateLink {
            to_node: Bytes::new(),
            to_incarnation: 0,
            from_node: Bytes::new(),
            from_incarnation: 0,
            step: PrivateStep::Request,
            src: src.name.clone(),
            dst: dst.clone(),
            address: Bytes::new(),
            message_port: 0,
            file_port: 0,
        };
        match src.remote_out.get(&dst).cloned() {
            // Asking again while pending only repeats the notification.
            Some(RemoteLink::Pending { node, incarnation }) => {
                let again = PrivateLink {
                    to_node: node,
                    to_incarnation: incarnation,
                    ..request
                };
                publish_private(again, out);
                return;
            }
            Some(RemoteLink::Locating) => return,
            Some(RemoteLink::Accepted { .. }) | None => {}
        }
        if src.pending_count >= pending_max {
            self.refuse(
                id,
                ErrorCode::TooManyPendingRequests,
                "too many private requests are waiting for an answer",
                out,
            );
            return;
        }
        let asked = out
            .hub()
            .is_some_and(|link| link.hub.address_private(id, request, now_ms));
        if !asked {
            self.refuse(id, ErrorCode::UnknownUser, "no user has that name", out);
            return;
        }
        if let Some(src) = self.user_mut(id) {
            src.remote_out.insert(dst, RemoteLink::Locating);
            src.pending_count += 1;
        }
    }

    /// A private request of `id` to `dst` was located: sent to the node named, or no MATOU
    /// user has that name.
    fn on_private_located<O: Outbox>(
        &mut self,
        id: ConnId,
        dst: Bytes,
        at: Option<(Bytes, u64)>,
        out: &mut O,
    ) {
        let Some(src) = self.user_mut(id) else {
            return;
        };
        if src.remote_out.get(&dst) != Some(&RemoteLink::Locating) {
            return;
        }
        match at {
            Some((node, incarnation)) => {
                src.remote_out
                    .insert(dst, RemoteLink::Pending { node, incarnation });
            }
            None => {
                src.remote_out.remove(&dst);
                src.pending_count = src.pending_count.saturating_sub(1);
                self.refuse(id, ErrorCode::UnknownUser, "no user has that name", out);
            }
        }
    }

    /// A step of a private link from another node's user, for a user of this node.
    fn on_private_remote<O: Outbox>(&mut self, link: PrivateLink, out: &mut O) {
        match link.step {
            PrivateStep::Request => {
                let Some(&dst) = self.users.get(&link.dst) else {
                    return;
                };
                let Some(dst_user) = self.user_mut(dst) else {
                    return;
                };
                if dst_user.remote_in.len() >= REMOTE_REQUESTS_IN_MAX
                    && !dst_user.remote_in.contains_key(&link.src)
                {
                    debug!("{dst}: too many private requests from other nodes; one dropped");
                    return;
                }
                dst_user
                    .remote_in
                    .insert(link.src.clone(), (link.from_node, link.from_incarnation));
                out.send(dst, codec::private_request_notify(&link.src));
            }
            PrivateStep::Accept => {
                let Some(&src) = self.users.get(&link.src) else {
                    return;
                };
                let Some(src_user) = self.user_mut(src) else {
                    return;
                };
                let pending = matches!(
                    src_user.remote_out.get(&link.dst),
                    Some(RemoteLink::Pending { node, incarnation })
                        if *node == link.from_node && *incarnation == link.from_incarnation
                );
                if !pending {
                    return;
                }
                src_user.remote_out.insert(
                    link.dst.clone(),
                    RemoteLink::Accepted {
                        node: link.from_node,
                        incarnation: link.from_incarnation,
                    },
                );
                src_user.pending_count = src_user.pending_count.saturating_sub(1);
                out.send(src, codec::private_dst_address(&link.dst, &link.address));
            }
            PrivateStep::SrcPorts => {
                let Some(&dst) = self.users.get(&link.dst) else {
                    return;
                };
                let Some(dst_user) = self.user_mut(dst) else {
                    return;
                };
                let asked = dst_user.remote_in.get(&link.src)
                    == Some(&(link.from_node.clone(), link.from_incarnation));
                if !asked {
                    return;
                }
                dst_user.remote_in.remove(&link.src);
                out.send(
                    dst,
                    codec::private_src_address(
                        &link.src,
                        &link.address,
                        link.message_port,
                        link.file_port,
                    ),
                );
            }
        }
    }

    /// Dst (`id`) accepts Src's request: Src gets Dst's address.
    fn private_accept<O: Outbox>(&mut self, id: ConnId, src_name: &[u8], out: &mut O) {
        if !self.users.contains_key(src_name) && self.accept_remote(id, src_name, out) {
            return;
        }
        let src = self.users.get(src_name).copied();
        let link = src.and_then(|src| self.user_mut(src)).and_then(|src_user| {
            let link = src_user.links_out.get_mut(&id)?;
            if *link != Link::Pending {
                return None;
            }
            *link = Link::Accepted;
            src_user.pending_count = src_user.pending_count.saturating_sub(1);
            Some(())
        });
        let (Some(src), Some(())) = (src, link) else {
            self.refuse(
                id,
                ErrorCode::NoPendingRequest,
                "that user has no pending private request to you",
                out,
            );
            return;
        };
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        let Some(dst_user) = &conn.user else {
            return;
        };
        out.send(
            src,
            codec::private_dst_address(&dst_user.name, &conn.address),
        );
    }

    /// Dst (`id`) accepts a request from a user of another node: the acceptance, with Dst's
    /// address, goes to Src's node. False when no such request is known.
    fn accept_remote<O: Outbox>(&mut self, id: ConnId, src_name: &[u8], out: &mut O) -> bool {
        let Some(conn) = self.conns.get(id) else {
            return false;
        };
        let Some(dst_user) = &conn.user else {
            return false;
        };
        let Some((node, incarnation)) = dst_user.remote_in.get(src_name).cloned() else {
            return false;
        };
        let accept = PrivateLink {
            to_node: node,
            to_incarnation: incarnation,
            from_node: Bytes::new(),
            from_incarnation: 0,
            step: PrivateStep::Accept,
            src: Bytes::copy_from_slice(src_name),
            dst: dst_user.name.clone(),
            address: conn.address.clone(),
            message_port: 0,
            file_port: 0,
        };
        publish_private(accept, out);
        true
    }

    /// Src (`id`) gives its ports for a link with a user of another node who accepted: they
    /// go to Dst's node. False when no such accepted link is known.
    fn src_ports_remote<O: Outbox>(
        &mut self,
        id: ConnId,
        dst_name: &[u8],
        message_port: i32,
        file_port: i32,
        out: &mut O,
    ) -> bool {
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        let address = conn.address.clone();
        let Some(src_user) = conn.user.as_mut() else {
            return false;
        };
        let Some(RemoteLink::Accepted { node, incarnation }) =
            src_user.remote_out.get(dst_name).cloned()
        else {
            return false;
        };
        src_user.remote_out.remove(dst_name);
        let ports = PrivateLink {
            to_node: node,
            to_incarnation: incarnation,
            from_node: Bytes::new(),
            from_incarnation: 0,
            step: PrivateStep::SrcPorts,
            src: src_user.name.clone(),
            dst: Bytes::copy_from_slice(dst_name),
            address,
            message_port,
            file_port,
        };
        publish_private(ports, out);
        true
    }

    /// Src (`id`) gives the ports it listens on: Dst gets Src's address and ports, and the
    /// server's part in this link is over.
    fn private_src_ports<O: Outbox>(
        &mut self,
        id: ConnId,
        dst_name: &[u8],
        message_port: i32,
        file_port: i32,
        out: &mut O,
    ) {
        let port_range = 1..=i32::from(u16::MAX);
        if !port_range.contains(&message_port) || !port_range.contains(&file_port) {
            self.refuse(id, ErrorCode::BadPort, "a port outside 1..=65535", out);
            return;
        }
        if !self.users.contains_key(dst_name)
            && self.src_ports_remote(id, dst_name, message_port, file_port, out)
        {
            return;
        }
        let dst = self.users.get(dst_name).copied();
        let accepted = dst.is_some_and(|dst| {
            self.user(id)
                .is_some_and(|src| src.links_out.get(&dst) == Some(&Link::Accepted))
        });
        let (Some(dst), true) = (dst, accepted) else {
            self.refuse(
                id,
                ErrorCode::LinkNotAccepted,
                "that user has not accepted a private link with you",
                out,
            );
            return;
        };
        if let Some(src) = self.user_mut(id) {
            src.links_out.remove(&dst);
        }
        if let Some(dst_user) = self.user_mut(dst) {
            dst_user.links_in.remove(&id);
        }
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        let Some(src_user) = &conn.user else {
            return;
        };
        out.send(
            dst,
            codec::private_src_address(&src_user.name, &conn.address, message_port, file_port),
        );
    }

    /// An ERROR answer for a refused request; the connection stays.
    fn refuse<O: Outbox>(&mut self, id: ConnId, code: ErrorCode, reason: &str, out: &mut O) {
        debug!("{id}: refused: {reason}");
        out.count_rejected();
        out.send(id, codec::error(code, reason.as_bytes()));
    }

    /// The stream can no longer be trusted: ERROR, close once it is written, and the others
    /// learn this user left.
    fn fail<O: Outbox>(&mut self, id: ConnId, err: DecodeError, out: &mut O) {
        debug!("{id}: {err}");
        out.count_rejected();
        out.send(
            id,
            codec::error(err.error_code(), err.to_string().as_bytes()),
        );
        self.sign_off(id, out);
        self.close(id, CloseReason::ProtocolError, out);
    }

    /// Close after flush, and ignore whatever else the connection sends meanwhile.
    fn close<O: Outbox>(&mut self, id: ConnId, reason: CloseReason, out: &mut O) {
        if let Some(conn) = self.conns.get_mut(id) {
            conn.closing = true;
        }
        out.close(id, reason, CloseMode::AfterFlush);
    }

    /// If `id` is signed in: free its name, drop every link it is part of, and tell the other
    /// users it left. Does nothing the second time, so a sign-out followed by the close it
    /// causes notifies once.
    fn sign_off<O: Outbox>(&mut self, id: ConnId, out: &mut O) {
        let Some(user) = self.conns.get_mut(id).and_then(|conn| conn.user.take()) else {
            return;
        };
        if self.users.get(&user.name) == Some(&id) {
            self.users.remove(&user.name);
        }
        if let Some(moved) = self.members.remove(user.member_index) {
            if let Some(moved_user) = self.user_mut(moved) {
                moved_user.member_index = user.member_index;
            }
        }
        for dst in user.links_out.keys() {
            if let Some(dst_user) = self.user_mut(*dst) {
                dst_user.links_in.remove(&id);
            }
        }
        for src in &user.links_in {
            if let Some(src_user) = self.user_mut(*src) {
                if src_user.links_out.remove(&id) == Some(Link::Pending) {
                    src_user.pending_count = src_user.pending_count.saturating_sub(1);
                }
            }
        }
        self.broadcast(codec::sign_out_notify(&user.name), out);
        leave_hub(id, out);
    }

    /// The cluster decided `id`'s claim (switchboard rule 1 across nodes): sign it in, or
    /// refuse the name as a name held elsewhere is refused; then its held input is read.
    pub fn on_claim_decided<O: Outbox>(
        &mut self,
        id: ConnId,
        decision: Decision,
        now_ms: u64,
        out: &mut O,
    ) {
        let Some(name) = self.conns.get_mut(id).and_then(|conn| conn.claiming.take()) else {
            return;
        };
        match decision {
            Decision::Granted => self.sign_in(id, &name, now_ms, out),
            Decision::Refused { answer } => {
                debug!("{id}: name refused by the cluster");
                out.count_rejected();
                out.send(id, answer.unwrap_or_else(|| codec::connect_response(false)));
            }
        }
        out.resume_input(id);
    }

    /// One encoded frame to every accepted user: each gets a reference-counted clone.
    fn broadcast<O: Outbox>(&self, frame: Bytes, out: &mut O) {
        for &to in self.members.as_slice() {
            out.send(to, frame.clone());
        }
    }

    fn user(&self, id: ConnId) -> Option<&User> {
        self.conns.get(id)?.user.as_ref()
    }

    fn user_mut(&mut self, id: ConnId) -> Option<&mut User> {
        self.conns.get_mut(id)?.user.as_mut()
    }
}

/// A step of a private link with a user of another node, for the cluster to carry there.
fn publish_private<O: Outbox>(step: PrivateLink, out: &mut O) {
    if let Some(link) = out.hub() {
        link.queue.publish(HubEvent::Private(Box::new(step)));
    }
}

/// MATOU has no timers; it answers ERROR 8 before a handshake-timeout close.
impl StreamService for MatouService {
    fn reactor_handshake_deadline(&self) -> bool {
        true
    }

    fn on_accept<O: Outbox>(&mut self, id: ConnId, cx: &Context, _out: &mut O) {
        self.on_accept(id, cx.peer.ip());
    }

    fn on_data<O: Outbox>(&mut self, id: ConnId, input: &mut BytesMut, cx: &Context, out: &mut O) {
        self.on_data(id, input, cx.now_ms, out);
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

    fn on_handshake_timeout<O: Outbox>(
        &mut self,
        id: ConnId,
        timeout_ms: u64,
        _cx: &Context,
        out: &mut O,
    ) {
        self.on_handshake_timeout(id, timeout_ms, out);
    }

    fn on_hub<O: Outbox>(&mut self, outcome: HubOutcome, clock: &Clock, out: &mut O) {
        match outcome {
            HubOutcome::NameClaim(decided) => {
                self.on_claim_decided(decided.conn, decided.decision, clock.now_ms, out)
            }
            HubOutcome::MatouLocated { from, dst, at } => {
                self.on_private_located(from, dst, at, out)
            }
            HubOutcome::MatouRemote(link) => self.on_private_remote(*link, out),
            _ => {}
        }
    }
}
