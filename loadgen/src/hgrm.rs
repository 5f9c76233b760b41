//! `--hgrm DIR`: every latency histogram of a run as a percentile distribution in HdrHistogram's
//! text format (`.hgrm`, what Java's `outputPercentileDistribution` prints), so the files load
//! into the usual HdrHistogram plotters and compare with other tools' output line for line.
//!
//! The histograms hold µs; the files show ms (scaling ratio 1000), with 3 decimals (the
//! histograms' 3 significant digits), so no precision is lost.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::stats::LatencyHistogram;

/// Percentile steps per halving of the distance to 100%: HdrHistogram's default, so files match
/// what other tools print for the same data.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// µs per ms: the files are in ms.
const SCALING_RATIO: f64 = 1_000.0;
/// Decimals of the values: the histograms keep 3 significant digits.
const VALUE_DECIMALS: usize = 3;

/// Creates `dir` (and its parents) if missing and checks that a file can be written in it, so a
/// bad `--hgrm` fails before the run instead of after it.
pub fn prepare_dir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".loadgen-probe-{}", std::process::id()));
    fs::write(&probe, b"").map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    // Only the probe's creation matters; a probe left behind is harmless.
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// Writes `hist` to `dir/name.hgrm` and returns the file's path.
pub fn write_hgrm(dir: &Path, name: &str, hist: &LatencyHistogram) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("{name}.hgrm"));
    fs::write(&path, percentile_distribution(hist))?;
    Ok(path)
}

/// The `.hgrm` text of `hist`: a header, one line per percentile step (value in ms, percentile
/// as a fraction, count at or below, 1/(1-percentile)), the last line (100%) without the last
/// column, and the Mean/StdDeviation/Max/Total count/Buckets footer.
pub fn percentile_distribution(hist: &LatencyHistogram) -> String {
    let h = hist.histogram();
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total_count: u64 = 0;
        for step in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total_count += step.count_since_last_iteration();
            let value_ms = step.value_iterated_to() as f64 / SCALING_RATIO;
            let quantile = step.quantile_iterated_to();
            if quantile < 1.0 {
                let _ = writeln!(
                    out,
                    "{value_ms:12.VALUE_DECIMALS$} {quantile:2.12} {total_count:10} {:14.2}",
                    1.0 / (1.0 - quantile)
                );
            } else {
                let _ = writeln!(
                    out,
                    "{value_ms:12.VALUE_DECIMALS$} {quantile:2.12} {total_count:10}"
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.VALUE_DECIMALS$}, StdDeviation   = {:12.VALUE_DECIMALS$}]",
        h.mean() / SCALING_RATIO,
        h.stdev() / SCALING_RATIO
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.VALUE_DECIMALS$}, Total count    = {:12}]",
        h.max() as f64 / SCALING_RATIO,
        h.len()
    );
    // The crate does not expose the sub-bucket count; its counts array holds
    // (buckets + 1) x (sub-buckets / 2) slots, as in every HdrHistogram implementation.
    let buckets = usize::from(h.buckets());
    let sub_buckets = 2 * h.distinct_values() / (buckets + 1);
    let _ = writeln!(
        out,
        "#[Buckets = {buckets:12}, SubBuckets     = {sub_buckets:12}]"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_histogram_gives_known_lines() {
        let mut hist = LatencyHistogram::new();
        // 1..=1000 µs: exact at this precision (below 2048 every µs has its own slot).
        for us in 1..=1_000 {
            hist.record(us);
        }
        let text = percentile_distribution(&hist);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        assert_eq!(
            lines[2],
            "       0.001 0.000000000000          1           1.00"
        );
        assert!(
            lines.contains(&"       0.500 0.500000000000        500           2.00"),
            "{text}"
        );
        assert!(
            // The crate's steps accumulate in floating point: 0.9 lands just past 900/1000.
            lines.contains(&"       0.901 0.900000000000        901          10.00"),
            "{text}"
        );
        // 99% is not one of the steps (they halve the distance to 100%); 99.21875% is.
        assert!(
            lines.contains(&"       0.993 0.992187500000        993         128.00"),
            "{text}"
        );
        let footer = &lines[lines.len() - 4..];
        assert_eq!(footer[0], "       1.000 1.000000000000       1000");
        assert_eq!(
            footer[1],
            "#[Mean    =        0.500, StdDeviation   =        0.289]"
        );
        assert_eq!(
            footer[2],
            "#[Max     =        1.000, Total count    =         1000]"
        );
        // 1 µs to 60 s at 3 significant digits: 2048 sub-buckets, 16 buckets (as Java says).
        assert_eq!(
            footer[3],
            "#[Buckets =           16, SubBuckets     =         2048]"
        );
        // Every step line has four columns, the last one three, and the counts never go down.
        let steps = &lines[2..lines.len() - 3];
        let mut previous = 0;
        for (i, line) in steps.iter().enumerate() {
            let columns: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(
                columns.len(),
                if i + 1 == steps.len() { 3 } else { 4 },
                "{line}"
            );
            let count: u64 = columns[2].parse().unwrap();
            assert!(count >= previous, "{line}");
            previous = count;
        }
    }

    #[test]
    fn values_above_single_us_resolution_show_their_bucket_top() {
        let mut hist = LatencyHistogram::new();
        hist.record(12_345); // 12.345 ms: a 8 µs-wide slot at this magnitude
        let text = percentile_distribution(&hist);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2],
            "      12.351 0.000000000000          1           1.00"
        );
        assert_eq!(lines[3], "      12.351 1.000000000000          1");
        assert!(text.contains("#[Max     =       12.351, Total count    =            1]"));
    }

    #[test]
    fn empty_histogram_is_header_and_zero_footer() {
        let text = percentile_distribution(&LatencyHistogram::new());
        assert_eq!(
            text,
            "       Value     Percentile TotalCount 1/(1-Percentile)\n\n\
             #[Mean    =        0.000, StdDeviation   =        0.000]\n\
             #[Max     =        0.000, Total count    =            0]\n\
             #[Buckets =           16, SubBuckets     =         2048]\n"
        );
    }

    #[test]
    fn writes_named_file_in_a_created_directory() {
        let base = std::env::temp_dir().join(format!("loadgen-hgrm-test-{}", std::process::id()));
        let dir = base.join("nested/deeper");
        prepare_dir(&dir).unwrap();
        let mut hist = LatencyHistogram::new();
        hist.record(250);
        let path = write_hgrm(&dir, "room-delivery", &hist).unwrap();
        assert_eq!(path, dir.join("room-delivery.hgrm"));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            percentile_distribution(&hist)
        );
        // The probe file is gone: only the histogram is left.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("room-delivery.hgrm")]);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn unusable_directory_fails_before_the_run() {
        let base = std::env::temp_dir().join(format!("loadgen-hgrm-bad-{}", std::process::id()));
        fs::create_dir_all(&base).unwrap();
        // A regular file where a directory is wanted: neither creatable nor writable, even as
        // root (permission bits would not stop root).
        let file = base.join("a-file");
        fs::write(&file, b"x").unwrap();
        let err = prepare_dir(&file).unwrap_err();
        assert!(err.contains("cannot create directory"), "{err}");
        let err = prepare_dir(&file.join("below")).unwrap_err();
        assert!(err.contains("a-file"), "{err}");
        fs::remove_dir_all(&base).unwrap();
    }
}
