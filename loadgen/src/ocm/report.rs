//! The OCM report: the rooms phase (TCRP create and join latencies), the chat (UDP delivery
//! latency, loss as a count and a percentage, late arrivals, duplicates, echoes), the exit
//! phase (leave texts), the loadgen's own receive buffers, drops and lag; with the shared
//! verdict and outcome rules (`crate::report`), as text and JSON.

use serde::Serialize;

use super::{Ocm, OcmConfig, OcmOutcome, SendTo};
use crate::report::{
    verdict, FailureInputs, Failures, Lines, Outcome, OwnLagSummaries, RunIds, Sections, Shared,
    ValidityInputs, Verdict, Window,
};
use crate::stats::LatencySummary;

pub type Report = crate::report::Report<Ocm>;

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub rooms: usize,
    /// Members per room, the host included.
    pub members: usize,
    pub senders: u32,
    pub rate_per_s: u64,
    /// Deliveries the plan calls for per second: rate x (members - 1).
    pub deliveries_per_s: u64,
    pub room_rate_per_s: u64,
    #[serde(flatten)]
    pub window: Window,
    pub exit_wait_ms: f64,
    /// Bytes of each chat message (the stamp included).
    pub payload_bytes: usize,
    pub recv_buffer_bytes: usize,
    /// UDP loss, in percent of the expected deliveries, above which the run fails.
    pub loss_max_percent: f64,
    #[serde(flatten)]
    pub ids: RunIds,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rooms {
    pub requested: usize,
    pub created: usize,
    pub members_requested: usize,
    pub members_joined: usize,
    /// Members whose own request failed (each is an error).
    pub members_failed: usize,
    /// Guests of rooms that were never created: no request was made for them.
    pub members_not_attempted: usize,
    /// State-1 acknowledgements received before answers (only with the server's switch on).
    pub acknowledgements: u64,
    pub duration_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Deliveries {
    /// Each message sent times the other members of its room.
    pub expected: u64,
    /// Distinct deliveries.
    pub delivered: u64,
    /// Deliveries received in the measured window, per second of it.
    pub per_s: f64,
    /// Delivered after a later message of the same sender (counted delivered, not lost).
    pub late: u64,
    pub duplicates: u64,
    /// A member got its own message back.
    pub echoes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct UdpLoss {
    pub lost: u64,
    pub percent: f64,
    /// Skipped by a later message, never arrived.
    pub gaps: u64,
    /// Sent after the last arrival of their stream, never arrived.
    pub tail: u64,
    pub loss_max_percent: f64,
    /// Whether this loss fails the run (above --loss-max).
    pub fails_run: bool,
    /// Skipped sequence numbers the loadgen could not remember (a late one counts as a
    /// duplicate).
    pub not_remembered: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Exit {
    pub exits_planned: u64,
    pub exits_sent: u64,
    pub leaves_expected: u64,
    pub leaves_received: u64,
    pub leaves_missing: u64,
    /// Leave texts received a second time (also protocol errors).
    pub leaves_again: u64,
    pub timed_out: bool,
    pub duration_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReceiveBuffers {
    pub requested_bytes: usize,
    pub granted_min_bytes: usize,
    pub granted_max_bytes: usize,
    /// Sockets the kernel granted less than asked (net.core.rmem_max).
    pub capped_sockets: usize,
    pub sockets: usize,
    /// Datagrams the loadgen's own sockets dropped (buffer full); null if unreadable.
    pub loadgen_dropped: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latencies {
    /// Create answer complete minus the room's planned time.
    pub create: LatencySummary,
    /// Join answer complete minus the time its room was created.
    pub join: LatencySummary,
    /// Chat text at a receiver minus intended send time.
    pub delivery: LatencySummary,
    /// Leave text at a receiver minus the leaver's intended exit time.
    pub leave: LatencySummary,
    /// Datagram read by the loop minus queued by the kernel (the loadgen's own share).
    pub receive_lag: LatencySummary,
    #[serde(flatten)]
    pub own: OwnLagSummaries,
}

#[derive(Clone, Debug, Serialize)]
pub struct Head {
    /// Each node's, comma-separated (one node: its address).
    pub tcp_target: String,
    pub udp_target: String,
    /// Several nodes: where members sent their datagrams (`own` or `next` node); absent with
    /// one node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_to: Option<SendTo>,
    /// Nodes the members were spread over.
    #[serde(skip)]
    pub nodes: usize,
    pub settings: Settings,
    pub rooms: Rooms,
}

#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub deliveries: Deliveries,
    pub latency_ms: Latencies,
    pub udp_loss: UdpLoss,
    pub exit: Exit,
    pub receive_buffers: ReceiveBuffers,
}

#[derive(Clone, Debug, Serialize)]
pub struct Others {
    /// Datagrams from elsewhere than the server's chat port, or texts of another run.
    pub foreign_texts: u64,
}

/// What OCM adds to the shared failure rules.
#[derive(Clone, Copy, Debug, Default)]
pub struct OcmFailures {
    /// UDP deliveries lost, and in percent of those expected.
    pub lost: u64,
    pub lost_percent: f64,
    pub loss_max_percent: f64,
    pub leaves_missing: u64,
}

/// The shared outcome, with UDP loss failing the run only above `--loss-max`, and missing
/// leave texts failing it always.
pub fn ocm_outcome(
    inputs: &FailureInputs,
    ocm: &OcmFailures,
    verdict: &Verdict,
    strict: bool,
) -> Outcome {
    let shared = FailureInputs {
        losses: 0,
        ..*inputs
    };
    // Loss first, as the shared rules list it.
    Failures::default()
        .when(
            loss_fails(ocm.lost, ocm.lost_percent, ocm.loss_max_percent),
            || {
                format!(
                    "{} lost ({:.4}% > --loss-max {}%)",
                    ocm.lost, ocm.lost_percent, ocm.loss_max_percent
                )
            },
        )
        .count(ocm.leaves_missing, "leave texts missing")
        .shared(&shared, verdict, strict)
        .outcome()
}

/// Loss fails the run when it is above the allowed percentage (any loss, at the default 0).
pub fn loss_fails(lost: u64, percent: f64, loss_max_percent: f64) -> bool {
    lost > 0 && percent > loss_max_percent
}

/// The shared verdict, plus two ways the loadgen itself can spoil an OCM run: reading its
/// sockets late (the receive lag is inside every delivery latency) and dropping datagrams
/// because its own receive buffers were full (a loss that is not the server's).
pub fn ocm_verdict(
    inputs: &ValidityInputs,
    receive_lag_p99_us: Option<u64>,
    loadgen_dropped: Option<u64>,
) -> Verdict {
    let mut v = verdict(inputs);
    let limit_us = (v.schedule_lateness_limit_ms * 1e3).round() as u64;
    if let Some(lag_us) = receive_lag_p99_us.filter(|&lag| lag > limit_us) {
        v.reasons.push(format!(
            "the loadgen read its sockets late: receive lag p99 {:.3} ms > limit {:.3} ms \
             ({})",
            lag_us as f64 / 1e3,
            limit_us as f64 / 1e3,
            v.schedule_lateness_limit_basis
        ));
    }
    if let Some(dropped) = loadgen_dropped.filter(|&d| d > 0) {
        v.reasons.push(format!(
            "the loadgen's own sockets dropped {dropped} datagrams (receive buffers full): \
             that loss is not the server's"
        ));
    }
    v.valid = v.reasons.is_empty();
    v
}

impl Report {
    pub fn new(
        cfg: &OcmConfig,
        seed: u64,
        strict: bool,
        loss_max_percent: f64,
        run: &OcmOutcome,
    ) -> Report {
        let plan = &run.ran.plan;
        let l = &run.latency;
        let shared = Shared::new(
            &run.ran,
            cfg.pace.rate_per_s,
            (&l.own, &l.delivery),
            l.create.clamped + l.join.clamped,
        );
        let losses = run.losses;
        let percent = losses.percent();
        let rb = &run.recv_buffers;
        let verdict = ocm_verdict(
            &shared.validity,
            (l.receive_lag.len() > 0).then(|| l.receive_lag.value_at_quantile_us(0.99)),
            rb.dropped,
        );
        let leaves_missing = run.leaves_expected.saturating_sub(run.leaves_received);
        let outcome = ocm_outcome(
            &shared.failures(losses.lost, run.counts.duplicates),
            &OcmFailures {
                lost: losses.lost,
                lost_percent: percent,
                loss_max_percent,
                leaves_missing,
            },
            &verdict,
            strict,
        );
        let mut notes = Vec::new();
        if losses.lost > 0 && !loss_fails(losses.lost, percent, loss_max_percent) {
            notes.push(format!(
                "UDP loss {:.4}% is within --loss-max {loss_max_percent}%, so it does not fail \
                 the run",
                percent
            ));
        }
        if run.counts.late > 0 {
            notes.push(
                "late deliveries: UDP may reorder; a message that arrives after a later one of \
                 its sender is delivered, not lost (it does not fail the run)"
                    .to_string(),
            );
        }
        if rb.capped_sockets > 0 {
            notes.push(format!(
                "{} UDP sockets got a smaller receive buffer than the {} bytes asked \
                 (net.core.rmem_max caps it; raise it with sysctl to ask for more)",
                rb.capped_sockets, rb.requested_bytes
            ));
        }
        if rb.without_timestamp > 0 {
            notes.push(format!(
                "{} datagrams came without a kernel receive timestamp (no receive lag for them)",
                rb.without_timestamp
            ));
        }
        if run.counts.missing_not_remembered > 0 {
            notes.push(format!(
                "{} skipped sequence numbers were not remembered (too many gaps): one of them \
                 arriving late counts as a duplicate",
                run.counts.missing_not_remembered
            ));
        }
        let members_failed = run.members_requested - run.members_joined - run.members_not_attempted;
        let head = Head {
            tcp_target: super::addresses(&cfg.tcp_targets),
            udp_target: super::addresses(&cfg.udp_targets),
            send_to: (cfg.tcp_targets.len() > 1).then_some(cfg.send_to),
            nodes: cfg.tcp_targets.len(),
            settings: Settings {
                rooms: cfg.rooms,
                members: cfg.members,
                senders: plan.senders,
                rate_per_s: cfg.pace.rate_per_s,
                deliveries_per_s: cfg.pace.rate_per_s * (cfg.members as u64 - 1),
                room_rate_per_s: cfg.room_rate_per_s,
                window: Window::new(cfg.pace.duration_us, cfg.pace.warmup_us, cfg.pace.drain_us),
                exit_wait_ms: cfg.exit_wait_us as f64 / 1e3,
                payload_bytes: cfg.message_bytes,
                recv_buffer_bytes: cfg.recv_buffer_bytes,
                loss_max_percent,
                ids: RunIds::new(seed, strict, Some(cfg.run_id)),
            },
            rooms: Rooms {
                requested: run.rooms_requested,
                created: run.rooms_created,
                members_requested: run.members_requested,
                members_joined: run.members_joined,
                members_failed,
                members_not_attempted: run.members_not_attempted,
                acknowledgements: run.tcrp_acknowledgements,
                duration_ms: run.ran.ramp_us as f64 / 1e3,
            },
        };
        let figures = Figures {
            deliveries: Deliveries {
                expected: losses.expected,
                delivered: run.counts.delivered,
                per_s: plan.per_s(run.delivered_in_window),
                late: run.counts.late,
                duplicates: run.counts.duplicates,
                echoes: run.echoes,
            },
            latency_ms: Latencies {
                create: l.create.summary(),
                join: l.join.summary(),
                delivery: l.delivery.summary(),
                leave: l.leave.summary(),
                receive_lag: l.receive_lag.summary(),
                own: OwnLagSummaries::of(&l.own),
            },
            udp_loss: UdpLoss {
                lost: losses.lost,
                percent,
                gaps: losses.gaps,
                tail: losses.tail,
                loss_max_percent,
                fails_run: loss_fails(losses.lost, percent, loss_max_percent),
                not_remembered: run.counts.missing_not_remembered,
            },
            exit: Exit {
                exits_planned: run.exits_planned,
                exits_sent: run.exits_sent,
                leaves_expected: run.leaves_expected,
                leaves_received: run.leaves_received,
                leaves_missing,
                leaves_again: run.leaves_again,
                timed_out: run.exit_timed_out,
                duration_ms: run.exit_used_us as f64 / 1e3,
            },
            receive_buffers: ReceiveBuffers {
                requested_bytes: rb.requested_bytes,
                granted_min_bytes: rb.granted_min_bytes,
                granted_max_bytes: rb.granted_max_bytes,
                capped_sockets: rb.capped_sockets,
                sockets: rb.sockets,
                loadgen_dropped: rb.dropped,
            },
        };
        let others = Others {
            foreign_texts: run.foreign_texts,
        };
        shared.report("ocm", (head, figures, others), notes, verdict, outcome)
    }
}

impl Sections for Ocm {
    type Head = Head;
    type Figures = Figures;
    type Others = Others;
    const NOT_SENT_LOST: &'static str = "member gone or send failed";
    const DRAIN_TIMED_OUT: &'static str = "deadline reached with deliveries missing";
    const DRAIN_DONE: &'static str = "every delivery arrived";

    fn opening(report: &Report, out: &mut Lines) {
        let s = &report.head.settings;
        let l = &report.figures.latency_ms;
        out.scenario(
            format!(
                "OCM against TCP {} / UDP {}: {} rooms x {} members",
                report.head.tcp_target, report.head.udp_target, s.rooms, s.members
            ),
            s.senders,
            format!(
                "{} msg/s ({} deliveries/s)",
                s.rate_per_s, s.deliveries_per_s
            ),
            s.window.duration_ms,
            s.window.warmup_ms,
            (s.payload_bytes, "messages"),
        );
        if let Some(send_to) = report.head.send_to {
            let to = match send_to {
                SendTo::Own => "its home node",
                SendTo::Next => "the next node (every delivery crosses nodes)",
            };
            let n = report.head.nodes;
            out.line(
                "nodes",
                format!("member i's home is node i mod {n}; it sends its chat to {to}"),
            );
        }
        let r = &report.head.rooms;
        out.line(
            "rooms",
            format!(
                "{} of {} created at {} rooms/s in {:.3} s; members {} joined, {} failed, {} not \
                 attempted (room not created), of {}{}",
                r.created,
                r.requested,
                s.room_rate_per_s,
                r.duration_ms / 1e3,
                r.members_joined,
                r.members_failed,
                r.members_not_attempted,
                r.members_requested,
                if r.acknowledgements > 0 {
                    format!("; {} state-1 acknowledgements", r.acknowledgements)
                } else {
                    String::new()
                }
            ),
        );
        out.line("tcrp create", l.create.percentiles_or_none());
        out.line("tcrp join", l.join.percentiles_or_none());
    }

    fn figures(r: &Report, out: &mut Lines) {
        let l = &r.figures.latency_ms;
        let d = &r.figures.deliveries;
        out.line(
            "deliveries",
            format!(
                "{} expected, {} delivered, {:.1}/s in the measured window; late {}, \
                 duplicates {}, echoes {}",
                d.expected, d.delivered, d.per_s, d.late, d.duplicates, d.echoes
            ),
        );
        out.line("udp delivery", l.delivery.percentiles_or_none());
        let loss = &r.figures.udp_loss;
        out.line(
            "udp loss",
            format!(
                "{} of {} deliveries ({:.4}%: {} skipped, {} never after the last arrival); \
                 --loss-max {}%: {}",
                loss.lost,
                d.expected,
                loss.percent,
                loss.gaps,
                loss.tail,
                loss.loss_max_percent,
                if loss.fails_run {
                    "FAILS the run"
                } else if loss.lost > 0 {
                    "within it, does not fail the run"
                } else {
                    "nothing lost"
                }
            ),
        );
        let rb = &r.figures.receive_buffers;
        out.line(
            "loadgen sockets",
            format!(
                "{} UDP sockets, receive buffer asked {} B, granted {}{}; dropped by the \
                 loadgen's own sockets: {}",
                rb.sockets,
                rb.requested_bytes,
                if rb.granted_min_bytes == rb.granted_max_bytes {
                    format!("{} B", rb.granted_min_bytes)
                } else {
                    format!("{}..{} B", rb.granted_min_bytes, rb.granted_max_bytes)
                },
                if rb.capped_sockets > 0 {
                    format!(" (CAPPED by the kernel on {} sockets)", rb.capped_sockets)
                } else {
                    String::new()
                },
                rb.loadgen_dropped
                    .map_or_else(|| "unknown".to_string(), |n| n.to_string())
            ),
        );
        out.line("receive lag", l.receive_lag.percentiles_or_none());
        let e = &r.figures.exit;
        out.line(
            "exit",
            format!(
                "{} of {} exits sent; leave texts {} of {} received, {} missing, {} twice \
                 ({:.3} s{})",
                e.exits_sent,
                e.exits_planned,
                e.leaves_received,
                e.leaves_expected,
                e.leaves_missing,
                e.leaves_again,
                e.duration_ms / 1e3,
                if e.timed_out {
                    ", deadline reached"
                } else {
                    ""
                }
            ),
        );
        out.line("leave texts", l.leave.percentiles_or_none());
    }

    fn own_lags(r: &Report) -> &OwnLagSummaries {
        &r.figures.latency_ms.own
    }

    fn after_errors(r: &Report, out: &mut Lines) {
        if r.others.foreign_texts > 0 {
            out.line(
                "other datagrams",
                format!(
                    "{} not from the server or not this run's",
                    r.others.foreign_texts
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> ValidityInputs {
        ValidityInputs {
            schedule_lateness_p99_us: 0,
            sender_interval_us: 10_000.0,
            delivery_p99_us: None,
            measured_messages: 10,
        }
    }

    fn ocm(lost: u64, expected: u64, loss_max_percent: f64) -> OcmFailures {
        OcmFailures {
            lost,
            lost_percent: if expected == 0 {
                0.0
            } else {
                lost as f64 * 100.0 / expected as f64
            },
            loss_max_percent,
            leaves_missing: 0,
        }
    }

    #[test]
    fn loss_fails_only_above_loss_max() {
        let valid = verdict(&inputs());
        let clean = FailureInputs::default();
        let passed = ocm_outcome(&clean, &ocm(0, 1_000, 0.0), &valid, false);
        assert_eq!((passed.passed, passed.exit_code), (true, 0));
        // The default 0%: one lost delivery fails.
        let one = FailureInputs { losses: 1, ..clean };
        let failed = ocm_outcome(&one, &ocm(1, 1_000, 0.0), &valid, false);
        assert_eq!((failed.passed, failed.exit_code), (false, 1));
        assert!(failed.failures[0].contains("1 lost"), "{failed:?}");
        assert_eq!(failed.failures.len(), 1, "counted once: {failed:?}");
        // 0.1% lost, 0.5% allowed: passes; 1% allowed of 2% lost: fails.
        assert!(ocm_outcome(&one, &ocm(1, 1_000, 0.5), &valid, false).passed);
        let two = FailureInputs {
            losses: 20,
            ..clean
        };
        assert!(!ocm_outcome(&two, &ocm(20, 1_000, 1.0), &valid, false).passed);
        // Loss within the budget does not hide other failures.
        let errors = FailureInputs {
            losses: 1,
            errors: 3,
            ..clean
        };
        let o = ocm_outcome(&errors, &ocm(1, 1_000, 0.5), &valid, false);
        assert_eq!(o.failures, vec!["3 errors".to_string()]);
    }

    #[test]
    fn missing_leave_texts_fail_the_run() {
        let valid = verdict(&inputs());
        let mut failures = ocm(0, 100, 0.0);
        failures.leaves_missing = 2;
        let o = ocm_outcome(&FailureInputs::default(), &failures, &valid, false);
        assert_eq!((o.passed, o.exit_code), (false, 1));
        assert!(o.failures[0].contains("2 leave texts missing"));
    }

    #[test]
    fn the_loadgens_own_lag_and_drops_make_the_run_invalid() {
        assert!(ocm_verdict(&inputs(), Some(900), Some(0)).valid);
        assert!(ocm_verdict(&inputs(), None, None).valid);
        let late = ocm_verdict(&inputs(), Some(1_500), Some(0));
        assert!(!late.valid);
        assert!(late.reasons[0].contains("receive lag"), "{late:?}");
        let dropped = ocm_verdict(&inputs(), Some(10), Some(4));
        assert!(!dropped.valid);
        assert!(dropped.reasons[0].contains("dropped 4"), "{dropped:?}");
        // INVALID fails the exit code only with --strict, as in every scenario.
        let clean = FailureInputs::default();
        assert_eq!(
            ocm_outcome(&clean, &ocm(0, 1, 0.0), &dropped, false).exit_code,
            0
        );
        assert_eq!(
            ocm_outcome(&clean, &ocm(0, 1, 0.0), &dropped, true).exit_code,
            1
        );
    }
}
