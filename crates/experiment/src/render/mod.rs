//! The report for people: a terminal table (colour only on a TTY), one line
//! per look, a Markdown write-up, and a self-contained HTML page.

mod html;
mod markdown;

pub use html::html;
pub use markdown::markdown;

use std::fmt::Write as _;

use crate::checks::{Check, Status, ms};
use crate::report::{Report, Verdict};

/// A check's baseline or candidate value in its unit.
pub(crate) fn value(c: &Check, v: Option<f64>) -> String {
    let Some(v) = v else { return "-".into() };
    match c.unit {
        "share" if c.name == "srm" => format!("{v:.0}"),
        "share" => format!("{:.2}%", v * 100.0),
        "seconds" => ms(v),
        "ks-distance" => format!("{v:.3}"),
        _ => format!("{v}"),
    }
}

/// The effect and its interval in the check's unit.
pub(crate) fn effect(c: &Check) -> String {
    let Some(e) = c.effect else { return "-".into() };
    let (fmt, scale): (fn(f64) -> String, f64) = match c.unit {
        "share" => (|x| format!("{x:+.2}"), 100.0),
        "seconds" => (|x| format!("{x:+.2}"), 1e3),
        _ => (|x| format!("{x:.3}"), 1.0),
    };
    let unit = match c.unit {
        "share" => " pp",
        "seconds" => " ms",
        _ => "",
    };
    // An unbounded end (too few samples for a tail) prints as ±∞.
    let bound = |x: f64| {
        if x.is_finite() {
            fmt(x * scale)
        } else if x > 0.0 {
            "+∞".to_owned()
        } else {
            "-∞".to_owned()
        }
    };
    match c.ci {
        Some([lo, hi]) => format!("{}{unit} [{}, {}]", fmt(e * scale), bound(lo), bound(hi)),
        None => format!("{}{unit}", fmt(e * scale)),
    }
}

fn paint(s: &str, status: Status, color: bool) -> String {
    if !color {
        return s.to_owned();
    }
    let code = match status {
        Status::Pass => "32",
        Status::Fail => "31",
        Status::Inconclusive => "33",
        Status::NoData => "2",
    };
    format!("\x1b[{code}m{s}\x1b[0m")
}

fn paint_verdict(v: Verdict, color: bool) -> String {
    let s = v.as_str().to_uppercase();
    if !color {
        return s;
    }
    let code = match v {
        Verdict::Promote => "1;32",
        Verdict::Rollback => "1;31",
        Verdict::Continue => "1;33",
        Verdict::Invalid => "1;35",
    };
    format!("\x1b[{code}m{s}\x1b[0m")
}

/// The terminal report: what, the table, the verdict and its reasons.
pub fn text(r: &Report, color: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "experiment {}: {} (baseline) vs {} (candidate), {} over {}, look {}",
        r.experiment,
        r.baseline,
        r.candidate,
        r.source,
        r.window,
        r.looks.len()
    );
    let _ = writeln!(out, "hypothesis: {}\n", r.hypothesis);
    let _ = writeln!(
        out,
        "{:<11} {:<10} {:>10} {:>10} {:>30} {:>15}  {:<38} status",
        "metric", "role", r.baseline, r.candidate, "effect [CI]", "samples", "threshold"
    );
    for c in &r.checks {
        let samples = format!("{}/{}", c.samples.baseline, c.samples.candidate);
        let status = format!("{:<12}", c.status.as_str());
        let _ = writeln!(
            out,
            "{:<11} {:<10} {:>10} {:>10} {:>30} {:>15}  {:<38} {}",
            c.name,
            c.role.as_str(),
            value(c, c.baseline),
            value(c, c.candidate),
            effect(c),
            samples,
            c.threshold,
            paint(&status, c.status, color).trim_end()
        );
    }
    if let Some(s) = &r.shadow {
        let _ = writeln!(
            out,
            "\nshadow launch (95% intervals; not part of the verdict):"
        );
        for line in shadow_lines(s, &r.baseline, &r.candidate) {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(out, "\nverdict: {}", paint_verdict(r.verdict, color));
    for reason in &r.reasons {
        let _ = writeln!(out, "  - {reason}");
    }
    let _ = writeln!(
        out,
        "\n(intervals: {}; {})",
        r.method.sequential, r.method.family_wise
    );
    out
}

/// One line per look, for `--watch`.
pub fn look_line(r: &Report, color: bool) -> String {
    let look = r.looks.last().map_or(0, |l| l.number);
    let elapsed = r.looks.last().map_or(0.0, |l| l.elapsed_seconds);
    let mut parts = Vec::new();
    for c in &r.checks {
        let e = if c.name == "srm" {
            value(c, c.baseline) + "/" + &value(c, c.candidate)
        } else {
            effect(c)
        };
        parts.push(format!(
            "{} {} {}",
            c.name,
            paint(c.status.as_str(), c.status, color),
            e
        ));
    }
    format!(
        "look {look:>3} +{elapsed:>5.0}s {:<9} {}",
        paint_verdict(r.verdict, color),
        parts.join(" · ")
    )
}

/// The shadow section as sentences, the same in every output.
pub(crate) fn shadow_lines(
    s: &crate::shadow::ShadowSection,
    baseline: &str,
    candidate: &str,
) -> Vec<String> {
    use crate::shadow::Share;
    let share = |x: &Share| match x.interval {
        Some(i) => format!(
            "{:.1}% [{:.1}, {:.1}] of {}",
            i.estimate * 100.0,
            i.lo * 100.0,
            i.hi * 100.0,
            x.of
        ),
        None => "no data".to_owned(),
    };
    let mut out = vec![
        format!(
            "{} pairs: {baseline}'s live prediction and {candidate}'s shadow prediction of the same request and input, decided at threshold {}",
            s.pairs, s.threshold
        ),
        format!(
            "{candidate} would decide as {baseline} on {}",
            share(&s.agreement)
        ),
        format!(
            "flips: {baseline} offer → {candidate} no offer {}; {baseline} no offer → {candidate} offer {}",
            share(&s.flips_to_no_offer),
            share(&s.flips_to_offer)
        ),
        format!(
            "{candidate} would have withheld the offer from {} customers who accepted it",
            share(&s.withheld_from_accepted)
        ),
        format!(
            "{candidate} would have withheld the offer from {} customers who declined it",
            share(&s.withheld_from_declined)
        ),
    ];
    if let Some(d) = &s.scores {
        out.push(format!(
            "scores: mean {candidate} − {baseline} {:+.4}, |Δ| p50 {:.4}, p95 {:.4}, rank correlation {}",
            d.mean,
            d.p50_abs,
            d.p95_abs,
            d.rank_correlation
                .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.3}"))
        ));
    }
    out.extend(s.unpaired.why.iter().cloned());
    out
}
