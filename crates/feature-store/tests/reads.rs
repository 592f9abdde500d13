//! The same read cases against the Redis backend (a real redis-server) and the
//! embedded one, which must behave identically.

mod common;

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use common::{RedisServer, app, get, post, put, seed, seed_rows, store_args};
use feature_store::StoreArgs;
use serde_json::{Value, json};
use test_support::http::{get_bytes, post_json_bytes};

/// Runs `case` against a seeded Redis-backed app and a memory-backed one.
async fn on_both_backends<F, Fut>(mut tweak: impl FnMut(&mut StoreArgs), case: F)
where
    F: Fn(Router, &'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let redis = RedisServer::start();
    seed(&redis).await;
    for (name, server) in [("redis", Some(&redis)), ("memory", None)] {
        let mut args = store_args(server);
        tweak(&mut args);
        let (router, _) = app(&args).await;
        case(router, name).await;
    }
}

#[tokio::test]
async fn every_seed_row_round_trips() {
    let (names, rows) = seed_rows();
    let rows = &rows;
    let names = &names;
    on_both_backends(
        |_| {},
        |app, backend| async move {
            for chunk in rows.chunks(1000) {
                let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
                let a = post(&app, "/v1/features:batch", &json!({ "entity_ids": ids })).await;
                assert_eq!(a.status, StatusCode::OK, "{backend}: {}", a.json);
                let got = a.json["rows"].as_array().unwrap();
                assert_eq!(got.len(), chunk.len());
                for (row, (id, values)) in got.iter().zip(chunk) {
                    assert_eq!(row["entity_id"], id.as_str(), "{backend}: order");
                    assert_eq!(row["found"], true);
                    let features = row["features"].as_object().unwrap();
                    let keys: Vec<&String> = features.keys().collect();
                    assert_eq!(
                        keys,
                        names.iter().collect::<Vec<_>>(),
                        "{backend}: schema order"
                    );
                    for (name, want) in names.iter().zip(values) {
                        assert_eq!(
                            features[name].as_f64(),
                            Some(*want),
                            "{backend}: user {id} {name}"
                        );
                        assert_eq!(row["statuses"][name], "PRESENT");
                    }
                }
            }
        },
    )
    .await;
}

