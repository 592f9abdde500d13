//! Signed decision ids: feedback is attributed to the model version that
//! decided without any server-side state, and cannot be forged.
//!
//! A decision id is `base64url(json claims) "." base64url(HMAC-SHA256)`,
//! like a JWT without the header: small enough for a URL, readable by anyone,
//! trusted only when the MAC verifies under the frontend's key.

use std::path::Path;
use std::time::Duration;

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

/// Keys shipped in this repository's examples (older compose files and
/// `k8s/base` had them): anyone can sign with them, so the frontend warns
/// loudly when it runs with one.
pub const KNOWN_DEMO_KEYS: &[&str] = &[
    "compose-demo-key-change-me",
    "mlmesh-lab-demo-key-change-me",
    "change-me",
];

/// A key shorter than this is guessable by brute force offline from one
/// decision id (HMAC-SHA256 adds no stretching).
pub const MIN_KEY_LEN: usize = 16;

/// Why `key` should not sign a real experiment's decisions, if it should not.
pub fn weak_key_reason(key: &[u8]) -> Option<&'static str> {
    if KNOWN_DEMO_KEYS.iter().any(|k| k.as_bytes() == key) {
        Some("it is a demo key published in mlmesh's repository: anyone can forge feedback")
    } else if key.len() < MIN_KEY_LEN {
        Some("it is shorter than 16 bytes: it can be guessed offline from one decision id")
    } else {
        None
    }
}

/// 32 bytes from the operating system's CSPRNG. Not fastrand: its state is
/// seeded from the clock and thread id, and a key made from it was recovered
/// from one decision id and the process's start time.
pub fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    // Fails only without any OS entropy source (no getrandom(2), no
    // /dev/urandom): nothing could be signed safely then.
    getrandom::fill(&mut key).expect("the operating system's random source is available");
    key
}

/// `random_key` as 64 hex digits, for a key passed through the environment
/// or written to a file.
pub fn random_key_hex() -> String {
    random_key().iter().map(|b| format!("{b:02x}")).collect()
}

/// The key in `path` (surrounding whitespace trimmed); when the file does not
/// exist, a fresh `random_key_hex` is written there first. Replicas racing to
/// create it agree: the key is written to a private temporary file and
/// hard-linked into place, which fails for all but the first.
pub fn load_or_create_key_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{ErrorKind, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::read(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(random_key_hex().as_bytes())?;
            f.sync_all()?;
            drop(f);
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => tracing::info!(path = %path.display(), "wrote a new random decision key"),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let key = std::fs::read(path)?;
    let key = key.trim_ascii();
    if key.is_empty() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "the file is empty",
        ));
    }
    Ok(key.to_vec())
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
        Self::new(&random_key(), max_age)
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
    fn random_keys_are_fresh_and_full_length() {
        let keys: std::collections::HashSet<[u8; 32]> = (0..1000).map(|_| random_key()).collect();
        assert_eq!(keys.len(), 1000, "a CSPRNG never repeats a 256-bit key");
        let hex = random_key_hex();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        // Two signers made at the same instant on the same thread (what a
        // clock-and-thread seeded generator gets wrong) sign differently.
        let (a, b) = (
            Signer::ephemeral(Duration::from_secs(60)),
            Signer::ephemeral(Duration::from_secs(60)),
        );
        assert_ne!(a.sign(&claims()), b.sign(&claims()));
    }

    #[test]
    fn a_key_file_is_created_once_and_then_reused() {
        let dir = std::env::temp_dir().join(format!("mlmesh-key-{}", random_key_hex()));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("decision-key");
        let first = load_or_create_key_file(&path).unwrap();
        assert_eq!(first.len(), 64);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "readable by others: {mode:o}");
        assert_eq!(load_or_create_key_file(&path).unwrap(), first);
        std::fs::write(&path, "  my-own-key-of-some-length\n").unwrap();
        assert_eq!(
            load_or_create_key_file(&path).unwrap(),
            b"my-own-key-of-some-length"
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(
            load_or_create_key_file(&path).is_err(),
            "an empty key file is refused"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files are removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn demo_and_short_keys_are_weak() {
        for k in KNOWN_DEMO_KEYS {
            assert!(weak_key_reason(k.as_bytes()).unwrap().contains("demo key"));
        }
        assert!(weak_key_reason(b"secret").unwrap().contains("shorter"));
        assert_eq!(weak_key_reason(random_key_hex().as_bytes()), None);
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
