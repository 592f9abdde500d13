//! One self-contained page (inline CSS and SVG, nothing fetched): the
//! verdict, the table, each metric's effect and interval across the looks,
//! the latency distributions and the score histograms.

use std::fmt::Write as _;

use crate::checks::{Check, Status, ms};
use crate::histogram::Histogram;
use crate::report::{Report, Verdict};

use super::{effect, value};

const BASE: &str = "#4e79a7";
const CAND: &str = "#f28e2b";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn status_class(s: Status) -> &'static str {
    match s {
        Status::Pass => "pass",
        Status::Fail => "fail",
        Status::Inconclusive => "inc",
        Status::NoData => "nodata",
    }
}

pub fn html(r: &Report) -> String {
    let mut o = String::new();
    let verdict_color = match r.verdict {
        Verdict::Promote => "#2e7d32",
        Verdict::Rollback => "#c62828",
        Verdict::Continue => "#b26a00",
        Verdict::Invalid => "#6a1b9a",
    };
    let _ = write!(
        o,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{name}: {verdict}</title>
<style>
body{{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}}
h1{{margin-bottom:.2em}} .verdict{{display:inline-block;padding:.2em .7em;border-radius:.3em;color:#fff;background:{verdict_color};font-weight:700;letter-spacing:.05em}}
table{{border-collapse:collapse;width:100%;margin:1em 0}} th,td{{border-bottom:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}}
td.num{{text-align:right;font-variant-numeric:tabular-nums}} .pass{{color:#2e7d32;font-weight:600}} .fail{{color:#c62828;font-weight:600}} .inc{{color:#b26a00;font-weight:600}} .nodata{{color:#888}}
.charts{{display:flex;flex-wrap:wrap;gap:1.5em}} figure{{margin:0}} figcaption{{font-size:13px;color:#555;max-width:520px}}
.legend span{{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em;vertical-align:middle}}
.muted{{color:#666;font-size:13px}}
</style></head><body>
<h1>{name}</h1>
<p><span class="verdict">{verdict}</span> &nbsp; {cand} (candidate) vs {base} (baseline) · {source} · {window} · {looks} look(s) · {at}</p>
<p><b>Hypothesis.</b> {hyp}</p>
"#,
        name = esc(&r.experiment),
        verdict = r.verdict.as_str().to_uppercase(),
        cand = esc(&r.candidate),
        base = esc(&r.baseline),
        source = esc(&r.source),
        window = esc(&r.window),
        looks = r.looks.len(),
        at = esc(&r.generated_at),
        hyp = esc(&r.hypothesis),
    );
    if !r.change.is_empty() {
        let _ = writeln!(o, "<p><b>What changed.</b> {}</p>", esc(&r.change));
    }
    let _ = writeln!(o, "<ul>");
    for reason in &r.reasons {
        let _ = writeln!(o, "<li>{}</li>", esc(reason));
    }
    let _ = writeln!(
        o,
        "</ul><table><tr><th>metric</th><th>role</th><th>{}</th><th>{}</th><th>effect [CI]</th><th>samples</th><th>rule</th><th>status</th></tr>",
        esc(&r.baseline),
        esc(&r.candidate)
    );
    for c in &r.checks {
        let _ = writeln!(
            o,
            "<tr title=\"{}\"><td>{}</td><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{} / {}</td><td>{}</td><td class={}>{}</td></tr>",
            esc(&c.reason),
            c.name,
            c.role.as_str(),
            esc(&value(c, c.baseline)),
            esc(&value(c, c.candidate)),
            esc(&effect(c)),
            c.samples.baseline,
            c.samples.candidate,
            esc(&c.threshold),
            status_class(c.status),
            c.status.as_str()
        );
    }
    let _ = writeln!(o, "</table>");
    for c in &r.checks {
        let _ = writeln!(
            o,
            "<p class=muted><b>{}</b>: {}</p>",
            c.name,
            esc(&c.reason)
        );
    }

    let _ = writeln!(
        o,
        "<h2>Effects across the looks</h2><p class=muted>Candidate minus baseline at each look, with its always-valid interval (the band) and the margin (dashed). The interval may be read at every look.</p><div class=charts>"
    );
    for c in r
        .checks
        .iter()
        .filter(|c| c.ci.is_some() && c.name != "srm")
    {
        o.push_str(&effect_chart(r, c));
    }
    let _ = writeln!(o, "</div>");

    let legend = format!(
        "<p class=legend><span style=\"background:{BASE}\"></span>{} (baseline)<span style=\"background:{CAND}\"></span>{} (candidate)</p>",
        esc(&r.baseline),
        esc(&r.candidate)
    );
    let _ = writeln!(
        o,
        "<h2>Latency of the model call</h2>{legend}<div class=charts>"
    );
    o.push_str(&bars(
        &r.data.baseline.latency,
        &r.data.candidate.latency,
        |e| ms(e).replace(".00 ", " ").replace(' ', ""),
        "share of calls per latency bucket (upper edge)",
    ));
    let _ = writeln!(
        o,
        "</div><h2>Prediction scores</h2>{legend}<div class=charts>"
    );
    let cand_scores = if r.data.candidate.scores.count == 0 {
        &r.data.candidate.shadow_scores
    } else {
        &r.data.candidate.scores
    };
    o.push_str(&bars(
        &r.data.baseline.scores,
        cand_scores,
        |e| format!("{e:.2}"),
        "share of scored rows per score bucket (upper edge)",
    ));
    o.push_str("</div>");
    if let Some(s) = &r.shadow {
        o.push_str(&shadow(r, s));
    }
    let _ = writeln!(
        o,
        "<h2>Method</h2><ul><li>{}</li><li>{}</li><li>{}</li><li>{}</li><li>{}</li></ul></body></html>",
        esc(r.method.sequential),
        esc(&r.method.family_wise),
        esc(&r.method.srm),
        esc(r.method.latency),
        esc(r.method.acceptance)
    );
    o
}

/// The shadow launch: its sentences, the flip table, and a scatter of the
/// two models' scores with the threshold drawn on both axes.
fn shadow(r: &Report, s: &crate::shadow::ShadowSection) -> String {
    let mut o = String::from(
        "<h2>Shadow launch</h2><p class=muted>Per request, from the event log: the baseline's live prediction beside the candidate's shadow prediction of the same request (95% Wilson intervals; descriptive, not part of the verdict).</p><ul>",
    );
    for line in super::shadow_lines(s, &r.baseline, &r.candidate) {
        let _ = write!(o, "<li>{}</li>", esc(&line));
    }
    let t = &s.flip_table;
    let _ = write!(
        o,
        "</ul><table><tr><th>{b} \\ {c}</th><th>offer</th><th>no offer</th></tr><tr><th>offer</th><td>{}</td><td class=fail>{}</td></tr><tr><th>no offer</th><td class=fail>{}</td><td>{}</td></tr></table>",
        t[0][0],
        t[0][1],
        t[1][0],
        t[1][1],
        b = esc(&r.baseline),
        c = esc(&r.candidate)
    );
    // Scores on a square-root scale: most customers sit near 0.
    let (size, pad) = (360.0_f64, 36.0_f64);
    let top = s
        .scatter
        .iter()
        .flat_map(|p| [p[0], p[1]])
        .fold(s.threshold as f32, f32::max)
        .max(1e-6) as f64;
    let at = |v: f64| pad + (v.max(0.0) / top).sqrt() * (size - 2.0 * pad);
    let mut svg = format!(
        "<figure><svg width=\"{size}\" height=\"{size}\" viewBox=\"0 0 {size} {size}\" role=\"img\"><rect width=\"{size}\" height=\"{size}\" fill=\"#fafafa\"/>"
    );
    let (lo, hi) = (at(0.0), at(top));
    let th = at(s.threshold);
    let _ = write!(
        svg,
        "<line x1=\"{lo:.1}\" y1=\"{:.1}\" x2=\"{hi:.1}\" y2=\"{:.1}\" stroke=\"#bbb\"/><line x1=\"{th:.1}\" y1=\"{:.1}\" x2=\"{th:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/><line x1=\"{lo:.1}\" y1=\"{:.1}\" x2=\"{hi:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>",
        size - lo,
        size - hi,
        size - lo,
        size - hi,
        size - th,
        size - th
    );
    for p in &s.scatter {
        let (x, y) = (f64::from(p[0]), f64::from(p[1]));
        let flip = (x >= s.threshold) != (y >= s.threshold);
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.2\" fill=\"{}\" fill-opacity=\"0.6\"><title>{x:.4} / {y:.4}</title></circle>",
            at(x),
            size - at(y),
            if flip { CAND } else { BASE }
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{} score →</text><text x=\"6\" y=\"14\" font-size=\"11\">↑ {} score</text></svg><figcaption>{} of {} pairs (square-root axes, dashed: the threshold {}; flips in the candidate's colour)</figcaption></figure>",
        size - 6.0,
        size - 8.0,
        esc(&r.baseline),
        esc(&r.candidate),
        s.scatter.len(),
        s.pairs,
        s.threshold
    );
    o.push_str(&svg);
    o
}

/// The margin line of a check, as an effect, where it has one.
fn margin_of(c: &Check) -> Option<f64> {
    c.details
        .get("margin_effect")
        .and_then(serde_json::Value::as_f64)
}

fn effect_chart(r: &Report, c: &Check) -> String {
    let (w, h, pad) = (520.0, 200.0, 44.0);
    let pts: Vec<(f64, f64, f64, f64)> = r
        .looks
        .iter()
        .filter_map(|l| {
            let lc = l.checks.iter().find(|x| x.name == c.name)?;
            let [lo, hi] = lc.ci?;
            Some((l.elapsed_seconds, lc.effect?, lo, hi))
        })
        .collect();
    let scale = if c.unit == "seconds" { 1e3 } else { 100.0 };
    let unit = if c.unit == "seconds" { "ms" } else { "pp" };
    let margin = margin_of(c);
    let finite = |v: f64| v.is_finite().then_some(v * scale);
    let mut ys: Vec<f64> = pts
        .iter()
        .flat_map(|p| [finite(p.1), finite(p.2), finite(p.3)])
        .flatten()
        .collect();
    ys.push(0.0);
    ys.extend(margin.map(|m| m * scale));
    let (mut ymin, mut ymax) = ys
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
    if ymax - ymin < 1e-9 {
        ymin -= 1.0;
        ymax += 1.0;
    }
    let span = ymax - ymin;
    let (ymin, ymax) = (ymin - span * 0.05, ymax + span * 0.05);
    let tmax = pts.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let x = |t: f64| pad + (w - 2.0 * pad) * if pts.len() == 1 { 0.5 } else { t / tmax };
    let y = |v: f64| {
        let v = if v.is_finite() {
            v
        } else if v > 0.0 {
            ymax
        } else {
            ymin
        };
        h - pad + (v.clamp(ymin, ymax) - ymin) / (ymax - ymin) * (2.0 * pad - h)
    };
    let mut s = format!(
        "<figure><svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{} effect across looks\"><rect width=\"{w}\" height=\"{h}\" fill=\"#fafafa\"/>",
        c.name
    );
    let zero = y(0.0);
    let _ = write!(
        s,
        "<line x1=\"{pad}\" x2=\"{}\" y1=\"{zero:.1}\" y2=\"{zero:.1}\" stroke=\"#999\"/>",
        w - pad
    );
    if let Some(m) = margin {
        let my = y(m * scale);
        let _ = write!(
            s,
            "<line x1=\"{pad}\" x2=\"{}\" y1=\"{my:.1}\" y2=\"{my:.1}\" stroke=\"#c62828\" stroke-dasharray=\"5 4\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"11\" fill=\"#c62828\" text-anchor=\"end\">margin</text>",
            w - pad,
            w - pad,
            my - 3.0
        );
    }
    if pts.len() > 1 {
        let upper: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.3 * scale)))
            .collect();
        let lower: Vec<String> = pts
            .iter()
            .rev()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.2 * scale)))
            .collect();
        let _ = write!(
            s,
            "<polygon points=\"{} {}\" fill=\"{CAND}\" fill-opacity=\"0.25\"/>",
            upper.join(" "),
            lower.join(" ")
        );
        let line: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1 * scale)))
            .collect();
        let _ = write!(
            s,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{CAND}\" stroke-width=\"2\"/>",
            line.join(" ")
        );
    } else if let Some(p) = pts.first() {
        let _ = write!(
            s,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"{CAND}\" stroke-width=\"6\" stroke-opacity=\"0.35\"/><circle cx=\"{0:.1}\" cy=\"{3:.1}\" r=\"4\" fill=\"{CAND}\"/>",
            x(p.0),
            y(p.2 * scale),
            y(p.3 * scale),
            y(p.1 * scale)
        );
    }
    let _ = write!(
        s,
        "<text x=\"4\" y=\"14\" font-size=\"12\">{} ({unit}, candidate − baseline)</text><text x=\"4\" y=\"{:.1}\" font-size=\"11\">{:.1}</text><text x=\"4\" y=\"{:.1}\" font-size=\"11\">{:.1}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">+{tmax:.0} s</text></svg>",
        c.name,
        y(ymax) + 10.0,
        ymax,
        y(ymin),
        ymin,
        w - pad,
        h - 6.0
    );
    let _ = write!(
        s,
        "<figcaption>{}: {}</figcaption></figure>",
        c.name,
        esc(&c.reason)
    );
    s
}

