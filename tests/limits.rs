//! Limits that hold while things go wrong: busy plugin slots, memory given back after
//! faults, request headers past the server's bounds and bodies that stall.

use std::time::Duration;

use pulse_e2e::{FAULTY_PLUGIN, Options, TestHost};
use pulse_host::sandbox::Limits;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn faulty_host(limits: Limits) -> TestHost {
    let host = TestHost::start_with(Options {
        plugin: Some(FAULTY_PLUGIN.into()),
        limits: Some(limits),
        ..Options::default()
    })
    .await;
    host.integration("acme", &[]).await;
    host
}

/// Posts a good delivery (the faulty plugin stores one pulse per distinct body) and checks
/// that it was stored.
async fn deliver_good(host: &TestHost, body: &str) {
    let (status, answer) = host
        .post_webhook("acme", body.as_bytes().to_vec(), &[])
        .await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!("stored")),
        "{body}: {answer}"
    );
}

// On one thread, shared by the server and the test: the looping guests yield it at every
// epoch tick, so the third delivery is answered while they run.
#[tokio::test]
async fn busy_plugin_slots_answer_503_with_retry_after() {
    let limits = Limits {
        concurrency: 2,
        deadline: Duration::from_secs(2),
        ..Limits::default()
    };
    let host = faulty_host(limits).await;

    let loops = futures_util::future::join_all((0..2).map(|i| {
        let body = format!("loop {i}").into_bytes();
        host.post_webhook("acme", body, &[("x-fault", "loop")])
    }));
    let third = async {
        // Each loop holds its slot for the whole 2 s deadline: halfway through, both are taken.
        tokio::time::sleep(Duration::from_secs(1)).await;
        host.client
            .post(format!("{}/webhooks/heroku/acme", host.base))
            .body("third")
            .send()
            .await
            .unwrap()
    };
    let (loops, third) = tokio::join!(loops, third);

    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(third.headers()["retry-after"], "1");
    let (_, answer) = pulse_e2e::read(third).await;
    assert_eq!(
        answer,
        json!({"error": {
            "code": "busy",
            "message": "all 2 plugin slots are busy; retry shortly"
        }})
    );
    for (status, answer) in loops {
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
        assert_eq!(answer["error"]["code"], "plugin_failed");
    }

    // The slots are free again.
    deliver_good(&host, "after the loops").await;
    assert_eq!(host.summaries("").await, ["faulty plugin: after the loops"]);
}

/// This process's resident set size, in bytes: the server runs inside the test.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

#[tokio::test]
async fn memory_returns_to_baseline_after_faults() {
    const FAULTS: usize = 20;
    const MARGIN: u64 = 48 << 20;
    const COOL_DOWN: usize = 20;
    let host = faulty_host(Limits::default()).await;
    for i in 0..5 {
        deliver_good(&host, &format!("warm-up {i}")).await;
    }
    let baseline = resident_bytes();

    // Each fault grows its instance's memory to the 64 MiB cap before it is stopped.
    for i in 0..FAULTS {
        let (status, answer) = host
            .post_webhook("acme", b"hoard".to_vec(), &[("x-fault", "memory")])
            .await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "fault {i}: {answer}"
        );
        assert_eq!(answer["error"]["code"], "plugin_failed", "fault {i}");
        deliver_good(&host, &format!("after fault {i}")).await;
    }
    // The pool gives returned slots back to the kernel in batches, so a few more deliveries
    // make sure the last faults' slots have been through one.
    for i in 0..COOL_DOWN {
        deliver_good(&host, &format!("cool-down {i}")).await;
    }

    let after = resident_bytes();
    assert!(
        after <= baseline + MARGIN,
        "resident memory grew from {} MiB to {} MiB over {FAULTS} faults",
        baseline >> 20,
        after >> 20
    );
    let stored = host.pulses("limit=500").await["pulses"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(stored, 5 + FAULTS + COOL_DOWN);
}

/// Sends `request` on a new connection and returns what the server answered before it
/// closed the connection.
async fn raw_exchange(host: &TestHost, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = host.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it has read everything; what it said counts.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    // Closing with part of the request unread makes the server's kernel reset the
    // connection; the answer read before the reset is kept.
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A `GET /api/services` with the admin token and `extra` header lines.
fn services_request(host: &TestHost, extra: &str) -> Vec<u8> {
    format!(
        "GET /api/services HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\n{extra}\r\n",
        host.token
    )
    .into_bytes()
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let host = TestHost::start().await;
    // hyper's own answer to a request head past its limits: no body, not a JSON error.
    let too_large = "HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
                     content-length: 0\r\n";

    // More than hyper's 100 headers.
    let many: String = (0..200).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
    let answer = raw_exchange(&host, &services_request(&host, &many)).await;
    assert!(answer.starts_with(too_large), "{answer}");

    // A head above 64 KiB, in one header or in several: hyper refuses it while reading when
    // it spans reads, and the server's own check when it arrived whole, with a JSON error.
    for head in [
        format!("X-Padding: {}\r\n", "p".repeat(100 << 10)),
        (0..20)
            .map(|i| format!("X-Padding-{i}: {}\r\n", "p".repeat(4 << 10)))
            .collect(),
    ] {
        let answer = raw_exchange(&host, &services_request(&host, &head)).await;
        let ours = answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n")
            && answer.contains(r#"{"error":{"code":"headers_too_large","#);
        assert!(answer.starts_with(too_large) || ours, "{answer}");
    }

    // A head just under it is served like any other.
    let padding = format!("X-Padding: {}\r\n", "p".repeat(48 << 10));
    let answer = raw_exchange(&host, &services_request(&host, &padding)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n{\"services\":[]}"), "{answer}");

    // The server still serves.
    let (status, services) = host.api(Method::GET, "/services", None).await;
    assert_eq!(
        (status, services),
        (StatusCode::OK, json!({"services": []}))
    );
}

#[tokio::test]
async fn a_body_that_stalls_is_cut_off_on_every_endpoint_that_reads_one() {
    let host = TestHost::start_with(Options {
        timeouts: Some(pulse_host::Timeouts {
            body_pause: Duration::from_secs(1),
            ..pulse_host::Timeouts::default()
        }),
        ..Options::default()
    })
    .await;
    host.integration("acme", &[]).await;

    // Each request promises 100 bytes of body and sends 10, then nothing.
    let requests = [
        format!(
            "POST /webhooks/heroku/acme HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\": 1,"
        ),
        format!(
            "PUT /api/services/billing HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"heroku_a",
            host.token
        ),
    ];
    for request in requests {
        let answer = raw_exchange(&host, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{request}\n{answer}"
        );
        assert!(
            answer.ends_with(
                r#"{"error":{"code":"timed_out","message":"the body arrived too slowly"}}"#
            ),
            "{answer}"
        );
    }

    // Nothing was stored, and the server still serves.
    assert_eq!(host.pulses("").await["pulses"], json!([]));
    let (status, services) = host.api(Method::GET, "/services", None).await;
    assert_eq!(
        (status, services),
        (StatusCode::OK, json!({"services": []}))
    );
}
