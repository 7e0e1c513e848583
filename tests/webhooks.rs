//! Deliveries over HTTP into the real host running the real Heroku component.

use pulse_e2e::{TestHost, fixture, fixture_with, sign};
use reqwest::StatusCode;
use serde_json::{Value, json};

const DEPLOYED: &str = "release-update-deployed.json";

#[tokio::test]
async fn signed_release_appears_in_pulses_linked_to_its_service() {
    let host = TestHost::start().await;
    let secret = host.integration("acme", &["billing-api"]).await;
    host.service("billing", "billing-api").await;

    let (status, body) = host.deliver("acme", &secret, &fixture(DEPLOYED)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "stored");
    let id = body["pulse_ids"][0].as_i64().unwrap();

    let page = host.pulses("").await;
    assert_eq!(
        page["pulses"],
        json!([{
            "id": id,
            "integration": "acme",
            "summary": "[Heroku][Release] Deploy 69eec518",
            "source": "heroku",
            "started_at": "2024-03-09T09:59:41Z",
            "ended_at": "2024-03-09T10:00:31.102Z",
            "labels": {
                "app": "billing-api",
                "kind": "release",
                "stack": "heroku-24",
                "status": "succeeded",
                "user": "dana@example.com"
            },
            "refs": {
                "event_id": "b0000000-0000-4000-8000-000000000003",
                "release_id": "d1e2f3a4-0000-4000-8000-000000000042",
                "release_version": "v42",
                "slug_id": "3c2b1a09-0000-4000-8000-0000000000aa"
            },
            "services": ["billing"]
        }])
    );
    assert_eq!(page["next_cursor"], Value::Null);

    let (status, raw) = host
        .api(reqwest::Method::GET, &format!("/pulses/{id}/raw"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        raw,
        serde_json::from_slice::<Value>(&fixture(DEPLOYED)).unwrap()
    );
}

#[tokio::test]
async fn each_outcome_has_its_status_code() {
    let host = TestHost::start().await;
    let secret = host.integration("acme", &["billing-api"]).await;
    let body = fixture(DEPLOYED);

    // Missing signature.
    let (status, answer) = host.post_webhook("acme", body.clone(), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer["error"]["code"], "unauthenticated");

    // Signed with another secret.
    let (status, _) = host.deliver("acme", "not-the-secret", &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The right MAC over a re-serialized copy of the body.
    let value: Value = serde_json::from_slice(&body).unwrap();
    let reserialized = serde_json::to_vec(&value).unwrap();
    let signature = sign(&secret, &body);
    let header = [("Heroku-Webhook-Hmac-SHA256", signature.as_str())];
    let (status, _) = host.post_webhook("acme", reserialized, &header).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Signed, but not an event.
    let (status, answer) = host.deliver("acme", &secret, b"[1, 2, 3]").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"]["code"], "malformed");
    assert_eq!(answer["error"]["message"], "the body is not a JSON object");

    let (status, answer) = host
        .deliver("acme", &secret, br#"{"resource":"release"}"#)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"]["message"], "the event has no `action`");

    // Above 1 MiB, with and without a declared length.
    let huge = vec![b' '; (1 << 20) + 1];
    let (status, answer) = host.deliver("acme", &secret, &huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["error"]["code"], "too_large");
    let stream = futures_body(huge);
    let response = host
        .client
        .post(format!("{}/webhooks/heroku/acme", host.base))
        .body(stream)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Exactly 1 MiB is accepted (and is malformed, being spaces).
    let (status, _) = host.deliver("acme", &secret, &vec![b' '; 1 << 20]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Unknown integration.
    let (status, answer) = host.deliver("nobody", &secret, &body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        answer["error"]["message"],
        "no integration named \"nobody\""
    );

    // Dyno events are acknowledged and ignored.
    let (status, answer) = host
        .deliver("acme", &secret, &fixture("dyno-lifecycle-down.json"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"status": "ignored", "reason": "dyno events are not converted"})
    );

    // Nothing above stored a pulse.
    assert_eq!(host.summaries("").await, Vec::<String>::new());

    // And a good delivery still goes through.
    let (status, answer) = host.deliver("acme", &secret, &body).await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!("stored"))
    );
}

/// A body sent in chunks, with no Content-Length.
fn futures_body(bytes: Vec<u8>) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes
        .chunks(64 << 10)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

/// A redelivery: the same event, sent again with new delivery and attempt ids.
fn redelivered(name: &str) -> Vec<u8> {
    fixture_with(name, |event| {
        event["webhook_metadata"]["delivery"]["id"] = json!("5a1e2b3c-0000-4000-8000-0000000000ff");
        event["webhook_metadata"]["attempt"]["id"] = json!("9c8b7a6d-0000-4000-8000-0000000000ff");
    })
}

#[tokio::test]
async fn release_event_sequence_makes_one_pulse() {
    let host = TestHost::start().await;
    let secret = host.integration("acme", &["billing-api"]).await;

    let sequence = [
        (
            fixture("release-create-pending.json"),
            json!({"status": "ignored", "reason": "release v42 is not current"}),
        ),
        (
            fixture("release-update-intermediate.json"),
            json!({"status": "ignored", "reason": "release v42 is not current"}),
        ),
        (fixture(DEPLOYED), json!("stored")),
        (fixture(DEPLOYED), json!({"status": "duplicate"})),
        (redelivered(DEPLOYED), json!({"status": "duplicate"})),
    ];
    for (body, expected) in sequence {
        let (status, answer) = host.deliver("acme", &secret, &body).await;
        assert_eq!(status, StatusCode::OK);
        if expected.is_string() {
            assert_eq!(answer["status"], expected);
        } else {
            assert_eq!(answer, expected);
        }
    }
    assert_eq!(
        host.summaries("").await,
        ["[Heroku][Release] Deploy 69eec518"]
    );
}

#[tokio::test]
async fn concurrent_copies_make_one_pulse() {
    let host = TestHost::start().await;
    let secret = host.integration("acme", &["billing-api"]).await;
    let copies: Vec<Vec<u8>> = (0..12)
        .map(|i| {
            if i % 2 == 0 {
                fixture(DEPLOYED)
            } else {
                redelivered(DEPLOYED)
            }
        })
        .collect();

    let answers = futures_util::future::join_all(
        copies
            .iter()
            .map(|body| host.deliver("acme", &secret, body)),
    )
    .await;

    let mut stored = 0;
    for (status, answer) in &answers {
        assert_eq!(*status, StatusCode::OK, "{answer}");
        match answer["status"].as_str() {
            Some("stored") => stored += 1,
            Some("duplicate") => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(stored, 1);
    assert_eq!(host.summaries("").await.len(), 1);
}

#[tokio::test]
async fn builds_make_one_pulse_per_status() {
    let host = TestHost::start().await;
    let secret = host.integration("acme", &["billing-api"]).await;
    for name in [
        "build-create-pending.json",
        "build-update-succeeded.json",
        "build-update-succeeded.json",
    ] {
        host.deliver("acme", &secret, &fixture(name)).await;
    }
    assert_eq!(
        host.summaries("").await,
        [
            "[Heroku][Build] billing-api succeeded",
            "[Heroku][Build] billing-api pending"
        ]
    );
}

#[tokio::test]
async fn unlisted_apps_and_empty_lists_are_ignored() {
    let host = TestHost::start().await;
    let secret = host.integration("acme", &["payments"]).await;
    let (status, answer) = host.deliver("acme", &secret, &fixture(DEPLOYED)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"status": "ignored", "reason": "app billing-api is not monitored by integration acme"})
    );

    let empty = host.integration("quiet", &[]).await;
    let (status, answer) = host.deliver("quiet", &empty, &fixture(DEPLOYED)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"status": "ignored", "reason": "integration quiet monitors no apps"})
    );

    assert_eq!(host.summaries("").await, Vec::<String>::new());
}

