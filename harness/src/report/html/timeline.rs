//! One run's timeline in SVG: the events across the top and through every panel, the lanes of
//! the target's processes, the connections over time coloured by outcome, connect and reply
//! latency (p50, p99) over time, and every failed connection the journal kept, each with its
//! record on hover (`<title>`).

use std::fmt::Write as _;
use std::time::Duration;

use crate::journal::{LoadBucket, LoadSeries};
use crate::model::{Action, ConnRecord, Injected, Outcome, RunRecord};
use crate::report::lanes::{Lane, lanes};
use crate::report::xml_escape as esc;

/// Left margin for the labels, and the width of the plots, in SVG units (pixels).
const LABEL: f64 = 170.0;
const PLOT: f64 = 1150.0;
const LANE: f64 = 22.0;
const BAND: f64 = 90.0;
const LATENCY: f64 = 130.0;
const FAIL_ROW: f64 = 16.0;
const GAP: f64 = 14.0;
const TOP: f64 = 18.0;
const AXIS: f64 = 22.0;

/// The colour an outcome is drawn in.
pub fn colour(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "#7fbf7f",
        Outcome::Refused => "#8e44ad",
        Outcome::Reset => "#d62728",
        Outcome::Timeout => "#ff7f0e",
        Outcome::Short => "#8c564b",
        Outcome::BadReply => "#e6ab02",
    }
}

/// A latency line: its name, its value in a bucket (how many samples, microseconds), its
/// colour, and whether it is dashed.
type Line = (
    &'static str,
    fn(&LoadBucket) -> (u64, u64),
    &'static str,
    bool,
);

/// The latency lines.
const LINES: [Line; 4] = [
    (
        "connect p50",
        |b| (b.connect_us.count, b.connect_us.p50),
        "#1f77b4",
        false,
    ),
    (
        "connect p99",
        |b| (b.connect_us.count, b.connect_us.p99),
        "#1f77b4",
        true,
    ),
    (
        "reply p50",
        |b| (b.reply_us.count, b.reply_us.p50),
        "#e07b00",
        false,
    ),
    (
        "reply p99",
        |b| (b.reply_us.count, b.reply_us.p99),
        "#e07b00",
        true,
    ),
];

/// Where a time goes.
struct Scale {
    end: f64,
}

impl Scale {
    fn x(&self, t: Duration) -> f64 {
        self.xs(t.as_secs_f64())
    }

    fn xs(&self, secs: f64) -> f64 {
        LABEL + (secs / self.end).clamp(0.0, 1.0) * PLOT
    }
}

/// The timeline of `r`, an `<svg>` element.
pub fn render(r: &RunRecord) -> String {
    let lanes = lanes(r);
    let failed_rows: Vec<Outcome> = Outcome::ALL
        .into_iter()
        .filter(|o| r.journal.failures.iter().any(|c| c.outcome == *o))
        .collect();
    let series = &r.journal.series;
    let series_end = series.bucket.as_secs_f64() * series.buckets.len() as f64;
    let scale = Scale {
        end: r.end.as_secs_f64().max(series_end).max(0.001),
    };
    let lanes_y = TOP;
    let band_y = lanes_y + LANE * lanes.len() as f64 + GAP;
    let latency_y = band_y + BAND + GAP;
    let fail_y = latency_y + LATENCY + GAP;
    let axis_y = fail_y + FAIL_ROW * failed_rows.len().max(1) as f64 + 4.0;
    let height = axis_y + AXIS;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {:.0} {height:.0}\">",
        LABEL + PLOT + 20.0,
        LABEL + PLOT + 20.0,
    );
    time_axis(&mut out, &scale, axis_y);
    for (k, lane) in lanes.iter().enumerate() {
        lane_row(&mut out, &scale, lanes_y + LANE * k as f64, lane);
    }
    band(&mut out, &scale, band_y, series);
    latency(&mut out, &scale, latency_y, series);
    failures(&mut out, &scale, fail_y, &failed_rows, &r.journal.failures);
    // Last, so that they are drawn over the panels and their labels stay readable.
    events(&mut out, &scale, axis_y, &r.injected);
    out.push_str("</svg>\n");
    out
}

