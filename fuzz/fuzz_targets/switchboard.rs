//! The switchboard: `Services` (ROOM, BIN24, CCM, MATOU, OCM and WEB behind one hub, as the server
//! builds them) driven by a program of operations on a few connections of any protocol:
//! accepts, arbitrary bytes split arbitrarily (with or without the end of a read burst),
//! closes for any reason, the reactor's handshake deadline, time passing through every
//! service's timers, sends reported written or not in any order, the offline store's
//! completions, and OCM chat datagrams from a few addresses.
//!
//! The services hand out random tokens (CCM's User, OCM's room token) that no input could
//! guess: the target keeps the last token each connection was given, and `$T` in bytes sent to
//! a connection (or in a datagram, for a chosen connection) stands for it. BIN24 needs the
//! real offline store: one directory per process, emptied before each input, so that nothing
//! stored by one input is seen by the next; the store's completions are awaited in full before
//! they are handed over. An input runs the same way every time but for one thing: whether
//! BIN24 holds input back (`--store-requests-max` requests not yet answered) depends on how
//! far the store's thread has got.
//!
//! Invariants: no panic; output only to open connections; every name the hub holds is held by
//! an open connection of BIN24, CCM, MATOU or WEB; the lobby has no more members per protocol than
//! that protocol has open connections (OCM: than addresses that have spoken); nothing is left
//! awaiting a write once every send has been reported.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fuzz_support::Ops;
use libfuzzer_sys::fuzz_target;
use switchboard::config::Config;
use switchboard::protocol::ocm::{codec as ocm_codec, json as ocm_json};
use switchboard::protocol::registry::Services;
use switchboard::protocol::testing::{RecordingDatagrams, RecordingOutbox};
use switchboard::protocol::{Clock, CloseReason, ConnId, Context, ProtocolKind, UdpKind};

/// More than `fuzz_support::SLOTS`: a few protocols, each with a name clash or a room to share.
const SLOTS: usize = 8;

/// The marker replaced by a connection's token.
const TOKEN_MARKER: &[u8] = b"$T";

/// How long the store may take to answer every pending request before the run is called hung.
const STORE_WAIT: Duration = Duration::from_secs(5);

fn data_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // tmpfs when there is one: the store fsyncs every commit.
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("switchboard-fuzz-{}", std::process::id()))
    })
}

fn config() -> Config {
    Config {
        room_port: Some(0),
        bin24_port: Some(0),
        ccm_port: Some(0),
        matou_port: Some(0),
        ocm_tcp_port: Some(0),
        ocm_udp_port: Some(0),
        ocm_relay_port: None,
        web_port: Some(0),
        web_message_bytes_max: 256,
        web_text_bytes_max: 64,
        web_messages_per_s_max: 4,
        isolate: false,
        data_dir: data_dir().clone(),
        timer_tick_ms: 10,
        room_handshake_timeout_ms: 5_000,
        handshake_timeout_ms: 5_000,
        bin24_ack_timeout_ms: 3_000,
        bin24_unacked_per_recipient_max: 4,
        bin24_offline_window_bytes: 2_048,
        bin24_delivery_grace_ms: 500,
        bin24_unconfirmed_bytes_per_conn_max: 8_192,
        bin24_loaded_bytes_max: 6_000,
        bin24_sender_bytes_per_s_max: 8_192,
        bin24_pair_bytes_per_s_max: 4_096,
        offline_frames_per_user_max: 8,
        offline_bytes_per_user_max: 4_096,
        store_frames_max: 32,
        store_bytes_max: 16_384,
        store_requests_max: 8,
        ccm_keepalive_idle_ms: 5_000,
        ccm_keepalive_answer_ms: 2_000,
        ccm_name_bytes_max: 16,
        ccm_sender_bytes_per_s_max: 8_192,
        ccm_pair_bytes_per_s_max: 4_096,
        matou_name_bytes_max: 16,
        matou_message_bytes_max: 64,
        matou_string_bytes_max: 128,
        matou_pending_requests_per_user_max: 2,
        matou_private_requests_per_s_max: 4,
        matou_private_requests_per_pair_per_s_max: 2,
        ocm_tcrp_payload_bytes_max: 1_024,
        ocm_tcrp_request_timeout_ms: 10_000,
        ocm_room_name_bytes_max: 32,
        ocm_user_name_bytes_max: 16,
        ocm_idle_timeout_ms: 20_000,
        ocm_send_failures_max: 2,
        ocm_rooms_max: 3,
        ocm_rooms_per_ip_max: 2,
        ocm_room_silent_timeout_ms: 5_000,
        ocm_room_members_max: 3,
        lobby_ocm_room: "lobby".to_string(),
        ..Config::for_tests()
    }
}

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + n % 4))
}

