//! The shared verdict and outcome rules; then every scenario's report rendered from fixed, fabricated figures, text and JSON, compared
//! byte for byte with the files in `golden/`: the reports' words, their JSON fields (names,
//! nesting, order) and their exit codes are the loadgen's interface (scripts and CI read
//! them), so a change to how a report is built must not change what it says.
//!
//! Each scenario is rendered twice: `busy` (every count non-zero, so every line that appears
//! only when it applies is there) and `clean` (a run that passed). After a deliberate change to
//! a report, `LOADGEN_BLESS=1 cargo test -p loadgen golden` rewrites the files; the diff is the
//! review.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::*;
use crate::args::Pace;
use crate::bin24::ledger::{DuplicateCounts, IncompleteCounts, LostCounts};
use crate::bin24::topology::Pattern;
use crate::bin24::{self, Bin24, Bin24Config, Bin24Outcome, Tally};
use crate::ccm::{self, Ccm, CcmConfig, CcmOutcome};
use crate::lobby::ledger::{Kind, PairCounts, PairLatencies, KINDS};
use crate::lobby::{Lobby, LobbyConfig, LobbyOutcome};
use crate::matou::wire::NoticeCheck;
use crate::matou::{self, links::LinkCounts, Matou, MatouConfig, MatouOutcome, Notices};
use crate::ocm::accounting::{Counts, Losses as OcmLosses};
use crate::ocm::{self, Ocm, OcmConfig, OcmOutcome, RecvBuffers};
use crate::registry::ScenarioKind;
use crate::room::{Room, RoomConfig, RoomOutcome};
use crate::stats::{ErrorCounts, ErrorKind, OwnLags, SeqCounts};

fn inputs(lateness_p99_us: u64, interval_us: f64) -> ValidityInputs {
    ValidityInputs {
        schedule_lateness_p99_us: lateness_p99_us,
        sender_interval_us: interval_us,
        delivery_p99_us: None,
        measured_messages: 100,
    }
}

#[test]
fn lateness_limit_is_ten_percent_of_the_tighter_bound_with_a_floor() {
    let limit = |interval_us, p99_us| lateness_limit_us(interval_us, p99_us).0;
    assert_eq!(limit(100_000.0, None), 10_000, "10 msg/s per sender");
    assert_eq!(limit(10_000.0, None), 1_000);
    assert_eq!(limit(200.0, None), LATENESS_FLOOR_US, "floor");
    assert_eq!(limit(0.5, None), LATENESS_FLOOR_US);
    // The delivery p99 tightens a loose interval...
    assert_eq!(limit(50_000.0, Some(30_000)), 3_000);
    // ...but never below the floor, and never loosens a tight interval.
    assert_eq!(limit(50_000.0, Some(500)), LATENESS_FLOOR_US);
    assert_eq!(limit(20_000.0, Some(1_000_000)), 2_000);
    assert!(lateness_limit_us(50_000.0, Some(30_000))
        .1
        .contains("delivery p99"));
    assert!(lateness_limit_us(20_000.0, Some(1_000_000))
        .1
        .contains("send interval"));
    assert!(lateness_limit_us(200.0, Some(100)).1.contains("floor"));
}

#[test]
fn verdicts() {
    let ok = verdict(&inputs(900, 10_000.0));
    assert!(ok.valid, "{ok:?}");
    assert_eq!(ok.schedule_lateness_limit_ms, 1.0);
    let at_limit = verdict(&inputs(1_000, 10_000.0));
    assert!(at_limit.valid, "the limit itself is still valid");
    let late = verdict(&inputs(1_001, 10_000.0));
    assert!(!late.valid);
    assert!(late.reasons[0].contains("fell behind"), "{late:?}");
    // A slow sender tolerates more lateness, unless the latencies are small.
    assert!(verdict(&inputs(4_700, 50_000.0)).valid);
    let small_latencies = ValidityInputs {
        delivery_p99_us: Some(31_000),
        ..inputs(4_700, 50_000.0)
    };
    assert!(!verdict(&small_latencies).valid);
    // Nothing measured is invalid whatever the lateness.
    let empty = verdict(&ValidityInputs {
        measured_messages: 0,
        ..inputs(0, 10_000.0)
    });
    assert!(!empty.valid);
    assert_eq!(empty.reasons.len(), 1);
}