/// Ticks at round times under the plots, with faint lines up through them.
fn time_axis(out: &mut String, scale: &Scale, y: f64) {
    let step = tick_step(scale.end);
    let mut t = 0.0;
    while t <= scale.end + 1e-9 {
        let x = scale.xs(t);
        let _ = writeln!(
            out,
            "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{TOP:.0}\" x2=\"{x:.1}\" y2=\"{y:.0}\"/><text x=\"{x:.1}\" y=\"{:.0}\" text-anchor=\"middle\">{}</text>",
            y + 14.0,
            seconds_label(t, step)
        );
        t += step;
    }
}

/// A round step giving 5 to 12 ticks over `end` seconds.
fn tick_step(end: f64) -> f64 {
    let raw = end / 10.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(magnitude * 10.0)
}

fn seconds_label(t: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{t:.0}s")
    } else if step >= 0.1 {
        format!("{t:.1}s")
    } else {
        format!("{t:.2}s")
    }
}

/// Each injection: a line from the top through every panel, labelled at the top.
fn events(out: &mut String, scale: &Scale, bottom: f64, injected: &[Injected]) {
    for i in injected {
        let label = match &i.action {
            Action::Restart => "restart".to_string(),
            Action::Stop => "stop".to_string(),
            Action::Kill { signal, .. } => format!("kill {signal}"),
            Action::FailNext { mode } => format!("fail-next {mode}"),
            Action::Load { profile } => format!("load {}", profile.name()),
        };
        let class = match (&i.action, &i.error) {
            (_, Some(_)) => "event failed",
            (Action::Restart, None) => "event restart",
            _ => "event",
        };
        let mut title = format!("{label} at {:.3}s", i.at.as_secs_f64());
        if let Some(pid) = i.pid {
            let _ = write!(title, " to pid {pid}");
        }
        let _ = write!(title, ", {} connections open", i.open_connections);
        if let Some(e) = &i.error {
            let _ = write!(title, "; failed: {e}");
        }
        let x = scale.x(i.at);
        // Near the right edge the label goes left of its line.
        let (tx, anchor) = if x > LABEL + PLOT - 60.0 {
            (x - 2.0, "end")
        } else {
            (x + 2.0, "start")
        };
        let _ = writeln!(
            out,
            "<g class=\"{class}\"><title>{}</title><line x1=\"{x:.1}\" y1=\"{:.0}\" x2=\"{x:.1}\" y2=\"{bottom:.0}\"/><text x=\"{tx:.1}\" y=\"12\" text-anchor=\"{anchor}\">{}</text></g>",
            esc(&title),
            TOP - 4.0,
            esc(&label)
        );
    }
}

/// A lane: a bar from `from` to its end, green once ready, with marks where it became ready
/// and where it stopped listening.
fn lane_row(out: &mut String, scale: &Scale, y: f64, lane: &Lane) {
    let end = lane.to.map_or(scale.end, |t| t.as_secs_f64());
    let x0 = scale.x(lane.from);
    let x1 = scale.xs(end).max(x0 + 1.0);
    let pids: Vec<String> = lane.pids.iter().map(u32::to_string).collect();
    let label = format!("{} (pid {})", lane.label, pids.join(", "));
    let class = if !lane.generation {
        "lane other"
    } else if lane.ready.is_some() {
        "lane ready"
    } else {
        "lane unready"
    };
    let _ = write!(
        out,
        "<g class=\"{class}\"><title>{}</title><text x=\"4\" y=\"{:.0}\">{}</text><rect x=\"{x0:.1}\" y=\"{:.0}\" width=\"{:.1}\" height=\"{:.0}\" rx=\"3\"/>",
        esc(&lane.detail),
        y + 15.0,
        esc(&clip(&label, 26)),
        y + 4.0,
        x1 - x0,
        LANE - 8.0
    );
    for (t, mark) in [(lane.ready, "ready"), (lane.stopped_listening, "unlisten")] {
        if let Some(t) = t {
            let _ = write!(
                out,
                "<rect class=\"{mark}\" x=\"{:.1}\" y=\"{:.0}\" width=\"3\" height=\"{LANE:.0}\"/>",
                scale.x(t) - 1.0,
                y + 1.0,
            );
        }
    }
    out.push_str("</g>\n");
}

