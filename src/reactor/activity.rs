//! One line per connect and disconnect at info, so an operator at the default log level sees
//! people come and go; rate-limited, so a flood of connections (a load test, an attack) costs at
//! most [`LINES_PER_WINDOW`] such lines per [`WINDOW_MS`], plus one line saying how many were
//! not logged. At debug level the lines beyond the limit are still logged, at debug.

use log::{debug, info};

/// Connect and disconnect lines logged at info per window; beyond it they are only counted.
pub(super) const LINES_PER_WINDOW: u32 = 20;

/// The window's length. It opens at the first line after a quiet spell.
pub(super) const WINDOW_MS: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Activity {
    Connect,
    Disconnect,
}

/// What a window did not log at info.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Suppressed {
    pub connects: u64,
    pub disconnects: u64,
}

impl Suppressed {
    fn is_empty(&self) -> bool {
        self.connects == 0 && self.disconnects == 0
    }
}

#[derive(Default)]
pub(super) struct ActivityLog {
    /// When the current window ends; `None` before the first line and after a closed window.
    window_end_ms: Option<u64>,
    /// Lines logged at info in the current window.
    logged: u32,
    suppressed: Suppressed,
}

impl ActivityLog {
    /// Logs `line` at info, or counts it (and logs it at debug) when the window's lines are
    /// used up; first logs the summary of a window that has ended.
    pub(super) fn log(&mut self, now_ms: u64, activity: Activity, line: impl FnOnce() -> String) {
        if let Some(suppressed) = self.end_window_if_due(now_ms) {
            log_summary(suppressed);
        }
        if self.admit(now_ms, activity) {
            info!("{}", line());
        } else {
            debug!("{}", line());
        }
    }

    /// From the timers: the summary of a window that has ended, without waiting for the next
    /// connect or disconnect (there may be none for a long time).
    pub(super) fn on_timer(&mut self, now_ms: u64) {
        if let Some(suppressed) = self.end_window_if_due(now_ms) {
            log_summary(suppressed);
        }
    }

    /// At shutdown: the summary of the current window, due or not.
    pub(super) fn flush(&mut self) {
        if let Some(end_ms) = self.window_end_ms {
            self.on_timer(end_ms);
        }
    }

    /// When [`ActivityLog::on_timer`] has a summary to log; `None` when it has none, so an
    /// idle server does not wake for it.
    pub(super) fn next_deadline_ms(&self) -> Option<u64> {
        self.window_end_ms.filter(|_| !self.suppressed.is_empty())
    }

    /// Whether a line may be logged at info now; counted as suppressed if not.
    fn admit(&mut self, now_ms: u64, activity: Activity) -> bool {
        if self.window_end_ms.is_none_or(|end_ms| now_ms >= end_ms) {
            self.window_end_ms = Some(now_ms.saturating_add(WINDOW_MS));
            self.logged = 0;
        }
        if self.logged < LINES_PER_WINDOW {
            self.logged += 1;
            return true;
        }
        match activity {
            Activity::Connect => self.suppressed.connects += 1,
            Activity::Disconnect => self.suppressed.disconnects += 1,
        }
        false
    }

    /// Closes a window that has ended, returning what it did not log, if anything.
    fn end_window_if_due(&mut self, now_ms: u64) -> Option<Suppressed> {
        let end_ms = self.window_end_ms?;
        if now_ms < end_ms {
            return None;
        }
        self.window_end_ms = None;
        self.logged = 0;
        let suppressed = std::mem::take(&mut self.suppressed);
        (!suppressed.is_empty()).then_some(suppressed)
    }
}

fn log_summary(suppressed: Suppressed) {
    info!(
        "{} connects and {} disconnects not logged (at most {LINES_PER_WINDOW} such lines per \
         {WINDOW_MS} ms)",
        suppressed.connects, suppressed.disconnects
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit_many(log: &mut ActivityLog, now_ms: u64, activity: Activity, count: u32) -> u32 {
        (0..count).filter(|_| log.admit(now_ms, activity)).count() as u32
    }

    #[test]
    fn a_quiet_server_logs_every_line_and_owes_no_summary() {
        let mut log = ActivityLog::default();
        for second in 0..5 {
            let now_ms = second * 10_000;
            assert!(log.admit(now_ms, Activity::Connect));
            assert!(log.admit(now_ms + 5, Activity::Disconnect));
            assert_eq!(log.next_deadline_ms(), None, "nothing to summarise");
            assert_eq!(log.end_window_if_due(now_ms + WINDOW_MS), None);
        }
    }

    #[test]
    fn a_burst_logs_the_first_lines_and_counts_the_rest_for_one_summary() {
        let mut log = ActivityLog::default();
        assert_eq!(
            admit_many(&mut log, 100, Activity::Connect, 50),
            LINES_PER_WINDOW
        );
        assert_eq!(admit_many(&mut log, 900, Activity::Disconnect, 7), 0);
        assert_eq!(log.next_deadline_ms(), Some(100 + WINDOW_MS));
        assert_eq!(log.end_window_if_due(100 + WINDOW_MS - 1), None, "not yet");
        assert_eq!(
            log.end_window_if_due(100 + WINDOW_MS),
            Some(Suppressed {
                connects: 50 - u64::from(LINES_PER_WINDOW),
                disconnects: 7,
            })
        );
        assert_eq!(log.next_deadline_ms(), None);
        assert_eq!(log.end_window_if_due(10_000), None, "said once");
    }

    #[test]
    fn the_next_window_logs_again_once_the_last_one_ended() {
        let mut log = ActivityLog::default();
        admit_many(&mut log, 0, Activity::Connect, LINES_PER_WINDOW);
        assert!(!log.admit(WINDOW_MS - 1, Activity::Connect));
        // A line after the window ended opens a new one (the caller logs the summary first).
        assert!(log.admit(WINDOW_MS, Activity::Connect));
        assert_eq!(
            admit_many(&mut log, WINDOW_MS + 1, Activity::Connect, 100),
            LINES_PER_WINDOW - 1
        );
    }

    #[test]
    fn log_and_on_timer_close_a_due_window() {
        let mut log = ActivityLog::default();
        for _ in 0..LINES_PER_WINDOW + 3 {
            log.log(0, Activity::Connect, String::new);
        }
        assert_eq!(log.suppressed.connects, 3);
        log.on_timer(WINDOW_MS - 1);
        assert_eq!(log.suppressed.connects, 3, "the window is still open");
        log.on_timer(WINDOW_MS);
        assert_eq!(log.suppressed, Suppressed::default());
        assert_eq!(log.next_deadline_ms(), None);

        for _ in 0..LINES_PER_WINDOW + 2 {
            log.log(5 * WINDOW_MS, Activity::Disconnect, String::new);
        }
        assert_eq!(log.suppressed.disconnects, 2);
        // The next line, after the window, logs the summary before itself.
        log.log(7 * WINDOW_MS, Activity::Connect, String::new);
        assert_eq!(log.suppressed, Suppressed::default());
        assert_eq!(log.logged, 1);
    }

    #[test]
    fn flush_closes_the_window_early() {
        let mut log = ActivityLog::default();
        admit_many(&mut log, 40, Activity::Disconnect, LINES_PER_WINDOW + 4);
        log.flush();
        assert_eq!(log.suppressed, Suppressed::default());
        assert_eq!(log.window_end_ms, None);
        log.flush();
    }
}
