//! Redis over TLS: a private `redis-server` that speaks TLS only (`--port 0 --tls-port`), with
//! certificates made by the test. The real binary, given `rediss://` and the CA
//! (`ORDERS_REDIS_CA_FILE`), takes orders, completes them and announces them; given a CA that
//! did not sign the server's certificate, it refuses to start and says why, naming the settings.
//! Prints `redis-tls: accepted N, completed N, failed 0, lost 0, duplicated 0`.

#[allow(dead_code)]
#[path = "chaos/cluster.rs"]
mod cluster;
mod common;

use cluster::{Cluster, Fsync, RedisTls};
use common::certs::Pki;
use common::process::run_refused;
use common::tally::{wait_until_settled, EventRule, Tally};
use common::{wait_until, Sent};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

/// Orders the TLS scenario puts through.
const ORDERS: usize = 20;

fn server_tls(pki: &Pki) -> RedisTls {
    RedisTls {
        ca: pki.ca_cert.clone(),
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
    }
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_go_through_a_redis_that_speaks_tls_only() {
    let pki = Pki::new();
    let cluster = Cluster::start_with("redis-tls", Fsync::EverySec, Some(server_tls(&pki))).await;
    assert!(cluster.redis.url().starts_with("rediss://"));
    // The service presents a client certificate too (the server accepts one, optionally).
    let service = cluster
        .start_service(
            "service",
            "api,worker,notifier",
            &[
                ("ORDERS_PROCESSING_DELAY_MS", "0"),
                ("ORDERS_REDIS_CA_FILE", path(&pki.ca_cert)),
                ("ORDERS_REDIS_CLIENT_CERT_FILE", path(&pki.client_cert)),
                ("ORDERS_REDIS_CLIENT_KEY_FILE", path(&pki.client_key)),
            ],
        )
        .await;
    let events = cluster.subscribe().await;
    let http = common::http::client();
    let mut accepted = Vec::new();
    for i in 0..ORDERS {
        let response = http
            .post(service.url("/orders"))
            .json(&json!({"customer_id": format!("tls-{i}"), "items": ["sku-1"], "total": 10.5}))
            .sent()
            .await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("a JSON body");
        accepted.push(
            body["order_id"]
                .as_str()
                .and_then(|id| id.parse::<Uuid>().ok())
                .expect("an order id"),
        );
    }
    let first = accepted[0];
    wait_until(
        "the first order to read completed",
        Duration::from_secs(30),
        async || {
            let order: Value = match http
                .get(service.url(&format!("/orders/{first}")))
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => return false,
            };
            order["status"] == "completed"
        },
    )
    .await;
    let event = events.of_order(first, Duration::from_secs(10)).await;
    assert_eq!(event["status"], "completed");
    wait_until_settled(&cluster, &accepted, Duration::from_secs(60)).await;
    let tally = Tally::count(
        &cluster,
        &accepted,
        &events.finish(Duration::from_secs(1)).await,
    )
    .await;
    tally.report(EventRule::ExactlyOne);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_did_not_sign_the_server_certificate_is_refused_at_start() {
    let pki = Pki::new();
    let cluster = Cluster::start_with(
        "redis-tls-wrong-ca",
        Fsync::EverySec,
        Some(server_tls(&pki)),
    )
    .await;
    let mut env = cluster.env();
    env.insert(
        "ORDERS_REDIS_CA_FILE".into(),
        path(&pki.other_ca_cert).into(),
    );
    let log = cluster.log_dir.join("refused.log");
    let (status, output) = run_refused(&env, log, Duration::from_secs(30));
    assert!(!status.success(), "it must refuse to start: {output}");
    for named in ["REDIS_URL", "ORDERS_REDIS_CA_FILE", "TLS", "certificate"] {
        assert!(
            output.contains(named),
            "the error names {named:?}: {output}"
        );
    }
    // Without a CA file it trusts the system's roots, which did not sign this server either.
    env.remove("ORDERS_REDIS_CA_FILE");
    let log = cluster.log_dir.join("refused-system-roots.log");
    let (status, output) = run_refused(&env, log, Duration::from_secs(30));
    assert!(!status.success(), "it must refuse to start: {output}");
    for named in [
        "REDIS_URL",
        "ORDERS_REDIS_CA_FILE is not set",
        "certificate",
    ] {
        assert!(
            output.contains(named),
            "the error names {named:?}: {output}"
        );
    }
}
