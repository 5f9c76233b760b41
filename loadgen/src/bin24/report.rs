//! The BIN24 report: the fate of every message, the latencies by kind, the verdict and the
//! outcome, as text and JSON. The verdict rule and the shared figures are ROOM's
//! (`crate::report`).

use serde::Serialize;

use super::{Bin24, Bin24Config, Bin24Outcome, Tally};
#[cfg(test)]
use crate::report::{verdict, ValidityInputs};
use crate::report::{
    Connections, Failures, Lines, Outcome, OwnLagSummaries, RunIds, Sections, Shared, Verdict,
    Window,
};
use crate::stats::LatencySummary;

pub type Report = crate::report::Report<Bin24>;

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub users: usize,
    pub pattern: &'static str,
    pub offline_share: f64,
    pub offline_users: usize,
    pub senders: u32,
    pub rate_per_s: u64,
    #[serde(flatten)]
    pub window: Window,
    /// Bytes of each message's body (the frame is 24 bytes more).
    pub payload_bytes: usize,
    pub connect_rate_per_s: u64,
    #[serde(flatten)]
    pub ids: RunIds,
}

#[derive(Clone, Debug, Serialize)]
pub struct Reconnects {
    /// Users connected after the drain: the offline ones, and any other with stored
    /// messages to collect.
    pub requested: usize,
    pub joined: usize,
    /// Of `requested`: users that had been connected before (closed and connected again).
    pub previously_online: usize,
    /// Extra connections of users the server closed while stored messages were missing.
    pub retries: u64,
    /// type 2 frames of this run received (duplicates included).
    pub stored_frames: u64,
    pub duration_ms: f64,
    pub timed_out: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Answers {
    /// First answers received in the measured window, per second of it.
    pub per_s: f64,
    /// Written messages still without any answer at the end.
    pub missing: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latencies {
    /// "200" at the sender minus intended send time.
    pub ack_200: LatencySummary,
    /// "300" at the sender minus intended send time: the store's durable commit included.
    pub ack_300: LatencySummary,
    /// "507" at the sender minus intended send time.
    pub ack_507: LatencySummary,
    /// type 0 at the recipient minus intended send time.
    pub delivery_live: LatencySummary,
    /// type 2 at the recipient minus the recipient's intended reconnect time.
    pub delivery_stored_after_reconnect: LatencySummary,
    /// First answer minus the actual write (diagnostic: hides the loadgen's own lateness).
    pub service_time: LatencySummary,
    /// Hello echoed minus intended connect time.
    pub connect: LatencySummary,
    pub reconnect: LatencySummary,
    #[serde(flatten)]
    pub own: OwnLagSummaries,
}

#[derive(Clone, Debug, Serialize)]
pub struct Head {
    pub target: String,
    pub settings: Settings,
    pub connections: Connections,
    pub reconnects: Reconnects,
}

#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    /// Every written message by fate, with the duplicates.
    pub messages: Tally,
    pub answers: Answers,
    /// Live deliveries received in the measured window, per second of it.
    pub deliveries_live_per_s: f64,
    pub latency_ms: Latencies,
}

#[derive(Clone, Debug, Serialize)]
pub struct Others {
    /// Frames that are not this run's (an earlier run's stored messages, another client's).
    pub foreign_frames: u64,
    /// This run's hellos that came back as type 2 (stored when the server closed a connection
    /// before the hello was answered).
    pub stored_hellos: u64,
}

/// Exit 0 when every written message is accounted for (live + "200", "300" + type 2, or a
/// "507"), nothing was left unsent and there were no errors; 1 otherwise, or on an INVALID run
/// with `strict`. Allowed duplicates (at-least-once after a reconnect) do not fail a run.
pub fn outcome(
    tally: &Tally,
    errors: u64,
    not_sent: u64,
    verdict: &Verdict,
    strict: bool,
) -> Outcome {
    Failures::default()
        .count(tally.lost.total, "lost")
        .count(
            tally.incomplete.total,
            "delivered without the matching answer",
        )
        .count(tally.duplicates.unexpected, "duplicated in the normal flow")
        .count(
            tally.duplicates.repeated_answers + tally.duplicates.conflicting_answers,
            "repeated or conflicting answers",
        )
        .count(errors, "errors")
        .count(not_sent, "not sent")
        .invalid(verdict, strict)
        .outcome()
}

impl Report {
    pub fn new(cfg: &Bin24Config, seed: u64, strict: bool, run: &Bin24Outcome) -> Report {
        let plan = &run.ran.plan;
        let l = &run.latency;
        let shared = Shared::new(
            &run.ran,
            cfg.pace.rate_per_s,
            (&l.own, &l.delivery_live),
            l.ack_delivered.clamped + l.ack_stored.clamped,
        );
        let verdict = shared.verdict();
        let outcome = outcome(
            &run.tally,
            shared.error_count,
            shared.not_sent.total,
            &verdict,
            strict,
        );
        let offline_users = cfg.offline.iter().filter(|&&o| o).count();
        let mut notes = Vec::new();
        if run.tally.duplicates.allowed > 0 {
            notes.push(format!(
                "{} extra copies after a reconnect: delivered live, then from the store after \
                 the answer timed out; or from the store again after the server closed the \
                 recipient mid-backlog (at-least-once, allowed by the contract)",
                run.tally.duplicates.allowed
            ));
        }
        if run.foreign_frames > 0 {
            notes.push(format!(
                "{} frames were not this run's (stored by an earlier run, or another client's): \
                 counted apart, not as errors",
                run.foreign_frames
            ));
        }
        if run.reconnect_of_online > 0 {
            notes.push(format!(
                "{} users that had been online were reconnected to collect messages the server \
                 stored for them",
                run.reconnect_of_online
            ));
        }
        if offline_users > 0 && run.tally.stored == 0 && run.tally.full == 0 {
            notes.push(
                "no message took the store path: the offline users' partners did not send"
                    .to_string(),
            );
        }
        let head = Head {
            target: cfg.target.to_string(),
            settings: Settings {
                users: cfg.users,
                pattern: cfg.pattern.name(),
                offline_share: if cfg.users > 0 {
                    offline_users as f64 / cfg.users as f64
                } else {
                    0.0
                },
                offline_users,
                senders: plan.senders,
                rate_per_s: cfg.pace.rate_per_s,
                window: Window::new(cfg.pace.duration_us, cfg.pace.warmup_us, cfg.pace.drain_us),
                payload_bytes: cfg.body_bytes,
                connect_rate_per_s: cfg.pace.connect_rate_per_s,
                ids: RunIds::new(seed, strict, Some(cfg.run_id)),
            },
            connections: Connections::new(run.online_requested, run.online_joined, run.ran.ramp_us),
            reconnects: Reconnects {
                requested: run.reconnect_requested,
                joined: run.reconnect_joined,
                previously_online: run.reconnect_of_online,
                retries: run.reconnect_retries,
                stored_frames: run.stored_frames,
                duration_ms: run.reconnect_used_us as f64 / 1e3,
                timed_out: run.reconnect_timed_out,
            },
        };
        let figures = Figures {
            messages: run.tally,
            answers: Answers {
                per_s: plan.per_s(run.answered_in_window),
                missing: run.tally.lost.no_answer
                    + run.tally.lost.sender_closed
                    + run.tally.incomplete.delivered_no_answer
                    + run.tally.incomplete.sender_closed,
            },
            deliveries_live_per_s: plan.per_s(run.delivered_live_in_window),
            latency_ms: Latencies {
                ack_200: l.ack_delivered.summary(),
                ack_300: l.ack_stored.summary(),
                ack_507: l.ack_full.summary(),
                delivery_live: l.delivery_live.summary(),
                delivery_stored_after_reconnect: l.delivery_stored.summary(),
                service_time: l.service_time.summary(),
                connect: l.connect.summary(),
                reconnect: l.reconnect.summary(),
                own: OwnLagSummaries::of(&l.own),
            },
        };
        let others = Others {
            foreign_frames: run.foreign_frames,
            stored_hellos: run.stored_hellos,
        };
        shared.report("bin24", (head, figures, others), notes, verdict, outcome)
    }
}

impl Sections for Bin24 {
    type Head = Head;
    type Figures = Figures;
    type Others = Others;
    const DRAIN_TIMED_OUT: &'static str = "deadline reached with answers missing";
    const DRAIN_DONE: &'static str = "every written message had its answer";

