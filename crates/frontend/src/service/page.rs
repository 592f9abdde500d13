//! The web page, served with a strict Content-Security-Policy.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

const PAGE: &str = include_str!("../page.html");

/// The page's Content-Security-Policy: nothing but its own inline script and
/// style (by hash, so an injected one never runs) and calls to this origin.
fn page_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine as _;
        let hash = |open: &str, close: &str| {
            let start = PAGE.find(open).map(|i| i + open.len()).expect("page has the tag");
            let end = start + PAGE[start..].find(close).expect("tag is closed");
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&PAGE.as_bytes()[start..end]);
            format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest))
        };
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("<script>", "</script>"),
            hash("<style>", "</style>")
        )
    })
}

pub(super) async fn page() -> Response {
    (
        [
            (header::CONTENT_SECURITY_POLICY, page_csp()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(PAGE),
    )
        .into_response()
}