#[test]
fn outcomes_and_exit_codes() {
    let valid = verdict(&inputs(0, 10_000.0));
    let invalid = verdict(&inputs(50_000, 10_000.0));
    let clean = FailureInputs::default();
    assert_eq!(outcome(&clean, &valid, false).exit_code, 0);
    assert_eq!(
        outcome(&clean, &invalid, false).exit_code,
        0,
        "INVALID alone passes"
    );
    let strict = outcome(&clean, &invalid, true);
    assert_eq!(strict.exit_code, 1, "unless --strict");
    assert!(strict.failures[0].contains("INVALID"));
    for bad in [
        FailureInputs { losses: 1, ..clean },
        FailureInputs {
            duplicates_or_reorders: 1,
            ..clean
        },
        FailureInputs { errors: 1, ..clean },
        FailureInputs {
            not_sent: 1,
            ..clean
        },
    ] {
        let o = outcome(&bad, &valid, false);
        assert!(!o.passed && o.exit_code == 1, "{bad:?} -> {o:?}");
        assert_eq!(o.failures.len(), 1);
    }
    let many = outcome(
        &FailureInputs {
            losses: 3,
            errors: 2,
            ..clean
        },
        &valid,
        false,
    );
    assert_eq!(
        many.failures,
        vec!["3 lost".to_string(), "2 errors".to_string()]
    );
}

/// A histogram of `n` samples spread evenly from `from_us` to `to_us`.
fn hist(n: u64, from_us: u64, to_us: u64) -> LatencyHistogram {
    let mut h = LatencyHistogram::new();
    for i in 0..n {
        h.record(from_us + (to_us - from_us) * i / n.max(2).saturating_sub(1).max(1));
    }
    h
}

fn own(busy: bool) -> OwnLags {
    let mut own = OwnLags {
        send_lag: hist(200, 40, 3_000),
        schedule_lateness: hist(200, 5, if busy { 9_000 } else { 400 }),
        socket_blocked: hist(200, 1, 700),
    };
    if busy {
        own.send_lag.record(70_000_000);
    }
    own
}

fn errors(busy: bool) -> ErrorCounts {
    let mut e = ErrorCounts::default();
    if busy {
        e.count(ErrorKind::Connect, || "connect: refused".to_string());
        e.count(ErrorKind::Connect, || unreachable!());
        e.count(ErrorKind::Read, || "read: connection reset".to_string());
        e.count(ErrorKind::Protocol, || "malformed record".to_string());
    }
    e
}

fn plan(senders: u32, rate_per_s: u64) -> Plan {
    Plan {
        senders,
        rate_per_s,
        start_us: 1_000_000,
        warmup_us: 500_000,
        duration_us: 2_000_000,
        messages: rate_per_s * 5 / 2,
    }
}

