//! The experiment write-up: what changed, the hypothesis, the metrics, the
//! decision process, the results and the verdict.

use std::fmt::Write as _;

use crate::report::Report;

use super::{effect, value};

pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# Experiment: {}\n", r.experiment);
    let _ = writeln!(
        w,
        "**Verdict: `{}`** — {} vs {}, {} over {}, {} look(s), generated {}.\n",
        r.verdict.as_str(),
        r.candidate,
        r.baseline,
        r.source,
        r.window,
        r.looks.len(),
        r.generated_at
    );
    let _ = writeln!(
        w,
        "## What changed\n\n{}\n",
        if r.change.is_empty() {
            "(not stated in the plan)"
        } else {
            &r.change
        }
    );
    let _ = writeln!(w, "## Hypothesis\n\n{}\n", r.hypothesis);
    let _ = writeln!(w, "## Metrics\n");
    let _ = writeln!(w, "| metric | role | rule |\n|---|---|---|");
    for c in &r.checks {
        let _ = writeln!(w, "| {} | {} | {} |", c.name, c.role.as_str(), c.threshold);
    }
    let _ = writeln!(w, "\n## Decision process\n");
    let _ = writeln!(
        w,
        "- A **critical** metric that fails rolls the candidate back, whatever else holds.\n\
         - A **sample-ratio mismatch** (the split is not the one configured) makes the experiment **invalid**: no comparison can be trusted.\n\
         - A **guardrail** or **goal** that fails rolls back.\n\
         - The candidate is **promoted** when every critical, guardrail and goal metric passes with its minimum sample; otherwise the experiment **continues**.\n\
         - Intervals: {}.\n\
         - Family-wise error: {}.\n\
         - Split: {}.\n\
         - Latency: {}.\n\
         - Acceptance: {}.",
        r.method.sequential,
        r.method.family_wise,
        r.method.srm,
        r.method.latency,
        r.method.acceptance
    );
    let _ = writeln!(w, "\n## Results\n");
    let _ = writeln!(
        w,
        "| metric | role | {} | {} | effect [CI] | samples | status |\n|---|---|---:|---:|---:|---:|---|",
        r.baseline, r.candidate
    );
    for c in &r.checks {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} / {} | **{}** |",
            c.name,
            c.role.as_str(),
            value(c, c.baseline),
            value(c, c.candidate),
            effect(c),
            c.samples.baseline,
            c.samples.candidate,
            c.status.as_str()
        );
    }
    let _ = writeln!(w);
    for c in &r.checks {
        let _ = writeln!(w, "- **{}**: {}", c.name, c.reason);
    }
    if let Some(s) = &r.shadow {
        let _ = writeln!(
            w,
            "\n## Shadow launch\n\nPer request, from the event log (95% Wilson intervals; descriptive, not part of the verdict):\n"
        );
        for line in super::shadow_lines(s, &r.baseline, &r.candidate) {
            let _ = writeln!(w, "- {line}");
        }
        let _ = writeln!(
            w,
            "\n| {b} \\ {c} | offer | no offer |\n|---|---:|---:|\n| offer | {} | {} |\n| no offer | {} | {} |",
            s.flip_table[0][0],
            s.flip_table[0][1],
            s.flip_table[1][0],
            s.flip_table[1][1],
            b = r.baseline,
            c = r.candidate
        );
    }
    let _ = writeln!(w, "\n## Verdict: `{}`\n", r.verdict.as_str());
    for reason in &r.reasons {
        let _ = writeln!(w, "- {reason}");
    }
    out
}
