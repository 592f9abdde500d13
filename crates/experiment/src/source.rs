//! Where the counters come from: the services' own `/metrics` (no
//! Prometheus needed) or Prometheus' HTTP API. Both produce the same
//! [`Samples`], so the checks never know which one ran.

use std::time::Duration;

use serde::Deserialize;

use crate::snapshot::{CounterReset, Samples, Snapshot, parse_exposition, wanted};
use mesh_kit::metrics::names;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{what} at {url} is unreachable: {detail}")]
    Unreachable {
        what: &'static str,
        url: String,
        detail: String,
    },
    #[error("{what} at {url} answered HTTP {status}: {detail}")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{0}")]
    Missing(String),
    #[error("Prometheus at {url}: {detail}")]
    Prometheus { url: String, detail: String },
    #[error(transparent)]
    Reset(#[from] CounterReset),
}

/// Where to read from, as `mlmesh analyze` and `mlmesh analyze serve` take it.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Read from Prometheus' HTTP API, e.g. http://127.0.0.1:9090.
    #[arg(
        long,
        env = "PROMETHEUS_URL",
        value_name = "URL",
        conflicts_with = "scrape"
    )]
    pub prometheus: Option<String>,

    /// Read the services' own /metrics (the default when --prometheus is not given).
    #[arg(long)]
    pub scrape: bool,

    /// With --scrape: the frontend [default: http://127.0.0.1:8080, or --up-port].
    #[arg(long, value_name = "URL")]
    pub frontend_url: Option<String>,

    /// With --scrape: each model-inference service, repeatable [default:
    /// ports <--up-port> + 2 and + 3 on 127.0.0.1, as `mlmesh up` runs them].
    #[arg(long = "model-url", value_name = "URL")]
    pub model_urls: Vec<String>,

    /// With --scrape and no URLs: the frontend port of the `mlmesh up` to
    /// read, the same setting (and variable) as `mlmesh up --port` [default: 8080].
    #[arg(long, env = "MLMESH_PORT", value_name = "PORT")]
    pub up_port: Option<u16>,
}

/// One reading of every series the experiment needs.
pub trait Source {
    fn read(&self) -> impl Future<Output = Result<Samples, SourceError>> + Send;
    /// What is read, for the report (credentials removed).
    fn describe(&self) -> String;

    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, SourceError>> + Send
    where
        Self: Sync,
    {
        async { Ok(Snapshot::from_samples(&self.read().await?)) }
    }
}

/// A URL as it may be shown: without user name and password.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("");
                let _ = u.set_password(None);
            }
            u.to_string().trim_end_matches('/').to_owned()
        }
        // Never echo what could not be parsed: it may hold a secret.
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

fn transport(what: &'static str, url: &str, e: reqwest::Error) -> SourceError {
    let detail = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connection refused or host unreachable".to_owned()
    } else {
        e.without_url().to_string()
    };
    SourceError::Unreachable {
        what,
        url: redact(url),
        detail,
    }
}

/// The stack's own `/metrics`: the frontend's and each model version's.
pub struct Scrape {
    pub frontend: String,
    pub models: Vec<String>,
    client: reqwest::Client,
}

impl Scrape {
    /// Base URLs (`http://127.0.0.1:8080`); `/metrics` is appended.
    pub fn new(frontend: &str, models: &[String], timeout: Duration) -> Self {
        Self {
            frontend: frontend.trim_end_matches('/').to_owned(),
            models: models
                .iter()
                .map(|m| m.trim_end_matches('/').to_owned())
                .collect(),
            client: client(timeout),
        }
    }

    async fn get(
        &self,
        what: &'static str,
        base: &str,
        must_have: &str,
    ) -> Result<Samples, SourceError> {
        let url = format!("{base}/metrics");
        let res = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| transport(what, &url, e))?;
        let status = res.status();
        let body = res.text().await.map_err(|e| transport(what, &url, e))?;
        if !status.is_success() {
            return Err(SourceError::Status {
                what,
                url: redact(&url),
                status: status.as_u16(),
                detail: body.chars().take(200).collect(),
            });
        }
        let samples = parse_exposition(&body);
        if !samples.0.contains_key(must_have) {
            return Err(SourceError::Missing(format!(
                "{} has no {must_have}: is it mlmesh's {what}?",
                redact(&url)
            )));
        }
        Ok(samples)
    }
}

