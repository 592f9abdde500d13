//! Simulated users, drawn from the committed seed rows
//! (`user_id,held_out,purchase,<85 features>`).

use std::path::Path;

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    /// The dataset's true label: did this customer buy caravan insurance?
    pub purchased: bool,
    /// Sends `x-user-group: beta`.
    pub beta: bool,
    pub features: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("reading {path}: {source}")]
    Csv { path: String, source: csv::Error },
    #[error("{path} line {line}: {what}")]
    Row {
        path: String,
        line: usize,
        what: String,
    },
    #[error("{0} holds no users to draw from")]
    Empty(String),
}

/// Loads users (held-out ones unless `all`), shuffles them with `seed`, and
/// marks about `beta_share` of them as beta users.
pub fn load(path: &Path, all: bool, beta_share: f64, seed: u64) -> Result<Vec<User>, UsersError> {
    let shown = path.display().to_string();
    let csv_err = |source| UsersError::Csv {
        path: shown.clone(),
        source,
    };
    let mut reader = csv::Reader::from_path(path).map_err(csv_err)?;
    let mut users = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(csv_err)?;
        let row_err = |what: String| UsersError::Row {
            path: shown.clone(),
            line: i + 2,
            what,
        };
        let field = |k: usize| {
            record
                .get(k)
                .ok_or_else(|| row_err(format!("column {k} missing")))
        };
        let flag = |k: usize| -> Result<bool, UsersError> {
            match field(k)? {
                "0" => Ok(false),
                "1" => Ok(true),
                other => Err(row_err(format!("column {k} must be 0 or 1, got {other:?}"))),
            }
        };
        let held_out = flag(1)?;
        if !all && !held_out {
            continue;
        }
        let features = (3..record.len())
            .map(|k| {
                field(k)?
                    .parse::<f32>()
                    .map_err(|e| row_err(format!("column {k}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        users.push(User {
            id: field(0)?.to_owned(),
            purchased: flag(2)?,
            beta: false,
            features,
        });
    }
    if users.is_empty() {
        return Err(UsersError::Empty(shown));
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    rng.shuffle(&mut users);
    for u in &mut users {
        u.beta = rng.f64() < beta_share;
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn seed_file() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/customers.csv")
    }

    #[test]
    fn held_out_users_by_default_shuffled_repeatably() {
        let a = load(&seed_file(), false, 0.0, 7).unwrap();
        let b = load(&seed_file(), false, 0.0, 7).unwrap();
        let all = load(&seed_file(), true, 0.0, 7).unwrap();
        assert_eq!(a.len(), 1165);
        assert_eq!(all.len(), 5822);
        assert_eq!(
            a.iter().map(|u| &u.id).collect::<Vec<_>>(),
            b.iter().map(|u| &u.id).collect::<Vec<_>>()
        );
        assert!(a.iter().all(|u| u.features.len() == 85));
        let buyers = a.iter().filter(|u| u.purchased).count();
        assert!(
            (40..=110).contains(&buyers),
            "{buyers} buyers among held-out users"
        );
    }

    #[test]
    fn beta_share_marks_about_that_many_users() {
        let users = load(&seed_file(), true, 0.25, 1).unwrap();
        let beta = users.iter().filter(|u| u.beta).count() as f64 / users.len() as f64;
        assert!((0.22..0.28).contains(&beta), "{beta}");
    }
}
