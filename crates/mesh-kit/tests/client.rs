//! `mesh_kit::client::Connections` against a raw TCP server that counts the
//! connections it accepts and records each request head: connections kept
//! and reused, a fresh one where the server closed the last, idle ones let
//! go, answers bounded, `Host` set as a gateway needs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use mesh_kit::client::{ClientError, Connections};
use test_support::raw_http::{RawAnswer as Answer, raw_http_server as raw_server};

fn conns(base: &str) -> Connections {
    Connections::new(&base.parse().unwrap()).unwrap()
}

fn get(c: &Connections, path: &str) -> Request<Full<Bytes>> {
    Request::get(c.uri(path).unwrap())
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn connections_are_kept_and_reused_up_to_the_concurrency() {
    let (base, seen) = raw_server(Answer::Ok).await;
    let c = Arc::new(conns(&base));
    for _ in 0..50 {
        let res = c.send(get(&c, "/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.body().as_ref(), b"ok");
    }
    assert_eq!(seen.connections(), 1, "one after another: one");
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                for _ in 0..100 {
                    c.send(get(&c, "/")).await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let opened = seen.connections();
    assert!(
        opened <= 4,
        "4 at a time need at most 4 connections, opened {opened}"
    );
    assert_eq!(c.idle_count(), opened);
}

#[tokio::test]
async fn a_connection_the_server_closed_is_replaced_not_failed() {
    let (base, seen) = raw_server(Answer::OkThenClose).await;
    let c = conns(&base);
    for i in 0..20 {
        let res = c.send(get(&c, "/")).await;
        assert_eq!(res.unwrap().status(), StatusCode::OK, "request {i}");
        // Let the close arrive, as it would between a client's requests.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen.connections(), 20);
}

#[tokio::test]
async fn a_connection_idle_too_long_is_closed_not_reused() {
    let (base, seen) = raw_server(Answer::Ok).await;
    let c = conns(&base).idle_timeout(Duration::from_millis(50));
    c.send(get(&c, "/")).await.unwrap();
    c.send(get(&c, "/")).await.unwrap();
    assert_eq!(seen.connections(), 1);
    tokio::time::sleep(Duration::from_millis(120)).await;
    c.send(get(&c, "/")).await.unwrap();
    assert_eq!(seen.connections(), 2, "the idle one was let go");
    assert_eq!(c.idle_count(), 1);
}

#[tokio::test]
async fn an_answer_over_the_bound_is_refused_and_its_connection_dropped() {
    let (base, seen) = raw_server(Answer::Body(4096)).await;
    let c = conns(&base).max_answer_bytes(1024);
    match c.send(get(&c, "/")).await {
        Err(ClientError::TooLarge { limit: 1024 }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        c.idle_count(),
        0,
        "its body unread, the connection is not kept"
    );
    let big = conns(&base).max_answer_bytes(4096);
    assert_eq!(big.send(get(&big, "/")).await.unwrap().body().len(), 4096);
    assert_eq!(seen.connections(), 2);
}

#[tokio::test]
async fn host_and_the_base_path_go_on_every_request_unless_set() {
    let (base, seen) = raw_server(Answer::Ok).await;
    let c = conns(&format!("{base}/lab/"));
    c.send(get(&c, "/v1/features/7?format=binary"))
        .await
        .unwrap();
    let mut own = get(&c, "/x");
    own.headers_mut()
        .insert(http::header::HOST, "model-shadow:8080".parse().unwrap());
    c.send(own).await.unwrap();
    let heads = seen.heads.lock().unwrap().clone();
    let authority = base.trim_start_matches("http://");
    assert!(
        heads[0].starts_with("GET /lab/v1/features/7?format=binary HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains(&format!("host: {authority}\r\n")),
        "{}",
        heads[0]
    );
    let second = heads[1].to_ascii_lowercase();
    assert!(second.contains("host: model-shadow:8080\r\n"), "{second}");
    assert_eq!(second.matches("host:").count(), 1, "{second}");
}

#[tokio::test]
async fn a_refused_connection_names_the_address_and_no_credentials() {
    // A port just freed: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = conns(&format!("http://127.0.0.1:{port}"));
    let e = c.send(get(&c, "/")).await.unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}
