//! Just enough of kustomize to render k8s/overlays/* here, where no kubectl
//! runs: `resources` (files and directories with their own kustomization)
//! and `patches` of the JSON 6902 kind, targeted by kind and name (a regular
//! expression matched whole, as kustomize does). Anything else in a
//! kustomization is reported rather than silently ignored; `.ci/run` renders
//! the same overlays with the real `kubectl kustomize`.
//!
//! Like the rest of the check, base resources are taken as written: the
//! base's `namespace`, `labels` and `images` transformers are not applied
//! (every base file names its namespace and image already).

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use serde_yaml_ng::Value;

/// Fields a kustomization here may have; the last three are the base's
/// transformers, which the check does not need applied.
const KNOWN: [&str; 7] = [
    "apiVersion",
    "kind",
    "resources",
    "patches",
    "namespace",
    "labels",
    "images",
];

/// The rendered documents of the kustomization in `dir` as (origin, YAML
/// text) pairs, ready for `parse`. `read` gives a file's text by its path
/// relative to the repository (so a deliberate break can edit one).
pub fn render(
    dir: &str,
    read: &dyn Fn(&str) -> String,
    problems: &mut Vec<String>,
) -> Vec<(String, String)> {
    let docs = resources(dir, read, problems);
    docs.into_iter()
        .map(|(origin, doc)| {
            let text = serde_yaml_ng::to_string(&doc).expect("a JSON value is YAML");
            (origin, text)
        })
        .collect()
}

fn join(dir: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for p in rel.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn resources(
    dir: &str,
    read: &dyn Fn(&str) -> String,
    problems: &mut Vec<String>,
) -> Vec<(String, Json)> {
    let path = format!("{dir}/kustomization.yaml");
    let k: Value = match serde_yaml_ng::from_str(&read(&path)) {
        Ok(k) => k,
        Err(e) => {
            problems.push(format!("{path}: not YAML: {e}"));
            return Vec::new();
        }
    };
    for key in k
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.as_str())
    {
        if !KNOWN.contains(&key) {
            problems.push(format!(
                "{path}: `{key}` is beyond what the offline renderer applies (resources, JSON 6902 patches)"
            ));
        }
    }
    let mut docs = Vec::new();
    for r in k["resources"].as_sequence().into_iter().flatten() {
        let Some(r) = r.as_str() else { continue };
        let target = join(dir, r);
        if target.ends_with(".yaml") {
            let text = read(&target);
            for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
                match <Json as serde::Deserialize>::deserialize(doc) {
                    Ok(Json::Null) => {}
                    Ok(v) => docs.push((format!("{target}#{i}"), v)),
                    Err(e) => problems.push(format!("{target}#{i}: not YAML: {e}")),
                }
            }
        } else {
            docs.extend(resources(&target, read, problems));
        }
    }
    for (i, p) in k["patches"].as_sequence().into_iter().flatten().enumerate() {
        let origin = format!("{path} patches[{i}]");
        apply_patch(&origin, p, &mut docs, problems);
    }
    docs
}

fn apply_patch(origin: &str, p: &Value, docs: &mut [(String, Json)], problems: &mut Vec<String>) {
    let (Some(kind), Some(text)) = (p["target"]["kind"].as_str(), p["patch"].as_str()) else {
        problems.push(format!(
            "{origin}: needs target.kind and an inline JSON 6902 `patch` (the only kind the offline renderer applies)"
        ));
        return;
    };
    let name = p["target"]["name"].as_str().unwrap_or(".*");
    // kustomize matches the name as a whole-string regular expression.
    let Ok(name_re) = regex::Regex::new(&format!("^(?:{name})$")) else {
        problems.push(format!(
            "{origin}: target name {name:?} is no regular expression"
        ));
        return;
    };
    let ops: json_patch::Patch = match serde_yaml_ng::from_str::<Json>(text)
        .map_err(|e| e.to_string())
        .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
    {
        Ok(ops) => ops,
        Err(e) => {
            problems.push(format!("{origin}: not a JSON 6902 patch: {e}"));
            return;
        }
    };
    let mut matched = 0;
    for (doc_origin, doc) in docs.iter_mut() {
        let doc_name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if doc["kind"].as_str() != Some(kind) || !name_re.is_match(&doc_name) {
            continue;
        }
        matched += 1;
        if let Err(e) = json_patch::patch(doc, &ops) {
            problems.push(format!(
                "{origin}: does not apply to {kind} {doc_name} ({doc_origin}): {e}"
            ));
        }
    }
    // kustomize applies a patch that matches nothing without a word: a typo
    // in a target would leave the overlay quietly equal to the base.
    if matched == 0 {
        problems.push(format!(
            "{origin}: its target {kind} {name:?} matches no resource"
        ));
    }
}

/// `read` for the files as committed.
pub fn from_disk(repo: &Path) -> impl Fn(&str) -> String + '_ {
    move |rel: &str| {
        let path: PathBuf = repo.join(rel);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}