#[tokio::test]
async fn integrations_do_not_share_secrets_or_pulses() {
    let host = TestHost::start().await;
    let first = host.integration("first", &["billing-api"]).await;
    let second = host.integration("second", &["billing-api"]).await;
    assert_ne!(first, second);

    // The first integration's secret does not open the second's endpoint.
    let (status, _) = host.deliver("second", &first, &fixture(DEPLOYED)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The same event for two integrations is two pulses: dedupe is per integration.
    let (_, a) = host.deliver("first", &first, &fixture(DEPLOYED)).await;
    let (_, b) = host.deliver("second", &second, &fixture(DEPLOYED)).await;
    assert_eq!(
        (&a["status"], &b["status"]),
        (&json!("stored"), &json!("stored"))
    );
    let page = host.pulses("").await;
    let integrations: Vec<&str> = page["pulses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["integration"].as_str().unwrap())
        .collect();
    assert_eq!(integrations, ["second", "first"]);
}

#[tokio::test]
async fn linking_is_case_sensitive_and_follows_corrections() {
    let host = TestHost::start().await;
    let secret = host.integration("acme", &["billing-api"]).await;
    host.service("billing", "Billing-API").await;
    host.service("other", "payments").await;
    host.deliver("acme", &secret, &fixture("build-create-pending.json"))
        .await;
    host.deliver("acme", &secret, &fixture(DEPLOYED)).await;

    let page = host.pulses("").await;
    for pulse in page["pulses"].as_array().unwrap() {
        assert_eq!(pulse["services"], json!([]), "{pulse}");
    }
    assert_eq!(host.pulses("service=billing").await["pulses"], json!([]));

    // Correcting the app name links the earlier pulses too.
    host.service("billing", "billing-api").await;
    assert_eq!(
        host.summaries("service=billing").await,
        [
            "[Heroku][Release] Deploy 69eec518",
            "[Heroku][Build] billing-api pending"
        ]
    );
    assert_eq!(host.pulses("service=other").await["pulses"], json!([]));

    // A second service on the same app sees them as well; deleting it unlinks it.
    host.service("billing-eu", "billing-api").await;
    let page = host.pulses("limit=1").await;
    assert_eq!(
        page["pulses"][0]["services"],
        json!(["billing", "billing-eu"])
    );
    let (status, _) = host
        .api(reqwest::Method::DELETE, "/services/billing-eu", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let page = host.pulses("limit=1").await;
    assert_eq!(page["pulses"][0]["services"], json!(["billing"]));
}

#[tokio::test]
async fn pulses_page_newest_first_with_a_cursor() {
    let host = TestHost::start().await;
    let secret = host.integration("acme", &["billing-api"]).await;
    for name in [
        "build-create-pending.json",
        "build-update-succeeded.json",
        "build-update-failed.json",
        DEPLOYED,
        "release-update-failed.json",
    ] {
        let (status, answer) = host.deliver("acme", &secret, &fixture(name)).await;
        assert_eq!(answer["status"], "stored", "{name}: {status} {answer}");
    }

    let mut seen = Vec::new();
    let mut ids = Vec::new();
    let mut query = "limit=2".to_string();
    loop {
        let page = host.pulses(&query).await;
        for pulse in page["pulses"].as_array().unwrap() {
            seen.push(pulse["started_at"].as_str().unwrap().to_string());
            ids.push(pulse["id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=2&cursor={cursor}"),
            None => break,
        }
    }
    // Ties in start time are broken by id, newest first.
    assert_eq!(ids, [5, 4, 3, 2, 1]);
    assert_eq!(
        seen,
        [
            "2024-03-09T09:59:41Z",
            "2024-03-09T09:59:41Z",
            "2024-03-09T09:58:02.120394Z",
            "2024-03-09T09:58:02.120394Z",
            "2024-03-09T09:58:02.120394Z",
        ]
    );
}
