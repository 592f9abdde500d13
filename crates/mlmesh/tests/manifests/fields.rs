//! The releases a user really installs, field by field. The typed structs
//! come from older releases (Istio 1.27's CRDs, the Gateway API's v1.5) or
//! cover only what mlmesh uses (Argo Rollouts, Flagger), so every such
//! document is also walked against the field paths of the installed
//! releases' CRDs (crd-fields.txt, made by scripts/crd-fields.py): a field
//! must be known to both, so neither a field 1.31 dropped nor one 1.27 never
//! had gets through.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use serde_yaml_ng::Value;

static FIELDS: LazyLock<BTreeSet<&'static str>> = LazyLock::new(|| {
    include_str!("crd-fields.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect()
});

/// What the field list was made from, for messages.
pub const RELEASES: &str = "Istio 1.31, Gateway API v1.6.1, Argo Rollouts v1.9.1, Flagger v1.44.0";

/// Reports every field of `doc` (an `apiVersion`/`kind` document) that its
/// kind's CRD in the installed releases does not have; kinds the list does
/// not cover are left to the typed parse.
pub fn check(origin: &str, doc: &Value, problems: &mut Vec<String>) {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let prefix = format!("{api} {kind} ");
    if !FIELDS.iter().any(|f| f.starts_with(&prefix)) {
        return;
    }
    let has = |path: &str| FIELDS.contains(format!("{prefix}{path}").as_str());
    walk(origin, kind, "spec", &doc["spec"], &has, problems);
}

fn walk(
    origin: &str,
    kind: &str,
    path: &str,
    v: &Value,
    has: &dyn Fn(&str) -> bool,
    problems: &mut Vec<String>,
) {
    // x-kubernetes-preserve-unknown-fields: anything goes below.
    if has(&format!("{path}.*")) {
        return;
    }
    match v {
        Value::Mapping(m) => {
            for (k, x) in m {
                let key = k.as_str().unwrap_or_default();
                let field = format!("{path}.{key}");
                let map = format!("{path}{{}}");
                if has(&field) {
                    walk(origin, kind, &field, x, has, problems);
                } else if has(&map) {
                    walk(origin, kind, &map, x, has, problems);
                } else {
                    problems.push(format!(
                        "{origin}: {field} is not a field of {kind} in {RELEASES}"
                    ));
                }
            }
        }
        Value::Sequence(s) => {
            for x in s {
                walk(origin, kind, &format!("{path}[]"), x, has, problems);
            }
        }
        _ => {}
    }
}
