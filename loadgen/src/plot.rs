//! `--plot FILE.svg`: the run's latency percentile curves as one self-contained SVG, the picture
//! HdrHistogram's plotter draws: x is the percentile on a log scale of 1/(1-p), so the tail gets
//! as much room as the median; y is the latency in ms, linear from 0.
//!
//! Hand-written SVG text: the picture is a few lines, labels and paths, and a plotting crate
//! would bring far more than it saves.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::stats::LatencyHistogram;

/// Decades of 1/(1-p) on the x axis: 0% to 99.999%. A run rarely has the 10^6 samples per curve
/// that would make a finer percentile meaningful; points beyond it (the max) sit on the right
/// edge.
pub const DECADES: u32 = 5;
/// Percentile steps per halving of the distance to 100%: enough points for a smooth curve
/// (about 20 per decade) while a curve stays a few hundred points.
const TICKS_PER_HALF_DISTANCE: u32 = 10;
/// How many y ticks to aim for.
const Y_TICKS_TARGET: f64 = 6.0;

const WIDTH: f64 = 960.0;
/// Height of the chart without its legend, which goes below it (one row per curve).
const CHART_HEIGHT: f64 = 600.0;
const LEGEND_ROW_HEIGHT: f64 = 20.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = WIDTH - 30.0;
const TOP: f64 = 80.0;
const BOTTOM: f64 = CHART_HEIGHT - 70.0;

/// Distinct colours that the common colour blindnesses still tell apart (Okabe-Ito, with its
/// yellow, nearly invisible on white, replaced by a brown); curves beyond eight reuse them.
const COLOURS: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#8C510A", "#000000",
];

/// Creates (truncates) `path` so a bad `--plot` fails before the run instead of after it.
pub fn prepare(path: &Path) -> Result<(), String> {
    fs::File::create(path)
        .map(drop)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// Writes the SVG for `curves` (legend label, histogram) to `path`.
pub fn write_plot(
    path: &Path,
    title: &str,
    curves: &[(&str, &LatencyHistogram)],
) -> std::io::Result<()> {
    fs::write(path, render_svg(title, curves))
}

/// Where percentile `quantile` (0 to 1) sits on the x axis, in decades of 1/(1-p): 0 at 0%,
/// 1 at 90%, 2 at 99%, ... clamped to `DECADES` (100% itself is infinitely far).
pub fn percentile_decades(quantile: f64) -> f64 {
    if quantile.is_nan() || quantile >= 1.0 {
        return f64::from(DECADES);
    }
    let decades = -(1.0 - quantile.max(0.0)).log10();
    decades.clamp(0.0, f64::from(DECADES))
}

/// A y axis from 0 with a round step (1, 2 or 5 times a power of ten) that covers `max_ms`:
/// (step, top), top being a whole number of steps.
pub fn nice_axis(max_ms: f64) -> (f64, f64) {
    let max_ms = if max_ms.is_finite() && max_ms > 0.0 {
        max_ms
    } else {
        1.0
    };
    let raw = max_ms / Y_TICKS_TARGET;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&step| step >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    // The small slack keeps a max that is already a whole number of steps from adding a step.
    let steps = (max_ms / step - 1e-9).ceil().max(1.0);
    (step, steps * step)
}

/// Decimals that show `step` exactly (0.25 needs 2, 5 needs 0).
fn decimals_for(step: f64) -> usize {
    let mut decimals = 0;
    while decimals < 6
        && ((step * 10f64.powi(decimals as i32)).round() - step * 10f64.powi(decimals as i32)).abs()
            > 1e-6
    {
        decimals += 1;
    }
    decimals
}

fn x_pixel(decades: f64) -> f64 {
    LEFT + decades / f64::from(DECADES) * (RIGHT - LEFT)
}

fn y_pixel(ms: f64, top_ms: f64) -> f64 {
    BOTTOM - ms / top_ms * (BOTTOM - TOP)
}

/// The curve's points: (percentile decades, ms), consecutive duplicates dropped.
fn curve_points(hist: &LatencyHistogram) -> Vec<(f64, f64)> {
    let h = hist.histogram();
    let mut points: Vec<(f64, f64)> = Vec::new();
    if h.is_empty() {
        return points;
    }
    for step in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        let point = (
            percentile_decades(step.quantile_iterated_to()),
            step.value_iterated_to() as f64 / 1_000.0,
        );
        // A flat run needs only its ends: keep the first point of the run, move its last.
        match points.as_slice() {
            [.., a, b] if a.1 == point.1 && b.1 == point.1 => {
                let last = points.len() - 1;
                points[last] = point;
            }
            [.., b] if *b == point => {}
            _ => points.push(point),
        }
    }
    points
}

/// Escapes text for an SVG text node or attribute.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Percentile label of decade `d`: 0%, 90%, 99%, 99.9%, ...
fn percentile_label(decade: u32) -> String {
    match decade {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        2 => "99%".to_string(),
        d => format!("99.{}%", "9".repeat(d as usize - 2)),
    }
}

