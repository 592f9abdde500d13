//! Reading the store's answers: keyed, listed and binary, orders learnt
//! and forgotten, values laid out in a model's columns.

use super::*;

pub(super) fn layout() -> Layout {
    Layout::new("features", "a,b,c")
}

/// A keyed answer, read as the first answer is (no order known).
fn features(json: &str) -> Features {
    match KnownOrder::default().read(Bytes::from(json.to_owned()).into(), None) {
        Ok(Read::Features(f)) => f,
        other => panic!("{json}: {other:?}"),
    }
}

/// The store's order when it serves the model's columns as they are.
fn abc_order(fingerprint: &str) -> Arc<StoreOrder> {
    Arc::new(StoreOrder {
        fingerprint: fingerprint.into(),
        names: vec!["a".into(), "b".into(), "c".into()],
    })
}

fn body(json: &serde_json::Value) -> Bytes {
    Bytes::from(json.to_string())
}

#[test]
fn a_keyed_answer_teaches_the_order_and_a_listed_one_uses_it() {
    let known = KnownOrder::default();
    // Raw text: serde_json's own map would sort the names.
    let keyed = r#"{"entity_id":"1","found":true,"fingerprint":"f1","features":{"c":3,"z":9,"a":1,"b":2},"event_time":null}"#;
    let Read::Features(f) = known.read(Bytes::from(keyed).into(), None).unwrap() else {
        panic!("keyed answers are read")
    };
    assert_eq!(f.values_in(&layout()).unwrap(), vec![1.0, 2.0, 3.0]);
    let order = known.get().expect("learnt");
    assert_eq!(order.fingerprint.as_ref(), "f1");
    let names: Vec<&str> = order.names.iter().map(|n| &**n).collect();
    assert_eq!(names, ["c", "z", "a", "b"], "the store's order, not sorted");

    // Listed in that order: the same columns for the model.
    let listed = serde_json::json!({
        "entity_id": "1", "found": true, "fingerprint": "f1",
        "values": [3, 9, 1, 2], "event_time": null,
    });
    let Read::Features(f) = known
        .read(body(&listed).into(), Some(order.clone()))
        .unwrap()
    else {
        panic!("the same fingerprint is read")
    };
    assert_eq!(f.values_in(&layout()).unwrap(), vec![1.0, 2.0, 3.0]);
    // In the model's own order (the fast path) as well.
    let same = abc_order("f2");
    let listed = serde_json::json!({"fingerprint": "f2", "values": [1, 2, 3]});
    let Read::Features(f) = known.read(body(&listed).into(), Some(same)).unwrap() else {
        panic!("read")
    };
    assert_eq!(f.values_in(&layout()).unwrap(), vec![1.0, 2.0, 3.0]);
    // A null or a missing model feature names it, as in a keyed answer.
    let listed = serde_json::json!({"fingerprint": "f1", "values": [3, 9, null, 2]});
    let Read::Features(f) = known
        .read(body(&listed).into(), Some(order.clone()))
        .unwrap()
    else {
        panic!("read")
    };
    let e = f.values_in(&layout()).unwrap_err();
    assert!(e.to_string().contains("'a'"), "{e}");
}

#[test]
fn another_fingerprint_forgets_the_order_and_asks_again() {
    let known = KnownOrder::default();
    let order = abc_order("old");
    known.order.set(order.clone());
    for stale in [
        serde_json::json!({"fingerprint": "new", "values": [1, 2, 3]}),
        // An older store behind a rollout: no fingerprint at all.
        serde_json::json!({"values": [1, 2, 3]}),
    ] {
        known.order.set(order.clone());
        assert!(
            matches!(
                known.read(body(&stale).into(), Some(order.clone())),
                Ok(Read::Reordered)
            ),
            "{stale}"
        );
        assert!(known.get().is_none(), "forgotten: {stale}");
    }
    // A keyed answer without a fingerprint (an older store) teaches
    // nothing: the frontend keeps asking with names, and tries to learn
    // again only after RELEARN_AFTER more answers.
    let old = body(&serde_json::json!({"features": {"a": 1, "b": 2, "c": 3}}));
    let new = body(&serde_json::json!({"fingerprint": "up", "features": {"a": 1, "b": 2, "c": 3}}));
    assert!(matches!(
        known.read(old.into(), None),
        Ok(Read::Features(_))
    ));
    assert!(known.get().is_none());
    for _ in 0..RELEARN_AFTER {
        assert!(matches!(
            known.read(new.clone().into(), None),
            Ok(Read::Features(_))
        ));
        assert!(known.get().is_none(), "not learning yet");
    }
    assert!(matches!(
        known.read(new.into(), None),
        Ok(Read::Features(_))
    ));
    assert_eq!(
        known.get().unwrap().fingerprint.as_ref(),
        "up",
        "the upgraded store"
    );
}

/// The binary form: doubles in the store's order, NaN for no value, the
/// fingerprint in a header; `prefix` before them (a batch's flags).
pub(super) fn binary_after(prefix: &[u8], values: &[f64], fingerprint: Option<&str>) -> Answer {
    let mut body = prefix.to_vec();
    body.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    Answer {
        body: body.into(),
        binary: true,
        fingerprint: fingerprint.map(str::to_owned),
        served_by: None,
    }
}

