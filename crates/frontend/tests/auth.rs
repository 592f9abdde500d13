//! The authenticated customer (istio/auth/): the headers the ingress gateway
//! writes from a verified JWT name the user and their group, a request may
//! not name someone else, feedback answers only for the token's own user,
//! and a header the gateway would never send twice is refused.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use mesh_kit::propagation::{AUTH_GROUP_HEADER, AUTH_USER_HEADER, USER_GROUP_HEADER};
use serde_json::json;
use test_support::http::send;

fn request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    }
}

/// A user in the baseline at the test's 10% canary (so a candidate answer
/// can only come from the group).
async fn baseline_user(app: &axum::Router) -> String {
    for u in 1..200 {
        let a = get(app, &format!("/predict?user_id={u}")).await;
        if a.json["cohort"] == "baseline" && a.json["decision"] == "offer" {
            return u.to_string();
        }
    }
    panic!("no offered baseline user among 200");
}

#[tokio::test]
async fn the_token_names_the_user_and_its_group_claim_puts_them_in_beta() {
    let up = Upstreams::start().await;
    let app = frontend(&up.args());
    let user = baseline_user(&app).await;

    // No user in the request at all: the token's is used.
    let a = send(
        &app,
        request("GET", "/predict", &[(AUTH_USER_HEADER, &user)], None),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["user_id"], user.as_str());
    assert_eq!(a.json["authenticated"], true);
    assert_eq!(a.json["cohort"], "baseline");

    // The group claim decides, and sets no cookie.
    let path = format!("/predict?user_id={user}");
    let beta = [
        (AUTH_USER_HEADER, user.as_str()),
        (AUTH_GROUP_HEADER, "beta"),
    ];
    let a = send(&app, request("GET", &path, &beta, None)).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(
        (a.json["cohort"].as_str(), a.json["assignment"].as_str()),
        (Some("candidate"), Some("beta-group"))
    );
    assert_eq!(a.json["model_version"], "v2");
    assert!(a.headers.get("set-cookie").is_none());

    // Authenticated, the request's own say is ignored: neither ?group=beta
    // nor the header makes a user without the claim beta.
    let plain = [
        (AUTH_USER_HEADER, user.as_str()),
        (USER_GROUP_HEADER, "beta"),
    ];
    let a = send(
        &app,
        request("GET", &format!("{path}&group=beta"), &plain, None),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["cohort"], "baseline", "{}", a.json);
    // Anonymous, it still works as the lab's sticky/ experiment needs.
    let a = get(&app, &format!("{path}&group=beta")).await;
    assert_eq!(
        (a.json["cohort"].as_str(), a.json["authenticated"].as_bool()),
        (Some("candidate"), Some(false))
    );
}

#[tokio::test]
async fn a_token_may_not_speak_for_another_user() {
    let up = Upstreams::start().await;
    let app = frontend(&up.args());
    let user = baseline_user(&app).await;
    let me = [(AUTH_USER_HEADER, user.as_str())];

    let a = send(&app, request("GET", "/predict?user_id=999", &me, None)).await;
    assert_eq!(a.status, 403, "{}", a.json);
    assert!(
        a.json["error"].as_str().unwrap().contains("999"),
        "{}",
        a.json
    );
    let a = send(
        &app,
        request(
            "POST",
            "/predict",
            &me,
            Some(json!({"user_id": 999}).to_string()),
        ),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.json);
    let a = send(
        &app,
        request(
            "GET",
            "/predict",
            &[(AUTH_USER_HEADER, &user), ("x-user-id", "999")],
            None,
        ),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.json);

    // Another user's decision: refused with their token...
    let theirs = get(&app, &format!("/predict?user_id={user}")).await;
    let body =
        json!({"decision_id": theirs.json["decision_id"], "outcome": "accepted"}).to_string();
    let other = [(AUTH_USER_HEADER, "999")];
    let a = send(
        &app,
        request("POST", "/feedback", &other, Some(body.clone())),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.json);
    // ...and recorded with the owner's, once.
    let a = send(
        &app,
        request(
            "POST",
            &format!("/feedback?user_id={user}"),
            &me,
            Some(body.clone()),
        ),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.json["recorded"].as_bool()),
        (200, Some(true)),
        "{}",
        a.json
    );
    let a = send(&app, request("POST", "/feedback", &me, Some(body))).await;
    assert_eq!(
        (a.status.as_u16(), a.json["recorded"].as_bool()),
        (200, Some(false)),
        "{}",
        a.json
    );
}

#[tokio::test]
async fn identity_headers_the_gateway_would_never_send_are_refused() {
    let up = Upstreams::start().await;
    let app = frontend(&up.args());
    let cases: [&[(&str, &str)]; 5] = [
        // Envoy adds its claim header to a client's copy: two values.
        &[(AUTH_USER_HEADER, "42"), (AUTH_USER_HEADER, "43")],
        &[
            (AUTH_USER_HEADER, "42"),
            (AUTH_GROUP_HEADER, "beta"),
            (AUTH_GROUP_HEADER, "beta"),
        ],
        // The same, folded into one value.
        &[(AUTH_USER_HEADER, "42, 43")],
        // A group with no user.
        &[(AUTH_GROUP_HEADER, "beta")],
        &[(AUTH_USER_HEADER, "")],
    ];
    for headers in cases {
        for req in [
            request("GET", "/predict?user_id=42", headers, None),
            request(
                "POST",
                "/feedback",
                headers,
                Some(json!({"decision_id": "x", "outcome": "accepted"}).to_string()),
            ),
        ] {
            let what = format!("{} {} {headers:?}", req.method(), req.uri());
            let a = send(&app, req).await;
            assert_eq!(a.status, 400, "{what}: {}", a.json);
            assert!(
                a.json["error"]
                    .as_str()
                    .unwrap()
                    .contains("only the ingress gateway"),
                "{what}: {}",
                a.json
            );
        }
    }
}