/// Grouped bars of two histograms' bucket shares.
fn bars(a: &Histogram, b: &Histogram, label: impl Fn(f64) -> String, caption: &str) -> String {
    let edges = if a.edges.len() >= b.edges.len() {
        &a.edges
    } else {
        &b.edges
    };
    if edges.is_empty() || (a.count == 0 && b.count == 0) {
        return "<p class=muted>no data yet</p>".into();
    }
    let share = |h: &Histogram| -> Vec<f64> {
        let n = h.count.max(1) as f64;
        let mut v: Vec<f64> = h.bucket_counts().iter().map(|&c| c as f64 / n).collect();
        v.resize(edges.len() + 1, 0.0);
        v
    };
    let (sa, sb) = (share(a), share(b));
    // Leading and trailing buckets empty in both are not drawn.
    let used: Vec<usize> = (0..=edges.len())
        .filter(|&i| sa[i] > 0.0 || sb[i] > 0.0)
        .collect();
    let (first, last) = (used[0], *used.last().unwrap_or(&0));
    let n = last - first + 1;
    let (w, h, pad) = (
        1000.0_f64.min(60.0 + 44.0 * n as f64).max(360.0),
        220.0,
        34.0,
    );
    let bw = (w - 2.0 * pad) / n as f64;
    let top = sa.iter().chain(&sb).cloned().fold(0.0, f64::max).max(1e-9);
    let mut s = format!(
        "<figure><svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\"><rect width=\"{w}\" height=\"{h}\" fill=\"#fafafa\"/>"
    );
    for (k, i) in (first..=last).enumerate() {
        let x0 = pad + bw * k as f64;
        for (j, (v, color)) in [(sa[i], BASE), (sb[i], CAND)].into_iter().enumerate() {
            let bh = v / top * (h - 2.0 * pad);
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{:.1}%</title></rect>",
                x0 + 2.0 + j as f64 * (bw - 4.0) / 2.0,
                h - pad - bh,
                (bw - 4.0) / 2.0,
                v * 100.0
            );
        }
        let edge = edges.get(i).map_or_else(|| "+Inf".into(), |&e| label(e));
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            x0 + bw / 2.0,
            h - pad + 14.0,
            esc(&edge)
        );
    }
    let _ = write!(
        s,
        "<text x=\"4\" y=\"14\" font-size=\"12\">max {:.1}%</text></svg><figcaption>{caption}; n = {} / {}</figcaption></figure>",
        top * 100.0,
        a.count,
        b.count
    );
    s
}
