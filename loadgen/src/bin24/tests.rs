//! The BIN24 loop against a small in-process BIN24 server (one thread per connection, an
//! in-memory store), with knobs that make it misbehave in the ways the ledger must catch.

use std::collections::{HashMap, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream as StdStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use bytes::BytesMut;
use switchboard::protocol::bin24::codec::{self, Name};

use super::*;

/// The scenario run to its end, as `loadgen bin24` runs it.
fn run(cfg: &Bin24Config) -> Result<Bin24Outcome, RunError> {
    crate::registry::run_alone::<Bin24>(cfg)
}

#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Answer "507" instead of storing.
    store_full: bool,
    /// Lose every n-th stored frame at delivery (0: none).
    drop_stored_every: u64,
    /// Forward every n-th live message twice (0: none).
    duplicate_live_every: u64,
    /// Store every n-th message to an online recipient instead of forwarding it, as the
    /// server does past its unacknowledged-messages cap (0: none).
    store_online_every: u64,
    /// On a user's first stored delivery, write this many frames, then close the connection
    /// with all of them still stored, as when it closes before their removal (0: never).
    close_mid_backlog: usize,
}

#[derive(Default)]
struct State {
    /// The live connection of each user: (connection number, a handle to write to it).
    online: HashMap<Name, (u64, StdStream)>,
    store: HashMap<Name, VecDeque<bytes::Bytes>>,
    live_forwarded: u64,
    stored_delivered: u64,
    closed_mid_backlog: std::collections::HashSet<Name>,
}

fn spawn_server(behaviour: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let state: Arc<Mutex<State>> = Arc::default();
    let next_conn = Arc::new(AtomicU64::new(0));
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let state = Arc::clone(&state);
            let id = next_conn.fetch_add(1, Ordering::Relaxed);
            thread::spawn(move || serve(conn, id, &state, behaviour));
        }
    });
    addr
}

/// One connection: the contract's rules 1 to 5 and 8, without the answer timeout.
fn serve(mut conn: StdStream, id: u64, state: &Mutex<State>, b: Behaviour) {
    let _ = conn.set_nodelay(true);
    let mut input = BytesMut::new();
    let mut chunk = [0u8; 4096];
    let mut user: Option<Name> = None;
    while let Ok(n @ 1..) = conn.read(&mut chunk) {
        input.extend_from_slice(&chunk[..n]);
        while let Ok(Some(frame)) = codec::decode(&mut input) {
            let mut s = state.lock().unwrap();
            let first = user.is_none();
            if first {
                user = Some(frame.src());
                s.online
                    .insert(frame.src(), (id, conn.try_clone().unwrap()));
            }
            let (src, dst) = (frame.src(), frame.dst());
            match frame.frame_type() {
                codec::TYPE_MESSAGE => {
                    let to_online = s.online.contains_key(&dst) && {
                        s.live_forwarded += 1;
                        b.store_online_every == 0
                            || frame.message_id() == 0
                            || !s.live_forwarded.is_multiple_of(b.store_online_every)
                    };
                    if to_online {
                        let twice = b.duplicate_live_every > 0
                            && frame.message_id() > 0
                            && s.live_forwarded.is_multiple_of(b.duplicate_live_every);
                        let to = &mut s.online.get_mut(&dst).unwrap().1;
                        let _ = to.write_all(frame.as_bytes());
                        if twice {
                            let _ = to.write_all(frame.as_bytes());
                        }
                    } else {
                        let text = if b.store_full {
                            codec::ANSWER_STORE_FULL
                        } else {
                            let copy = frame.copy_with_type(codec::TYPE_OFFLINE);
                            s.store.entry(dst).or_default().push_back(copy);
                            codec::ANSWER_STORED
                        };
                        let answer = codec::encode_answer(frame.message_id(), dst, src, text);
                        let _ = s.online.get_mut(&src).unwrap().1.write_all(&answer);
                    }
                }
                codec::TYPE_ANSWER => {
                    if let Some((_, to)) = s.online.get_mut(&dst) {
                        let _ = to.write_all(frame.as_bytes());
                    }
                }
                _ => return,
            }
            if first {
                let stored = s.store.remove(&src).unwrap_or_default();
                if b.close_mid_backlog > 0 && !stored.is_empty() && s.closed_mid_backlog.insert(src)
                {
                    for frame in stored.iter().take(b.close_mid_backlog) {
                        let _ = conn.write_all(frame);
                    }
                    s.store.insert(src, stored);
                    s.online.remove(&src);
                    let _ = conn.shutdown(std::net::Shutdown::Both);
                    return;
                }
                for frame in stored {
                    s.stored_delivered += 1;
                    if b.drop_stored_every > 0
                        && s.stored_delivered.is_multiple_of(b.drop_stored_every)
                    {
                        continue;
                    }
                    let _ = s.online.get_mut(&src).unwrap().1.write_all(&frame);
                }
            }
        }
    }
    if let Some(user) = user {
        let mut s = state.lock().unwrap();
        if s.online.get(&user).is_some_and(|(conn, _)| *conn == id) {
            s.online.remove(&user);
        }
    }
}

