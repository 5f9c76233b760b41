//! The lobby report: deliveries, losses and latency per (origin, destination) protocol pair,
//! the same-protocol and cross-protocol aggregates and their p99 ratio, placed among the shared
//! sections with the shared verdict and outcome rules (`crate::report`), as text and JSON.

use serde::Serialize;

use super::ledger::{Kind, KINDS};
use super::{Lobby, LobbyConfig, LobbyOutcome};
use crate::report::{
    outcome, Connections, Lines, OwnLagSummaries, RunIds, Sections, Shared, Window,
};
use crate::stats::LatencySummary;

pub type Report = crate::report::Report<Lobby>;

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub room: usize,
    pub matou: usize,
    pub ccm: usize,
    pub ocm: usize,
    /// Only with WEB members (the report of a run without them is as before WEB).
    #[serde(skip_serializing_if = "is_zero")]
    pub web: usize,
    pub ocm_room: String,
    pub senders: u32,
    /// Lobby messages per second over all senders together.
    pub rate_per_s: u64,
    /// At most rate x members: what the plan asks the server to deliver per second.
    pub deliveries_per_s_planned: u64,
    #[serde(flatten)]
    pub window: Window,
    pub payload_bytes: usize,
    pub connect_rate_per_s: u64,
    #[serde(flatten)]
    pub ids: RunIds,
}

/// One protocol's members.
#[derive(Clone, Debug, Serialize)]
pub struct Members {
    pub protocol: Kind,
    pub requested: usize,
    pub joined: usize,
}

/// One (origin, destination) pair.
#[derive(Clone, Debug, Serialize)]
pub struct Pair {
    pub origin: Kind,
    pub destination: Kind,
    /// Deliveries owed: every message written by an origin member, once for each destination
    /// member in the lobby then that must get it.
    pub expected: u64,
    pub delivered: u64,
    /// Skipped over by a later message (gaps) plus never delivered by the end.
    pub lost: u64,
    pub duplicates_or_reorders: u64,
    /// Delivery latency of the measured window, from the intended send time.
    pub latency_ms: LatencySummary,
}

