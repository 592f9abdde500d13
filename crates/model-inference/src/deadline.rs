//! A request's deadline, from Envoy's or gRPC's header.

use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use mesh_kit::propagation::DEADLINE_HEADER;

/// When the caller stops waiting: Envoy's `x-envoy-expected-rq-timeout-ms`
/// or gRPC's `grpc-timeout`, whichever comes first.
pub(crate) fn deadline_of(headers: &HeaderMap) -> Option<Instant> {
    let envoy = headers
        .get(DEADLINE_HEADER)
        .and_then(|h| h.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    let grpc = headers
        .get(GRPC_TIMEOUT)
        .and_then(|h| h.to_str().ok())
        .and_then(parse_grpc_timeout);
    let budget = match (envoy, grpc) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }?;
    Some(Instant::now() + budget)
}

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// gRPC's `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_the_protocols_units_and_bounds() {
        for (text, want) in [
            ("100m", Duration::from_millis(100)),
            ("2S", Duration::from_secs(2)),
            ("1M", Duration::from_secs(60)),
            ("1H", Duration::from_secs(3600)),
            ("250u", Duration::from_micros(250)),
            ("99999999n", Duration::from_nanos(99_999_999)),
        ] {
            assert_eq!(parse_grpc_timeout(text), Some(want), "{text}");
        }
        for bad in ["", "m", "100", "100x", "-1S", "123456789S", "1.5S", "+1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_sooner_of_envoys_and_grpcs_deadline_wins() {
        let mut h = HeaderMap::new();
        assert!(deadline_of(&h).is_none());
        h.insert(DEADLINE_HEADER, HeaderValue::from_static("5000"));
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("10m"));
        let d = deadline_of(&h).unwrap();
        assert!(d <= Instant::now() + Duration::from_millis(10));
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("60S"));
        let d = deadline_of(&h).unwrap();
        assert!(d > Instant::now() + Duration::from_secs(4));
        assert!(d <= Instant::now() + Duration::from_secs(5));
    }
}