/// The whole SVG: title, axes with ticks and grid, one `<path>` per non-empty histogram, and a
/// legend with each curve's count, p99 and max (an empty histogram is listed, not drawn).
pub fn render_svg(title: &str, curves: &[(&str, &LatencyHistogram)]) -> String {
    let points: Vec<Vec<(f64, f64)>> = curves.iter().map(|(_, h)| curve_points(h)).collect();
    let max_ms = points
        .iter()
        .flatten()
        .map(|&(_, ms)| ms)
        .fold(0.0, f64::max);
    let (step_ms, top_ms) = nice_axis(max_ms);
    let decimals = decimals_for(step_ms);

    // The legend sits below the chart: inside it, it would hide whichever curve rises there.
    let height = CHART_HEIGHT + curves.len() as f64 * LEGEND_ROW_HEIGHT + 16.0;
    let mut svg = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="32" text-anchor="middle" font-size="17" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="54" text-anchor="middle" fill="#555">Latency percentile distribution (open loop: measured from the planned times)</text>"##,
        WIDTH / 2.0
    );

    // Grid and ticks: y.
    let y_steps = (top_ms / step_ms).round() as u32;
    for i in 0..=y_steps {
        let ms = f64::from(i) * step_ms;
        let y = y_pixel(ms, top_ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#e3e3e3"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{ms:.decimals$}</text>"#,
            LEFT - 8.0,
            y + 4.5
        );
    }
    // Grid and ticks: x.
    for decade in 0..=DECADES {
        let x = x_pixel(f64::from(decade));
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{BOTTOM}" stroke="#e3e3e3"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            BOTTOM + 20.0,
            percentile_label(decade)
        );
    }
    // Axes and their labels.
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">Percentile (log scale of 1/(1-p); the max is at the right edge)</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 48.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="24" y="{:.1}" text-anchor="middle" transform="rotate(-90 24 {:.1})">Latency (ms)</text>"#,
        (TOP + BOTTOM) / 2.0,
        (TOP + BOTTOM) / 2.0
    );

    // Curves.
    for (i, curve) in points.iter().enumerate() {
        if curve.is_empty() {
            continue;
        }
        let mut d = String::new();
        for (j, &(decades, ms)) in curve.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if j == 0 { "M" } else { " L" },
                x_pixel(decades),
                y_pixel(ms, top_ms)
            );
        }
        let _ = writeln!(
            svg,
            r#"<path d="{d}" fill="none" stroke="{}" stroke-width="2" stroke-linejoin="round"/>"#,
            COLOURS[i % COLOURS.len()]
        );
    }

    // Legend: one row per curve, under the axis label.
    let legend_x = LEFT;
    let legend_y = CHART_HEIGHT - 6.0;
    for (i, (label, hist)) in curves.iter().enumerate() {
        let s = hist.summary();
        let text = if s.count == 0 {
            format!("{label}: no samples")
        } else {
            format!(
                "{label}: n={}, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                grouped(s.count),
                s.p50_ms,
                s.p99_ms,
                s.max_ms
            )
        };
        let y = legend_y + i as f64 * LEGEND_ROW_HEIGHT;
        let empty = points[i].is_empty();
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="{}"/>"#,
            legend_x,
            legend_x + 28.0,
            COLOURS[i % COLOURS.len()],
            if empty { 0.0 } else { 3.0 }
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}"{}>{}</text>"##,
            legend_x + 36.0,
            y + 4.5,
            if empty { r##" fill="#888""## } else { "" },
            escape(&text)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that every tag is closed in order, and counts the elements by name.
    fn check_well_formed(svg: &str) -> std::collections::HashMap<String, usize> {
        let mut stack: Vec<String> = Vec::new();
        let mut counts = std::collections::HashMap::new();
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').expect("unclosed tag") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "`<` inside a tag: {tag}");
            // Text between tags must not hold raw markup characters.
            assert!(
                !rest[..open].contains('>'),
                "stray `>` in {:?}",
                &rest[..open]
            );
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else {
                let name = tag
                    .split_whitespace()
                    .next()
                    .expect("empty tag")
                    .trim_end_matches('/');
                *counts.entry(name.to_string()).or_insert(0) += 1;
                if !tag.ends_with('/') {
                    stack.push(name.to_string());
                }
                // Attribute values are quoted in pairs.
                assert_eq!(tag.matches('"').count() % 2, 0, "odd quotes in {tag}");
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
        assert_eq!(rest.trim(), "");
        counts
    }

    fn histogram(values_us: impl IntoIterator<Item = u64>) -> LatencyHistogram {
        let mut h = LatencyHistogram::new();
        for v in values_us {
            h.record(v);
        }
        h
    }

    #[test]
    fn percentiles_map_to_decades() {
        assert_eq!(percentile_decades(0.0), 0.0);
        assert!((percentile_decades(0.9) - 1.0).abs() < 1e-9);
        assert!((percentile_decades(0.99) - 2.0).abs() < 1e-9);
        assert!((percentile_decades(0.999) - 3.0).abs() < 1e-9);
        assert!((percentile_decades(0.5) - std::f64::consts::LOG10_2).abs() < 1e-12);
        // Beyond the axis, and 100% itself, sit on the right edge; nonsense is clamped too.
        assert_eq!(percentile_decades(0.999_999_9), 5.0);
        assert_eq!(percentile_decades(1.0), 5.0);
        assert_eq!(percentile_decades(f64::NAN), 5.0);
        assert_eq!(percentile_decades(-0.5), 0.0);
        assert_eq!(x_pixel(0.0), LEFT);
        assert_eq!(x_pixel(5.0), RIGHT);
        assert_eq!(y_pixel(0.0, 2.0), BOTTOM);
        assert_eq!(y_pixel(2.0, 2.0), TOP);
    }

    #[test]
    fn y_axis_is_round() {
        assert_eq!(nice_axis(0.87), (0.2, 1.0));
        assert_eq!(nice_axis(1.0), (0.2, 1.0));
        assert_eq!(nice_axis(12.3), (5.0, 15.0));
        assert_eq!(nice_axis(3.0), (0.5, 3.0));
        let (step, top) = nice_axis(0.0123);
        assert!((step - 0.005).abs() < 1e-12 && (top - 0.015).abs() < 1e-12);
        assert_eq!(nice_axis(0.0), (0.2, 1.0));
        assert_eq!(nice_axis(f64::INFINITY), (0.2, 1.0));
        assert_eq!(decimals_for(0.2), 1);
        assert_eq!(decimals_for(0.002), 3);
        assert_eq!(decimals_for(5.0), 0);
        assert_eq!(decimals_for(20.0), 0);
    }

    #[test]
    fn labels() {
        let labels: Vec<String> = (0..=DECADES).map(percentile_label).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
        assert_eq!(escape(r#"a<b & "c">"#), "a&lt;b &amp; &quot;c&quot;&gt;");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(2_000_000), "2,000,000");
    }

    #[test]
    fn one_path_per_non_empty_curve_and_well_formed() {
        let delivery = histogram(1..=10_000);
        let connect = histogram((1..=100).map(|v| v * 50));
        let empty = LatencyHistogram::new();
        let svg = render_svg(
            "ROOM <test> & \"quotes\"",
            &[
                ("delivery", &delivery),
                ("connect", &connect),
                ("never", &empty),
            ],
        );
        let counts = check_well_formed(&svg);
        assert_eq!(counts.get("svg"), Some(&1));
        assert_eq!(counts.get("path"), Some(&2), "{svg}");
        assert!(svg.contains("ROOM &lt;test&gt; &amp; &quot;quotes&quot;"));
        assert!(svg.contains("never: no samples"));
        assert!(svg.contains("delivery: n=10,000, p50 5.003 ms"), "{svg}");
        for label in [
            "0%",
            "90%",
            "99%",
            "99.9%",
            "99.99%",
            "99.999%",
            "Latency (ms)",
        ] {
            assert!(svg.contains(&format!(">{label}<")), "{label}");
        }
        // The highest value (10 ms, 10.007 at the histogram's precision) sets the axis: 0 to 12
        // in steps of 2.
        assert!(svg.contains(">12<") && svg.contains(">2<") && !svg.contains(">14<"));
    }

    #[test]
    fn curve_rises_left_to_right_and_ends_at_the_max_on_the_right_edge() {
        let points = curve_points(&histogram(1..=1_000));
        assert_eq!(points.first(), Some(&(0.0, 0.001)));
        assert_eq!(points.last(), Some(&(f64::from(DECADES), 1.0)));
        for pair in points.windows(2) {
            assert!(pair[0].0 <= pair[1].0 && pair[0].1 <= pair[1].1, "{pair:?}");
        }
        assert!(curve_points(&LatencyHistogram::new()).is_empty());
    }

    #[test]
    fn nothing_recorded_still_draws_axes() {
        let empty = LatencyHistogram::new();
        let svg = render_svg("empty", &[("delivery", &empty)]);
        let counts = check_well_formed(&svg);
        assert_eq!(counts.get("path"), None);
        assert!(svg.contains(">1.0<"), "{svg}");
    }

    #[test]
    fn unwritable_path_fails_at_once() {
        let base = std::env::temp_dir().join(format!("loadgen-plot-test-{}", std::process::id()));
        fs::create_dir_all(&base).unwrap();
        let err = prepare(&base.join("missing-dir/plot.svg")).unwrap_err();
        assert!(
            err.contains("cannot create") && err.contains("plot.svg"),
            "{err}"
        );
        // A directory is not a file either.
        assert!(prepare(&base).is_err());
        let good = base.join("plot.svg");
        prepare(&good).unwrap();
        write_plot(&good, "t", &[("d", &histogram([5, 6, 7]))]).unwrap();
        check_well_formed(&fs::read_to_string(&good).unwrap());
        fs::remove_dir_all(&base).unwrap();
    }
}