/// 8 users in pairs; users 3 and 6 offline, so users 2 and 7 send to the store.
fn config(target: SocketAddr) -> Bin24Config {
    let mut offline = vec![false; 8];
    offline[3] = true;
    offline[6] = true;
    Bin24Config {
        target,
        users: 8,
        pattern: Pattern::Pairs,
        offline,
        body_bytes: 64,
        run_id: 0x1234_5678,
        pace: Pace {
            rate_per_s: 400,
            duration_us: 400_000,
            warmup_us: 100_000,
            drain_us: 1_000_000,
            connect_rate_per_s: 1_000,
            seed: 0,
            progress: false,
        },
    }
}

/// Messages of the plan's 200 sent by users 2 and 7 (sender ordinals 2 and 5 of 6).
const TO_THE_STORE: u64 = 33 + 33;

#[test]
fn live_and_stored_messages_are_all_accounted_for() {
    let cfg = config(spawn_server(Behaviour::default()));
    let run = run(&cfg).unwrap();
    assert_eq!((run.online_requested, run.online_joined), (6, 6));
    assert_eq!(run.ran.plan.senders, 6);
    assert_eq!(run.ran.plan.messages, 200, "(0.1 s + 0.4 s) at 400 msg/s");
    assert_eq!(run.ran.sends.sent, 200);
    let t = run.tally;
    assert_eq!(t.written, 200);
    assert_eq!(t.stored, TO_THE_STORE);
    assert_eq!(t.live, 200 - TO_THE_STORE);
    assert_eq!(t.full + t.lost.total + t.incomplete.total, 0, "{t:?}");
    assert_eq!(t.duplicates, ledger::DuplicateCounts::default());
    assert_eq!(run.ran.errors.total(), 0, "{:?}", run.ran.errors.first);
    assert_eq!(run.foreign_frames, 0);
    assert!(!run.ran.drain_timed_out && !run.reconnect_timed_out);
    assert_eq!((run.reconnect_requested, run.reconnect_joined), (2, 2));
    assert_eq!(run.reconnect_of_online, 0);
    assert_eq!(run.stored_frames, TO_THE_STORE);
    // Timed: the measured window's messages (160 of 200), each once.
    let l = &run.latency;
    assert_eq!(l.ack_delivered.len() + l.ack_stored.len(), 160);
    assert_eq!(l.delivery_live.len(), l.ack_delivered.len());
    assert_eq!(l.delivery_stored.len(), TO_THE_STORE);
    assert_eq!((l.connect.len(), l.reconnect.len()), (6, 2));
    let report = report::Report::new(&cfg, 1, false, &run);
    assert_eq!(report.outcome.exit_code, 0, "{}", report.to_text());
    let text = report.to_text();
    assert!(text.contains("result            PASS"), "{text}");
}

#[test]
fn the_ring_works_too() {
    let mut cfg = config(spawn_server(Behaviour::default()));
    cfg.pattern = Pattern::Ring;
    cfg.users = 5;
    cfg.offline = vec![false, false, true, false, false];
    let run = run(&cfg).unwrap();
    let t = run.tally;
    assert_eq!(run.ran.plan.senders, 4);
    assert_eq!(t.written, 200);
    // User 1 (ordinal 1 of 4) sends to the offline user 2; nobody sends for user 2.
    assert_eq!(t.stored, 50);
    assert_eq!(t.live, 150);
    assert_eq!(
        t.lost.total + t.incomplete.total + run.ran.errors.total(),
        0
    );
}

#[test]
fn stored_frames_the_server_loses_are_caught() {
    let cfg = config(spawn_server(Behaviour {
        drop_stored_every: 5,
        ..Behaviour::default()
    }));
    let run = run(&cfg).unwrap();
    let t = run.tally;
    assert_eq!(t.lost.stored_never_delivered, TO_THE_STORE / 5);
    assert_eq!(t.lost.total, TO_THE_STORE / 5);
    assert_eq!(t.stored, TO_THE_STORE - TO_THE_STORE / 5);
    assert!(
        run.reconnect_timed_out,
        "it waited for them until its deadline"
    );
    let report = report::Report::new(&cfg, 1, false, &run);
    assert_eq!(report.outcome.exit_code, 1);
    assert!(report.outcome.failures[0].contains("lost"));
}

