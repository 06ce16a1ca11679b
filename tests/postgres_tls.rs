//! PostgreSQL over TLS, as managed services require it: a private PostgreSQL that takes TCP
//! clients over TLS only (`hostssl`, with the certificates of [`common::certs::Pki`]), and the
//! real `orders` binary given libpq's URL parameters. With `sslmode=verify-full` and the test
//! CA orders complete (printed as the chaos scenarios print); a CA that did not sign the server's
//! certificate, or `sslmode=disable`, stop the start with the cause and `DATABASE_URL` named.

#[allow(dead_code)]
#[path = "chaos/cluster.rs"]
mod cluster;
mod common;

use cluster::{Cluster, Fsync};
use common::certs::Pki;
use common::http::accept_batch;
use common::process::{free_port, run_orders};
use common::tally::{wait_until_settled, EventRule, Tally};
use common::{wait_until, Sent};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

/// A password the URLs carry (the server trusts everyone): it must never be printed.
const PASSWORD: &str = "s3cret-never-printed";

/// A cluster whose PostgreSQL takes TCP clients over TLS only, signed by `pki`'s CA; with
/// `client_certs`, each must also present a certificate signed by that CA.
async fn tls_cluster(scenario: &str, pki: &Pki, client_certs: bool) -> Cluster {
    let mut cluster = Cluster::start(scenario, Fsync::EverySec).await;
    let client_ca = client_certs.then_some(pki.ca_cert.as_path());
    cluster
        .postgres
        .require_tls(&pki.server_cert, &pki.server_key, client_ca)
        .await;
    cluster
}

/// `DATABASE_URL` for `hosts` (`h:port,h2:port2`) with these query parameters.
fn database_url(hosts: &str, query: &[(&str, &std::path::Path)], extra: &str) -> String {
    let mut url = format!("postgres://postgres:{PASSWORD}@{hosts}/orders?{extra}");
    for (key, path) in query {
        url.push_str(&format!("&{key}={}", path.display()));
    }
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_test_ca_completes_orders_over_tls() {
    let pki = Pki::new();
    let cluster = tls_cluster("postgres-tls-verify-full", &pki, true).await;
    let standby = cluster.postgres.start_standby().await;
    // Three hosts, as a failover URL lists them: the first refuses connections, the second is
    // a standby (TLS, but read-only: target_session_attrs=read-write passes it by), the third
    // the primary under the name `localhost`, so the connector checks the name of the host it
    // reached (the certificate names 127.0.0.1 and localhost).
    let hosts = format!(
        "127.0.0.1:{},127.0.0.1:{},localhost:{}",
        free_port(),
        standby.port,
        cluster.postgres.port
    );
    let url = database_url(
        &hosts,
        &[
            ("sslrootcert", &pki.ca_cert),
            ("sslcert", &pki.client_cert),
            ("sslkey", &pki.client_key),
        ],
        "sslmode=verify-full&target_session_attrs=read-write",
    );
    let settings = [
        ("DATABASE_URL", url.as_str()),
        ("ORDERS_PROCESSING_DELAY_MS", "0"),
    ];
    let service = cluster
        .start_service("orders", "api,worker,notifier", &settings)
        .await;
    let events = cluster.subscribe().await;
    let http = common::http::client();

    let order = json!({"customer_id": "tls-1", "items": ["sku-1"], "total": 12.34});
    let answer = http.post(service.url("/orders")).json(&order).sent().await;
    assert_eq!(answer.status(), 202);
    let body: Value = answer.json().await.expect("a JSON body");
    let first: Uuid = body["order_id"]
        .as_str()
        .expect("order_id")
        .parse()
        .unwrap();
    let mut accepted = vec![first];
    accepted.extend(accept_batch(&http, &service.url("/orders/batch"), "tls", 99).await);

    wait_until_settled(&cluster, &accepted, Duration::from_secs(60)).await;
    let one: Value = http
        .get(service.url(&format!("/orders/{first}")))
        .sent()
        .await
        .json()
        .await
        .expect("a JSON body");
    assert_eq!(one["status"], "completed", "{one}");
    let tally = Tally::count(
        &cluster,
        &accepted,
        &events.finish(Duration::from_secs(2)).await,
    )
    .await;
    tally.report(EventRule::ExactlyOne);

    // The server's side: every connection of the service is TLS, with the client certificate.
    let db = cluster.db().await;
    let row = db
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl AND s.client_dn = '/CN=orders')
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.client_addr IS NOT NULL AND a.datname = 'orders'",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    let (connections, with_tls): (i64, i64) = (row.get(0), row.get(1));
    assert!(connections > 0, "the service holds connections");
    assert_eq!(
        with_tls, connections,
        "every connection is TLS with the client certificate"
    );

    // The standby alone: reachable over TLS, but not ready, and /readyz would say why.
    let standby_only = database_url(
        &format!("127.0.0.1:{}", standby.port),
        &[
            ("sslrootcert", &pki.ca_cert),
            ("sslcert", &pki.client_cert),
            ("sslkey", &pki.client_key),
        ],
        "sslmode=verify-full",
    );
    let config = orders::config::Config::load_from(|name| {
        (name == "DATABASE_URL").then(|| standby_only.clone())
    })
    .expect("a configuration");
    let store = orders::store::Store::new(&config).expect("a store");
    let readiness = store.ready().await.to_string();
    assert_eq!(readiness, "read-only (in recovery)");
    println!("postgres-tls-standby: postgres {readiness:?}");
    let stderr = refused_start(&cluster, &standby_only).await;
    assert!(
        stderr.contains("the database is read-only (in recovery)"),
        "{stderr}"
    );
    println!("postgres-tls-standby: refused to start: {}", stderr.trim());

    // A database that turns read-only (default_transaction_read_only, as a standby would be):
    // /readyz says so, and says ok again once it takes writes.
    let readyz = async || -> (u16, Value) {
        let answer = http.get(service.url("/readyz")).sent().await;
        let status = answer.status().as_u16();
        (status, answer.json().await.expect("a JSON body"))
    };
    // One statement a call: a multi-statement string is one transaction, which ALTER SYSTEM
    // refuses.
    for statement in [
        "SET default_transaction_read_only = off",
        "ALTER SYSTEM SET default_transaction_read_only = on",
        "SELECT pg_reload_conf()",
    ] {
        db.batch_execute(statement).await.expect(statement);
    }
    let mut seen = Value::Null;
    wait_until(
        "/readyz to say read-only",
        Duration::from_secs(10),
        async || {
            let (status, body) = readyz().await;
            seen = body["postgres"].clone();
            status == 503 && seen == "read-only (default_transaction_read_only is on)"
        },
    )
    .await;
    println!("postgres-tls-read-only: /readyz 503, postgres {seen}");
    // An order meanwhile: its attempt fails on the read-only database, and the worker stops
    // claiming (as when PostgreSQL is down) until the database takes writes again.
    let order = json!({"customer_id": "tls-late", "items": ["sku-3"], "total": 3});
    let answer = http.post(service.url("/orders")).json(&order).sent().await;
    assert_eq!(answer.status(), 202);
    let body: Value = answer.json().await.expect("a JSON body");
    let late = body["order_id"].as_str().expect("order_id").to_string();
    wait_until(
        "the order's attempt to fail on the read-only database",
        Duration::from_secs(10),
        async || {
            service
                .log
                .all("order failed, retrying later")
                .iter()
                .any(|l| l["order_id"] == late.as_str())
        },
    )
    .await;
    for statement in [
        "ALTER SYSTEM RESET default_transaction_read_only",
        "SELECT pg_reload_conf()",
    ] {
        db.batch_execute(statement).await.expect(statement);
    }
    wait_until(
        "/readyz to say ok again",
        Duration::from_secs(10),
        async || readyz().await.0 == 200,
    )
    .await;
    wait_until(
        "the late order to complete",
        Duration::from_secs(30),
        async || {
            let path = format!("/orders/{late}");
            let order: Value = http
                .get(service.url(&path))
                .sent()
                .await
                .json()
                .await
                .unwrap();
            order["status"] == "completed"
        },
    )
    .await;
    assert!(
        service
            .log
            .find("PostgreSQL answers again, claiming orders")
            .is_some(),
        "the worker paused on the read-only database and resumed"
    );
}