/// Connections ended per bucket, stacked by outcome (failures on top of the `ok` ones and at
/// least 2 units high, so that one failure among thousands still shows), with the most
/// connections open in each bucket as a line; each column's numbers on hover.
fn band(out: &mut String, scale: &Scale, y: f64, series: &LoadSeries) {
    let total = |b: &LoadBucket| b.ended.values().sum::<u64>();
    let top = series
        .buckets
        .iter()
        .map(|b| total(b).max(b.open_peak))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let _ = writeln!(
        out,
        "<text x=\"4\" y=\"{:.0}\">connections</text><text class=\"small\" x=\"4\" y=\"{:.0}\">ended per {}, by outcome;</text><text class=\"small\" x=\"4\" y=\"{:.0}\">line: open (max {top:.0})</text><rect class=\"panel\" x=\"{LABEL:.0}\" y=\"{y:.0}\" width=\"{PLOT:.0}\" height=\"{BAND:.0}\"/>",
        y + 14.0,
        y + 28.0,
        width_label(series.bucket),
        y + 40.0,
    );
    let w = series.bucket.as_secs_f64();
    let mut open_line = String::new();
    for (k, b) in series.buckets.iter().enumerate() {
        let x0 = scale.xs(w * k as f64);
        let x1 = scale.xs(w * (k + 1) as f64);
        let _ = write!(
            out,
            "<g class=\"bucket\"><title>{}</title>",
            esc(&bucket_title(k, w, b))
        );
        // A transparent full-height column, so that hovering anywhere in it shows the title.
        let _ = write!(
            out,
            "<rect class=\"hit\" x=\"{x0:.1}\" y=\"{y:.0}\" width=\"{:.2}\" height=\"{BAND:.0}\"/>",
            (x1 - x0).max(0.5)
        );
        let mut base = y + BAND;
        for o in Outcome::ALL {
            let n = b.ended.get(o.id()).copied().unwrap_or(0);
            if n == 0 {
                continue;
            }
            let mut h = n as f64 / top * BAND;
            if o != Outcome::Ok {
                h = h.max(2.0);
            }
            base -= h;
            let _ = write!(
                out,
                "<rect x=\"{x0:.1}\" y=\"{base:.1}\" width=\"{:.2}\" height=\"{h:.1}\" fill=\"{}\"/>",
                (x1 - x0).max(0.5),
                colour(o)
            );
        }
        out.push_str("</g>\n");
        let oy = y + BAND - b.open_peak as f64 / top * BAND;
        let _ = write!(
            open_line,
            "{}{x0:.1},{oy:.1} {x1:.1},{oy:.1}",
            if k == 0 { "M" } else { " L" }
        );
    }
    if !open_line.is_empty() {
        let _ = writeln!(out, "<path class=\"open\" d=\"{open_line}\"/>");
    }
}

fn bucket_title(k: usize, w: f64, b: &LoadBucket) -> String {
    let mut t = format!(
        "{:.3}s to {:.3}s: {} started, open at most {}",
        w * k as f64,
        w * (k + 1) as f64,
        b.started,
        b.open_peak
    );
    for (o, n) in &b.ended {
        let _ = write!(t, ", {n} {o}");
    }
    for (name, value, _, _) in LINES {
        let (count, us) = value(b);
        if count > 0 {
            let _ = write!(t, "; {name} {}", micros_label(us));
        }
    }
    t
}

