//! The feature schema and the seed rows, both read from the committed
//! `models/customers.csv` (written by `models/train.py`), so the feature names
//! exist in exactly one place: the file the models were trained from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Columns of the seed file before the features.
const LEADING: [&str; 3] = ["user_id", "held_out", "purchase"];

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot read seed file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("seed file {path}, line {line}: {reason}")]
    Format {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Feature names in model input order.
#[derive(Debug, Clone)]
pub struct FeatureSchema {
    names: Arc<[String]>,
    index: Arc<HashMap<String, usize>>,
    /// 16 hex digits naming the names and their order.
    fingerprint: Arc<str>,
}

impl FeatureSchema {
    pub fn new(names: Vec<String>) -> Self {
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let fingerprint = mesh_kit::fingerprint::feature_order(&names);
        Self {
            names: names.into(),
            index: Arc::new(index),
            fingerprint: fingerprint.into(),
        }
    }

    /// Names the schema: its names in their order. An answer without names
    /// lists values in this order; a caller that learnt the order from an
    /// answer with names checks the fingerprint is still the same.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
}

/// One customer's features, by schema position.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedRow {
    pub entity_id: String,
    pub values: Vec<f64>,
}

/// A value the model can take as input: finite once narrowed to FP32 (the
/// models' input type). Writes and seed rows are held to this.
pub fn fits_model_input(v: f64) -> bool {
    v.is_finite() && (v as f32).is_finite()
}

/// Reads the seed file: the schema from its header and every row.
pub fn read_seed_file(path: &Path) -> Result<(FeatureSchema, Vec<SeedRow>), SeedError> {
    let text = std::fs::read_to_string(path).map_err(|source| SeedError::Io {
        path: path.to_owned(),
        source,
    })?;
    let format = |line: usize, reason: String| SeedError::Format {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    if header.len() <= LEADING.len() || header[..LEADING.len()] != LEADING {
        return Err(format(
            1,
            format!(
                "header must start with {} and name the features",
                LEADING.join(",")
            ),
        ));
    }
    let schema = FeatureSchema::new(
        header[LEADING.len()..]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    );
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let line_no = i + 2;
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != header.len() {
            return Err(format(
                line_no,
                format!("{} columns, header has {}", cells.len(), header.len()),
            ));
        }
        let values = cells[LEADING.len()..]
            .iter()
            .map(|c| {
                c.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| fits_model_input(*v))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                format(
                    line_no,
                    "feature values must be numbers finite as 32-bit floats (the model's input)"
                        .into(),
                )
            })?;
        rows.push(SeedRow {
            entity_id: cells[0].to_owned(),
            values,
        });
    }
    Ok((schema, rows))
}

/// The committed seed file, found relative to the working directory (repo
/// root, or the container's working directory where it is baked in).
pub fn default_seed_path() -> PathBuf {
    PathBuf::from("models/customers.csv")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(body: &str) -> Result<(FeatureSchema, Vec<SeedRow>), SeedError> {
        let path = std::env::temp_dir().join(format!(
            "mlmesh-seed-{}-{}.csv",
            std::process::id(),
            body.len()
        ));
        std::fs::write(&path, format!("user_id,held_out,purchase,A,B\n{body}")).unwrap();
        let res = read_seed_file(&path);
        std::fs::remove_file(&path).unwrap();
        res
    }

    #[test]
    fn rows_the_model_cannot_read_are_refused_with_their_line() {
        let (_, rows) = seed("1,0,0,3.4e38,-2\n").unwrap();
        assert_eq!(rows[0].values, vec![3.4e38, -2.0]);
        for bad in [
            "1,0,0,1e39,0\n",
            "1,0,0,0,-1e39\n",
            "1,0,0,NaN,0\n",
            "1,0,0,inf,0\n",
        ] {
            let e = seed(&format!("2,0,0,1,1\n{bad}")).unwrap_err().to_string();
            assert!(e.contains("line 3") && e.contains("32-bit"), "{bad}: {e}");
        }
    }
}
