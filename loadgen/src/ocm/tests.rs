//! The OCM loop against a small in-process OCM server (a thread per TCRP connection, one thread
//! on the UDP socket), with knobs that make it misbehave in the ways the loadgen must catch.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream as StdStream, UdpSocket as StdUdp};
use std::sync::{Arc, Mutex};
use std::thread;

use bytes::BytesMut;
use switchboard::protocol::ocm::codec::{self as c, MESSAGE_DONE, STATE_DONE, STATE_REQUEST};
use switchboard::protocol::ocm::json;

use super::*;

/// The scenario run to its end, as `loadgen ocm` runs it.
fn run(cfg: &OcmConfig) -> Result<OcmOutcome, RunError> {
    crate::registry::run_alone::<Ocm>(cfg)
}

#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Drop every n-th chat delivery (0: none).
    drop_every: u64,
    /// Also send every chat message back to its sender.
    echo: bool,
    /// Never send the host's closing text.
    mute_host_leave: bool,
    /// Answer every create with 400 (as if the room existed).
    refuse_creates: bool,
    /// Never answer a join (the connection stays open until the client closes it).
    mute_joins: bool,
}

struct Member {
    name: String,
    token: String,
    addr: SocketAddr,
}

#[derive(Default)]
struct State {
    /// Room name -> members, the host first.
    rooms: HashMap<String, Vec<Member>>,
    next_token: u64,
    deliveries: u64,
}

struct Server {
    tcp: SocketAddr,
    udp: SocketAddr,
}

fn spawn_server(b: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = StdUdp::bind("127.0.0.1:0").unwrap();
    let server = Server {
        tcp: listener.local_addr().unwrap(),
        udp: udp.local_addr().unwrap(),
    };
    let state: Arc<Mutex<State>> = Arc::default();
    let tcrp_state = Arc::clone(&state);
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let state = Arc::clone(&tcrp_state);
            thread::spawn(move || serve_tcrp(conn, &state, b));
        }
    });
    thread::spawn(move || serve_udp(&udp, &state, b));
    server
}

/// One request, one answer, close: the contract's rules 1 and 2.
fn serve_tcrp(mut conn: StdStream, state: &Mutex<State>, b: Behaviour) {
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    let request = loop {
        if let Ok(Some(request)) = c::decode_request(&mut buf, 1 << 16) {
            break request;
        }
        match conn.read(&mut chunk) {
            Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    };
    if b.mute_joins && request.operation == c::OPERATION_JOIN {
        while let Ok(1..) = conn.read(&mut chunk) {}
        return;
    }
    let room = String::from_utf8(request.room.to_vec()).unwrap();
    let payload = json::parse_request(std::str::from_utf8(&request.payload).unwrap()).unwrap();
    let room_chars = room.chars().count() as u8;
    let answer = {
        let mut state = state.lock().unwrap();
        state.next_token += 1;
        let token = format!("{:064x}", state.next_token);
        let exists = state.rooms.contains_key(&room);
        let member = Member {
            name: payload.user_name,
            token: token.clone(),
            addr: payload.user_address,
        };
        match request.operation {
            c::OPERATION_CREATE if !exists && !b.refuse_creates => {
                state.rooms.insert(room.clone(), vec![member]);
                Some(token)
            }
            c::OPERATION_JOIN if exists => {
                state.rooms.get_mut(&room).unwrap().push(member);
                Some(token)
            }
            _ => None,
        }
    };
    let bytes = match answer {
        Some(token) => c::encode_answer(
            room_chars,
            request.operation,
            STATE_DONE,
            &json::encode_answer(202, MESSAGE_DONE, Some(&token)),
        ),
        None => c::encode_answer(
            room_chars,
            request.operation,
            STATE_REQUEST,
            &json::encode_answer(400, &c::room_exists_message(&room), None),
        ),
    };
    let _ = conn.write_all(&bytes);
}

/// The contract's rules 3 and 4.
fn serve_udp(socket: &StdUdp, state: &Mutex<State>, b: Behaviour) {
    let mut buf = [0u8; 8192];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        let Ok(d) = c::parse_datagram(&buf[..n]) else {
            continue;
        };
        let room = String::from_utf8_lossy(d.room).into_owned();
        let mut state = state.lock().unwrap();
        let State {
            rooms, deliveries, ..
        } = &mut *state;
        let Some(members) = rooms.get_mut(&room) else {
            continue;
        };
        let Some(at) = members
            .iter()
            .position(|m| m.token.as_bytes() == d.token && m.addr.ip() == from.ip())
        else {
            continue;
        };
        if d.message == c::EXIT_MESSAGE {
            let leaver = members.remove(at);
            let text = if at == 0 {
                c::host_leave_text(&leaver.name, &room)
            } else {
                c::leave_text(&leaver.name, &room)
            };
            if !(at == 0 && b.mute_host_leave) {
                for m in members.iter() {
                    let _ = socket.send_to(text.as_bytes(), m.addr);
                }
            }
            if at == 0 {
                rooms.remove(&room);
            }
            continue;
        }
        let mut text = format!("{}: ", members[at].name).into_bytes();
        text.extend_from_slice(d.message);
        for (i, m) in members.iter().enumerate() {
            if i == at && !b.echo {
                continue;
            }
            *deliveries += 1;
            if b.drop_every > 0 && deliveries.is_multiple_of(b.drop_every) {
                continue;
            }
            let _ = socket.send_to(&text, m.addr);
        }
    }
}

