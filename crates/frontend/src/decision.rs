//! Signed decision ids: feedback is attributed to the model version that
//! decided without any server-side state, and cannot be forged.
//!
//! A decision id is `base64url(json claims) "." base64url(HMAC-SHA256)`,
//! like a JWT without the header: small enough for a URL, readable by anyone,
//! trusted only when the MAC verifies under the frontend's key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::cohort::Cohort;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Clock skew tolerated between frontend replicas.
const MAX_SKEW: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Offer,
    NoOffer,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offer => "offer",
            Self::NoOffer => "no_offer",
        }
    }
}

/// What a decision id vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "u")]
    pub user_id: String,
    #[serde(rename = "m")]
    pub model_version: String,
    #[serde(rename = "c")]
    pub cohort: Cohort,
    #[serde(rename = "d")]
    pub decision: Decision,
    /// Unix seconds when decided.
    #[serde(rename = "t")]
    pub issued_at: u64,
    /// The request that decided, so two decisions never share an id.
    #[serde(rename = "r")]
    pub request_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("decision_id is malformed")]
    Malformed,
    #[error("decision_id is not signed by this experiment's frontend")]
    BadSignature,
    #[error("decision_id has expired")]
    Expired,
}

#[derive(Clone)]
pub struct Signer {
    key: HmacSha256,
    max_age: Duration,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Signer {
    pub fn new(key: &[u8], max_age: Duration) -> Self {
        Self {
            key: HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length"),
            max_age,
        }
    }

    /// A random key: feedback then verifies only in this process.
    pub fn ephemeral(max_age: Duration) -> Self {
        let key: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
            .take(32)
            .collect();
        Self::new(&key, max_age)
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let mut mac = self.key.clone();
        mac.update(payload.as_bytes());
        let tag = B64.encode(mac.finalize().into_bytes());
        format!("{payload}.{tag}")
    }

    /// The first second (Unix) at which the id for `claims` no longer verifies.
    pub fn expires_at(&self, claims: &Claims) -> u64 {
        claims
            .issued_at
            .saturating_add(self.max_age.as_secs())
            .saturating_add(1)
    }

    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let (payload, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let tag = B64.decode(tag).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.key.clone();
        mac.update(payload.as_bytes());
        // Constant-time comparison; checked before the payload is even parsed.
        mac.verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let json = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        let age = now.saturating_sub(claims.issued_at);
        let from_future = claims.issued_at > now + MAX_SKEW.as_secs();
        if age > self.max_age.as_secs() || from_future {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            user_id: "42".into(),
            model_version: "v2".into(),
            cohort: Cohort::Candidate,
            decision: Decision::Offer,
            issued_at: 1_700_000_000,
            request_id: "req-1".into(),
        }
    }

    fn signer() -> Signer {
        Signer::new(b"k1", Duration::from_secs(3600))
    }

    #[test]
    fn round_trips() {
        let t = signer().sign(&claims());
        assert_eq!(signer().verify(&t, 1_700_000_010), Ok(claims()));
    }

    #[test]
    fn rejects_a_changed_payload() {
        let t = signer().sign(&claims());
        let forged_claims = Claims {
            model_version: "v1".into(),
            ..claims()
        };
        let forged_payload = signer().sign(&forged_claims);
        let forged = format!(
            "{}.{}",
            forged_payload.split_once('.').unwrap().0,
            t.split_once('.').unwrap().1
        );
        assert_eq!(
            signer().verify(&forged, 1_700_000_010),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn rejects_another_key() {
        let t = Signer::new(b"other", Duration::from_secs(3600)).sign(&claims());
        assert_eq!(
            signer().verify(&t, 1_700_000_010),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn rejects_garbage_and_old_tokens() {
        for bad in ["", "abc", "a.b", "....", "not base64!.x"] {
            assert!(signer().verify(bad, 1_700_000_010).is_err(), "{bad:?}");
        }
        let t = signer().sign(&claims());
        assert_eq!(
            signer().verify(&t, 1_700_000_000 + 3601),
            Err(TokenError::Expired)
        );
        assert_eq!(
            signer().verify(&t, 1_700_000_000 - 400),
            Err(TokenError::Expired)
        );
    }
}