/// One of 16 addresses: 4 IPs (the connections' IPs) times 4 ports (40000..=40003).
fn address(selector: u8) -> SocketAddr {
    SocketAddr::new(ip(selector), 40_000 + u16::from(selector / 4 % 4))
}

fn clock(now_ms: u64) -> Clock {
    Clock {
        now_ms,
        unix_ms: 1_700_000_000_000 + now_ms,
    }
}

fn cx(now_ms: u64, peer: SocketAddr) -> Context {
    clock(now_ms).with_peer(peer)
}

/// The reactor's side: each slot's connection (its protocol and generation), its unconsumed
/// input, and the last token the service handed a connection in it.
#[derive(Default)]
struct Slots {
    generation: [u32; SLOTS],
    kind: [Option<ProtocolKind>; SLOTS],
    input: [BytesMut; SLOTS],
    token: [Option<Bytes>; SLOTS],
}

impl Slots {
    fn id(&self, slot: usize) -> ConnId {
        ConnId::new(slot as u32, self.generation[slot] + 1)
    }

    fn peer(slot: usize) -> SocketAddr {
        SocketAddr::new(ip(slot as u8), 50_000 + slot as u16)
    }

    fn slot_of(&self, id: ConnId) -> Option<usize> {
        (0..SLOTS).find(|&slot| self.kind[slot].is_some() && self.id(slot) == id)
    }

    fn open_of(&self, kind: ProtocolKind) -> usize {
        self.kind.iter().filter(|&&k| k == Some(kind)).count()
    }

    /// Close `slot` if open: its id and protocol.
    fn close(&mut self, slot: usize) -> Option<(ConnId, ProtocolKind)> {
        let kind = self.kind[slot].take()?;
        let id = self.id(slot);
        self.generation[slot] = self.generation[slot].wrapping_add(1);
        self.input[slot].clear();
        // The token stays: OCM's TCRP connection closes with the answer that carries it, and
        // a closed CCM connection's token is worth trying on the next.
        Some((id, kind))
    }
}

/// `bytes` with every `$T` replaced by `token` (left as is without one).
fn with_token(bytes: &[u8], token: Option<&Bytes>) -> Vec<u8> {
    let Some(token) = token else {
        return bytes.to_vec();
    };
    let mut replaced = Vec::with_capacity(bytes.len() + token.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.starts_with(TOKEN_MARKER) {
            replaced.extend_from_slice(token);
            rest = &rest[TOKEN_MARKER.len()..];
        } else {
            replaced.push(rest[0]);
            rest = &rest[1..];
        }
    }
    replaced
}

/// The token in what the service sent `kind`'s connection, if it carries one: CCM's
/// `User: <32 hex>` (its Identity answer), OCM's TCRP answer's `"token"`.
fn token_in(kind: ProtocolKind, bytes: &Bytes) -> Option<Bytes> {
    match kind {
        ProtocolKind::Ccm => {
            let at = bytes.windows(6).position(|w| w == b"User: ")? + 6;
            let token = bytes.get(at..at + 32)?;
            token
                .iter()
                .all(u8::is_ascii_hexdigit)
                .then(|| Bytes::copy_from_slice(token))
        }
        ProtocolKind::Ocm => {
            let mut buf = BytesMut::from(&bytes[..]);
            let answer = ocm_codec::decode_answer(&mut buf, usize::MAX).ok()??;
            let text = std::str::from_utf8(&answer.json).ok()?;
            let token = ocm_json::parse_answer(text).ok()?.token?;
            Some(Bytes::from(token))
        }
        _ => None,
    }
}

struct Run {
    services: Services,
    out: RecordingOutbox,
    udp: RecordingDatagrams,
    slots: Slots,
    /// Sends awaiting their report: (to, note).
    notes: Vec<(ConnId, u64)>,
    spoken: Vec<SocketAddr>,
    /// The IPs of OCM connections, and how many there were: each request seats one member.
    ocm_ips: Vec<IpAddr>,
    ocm_accepted: usize,
    now_ms: u64,
}

impl Run {
    fn kind_of(&self, id: ConnId) -> Option<ProtocolKind> {
        self.slots
            .slot_of(id)
            .and_then(|slot| self.slots.kind[slot])
    }

    /// The reactor frees the connection, reports its unreported sends as not written, then
    /// tells the services.
    fn close(&mut self, slot: usize, reason: CloseReason) {
        let id = self.slots.id(slot);
        let Some(kind) = self.slots.kind[slot] else {
            return;
        };
        let (unacked, kept): (Vec<_>, Vec<_>) = self.notes.drain(..).partition(|(to, _)| *to == id);
        self.notes = kept;
        for (to, note) in unacked {
            self.services
                .on_notify(kind, to, note, false, &clock(self.now_ms), &mut self.out);
        }
        self.slots.close(slot);
        self.services.on_close(
            kind,
            id,
            reason,
            &cx(self.now_ms, Slots::peer(slot)),
            &mut self.out,
        );
    }

