//! End users at the mesh's edge: the JWTs `mlmesh token` mints, the JWKS the
//! ingress gateway verifies them with (`istio/auth/`), and the claims the
//! gateway copies into headers for the frontend.
//!
//! The gateway does the verifying (Istio's `RequestAuthentication`); the
//! frontend only reads the headers the gateway writes. [`verify`] makes the
//! checks Envoy makes (signature by a key of the set, expiry with Envoy's
//! default 60 s of clock skew, issuer, audience), so tests can prove a minted
//! token is one the gateway will accept, and a tampered or expired one is not.

use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The demo signing key, committed on purpose so the README's `curl`s work
/// on any clone: **anyone can mint a token with it**. The JWKS in
/// `istio/auth/request-authentication.yaml` is its public half; a real
/// deployment mints with its own key (`mlmesh token --key FILE`) and puts
/// that key's JWKS (`mlmesh token --jwks --key FILE`) there instead.
pub const DEMO_KEY_PEM: &str = include_str!("demo-key.pem");

/// The `iss` of demo tokens; the RequestAuthentication's `issuer`.
pub const DEMO_ISSUER: &str = "mlmesh-demo";

/// The `aud` of every token; the RequestAuthentication's `audiences`.
pub const AUDIENCE: &str = "mlmesh";

/// The claim naming the customer (the JWT standard subject).
pub const USER_CLAIM: &str = "sub";

/// The claim naming the customer's group; `beta` puts them in the candidate.
pub const GROUP_CLAIM: &str = "group";

/// Longest lifetime a minted token may have: a lab token, not a credential.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Envoy's default `clock_skew_seconds` for `exp` and `nbf`.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// The algorithm of every token: RSA with SHA-256, which every JWT library
/// and Envoy's `jwt_authn` verify.
const ALGORITHM: Algorithm = Algorithm::RS256;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the signing key is not an RSA private key in PEM (PKCS#8 or PKCS#1): {0}")]
    Key(#[source] jsonwebtoken::errors::Error),
    #[error(
        "invalid user id {0:?}: use 1 to {max} letters, digits, '-', '_' or '.'",
        max = mesh_kit::error::MAX_ENTITY_ID_LEN
    )]
    User(String),
    #[error(
        "invalid group {0:?}: use 1 to {max} letters, digits, '-', '_' or '.'",
        max = mesh_kit::error::MAX_ENTITY_ID_LEN
    )]
    Group(String),
    #[error("a token must live between 1 s and {} days", MAX_TTL.as_secs() / 86_400)]
    Ttl,
    #[error("signing failed: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error("not a JSON Web Key Set: {0}")]
    Jwks(String),
    #[error("the token's header names no key id (kid)")]
    NoKeyId,
    #[error("the token is signed by key {0:?}, which the JWKS does not hold")]
    UnknownKey(String),
    #[error("token rejected: {0}")]
    Rejected(#[source] jsonwebtoken::errors::Error),
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Mints tokens with one RSA key.
pub struct Minter {
    key: EncodingKey,
    jwk: Jwk,
    issuer: String,
}

// === impl Minter ===

impl Minter {
    /// The committed demo key, with [`DEMO_ISSUER`].
    pub fn demo() -> Self {
        Self::from_pem(DEMO_KEY_PEM.as_bytes(), DEMO_ISSUER)
            .expect("the committed demo key is an RSA key (tested)")
    }

    /// An RSA private key in PEM, and the issuer its tokens name.
    pub fn from_pem(pem: &[u8], issuer: &str) -> Result<Self, IdentityError> {
        let key = EncodingKey::from_rsa_pem(pem).map_err(IdentityError::Key)?;
        let mut jwk = Jwk::from_encoding_key(&key, ALGORITHM).map_err(IdentityError::Key)?;
        // The key id is the key's RFC 7638 thumbprint: stable for a key,
        // different for every other, so rotating keys never collides.
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(IdentityError::Key)?;
        jwk.common.key_id = Some(kid);
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(Self {
            key,
            jwk,
            issuer: issuer.to_owned(),
        })
    }

    /// The key id every token of this minter carries.
    pub fn key_id(&self) -> &str {
        self.jwk.common.key_id.as_deref().unwrap_or_default()
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The public half, as the `jwks` a RequestAuthentication holds.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk.clone()],
        }
    }

    /// [`Minter::jwks`] as one line of JSON.
    pub fn jwks_json(&self) -> String {
        serde_json::to_string(&self.jwks()).expect("a JWKS serializes")
    }

    /// A token for `user` (and `group`), valid from `now` (Unix seconds) for `ttl`.
    pub fn mint(
        &self,
        user: &str,
        group: Option<&str>,
        ttl: Duration,
        now: u64,
    ) -> Result<String, IdentityError> {
        // The gateway copies these claims into headers the frontend checks
        // as ids: refuse here what it would refuse there.
        if !mesh_kit::error::is_entity_id(user) {
            return Err(IdentityError::User(user.to_owned()));
        }
        if let Some(g) = group.filter(|g| !mesh_kit::error::is_entity_id(g)) {
            return Err(IdentityError::Group(g.to_owned()));
        }
        if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
            return Err(IdentityError::Ttl);
        }
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: user.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            exp: now + ttl.as_secs(),
            group: group.map(str::to_owned),
        };
        let mut header = Header::new(ALGORITHM);
        header.kid = self.jwk.common.key_id.clone();
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(IdentityError::Sign)
    }
}