fn binary(values: &[f64], fingerprint: Option<&str>) -> Answer {
    binary_after(&[], values, fingerprint)
}

/// A store order `c, z, a, b` (fingerprint `f`), known to a new [`KnownOrder`].
pub(super) fn known_czab() -> (KnownOrder, Arc<StoreOrder>) {
    let known = KnownOrder::default();
    let order = Arc::new(StoreOrder {
        fingerprint: "f".into(),
        names: vec!["c".into(), "z".into(), "a".into(), "b".into()],
    });
    known.order.set(order.clone());
    (known, order)
}

#[test]
fn a_binary_answer_is_read_like_a_listed_one() {
    let (known, order) = known_czab();
    let read = |answer| known.read(answer, Some(order.clone()));
    let Ok(Read::Features(f)) = read(binary(&[3.0, 9.0, 1.5, -2.0], Some("f"))) else {
        panic!("read")
    };
    assert_eq!(f.values_in(&layout()).unwrap(), vec![1.5, -2.0, 3.0]);
    // NaN is no value: the model's feature is named; the others' NaN is no matter.
    let Ok(Read::Features(f)) = read(binary(&[3.0, f64::NAN, f64::NAN, 2.0], Some("f"))) else {
        panic!("read")
    };
    let e = f.values_in(&layout()).unwrap_err();
    assert!(e.to_string().contains("'a'"), "{e}");
    // Too few, too many, or not whole doubles.
    for bad in [
        binary(&[1.0, 2.0, 3.0], Some("f")),
        binary(&[1.0; 5], Some("f")),
        Answer {
            body: Bytes::from_static(&[0; 31]),
            binary: true,
            fingerprint: Some("f".into()),
            served_by: None,
        },
    ] {
        assert_eq!(read(bad).unwrap_err().kind(), "invalid");
    }
    assert!(
        known.get().is_some(),
        "an answer that does not add up forgets nothing"
    );
    // Another fingerprint, or none, is another order.
    for other in [Some("g"), None] {
        known.order.set(order.clone());
        let answer = binary(&[3.0, 9.0, 1.5, -2.0], other);
        assert!(matches!(read(answer), Ok(Read::Reordered)), "{other:?}");
        assert!(known.get().is_none(), "{other:?}");
    }
}

#[test]
fn a_listed_answer_that_does_not_add_up_is_an_error() {
    let known = KnownOrder::default();
    let order = abc_order("f");
    for bad in [
        r#"{"fingerprint":"f","values":[1,2]}"#,
        r#"{"fingerprint":"f","values":[1,2,3,4]}"#,
        r#"{"fingerprint":"f","values":[1,"2",3]}"#,
        r#"{"fingerprint":"f"}"#,
        r#"{"fingerprint":"f","values":{"a":1}}"#,
        "not json",
    ] {
        let e = known
            .read(Bytes::from(bad).into(), Some(order.clone()))
            .unwrap_err();
        assert_eq!(e.kind(), "invalid", "{bad}");
    }
}

#[test]
fn values_land_in_the_models_column_order() {
    let f = features(
        r#"{"entity_id":"u1","features":{"c":3,"x":{"nested":[1]},"a":1.5,"b":-2},"as_of":null}"#,
    );
    assert_eq!(f.values_in(&layout()).unwrap(), vec![1.5, -2.0, 3.0]);
    // An escaped name is still found.
    let f = features(r#"{"features":{"\u0061":1,"b":2,"c":3}}"#);
    assert_eq!(f.values_in(&layout()).unwrap(), vec![1.0, 2.0, 3.0]);
    // In the model's order (the fast path), with strangers between,
    // rotated, and backwards: the same columns.
    for json in [
        r#"{"features":{"a":1,"b":2,"c":3}}"#,
        r#"{"features":{"z":0,"a":1,"y":9,"b":2,"c":3,"d":4}}"#,
        // A stranger whose escape is no character: skipped like any stranger.
        r#"{"features":{"\ud800":0,"a":1,"b":2,"c":3}}"#,
        // Escaped names off the expected order: looked up all the same.
        r#"{"features":{"\u0063":3,"\u0062":2,"\u0061":1}}"#,
        r#"{"features":{"b":2,"c":3,"a":1}}"#,
        r#"{"features":{"c":3,"b":2,"a":1}}"#,
    ] {
        assert_eq!(
            features(json).values_in(&layout()).unwrap(),
            vec![1.0, 2.0, 3.0],
            "{json}"
        );
    }
}

#[test]
fn a_missing_null_or_oversized_value_names_the_feature() {
    for (json, needle) in [
        (r#"{"features":{"a":1,"b":2}}"#, "'c'"),
        (r#"{"features":{"a":1,"b":null,"c":3}}"#, "'b'"),
        (r#"{"features":{"a":1e39,"b":2,"c":3}}"#, "'a'"),
        (r#"{"features":{"a":"1","b":2,"c":3}}"#, "invalid type"),
        (r#"{"entity_id":"u1"}"#, "features"),
        (r#"{"features":{"a":1,"b":2,"c":3}} trailing"#, "trailing"),
        ("not json", "expected"),
    ] {
        let e = features(json).values_in(&layout()).unwrap_err();
        assert_eq!(e.kind(), "invalid", "{json}");
        assert!(e.to_string().contains(needle), "{json}: {e}");
    }
}
