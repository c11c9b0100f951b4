//! The plot of the report: identities Ready over time, one line per run (as a share of its N, so
//! 100 and 10,000 fit one chart), with each run's calibration (N plain Secrets) as a dashed line of
//! the same colour, and its renewal storm (renewed over time from the controller's start, every
//! identity due at once) dotted. Plain SVG, no dependency: viewable on GitHub and in any browser.

use super::*;
use std::fmt::Write as _;

const W: f64 = 760.0;
const H: f64 = 380.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

/// A round step for about `target` ticks over `0..max`.
fn tick_step(max: f64, target: f64) -> f64 {
    let raw = (max / target).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG for these rows (those without a curve, from older runs, are left out).
pub(crate) fn ready_over_time(rows: &[Row], title: &str) -> String {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.ready_curve.len() > 1).collect();
    let max_t = rows
        .iter()
        .map(|r| {
            r.ready_s
                .max(r.calibration_s)
                .max(r.storm.as_ref().map_or(0.0, |s| s.renewed_s))
        })
        .fold(1.0, f64::max);
    let step = tick_step(max_t, 8.0);
    let x_max = (max_t / step).ceil() * step;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |t: f64| LEFT + t / x_max * pw;
    let y = |share: f64| TOP + (1.0 - share) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" font-size="14" font-weight="bold">{}</text>"#,
        LEFT,
        esc(title)
    );
    // Grid and axes.
    for i in 0..=4 {
        let share = i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{4}%</text>"##,
            y(share),
            LEFT + pw,
            LEFT - 6.0,
            y(share) + 4.0,
            i * 25
        );
    }
    let mut t = 0.0;
    while t <= x_max + 1e-9 {
        let label = if step < 1.0 {
            format!("{t:.1}")
        } else {
            format!("{t:.0}")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#eee"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{label}</text>"##,
            x(t),
            TOP + ph,
            TOP + ph + 16.0
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds from the first create (storm: from the controller's start)</text>"#,
        LEFT + pw / 2.0,
        H - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">identities Ready</text>"#,
        TOP + ph / 2.0
    );
    // One line per run, its calibration dashed, and a legend entry.
    for (i, r) in rows.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let n = r.n.max(1) as f64;
        let points: Vec<String> = r
            .ready_curve
            .iter()
            .map(|(t, k)| format!("{:.1},{:.1}", x(*t), y(*k as f64 / n)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            s,
            r#"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="{colour}" stroke-dasharray="5 4"/>"#,
            x(r.calibration_s),
            TOP + ph
        );
        if let Some(storm) = r.storm.as_ref().filter(|s| s.curve.len() > 1) {
            let points: Vec<String> = storm
                .curve
                .iter()
                .map(|(t, k)| format!("{:.1},{:.1}", x(*t), y(*k as f64 / n)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="1 3" points="{}"/>"#,
                points.join(" ")
            );
        }
        let ly = TOP + 10.0 + i as f64 * 62.0;
        let lx = LEFT + pw + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">N = {}: all Ready {:.1} s</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            r.n,
            r.ready_s
        );
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{0}" x2="{1}" y2="{0}" stroke="{colour}" stroke-dasharray="5 4"/><text x="{2}" y="{3}">calibration {4:.1} s ({5:.1}x)</text>"#,
            ly + 18.0,
            lx + 22.0,
            lx + 28.0,
            ly + 22.0,
            r.calibration_s,
            r.ready_s / r.calibration_s.max(1e-9)
        );
        if let Some(storm) = &r.storm {
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{0}" x2="{1}" y2="{0}" stroke="{colour}" stroke-width="2" stroke-dasharray="1 3"/><text x="{2}" y="{3}">storm: all renewed {4:.1} s</text>"#,
                ly + 36.0,
                lx + 22.0,
                lx + 28.0,
                ly + 40.0,
                storm.renewed_s
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
