//! The ROOM (and RESP) report's own sections: the plan's settings, how the members joined,
//! deliveries to every member, sequence losses and the server's notices; the shared sections
//! and rules are `crate::report`'s.

use serde::Serialize;

use super::{Room, RoomConfig, RoomOutcome, Wire};
use crate::record::NoticeCounts;
use crate::report::{
    outcome, Connections, Delivered, Deliveries, Head, Lines, OwnLagSummaries, RunIds, Sections,
    Shared, Window,
};

pub type Report = crate::report::Report<Room>;

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub clients: usize,
    pub senders_requested: usize,
    pub senders: u32,
    pub rate_per_s: u64,
    #[serde(flatten)]
    pub window: Window,
    pub payload_bytes: usize,
    pub connect_rate_per_s: u64,
    #[serde(flatten)]
    pub ids: RunIds,
}

#[derive(Clone, Debug, Serialize)]
pub struct Others {
    pub notices: NoticeCounts,
    /// Bytes of records still unfinished in the receivers at the end.
    pub incomplete_bytes_at_end: u64,
}

impl Report {
    pub fn new(
        cfg: &RoomConfig,
        senders_requested: usize,
        strict: bool,
        run: &RoomOutcome,
    ) -> Report {
        let plan = &run.ran.plan;
        let shared = Shared::new(
            &run.ran,
            cfg.pace.rate_per_s,
            (&run.own, &run.delivery_latency),
            run.connect_latency.clamped,
        );
        let figures = Delivered::new(
            Deliveries {
                expected: run.ran.sends.sent * run.clients_joined as u64,
                delivered: run.seq.delivered,
                per_s: plan.per_s(run.delivered_in_window),
            },
            (&run.delivery_latency, &run.connect_latency, &run.own),
            &run.seq,
            run.undelivered,
        );
        let verdict = shared.verdict();
        let outcome = outcome(&figures.failures(&shared), &verdict, strict);
        let mut notes = Vec::new();
        let resp = matches!(cfg.wire, Wire::Resp { .. });
        if resp {
            notes.push(format!(
                "RESP: {} PUBLISH replies read, each checked against the subscribers joined \
                 (a mismatch is a protocol error); one extra connection per sender publishes",
                run.publish_replies
            ));
        }
        if run.ran.errors.protocol > 0 && cfg.wire == Wire::Web {
            notes.push(
                "WEB: chatd answers `error rate-limited` to a web user's messages beyond its \
                 --web-messages-per-s-max (default 20/s): each sender here sends --rate / \
                 --senders per second"
                    .to_string(),
            );
        }
        if run.ran.errors.protocol > 0 && cfg.wire == Wire::Room {
            notes.push(
                "malformed records: ROOM relays what one read returned, so a message the server \
                 read in two pieces can reach members with another sender's chunk in between \
                 (the server fell behind, or messages exceed its read size); the torn message \
                 also counts as lost"
                    .to_string(),
            );
        }
        let head = Head {
            target: cfg.target.to_string(),
            settings: Settings {
                clients: cfg.clients,
                senders_requested,
                senders: plan.senders,
                rate_per_s: cfg.pace.rate_per_s,
                window: Window::new(cfg.pace.duration_us, cfg.pace.warmup_us, cfg.pace.drain_us),
                payload_bytes: cfg.message_bytes,
                connect_rate_per_s: cfg.pace.connect_rate_per_s,
                ids: RunIds::new(cfg.pace.seed, strict, None),
            },
            connections: Connections::new(
                run.clients_requested,
                run.clients_joined,
                run.ran.ramp_us,
            ),
        };
        let others = Others {
            notices: run.notices,
            incomplete_bytes_at_end: run.incomplete_bytes_at_end,
        };
        let scenario = match cfg.wire {
            Wire::Room => "room",
            Wire::Resp { .. } => "resp",
            Wire::Web => "web",
        };
        shared.report(scenario, (head, figures, others), notes, verdict, outcome)
    }
}

impl Sections for Room {
    type Head = Head<Settings>;
    type Figures = Delivered<Deliveries>;
    type Others = Others;
    const DRAIN_TIMED_OUT: &'static str = "deadline reached with deliveries missing";
    const DRAIN_DONE: &'static str = "everything sent had arrived at every connected member";

    fn opening(r: &Report, out: &mut Lines) {
        let s = &r.head.settings;
        let l = &r.figures.latency_ms;
        out.scenario(
            format!(
                "{} against {}: {} clients",
                r.scenario.to_uppercase(),
                r.head.target,
                s.clients
            ),
            s.senders,
            format!("{} msg/s", s.rate_per_s),
            s.window.duration_ms,
            s.window.warmup_ms,
            (s.payload_bytes, "messages"),
        );
        out.connections(&r.head.connections, "requested", "", None);
        out.line(
            "connect latency",
            format!(
                "p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
                l.connect.p50_ms, l.connect.p99_ms, l.connect.max_ms
            ),
        );
    }

    fn figures(r: &Report, out: &mut Lines) {
        let d = &r.figures.deliveries;
        out.line(
            "deliveries",
            format!(
                "{} expected, {} delivered, {:.1}/s in the measured window",
                d.expected, d.delivered, d.per_s
            ),
        );
        out.line(
            "delivery latency",
            r.figures.latency_ms.delivery.percentiles_text(),
        );
    }

    fn own_lags(r: &Report) -> &OwnLagSummaries {
        &r.figures.latency_ms.own
    }

    fn after_lags(r: &Report, out: &mut Lines) {
        let losses = &r.figures.losses;
        out.line(
            "losses",
            format!(
                "{} ({} in gaps, {} never delivered)",
                losses.total, losses.gaps, losses.undelivered
            ),
        );
        out.line(
            "duplicates",
            format!(
                "{} (duplicates or reorders)",
                r.figures.duplicates_or_reorders
            ),
        );
    }

    fn after_errors(r: &Report, out: &mut Lines) {
        let n = &r.others.notices;
        out.line(
            "notices",
            format!(
                "joins {}, leaves {}, greetings {} (counted, not errors)",
                n.joins, n.leaves, n.greetings
            ),
        );
    }
}
