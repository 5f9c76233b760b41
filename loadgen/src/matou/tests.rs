//! The MATOU loop against a small in-process MATOU server (one thread per connection, the
//! contract's rules 1 to 4), with knobs that make it misbehave in ways the run must catch.

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream as StdStream};
use std::sync::{Arc, Mutex};
use std::thread;

use bytes::{Bytes, BytesMut};
use switchboard::protocol::matou::codec::{self, ErrorCode, Packet};

use super::report::Report;
use super::*;

/// The scenario run to its end, as `loadgen matou` runs it.
fn run(cfg: &MatouConfig) -> Result<MatouOutcome, RunError> {
    crate::registry::run_alone::<Matou>(cfg)
}

#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Drop every n-th broadcast towards the first user that joined (0: none).
    drop_broadcast_every: u64,
    /// Forget every n-th PRIVATE_SRC_PORTS instead of passing the address to Dst (0: none).
    drop_src_ports_every: u64,
    /// Send nobody the newcomer's CONNECT_NOTIFY but the newcomer itself.
    notify_only_self: bool,
}

#[derive(Default)]
struct State {
    /// Accepted users, in the order they joined: name, a handle to write to them.
    users: Vec<(Bytes, StdStream)>,
    pending: HashSet<(Bytes, Bytes)>,
    accepted: HashSet<(Bytes, Bytes)>,
    broadcasts: u64,
    src_ports: u64,
}

impl State {
    fn send(&mut self, to: &[u8], packet: &[u8]) {
        if let Some((_, stream)) = self.users.iter_mut().find(|(name, _)| name == to) {
            let _ = stream.write_all(packet);
        }
    }

    fn has(&self, name: &[u8]) -> bool {
        self.users.iter().any(|(n, _)| n == name)
    }

    fn leave(&mut self, me: &[u8]) {
        self.users.retain(|(name, _)| name != me);
        self.pending.retain(|(a, b)| a != me && b != me);
        self.accepted.retain(|(a, b)| a != me && b != me);
        let notice = codec::sign_out_notify(me);
        for (_, stream) in &mut self.users {
            let _ = stream.write_all(&notice);
        }
    }
}

fn spawn_server(behaviour: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let state: Arc<Mutex<State>> = Arc::default();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let state = Arc::clone(&state);
            thread::spawn(move || serve(conn, &state, behaviour));
        }
    });
    addr
}