#[test]
fn a_full_store_is_counted_not_lost() {
    let cfg = config(spawn_server(Behaviour {
        store_full: true,
        ..Behaviour::default()
    }));
    let run = run(&cfg).unwrap();
    let t = run.tally;
    assert_eq!(t.full, TO_THE_STORE);
    assert_eq!(t.stored + t.lost.total + t.incomplete.total, 0);
    assert!(run.latency.ack_full.len() > 0);
    assert_eq!(run.latency.ack_stored.len(), 0);
    assert_eq!(run.stored_frames, 0);
    let report = report::Report::new(&cfg, 1, false, &run);
    assert_eq!(report.outcome.exit_code, 0, "{}", report.to_text());
}

#[test]
fn live_duplicates_are_errors() {
    let cfg = config(spawn_server(Behaviour {
        duplicate_live_every: 10,
        ..Behaviour::default()
    }));
    let run = run(&cfg).unwrap();
    let d = run.tally.duplicates;
    assert!(d.unexpected > 0, "{d:?}");
    assert_eq!(d.allowed, 0);
    // The recipient answers each copy, so the sender hears "200" twice.
    assert_eq!(d.repeated_answers, d.unexpected);
    let report = report::Report::new(&cfg, 1, false, &run);
    assert_eq!(report.outcome.exit_code, 1);
}

#[test]
fn an_online_user_with_stored_messages_is_reconnected() {
    let cfg = config(spawn_server(Behaviour {
        store_online_every: 7,
        ..Behaviour::default()
    }));
    let run = run(&cfg).unwrap();
    let t = run.tally;
    assert!(t.stored > TO_THE_STORE, "{t:?}");
    assert_eq!(t.live + t.stored, 200);
    assert_eq!(
        t.lost.total + t.incomplete.total + run.ran.errors.total(),
        0
    );
    assert!(run.reconnect_of_online > 0);
    assert_eq!(run.reconnect_joined, run.reconnect_requested);
}

#[test]
fn a_user_closed_mid_backlog_connects_again() {
    let cfg = config(spawn_server(Behaviour {
        close_mid_backlog: 5,
        ..Behaviour::default()
    }));
    let run = run(&cfg).unwrap();
    let t = run.tally;
    assert_eq!(t.stored, TO_THE_STORE);
    assert_eq!(t.lost.total + t.incomplete.total, 0, "{t:?}");
    assert_eq!(run.reconnect_retries, 2, "both offline users, once each");
    assert_eq!((run.reconnect_requested, run.reconnect_joined), (2, 2));
    // The 5 frames written before each close came again: at-least-once, allowed.
    assert_eq!(t.duplicates.allowed, 2 * 5);
    assert_eq!(t.duplicates.unexpected, 0);
    assert_eq!(run.stored_frames, TO_THE_STORE + 2 * 5);
    // The server closing a recipient is still an error of the run.
    assert_eq!(run.ran.errors.read, 2, "{:?}", run.ran.errors.first);
    let report = report::Report::new(&cfg, 1, false, &run);
    assert_eq!(report.outcome.failures, vec!["2 errors".to_string()]);
}

#[test]
fn no_server_is_unreachable() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = config(addr);
    cfg.users = 2;
    cfg.offline = vec![false, false];
    assert!(matches!(run(&cfg), Err(RunError::Unreachable(_))));
}

#[test]
fn a_store_delivery_repeats_only_on_a_connection_after_an_earlier_one() {
    let mut user = User {
        name: user_name(0),
        partner: 1,
        offline: false,
        reconnecting: false,
        reconnect_attempts: 0,
        connected_before_reconnect: false,
    };
    // Online from the start: its first connection repeats nothing.
    assert!(!user.on_repeat_connection());
    // Offline until the reconnect: that connection is its first.
    user.reconnecting = true;
    user.reconnect_attempts = 1;
    assert!(!user.on_repeat_connection());
    // Connected before (a node may have announced stored frames to it there, not yet
    // counted delivered when that connection closed): its reconnect may bring them again.
    user.connected_before_reconnect = true;
    assert!(user.on_repeat_connection());
    // A retry in the reconnect phase, whatever came before.
    user.connected_before_reconnect = false;
    user.reconnect_attempts = 2;
    assert!(user.on_repeat_connection());
}
