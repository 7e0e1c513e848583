//! Crash safety: the server is killed with SIGKILL while signed deliveries arrive at full
//! speed, restarted on the same data directory, and Heroku's redeliveries of everything then
//! leave exactly one pulse per build status, with none that was answered 200 lost.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use pulse_e2e::process::ServerProcess;
use pulse_e2e::{numbered_build, numbered_build_id, sign};
use reqwest::StatusCode;
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_pulse-host-e2e");

async fn deliver(
    client: &reqwest::Client,
    base: &str,
    secret: &str,
    body: &[u8],
) -> Result<(StatusCode, Value), reqwest::Error> {
    let response = client
        .post(format!("{base}/webhooks/heroku/acme"))
        .header("Content-Type", "application/json")
        .header("Heroku-Webhook-Hmac-SHA256", sign(secret, body))
        .body(body.to_vec())
        .send()
        .await?;
    let status = response.status();
    let body = response.json().await?;
    Ok((status, body))
}

/// Every pulse's build id, following the pages to the end.
async fn stored_builds(client: &reqwest::Client, server: &ServerProcess) -> Vec<String> {
    let mut builds = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/pulses?limit=500{cursor}");
        let (_, page) = server.api(client, reqwest::Method::GET, &path, None).await;
        for pulse in page["pulses"].as_array().unwrap() {
            builds.push(pulse["refs"]["build_id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return builds,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_no_answered_delivery_and_doubles_none() {
    const DELIVERIES: usize = 4000;
    const SENDERS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let server = ServerProcess::start(Path::new(BINARY), &data, &[]);
    let secret = server
        .integration(&client, "acme", &["example-app", "billing-api"])
        .await;
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((0..DELIVERIES).map(numbered_build).collect());

    // Senders take deliveries in order and note which ones were answered 200; the server is
    // killed once a quarter of them have been.
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (client, base, secret) = (client.clone(), server.base.clone(), secret.clone());
        let (bodies, next, answered) = (bodies.clone(), next.clone(), answered.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= DELIVERIES {
                    return;
                }
                match deliver(&client, &base, &secret, &bodies[n]).await {
                    Ok((StatusCode::OK, answer)) => {
                        assert_eq!(answer["status"], "stored", "delivery {n}: {answer}");
                        answered.lock().unwrap().insert(n);
                    }
                    Ok((status, answer)) => panic!("delivery {n}: {status} {answer}"),
                    // The server is gone: the rest go unanswered, as they would to Heroku.
                    Err(_) => return,
                }
            }
        }));
    }
    while answered.lock().unwrap().len() < DELIVERIES / 4 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let pid = server.pid();
    server.kill();
    for sender in senders {
        sender.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() >= DELIVERIES / 4);
    assert!(
        answered.len() < DELIVERIES,
        "the server (pid {pid}) was killed before every delivery was answered"
    );

    // Every delivery answered 200 is on disk after the restart.
    let server = ServerProcess::start(Path::new(BINARY), &data, &[]);
    let stored: BTreeSet<String> = stored_builds(&client, &server).await.into_iter().collect();
    let missing: Vec<usize> = answered
        .iter()
        .copied()
        .filter(|n| !stored.contains(&numbered_build_id(*n)))
        .collect();
    assert!(missing.is_empty(), "answered 200 but lost: {missing:?}");

    // Heroku redelivers what it never got an answer for, and may redeliver the rest: the
    // answered ones are duplicates, the others are stored now (or were, just before the kill).
    let redeliveries = futures_util::stream::iter(0..DELIVERIES)
        .map(|n| {
            let (client, base, secret, bodies) = (&client, &server.base, &secret, &bodies);
            async move { (n, deliver(client, base, secret, &bodies[n]).await.unwrap()) }
        })
        .buffer_unordered(SENDERS)
        .collect::<Vec<_>>()
        .await;
    for (n, (status, answer)) in redeliveries {
        assert_eq!(status, StatusCode::OK, "redelivery {n}: {answer}");
        if answered.contains(&n) {
            assert_eq!(answer["status"], "duplicate", "redelivery {n}");
        } else {
            assert!(
                answer["status"] == "stored" || answer["status"] == "duplicate",
                "redelivery {n}: {answer}"
            );
        }
    }
    let builds = stored_builds(&client, &server).await;
    let distinct: BTreeSet<&String> = builds.iter().collect();
    assert_eq!(builds.len(), DELIVERIES, "one pulse per delivery");
    assert_eq!(distinct.len(), DELIVERIES, "no pulse doubled");
    server.stop();
}