    /// Check and consume the output; close what the services asked to close, until quiet.
    fn settle(&mut self) {
        loop {
            if self.services.has_ocm_deliveries() {
                self.services.flush_ocm_deliveries(
                    &clock(self.now_ms),
                    &mut self.out,
                    &mut self.udp,
                );
            }
            for (to, _) in &self.out.sent {
                assert!(
                    self.slots.slot_of(*to).is_some(),
                    "a send to {to:?}, not open"
                );
            }
            for (to, bytes) in std::mem::take(&mut self.out.sent) {
                if let Some(slot) = self.slots.slot_of(to) {
                    if let Some(kind) = self.slots.kind[slot] {
                        if let Some(token) = token_in(kind, &bytes) {
                            self.slots.token[slot] = Some(token);
                        }
                    }
                }
            }
            for (to, _, note) in std::mem::take(&mut self.out.notified) {
                assert!(
                    self.slots.slot_of(to).is_some(),
                    "a notified send to {to:?}, not open"
                );
                self.notes.push((to, note));
            }
            for (to, _) in self.udp.sent.drain(..) {
                // A member's address is the one its datagrams come from, or the one its
                // request named with the IP forced to its connection's: never another IP.
                let known = self.spoken.contains(&to) || self.ocm_ips.contains(&to.ip());
                assert!(
                    known,
                    "a datagram to {to}, neither heard from nor a client's IP"
                );
            }
            let closing: Vec<(ConnId, CloseReason)> = self
                .out
                .closed
                .drain(..)
                .map(|(id, reason, _)| (id, reason))
                .collect();
            let mut closed_any = false;
            for (id, reason) in closing {
                if let Some(slot) = self.slots.slot_of(id) {
                    self.close(slot, reason);
                    closed_any = true;
                }
            }
            if !closed_any && !self.services.has_ocm_deliveries() {
                break;
            }
        }
        self.check_hub();
    }

    fn check_hub(&self) {
        let hub = self.services.hub();
        let named_open = self.slots.open_of(ProtocolKind::Bin24)
            + self.slots.open_of(ProtocolKind::Ccm)
            + self.slots.open_of(ProtocolKind::Matou)
            + self.slots.open_of(ProtocolKind::Web);
        assert!(
            hub.names_held() <= named_open,
            "{} names held by {named_open} connections",
            hub.names_held()
        );
        for slot in 0..SLOTS {
            let id = self.slots.id(slot);
            match self.slots.kind[slot] {
                Some(_) => {
                    if let Some(name) = hub.name_of(id) {
                        let holder = hub.holder(name).map(|(_, conn)| conn);
                        assert_eq!(holder, Some(id), "the name's holder is not its connection");
                    }
                }
                None => {
                    // The slot's last connection, now closed, holds nothing.
                    let last = ConnId::new(slot as u32, self.slots.generation[slot]);
                    assert!(
                        hub.name_of(last).is_none(),
                        "a closed connection holds a name"
                    );
                }
            }
        }
        for kind in ProtocolKind::ALL {
            let members = hub.lobby_count(kind);
            let bound = if kind == ProtocolKind::Ocm {
                self.ocm_accepted
            } else {
                self.slots.open_of(kind)
            };
            assert!(
                members <= bound,
                "{members} {kind:?} lobby members, {bound} possible"
            );
        }
    }