/// Checks `token` as the ingress gateway does with `jwks` (a JSON Web Key
/// Set, as in a RequestAuthentication) and `issuer`: the signature by the
/// key its `kid` names, RS256, not expired (60 s skew), the issuer and
/// [`AUDIENCE`].
pub fn verify(token: &str, jwks: &str, issuer: &str) -> Result<Claims, IdentityError> {
    let set: JwkSet = serde_json::from_str(jwks).map_err(|e| IdentityError::Jwks(e.to_string()))?;
    let header = jsonwebtoken::decode_header(token).map_err(IdentityError::Rejected)?;
    let kid = header.kid.ok_or(IdentityError::NoKeyId)?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| IdentityError::UnknownKey(kid.clone()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| IdentityError::Jwks(e.to_string()))?;
    let mut validation = Validation::new(ALGORITHM);
    validation.leeway = CLOCK_SKEW_SECS;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map(|t| t.claims)
        .map_err(IdentityError::Rejected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_kit::clock::unix_now;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A second RSA key, made for this test and never used anywhere else.
    fn other_key() -> Minter {
        Minter::from_pem(&test_support::keys::rsa_key_pem(), DEMO_ISSUER).unwrap()
    }

    #[test]
    fn a_demo_token_verifies_against_the_demo_jwks_with_its_claims() {
        let m = Minter::demo();
        let now = unix_now();
        let t = m.mint("42", Some("beta"), HOUR, now).unwrap();
        let c = verify(&t, &m.jwks_json(), DEMO_ISSUER).unwrap();
        assert_eq!(c.sub, "42");
        assert_eq!(c.group.as_deref(), Some("beta"));
        assert_eq!((c.iss.as_str(), c.aud.as_str()), (DEMO_ISSUER, AUDIENCE));
        assert_eq!(c.exp - c.iat, 3600);
        // Without a group the claim is absent, not empty: the gateway then
        // writes no group header at all.
        let t = m.mint("43", None, HOUR, now).unwrap();
        let payload = t.split('.').nth(1).unwrap();
        use base64::Engine as _;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(v.get(GROUP_CLAIM).is_none(), "{v}");
        assert_eq!(v[USER_CLAIM], "43");
    }

    #[test]
    fn expired_forged_and_foreign_tokens_are_rejected() {
        let m = Minter::demo();
        let jwks = m.jwks_json();
        let now = unix_now();
        // Expired past the skew.
        let old = m.mint("42", None, HOUR, now - 2 * 3600).unwrap();
        assert!(matches!(
            verify(&old, &jwks, DEMO_ISSUER),
            Err(IdentityError::Rejected(_))
        ));
        // Expired within Envoy's 60 s skew still passes, as at the gateway.
        let just = m.mint("42", None, HOUR, now - 3600 - 30).unwrap();
        verify(&just, &jwks, DEMO_ISSUER).unwrap();
        // Another issuer.
        assert!(
            verify(
                &m.mint("42", None, HOUR, now).unwrap(),
                &jwks,
                "someone-else"
            )
            .is_err()
        );
        // A payload edited after signing (user 42 becomes 43).
        let t = m.mint("42", Some("beta"), HOUR, now).unwrap();
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = String::from_utf8(b64.decode(&parts[1]).unwrap()).unwrap();
        parts[1] = b64.encode(payload.replace("\"42\"", "\"43\""));
        assert!(matches!(
            verify(&parts.join("."), &jwks, DEMO_ISSUER),
            Err(IdentityError::Rejected(_))
        ));
        // Signed by another key: unknown kid, and with the kid forged to the
        // demo key's, a bad signature.
        let other = other_key();
        let foreign = other.mint("42", None, HOUR, now).unwrap();
        assert!(matches!(
            verify(&foreign, &jwks, DEMO_ISSUER),
            Err(IdentityError::UnknownKey(_))
        ));
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(m.key_id().to_owned());
        let claims = verify(&foreign, &other.jwks_json(), DEMO_ISSUER).unwrap();
        let forged = jsonwebtoken::encode(&header, &claims, &other.key).unwrap();
        assert!(matches!(
            verify(&forged, &jwks, DEMO_ISSUER),
            Err(IdentityError::Rejected(_))
        ));
    }

    #[test]
    fn bad_requests_mint_nothing() {
        let m = Minter::demo();
        let now = unix_now();
        assert!(matches!(
            m.mint("", None, HOUR, now),
            Err(IdentityError::User(_))
        ));
        assert!(matches!(
            m.mint("a b", None, HOUR, now),
            Err(IdentityError::User(_))
        ));
        assert!(matches!(
            m.mint("42", Some("beta,admin"), HOUR, now),
            Err(IdentityError::Group(_))
        ));
        assert!(matches!(
            m.mint("42", None, Duration::ZERO, now),
            Err(IdentityError::Ttl)
        ));
        assert!(matches!(
            m.mint("42", None, MAX_TTL + Duration::from_secs(1), now),
            Err(IdentityError::Ttl)
        ));
        assert!(matches!(
            Minter::from_pem(b"not a key", DEMO_ISSUER),
            Err(IdentityError::Key(_))
        ));
    }

    #[test]
    fn the_key_id_is_the_keys_thumbprint() {
        let (a, b) = (Minter::demo(), Minter::demo());
        assert_eq!(a.key_id(), b.key_id());
        assert_eq!(a.key_id().len(), 43, "base64url of a SHA-256");
        assert_ne!(a.key_id(), other_key().key_id());
        let jwks: serde_json::Value = serde_json::from_str(&a.jwks_json()).unwrap();
        let k = &jwks["keys"][0];
        assert_eq!(
            (k["kty"].as_str(), k["alg"].as_str()),
            (Some("RSA"), Some("RS256"))
        );
        assert_eq!(k["use"], "sig");
        assert!(k.get("d").is_none(), "no private part in the JWKS: {k}");
    }
}