    fn opening(r: &Report, out: &mut Lines) {
        let s = &r.head.settings;
        out.scenario(
            format!(
                "BIN24 against {}: {} users ({}), {} offline",
                r.head.target, s.users, s.pattern, s.offline_users
            ),
            s.senders,
            format!("{} msg/s", s.rate_per_s),
            s.window.duration_ms,
            s.window.warmup_ms,
            (s.payload_bytes, "bodies"),
        );
        out.connections(
            &r.head.connections,
            "online requested",
            "",
            Some(("connect", &r.figures.latency_ms.connect)),
        );
    }

    fn figures(r: &Report, out: &mut Lines) {
        let l = &r.figures.latency_ms;
        let t = &r.figures.messages;
        out.line(
            "messages",
            format!(
                "{} sent: {} live (type 0 + \"200\"), {} stored (\"300\" + type 2), {} refused \
                 \"507\", {} lost, {} incomplete",
                t.written, t.live, t.stored, t.full, t.lost.total, t.incomplete.total
            ),
        );
        if t.lost.total > 0 {
            out.line(
                "",
                format!(
                    "lost: {} never answered, {} never answered after the server closed their \
                     sender, {} \"300\" but never delivered from the store, {} \"200\" but never \
                     delivered",
                    t.lost.no_answer,
                    t.lost.sender_closed,
                    t.lost.stored_never_delivered,
                    t.lost.answered_never_delivered
                ),
            );
        }
        if t.incomplete.total > 0 {
            out.line(
                "",
                format!(
                    "incomplete: {} delivered but never answered, {} delivered but their sender \
                     was closed before the answer, {} delivered live then \"300\" but not \
                     redelivered, {} delivered from the store without a \"300\"",
                    t.incomplete.delivered_no_answer,
                    t.incomplete.sender_closed,
                    t.incomplete.not_redelivered,
                    t.incomplete.store_delivery_without_300
                ),
            );
        }
        out.line(
            "answers",
            format!(
                "{:.1}/s in the measured window; {} messages never answered",
                r.figures.answers.per_s, r.figures.answers.missing
            ),
        );
        out.line("ack 200", l.ack_200.percentiles_or_none());
        out.line("ack 300 (stored)", l.ack_300.percentiles_or_none());
        if l.ack_507.count > 0 {
            out.line("ack 507 (full)", l.ack_507.percentiles_or_none());
        }
        out.line("delivery live", l.delivery_live.percentiles_or_none());
        out.line(
            "reconnects",
            format!(
                "{} users ({} had been online), {} joined, {} retries, {} stored frames in \
                 {:.3} s{}; reconnect p50 {:.3} ms max {:.3} ms",
                r.head.reconnects.requested,
                r.head.reconnects.previously_online,
                r.head.reconnects.joined,
                r.head.reconnects.retries,
                r.head.reconnects.stored_frames,
                r.head.reconnects.duration_ms / 1e3,
                if r.head.reconnects.timed_out {
                    " (deadline reached with stored messages missing)"
                } else {
                    ""
                },
                l.reconnect.p50_ms,
                l.reconnect.max_ms
            ),
        );
        out.line(
            "stored delivery",
            format!(
                "from reconnect: {}",
                l.delivery_stored_after_reconnect.percentiles_or_none()
            ),
        );
        out.line(
            "service time",
            format!(
                "p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (first answer minus actual write; \
                 diagnostic only)",
                l.service_time.p50_ms, l.service_time.p99_ms, l.service_time.max_ms
            ),
        );
    }

