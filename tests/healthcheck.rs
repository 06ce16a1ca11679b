//! `orders healthcheck`, the container's health check (the slim image has no curl): exit 0 when
//! the service's `/healthz` answers 200, 1 with the reason on one line when nothing answers.

mod common;

use common::process::{free_port, run_orders, test_log_path, Process};
use common::test_env;
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_zero_against_a_live_service_and_one_against_a_closed_port() {
    let vars = test_env(&[]).await;
    let service = Process::start("api", "api", &vars, test_log_path(&vars, "healthcheck")).await;

    // ORDERS_LISTEN as the service's own: a wildcard address is asked on loopback. A proxy in
    // the environment (nothing listens there) is not used.
    let proxy = "http://127.0.0.1:9".to_string();
    let listen = HashMap::from([
        (
            "ORDERS_LISTEN".to_string(),
            format!("0.0.0.0:{}", service.port),
        ),
        ("HTTP_PROXY".to_string(), proxy.clone()),
        ("http_proxy".to_string(), proxy),
    ]);
    let (code, said) = healthcheck(&[], &listen).await;
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(
        said.trim(),
        format!(
            "healthy: http://127.0.0.1:{}/healthz answered 200",
            service.port
        )
    );
    println!("live service: exit 0, {}", said.trim());

    let closed = format!("http://127.0.0.1:{}/healthz", free_port());
    let (code, said) = healthcheck(&["--url", &closed], &HashMap::new()).await;
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(said.lines().count(), 1, "one line: {said}");
    assert!(
        said.starts_with(&format!("unhealthy: {closed}: ")) && said.contains("Connection refused"),
        "{said}"
    );
    println!("closed port: exit 1, {}", said.trim());

    // A route that answers, but not 200: unhealthy too.
    let missing = service.url("/no-such-route");
    let (code, said) = healthcheck(&["--url", &missing], &HashMap::new()).await;
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(said.trim(), format!("unhealthy: {missing} answered 404"));
}

/// Runs `orders healthcheck <args>` with `env`: its exit code and what it printed.
async fn healthcheck(args: &[&str], env: &HashMap<String, String>) -> (Option<i32>, String) {
    let args: Vec<&str> = std::iter::once("healthcheck")
        .chain(args.iter().copied())
        .collect();
    let out = run_orders(&args, env, Duration::from_secs(10)).await;
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
