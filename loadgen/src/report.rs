//! The report: figures computed after the run from the raw measurements, the verdict (was the
//! loadgen able to keep its plan?) and the outcome (did the server lose anything?), printed as
//! text and written as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::plan::Plan;
use crate::record::NoticeCounts;
use crate::room::{RoomConfig, RoomOutcome, Wire};
use crate::stats::{ErrorCounts, LatencyHistogram, LatencySummary, OwnLags};

/// The schedule-lateness p99 above which a run is INVALID:
///
/// ```text
/// limit = max(1 ms, 10% x min(sender send interval, delivery latency p99))
/// ```
///
/// - 10% of one sender's send interval: past that, a sender's messages are no longer spaced as
///   planned, so the offered load is not the load the run claims (wrk2's rule of thumb).
/// - 10% of the delivery p99: schedule lateness is inside every latency measured from the
///   intended time, so a loadgen late by 5 ms cannot report a 30 ms p99 as the server's. At low
///   per-sender rates the interval alone would tolerate far too much (50 ms spacing would allow
///   5 ms of lateness whatever the latencies), hence the smaller of the two.
/// - A 1 ms floor: on a small shared machine (2 cores, the server and other builds beside the
///   loadgen) a wake-up can take a few hundred µs whatever the loadgen does, and 10% of a short
///   interval or of a sub-millisecond latency is a few µs, which no timer keeps: below 1 ms the
///   lateness is scheduling noise, not "the loadgen fell behind". So sub-millisecond latencies
///   are to be read next to the lateness printed with them.
pub const LATENESS_FLOOR_US: u64 = 1_000;
pub const LATENESS_FRACTION: f64 = 0.10;

/// The schedule-lateness p99 limit, in µs, and what set it.
pub fn lateness_limit_us(sender_interval_us: f64, delivery_p99_us: Option<u64>) -> (u64, String) {
    let by_interval_us = (sender_interval_us * LATENESS_FRACTION) as u64;
    let by_latency_us = delivery_p99_us.map(|p99| (p99 as f64 * LATENESS_FRACTION) as u64);
    let (limit_us, basis) = match by_latency_us {
        Some(by_latency_us) if by_latency_us < by_interval_us => (
            by_latency_us,
            format!(
                "10% of the {:.3} ms delivery p99",
                delivery_p99_us.unwrap_or(0) as f64 / 1e3
            ),
        ),
        _ => (
            by_interval_us,
            format!(
                "10% of the {:.3} ms send interval",
                sender_interval_us / 1e3
            ),
        ),
    };
    if limit_us < LATENESS_FLOOR_US {
        (LATENESS_FLOOR_US, "the 1 ms floor".to_string())
    } else {
        (limit_us, basis)
    }
}

/// Whether the run measured what it claims to (the loadgen kept its plan).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub valid: bool,
    pub reasons: Vec<String>,
    pub schedule_lateness_limit_ms: f64,
    /// What set the limit (see `lateness_limit_us`).
    pub schedule_lateness_limit_basis: String,
}

/// What the verdict is computed from.
#[derive(Clone, Copy, Debug)]
pub struct ValidityInputs {
    pub schedule_lateness_p99_us: u64,
    pub sender_interval_us: f64,
    /// Delivery latency p99 of the measured window (None: nothing delivered).
    pub delivery_p99_us: Option<u64>,
    /// Messages of the measured window that were sent (0: nothing was measured).
    pub measured_messages: u64,
}

impl ValidityInputs {
    /// What every scenario measures alike: its own schedule lateness against its plan's pace,
    /// and the delivery latency it judges the server by.
    pub fn measured(
        plan: &Plan,
        schedule_lateness: &LatencyHistogram,
        delivery: &LatencyHistogram,
    ) -> ValidityInputs {
        ValidityInputs {
            schedule_lateness_p99_us: schedule_lateness.value_at_quantile_us(0.99),
            sender_interval_us: plan.sender_interval_us(),
            delivery_p99_us: (delivery.len() > 0).then(|| delivery.value_at_quantile_us(0.99)),
            measured_messages: schedule_lateness.len(),
        }
    }
}