/// Connect and reply latency per bucket on a logarithmic scale: p50 solid, p99 dashed.
fn latency(out: &mut String, scale: &Scale, y: f64, series: &LoadSeries) {
    let values = series
        .buckets
        .iter()
        .flat_map(|b| LINES.iter().map(move |l| (l.1)(b)))
        .filter(|(count, _)| *count > 0)
        .map(|(_, us)| us.max(1));
    let (lo, hi) = values.fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let _ = writeln!(
        out,
        "<text x=\"4\" y=\"{:.0}\">latency</text><rect class=\"panel\" x=\"{LABEL:.0}\" y=\"{y:.0}\" width=\"{PLOT:.0}\" height=\"{LATENCY:.0}\"/>",
        y + 14.0
    );
    for (k, (name, _, colour, dashed)) in LINES.iter().enumerate() {
        let ly = y + 30.0 + 13.0 * k as f64;
        let _ = writeln!(
            out,
            "<line x1=\"4\" y1=\"{ly:.0}\" x2=\"24\" y2=\"{ly:.0}\" stroke=\"{colour}\" stroke-width=\"2\"{}/><text class=\"small\" x=\"28\" y=\"{:.0}\">{name}</text>",
            if *dashed {
                " stroke-dasharray=\"4,2\""
            } else {
                ""
            },
            ly + 4.0
        );
    }
    if hi == 0 {
        let _ = writeln!(
            out,
            "<text class=\"small\" x=\"{:.0}\" y=\"{:.0}\">no connect or reply completed</text>",
            LABEL + 8.0,
            y + LATENCY / 2.0
        );
        return;
    }
    // Whole decades around the values, at least one decade high.
    let lo_exp = (lo as f64).log10().floor();
    let hi_exp = ((hi as f64).log10().ceil()).max(lo_exp + 1.0);
    let ly =
        |us: u64| y + LATENCY - ((us.max(1) as f64).log10() - lo_exp) / (hi_exp - lo_exp) * LATENCY;
    let mut e = lo_exp;
    while e <= hi_exp + 1e-9 {
        let gy = ly(10f64.powf(e) as u64);
        let _ = writeln!(
            out,
            "<line class=\"grid\" x1=\"{LABEL:.0}\" y1=\"{gy:.1}\" x2=\"{:.0}\" y2=\"{gy:.1}\"/><text class=\"small\" x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LABEL + PLOT,
            LABEL - 4.0,
            gy + 4.0,
            micros_label(10f64.powf(e) as u64)
        );
        e += 1.0;
    }
    let w = series.bucket.as_secs_f64();
    for (name, value, colour, dashed) in LINES {
        // A line through the buckets that have a value, broken where one has none; and a dot
        // on each, so that a lone bucket shows too.
        let mut d = String::new();
        let mut dots = String::new();
        let mut pen_down = false;
        for (k, b) in series.buckets.iter().enumerate() {
            let (count, us) = value(b);
            if count == 0 {
                pen_down = false;
                continue;
            }
            let (x, y) = (scale.xs(w * (k as f64 + 0.5)), ly(us));
            let _ = write!(d, "{}{x:.1},{y:.1}", if pen_down { " L" } else { " M" });
            let _ = write!(dots, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"1.6\"/>");
            pen_down = true;
        }
        let _ = writeln!(
            out,
            "<g class=\"latency\" stroke=\"{colour}\" fill=\"{colour}\"><title>{name}</title><path d=\"{}\"{}/>{dots}</g>",
            d.trim_start(),
            if dashed {
                " stroke-dasharray=\"4,2\""
            } else {
                ""
            }
        );
    }
}

/// Failed connections: a row per outcome, each connection a line from its start to its end
/// and a dot at its end, its record on hover.
fn failures(out: &mut String, scale: &Scale, y: f64, rows: &[Outcome], failures: &[ConnRecord]) {
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "<text x=\"4\" y=\"{:.0}\">failed connections</text><text class=\"small\" x=\"{:.0}\" y=\"{:.0}\">none</text>",
            y + 12.0,
            LABEL + 4.0,
            y + 12.0
        );
        return;
    }
    for (k, o) in rows.iter().enumerate() {
        let ry = y + FAIL_ROW * k as f64 + FAIL_ROW / 2.0;
        let _ = writeln!(
            out,
            "<text x=\"4\" y=\"{:.0}\">failed: {}</text>",
            ry + 4.0,
            o.id()
        );
        for c in failures.iter().filter(|c| c.outcome == *o) {
            let (x0, x1) = (scale.x(c.started), scale.x(c.done));
            let _ = writeln!(
                out,
                "<g class=\"conn\"><title>{}</title><line x1=\"{x0:.1}\" y1=\"{ry:.1}\" x2=\"{x1:.1}\" y2=\"{ry:.1}\" stroke=\"{col}\"/><circle cx=\"{x1:.1}\" cy=\"{ry:.1}\" r=\"3.5\" fill=\"{col}\"/></g>",
                esc(&crate::checkers::conn_line(c)),
                col = colour(*o)
            );
        }
    }
}

fn width_label(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else {
        format!("{ms:.0}ms")
    }
}

/// `850µs`, `12ms`, `1.2s`.
fn micros_label(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.1}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}µs")
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(n - 1).collect();
        c.push('…');
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_few() {
        assert_eq!(tick_step(3.0), 0.5);
        assert_eq!(tick_step(10.0), 1.0);
        assert_eq!(tick_step(3600.0), 500.0);
        assert_eq!(seconds_label(1.5, 0.5), "1.5s");
        assert_eq!(micros_label(850), "850µs");
        assert_eq!(micros_label(12_345), "12ms");
        assert_eq!(micros_label(1_300_000), "1.3s");
    }
}
