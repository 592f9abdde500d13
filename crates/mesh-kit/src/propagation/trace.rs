//! Trace context across a hop: the parent read from W3C or B3 headers,
//! the child's context written as both (see the module above for why).

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_propagator_b3::{B3Encoding, Propagator as B3Propagator};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(new_propagator);

// The propagators' header names this module reads or writes itself.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");

/// A fresh composite W3C + B3 + baggage propagator (for installing globally).
pub fn new_propagator() -> TextMapCompositePropagator {
    // Extraction folds left to right, each valid context replacing the last,
    // so W3C (last) wins over B3. B3's extractor reads single `b3` and multi
    // `x-b3-*` whatever encoding it injects with.
    TextMapCompositePropagator::new(vec![
        Box::new(B3Propagator::with_encoding(B3Encoding::MultipleHeader)),
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// The composite W3C + B3 + baggage propagator.
pub fn propagator() -> &'static TextMapCompositePropagator {
    &PROPAGATOR
}

/// The remote parent carried by `headers`, if any (otherwise an empty context).
///
/// The common case (a version-00 `traceparent`, no `tracestate` or an empty
/// one, no `baggage`: what every mlmesh hop and a sidecar send) is read here
/// directly; everything else goes through the SDK's propagators. Both give the
/// same parent (`extract_fast_path_reads_what_the_propagators_read`); the fast
/// path saves the three propagators' header-name parses, their `split`s and
/// `Vec`s, ~8k instructions per request in every service.
pub fn extract_context(headers: &HeaderMap) -> Context {
    // A caller outside any trace (curl, a load tool, a browser): the
    // propagators would look up a dozen headers to find nothing.
    if !carries_trace_context(headers) {
        return Context::new();
    }
    match plain_traceparent(headers) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => propagator().extract(&HeaderExtractor(headers)),
    }
}

/// Whether any of the propagators could find something: each needs its own
/// header (W3C `traceparent`, B3 `b3` or `x-b3-traceid`, `baggage`); without
/// it the rest (`tracestate`, `x-b3-spanid`, `x-b3-sampled`, …) are ignored.
/// `traceparent` first: a traced request answers after one lookup.
fn carries_trace_context(headers: &HeaderMap) -> bool {
    [TRACEPARENT, B3, B3_TRACE_ID, BAGGAGE]
        .iter()
        .any(|name| headers.contains_key(name))
}

/// `traceparent` in its version-00 form, when nothing else would change
/// what the propagators make of it: W3C wins over B3 in the composite, so
/// B3 headers beside it do not matter; a `tracestate` or `baggage` does.
fn plain_traceparent(headers: &HeaderMap) -> Option<SpanContext> {
    if headers.contains_key(BAGGAGE)
        || headers
            .get(TRACESTATE)
            .is_some_and(|state| !state.as_bytes().is_empty())
    {
        return None;
    }
    let value = headers.get(TRACEPARENT)?.to_str().ok()?.trim();
    // `00-<32 hex>-<16 hex>-<2 hex>`, lowercase as the SDK insists.
    let b = value.as_bytes();
    if b.len() != 55 || !b.starts_with(b"00-") || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (trace, span, flags) = (&value[3..35], &value[36..52], &value[53..]);
    let lower_hex = |s: &str| s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if !(lower_hex(trace) && lower_hex(span) && lower_hex(flags)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    // Only the sampled bit is kept, as the W3C spec and the SDK say.
    let flags = TraceFlags::new(flags) & TraceFlags::SAMPLED;
    let sc = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    sc.is_valid().then_some(sc)
}

/// The trace id (32 hex digits) the inbound headers carry, W3C first, then
/// B3 (multi or single; a 64-bit id padded as OpenTelemetry pads it): the
/// trace this request belongs to, for records kept outside the spans. Read
/// from the headers directly, not through the propagators: it runs per
/// request on the hot path of every event written.
pub fn trace_id_of(headers: &HeaderMap) -> Option<String> {
    let valid = |id: &str| {
        (id.len() == 16 || id.len() == 32)
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && id.bytes().any(|b| b != b'0')
    };
    let padded = |id: &str| format!("{id:0>32}");
    let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(tp) = header(&TRACEPARENT) {
        let mut parts = tp.trim().split('-');
        if let (Some(version), Some(id)) = (parts.next(), parts.next())
            && version.len() == 2
            && id.len() == 32
            && valid(id)
        {
            return Some(id.to_owned());
        }
    }
    if let Some(id) = header(&B3_TRACE_ID).map(str::trim).filter(|id| valid(id)) {
        return Some(padded(id));
    }
    header(&B3)
        .and_then(|b3| b3.trim().split('-').next())
        .filter(|id| valid(id))
        .map(padded)
}

/// Writes `cx` as `traceparent`/`tracestate`, `x-b3-*` and `baggage` headers.
///
/// The common case (a valid span context, sampled or not, no B3 debug or
/// deferred bit, no baggage) is written here directly, into stack buffers;
/// everything else goes through the SDK's propagators. Both write the same
/// headers (`inject_fast_path_writes_what_the_propagators_write`); the fast
/// path saves their `format!`s and `String`s, twice per decision.
pub fn inject_context(cx: &Context, headers: &mut HeaderMap) {
    let span = cx.span();
    let sc = span.span_context();
    let plain = sc.trace_flags() & !TraceFlags::SAMPLED == TraceFlags::default();
    if !(sc.is_valid() && plain && cx.baggage().is_empty()) {
        propagator().inject_context(cx, &mut StaticInjector(headers));
        return;
    }
    let trace = hex::<32>(&sc.trace_id().to_bytes());
    let span_id = hex::<16>(&sc.span_id().to_bytes());
    let sampled = sc.is_sampled();
    // `00-<trace>-<span>-<flags>`: 2 + 1 + 32 + 1 + 16 + 1 + 2 bytes.
    let mut traceparent = [0u8; 55];
    traceparent[..3].copy_from_slice(b"00-");
    traceparent[3..35].copy_from_slice(&trace);
    traceparent[35] = b'-';
    traceparent[36..52].copy_from_slice(&span_id);
    traceparent[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
    let value = |bytes: &[u8]| HeaderValue::from_bytes(bytes).expect("hex digits and dashes");
    headers.insert(TRACEPARENT, value(&traceparent));
    if let Ok(state) = HeaderValue::try_from(sc.trace_state().header()) {
        headers.insert(TRACESTATE, state);
    }
    headers.insert(B3_TRACE_ID, value(&trace));
    headers.insert(B3_SPAN_ID, value(&span_id));
    headers.insert(
        B3_SAMPLED,
        HeaderValue::from_static(if sampled { "1" } else { "0" }),
    );
}

/// `bytes` as N lowercase hex digits (N = 2 × their length).
fn hex<const N: usize>(bytes: &[u8]) -> [u8; N] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; N];
    for (i, b) in bytes.iter().take(N / 2).enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    out
}

/// opentelemetry-http's `HeaderInjector` without its two copies per header:
/// the propagators' own header names are static here (a custom name parsed
/// from a `&str` is an allocation), and the value `String` the propagator
/// built becomes the header value as it is. Two calls per decision times
/// five headers made this measurable.
struct StaticInjector<'a>(&'a mut HeaderMap);

