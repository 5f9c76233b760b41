//! The CCM report: deliveries, losses, keepalives and the silent users' closes, with the shared
//! verdict and outcome rules (`crate::report`), as text and JSON.

use serde::Serialize;

use super::{Ccm, CcmConfig, CcmOutcome};
#[cfg(test)]
use crate::report::{verdict, ValidityInputs};
use crate::report::{
    Connections, Delivered, FailureInputs, Failures, Head, Lines, Outcome, OwnLagSummaries, RunIds,
    Sections, Shared, Verdict, Window,
};
use crate::stats::LatencySummary;

pub type Report = crate::report::Report<Ccm>;

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub users: usize,
    pub pattern: &'static str,
    pub silent_share: f64,
    pub silent_users: usize,
    pub senders: u32,
    pub rate_per_s: u64,
    #[serde(flatten)]
    pub window: Window,
    pub silent_wait_ms: f64,
    /// Bytes of each message's content (the stamp included).
    pub payload_bytes: usize,
    pub connect_rate_per_s: u64,
    #[serde(flatten)]
    pub ids: RunIds,
}

#[derive(Clone, Debug, Serialize)]
pub struct Deliveries {
    pub delivered: u64,
    /// Deliveries received in the measured window, per second of it.
    pub per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Keepalives {
    /// `Connect` keepalives received by active users; each is answered at once.
    pub received_active: u64,
    pub answered: u64,
    /// `Connect` keepalives received by silent users (never answered).
    pub received_silent: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Silent {
    pub requested: usize,
    pub joined: usize,
    /// Closed by the server (EOF or reset) while the loadgen waited.
    pub closed: u64,
    /// Closed without a `Connect` keepalive first (a contract breach).
    pub closed_without_keepalive: u64,
    /// Still open when the wait ended: the server never closed them.
    pub not_closed: u64,
    /// Close seen minus the user's last write, ms (expected about idle + answer timers).
    pub closed_after_ms: LatencySummary,
    /// First `Connect` minus the user's last write, ms (expected about the idle timer).
    pub keepalive_after_ms: LatencySummary,
    pub wait_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    #[serde(flatten)]
    pub delivered: Delivered<Deliveries>,
    pub keepalives: Keepalives,
    pub silent: Silent,
}

#[derive(Clone, Debug, Serialize)]
pub struct Others {
    /// Text messages that are not this run's.
    pub foreign_messages: u64,
}

/// The shared outcome, plus the CCM-only failure: a silent user the server never closed.
pub fn ccm_outcome(
    inputs: &FailureInputs,
    silent_not_closed: u64,
    verdict: &Verdict,
    strict: bool,
) -> Outcome {
    Failures::default()
        .shared(inputs, verdict, strict)
        .count(silent_not_closed, "silent users never closed by the server")
        .outcome()
}

impl Report {
    pub fn new(cfg: &CcmConfig, seed: u64, strict: bool, run: &CcmOutcome) -> Report {
        let plan = &run.ran.plan;
        let l = &run.latency;
        let shared = Shared::new(
            &run.ran,
            cfg.pace.rate_per_s,
            (&l.own, &l.delivery),
            l.connect.clamped,
        );
        let delivered = Delivered::new(
            Deliveries {
                delivered: run.seq.delivered,
                per_s: plan.per_s(run.delivered_in_window),
            },
            (&l.delivery, &l.connect, &l.own),
            &run.seq,
            run.undelivered,
        );
        let verdict = shared.verdict();
        let outcome = ccm_outcome(
            &delivered.failures(&shared),
            run.silent_not_closed,
            &verdict,
            strict,
        );
        let mut notes = Vec::new();
        if run.silent_requested > 0 && run.silent_closed > 0 {
            notes.push(
                "silent users: the server should close each about idle + answer after its last \
                 write (chatd --ccm-keepalive-idle-ms + --ccm-keepalive-answer-ms, 5000 + 3600 \
                 by default), plus its timer tick"
                    .to_string(),
            );
        }
        let silent_users = run.silent_requested;
        let head = Head {
            target: cfg.target.to_string(),
            settings: Settings {
                users: cfg.users,
                pattern: cfg.pattern.name(),
                silent_share: if cfg.users > 0 {
                    silent_users as f64 / cfg.users as f64
                } else {
                    0.0
                },
                silent_users,
                senders: plan.senders,
                rate_per_s: cfg.pace.rate_per_s,
                window: Window::new(cfg.pace.duration_us, cfg.pace.warmup_us, cfg.pace.drain_us),
                silent_wait_ms: cfg.silent_wait_us as f64 / 1e3,
                payload_bytes: cfg.content_bytes,
                connect_rate_per_s: cfg.pace.connect_rate_per_s,
                ids: RunIds::new(seed, strict, Some(cfg.run_id)),
            },
            connections: Connections::new(run.users_requested, run.users_joined, run.ran.ramp_us),
        };
        let figures = Figures {
            delivered,
            keepalives: Keepalives {
                received_active: run.keepalives_active,
                answered: run.keepalives_answered,
                received_silent: run.keepalives_silent,
            },
            silent: Silent {
                requested: run.silent_requested,
                joined: run.silent_joined,
                closed: run.silent_closed,
                closed_without_keepalive: run.silent_closed_without_keepalive,
                not_closed: run.silent_not_closed,
                closed_after_ms: l.silent_closed_after.summary(),
                keepalive_after_ms: l.silent_keepalive_after.summary(),
                wait_ms: run.silent_wait_used_us as f64 / 1e3,
            },
        };
        let others = Others {
            foreign_messages: run.foreign_messages,
        };
        shared.report("ccm", (head, figures, others), notes, verdict, outcome)
    }
}

impl Sections for Ccm {
    type Head = Head<Settings>;
    type Figures = Figures;
    type Others = Others;
    const DRAIN_TIMED_OUT: &'static str = "deadline reached with messages undelivered";
    const DRAIN_DONE: &'static str = "every written message was delivered";

    fn opening(r: &Report, out: &mut Lines) {
        let s = &r.head.settings;
        out.scenario(
            format!(
                "CCM against {}: {} users ({}), {} silent",
                r.head.target, s.users, s.pattern, s.silent_users
            ),
            s.senders,
            format!("{} msg/s", s.rate_per_s),
            s.window.duration_ms,
            s.window.warmup_ms,
            (s.payload_bytes, "contents"),
        );
        out.connections(
            &r.head.connections,
            "requested",
            "",
            Some(("identify", &r.figures.delivered.latency_ms.connect)),
        );
    }

    fn figures(r: &Report, out: &mut Lines) {
        let f = &r.figures.delivered;
        out.line(
            "deliveries",
            format!(
                "{} delivered, {:.1}/s in the measured window",
                f.deliveries.delivered, f.deliveries.per_s
            ),
        );
        out.line("delivery", f.latency_ms.delivery.percentiles_or_none());
        out.line(
            "losses",
            format!(
                "{} ({} gaps, {} never delivered); duplicates or reorders {}",
                f.losses.total, f.losses.gaps, f.losses.undelivered, f.duplicates_or_reorders
            ),
        );
        out.line(
            "keepalives",
            format!(
                "{} received by active users, {} answered; {} received by silent users",
                r.figures.keepalives.received_active,
                r.figures.keepalives.answered,
                r.figures.keepalives.received_silent
            ),
        );
        let sl = &r.figures.silent;
        if sl.requested > 0 {
            out.line(
                "silent users",
                format!(
                    "{} requested, {} joined, {} closed by the server, {} never closed, {} closed \
                     without a keepalive (waited {:.3} s)",
                    sl.requested,
                    sl.joined,
                    sl.closed,
                    sl.not_closed,
                    sl.closed_without_keepalive,
                    sl.wait_ms / 1e3
                ),
            );
            out.line(
                "closed after",
                format!(
                    "p50 {:.3} ms  max {:.3} ms after their last write ({} closed); keepalive \
                     after p50 {:.3} ms max {:.3} ms",
                    sl.closed_after_ms.p50_ms,
                    sl.closed_after_ms.max_ms,
                    sl.closed,
                    sl.keepalive_after_ms.p50_ms,
                    sl.keepalive_after_ms.max_ms
                ),
            );
        }
    }

    fn own_lags(r: &Report) -> &OwnLagSummaries {
        &r.figures.delivered.latency_ms.own
    }

    fn after_errors(r: &Report, out: &mut Lines) {
        if r.others.foreign_messages > 0 {
            out.line(
                "other messages",
                format!("{} not this run's", r.others.foreign_messages),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Verdict {
        verdict(&ValidityInputs {
            schedule_lateness_p99_us: 0,
            sender_interval_us: 10_000.0,
            delivery_p99_us: None,
            measured_messages: 10,
        })
    }

    #[test]
    fn a_silent_user_never_closed_fails_the_run() {
        let clean = FailureInputs::default();
        let passed = ccm_outcome(&clean, 0, &valid(), false);
        assert_eq!((passed.passed, passed.exit_code), (true, 0));
        let failed = ccm_outcome(&clean, 2, &valid(), false);
        assert_eq!((failed.passed, failed.exit_code), (false, 1));
        assert!(failed.failures[0].contains("2 silent users"));
        let lost = FailureInputs {
            losses: 1,
            ..FailureInputs::default()
        };
        assert_eq!(ccm_outcome(&lost, 0, &valid(), false).exit_code, 1);
    }
}