fn serve(mut conn: StdStream, state: &Mutex<State>, b: Behaviour) {
    let _ = conn.set_nodelay(true);
    let ip = match conn.peer_addr().map(|a| a.ip()) {
        Ok(std::net::IpAddr::V4(v4)) => v4.octets().to_vec(),
        Ok(std::net::IpAddr::V6(v6)) => v6.octets().to_vec(),
        Err(_) => return,
    };
    let limits = codec::Limits::default();
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut me: Option<Bytes> = None;
    loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let packet = match codec::decode_from_client(&mut buf, &limits) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(e) => {
                    let _ = conn.write_all(&codec::error(e.error_code(), b"framing"));
                    return;
                }
            };
            let mut s = state.lock().unwrap();
            match (packet, &me) {
                (Packet::ConnectRequest { username }, None) => {
                    let valid = !username.is_empty()
                        && username.len() <= 32
                        && username.iter().all(u8::is_ascii_alphanumeric);
                    if !valid || s.has(&username) {
                        let _ = conn.write_all(&codec::connect_response(false));
                        continue;
                    }
                    let _ = conn.write_all(&codec::connect_response(true));
                    s.users.push((username.clone(), conn.try_clone().unwrap()));
                    let notice = codec::connect_notify(&username);
                    for (name, stream) in &mut s.users {
                        if !b.notify_only_self || *name == username {
                            let _ = stream.write_all(&notice);
                        }
                    }
                    me = Some(username);
                }
                (Packet::PublicMessage { message }, Some(name)) => {
                    s.broadcasts += 1;
                    let drop_first = b.drop_broadcast_every > 0
                        && s.broadcasts.is_multiple_of(b.drop_broadcast_every);
                    let out = codec::public_broadcast(name, &message);
                    for (i, (_, stream)) in s.users.iter_mut().enumerate() {
                        if !(i == 0 && drop_first) {
                            let _ = stream.write_all(&out);
                        }
                    }
                }
                (Packet::PrivateRequest { username: dst }, Some(name)) => {
                    if dst == name || !s.has(&dst) {
                        let _ = conn.write_all(&codec::error(ErrorCode::UnknownUser, b"no"));
                        continue;
                    }
                    s.pending.insert((name.clone(), dst.clone()));
                    s.send(&dst, &codec::private_request_notify(name));
                }
                (Packet::PrivateAccept { username: src }, Some(name)) => {
                    if s.pending.remove(&(src.clone(), name.clone())) {
                        s.accepted.insert((src.clone(), name.clone()));
                        s.send(&src, &codec::private_dst_address(name, &ip));
                    }
                }
                (
                    Packet::PrivateSrcPorts {
                        username: dst,
                        message_port,
                        file_port,
                    },
                    Some(name),
                ) => {
                    if s.accepted.remove(&(name.clone(), dst.clone())) {
                        s.src_ports += 1;
                        if b.drop_src_ports_every > 0
                            && s.src_ports.is_multiple_of(b.drop_src_ports_every)
                        {
                            continue;
                        }
                        let out = codec::private_src_address(name, &ip, message_port, file_port);
                        s.send(&dst, &out);
                    }
                }
                (Packet::PublicSignOut, Some(name)) => {
                    let name = name.clone();
                    s.leave(&name);
                    let _ = conn.shutdown(Shutdown::Both);
                    return;
                }
                _ => {
                    let _ = conn.write_all(&codec::error(ErrorCode::NotSignedIn, b"no"));
                }
            }
        }
    }
    if let Some(name) = me {
        state.lock().unwrap().leave(&name);
    }
}

fn config(target: SocketAddr) -> MatouConfig {
    MatouConfig {
        target,
        users: 8,
        senders: 3,
        private_rate_per_s: 100,
        sign_out_wait_us: 2_000_000,
        message_bytes: 80,
        run_id: 0x1234_5678,
        pace: Pace {
            rate_per_s: 300,
            duration_us: 500_000,
            warmup_us: 100_000,
            drain_us: 1_000_000,
            connect_rate_per_s: 1_000,
            seed: 3,
            progress: false,
        },
    }
}