    fn own_lags(r: &Report) -> &OwnLagSummaries {
        &r.figures.latency_ms.own
    }

    fn after_lags(r: &Report, out: &mut Lines) {
        let t = &r.figures.messages;
        out.line(
            "duplicates",
            format!(
                "{} allowed (redelivered from the store after a reconnect), {} in the normal \
                 flow; {} repeated answers, {} conflicting",
                t.duplicates.allowed,
                t.duplicates.unexpected,
                t.duplicates.repeated_answers,
                t.duplicates.conflicting_answers
            ),
        );
    }

    fn after_errors(r: &Report, out: &mut Lines) {
        let o = &r.others;
        if o.foreign_frames > 0 || o.stored_hellos > 0 {
            out.line(
                "other frames",
                format!(
                    "{} not this run's, {} of its hellos back as type 2 (not counted as messages)",
                    o.foreign_frames, o.stored_hellos
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bin24::ledger::{DuplicateCounts, IncompleteCounts, LostCounts};

    fn valid() -> Verdict {
        verdict(&ValidityInputs {
            schedule_lateness_p99_us: 0,
            sender_interval_us: 10_000.0,
            delivery_p99_us: None,
            measured_messages: 10,
        })
    }

    #[test]
    fn accounted_messages_pass_whatever_their_path() {
        let clean = Tally {
            written: 10,
            live: 6,
            stored: 3,
            stored_after_live_delivery: 1,
            full: 1,
            duplicates: DuplicateCounts {
                allowed: 1,
                ..DuplicateCounts::default()
            },
            ..Tally::default()
        };
        let o = outcome(&clean, 0, 0, &valid(), false);
        assert!(o.passed, "{o:?}");
        assert_eq!(o.exit_code, 0);
    }

    #[test]
    fn each_failure_fails_alone() {
        let base = Tally::default();
        let cases = [
            Tally {
                lost: LostCounts {
                    total: 1,
                    no_answer: 1,
                    ..LostCounts::default()
                },
                ..base
            },
            Tally {
                incomplete: IncompleteCounts {
                    total: 1,
                    delivered_no_answer: 1,
                    ..IncompleteCounts::default()
                },
                ..base
            },
            Tally {
                duplicates: DuplicateCounts {
                    unexpected: 1,
                    ..DuplicateCounts::default()
                },
                ..base
            },
            Tally {
                duplicates: DuplicateCounts {
                    conflicting_answers: 1,
                    ..DuplicateCounts::default()
                },
                ..base
            },
        ];
        for tally in cases {
            let o = outcome(&tally, 0, 0, &valid(), false);
            assert_eq!((o.passed, o.exit_code, o.failures.len()), (false, 1, 1));
        }
        assert_eq!(
            outcome(&base, 2, 0, &valid(), false).failures,
            vec!["2 errors"]
        );
        assert_eq!(
            outcome(&base, 0, 3, &valid(), false).failures,
            vec!["3 not sent"]
        );
    }

    #[test]
    fn invalid_fails_only_when_strict() {
        let invalid = verdict(&ValidityInputs {
            schedule_lateness_p99_us: 50_000,
            sender_interval_us: 10_000.0,
            delivery_p99_us: None,
            measured_messages: 10,
        });
        assert!(!invalid.valid);
        let clean = Tally::default();
        assert!(outcome(&clean, 0, 0, &invalid, false).passed);
        let strict = outcome(&clean, 0, 0, &invalid, true);
        assert_eq!(strict.exit_code, 1);
        assert!(strict.failures[0].contains("INVALID"));
    }
}