fn target(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `n` if busy, else 0.
fn b(busy: bool, n: u64) -> u64 {
    if busy {
        n
    } else {
        0
    }
}

fn room_config(wire: crate::room::Wire) -> RoomConfig {
    RoomConfig {
        wire,
        target: target(7001),
        clients: 40,
        senders: 8,
        message_bytes: 64,
        pace: Pace {
            rate_per_s: 400,
            duration_us: 2_000_000,
            warmup_us: 500_000,
            drain_us: 3_000_000,
            connect_rate_per_s: 1_000,
            seed: 7,
            progress: false,
        },
    }
}

fn room_outcome(busy: bool) -> RoomOutcome {
    RoomOutcome {
        clients_requested: 40,
        clients_joined: if busy { 37 } else { 40 },
        ran: Ran {
            plan: plan(8, 400),
            errors: errors(busy),
            sends: SendCounts {
                sent: 1_000,
                sent_in_window: 800,
                not_sent_queue_full: b(busy, 3),
                not_sent_connection_lost: b(busy, 2),
                not_sent_at_end: b(busy, 1),
            },
            ramp_us: 40_123,
            drain_used_us: if busy { 3_000_000 } else { 12_345 },
            drain_timed_out: busy,
        },
        connect_latency: hist(40, 300, 9_000),
        delivery_latency: hist(1_000, 80, 12_000),
        own: own(busy),
        seq: SeqCounts {
            delivered: 36_990,
            gap_losses: b(busy, 4),
            duplicates_or_reorders: b(busy, 2),
        },
        undelivered: b(busy, 6),
        publish_replies: 1_000,
        delivered_in_window: 29_600,
        notices: crate::record::NoticeCounts {
            joins: 780,
            leaves: b(busy, 3),
            greetings: 40,
        },
        incomplete_bytes_at_end: b(busy, 17),
    }
}

fn bin24_config() -> Bin24Config {
    Bin24Config {
        target: target(7002),
        users: 10,
        pattern: Pattern::Pairs,
        offline: (0..10).map(|i| i % 5 == 1).collect(),
        body_bytes: 100,
        run_id: 0xbeef_0001,
        pace: Pace {
            rate_per_s: 1_000,
            duration_us: 2_000_000,
            warmup_us: 500_000,
            drain_us: 3_000_000,
            connect_rate_per_s: 500,
            seed: 0,
            progress: false,
        },
    }
}

fn bin24_outcome(busy: bool) -> Bin24Outcome {
    let lost = if busy {
        LostCounts {
            total: 10,
            no_answer: 1,
            sender_closed: 2,
            stored_never_delivered: 3,
            answered_never_delivered: 4,
        }
    } else {
        LostCounts::default()
    };
    let incomplete = if busy {
        IncompleteCounts {
            total: 14,
            delivered_no_answer: 2,
            sender_closed: 3,
            not_redelivered: 4,
            store_delivery_without_300: 5,
        }
    } else {
        IncompleteCounts::default()
    };
    let mut latency = bin24::Latencies {
        ack_delivered: hist(1_500, 100, 2_500),
        ack_stored: hist(400, 900, 8_000),
        ack_full: hist(b(busy, 50), 200, 600),
        service_time: hist(2_000, 50, 1_500),
        delivery_live: hist(1_500, 90, 2_400),
        delivery_stored: hist(450, 5_000, 90_000),
        connect: hist(10, 200, 800),
        reconnect: hist(2, 300, 500),
        own: own(busy),
    };
    if busy {
        latency.ack_stored.record(61_000_000);
    }
    Bin24Outcome {
        online_requested: 8,
        online_joined: if busy { 7 } else { 8 },
        ran: Ran {
            plan: plan(8, 1_000),
            errors: errors(busy),
            sends: SendCounts {
                sent: 2_500,
                sent_in_window: 2_000,
                not_sent_queue_full: b(busy, 1),
                not_sent_connection_lost: b(busy, 2),
                not_sent_at_end: b(busy, 3),
            },
            ramp_us: 16_000,
            drain_used_us: 250_000,
            drain_timed_out: busy,
        },
        latency,
        tally: Tally {
            written: 2_500,
            live: 1_900,
            stored: 500,
            stored_after_live_delivery: b(busy, 7),
            full: b(busy, 50),
            lost,
            incomplete,
            duplicates: DuplicateCounts {
                allowed: b(busy, 3),
                unexpected: b(busy, 1),
                repeated_answers: b(busy, 2),
                conflicting_answers: b(busy, 1),
            },
        },
        answered_in_window: 1_990,
        delivered_live_in_window: 1_500,
        foreign_frames: b(busy, 9),
        stored_hellos: b(busy, 2),
        reconnect_requested: 2,
        reconnect_joined: 2,
        reconnect_of_online: b(busy, 1) as usize,
        reconnect_retries: b(busy, 4),
        stored_frames: 503,
        reconnect_used_us: 80_000,
        reconnect_timed_out: busy,
    }
}

fn ccm_config(silent: usize) -> CcmConfig {
    CcmConfig {
        target: target(7003),
        users: 20,
        pattern: Pattern::Ring,
        silent,
        silent_wait_us: 10_000_000,
        content_bytes: 48,
        run_id: 0xc0c0_0002,
        pace: Pace {
            rate_per_s: 600,
            duration_us: 2_000_000,
            warmup_us: 500_000,
            drain_us: 3_000_000,
            connect_rate_per_s: 800,
            seed: 0,
            progress: false,
        },
    }
}

fn ccm_outcome(busy: bool) -> CcmOutcome {
    let mut latency = ccm::Latencies {
        delivery: hist(1_200, 70, 4_000),
        connect: hist(20, 150, 900),
        own: own(busy),
        silent_keepalive_after: hist(b(busy, 4), 500_000, 520_000),
        silent_closed_after: hist(b(busy, 3), 800_000, 830_000),
    };
    if busy {
        latency.delivery.record(65_000_000);
    }
    CcmOutcome {
        users_requested: 20,
        users_joined: if busy { 19 } else { 20 },
        silent_requested: if busy { 4 } else { 0 },
        silent_joined: if busy { 4 } else { 0 },
        silent_closed: b(busy, 3),
        silent_closed_without_keepalive: b(busy, 1),
        silent_not_closed: b(busy, 1),
        ran: Ran {
            plan: plan(19, 600),
            errors: errors(busy),
            sends: SendCounts {
                sent: 1_500,
                sent_in_window: 1_200,
                not_sent_queue_full: b(busy, 2),
                not_sent_connection_lost: 0,
                not_sent_at_end: b(busy, 1),
            },
            ramp_us: 25_000,
            drain_used_us: 4_000,
            drain_timed_out: false,
        },
        latency,
        seq: SeqCounts {
            delivered: 1_497,
            gap_losses: b(busy, 2),
            duplicates_or_reorders: b(busy, 1),
        },
        undelivered: b(busy, 1),
        delivered_in_window: 1_198,
        foreign_messages: b(busy, 5),
        keepalives_active: 12,
        keepalives_answered: 12,
        keepalives_silent: b(busy, 4),
        silent_wait_used_us: b(busy, 9_100_000),
    }
}

fn matou_config(private_rate_per_s: u64) -> MatouConfig {
    MatouConfig {
        target: target(7004),
        users: 12,
        senders: 6,
        private_rate_per_s,
        sign_out_wait_us: 2_000_000,
        message_bytes: 80,
        run_id: 0x7a7a_0003,
        pace: Pace {
            rate_per_s: 300,
            duration_us: 2_000_000,
            warmup_us: 500_000,
            drain_us: 3_000_000,
            connect_rate_per_s: 400,
            seed: 11,
            progress: false,
        },
    }
}

fn notices(busy: bool, expected: u64) -> Notices {
    Notices {
        received: expected - b(busy, 3),
        duplicates: b(busy, 1),
        check: NoticeCheck {
            expected,
            own_missing: b(busy, 1),
            pairs_missing: b(busy, 2),
            pairs_both: b(busy, 1),
        },
    }
}

fn matou_outcome(busy: bool) -> MatouOutcome {
    let mut latency = matou::Latencies {
        delivery: hist(5_000, 60, 3_000),
        connect: hist(12, 200, 700),
        own: own(busy),
        link: hist(60, 400, 2_000),
        link_notify: hist(60, 200, 1_000),
    };
    if busy {
        latency.link.record(62_000_000);
    }
    MatouOutcome {
        users_requested: 12,
        users_joined: if busy { 11 } else { 12 },
        ran: Ran {
            plan: plan(6, 300),
            errors: errors(busy),
            sends: SendCounts {
                sent: 750,
                sent_in_window: 600,
                not_sent_queue_full: b(busy, 1),
                not_sent_connection_lost: b(busy, 1),
                not_sent_at_end: 0,
            },
            ramp_us: 30_000,
            drain_used_us: 9_000,
            drain_timed_out: false,
        },
        link_plan: busy.then(|| plan(2, 30)),
        latency,
        seq: SeqCounts {
            delivered: 8_990,
            gap_losses: b(busy, 3),
            duplicates_or_reorders: b(busy, 2),
        },
        undelivered: b(busy, 7),
        expected_deliveries: 9_000,
        delivered_in_window: 7_190,
        links: LinkCounts {
            opened: b(busy, 75),
            complete: b(busy, 70),
            stuck_requested: b(busy, 1),
            stuck_accepted: b(busy, 1),
            stuck_ports_sent: b(busy, 1),
            broken: b(busy, 2),
        },
        links_not_sent_connection_lost: b(busy, 1),
        links_not_sent_queue_full: b(busy, 2),
        links_not_sent_busy: b(busy, 3),
        links_requested_in_window: b(busy, 60),
        links_completed_in_window: b(busy, 56),
        address_mismatches: b(busy, 1),
        join_notices: notices(busy, 144),
        sign_out_notices: notices(busy, 132),
        signed_out: 12,
        closed_after_sign_out: if busy { 10 } else { 12 },
        error_packets: b(busy, 2),
        refusals: b(busy, 1),
        decode_errors: b(busy, 1),
        foreign_messages: b(busy, 4),
        foreign_notices: b(busy, 5),
        sign_out_wait_used_us: 120_000,
    }
}

fn ocm_config(loss_max_percent: f64) -> OcmConfig {
    OcmConfig {
        tcp_targets: vec![target(7005)],
        udp_targets: vec![target(7006)],
        send_to: crate::ocm::SendTo::Own,
        rooms: 3,
        members: 4,
        room_rate_per_s: 50,
        exit_wait_us: 2_000_000,
        message_bytes: 60,
        recv_buffer_bytes: 1 << 20,
        loss_max_percent,
        run_id: 0x0c0c_0004,
        pace: Pace {
            rate_per_s: 200,
            duration_us: 2_000_000,
            warmup_us: 500_000,
            drain_us: 3_000_000,
            connect_rate_per_s: 1_000,
            seed: 0,
            progress: false,
        },
    }
}

fn ocm_outcome(busy: bool) -> OcmOutcome {
    let mut latency = ocm::Latencies {
        create: hist(3, 400, 900),
        join: hist(9, 300, 800),
        delivery: hist(1_200, 50, 2_000),
        leave: hist(9, 100, 600),
        receive_lag: hist(1_500, 5, if busy { 4_000 } else { 300 }),
        own: own(busy),
    };
    if busy {
        latency.join.record(63_000_000);
    }
    OcmOutcome {
        rooms_requested: 3,
        rooms_created: if busy { 2 } else { 3 },
        members_requested: 12,
        members_joined: if busy { 7 } else { 12 },
        members_not_attempted: if busy { 4 } else { 0 },
        tcrp_acknowledgements: b(busy, 3),
        ran: Ran {
            plan: plan(12, 200),
            errors: errors(busy),
            sends: SendCounts {
                sent: 500,
                sent_in_window: 400,
                not_sent_queue_full: b(busy, 1),
                not_sent_connection_lost: b(busy, 2),
                not_sent_at_end: 0,
            },
            ramp_us: 70_000,
            drain_used_us: 3_000_000,
            drain_timed_out: busy,
        },
        latency,
        counts: Counts {
            delivered: 1_490,
            late: b(busy, 2),
            duplicates: b(busy, 1),
            missing_not_remembered: b(busy, 1),
        },
        losses: OcmLosses {
            expected: 1_500,
            lost: b(busy, 10),
            gaps: b(busy, 6),
            tail: b(busy, 4),
        },
        echoes: b(busy, 1),
        delivered_in_window: 1_190,
        foreign_texts: b(busy, 3),
        exits_planned: 12,
        exits_sent: if busy { 11 } else { 12 },
        leaves_expected: 27,
        leaves_received: if busy { 25 } else { 27 },
        leaves_again: b(busy, 1),
        recv_buffers: RecvBuffers {
            requested_bytes: 1 << 20,
            granted_min_bytes: if busy { 212_992 } else { 1 << 21 },
            granted_max_bytes: 1 << 21,
            capped_sockets: if busy { 2 } else { 0 },
            sockets: 12,
            dropped: if busy { Some(5) } else { Some(0) },
            without_timestamp: b(busy, 8),
        },
        exit_used_us: 40_000,
        exit_timed_out: busy,
    }
}

/// `ocm`: OCM members (0 leaves out every pair with OCM on either side).
fn lobby_config(ocm: usize) -> LobbyConfig {
    LobbyConfig {
        room_target: target(7001),
        matou_target: target(7005),
        ccm_target: target(7004),
        ocm_tcp_target: target(7006),
        ocm_udp_target: target(7007),
        web_target: target(7008),
        members: [3, 2, 2, ocm, 0],
        ocm_room: "lobby".to_string(),
        message_bytes: 80,
        recv_buffer_bytes: 1 << 20,
        run_id: 0x1b0b_b7ff,
        pace: Pace {
            rate_per_s: 90,
            duration_us: 2_000_000,
            warmup_us: 500_000,
            drain_us: 3_000_000,
            connect_rate_per_s: 500,
            seed: 0,
            progress: false,
        },
    }
}

fn lobby_outcome(busy: bool) -> LobbyOutcome {
    let mut latency = PairLatencies::default();
    let (mut pairs, mut expected, mut undelivered) =
        ([[PairCounts::default(); 5]; 5], [[0; 5]; 5], [[0; 5]; 5]);
    // The four protocols the goldens were written with (no WEB members).
    let kinds = &KINDS[..4];
    for &origin in kinds {
        for &destination in kinds {
            let (o, d) = (origin.index(), destination.index());
            let k = (4 * o + d) as u64;
            for i in 0..20 {
                latency.record(origin, destination, 200 + 37 * k + 11 * i);
            }
            expected[o][d] = 100 + k;
            undelivered[o][d] = b(busy && origin != destination, k % 3);
            pairs[o][d] = PairCounts {
                delivered: 100 + k - undelivered[o][d] - b(busy, k % 2),
                gap_losses: b(busy, k % 2),
                duplicates_or_reorders: b(busy && o == d, 1),
            };
        }
    }
    LobbyOutcome {
        requested: [3, 2, 2, 2, 0],
        joined: if busy {
            [3, 2, 1, 2, 0]
        } else {
            [3, 2, 2, 2, 0]
        },
        ran: Ran {
            plan: plan(9, 90),
            errors: errors(busy),
            sends: SendCounts {
                sent: 225,
                sent_in_window: 180,
                not_sent_queue_full: b(busy, 2),
                not_sent_connection_lost: b(busy, 3),
                not_sent_at_end: b(busy, 1),
            },
            ramp_us: 18_250,
            drain_used_us: if busy { 3_000_000 } else { 23_456 },
            drain_timed_out: busy,
        },
        latency,
        connect: hist(9, 400, 7_000),
        own: own(busy),
        pairs,
        expected,
        undelivered,
        delivered_in_window: 1_440,
        foreign_messages: b(busy, 4),
        presence_notices: 12,
        keepalives_answered: b(busy, 5),
        ocm_room_created: !busy,
        ocm_exits_sent: 2,
    }
}

/// A lobby whose every loss crossed protocols (the switchboard off), without OCM members.
fn lobby_isolated() -> LobbyOutcome {
    let mut run = lobby_outcome(false);
    run.requested[Kind::Ocm.index()] = 0;
    run.joined[Kind::Ocm.index()] = 0;
    for origin in KINDS {
        for destination in KINDS.into_iter().filter(|&d| d != origin) {
            let (o, d) = (origin.index(), destination.index());
            run.undelivered[o][d] = run.expected[o][d];
            run.pairs[o][d].delivered = 0;
        }
    }
    run
}

/// The text, the JSON (as `--json` writes it) and the exit code of one report.
fn rendered<R: ScenarioReport>(report: &R) -> String {
    let (_, outcome, text) = report.closing();
    let json = serde_json::to_string_pretty(report).expect("reports serialize");
    format!(
        "{text}--- json\n{json}\n--- exit code {}\n",
        outcome.exit_code
    )
}

/// Every scenario's report, by file name.
fn all_reports() -> Vec<(String, String)> {
    let mut all = Vec::new();
    for busy in [true, false] {
        let (case, strict) = if busy {
            ("busy", true)
        } else {
            ("clean", false)
        };
        let room = room_config(crate::room::Wire::Room);
        let resp = room_config(crate::room::Wire::Resp {
            channel: b"bench".to_vec(),
        });
        for (name, rendered) in [
            (
                "room",
                rendered(&Room::report(&room, 7, strict, &room_outcome(busy))),
            ),
            (
                "resp",
                rendered(&Room::report(&resp, 7, strict, &room_outcome(busy))),
            ),
            (
                "bin24",
                rendered(&Bin24::report(
                    &bin24_config(),
                    3,
                    strict,
                    &bin24_outcome(busy),
                )),
            ),
            (
                "ccm",
                rendered(&Ccm::report(
                    &ccm_config(if busy { 4 } else { 0 }),
                    5,
                    strict,
                    &ccm_outcome(busy),
                )),
            ),
            (
                "matou",
                rendered(&Matou::report(
                    &matou_config(b(busy, 30)),
                    11,
                    strict,
                    &matou_outcome(busy),
                )),
            ),
            (
                "ocm",
                rendered(&Ocm::report(
                    &ocm_config(if busy { 0.5 } else { 0.0 }),
                    13,
                    strict,
                    &ocm_outcome(busy),
                )),
            ),
            (
                "lobby",
                rendered(&Lobby::report(
                    &lobby_config(2),
                    17,
                    strict,
                    &lobby_outcome(busy),
                )),
            ),
        ] {
            all.push((format!("{name}-{case}.txt"), rendered));
        }
    }
    // OCM's loss within --loss-max: a note instead of a failure.
    let mut within = ocm_outcome(false);
    within.losses.lost = 3;
    within.losses.gaps = 3;
    all.push((
        "ocm-loss-within.txt".to_string(),
        rendered(&Ocm::report(&ocm_config(1.0), 13, false, &within)),
    ));
    all.push((
        "lobby-isolated.txt".to_string(),
        rendered(&Lobby::report(
            &lobby_config(0),
            17,
            false,
            &lobby_isolated(),
        )),
    ));
    all
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/report/golden")
}

#[test]
fn golden_reports_are_unchanged() {
    let bless = std::env::var_os("LOADGEN_BLESS").is_some();
    let mut changed = Vec::new();
    for (name, text) in all_reports() {
        let path = golden_dir().join(&name);
        if bless {
            std::fs::write(&path, &text).expect("writing a golden file");
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (LOADGEN_BLESS=1 writes it)", path.display()));
        if want != text {
            changed.push(format!("{name}:\n--- want\n{want}\n--- got\n{text}"));
        }
    }
    assert!(
        changed.is_empty(),
        "reports changed:\n{}",
        changed.join("\n")
    );
}
