//! The MATOU report: public deliveries, brokered links, join and sign-out notices, with the
//! shared verdict and outcome rules (`crate::report`), as text and JSON.

use serde::Serialize;

use super::{Matou, MatouConfig, MatouOutcome, Notices};
#[cfg(test)]
use crate::report::{verdict, ValidityInputs};
use crate::report::{
    Connections, Delivered, Deliveries, FailureInputs, Failures, Head, Lines, Outcome,
    OwnLagSummaries, RunIds, Sections, Shared, Verdict, Window,
};
use crate::stats::LatencySummary;

pub type Report = crate::report::Report<Matou>;

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub users: usize,
    pub senders_requested: usize,
    pub senders: u32,
    pub rate_per_s: u64,
    /// rate x users: every message reaches every user.
    pub planned_deliveries_per_s: u64,
    pub private_rate_per_s: u64,
    #[serde(flatten)]
    pub window: Window,
    pub sign_out_wait_ms: f64,
    /// Bytes of each public message (the stamp included).
    pub payload_bytes: usize,
    pub connect_rate_per_s: u64,
    #[serde(flatten)]
    pub ids: RunIds,
}

#[derive(Clone, Debug, Serialize)]
pub struct LinksNotSent {
    pub total: u64,
    /// Every pair drawn already had a link open.
    pub busy: u64,
    /// Src or Dst had lost its connection.
    pub connection_lost: u64,
    pub queue_full: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LinkFigures {
    pub target_rate_per_s: f64,
    pub planned: u64,
    /// PRIVATE_REQUESTs queued.
    pub requested: u64,
    /// Requests queued in the measured window, per second of it.
    pub requested_per_s: f64,
    pub complete: u64,
    /// Links completed in the measured window, per second of it.
    pub completed_per_s: f64,
    /// Requested and never complete: losses.
    pub incomplete: u64,
    pub stuck_requested: u64,
    pub stuck_accepted: u64,
    pub stuck_ports_sent: u64,
    /// Src or Dst lost its connection with the link open.
    pub broken: u64,
    pub not_sent: LinksNotSent,
    /// A PRIVATE_*_ADDRESS with an address other than the peer's.
    pub address_mismatches: u64,
    /// PRIVATE_SRC_ADDRESS at Dst minus the request's intended time.
    pub latency_ms: LatencySummary,
    /// PRIVATE_REQUEST_NOTIFY at Dst minus the request's intended time.
    pub notify_latency_ms: LatencySummary,
}

#[derive(Clone, Debug, Serialize)]
pub struct NoticeFigures {
    /// Notices about this run's users, duplicates included.
    pub received: u64,
    /// One per pair of users that count (and, for joins, one per user about itself).
    pub expected: u64,
    pub duplicates: u64,
    pub own_missing: u64,
    /// Pairs where neither user heard about the other.
    pub pairs_missing: u64,
    /// Pairs where both heard about the other.
    pub pairs_both: u64,
}

impl NoticeFigures {
    fn new(notices: &Notices) -> NoticeFigures {
        NoticeFigures {
            received: notices.received,
            expected: notices.check.expected,
            duplicates: notices.duplicates,
            own_missing: notices.check.own_missing,
            pairs_missing: notices.check.pairs_missing,
            pairs_both: notices.check.pairs_both,
        }
    }

