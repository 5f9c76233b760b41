//! The report: figures computed after the run from the raw measurements, the verdict (was the
//! loadgen able to keep its plan?) and the outcome (did the server lose anything?), printed as
//! text and written as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::plan::Plan;
pub use crate::sockio::SendCounts;
use crate::stats::{ErrorCounts, LatencyHistogram, LatencySummary, OwnLags, SeqCounts};

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

/// What every scenario's outcome holds alike: the plan it ran, what it sent, what went wrong,
/// and how long its ramp-up and drain took.
#[derive(Debug)]
pub struct Ran {
    pub plan: Plan,
    pub errors: ErrorCounts,
    pub sends: SendCounts,
    /// The ramp-up's length (OCM: its rooms phase).
    pub ramp_us: u64,
    pub drain_used_us: u64,
    /// The drain reached its deadline before everything had arrived.
    pub drain_timed_out: bool,
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
    Failures::default()
        .shared(inputs, verdict, strict)
        .outcome()
}

/// What failed a run, in the order its result line lists it; any failure exits 1.
#[derive(Clone, Debug, Default)]
pub struct Failures(Vec<String>);

impl Failures {
    /// `count` of `what` failed the run (when it is not 0): "3 lost".
    pub fn count(self, count: u64, what: &str) -> Failures {
        self.when(count > 0, || format!("{count} {what}"))
    }

    /// A failure in the scenario's own words, when `failed`.
    pub fn when(mut self, failed: bool, words: impl FnOnce() -> String) -> Failures {
        if failed {
            self.0.push(words());
        }
        self
    }

    /// An INVALID run fails only with `strict` (see [`outcome`]).
    pub fn invalid(self, verdict: &Verdict, strict: bool) -> Failures {
        self.when(strict && !verdict.valid, || {
            "INVALID run (--strict)".to_string()
        })
    }

    /// The rules every scenario with per-sender sequences shares (see [`outcome`]).
    pub fn shared(self, inputs: &FailureInputs, verdict: &Verdict, strict: bool) -> Failures {
        self.count(inputs.losses, "lost")
            .count(inputs.duplicates_or_reorders, "duplicated or reordered")
            .count(inputs.errors, "errors")
            .count(inputs.not_sent, "not sent")
            .invalid(verdict, strict)
    }

    pub fn outcome(self) -> Outcome {
        let passed = self.0.is_empty();
        Outcome {
            passed,
            failures: self.0,
            exit_code: if passed { 0 } else { 1 },
        }
    }
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

/// The plan's windows as every scenario's settings state them.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub duration_ms: f64,
    pub warmup_ms: f64,
    pub drain_ms: f64,
}

impl Window {
    pub fn new(duration_us: u64, warmup_us: u64, drain_us: u64) -> Window {
        Window {
            duration_ms: duration_us as f64 / 1e3,
            warmup_ms: warmup_us as f64 / 1e3,
            drain_ms: drain_us as f64 / 1e3,
        }
    }
}

/// What the settings end with: the seed, whether an INVALID run fails, and the id stamped in
/// the run's messages, in hex (ROOM stamps none).
#[derive(Clone, Debug, Serialize)]
pub struct RunIds {
    pub seed: u64,
    pub strict: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl RunIds {
    pub fn new(seed: u64, strict: bool, run_id: Option<u32>) -> RunIds {
        RunIds {
            seed,
            strict,
            run_id: run_id.map(|id| format!("{id:08x}")),
        }
    }
}

/// The head of a report whose clients join one server: its address, the settings, the joins.
#[derive(Clone, Debug, Serialize)]
pub struct Head<S> {
    pub target: String,
    pub settings: S,
    pub connections: Connections,
}

/// What the scenarios of per-sender sequences (ROOM, CCM, MATOU) measure alike: deliveries
/// (as the protocol counts them), the delivery and connect latencies, losses and duplicates.
#[derive(Clone, Debug, Serialize)]
pub struct Delivered<D> {
    pub deliveries: D,
    pub latency_ms: Latencies,
    pub losses: Losses,
    pub duplicates_or_reorders: u64,
}

impl<D> Delivered<D> {
    /// `undelivered`: messages never delivered by the end of the drain.
    pub fn new(
        deliveries: D,
        (delivery, connect, own): (&LatencyHistogram, &LatencyHistogram, &OwnLags),
        seq: &SeqCounts,
        undelivered: u64,
    ) -> Delivered<D> {
        Delivered {
            deliveries,
            latency_ms: Latencies {
                delivery: delivery.summary(),
                connect: connect.summary(),
                own: OwnLagSummaries::of(own),
            },
            losses: Losses::new(seq.gap_losses, undelivered),
            duplicates_or_reorders: seq.duplicates_or_reorders,
        }
    }