impl opentelemetry::propagation::Injector for StaticInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        const KNOWN: [&str; 7] = [
            "traceparent",
            "tracestate",
            "baggage",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-sampled",
            "x-b3-parentspanid",
        ];
        let name = match KNOWN.iter().find(|k| **k == key) {
            Some(k) => HeaderName::from_static(k),
            None => match HeaderName::from_bytes(key.as_bytes()) {
                Ok(n) => n,
                Err(_) => return,
            },
        };
        if let Ok(value) = HeaderValue::try_from(value) {
            self.0.insert(name, value);
        }
    }

    fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn trace_id(cx: &Context) -> String {
        cx.span().span_context().trace_id().to_string()
    }

    #[test]
    fn extracts_w3c() {
        let cx = extract_context(&headers(&[(
            "traceparent",
            &format!("00-{TRACE}-{SPAN}-01"),
        )]));
        assert_eq!(trace_id(&cx), TRACE);
        assert!(cx.span().span_context().is_sampled());
    }

    #[test]
    fn extracts_b3_multi_and_single() {
        let multi = headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "1"),
        ]);
        assert_eq!(trace_id(&extract_context(&multi)), TRACE);
        let single = headers(&[("b3", &format!("{TRACE}-{SPAN}-1"))]);
        assert_eq!(trace_id(&extract_context(&single)), TRACE);
    }

    #[test]
    fn the_trace_id_of_either_format_or_none() {
        let b3 = headers(&[("b3", &format!("{TRACE}-{SPAN}-1"))]);
        assert_eq!(trace_id_of(&b3).as_deref(), Some(TRACE));
        let w3c = headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]);
        assert_eq!(trace_id_of(&w3c).as_deref(), Some(TRACE));
        assert_eq!(trace_id_of(&HeaderMap::new()), None);
        assert_eq!(trace_id_of(&headers(&[("traceparent", "garbage")])), None);
        // As the propagators read them: a 64-bit B3 id padded, zeros invalid.
        for (h, v) in [
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1"),
        ] {
            let hs = headers(&[(h, v), ("x-b3-spanid", SPAN)]);
            let via_propagator = {
                use opentelemetry::trace::TraceContextExt as _;
                extract_context(&hs)
                    .span()
                    .span_context()
                    .trace_id()
                    .to_string()
            };
            assert_eq!(
                trace_id_of(&hs).as_deref(),
                Some(via_propagator.as_str()),
                "{h}"
            );
        }
        let zeros = format!("00-{}-{SPAN}-01", "0".repeat(32));
        assert_eq!(trace_id_of(&headers(&[("traceparent", &zeros)])), None);
    }

    #[test]
    fn w3c_wins_when_both_present() {
        let other = "0af7651916cd43dd8448eb211c80319c";
        let both = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("x-b3-traceid", other),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "1"),
        ]);
        assert_eq!(trace_id(&extract_context(&both)), TRACE);
    }

    #[test]
    fn no_headers_means_no_parent() {
        assert!(
            !extract_context(&HeaderMap::new())
                .span()
                .span_context()
                .is_valid()
        );
    }

    #[test]
    fn injects_w3c_and_b3_multi() {
        let cx = extract_context(&headers(&[(
            "traceparent",
            &format!("00-{TRACE}-{SPAN}-01"),
        )]));
        let mut out = HeaderMap::new();
        inject_context(&cx, &mut out);
        assert_eq!(out["traceparent"], format!("00-{TRACE}-{SPAN}-01").as_str());
        assert_eq!(out["x-b3-traceid"], TRACE);
        assert_eq!(out["x-b3-spanid"], SPAN);
        assert_eq!(out["x-b3-sampled"], "1");
        assert!(
            out.get("b3").is_none(),
            "single-header B3 is extracted, not injected"
        );
    }

    /// What the SDK's composite propagator writes for `cx`, sorted.
    fn by_the_propagators(cx: &Context) -> Vec<(String, String)> {
        let mut out = HeaderMap::new();
        propagator().inject_context(cx, &mut StaticInjector(&mut out));
        sorted(&out)
    }

    fn sorted(h: &HeaderMap) -> Vec<(String, String)> {
        let mut v: Vec<_> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn inject_fast_path_writes_what_the_propagators_write() {
        use opentelemetry::KeyValue;
        let w3c = |flags: &str, state: Option<&str>| {
            let mut h = headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-{flags}"))]);
            if let Some(s) = state {
                h.insert("tracestate", s.parse().unwrap());
            }
            extract_context(&h)
        };
        let b3 = |flags: &[(&'static str, &str)]| {
            let mut pairs = vec![("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)];
            pairs.extend_from_slice(flags);
            extract_context(&headers(&pairs))
        };
        let cases = [
            ("sampled", w3c("01", None)),
            ("not sampled", w3c("00", None)),
            (
                "with tracestate",
                w3c("01", Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")),
            ),
            ("b3 sampled", b3(&[("x-b3-sampled", "1")])),
            ("b3 debug (propagators' path)", b3(&[("x-b3-flags", "1")])),
            ("b3 deferred (propagators' path)", b3(&[])),
            (
                "with baggage (propagators' path)",
                w3c("01", None).with_baggage([KeyValue::new("tenant", "a b")]),
            ),
            ("no context (propagators' path)", Context::new()),
        ];
        for (name, cx) in cases {
            let mut out = HeaderMap::new();
            inject_context(&cx, &mut out);
            assert_eq!(sorted(&out), by_the_propagators(&cx), "{name}");
        }
    }

    /// The parent as the SDK's composite propagator reads it.
    fn by_the_propagators_read(h: &HeaderMap) -> Context {
        propagator().extract(&HeaderExtractor(h))
    }

    #[test]
    fn extract_fast_path_reads_what_the_propagators_read() {
        let tp = |v: &str| ("traceparent", v.to_owned());
        let b3 = [
            (
                "x-b3-traceid",
                "0af7651916cd43dd8448eb211c80319c".to_owned(),
            ),
            ("x-b3-spanid", SPAN.to_owned()),
            ("x-b3-sampled", "1".to_owned()),
        ];
        let mut cases: Vec<Vec<(&'static str, String)>> = vec![
            vec![tp(&format!("00-{TRACE}-{SPAN}-01"))],
            vec![tp(&format!("00-{TRACE}-{SPAN}-00"))],
            // Unknown flags are zeroed, the sampled bit kept.
            vec![tp(&format!("00-{TRACE}-{SPAN}-ff"))],
            vec![tp(&format!("00-{TRACE}-{SPAN}-02"))],
            vec![tp(&format!(" 00-{TRACE}-{SPAN}-01 "))],
            // What mlmesh's own injection sends: both formats, an empty tracestate.
            vec![
                tp(&format!("00-{TRACE}-{SPAN}-01")),
                ("tracestate", String::new()),
            ],
            // Not the fast path's: each must still be read as the SDK reads it.
            vec![
                tp(&format!("00-{TRACE}-{SPAN}-01")),
                ("tracestate", "rojo=00f067aa0ba902b7".into()),
            ],
            vec![
                tp(&format!("00-{TRACE}-{SPAN}-01")),
                ("baggage", "tenant=a".into()),
            ],
            vec![tp(&format!("01-{TRACE}-{SPAN}-01"))],
            vec![tp(&format!("01-{TRACE}-{SPAN}-01-what-the-future-adds"))],
            vec![tp(&format!("ff-{TRACE}-{SPAN}-01"))],
            vec![tp(&format!("00-{}-{SPAN}-01", TRACE.to_uppercase()))],
            vec![tp(&format!("00-{TRACE}-{}-01", "0".repeat(16)))],
            vec![tp(&format!("00-{}-{SPAN}-01", "0".repeat(32)))],
            vec![tp(&format!("00-{}-{SPAN}-01", &TRACE[1..]))],
            vec![tp(&format!("00-{TRACE}-{SPAN}-1"))],
            vec![tp(&format!("00-{TRACE}-{SPAN}-01-"))],
            vec![tp(&format!("00-{TRACE}-{SPAN}-0g"))],
            vec![tp(&format!("00_{TRACE}-{SPAN}-01"))],
            vec![tp("")],
            vec![],
            b3.to_vec(),
            vec![("b3", format!("{TRACE}-{SPAN}-1"))],
            vec![("baggage", "tenant=a".into())],
            // No header any propagator needs: the empty context, not the SDK's.
            vec![("tracestate", "rojo=00f067aa0ba902b7".into())],
            vec![("x-b3-spanid", SPAN.into()), ("x-b3-sampled", "1".into())],
            vec![("x-b3-flags", "1".into())],
            vec![("x-b3-parentspanid", SPAN.into())],
        ];
        // B3 beside each W3C form: W3C wins whenever it is valid.
        for i in 0..cases.len() {
            let mut with_b3 = cases[i].clone();
            with_b3.extend(b3.iter().cloned());
            cases.push(with_b3);
        }
        let fast = cases
            .iter()
            .filter(|pairs| {
                let refs: Vec<_> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                plain_traceparent(&headers(&refs)).is_some()
            })
            .count();
        // The first six forms, alone and with B3 beside them.
        assert_eq!(fast, 12, "the fast path's share of the cases");
        let untraced = cases
            .iter()
            .filter(|pairs| {
                let refs: Vec<_> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                !carries_trace_context(&headers(&refs))
            })
            .count();
        // No headers, and the four partial forms above, alone.
        assert_eq!(untraced, 5, "the cases with nothing to extract");
        for pairs in &cases {
            let refs: Vec<_> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let h = headers(&refs);
            let (ours, sdk) = (extract_context(&h), by_the_propagators_read(&h));
            let (a, b) = (
                ours.span().span_context().clone(),
                sdk.span().span_context().clone(),
            );
            let parts = |sc: &SpanContext| {
                (
                    sc.trace_id(),
                    sc.span_id(),
                    sc.trace_flags(),
                    sc.is_remote(),
                    sc.is_valid(),
                    sc.trace_state().header(),
                )
            };
            assert_eq!(parts(&a), parts(&b), "{pairs:?}");
            assert_eq!(ours.baggage().len(), sdk.baggage().len(), "{pairs:?}");
        }
    }

    #[test]
    fn hex_digits_are_lowercase_and_complete() {
        assert_eq!(&hex::<4>(&[0x0a, 0xf1]), b"0af1");
        assert_eq!(&hex::<16>(&u64::MAX.to_be_bytes()), b"ffffffffffffffff");
    }
}