    fn problems(&self) -> u64 {
        self.duplicates + self.own_missing + self.pairs_missing + self.pairs_both
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SignOut {
    /// Users that sent PUBLIC_SIGN_OUT.
    pub signed_out: u64,
    /// Of them, closed by the server within the wait.
    pub closed: u64,
    pub not_closed: u64,
    pub wait_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    /// Its schedule lateness covers public messages and link requests.
    #[serde(flatten)]
    pub delivered: Delivered<Deliveries>,
    pub links: LinkFigures,
    pub join_notices: NoticeFigures,
    /// Informational: checked only over the users the server closed after their sign-out.
    pub sign_out_notices: NoticeFigures,
    pub sign_out: SignOut,
}

#[derive(Clone, Debug, Serialize)]
pub struct Others {
    /// ERROR packets received (each also counted as a protocol or connect error).
    pub error_packets: u64,
    /// CONNECT_RESPONSE 0 (each also a connect error).
    pub refusals: u64,
    /// Bytes that were not a MATOU packet (each also a protocol error; the user is lost).
    pub decode_errors: u64,
    /// Broadcasts that are not this run's, and notices about users that are not.
    pub foreign_messages: u64,
    pub foreign_notices: u64,
}

/// What fails a MATOU run beyond the shared rules.
#[derive(Clone, Copy, Debug, Default)]
pub struct MatouFailures {
    pub links_incomplete: u64,
    pub links_not_sent: u64,
    /// Join notices missing, duplicated, or told both ways.
    pub join_notice_problems: u64,
    pub not_closed_after_sign_out: u64,
}

/// The shared outcome, plus the MATOU-only failures.
pub fn matou_outcome(
    inputs: &FailureInputs,
    extra: &MatouFailures,
    verdict: &Verdict,
    strict: bool,
) -> Outcome {
    Failures::default()
        .shared(inputs, verdict, strict)
        .count(extra.links_incomplete, "links incomplete")
        .count(extra.links_not_sent, "links not requested")
        .count(extra.join_notice_problems, "join notice problems")
        .count(
            extra.not_closed_after_sign_out,
            "users not closed after PUBLIC_SIGN_OUT",
        )
        .outcome()
}

impl Report {
    pub fn new(
        cfg: &MatouConfig,
        senders_requested: usize,
        strict: bool,
        run: &MatouOutcome,
    ) -> Report {
        let plan = &run.ran.plan;
        let l = &run.latency;
        let shared = Shared::new(
            &run.ran,
            cfg.pace.rate_per_s,
            (&l.own, &l.delivery),
            l.connect.clamped + l.link.clamped,
        );
        let delivered = Delivered::new(
            Deliveries {
                expected: run.expected_deliveries,
                delivered: run.seq.delivered,
                per_s: plan.per_s(run.delivered_in_window),
            },
            (&l.delivery, &l.connect, &l.own),
            &run.seq,
            run.undelivered,
        );
        let links_not_sent = LinksNotSent {
            total: run.links_not_sent_busy
                + run.links_not_sent_connection_lost
                + run.links_not_sent_queue_full,
            busy: run.links_not_sent_busy,
            connection_lost: run.links_not_sent_connection_lost,
            queue_full: run.links_not_sent_queue_full,
        };
        let join_notices = NoticeFigures::new(&run.join_notices);
        let sign_out_notices = NoticeFigures::new(&run.sign_out_notices);
        let not_closed = run.signed_out - run.closed_after_sign_out;
        let verdict = shared.verdict();
        let outcome = matou_outcome(
            &delivered.failures(&shared),
            &MatouFailures {
                links_incomplete: run.links.incomplete(),
                links_not_sent: links_not_sent.total,
                join_notice_problems: join_notices.problems(),
                not_closed_after_sign_out: not_closed,
            },
            &verdict,
            strict,
        );
        let mut notes = Vec::new();
        if cfg.private_rate_per_s > 0 && run.link_plan.is_none() {
            notes.push("no links: fewer than two users joined".to_string());
        }
        if sign_out_notices.problems() > 0 {
            notes.push(format!(
                "sign-out notices do not add up ({} pairs missing, {} both ways, {} duplicates): \
                 informational, since a user the server closes right after its sign-out may not \
                 have read the notices queued before it",
                sign_out_notices.pairs_missing,
                sign_out_notices.pairs_both,
                sign_out_notices.duplicates
            ));
        }
        let link_plan = run.link_plan.as_ref();
        let link_duration_s = link_plan.map_or(0.0, |p| p.duration_us as f64 / 1e6);
        let link_per_s = |count: u64| {
            if link_duration_s > 0.0 {
                count as f64 / link_duration_s
            } else {
                0.0
            }
        };
        let head = Head {
            target: cfg.target.to_string(),
            settings: Settings {
                users: cfg.users,
                senders_requested,
                senders: plan.senders,
                rate_per_s: cfg.pace.rate_per_s,
                planned_deliveries_per_s: cfg.pace.rate_per_s * cfg.users as u64,
                private_rate_per_s: cfg.private_rate_per_s,
                window: Window::new(cfg.pace.duration_us, cfg.pace.warmup_us, cfg.pace.drain_us),
                sign_out_wait_ms: cfg.sign_out_wait_us as f64 / 1e3,
                payload_bytes: cfg.message_bytes,
                connect_rate_per_s: cfg.pace.connect_rate_per_s,
                ids: RunIds::new(cfg.pace.seed, strict, Some(cfg.run_id)),
            },
            connections: Connections::new(run.users_requested, run.users_joined, run.ran.ramp_us),
        };
        let figures = Figures {
            delivered,
            links: LinkFigures {
                target_rate_per_s: cfg.private_rate_per_s as f64,
                planned: link_plan.map_or(0, |p| p.messages),
                requested: run.links.opened,
                requested_per_s: link_per_s(run.links_requested_in_window),
                complete: run.links.complete,
                completed_per_s: link_per_s(run.links_completed_in_window),
                incomplete: run.links.incomplete(),
                stuck_requested: run.links.stuck_requested,
                stuck_accepted: run.links.stuck_accepted,
                stuck_ports_sent: run.links.stuck_ports_sent,
                broken: run.links.broken,
                not_sent: links_not_sent,
                address_mismatches: run.address_mismatches,
                latency_ms: l.link.summary(),
                notify_latency_ms: l.link_notify.summary(),
            },
            join_notices,
            sign_out_notices,
            sign_out: SignOut {
                signed_out: run.signed_out,
                closed: run.closed_after_sign_out,
                not_closed,
                wait_ms: run.sign_out_wait_used_us as f64 / 1e3,
            },
        };
        let others = Others {
            error_packets: run.error_packets,
            refusals: run.refusals,
            decode_errors: run.decode_errors,
            foreign_messages: run.foreign_messages,
            foreign_notices: run.foreign_notices,
        };
        shared.report("matou", (head, figures, others), notes, verdict, outcome)
    }
}

impl Sections for Matou {
    type Head = Head<Settings>;
    type Figures = Figures;
    type Others = Others;
    const DRAIN_TIMED_OUT: &'static str =
        "deadline reached with messages undelivered or links incomplete";
    const DRAIN_DONE: &'static str =
        "every written message reached every user, every link completed";

    fn opening(r: &Report, out: &mut Lines) {
        let s = &r.head.settings;
        out.scenario(
            format!("MATOU against {}: {} users", r.head.target, s.users),
            s.senders,
            format!(
                "{} msg/s ({} deliveries/s) and {} links/s",
                s.rate_per_s, s.planned_deliveries_per_s, s.private_rate_per_s
            ),
            s.window.duration_ms,
            s.window.warmup_ms,
            (s.payload_bytes, "messages"),
        );
        out.connections(
            &r.head.connections,
            "requested",
            &format!(" ({} refused)", r.others.refusals),
            Some(("login", &r.figures.delivered.latency_ms.connect)),
        );
        let jn = &r.figures.join_notices;
        out.line(
            "join notices",
            format!(
                "{} received of {} expected; {} duplicates, {} users never told of themselves, \
                 {} pairs told neither way, {} both ways",
                jn.received,
                jn.expected,
                jn.duplicates,
                jn.own_missing,
                jn.pairs_missing,
                jn.pairs_both
            ),
        );
    }

    fn figures(r: &Report, out: &mut Lines) {
        let f = &r.figures.delivered;
        let k = &r.figures.links;
        out.line(
            "deliveries",
            format!(
                "{} expected, {} delivered, {:.1}/s in the measured window",
                f.deliveries.expected, f.deliveries.delivered, f.deliveries.per_s
            ),
        );
        out.line(
            "delivery latency",
            f.latency_ms.delivery.percentiles_or_none(),
        );
        out.line(
            "losses",
            format!(
                "{} ({} in gaps, {} never delivered); duplicates or reorders {}",
                f.losses.total, f.losses.gaps, f.losses.undelivered, f.duplicates_or_reorders
            ),
        );
        out.line(
            "links",
            format!(
                "target {:.1}/s, requested {:.1}/s, completed {:.1}/s ({} planned, {} requested, \
                 {} complete)",
                k.target_rate_per_s,
                k.requested_per_s,
                k.completed_per_s,
                k.planned,
                k.requested,
                k.complete
            ),
        );
        out.line("link latency", k.latency_ms.percentiles_or_none());
        out.line("link notify", k.notify_latency_ms.percentiles_or_none());
        out.line(
            "links lost",
            format!(
                "{} incomplete (stuck: {} requested, {} accepted, {} ports sent; {} broken by a \
                 lost connection); {} not requested (busy {}, connection lost {}, queue full {}); \
                 {} wrong addresses",
                k.incomplete,
                k.stuck_requested,
                k.stuck_accepted,
                k.stuck_ports_sent,
                k.broken,
                k.not_sent.total,
                k.not_sent.busy,
                k.not_sent.connection_lost,
                k.not_sent.queue_full,
                k.address_mismatches
            ),
        );
    }

    fn own_lags(r: &Report) -> &OwnLagSummaries {
        &r.figures.delivered.latency_ms.own
    }

    fn after_lags(r: &Report, out: &mut Lines) {
        let so = &r.figures.sign_out;
        let sn = &r.figures.sign_out_notices;
        out.line(
            "sign-out",
            format!(
                "{} signed out, {} closed by the server, {} not closed (waited {:.3} s); \
                 notices {} received of {} expected",
                so.signed_out,
                so.closed,
                so.not_closed,
                so.wait_ms / 1e3,
                sn.received,
                sn.expected
            ),
        );
    }

    fn errors_more(r: &Report) -> String {
        let o = &r.others;
        format!(
            " (ERROR packets {}, refusals {}, decode errors {})",
            o.error_packets, o.refusals, o.decode_errors
        )
    }

    fn after_errors(r: &Report, out: &mut Lines) {
        let o = &r.others;
        if o.foreign_messages + o.foreign_notices > 0 {
            out.line(
                "other clients",
                format!(
                    "{} broadcasts and {} notices not this run's",
                    o.foreign_messages, o.foreign_notices
                ),
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
    fn matou_failures_fail_the_run() {
        let clean = FailureInputs::default();
        let none = MatouFailures::default();
        let passed = matou_outcome(&clean, &none, &valid(), false);
        assert_eq!((passed.passed, passed.exit_code), (true, 0));
        for extra in [
            MatouFailures {
                links_incomplete: 2,
                ..none
            },
            MatouFailures {
                links_not_sent: 1,
                ..none
            },
            MatouFailures {
                join_notice_problems: 1,
                ..none
            },
            MatouFailures {
                not_closed_after_sign_out: 3,
                ..none
            },
        ] {
            let failed = matou_outcome(&clean, &extra, &valid(), false);
            assert_eq!((failed.passed, failed.exit_code), (false, 1), "{extra:?}");
            assert_eq!(failed.failures.len(), 1);
        }
        let lost = FailureInputs { losses: 1, ..clean };
        let both = matou_outcome(
            &lost,
            &MatouFailures {
                links_incomplete: 2,
                ..none
            },
            &valid(),
            false,
        );
        assert_eq!(
            both.failures,
            vec!["1 lost".to_string(), "2 links incomplete".to_string()]
        );
    }
}