fn config(server: &Server) -> OcmConfig {
    OcmConfig {
        tcp_target: server.tcp,
        udp_target: server.udp,
        rooms: 3,
        members: 4,
        room_rate_per_s: 100,
        exit_wait_us: 1_000_000,
        message_bytes: 64,
        recv_buffer_bytes: 1 << 20,
        loss_max_percent: 0.0,
        run_id: 0x0c0f_fee0,
        pace: Pace {
            rate_per_s: 400,
            duration_us: 500_000,
            warmup_us: 100_000,
            drain_us: 1_000_000,
            connect_rate_per_s: 1_000,
            seed: 0,
            progress: false,
        },
    }
}

#[test]
fn a_clean_server_delivers_everything_and_every_leave_text() {
    let server = spawn_server(Behaviour::default());
    let cfg = config(&server);
    let run = run(&cfg).unwrap();
    assert_eq!(run.ran.errors.total(), 0, "{:?}", run.ran.errors.first);
    assert_eq!((run.rooms_created, run.members_joined), (3, 12));
    assert_eq!(run.latency.create.len(), 3);
    assert_eq!(run.latency.join.len(), 9);
    assert_eq!(run.ran.plan.messages, 240, "(0.1 s + 0.5 s) at 400 msg/s");
    assert_eq!(run.ran.sends.sent, 240);
    assert_eq!(run.losses.expected, 240 * 3, "three others in each room");
    assert_eq!(run.counts.delivered, 240 * 3);
    assert_eq!(run.losses.lost, 0);
    assert_eq!(
        (run.counts.late, run.counts.duplicates, run.echoes),
        (0, 0, 0)
    );
    assert!(!run.ran.drain_timed_out);
    // Warmup messages are checked but not timed: 200 measured messages, 3 receivers each.
    assert_eq!(run.latency.delivery.len(), 200 * 3);
    assert_eq!(run.latency.receive_lag.len(), 240 * 3 + run.leaves_received);
    // Per room: guests 1 and 2 leave (3 + 2 texts), then the host (1 text to guest 3).
    assert_eq!(run.exits_planned, 3 * 3);
    assert_eq!(run.exits_sent, 9);
    assert_eq!(run.leaves_expected, 3 * 6);
    assert_eq!(run.leaves_received, 3 * 6);
    assert!(!run.exit_timed_out);
    assert_eq!(run.recv_buffers.sockets, 12);
    assert_eq!(run.recv_buffers.dropped, Some(0));

    let report = report::Report::new(&cfg, 1, false, 0.0, &run);
    assert_eq!(report.outcome.exit_code, 0, "{:?}", report.outcome);
    let text = report.to_text();
    assert!(
        text.contains("udp loss          0 of 720 deliveries"),
        "{text}"
    );
}