pub fn verdict(inputs: &ValidityInputs) -> Verdict {
    let (limit_us, basis) = lateness_limit_us(inputs.sender_interval_us, inputs.delivery_p99_us);
    let mut reasons = Vec::new();
    if inputs.measured_messages == 0 {
        reasons.push("no message was sent in the measured window".to_string());
    }
    if inputs.schedule_lateness_p99_us > limit_us {
        reasons.push(format!(
            "the loadgen fell behind its plan: schedule lateness p99 {:.3} ms > limit {:.3} ms \
             ({basis})",
            inputs.schedule_lateness_p99_us as f64 / 1e3,
            limit_us as f64 / 1e3,
        ));
    }
    Verdict {
        valid: reasons.is_empty(),
        reasons,
        schedule_lateness_limit_ms: limit_us as f64 / 1e3,
        schedule_lateness_limit_basis: basis,
    }
}

/// Whether the server did its job, and the exit code that says so.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    pub passed: bool,
    pub failures: Vec<String>,
    pub exit_code: i32,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct FailureInputs {
    pub losses: u64,
    pub duplicates_or_reorders: u64,
    pub errors: u64,
    pub not_sent: u64,
}

/// Exit 0 when nothing was lost, duplicated or left unsent and there were no errors; 1
/// otherwise. An INVALID verdict fails only with `strict`: it says the loadgen, not the server,
/// was the limit, which a CI smoke run on a busy machine should not turn into a red build.
pub fn outcome(inputs: &FailureInputs, verdict: &Verdict, strict: bool) -> Outcome {
    let mut failures = Vec::new();
    let mut check = |count: u64, what: &str| {
        if count > 0 {
            failures.push(format!("{count} {what}"));
        }
    };
    check(inputs.losses, "lost");
    check(inputs.duplicates_or_reorders, "duplicated or reordered");
    check(inputs.errors, "errors");
    check(inputs.not_sent, "not sent");
    if strict && !verdict.valid {
        failures.push("INVALID run (--strict)".to_string());
    }
    let passed = failures.is_empty();
    Outcome {
        passed,
        failures,
        exit_code: if passed { 0 } else { 1 },
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub clients: usize,
    pub senders_requested: usize,
    pub senders: u32,
    pub rate_per_s: u64,
    pub duration_ms: f64,
    pub warmup_ms: f64,
    pub drain_ms: f64,
    pub payload_bytes: usize,
    pub connect_rate_per_s: u64,
    pub seed: u64,
    pub strict: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Connections {
    pub requested: usize,
    pub joined: usize,
    pub failed: usize,
    pub ramp_up_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SendFigures {
    pub planned: u64,
    pub sent: u64,
    pub target_rate_per_s: f64,
    /// Messages whose write completed in the measured window, per second of that window.
    pub achieved_rate_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct NotSent {
    pub total: u64,
    /// Due while the sender's local queue was full (its socket had not been writable).
    pub queue_full: u64,
    /// Due after the sender's connection had failed.
    pub connection_lost: u64,
    /// Still queued when the drain ended.
    pub at_end: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Deliveries {
    /// Messages sent times the clients that joined.
    pub expected: u64,
    pub delivered: u64,
    /// Deliveries received in the measured window, per second of that window.
    pub per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latencies {
    /// Receive time minus intended send time, at every receiver (ROOM's record, CCM's Text,
    /// MATOU's PUBLIC_BROADCAST).
    pub delivery: LatencySummary,
    /// The server's confirmation minus intended connect time (ROOM's greeting, CCM's Identity,
    /// MATOU's CONNECT_RESPONSE 1).
    pub connect: LatencySummary,
    #[serde(flatten)]
    pub own: OwnLagSummaries,
}

/// The loadgen's own lags, in every report's `latency_ms` alike.
#[derive(Clone, Debug, Serialize)]
pub struct OwnLagSummaries {
    /// Write completed minus intended send time.
    pub send_lag: LatencySummary,
    /// Loop noticed the due message minus intended send time (the loadgen's own delay).
    pub schedule_lateness: LatencySummary,
    /// Last write attempt minus noticed (queued behind a socket that was not writable).
    /// send_lag = schedule_lateness + socket_blocked + the time inside write() itself.
    pub socket_blocked: LatencySummary,
}

impl OwnLagSummaries {
    pub fn of(own: &OwnLags) -> OwnLagSummaries {
        OwnLagSummaries {
            send_lag: own.send_lag.summary(),
            schedule_lateness: own.schedule_lateness.summary(),
            socket_blocked: own.socket_blocked.summary(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Losses {
    pub total: u64,
    /// Messages skipped over by a later message of the same sender.
    pub gaps: u64,
    /// Messages never delivered by the end of the drain.
    pub undelivered: u64,
}

impl Connections {
    /// `ramp_us`: the ramp-up's length.
    pub fn new(requested: usize, joined: usize, ramp_us: u64) -> Connections {
        Connections {
            requested,
            joined,
            failed: requested - joined,
            ramp_up_ms: ramp_us as f64 / 1e3,
        }
    }
}

impl SendFigures {
    /// `sent_in_window`: the messages whose write completed in the plan's measured window.
    pub fn new(plan: &Plan, sent: u64, sent_in_window: u64, rate_per_s: u64) -> SendFigures {
        SendFigures {
            planned: plan.messages,
            sent,
            target_rate_per_s: rate_per_s as f64,
            achieved_rate_per_s: plan.per_s(sent_in_window),
        }
    }
}

impl NotSent {
    pub fn new(queue_full: u64, connection_lost: u64, at_end: u64) -> NotSent {
        NotSent {
            total: queue_full + connection_lost + at_end,
            queue_full,
            connection_lost,
            at_end,
        }
    }
}

impl Losses {
    pub fn new(gaps: u64, undelivered: u64) -> Losses {
        Losses {
            total: gaps + undelivered,
            gaps,
            undelivered,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ErrorLine {
    pub kind: String,
    pub first: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Errors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub protocol: u64,
    pub first_of_each_kind: Vec<ErrorLine>,
}

impl Errors {
    pub fn of(errors: &ErrorCounts) -> Errors {
        Errors {
            connect: errors.connect,
            read: errors.read,
            write: errors.write,
            protocol: errors.protocol,
            first_of_each_kind: errors
                .first
                .iter()
                .map(|(kind, first)| ErrorLine {
                    kind: kind.clone(),
                    first: first.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: String,
    pub settings: Settings,
    pub connections: Connections,
    pub send: SendFigures,
    pub not_sent: NotSent,
    pub deliveries: Deliveries,
    pub latency_ms: Latencies,
    pub losses: Losses,
    pub duplicates_or_reorders: u64,
    pub errors: Errors,
    pub notices: NoticeCounts,
    /// Bytes of records still unfinished in the receivers at the end.
    pub incomplete_bytes_at_end: u64,
    pub drain_ms: f64,
    pub drain_timed_out: bool,
    /// Hints for reading the figures (only when they apply).
    pub notes: Vec<String>,
    pub verdict: Verdict,
    pub outcome: Outcome,
}

impl Report {
    pub fn room(
        cfg: &RoomConfig,
        senders_requested: usize,
        strict: bool,
        run: &RoomOutcome,
    ) -> Report {
        let plan = &run.plan;
        let not_sent = NotSent::new(
            run.not_sent_queue_full,
            run.not_sent_connection_lost,
            run.not_sent_at_end,
        );
        let losses = Losses::new(run.seq.gap_losses, run.undelivered);
        let verdict = verdict(&ValidityInputs::measured(
            plan,
            &run.own.schedule_lateness,
            &run.delivery_latency,
        ));
        let outcome = outcome(
            &FailureInputs {
                losses: losses.total,
                duplicates_or_reorders: run.seq.duplicates_or_reorders,
                errors: run.errors.total(),
                not_sent: not_sent.total,
            },
            &verdict,
            strict,
        );
        let mut notes = Vec::new();
        let resp = matches!(cfg.wire, Wire::Resp { .. });
        if resp {
            notes.push(format!(
                "RESP: {} PUBLISH replies read, each checked against the subscribers joined \
                 (a mismatch is a protocol error); one extra connection per sender publishes",
                run.publish_replies
            ));
        }
        if run.errors.protocol > 0 && !resp {
            notes.push(
                "malformed records: ROOM relays what one read returned, so a message the server \
                 read in two pieces can reach members with another sender's chunk in between \
                 (the server fell behind, or messages exceed its read size); the torn message \
                 also counts as lost"
                    .to_string(),
            );
        }
        let clamped =
            run.delivery_latency.clamped + run.own.send_lag.clamped + run.connect_latency.clamped;
        if clamped > 0 {
            notes.push(format!(
                "{clamped} latencies above 60 s were counted as 60 s"
            ));
        }
        Report {
            scenario: if resp { "resp" } else { "room" },
            target: cfg.target.to_string(),
            settings: Settings {
                clients: cfg.clients,
                senders_requested,
                senders: plan.senders,
                rate_per_s: cfg.rate_per_s,
                duration_ms: cfg.duration_us as f64 / 1e3,
                warmup_ms: cfg.warmup_us as f64 / 1e3,
                drain_ms: cfg.drain_us as f64 / 1e3,
                payload_bytes: cfg.message_bytes,
                connect_rate_per_s: cfg.connect_rate_per_s,
                seed: cfg.seed,
                strict,
            },
            connections: Connections::new(run.clients_requested, run.clients_joined, run.ramp_us),
            send: SendFigures::new(plan, run.sent, run.sent_in_window, cfg.rate_per_s),
            not_sent,
            deliveries: Deliveries {
                expected: run.sent * run.clients_joined as u64,
                delivered: run.seq.delivered,
                per_s: plan.per_s(run.delivered_in_window),
            },
            latency_ms: Latencies {
                delivery: run.delivery_latency.summary(),
                connect: run.connect_latency.summary(),
                own: OwnLagSummaries::of(&run.own),
            },
            losses,
            duplicates_or_reorders: run.seq.duplicates_or_reorders,
            errors: Errors::of(&run.errors),
            notices: run.notices,
            incomplete_bytes_at_end: run.incomplete_bytes_at_end,
            drain_ms: run.drain_used_us as f64 / 1e3,
            drain_timed_out: run.drain_timed_out,
            notes,
            verdict,
            outcome,
        }
    }

    /// The human-readable report (stdout).
    pub fn to_text(&self) -> String {
        let s = &self.settings;
        let l = &self.latency_ms;
        let mut out = Lines::default();
        out.scenario(
            format!(
                "{} against {}: {} clients",
                self.scenario.to_uppercase(),
                self.target,
                s.clients
            ),
            s.senders,
            format!("{} msg/s", s.rate_per_s),
            s.duration_ms,
            s.warmup_ms,
            (s.payload_bytes, "messages"),
        );
        out.connections(&self.connections, "requested", "", None);
        out.line(
            "connect latency",
            format!(
                "p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
                l.connect.p50_ms, l.connect.p99_ms, l.connect.max_ms
            ),
        );
        out.send_rate(&self.send);
        out.not_sent(&self.not_sent, "connection lost");
        out.line(
            "deliveries",
            format!(
                "{} expected, {} delivered, {:.1}/s in the measured window",
                self.deliveries.expected, self.deliveries.delivered, self.deliveries.per_s
            ),
        );
        out.line("delivery latency", l.delivery.percentiles_text());
        out.send_lag(&l.own);
        out.line(
            "losses",
            format!(
                "{} ({} in gaps, {} never delivered)",
                self.losses.total, self.losses.gaps, self.losses.undelivered
            ),
        );
        out.line(
            "duplicates",
            format!("{} (duplicates or reorders)", self.duplicates_or_reorders),
        );
        out.errors(&self.errors, "");
        out.line(
            "notices",
            format!(
                "joins {}, leaves {}, greetings {} (counted, not errors)",
                self.notices.joins, self.notices.leaves, self.notices.greetings
            ),
        );
        out.drain(
            self.drain_ms,
            self.drain_timed_out,
            "deadline reached with deliveries missing",
            "everything sent had arrived at every connected member",
        );
        write_closing_lines(&mut out, &self.notes, &self.verdict, &self.outcome);
        out.into_string()
    }
}

/// The lines every scenario's text report ends with: its notes, the validity verdict and the
/// result (pass, or what failed, with the exit code).
/// What delivering any scenario's report needs besides its JSON form: its verdict, its outcome
/// and its text.
pub trait ScenarioReport: Serialize {
    fn closing(&self) -> (&Verdict, &Outcome, String);
}

impl ScenarioReport for Report {
    fn closing(&self) -> (&Verdict, &Outcome, String) {
        (&self.verdict, &self.outcome, self.to_text())
    }
}

/// A text report being written: one labelled line after another, the labels in one column.
#[derive(Default)]
pub struct Lines(String);

impl Lines {
    pub fn line(&mut self, label: &str, text: String) {
        let _ = writeln!(self.0, "{label:<18}{text}");
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The first line: `who` (protocol, target, clients) and the plan's figures, which every
    /// scenario words alike; `rate` is the send rate as the scenario states it, `payload` the
    /// size of a message's payload and what the protocol calls it.
    pub fn scenario(
        &mut self,
        who: String,
        senders: impl std::fmt::Display,
        rate: String,
        duration_ms: f64,
        warmup_ms: f64,
        (payload_bytes, payload): (usize, &str),
    ) {
        self.line(
            "scenario",
            format!(
                "{who}, {senders} senders, {rate} for {:.3} s (+{:.3} s warmup), \
                 {payload_bytes}-byte {payload}",
                duration_ms / 1e3,
                warmup_ms / 1e3
            ),
        );
    }

    /// `requested`: what was asked for ("requested", "online requested"); `failed_more`
    /// follows the failed count; `handshake`: the server's confirmation and its latency.
    pub fn connections(
        &mut self,
        c: &Connections,
        requested: &str,
        failed_more: &str,
        handshake: Option<(&str, &LatencySummary)>,
    ) {
        let mut text = format!(
            "{} {requested}, {} joined, {} failed{failed_more}; ramp-up {:.3} s",
            c.requested,
            c.joined,
            c.failed,
            c.ramp_up_ms / 1e3
        );
        if let Some((name, l)) = handshake {
            let _ = write!(
                text,
                "; {name} p50 {:.3} ms p99 {:.3} ms max {:.3} ms",
                l.p50_ms, l.p99_ms, l.max_ms
            );
        }
        self.line("connections", text);
    }

    pub fn send_rate(&mut self, send: &SendFigures) {
        self.line(
            "send rate",
            format!(
                "target {:.1} msg/s, achieved {:.1} msg/s ({} planned, {} sent)",
                send.target_rate_per_s, send.achieved_rate_per_s, send.planned, send.sent
            ),
        );
    }

    /// `lost`: what the scenario calls a message due after its sender's connection was lost.
    pub fn not_sent(&mut self, not_sent: &NotSent, lost: &str) {
        self.line(
            "not sent",
            format!(
                "{} (queue full {}, {lost} {}, still queued at the end {})",
                not_sent.total, not_sent.queue_full, not_sent.connection_lost, not_sent.at_end
            ),
        );
    }

    /// The loadgen's own lags: the whole send lag, and the two parts of it it can tell apart.
    pub fn send_lag(&mut self, own: &OwnLagSummaries) {
        let OwnLagSummaries {
            send_lag,
            schedule_lateness,
            socket_blocked,
        } = own;
        self.line(
            "send lag",
            format!(
                "p99 {:.3} ms  max {:.3} ms  (schedule lateness p99 {:.3} ms max {:.3} ms; \
                 socket blocked p99 {:.3} ms max {:.3} ms)",
                send_lag.p99_ms,
                send_lag.max_ms,
                schedule_lateness.p99_ms,
                schedule_lateness.max_ms,
                socket_blocked.p99_ms,
                socket_blocked.max_ms
            ),
        );
    }

    /// The error counts (`more`: what the scenario adds to the line), then the first error of
    /// each kind.
    pub fn errors(&mut self, errors: &Errors, more: &str) {
        self.line(
            "errors",
            format!(
                "connect {}, read {}, write {}, protocol {}{more}",
                errors.connect, errors.read, errors.write, errors.protocol
            ),
        );
        for first in &errors.first_of_each_kind {
            self.line("", format!("first {} error: {}", first.kind, first.first));
        }
    }

    /// How long the drain took, and whether it ended on its deadline or had nothing left.
    pub fn drain(&mut self, drain_ms: f64, timed_out: bool, if_timed_out: &str, if_done: &str) {
        let why = if timed_out { if_timed_out } else { if_done };
        self.line("drain", format!("{:.3} s ({why})", drain_ms / 1e3));
    }
}

pub fn write_closing_lines(
    out: &mut Lines,
    notes: &[String],
    verdict: &Verdict,
    outcome: &Outcome,
) {
    for note in notes {
        out.line("note", note.clone());
    }
    out.line(
        "verdict",
        if verdict.valid {
            "VALID".to_string()
        } else {
            format!("INVALID: {}", verdict.reasons.join("; "))
        },
    );
    out.line(
        "result",
        if outcome.passed {
            format!("PASS (exit {})", outcome.exit_code)
        } else {
            format!(
                "FAIL: {} (exit {})",
                outcome.failures.join(", "),
                outcome.exit_code
            )
        },
    );
}

#[cfg(test)]
mod tests;