impl Source for Scrape {
    async fn read(&self) -> Result<Samples, SourceError> {
        let mut all = self
            .get(
                "frontend",
                &self.frontend,
                &names::exposed(names::FRONTEND_CANARY_PERCENT, ""),
            )
            .await?;
        let scores = names::exposed(names::PREDICTION_SCORE, "_bucket");
        for m in &self.models {
            all.extend(self.get("model-inference", m, &scores).await?);
        }
        Ok(all)
    }

    fn describe(&self) -> String {
        let mut urls = vec![redact(&self.frontend)];
        urls.extend(self.models.iter().map(|m| redact(m)));
        format!("scrape of {}", urls.join(", "))
    }
}

/// Prometheus' HTTP API (`/api/v1/query`): over `window` with `increase()`,
/// or the counters' totals since the services started.
pub struct Prometheus {
    url: String,
    window: Option<Duration>,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct ApiAnswer {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct ApiData {
    result: Vec<ApiSeries>,
}

#[derive(Deserialize)]
struct ApiSeries {
    metric: std::collections::BTreeMap<String, String>,
    value: (f64, String),
}

impl Prometheus {
    pub fn new(url: &str, window: Option<Duration>, timeout: Duration) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            window,
            client: client(timeout),
        }
    }

    /// The PromQL for one wanted series.
    pub fn query_for(&self, series: &str, by: &[&str]) -> String {
        if by.is_empty() {
            // A gauge (the canary percent): its current value.
            return format!("max({series})");
        }
        let inner = match self.window {
            Some(w) => format!("increase({series}[{}s])", w.as_secs().max(1)),
            None => series.to_owned(),
        };
        format!("sum by ({}) ({inner})", by.join(", "))
    }

    async fn query(&self, promql: &str) -> Result<Vec<ApiSeries>, SourceError> {
        let url = format!("{}/api/v1/query", self.url);
        let mut target = reqwest::Url::parse(&url).map_err(|_| SourceError::Prometheus {
            url: redact(&self.url),
            detail: "not a valid URL".into(),
        })?;
        target.query_pairs_mut().append_pair("query", promql);
        let res = self
            .client
            .get(target)
            .send()
            .await
            .map_err(|e| transport("Prometheus", &url, e))?;
        let status = res.status();
        let body = res
            .bytes()
            .await
            .map_err(|e| transport("Prometheus", &url, e))?;
        let answer: ApiAnswer =
            serde_json::from_slice(&body).map_err(|_| SourceError::Prometheus {
                url: redact(&self.url),
                detail: format!("HTTP {status}, not a Prometheus API answer (is this Prometheus?)"),
            })?;
        if answer.status != "success" {
            return Err(SourceError::Prometheus {
                url: redact(&self.url),
                detail: format!(
                    "query {promql:?} failed: {}",
                    answer.error.unwrap_or_default()
                ),
            });
        }
        Ok(answer.data.map(|d| d.result).unwrap_or_default())
    }
}

impl Source for Prometheus {
    async fn read(&self) -> Result<Samples, SourceError> {
        let mut out = Samples::default();
        for w in wanted() {
            let rows = self.query(&self.query_for(&w.series, w.by)).await?;
            let samples = rows
                .into_iter()
                .filter_map(|r| {
                    let value = r.value.1.parse::<f64>().ok()?;
                    Some(crate::snapshot::Sample {
                        labels: r.metric,
                        value,
                    })
                })
                .collect();
            out.0.insert(w.series, samples);
        }
        let canary = names::exposed(names::FRONTEND_CANARY_PERCENT, "");
        if out.0.get(&canary).is_none_or(Vec::is_empty) {
            return Err(SourceError::Missing(format!(
                "Prometheus at {} has no {canary}: is it scraping mlmesh's frontend?",
                redact(&self.url)
            )));
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("Prometheus at {}", redact(&self.url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            redact("http://admin:hunter2@prom:9090/"),
            "http://prom:9090"
        );
        assert_eq!(redact("http://127.0.0.1:9090"), "http://127.0.0.1:9090");
        assert_eq!(redact("not a url :pw@"), "<unparsable URL>");
    }

    #[test]
    fn queries_sum_by_the_wanted_labels() {
        let p = Prometheus::new(
            "http://p",
            Some(Duration::from_secs(600)),
            Duration::from_secs(1),
        );
        assert_eq!(
            p.query_for("m_total", &["model_version", "outcome"]),
            "sum by (model_version, outcome) (increase(m_total[600s]))"
        );
        assert_eq!(p.query_for("g", &[]), "max(g)");
        let totals = Prometheus::new("http://p", None, Duration::from_secs(1));
        assert_eq!(
            totals.query_for("m_total", &["le"]),
            "sum by (le) (m_total)"
        );
    }
}
