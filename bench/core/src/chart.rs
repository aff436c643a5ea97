//! A hand-written SVG scatter chart: throughput against p99 latency.

use std::fmt::Write as _;

/// One marker of the chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Text beside the marker.
    pub label: String,
    /// p99 latency, milliseconds (x axis).
    pub p99_ms: f64,
    /// Operations per second (y axis).
    pub operations_per_s: f64,
}

/// A named set of points drawn in one colour; `joined` draws a line through them in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// CSS colour.
    pub colour: String,
    /// Whether to join the points with a line.
    pub joined: bool,
    /// The points.
    pub points: Vec<Point>,
}

const WIDTH: f64 = 840.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 260.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const TICKS: usize = 5;

/// A "nice" step (1, 2 or 5 times a power of ten) covering `span` in about `TICKS` steps.
fn nice_step(span: f64) -> f64 {
    assert!(span > 0.0 && span.is_finite());
    let raw = span / TICKS as f64;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * power)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * power);
    assert!(step >= raw);
    step
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders `series` as an SVG document titled `title`. Points with a non-finite coordinate are
/// left out. Both axes start at zero.
pub fn svg(title: &str, series: &[Series]) -> String {
    let finite = |point: &&Point| point.p99_ms.is_finite() && point.operations_per_s.is_finite();
    let all: Vec<&Point> = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(finite)
        .collect();
    let x_max_data = all.iter().map(|p| p.p99_ms).fold(1.0, f64::max);
    let y_max_data = all.iter().map(|p| p.operations_per_s).fold(1.0, f64::max);
    let x_step = nice_step(x_max_data * 1.05);
    let y_step = nice_step(y_max_data * 1.05);
    let x_max = (x_max_data * 1.05 / x_step).ceil() * x_step;
    let y_max = (y_max_data * 1.05 / y_step).ceil() * y_step;
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let x_of = |ms: f64| LEFT + ms / x_max * plot_width;
    let y_of = |ops: f64| TOP + plot_height - ops / y_max * plot_height;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        LEFT + plot_width / 2.0,
        escape(title)
    );
    // Grid and tick labels.
    let mut tick = 0.0;
    while tick <= x_max + x_step / 2.0 {
        let x = x_of(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e0e0e0"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{tick}</text>"##,
            TOP + plot_height,
            TOP + plot_height + 18.0
        );
        tick += x_step;
    }
    let mut tick = 0.0;
    while tick <= y_max + y_step / 2.0 {
        let y = y_of(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{tick}</text>"##,
            LEFT + plot_width,
            LEFT - 6.0,
            y + 4.0
        );
        tick += y_step;
    }
    let _ = writeln!(
        out,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_width}" height="{plot_height}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">p99 latency to global commit (ms)</text>"#,
        LEFT + plot_width / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        out,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">committed writes/s</text>"#,
        TOP + plot_height / 2.0,
        TOP + plot_height / 2.0
    );
    // Series and legend.
    for (index, series) in series.iter().enumerate() {
        let points: Vec<&Point> = series.points.iter().filter(finite).collect();
        let colour = escape(&series.colour);
        if series.joined && points.len() > 1 {
            let path: Vec<String> = points
                .iter()
                .map(|p| format!("{:.1},{:.1}", x_of(p.p99_ms), y_of(p.operations_per_s)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#,
                path.join(" ")
            );
        }
        for point in points {
            let (x, y) = (x_of(point.p99_ms), y_of(point.operations_per_s));
            let _ = writeln!(
                out,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="5" fill="{colour}"><title>{}: {:.0}/s, p99 {:.1} ms</title></circle><text x="{:.1}" y="{:.1}" fill="{colour}">{}</text>"#,
                escape(&point.label),
                point.operations_per_s,
                point.p99_ms,
                x + 7.0,
                y - 7.0,
                escape(&point.label)
            );
        }
        let legend_y = TOP + 10.0 + index as f64 * 22.0;
        let legend_x = LEFT + plot_width + 20.0;
        let _ = writeln!(
            out,
            r#"<circle cx="{legend_x:.1}" cy="{legend_y:.1}" r="5" fill="{colour}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            legend_x + 12.0,
            legend_y + 4.0,
            escape(&series.name)
        );
    }
    let _ = writeln!(out, "</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0), 20.0);
        assert_eq!(nice_step(7_300.0), 2_000.0);
        assert_eq!(nice_step(4.0), 1.0);
        assert_eq!(nice_step(0.3), 0.1);
    }

    #[test]
    fn renders_points_lines_and_legend() {
        let series = vec![
            Series {
                name: "Charter 3 nodes <sweep>".to_owned(),
                colour: "#1f77b4".to_owned(),
                joined: true,
                points: vec![
                    Point {
                        label: "100:2".to_owned(),
                        p99_ms: 12.0,
                        operations_per_s: 5000.0,
                    },
                    Point {
                        label: "1000:10".to_owned(),
                        p99_ms: 30.0,
                        operations_per_s: 8000.0,
                    },
                    Point {
                        label: "nan".to_owned(),
                        p99_ms: f64::NAN,
                        operations_per_s: 1.0,
                    },
                ],
            },
            Series {
                name: "etcd".to_owned(),
                colour: "red".to_owned(),
                joined: false,
                points: vec![Point {
                    label: "etcd".to_owned(),
                    p99_ms: 64.0,
                    operations_per_s: 3400.0,
                }],
            },
        ];
        let svg = svg("Throughput & p99", &series);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        // Three finite points plus two legend markers.
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("Throughput &amp; p99"));
        assert!(svg.contains("&lt;sweep&gt;"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn empty_chart_is_still_valid() {
        let svg = svg("empty", &[]);
        assert!(svg.contains("</svg>"));
    }
}