/// The binary form's values: little-endian doubles.
fn doubles_of(bytes: &[u8]) -> Vec<f64> {
    assert_eq!(bytes.len() % 8, 0, "{} bytes", bytes.len());
    bytes
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[tokio::test]
async fn single_reads_subsets_and_unknown_entities() {
    on_both_backends(
        |_| {},
        |app, backend| async move {
            let a = get(&app, "/v1/features/42").await;
            assert_eq!(a.status, StatusCode::OK, "{backend}");
            assert_eq!(a.json["features"].as_object().unwrap().len(), 85);
            assert!(a.json["event_time"].as_str().unwrap().ends_with('Z'));

            let a = get(&app, "/v1/features/42?features=PPERSAUT,MOSTYPE").await;
            let keys: Vec<&String> = a.json["features"].as_object().unwrap().keys().collect();
            assert_eq!(
                keys,
                ["PPERSAUT", "MOSTYPE"],
                "{backend}: the subset, in the order asked"
            );
            assert_eq!(a.json["features"]["MOSTYPE"], 11.0);
            assert_eq!(a.json["statuses"]["MOSTYPE"], "PRESENT");

            // A caller that reads only the values (the frontend) leaves the
            // statuses out: the same values, half the body.
            let all = get(&app, "/v1/features/42").await;
            let lean = get(&app, "/v1/features/42?statuses=false").await;
            assert_eq!(lean.status, StatusCode::OK, "{backend}");
            assert_eq!(lean.json["features"], all.json["features"], "{backend}");
            assert_eq!(lean.json["event_time"], all.json["event_time"]);
            assert!(
                lean.json.get("statuses").is_none(),
                "{backend}: {}",
                lean.json
            );
            assert!(all.json["statuses"].as_object().unwrap().len() == 85);
            let a = get(&app, "/v1/features/42?features=MOSTYPE&statuses=true").await;
            assert_eq!(a.json["statuses"]["MOSTYPE"], "PRESENT", "{backend}");

            // Without names: the same values listed in the schema's order,
            // which the fingerprint names (the same in both forms and in
            // /v1/schema).
            let schema = get(&app, "/v1/schema").await;
            let names: Vec<&str> = schema.json["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect();
            let fingerprint = &schema.json["fingerprint"];
            assert_eq!(fingerprint.as_str().unwrap().len(), 16, "{backend}");
            let listed = get(&app, "/v1/features/42?statuses=false&names=false").await;
            assert_eq!(listed.status, StatusCode::OK, "{backend}");
            assert_eq!(&listed.json["fingerprint"], fingerprint, "{backend}");
            assert_eq!(&all.json["fingerprint"], fingerprint, "{backend}");
            let values = listed.json["values"].as_array().unwrap();
            assert_eq!(values.len(), names.len(), "{backend}");
            for (name, v) in names.iter().zip(values) {
                assert_eq!(v, &all.json["features"][name], "{backend}: {name}");
            }
            assert!(listed.json.get("features").is_none(), "{backend}");
            assert!(listed.json.get("statuses").is_none(), "{backend}");
            assert_eq!(listed.json["event_time"], all.json["event_time"]);
            // A subset lists in the order asked; statuses list alongside.
            let a = get(
                &app,
                "/v1/features/42?features=PPERSAUT,MOSTYPE&names=false",
            )
            .await;
            assert_eq!(a.json["values"][1], 11.0, "{backend}");
            assert_eq!(a.json["values"][0], all.json["features"]["PPERSAUT"]);
            assert_eq!(
                a.json["statuses"],
                json!(["PRESENT", "PRESENT"]),
                "{backend}"
            );

            // Binary: the listed values as little-endian doubles, the
            // fingerprint in a header; the same numbers, bit for bit.
            let (status, headers, bytes) = get_bytes(&app, "/v1/features/42?format=binary").await;
            assert_eq!(status, StatusCode::OK, "{backend}");
            assert_eq!(headers["content-type"], "application/octet-stream");
            assert_eq!(
                headers[mesh_kit::propagation::FEATURE_FINGERPRINT_HEADER],
                fingerprint.as_str().unwrap(),
                "{backend}"
            );
            let doubles = doubles_of(&bytes);
            assert_eq!(doubles.len(), names.len(), "{backend}");
            for (name, v) in names.iter().zip(&doubles) {
                assert_eq!(
                    Some(*v),
                    all.json["features"][name].as_f64(),
                    "{backend}: {name}"
                );
            }
            // The same with the JSON form's flags said out loud, and a
            // subset in the order asked.
            let (_, _, same) = get_bytes(
                &app,
                "/v1/features/42?format=binary&names=false&statuses=false",
            )
            .await;
            assert_eq!(same, bytes, "{backend}");
            let (_, _, two) = get_bytes(
                &app,
                "/v1/features/42?features=PPERSAUT,MOSTYPE&format=binary",
            )
            .await;
            assert_eq!(
                doubles_of(&two),
                [all.json["features"]["PPERSAUT"].as_f64().unwrap(), 11.0],
                "{backend}"
            );
            let (status, _, _) = get_bytes(&app, "/v1/features/999999?format=binary").await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{backend}");
            // format=json is the default, said out loud.
            let a = get(&app, "/v1/features/42?format=json").await;
            assert_eq!(a.json, all.json, "{backend}");

            let a = get(&app, "/v1/features/999999").await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{backend}");
            assert!(a.json["error"].as_str().unwrap().contains("999999"));
        },
    )
    .await;
}

#[tokio::test]
async fn batch_keeps_order_and_marks_missing_entities() {
    on_both_backends(
        |_| {},
        |app, backend| async move {
            // 1,000 entities: every tenth one unknown, in a scrambled order.
            let ids: Vec<String> = (0..1000)
                .map(|i| {
                    if i % 10 == 3 {
                        format!("ghost-{i}")
                    } else {
                        ((i * 37) % 5822 + 1).to_string()
                    }
                })
                .collect();
            let a = post(
                &app,
                "/v1/features:batch",
                &json!({ "entity_ids": ids, "features": ["MOSTYPE"] }),
            )
            .await;
            assert_eq!(a.status, StatusCode::OK, "{backend}: {}", a.json);
            let rows = a.json["rows"].as_array().unwrap();
            assert_eq!(rows.len(), 1000);
            for (row, id) in rows.iter().zip(&ids) {
                assert_eq!(row["entity_id"], id.as_str());
                let missing = id.starts_with("ghost");
                assert_eq!(row["found"], !missing, "{backend}: {id}");
                assert_eq!(
                    row["statuses"]["MOSTYPE"],
                    if missing { "NOT_FOUND" } else { "PRESENT" }
                );
                assert_eq!(row["features"]["MOSTYPE"].is_null(), missing);
                assert_eq!(row["event_time"].is_null(), missing);
            }
            let lean = post(
                &app,
                "/v1/features:batch",
                &json!({ "entity_ids": ["1", "ghost"], "features": ["MOSTYPE"], "statuses": false }),
            )
            .await;
            assert_eq!(lean.status, StatusCode::OK, "{backend}: {}", lean.json);
            for row in lean.json["rows"].as_array().unwrap() {
                assert!(row.get("statuses").is_none(), "{backend}: {row}");
                assert!(row["features"].get("MOSTYPE").is_some(), "{backend}: {row}");
            }
            let listed = post(
                &app,
                "/v1/features:batch",
                &json!({ "entity_ids": ["1", "ghost"], "features": ["MOSTYPE", "MAANTHUI"], "names": false }),
            )
            .await;
            assert_eq!(listed.status, StatusCode::OK, "{backend}: {}", listed.json);
            let rows = listed.json["rows"].as_array().unwrap();
            assert_eq!(rows[0]["values"].as_array().unwrap().len(), 2, "{backend}");
            assert_eq!(rows[0]["statuses"], json!(["PRESENT", "PRESENT"]), "{backend}");
            assert_eq!(rows[1]["values"], json!([null, null]), "{backend}");
            assert_eq!(rows[1]["statuses"], json!(["NOT_FOUND", "NOT_FOUND"]));

            // Binary: a found flag per entity, then each row's doubles, the
            // same numbers bit for bit as the JSON rows above.
            let asked = json!({ "entity_ids": ids, "features": ["MOSTYPE", "MAANTHUI"], "format": "binary" });
            let (status, headers, bytes) = post_json_bytes(&app, "/v1/features:batch", &asked).await;
            assert_eq!(status, StatusCode::OK, "{backend}: {bytes:?}");
            assert_eq!(headers["content-type"], "application/octet-stream");
            assert!(headers.contains_key(mesh_kit::propagation::FEATURE_FINGERPRINT_HEADER));
            let (flags, values) = bytes.split_at(ids.len());
            let values = doubles_of(values);
            assert_eq!(values.len(), 2 * ids.len(), "{backend}");
            let both = post(
                &app,
                "/v1/features:batch",
                &json!({ "entity_ids": ids, "features": ["MOSTYPE", "MAANTHUI"], "names": false }),
            )
            .await;
            let rows = both.json["rows"].as_array().unwrap();
            for ((row, flag), got) in rows.iter().zip(flags).zip(values.chunks(2)) {
                assert_eq!(*flag == 1, row["found"] == true, "{backend}: {row}");
                for (want, got) in row["values"].as_array().unwrap().iter().zip(got) {
                    match want.as_f64() {
                        Some(want) => assert_eq!(want.to_bits(), got.to_bits(), "{backend}: {row}"),
                        None => assert!(got.is_nan(), "{backend}: {row}"),
                    }
                }
            }
            // The binary form says values alone.
            for flags in [json!({"names": true}), json!({"statuses": true})] {
                let mut asked = asked.clone();
                asked.as_object_mut().unwrap().extend(flags.as_object().unwrap().clone());
                let a = post(&app, "/v1/features:batch", &asked).await;
                assert_eq!(a.status, StatusCode::BAD_REQUEST, "{backend}: {asked}");
                assert!(a.json["error"].as_str().unwrap().contains("format=binary"));
            }
        },
    )
    .await;
}

#[tokio::test]
async fn old_values_come_back_stale_never_present() {
    on_both_backends(
        |a| a.max_age = Some(Duration::from_secs(3600)),
        |app, backend| async move {
            // Freshly seeded rows are within an hour.
            assert_eq!(
                get(&app, "/v1/features/7?features=MOSTYPE").await.json["statuses"]["MOSTYPE"],
                "PRESENT"
            );

            let two_hours_ago =
                humantime::format_rfc3339(std::time::SystemTime::now() - Duration::from_secs(7200))
                    .to_string();
            let w = put(
                &app,
                "/v1/features/7",
                &json!({ "features": { "MOSTYPE": 5 }, "event_time": two_hours_ago }),
            )
            .await;
            assert_eq!(w.status, StatusCode::OK, "{backend}: {}", w.json);
            let a = get(&app, "/v1/features/7?features=MOSTYPE,PPERSAUT").await;
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(
                a.json["features"]["MOSTYPE"], 5.0,
                "{backend}: the value is still returned"
            );
            assert_eq!(a.json["statuses"]["MOSTYPE"], "STALE", "{backend}");
            assert_eq!(
                a.json["statuses"]["PPERSAUT"], "STALE",
                "{backend}: the row's event time covers all its values"
            );

            let b = post(
                &app,
                "/v1/features:batch",
                &json!({ "entity_ids": ["7", "8"], "features": ["MOSTYPE"] }),
            )
            .await;
            assert_eq!(b.json["rows"][0]["statuses"]["MOSTYPE"], "STALE");
            assert_eq!(b.json["rows"][1]["statuses"]["MOSTYPE"], "PRESENT");

            put(
                &app,
                "/v1/features/7",
                &json!({ "features": { "MOSTYPE": 6 } }),
            )
            .await;
            assert_eq!(
                get(&app, "/v1/features/7?features=MOSTYPE").await.json["statuses"]["MOSTYPE"],
                "PRESENT"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn writes_update_only_the_given_features_and_create_new_entities() {
    on_both_backends(
        |_| {},
        |app, backend| async move {
            let before = get(&app, "/v1/features/9").await.json;
            let w = put(
                &app,
                "/v1/features/9",
                &json!({ "features": { "PPERSAUT": 1.5 } }),
            )
            .await;
            assert_eq!(
                (w.status, w.json["written"].as_u64()),
                (StatusCode::OK, Some(1)),
                "{backend}"
            );
            let after = get(&app, "/v1/features/9").await.json;
            assert_eq!(after["features"]["PPERSAUT"], 1.5);
            assert_eq!(
                after["features"]["MOSTYPE"], before["features"]["MOSTYPE"],
                "{backend}: untouched"
            );

            put(
                &app,
                "/v1/features/new-customer",
                &json!({ "features": { "MOSTYPE": 3 } }),
            )
            .await;
            let a = get(&app, "/v1/features/new-customer?features=MOSTYPE,PPERSAUT").await;
            assert_eq!(a.status, StatusCode::OK, "{backend}");
            assert_eq!(a.json["statuses"]["MOSTYPE"], "PRESENT");
            assert_eq!(
                a.json["statuses"]["PPERSAUT"], "NOT_FOUND",
                "{backend}: never written"
            );
            assert!(a.json["features"]["PPERSAUT"].is_null());
            // In binary, a value never written is NaN.
            let (_, _, bytes) = get_bytes(
                &app,
                "/v1/features/new-customer?features=MOSTYPE,PPERSAUT&format=binary",
            )
            .await;
            let values = doubles_of(&bytes);
            assert_eq!(values[0], 3.0, "{backend}");
            assert!(values[1].is_nan(), "{backend}: {values:?}");

            // Fields stored out of schema order (the reader's slow path).
            let w = put(
                &app,
                "/v1/features/reordered",
                &json!({ "features": { "ABYSTAND": 2, "PPERSAUT": 4, "MOSTYPE": 8 } }),
            )
            .await;
            assert_eq!(w.status, StatusCode::OK, "{backend}");
            let a = get(
                &app,
                "/v1/features/reordered?features=MOSTYPE,PPERSAUT,ABYSTAND,MAANTHUI",
            )
            .await;
            assert_eq!(
                a.json["features"],
                json!({ "MOSTYPE": 8.0, "PPERSAUT": 4.0, "ABYSTAND": 2.0, "MAANTHUI": null }),
                "{backend}"
            );
            assert_eq!(a.json["statuses"]["MAANTHUI"], "NOT_FOUND");
        },
    )
    .await;
}

/// Identical requests get identical answers (event times aside) from both backends.
#[tokio::test]
async fn backends_answer_identically() {
    let redis = RedisServer::start();
    seed(&redis).await;
    let (on_redis, _) = app(&store_args(Some(&redis))).await;
    let (in_memory, _) = app(&store_args(None)).await;
    let batch =
        json!({ "entity_ids": ["5", "x", "5822", "1"], "features": ["MAANTHUI", "AWAPART"] });
    let requests: Vec<(&str, &str, Option<Value>)> = vec![
        ("GET", "/v1/features/1", None),
        ("GET", "/v1/features/5822?features=APERSAUT", None),
        ("GET", "/v1/features/0", None),
        ("GET", "/v1/features/bad%20id", None),
        ("GET", "/v1/features/1?features=NOPE", None),
        ("GET", "/v1/features/1?statuses=false", None),
        ("GET", "/v1/features/1?statuses=false&names=false", None),
        ("POST", "/v1/features:batch", Some(batch)),
        (
            "POST",
            "/v1/features:batch",
            Some(json!({ "entity_ids": [] })),
        ),
        ("GET", "/v1/schema", None),
    ];
    for (method, path, body) in requests {
        let send = |app: Router| {
            let body = body.clone();
            async move {
                match body {
                    Some(b) => {
                        common::call(&app, method, path, Some("application/json"), b.to_string())
                            .await
                    }
                    None => get(&app, path).await,
                }
            }
        };
        let (r, m) = (send(on_redis.clone()).await, send(in_memory.clone()).await);
        assert_eq!(r.status, m.status, "{method} {path}");
        let strip = |mut v: Value| {
            strip_event_times(&mut v);
            v
        };
        let (mut rj, mut mj) = (strip(r.json), strip(m.json));
        // /v1/schema names its backend, which is the one expected difference.
        for j in [&mut rj, &mut mj] {
            if let Some(o) = j.as_object_mut() {
                o.remove("backend");
            }
        }
        assert_eq!(rj, mj, "{method} {path}");
    }
}

fn strip_event_times(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if o.contains_key("event_time") && !o["event_time"].is_null() {
                o.insert("event_time".into(), json!("<time>"));
            }
            o.values_mut().for_each(strip_event_times);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_event_times),
        _ => {}
    }
}

/// Redis is shared: whatever another writer left there is read without a
/// panic, and a value that is not a finite number is never passed on.
#[tokio::test]
async fn foreign_data_in_redis_is_read_safely() {
    let redis = RedisServer::start();
    seed(&redis).await;
    let key = "mlmesh:fs:v1:42";
    // Past year 9999 (RFC 3339's limit), not a number, not finite, unknown field.
    redis.query(&["HSET", key, "_event_time_ms", "9999999999999999"]);
    redis.query(&[
        "HSET", key, "MOSTYPE", "abc", "MAANTHUI", "inf", "MGEMOMV", "NaN",
    ]);
    redis.query(&["HSET", key, "NOT_A_FEATURE", "1"]);
    redis.query(&["SET", "mlmesh:fs:v1:43", "a string, not a hash"]);
    let (app, _) = app(&store_args(Some(&redis))).await;

    let a = get(&app, "/v1/features/42").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["event_time"], "9999-12-31T23:59:59.999Z");
    for name in ["MOSTYPE", "MAANTHUI", "MGEMOMV"] {
        assert_eq!(a.json["features"][name], Value::Null, "{name}");
        assert_eq!(a.json["statuses"][name], "NOT_FOUND", "{name}");
    }
    assert_eq!(a.json["statuses"]["MGEMLEEF"], "PRESENT");
    assert!(a.json["features"].get("NOT_A_FEATURE").is_none());

    // A key of the wrong type is the store failing, said as such.
    let a = post(
        &app,
        "/v1/features:batch",
        &json!({ "entity_ids": ["42", "43"] }),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.json);
    assert!(
        a.json["error"].as_str().unwrap().contains("WRONGTYPE"),
        "{}",
        a.json
    );
}
