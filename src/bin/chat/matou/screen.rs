//! Standard output and standard error, shared by the session thread and the transfer threads,
//! with the progress bars of running transfers on stderr when it is a terminal.
//!
//! Bars are drawn by indicatif, which throttles redraws and keeps several bars apart; every
//! line printed goes through [`MultiProgress::suspend`], so a line never lands in the middle
//! of a bar. When stderr is not a terminal there are no bars: the start and end of each
//! transfer are lines of their own on stdout either way.

use std::io::{self, Write};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(super) struct Screen {
    bars: MultiProgress,
    /// Draw bars at all (stderr is a terminal).
    enabled: bool,
}

impl Screen {
    pub(super) fn new(enabled: bool) -> Screen {
        let target = if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Screen {
            bars: MultiProgress::with_draw_target(target),
            enabled,
        }
    }

    /// One line (with its newline) on stdout.
    pub(super) fn out(&self, line: &str) -> io::Result<()> {
        self.bars.suspend(|| {
            let mut out = io::stdout().lock();
            out.write_all(line.as_bytes()).and_then(|()| out.flush())
        })
    }

    /// One line (without its newline) on stderr.
    pub(super) fn err(&self, line: &str) {
        self.bars.suspend(|| {
            let _ = writeln!(io::stderr().lock(), "{line}");
        });
    }

    /// A bar for a transfer of `total` bytes, or none when bars are not shown.
    pub(super) fn bar(&self, total: u64, label: &str) -> Option<ProgressBar> {
        if !self.enabled {
            return None;
        }
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
             {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = ProgressBar::new(total)
            .with_style(style)
            .with_prefix(label.to_owned());
        Some(self.bars.add(bar))
    }

    /// The transfer is over: its bar goes (its end is a line of its own).
    pub(super) fn remove_bar(&self, bar: &ProgressBar) {
        bar.finish_and_clear();
        self.bars.remove(bar);
    }
}