#[derive(Clone, Debug, Serialize)]
pub struct Aggregates {
    /// Every delivery whose receiver speaks the sender's protocol.
    pub same_protocol: LatencySummary,
    /// Every delivery that crossed from one protocol to another.
    pub cross_protocol: LatencySummary,
    pub all: LatencySummary,
    /// Cross-protocol p99 over same-protocol p99 (`None` without samples of either): the
    /// switchboard's target is at most 1.10.
    pub cross_over_same_p99: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Targets {
    pub room: String,
    pub matou: String,
    pub ccm: String,
    pub ocm_tcp: String,
    pub ocm_udp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The lobby's targets, settings and joins, per protocol and in all.
#[derive(Clone, Debug, Serialize)]
pub struct Head {
    pub targets: Targets,
    pub settings: Settings,
    pub members: Vec<Members>,
    pub connections: Connections,
    pub connect_ms: LatencySummary,
}

#[derive(Clone, Debug, Serialize)]
pub struct Deliveries {
    pub expected: u64,
    pub delivered: u64,
    /// Deliveries received in the measured window, per second of it.
    pub per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Losses {
    pub total: u64,
    pub gaps: u64,
    pub undelivered: u64,
    /// Lost deliveries that crossed protocols (part of the total).
    pub cross_protocol: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub deliveries: Deliveries,
    pub latency_ms: Aggregates,
    pub own_ms: OwnLagSummaries,
    pub pairs: Vec<Pair>,
    pub losses: Losses,
    pub duplicates_or_reorders: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Others {
    pub foreign_messages: u64,
    pub presence_notices: u64,
    pub keepalives_answered: u64,
    pub ocm_room_created: bool,
    pub ocm_exits_sent: u64,
}

impl Report {
    pub fn new(cfg: &LobbyConfig, seed: u64, strict: bool, run: &LobbyOutcome) -> Report {
        let plan = &run.ran.plan;
        let l = &run.latency;
        let shared = Shared::new(
            &run.ran,
            cfg.pace.rate_per_s,
            (&run.own, &l.all),
            run.connect.clamped,
        );
        let mut pairs = Vec::new();
        let (mut gaps, mut undelivered, mut cross_lost, mut duplicates) = (0, 0, 0, 0);
        let (mut expected, mut delivered) = (0, 0);
        for origin in KINDS {
            for destination in KINDS {
                let (o, d) = (origin.index(), destination.index());
                let counts = run.pairs[o][d];
                let lost = counts.gap_losses + run.undelivered[o][d];
                gaps += counts.gap_losses;
                undelivered += run.undelivered[o][d];
                duplicates += counts.duplicates_or_reorders;
                expected += run.expected[o][d];
                delivered += counts.delivered;
                if origin != destination {
                    cross_lost += lost;
                }
                // A pair with no member on either side has nothing to say.
                if cfg.members[o] == 0 || cfg.members[d] == 0 {
                    continue;
                }
                pairs.push(Pair {
                    origin,
                    destination,
                    expected: run.expected[o][d],
                    delivered: counts.delivered,
                    lost,
                    duplicates_or_reorders: counts.duplicates_or_reorders,
                    latency_ms: l.by_pair[o][d].summary(),
                });
            }
        }
        let losses = Losses {
            total: gaps + undelivered,
            gaps,
            undelivered,
            cross_protocol: cross_lost,
        };
        let verdict = shared.verdict();
        let outcome = outcome(&shared.failures(losses.total, duplicates), &verdict, strict);
        let same = l.same.summary();
        let cross = l.cross.summary();
        let mut notes = Vec::new();
        if losses.total > 0 && losses.cross_protocol == losses.total {
            notes.push(
                "every loss crossed protocols: is the server's switchboard on (no --isolate), and \
                 its OCM lobby room the one named by --ocm-room?"
                    .to_string(),
            );
        }
        let web = cfg.members[Kind::Web.index()];
        let head = Head {
            targets: Targets {
                room: cfg.room_target.to_string(),
                matou: cfg.matou_target.to_string(),
                ccm: cfg.ccm_target.to_string(),
                ocm_tcp: cfg.ocm_tcp_target.to_string(),
                ocm_udp: cfg.ocm_udp_target.to_string(),
                web: (web > 0).then(|| cfg.web_target.to_string()),
            },
            settings: Settings {
                room: cfg.members[Kind::Room.index()],
                matou: cfg.members[Kind::Matou.index()],
                ccm: cfg.members[Kind::Ccm.index()],
                ocm: cfg.members[Kind::Ocm.index()],
                web,
                ocm_room: cfg.ocm_room.clone(),
                senders: plan.senders,
                rate_per_s: cfg.pace.rate_per_s,
                deliveries_per_s_planned: cfg.deliveries_per_s_max(),
                window: Window::new(cfg.pace.duration_us, cfg.pace.warmup_us, cfg.pace.drain_us),
                payload_bytes: cfg.message_bytes,
                connect_rate_per_s: cfg.pace.connect_rate_per_s,
                ids: RunIds::new(seed, strict, Some(cfg.run_id)),
            },
            members: (KINDS.iter())
                .filter(|&&kind| kind != Kind::Web || web > 0)
                .map(|&kind| Members {
                    protocol: kind,
                    requested: run.requested[kind.index()],
                    joined: run.joined[kind.index()],
                })
                .collect(),
            connections: Connections::new(
                run.requested.iter().sum(),
                run.joined.iter().sum(),
                run.ran.ramp_us,
            ),
            connect_ms: run.connect.summary(),
        };
        let figures = Figures {
            deliveries: Deliveries {
                expected,
                delivered,
                per_s: plan.per_s(run.delivered_in_window),
            },
            latency_ms: Aggregates {
                cross_over_same_p99: (same.count > 0 && cross.count > 0 && same.p99_ms > 0.0)
                    .then(|| cross.p99_ms / same.p99_ms),
                same_protocol: same,
                cross_protocol: cross,
                all: l.all.summary(),
            },
            own_ms: OwnLagSummaries::of(&run.own),
            pairs,
            losses,
            duplicates_or_reorders: duplicates,
        };
        let others = Others {
            foreign_messages: run.foreign_messages,
            presence_notices: run.presence_notices,
            keepalives_answered: run.keepalives_answered,
            ocm_room_created: run.ocm_room_created,
            ocm_exits_sent: run.ocm_exits_sent,
        };
        shared.report("lobby", (head, figures, others), notes, verdict, outcome)
    }

    #[cfg(test)]
    pub fn pair(&self, origin: Kind, destination: Kind) -> Option<&Pair> {
        (self.figures.pairs.iter()).find(|p| p.origin == origin && p.destination == destination)
    }
}

impl Sections for Lobby {
    type Head = Head;
    type Figures = Figures;
    type Others = Others;
    const DRAIN_TIMED_OUT: &'static str = "deadline reached with messages undelivered";
    const DRAIN_DONE: &'static str = "every member had every message";

    fn opening(r: &Report, out: &mut Lines) {
        let s = &r.head.settings;
        out.scenario(
            format!(
                "LOBBY: ROOM {}, MATOU {}, CCM {}, OCM {}{} (room {:?})",
                s.room,
                s.matou,
                s.ccm,
                s.ocm,
                match s.web {
                    0 => String::new(),
                    n => format!(", WEB {n}"),
                },
                s.ocm_room
            ),
            s.senders,
            format!(
                "{} msg/s (up to {} deliveries/s)",
                s.rate_per_s, s.deliveries_per_s_planned
            ),
            s.window.duration_ms,
            s.window.warmup_ms,
            (s.payload_bytes, "texts"),
        );
        out.connections(
            &r.head.connections,
            "requested",
            "",
            Some(("join", &r.head.connect_ms)),
        );
        out.line(
            "members",
            (r.head.members.iter())
                .map(|m| format!("{} {}/{}", m.protocol.name(), m.joined, m.requested))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }

    fn figures(r: &Report, out: &mut Lines) {
        let f = &r.figures;
        let l = &f.latency_ms;
        out.line(
            "deliveries",
            format!(
                "{} of {} expected, {:.1}/s in the measured window",
                f.deliveries.delivered, f.deliveries.expected, f.deliveries.per_s
            ),
        );
        out.line("same-protocol", l.same_protocol.percentiles_or_none());
        out.line("cross-protocol", l.cross_protocol.percentiles_or_none());
        out.line(
            "cross/same p99",
            l.cross_over_same_p99.map_or_else(
                || "(no samples of one of them)".to_string(),
                |ratio| format!("{ratio:.3} (target at most 1.10)"),
            ),
        );
        out.line("all deliveries", l.all.percentiles_or_none());
        for p in &f.pairs {
            out.line(
                &format!("{} -> {}", p.origin.name(), p.destination.name()),
                format!(
                    "{}/{} delivered, {} lost, {} dup; p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  \
                     max {:.3} ms",
                    p.delivered,
                    p.expected,
                    p.lost,
                    p.duplicates_or_reorders,
                    p.latency_ms.p50_ms,
                    p.latency_ms.p99_ms,
                    p.latency_ms.p999_ms,
                    p.latency_ms.max_ms
                ),
            );
        }
        out.line(
            "losses",
            format!(
                "{} ({} gaps, {} never delivered; {} crossed protocols); duplicates or reorders {}",
                f.losses.total,
                f.losses.gaps,
                f.losses.undelivered,
                f.losses.cross_protocol,
                f.duplicates_or_reorders
            ),
        );
    }

    fn own_lags(r: &Report) -> &OwnLagSummaries {
        &r.figures.own_ms
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