    /// The shared failure rules' inputs.
    pub fn failures(&self, shared: &Shared) -> FailureInputs {
        shared.failures(self.losses.total, self.duplicates_or_reorders)
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

/// A protocol's part of its report: the sections only it has, and its words in the shared
/// lines. [`Report`] places them among the shared sections, in JSON and in text alike.
pub trait Sections: Sized {
    /// What stands between `scenario` and `send`: the target(s), the settings, how the
    /// clients joined.
    type Head: Serialize + Clone + std::fmt::Debug;
    /// What stands between `not_sent` and `errors`: deliveries, latencies, losses...
    type Figures: Serialize + Clone + std::fmt::Debug;
    /// What stands between `errors` and the drain: counts of what was not this run's...
    type Others: Serialize + Clone + std::fmt::Debug;
    /// What `not sent` calls a message due after its sender's connection was lost.
    const NOT_SENT_LOST: &'static str = "connection lost";
    /// The drain line's words when it reached its deadline, and when nothing was left.
    const DRAIN_TIMED_OUT: &'static str;
    const DRAIN_DONE: &'static str;

    /// The `scenario` line and the lines before `send rate`.
    fn opening(r: &Report<Self>, out: &mut Lines);
    /// The lines between `not sent` and `send lag`.
    fn figures(r: &Report<Self>, out: &mut Lines);
    /// The loadgen's own lags, from the protocol's latencies.
    fn own_lags(r: &Report<Self>) -> &OwnLagSummaries;
    /// The lines between `send lag` and `errors`.
    fn after_lags(_r: &Report<Self>, _out: &mut Lines) {}
    /// What the `errors` line adds after its counts.
    fn errors_more(_r: &Report<Self>) -> String {
        String::new()
    }
    /// The lines between the errors and `drain`.
    fn after_errors(_r: &Report<Self>, _out: &mut Lines) {}
}

/// One run's report: the sections every scenario has (its sends, errors, drain, notes,
/// verdict and outcome) around the sections its protocol adds ([`Sections`]). The JSON keeps
/// this order: `scenario`, the protocol's head, `send`, `not_sent`, its figures, `errors`, its
/// other counts, `drain_ms`, `drain_timed_out`, `notes`, `verdict`, `outcome`.
#[derive(Clone, Debug, Serialize)]
#[serde(bound = "")]
pub struct Report<P: Sections> {
    pub scenario: &'static str,
    #[serde(flatten)]
    pub head: P::Head,
    pub send: SendFigures,
    pub not_sent: NotSent,
    #[serde(flatten)]
    pub figures: P::Figures,
    pub errors: Errors,
    #[serde(flatten)]
    pub others: P::Others,
    pub drain_ms: f64,
    pub drain_timed_out: bool,
    /// Hints for reading the figures (only when they apply).
    pub notes: Vec<String>,
    pub verdict: Verdict,
    pub outcome: Outcome,
}

/// The shared sections of a report, figured from what every run counts alike; the protocol
/// judges the run with them ([`Shared::failures`]) before the report is put together.
pub struct Shared {
    /// What the verdict is computed from: the plan, the loadgen's lateness, the delivery
    /// latency the server is judged by.
    pub validity: ValidityInputs,
    pub send: SendFigures,
    pub not_sent: NotSent,
    pub errors: Errors,
    /// The errors of every kind.
    pub error_count: u64,
    pub drain_ms: f64,
    pub drain_timed_out: bool,
    /// Latencies clamped at 60 s: a note every scenario may add, after the protocol's own.
    clamped: u64,
}

impl Shared {
    /// `judged_by`: the loadgen's own lags and the delivery latency the server is judged by;
    /// `clamped_more`: latencies above 60 s in the other histograms the report prints.
    pub fn new(
        ran: &Ran,
        rate_per_s: u64,
        (own, judged_by): (&OwnLags, &LatencyHistogram),
        clamped_more: u64,
    ) -> Shared {
        let (plan, counts, errors) = (&ran.plan, ran.sends, &ran.errors);
        Shared {
            validity: ValidityInputs::measured(plan, &own.schedule_lateness, judged_by),
            send: SendFigures::new(plan, counts.sent, counts.sent_in_window, rate_per_s),
            not_sent: NotSent::new(
                counts.not_sent_queue_full,
                counts.not_sent_connection_lost,
                counts.not_sent_at_end,
            ),
            errors: Errors::of(errors),
            error_count: errors.total(),
            drain_ms: ran.drain_used_us as f64 / 1e3,
            drain_timed_out: ran.drain_timed_out,
            clamped: own.send_lag.clamped + judged_by.clamped + clamped_more,
        }
    }

    /// The shared verdict (see [`verdict`]).
    pub fn verdict(&self) -> Verdict {
        verdict(&self.validity)
    }

    /// The shared failure rules' inputs, with the run's losses and duplicates.
    pub fn failures(&self, losses: u64, duplicates_or_reorders: u64) -> FailureInputs {
        FailureInputs {
            losses,
            duplicates_or_reorders,
            errors: self.error_count,
            not_sent: self.not_sent.total,
        }
    }

    /// The report, with the protocol's sections, its notes and its judgement.
    pub fn report<P: Sections>(
        self,
        scenario: &'static str,
        (head, figures, others): (P::Head, P::Figures, P::Others),
        mut notes: Vec<String>,
        verdict: Verdict,
        outcome: Outcome,
    ) -> Report<P> {
        if self.clamped > 0 {
            notes.push(format!(
                "{} latencies above 60 s were counted as 60 s",
                self.clamped
            ));
        }
        Report {
            scenario,
            head,
            send: self.send,
            not_sent: self.not_sent,
            figures,
            errors: self.errors,
            others,
            drain_ms: self.drain_ms,
            drain_timed_out: self.drain_timed_out,
            notes,
            verdict,
            outcome,
        }
    }
}

impl<P: Sections> Report<P> {
    /// The human-readable report (stdout): the protocol's lines among the shared ones.
    pub fn to_text(&self) -> String {
        let mut out = Lines::default();
        P::opening(self, &mut out);
        out.send_rate(&self.send);
        out.not_sent(&self.not_sent, P::NOT_SENT_LOST);
        P::figures(self, &mut out);
        out.send_lag(P::own_lags(self));
        P::after_lags(self, &mut out);
        out.errors(&self.errors, &P::errors_more(self));
        P::after_errors(self, &mut out);
        out.drain(
            self.drain_ms,
            self.drain_timed_out,
            P::DRAIN_TIMED_OUT,
            P::DRAIN_DONE,
        );
        write_closing_lines(&mut out, &self.notes, &self.verdict, &self.outcome);
        out.into_string()
    }
}

impl<P: Sections> ScenarioReport for Report<P> {
    fn closing(&self) -> (&Verdict, &Outcome, String) {
        (&self.verdict, &self.outcome, self.to_text())
    }
}

/// What delivering any scenario's report needs besides its JSON form: its verdict, its outcome
/// and its text.
pub trait ScenarioReport: Serialize {
    fn closing(&self) -> (&Verdict, &Outcome, String);
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

/// The lines every scenario's text report ends with: its notes, the validity verdict and the
/// result (pass, or what failed, with the exit code).
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