    /// Wait for the store to answer every request, then hand the answers over.
    fn store_completions(&mut self) {
        let started = Instant::now();
        while self
            .services
            .store_metrics()
            .is_some_and(|metrics| metrics.pending_requests > 0)
        {
            assert!(started.elapsed() < STORE_WAIT, "the store never answered");
            std::thread::yield_now();
        }
        self.services.on_wake(&clock(self.now_ms), &mut self.out);
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = data_dir();
    let _ = std::fs::remove_dir_all(dir);
    // The store in memory: opening and syncing a redb file per input was most of the run.
    let services = match Services::with_store_in_memory(&config(), 0, Box::new(|| {})) {
        Ok(services) => services,
        Err(err) => panic!("the store opens in {}: {err}", dir.display()),
    };
    let mut run = Run {
        services,
        out: RecordingOutbox::default(),
        udp: RecordingDatagrams::default(),
        slots: Slots::default(),
        notes: Vec::new(),
        spoken: Vec::new(),
        ocm_ips: Vec::new(),
        ocm_accepted: 0,
        now_ms: 0,
    };
    let mut ops = Ops::new(data);
    while !ops.is_empty() {
        match ops.byte() % 10 {
            // Accept a connection of a protocol.
            0 => {
                let slot = usize::from(ops.byte()) % SLOTS;
                let kind = ProtocolKind::ALL[usize::from(ops.byte()) % ProtocolKind::ALL.len()];
                if run.slots.kind[slot].is_none() {
                    run.slots.kind[slot] = Some(kind);
                    if kind == ProtocolKind::Ocm {
                        run.ocm_ips.push(Slots::peer(slot).ip());
                        run.ocm_accepted += 1;
                    }
                    let id = run.slots.id(slot);
                    let cx = cx(run.now_ms, Slots::peer(slot));
                    run.services.on_accept(kind, id, &cx, &mut run.out);
                }
            }
            // Bytes to a connection, then (1) the end of the read burst or (2) not.
            op @ (1 | 2) => {
                let slot = usize::from(ops.byte()) % SLOTS;
                let bytes = ops.chunk();
                let Some(kind) = run.slots.kind[slot] else {
                    continue;
                };
                let bytes = with_token(bytes, run.slots.token[slot].as_ref());
                run.slots.input[slot].extend_from_slice(&bytes);
                let id = run.slots.id(slot);
                let cx = cx(run.now_ms, Slots::peer(slot));
                // As the reactor: no reading while the service holds input back.
                if run.services.hold_input(kind, &cx.clock()) {
                    continue;
                }
                let input = &mut run.slots.input[slot];
                run.services.on_data(kind, id, input, &cx, &mut run.out);
                let closing = run.out.closed.iter().any(|(closed, _, _)| *closed == id);
                if op == 1 && !input.is_empty() && !closing {
                    run.services
                        .on_burst_end(kind, id, input, &cx, &mut run.out);
                }
            }
            // A close, for any reason the reactor has.
            3 => {
                let reasons = CloseReason::ALL;
                let reason = reasons[usize::from(ops.byte()) % reasons.len()];
                let slot = usize::from(ops.byte()) % SLOTS;
                run.close(slot, reason);
            }
            // Time passes: every service's timers, the OCM socket's too.
            4 => {
                run.now_ms += u64::from(ops.u16());
                let clock = clock(run.now_ms);
                run.services.on_timers(&clock, &mut run.out);
                run.services.on_datagram_timers(
                    UdpKind::OcmChat,
                    &clock,
                    &mut run.out,
                    &mut run.udp,
                );
            }
            // The reactor's handshake deadline, where the protocol leaves it to the reactor.
            5 => {
                let slot = usize::from(ops.byte()) % SLOTS;
                let Some(kind) = run.slots.kind[slot] else {
                    continue;
                };
                if run.services.reactor_handshake_deadline(kind) {
                    let id = run.slots.id(slot);
                    let cx = cx(run.now_ms, Slots::peer(slot));
                    run.services
                        .on_handshake_timeout(kind, id, 5_000, &cx, &mut run.out);
                }
            }
            // A send reported written or not, in any order.
            6 => {
                let how = usize::from(ops.byte());
                if run.notes.is_empty() {
                    continue;
                }
                let (to, note) = run.notes.swap_remove(how % run.notes.len());
                let Some(kind) = run.kind_of(to) else {
                    continue;
                };
                let acked = how.is_multiple_of(2);
                let clock = clock(run.now_ms);
                run.services
                    .on_notify(kind, to, note, acked, &clock, &mut run.out);
            }
            // The offline store answers.
            7 => run.store_completions(),
            // An OCM chat datagram from one of 16 addresses, `$T` the token of a chosen slot.
            _ => {
                let from = address(ops.byte());
                let token_slot = usize::from(ops.byte()) % SLOTS;
                let datagram = with_token(ops.chunk(), run.slots.token[token_slot].as_ref());
                if !run.spoken.contains(&from) {
                    run.spoken.push(from);
                }
                let cx = cx(run.now_ms, from);
                run.services.on_datagram(
                    UdpKind::OcmChat,
                    &datagram,
                    &cx,
                    &mut run.out,
                    &mut run.udp,
                );
            }
        }
        run.settle();
    }
    // Every send reported written or not (the reactor reports each once): nothing awaits.
    let mut reports = 0;
    while let Some((to, note)) = run.notes.pop() {
        reports += 1;
        assert!(reports < 10_000, "reporting sends makes ever more of them");
        if let Some(kind) = run.kind_of(to) {
            run.services
                .on_notify(kind, to, note, false, &clock(run.now_ms), &mut run.out);
            run.settle();
        }
    }
    assert_eq!(
        run.services.hub().awaiting_write_count(),
        0,
        "a BIN24 frame to CCM awaits a write nobody will report"
    );
    run.store_completions();
    run.settle();
    if let Err(err) = run.services.shut_down() {
        panic!("the store shuts down: {err}");
    }
});