#[test]
fn a_lossy_server_is_caught_and_fails_unless_allowed() {
    let server = spawn_server(Behaviour {
        drop_every: 20,
        ..Behaviour::default()
    });
    let mut cfg = config(&server);
    cfg.pace.drain_us = 200_000;
    let run = run(&cfg).unwrap();
    assert_eq!(run.members_joined, 12);
    assert_eq!(run.losses.expected, run.ran.sends.sent * 3);
    // Every 20th delivery dropped: 5% of them.
    assert_eq!(
        run.losses.lost,
        run.losses.expected / 20,
        "{:?}",
        run.losses
    );
    assert_eq!(run.counts.delivered + run.losses.lost, run.losses.expected);
    assert!((run.losses.percent() - 5.0).abs() < 0.01);
    assert_eq!(run.ran.errors.total(), 0, "{:?}", run.ran.errors.first);
    let failed = report::Report::new(&cfg, 1, false, 0.0, &run);
    assert_eq!(failed.outcome.exit_code, 1);
    assert!(failed.figures.udp_loss.fails_run);
    assert!(failed.to_text().contains("FAILS the run"));
    let allowed = report::Report::new(&cfg, 1, false, 6.0, &run);
    assert_eq!(allowed.outcome.exit_code, 0, "{:?}", allowed.outcome);
    assert!(allowed.to_text().contains("does not fail the run"));
}

#[test]
fn an_echo_to_the_sender_is_an_error() {
    let server = spawn_server(Behaviour {
        echo: true,
        ..Behaviour::default()
    });
    let mut cfg = config(&server);
    cfg.rooms = 1;
    let run = run(&cfg).unwrap();
    assert_eq!(run.echoes, run.ran.sends.sent);
    assert_eq!(run.ran.errors.protocol, run.ran.sends.sent);
    assert_eq!(run.losses.lost, 0, "the others still got everything");
    let report = report::Report::new(&cfg, 1, false, 0.0, &run);
    assert_eq!(report.outcome.exit_code, 1);
}

#[test]
fn a_missing_host_leave_text_fails_the_run() {
    let server = spawn_server(Behaviour {
        mute_host_leave: true,
        ..Behaviour::default()
    });
    let mut cfg = config(&server);
    cfg.exit_wait_us = 200_000;
    let run = run(&cfg).unwrap();
    assert_eq!(run.leaves_expected - run.leaves_received, 3, "one per room");
    assert!(run.exit_timed_out);
    let report = report::Report::new(&cfg, 1, false, 0.0, &run);
    assert_eq!(report.outcome.exit_code, 1);
    assert!(report.outcome.failures[0].contains("3 leave texts missing"));
}

#[test]
fn refused_creates_and_no_server_are_unreachable() {
    let server = spawn_server(Behaviour {
        refuse_creates: true,
        ..Behaviour::default()
    });
    let mut cfg = config(&server);
    cfg.rooms = 2;
    match run(&cfg) {
        Err(RunError::Unreachable(why)) => assert!(why.contains("status 400"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Bind then drop a listener: its port is very likely free for the next few ms.
    cfg.tcp_target = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(matches!(run(&cfg), Err(RunError::Unreachable(_))));
}

/// Guests join once their room exists, outside the hosts' order: a join that is never answered
/// must still end the rooms phase at its deadline (10 s), not keep the run waiting.
#[test]
fn unanswered_joins_time_out_with_the_rooms_phase() {
    let server = spawn_server(Behaviour {
        mute_joins: true,
        ..Behaviour::default()
    });
    let mut cfg = config(&server);
    cfg.rooms = 2;
    cfg.members = 3;
    let run = run(&cfg).unwrap();
    assert_eq!((run.rooms_created, run.members_joined), (2, 2));
    assert_eq!(run.ran.errors.connect, 4, "{:?}", run.ran.errors.first);
    let (_, first) = &run.ran.errors.first[0];
    assert!(
        first.ends_with(": timed out before its TCRP answer"),
        "{first}"
    );
    assert!(run.ran.ramp_us >= 10_000_000, "{}", run.ran.ramp_us);
}