#[test]
fn a_clean_server_delivers_everything_and_brokers_every_link() {
    let cfg = config(spawn_server(Behaviour::default()));
    let run = run(&cfg).unwrap();
    assert_eq!(run.users_joined, 8);
    assert_eq!(run.ran.plan.senders, 3);
    assert_eq!(run.ran.plan.messages, 180, "(0.1 s + 0.5 s) at 300 msg/s");
    assert_eq!(run.ran.sends.sent, 180);
    assert_eq!(run.seq.delivered, 180 * 8, "every user gets every message");
    assert_eq!(run.expected_deliveries, 180 * 8);
    assert_eq!(run.seq.gap_losses + run.undelivered, 0);
    assert_eq!(run.seq.duplicates_or_reorders, 0);
    assert_eq!(run.ran.errors.total(), 0, "{:?}", run.ran.errors.first);
    assert_eq!(
        run.ran.sends.not_sent_queue_full + run.ran.sends.not_sent_at_end,
        0
    );
    assert!(!run.ran.drain_timed_out);
    assert_eq!(run.latency.delivery.len(), 150 * 8, "warmup not timed");
    // 60 links planned; each completes unless its pair was busy every draw (not with 8 users).
    assert_eq!(run.link_plan.as_ref().unwrap().messages, 60);
    assert_eq!(run.links.opened, 60);
    assert_eq!(run.links.complete, 60);
    assert_eq!(run.links.incomplete(), 0);
    assert_eq!(run.links_not_sent_busy, 0);
    assert_eq!(run.address_mismatches, 0);
    assert_eq!(run.latency.link.len(), 50);
    assert_eq!(run.latency.link_notify.len(), 50);
    // Notices: 8 joins heard 8 + 7 + ... + 1 times; sign-outs 7 + 6 + ... + 0.
    assert_eq!(run.join_notices.received, 36);
    assert_eq!(run.join_notices.check.expected, 36);
    assert_eq!(run.join_notices.check.pairs_missing, 0);
    assert_eq!((run.signed_out, run.closed_after_sign_out), (8, 8));
    assert_eq!(run.sign_out_notices.received, 28);
    assert_eq!(run.sign_out_notices.check.pairs_missing, 0);
    let report = Report::new(&cfg, 3, false, &run);
    assert!(report.outcome.passed, "{:?}", report.outcome);
    assert_eq!(report.outcome.exit_code, 0);
    let text = report.to_text();
    assert!(text.contains("link latency"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["scenario"], "matou");
    assert_eq!(json["links"]["complete"], 60);
}

#[test]
fn lost_broadcasts_and_links_are_caught() {
    let mut cfg = config(spawn_server(Behaviour {
        drop_broadcast_every: 10,
        drop_src_ports_every: 7,
        notify_only_self: false,
    }));
    cfg.pace.drain_us = 300_000;
    let run = run(&cfg).unwrap();
    assert_eq!(run.users_joined, 8);
    let lost = run.seq.gap_losses + run.undelivered;
    assert_eq!(lost, 18, "one user missed every 10th of 180 messages");
    assert_eq!(run.seq.delivered + lost, run.ran.sends.sent * 8);
    assert!(run.ran.drain_timed_out);
    assert_eq!(run.links.stuck_ports_sent, 60 / 7, "{:?}", run.links);
    assert_eq!(run.links.complete, 60 - 60 / 7);
    let report = Report::new(&cfg, 3, false, &run);
    assert_eq!(report.outcome.exit_code, 1);
    assert!(
        report
            .outcome
            .failures
            .iter()
            .any(|f| f.contains("links incomplete")),
        "{:?}",
        report.outcome
    );
}

#[test]
fn missing_join_notices_fail_the_run() {
    let mut cfg = config(spawn_server(Behaviour {
        notify_only_self: true,
        ..Behaviour::default()
    }));
    cfg.private_rate_per_s = 0;
    let run = run(&cfg).unwrap();
    assert_eq!(run.join_notices.received, 8);
    assert_eq!(run.join_notices.check.own_missing, 0);
    assert_eq!(run.join_notices.check.pairs_missing, 28);
    assert!(run.link_plan.is_none());
    assert_eq!(run.links.opened, 0);
    let report = Report::new(&cfg, 3, false, &run);
    assert_eq!(report.outcome.exit_code, 1);
    assert!(report.outcome.failures[0].contains("join notice"));
}

#[test]
fn a_taken_name_is_refused_and_counted() {
    let target = spawn_server(Behaviour::default());
    let cfg = config(target);
    // Take user 2's name first.
    let mut squatter = StdStream::connect(target).unwrap();
    squatter
        .write_all(&wire::connect_request(&wire::user_name(cfg.run_id, 2)))
        .unwrap();
    let mut answer = [0u8; 5];
    squatter.read_exact(&mut answer).unwrap();
    assert_eq!(answer, [0, 0, 0, 2, 1]);
    let run = run(&cfg).unwrap();
    assert_eq!(run.users_joined, 7);
    assert_eq!(run.refusals, 1);
    assert_eq!(run.ran.errors.connect, 1);
    assert_eq!(run.seq.gap_losses + run.undelivered, 0);
    // The refused user is left out of the notice check; the others heard of each other.
    assert_eq!(run.join_notices.check.expected, 7 + 21);
    assert_eq!(run.join_notices.check.pairs_missing, 0);
    drop(squatter);
}

#[test]
fn no_server_is_unreachable() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = config(addr);
    cfg.users = 2;
    assert!(matches!(run(&cfg), Err(RunError::Unreachable(_))));
}
