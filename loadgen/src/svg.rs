//! A small hand-written SVG line chart: stacked panels sharing a time axis, one polyline per
//! series, a legend and labelled grid lines. Enough for a capacity planner's document, without a
//! plotting dependency.

use std::fmt::Write as _;

/// One line of a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// `(x, y)` points in data units, x ascending.
    pub points: Vec<(f64, f64)>,
}

/// One stacked panel with its own y axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    /// Unit shown after the y labels.
    pub unit: String,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 190.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 60.0;
const GAP: f64 = 40.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// Series with at most this many points get a marker on each.
const MARKED_POINTS: usize = 32;

/// The smallest "nice" number (1, 2 or 5 times a power of ten) at or above `value`.
pub fn nice_ceiling(value: f64) -> f64 {
    if !(value.is_finite() && value > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if step * magnitude >= value * (1.0 - 1e-12) {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn label(value: f64) -> String {
    if value == 0.0 {
        "0".into()
    } else if value.abs() >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// An axis from 0 with about `ticks` steps of 1, 2 or 5 times a power of ten: `(top, step)`,
/// the top being the first step at or above `max`.
pub fn axis(max: f64, ticks: u32) -> (f64, f64) {
    let step = nice_ceiling(max / f64::from(ticks.max(1)));
    let steps = (max / step - 1e-9).ceil().max(1.0);
    (steps * step, step)
}

/// Renders the panels as a standalone SVG document; `x_label` names the shared x axis.
pub fn render(title: &str, x_label: &str, panels: &[Panel]) -> String {
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP) + 20.0;
    let plot_width = WIDTH - LEFT - RIGHT;
    let (x_max, x_step) = axis(
        panels
            .iter()
            .flat_map(|p| &p.series)
            .flat_map(|s| s.points.iter().map(|(x, _)| *x))
            .fold(0.0, f64::max),
        6,
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for (index, panel) in panels.iter().enumerate() {
        let top = TOP + index as f64 * (PANEL_HEIGHT + GAP);
        let bottom = top + PANEL_HEIGHT;
        let (y_max, y_step) = axis(
            panel
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|(_, y)| *y))
                .fold(0.0, f64::max),
            4,
        );
        let to_x = |x: f64| LEFT + x / x_max * plot_width;
        let to_y = |y: f64| bottom - (y / y_max).clamp(0.0, 1.0) * PANEL_HEIGHT;
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{} ({})</text>"#,
            top - 6.0,
            escape(&panel.title),
            escape(&panel.unit)
        );
        for step in 0..=(y_max / y_step).round() as u32 {
            let value = y_step * f64::from(step);
            let y = to_y(value);
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_width,
                LEFT - 6.0,
                y + 4.0,
                label(value)
            );
        }
        for step in 0..=(x_max / x_step).round() as u32 {
            let value = x_step * f64::from(step);
            let x = to_x(value);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{bottom}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                bottom + 15.0,
                label(value)
            );
        }
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_width}" height="{PANEL_HEIGHT}" fill="none" stroke="#888"/>"##
        );
        for (number, series) in panel.series.iter().enumerate() {
            let color = COLORS[number % COLORS.len()];
            let points: Vec<String> = series
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|(x, y)| format!("{:.1},{:.1}", to_x(*x), to_y(*y)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
                points.join(" ")
            );
            // A few measured points (one per run, not per second): mark each.
            if points.len() <= MARKED_POINTS {
                for point in &points {
                    let (x, y) = point.split_once(',').unwrap_or(("0", "0"));
                    let _ = writeln!(out, r#"<circle cx="{x}" cy="{y}" r="3.5" fill="{color}"/>"#);
                }
            }
            let legend_y = top + 14.0 + number as f64 * 16.0;
            let legend_x = LEFT + plot_width + 12.0;
            let _ = writeln!(
                out,
                r#"<line x1="{legend_x}" x2="{}" y1="{}" y2="{}" stroke="{color}" stroke-width="3"/><text x="{}" y="{legend_y}">{}</text>"#,
                legend_x + 18.0,
                legend_y - 4.0,
                legend_y - 4.0,
                legend_x + 24.0,
                escape(&series.name)
            );
        }
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + plot_width / 2.0,
        height - 6.0,
        escape(x_label)
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(3.9), 5.0);
        assert_eq!(nice_ceiling(612.0), 1000.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
    }

    #[test]
    fn axes_end_on_a_step() {
        let close = |(top, step): (f64, f64), want: (f64, f64)| {
            assert!(
                (top - want.0).abs() < 1e-9 && (step - want.1).abs() < 1e-9,
                "{top} {step}"
            );
        };
        close(axis(30.0, 6), (30.0, 5.0));
        close(axis(19.7, 4), (20.0, 5.0));
        close(axis(0.117, 4), (0.15, 0.05));
        close(axis(1000.0, 4), (1000.0, 500.0));
        close(axis(0.0, 4), (1.0, 1.0));
    }

    #[test]
    fn renders_a_polyline_per_series_and_escapes_names() {
        let panels = vec![
            Panel {
                title: "Throughput".into(),
                unit: "Gbit/s".into(),
                series: vec![Series {
                    name: "viewers <all>".into(),
                    points: vec![(0.0, 0.0), (1.0, 1.5), (2.0, 2.0)],
                }],
            },
            Panel {
                title: "CPU".into(),
                unit: "%".into(),
                series: vec![
                    Series {
                        name: "shard-0".into(),
                        points: vec![(0.0, 50.0), (2.0, 90.0)],
                    },
                    Series {
                        name: "shard-1".into(),
                        points: vec![(0.0, 5.0), (2.0, f64::NAN)],
                    },
                ],
            },
        ];
        let svg = render("fan-out", "seconds", &panels);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("viewers &lt;all&gt;"));
        // y axis of the first panel tops at the nice ceiling of 2.0; x axis at 2.
        assert!(svg.contains(">2</text>"));
        assert!(!svg.contains("NaN"));
    }
}