/// Starts `orders serve` with this `DATABASE_URL` on `cluster`, which must refuse to start;
/// its stderr (term logs), which must name `DATABASE_URL` and never the password.
async fn refused_start(cluster: &Cluster, url: &str) -> String {
    let mut env = cluster.env();
    env.insert("DATABASE_URL".into(), url.to_string());
    env.insert("ORDERS_LOG_FORMAT".into(), "term".into());
    env.insert("ORDERS_LISTEN".into(), format!("127.0.0.1:{}", free_port()));
    let out = run_orders(&["serve"], &env, Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "it started: {stderr}");
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(
        !stderr.contains(PASSWORD),
        "the password is printed: {stderr}"
    );
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_no_tls_stops_the_start_and_says_why() {
    let pki = Pki::new();
    let cluster = tls_cluster("postgres-tls-refused", &pki, false).await;
    let hosts = format!("127.0.0.1:{}", cluster.postgres.port);

    let wrong_ca = database_url(
        &hosts,
        &[("sslrootcert", &pki.other_ca_cert)],
        "sslmode=verify-full",
    );
    let stderr = refused_start(&cluster, &wrong_ca).await;
    assert!(
        stderr.contains("invalid peer certificate: UnknownIssuer"),
        "{stderr}"
    );
    println!("postgres-tls-wrong-ca: refused to start: {}", stderr.trim());

    // libpq: require with sslrootcert checks the chain (as verify-ca) too.
    let require = database_url(
        &hosts,
        &[("sslrootcert", &pki.other_ca_cert)],
        "sslmode=require",
    );
    let stderr = refused_start(&cluster, &require).await;
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");

    let plain = database_url(&hosts, &[], "sslmode=disable");
    let stderr = refused_start(&cluster, &plain).await;
    assert!(
        stderr.contains("no pg_hba.conf entry") && stderr.contains("no encryption"),
        "{stderr}"
    );
    println!("postgres-tls-disable: refused to start: {}", stderr.trim());

    let unreadable = database_url(
        &hosts,
        &[("sslrootcert", std::path::Path::new("/nonexistent/ca.pem"))],
        "sslmode=verify-full",
    );
    let stderr = refused_start(&cluster, &unreadable).await;
    assert!(
        stderr.contains("sslrootcert=/nonexistent/ca.pem: cannot read the file"),
        "{stderr}"
    );
}
