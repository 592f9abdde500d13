//! `mlmesh token`, as the README's authenticated curls use it: the tokens it
//! prints verify against the JWKS committed in istio/auth/ (the gateway's
//! checks, crates/identity), a real key's tokens against that key's printed
//! JWKS only, and bad requests print an error and no token.

mod common;

use std::process::Output;

use serde_yaml_ng::Value;

fn run(args: &[&str]) -> Output {
    common::mlmesh().args(args).output().expect("mlmesh runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone())
        .unwrap()
        .trim()
        .to_owned()
}

/// The inline JWKS of istio/auth/request-authentication.yaml.
fn committed_jwks() -> String {
    let path = common::repo().join("istio/auth/request-authentication.yaml");
    let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["spec"]["jwtRules"][0]["jwks"]
        .as_str()
        .expect("an inline jwks")
        .to_owned()
}

#[test]
fn a_minted_token_verifies_against_the_committed_jwks() {
    let o = run(&["token", "--user", "42", "--group", "beta", "--ttl", "10m"]);
    assert!(o.status.success(), "{o:?}");
    let token = stdout(&o);
    assert_eq!(token.split('.').count(), 3, "one JWT on stdout: {token}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("DEMO key"),
        "the demo key is named: {stderr}"
    );

    let claims = identity::verify(&token, &committed_jwks(), identity::DEMO_ISSUER).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.group.as_deref()),
        ("42", Some("beta"))
    );
    assert_eq!(claims.exp - claims.iat, 600);

    // `--jwks` prints the same public key the manifest holds.
    let o = run(&["token", "--jwks"]);
    assert!(o.status.success(), "{o:?}");
    let printed: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let committed: serde_json::Value = serde_json::from_str(&committed_jwks()).unwrap();
    assert_eq!(printed, committed);
}

#[test]
fn a_real_keys_tokens_verify_only_with_its_own_jwks() {
    let dir = test_support::keys::KeyDir::new();
    let key = dir.rsa_key("key.pem");
    let key = key.to_str().unwrap();

    let o = run(&[
        "token",
        "--user",
        "7",
        "--key",
        key,
        "--issuer",
        "https://idp.example",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        o.stderr.is_empty(),
        "no demo warning with a real key: {o:?}"
    );
    let token = stdout(&o);
    let jwks = stdout(&run(&["token", "--jwks", "--key", key]));
    let claims = identity::verify(&token, &jwks, "https://idp.example").unwrap();
    assert_eq!((claims.sub.as_str(), claims.group), ("7", None));
    assert!(identity::verify(&token, &committed_jwks(), "https://idp.example").is_err());
    assert!(identity::verify(&token, &jwks, identity::DEMO_ISSUER).is_err());
}

#[test]
fn bad_requests_print_an_error_and_no_token() {
    for (args, says) in [
        (&["token"][..], "--user"),
        (&["token", "--user", "4 2"], "invalid user id"),
        (
            &["token", "--user", "42", "--group", "a,b"],
            "invalid group",
        ),
        (
            &["token", "--user", "42", "--ttl", "90d"],
            "between 1 s and 30 days",
        ),
        (
            &["token", "--user", "42", "--key", "/nonexistent.pem"],
            "/nonexistent.pem",
        ),
        (
            &["token", "--user", "42", "--key", "Cargo.toml"],
            "not an RSA private key",
        ),
    ] {
        let o = common::mlmesh()
            .args(args)
            .current_dir(common::repo())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(o.stdout.is_empty(), "{args:?} printed {:?}", stdout(&o));
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
