//! The management API and the CLI: integrations, services, pulses and the admin token.

use pulse_e2e::{Options, TestHost, fixture};
use pulse_host::cli::{self, Cli};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn api_refuses_a_missing_or_wrong_admin_token() {
    let host = TestHost::start().await;
    for path in ["/api/pulses", "/api/services", "/api/integrations/acme"] {
        let url = format!("{}{path}", host.base);
        let response = host.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let (_, body) = pulse_e2e::read(response).await;
        assert_eq!(body["error"]["code"], "unauthorized");

        for wrong in ["Bearer nope", "Basic abc", "Bearer", &host.token] {
            let response = host
                .client
                .get(&url)
                .header("Authorization", wrong)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{path} with {wrong:?}"
            );
        }
    }
    // Writes are refused too, and change nothing.
    let response = host
        .client
        .put(format!("{}/api/integrations/acme", host.base))
        .json(&json!({"apps": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = host.api(Method::GET, "/integrations/acme", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn configured_admin_token_is_used() {
    let options = Options {
        admin_token: Some("configured-token".into()),
        ..Options::default()
    };
    let host = TestHost::start_with(options).await;
    assert_eq!(host.token, "configured-token");
    let (status, _) = host.api(Method::GET, "/services", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!host.data_dir().join("admin-token").exists());
}

#[tokio::test]
async fn secret_is_shown_on_creation_only() {
    let host = TestHost::start().await;
    let (status, created) = host
        .put_integration("acme", &["billing-api", "billing-api"])
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        created["apps"],
        json!(["billing-api"]),
        "duplicates dropped"
    );
    assert_eq!(
        created["webhook_url"],
        format!("{}/webhooks/heroku/acme", host.base)
    );
    assert_eq!(created["webhook_secret"].as_str().unwrap().len(), 43);

    let (status, updated) = host
        .put_integration("acme", &["billing-api", "payments"])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["apps"], json!(["billing-api", "payments"]));
    assert_eq!(updated.get("webhook_secret"), None);

    let (status, shown) = host.api(Method::GET, "/integrations/acme", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown.get("webhook_secret"), None);
    assert_eq!(shown["apps"], json!(["billing-api", "payments"]));

    // Updating the apps keeps the secret: deliveries signed with it still verify.
    let secret = created["webhook_secret"].as_str().unwrap();
    let (status, answer) = host
        .deliver("acme", secret, &fixture("release-update-deployed.json"))
        .await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!("stored"))
    );

    let (status, list) = host.api(Method::GET, "/integrations", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["integrations"].as_array().unwrap().len(), 1);
    assert_eq!(list["integrations"][0].get("webhook_secret"), None);
}

#[tokio::test]
async fn bad_management_input_gets_a_clear_error_and_changes_nothing() {
    let host = TestHost::start().await;
    let cases: Vec<(Method, &str, Value, StatusCode, &str)> = vec![
        (
            Method::PUT,
            "/integrations/acme",
            json!({"apps": ["Billing"]}),
            StatusCode::BAD_REQUEST,
            "\"Billing\" is not a Heroku app name (^[a-z][a-z0-9-]{1,28}[a-z0-9]$) or an app id (a UUID)",
        ),
        (
            Method::PUT,
            "/integrations/acme",
            json!({"apps": "billing-api"}),
            StatusCode::BAD_REQUEST,
            "the body is not valid: invalid type: string \"billing-api\", expected a sequence at line 1 column 21",
        ),
        (
            Method::PUT,
            "/integrations/acme",
            json!({"app": ["billing-api"]}),
            StatusCode::BAD_REQUEST,
            "the body is not valid: unknown field `app`, expected `apps` at line 1 column 6",
        ),
        (
            Method::PUT,
            "/integrations/..%2Fetc",
            json!({"apps": []}),
            StatusCode::BAD_REQUEST,
            "integration name \"../etc\" is not valid: use 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit",
        ),
        (
            Method::PUT,
            "/integrations/a%27b",
            json!({"apps": []}),
            StatusCode::BAD_REQUEST,
            "integration name \"a'b\" is not valid: use 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit",
        ),
        (
            Method::PUT,
            "/services/billing",
            json!({"heroku_app_name": ""}),
            StatusCode::BAD_REQUEST,
            "heroku_app_name must be 1 to 100 printable characters, without surrounding spaces",
        ),
        (
            Method::GET,
            "/pulses?limit=0",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "limit must be 1 to 500",
        ),
        (
            Method::GET,
            "/pulses?cursor=drop%20table",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "cursor is not one this API returned",
        ),
        (
            Method::GET,
            "/pulses?service=nope",
            Value::Null,
            StatusCode::NOT_FOUND,
            "no service named \"nope\"",
        ),
        (
            Method::DELETE,
            "/services/nope",
            Value::Null,
            StatusCode::NOT_FOUND,
            "no service named \"nope\"",
        ),
    ];
    for (method, path, body, expected, message) in cases {
        let body = (!body.is_null()).then_some(body);
        let (status, answer) = host.api(method.clone(), path, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["message"], message, "{method} {path}");
    }

    // A body that is not JSON by its Content-Type.
    let response = host
        .client
        .put(format!("{}/api/services/billing", host.base))
        .bearer_auth(&host.token)
        .header("Content-Type", "text/plain")
        .body(r#"{"heroku_app_name": "billing-api"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A body above the API's 64 KiB limit.
    let huge = json!({"heroku_app_name": "x".repeat(100 << 10)});
    let (status, _) = host.api(Method::PUT, "/services/billing", Some(huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let (_, integrations) = host.api(Method::GET, "/integrations", None).await;
    assert_eq!(integrations, json!({"integrations": []}));
    let (_, services) = host.api(Method::GET, "/services", None).await;
    assert_eq!(services, json!({"services": []}));
}

#[tokio::test]
async fn services_are_created_listed_updated_and_deleted() {
    let host = TestHost::start().await;
    let body = json!({"heroku_app_name": "billing-api"});
    let (status, created) = host
        .api(Method::PUT, "/services/billing", Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        created,
        json!({"name": "billing", "heroku_app_name": "billing-api"})
    );
    let (status, _) = host.api(Method::PUT, "/services/billing", Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    host.service("auth", "auth-api").await;

    let (_, list) = host.api(Method::GET, "/services", None).await;
    assert_eq!(
        list,
        json!({"services": [
            {"name": "auth", "heroku_app_name": "auth-api"},
            {"name": "billing", "heroku_app_name": "billing-api"}
        ]})
    );
    let (status, body) = host.api(Method::DELETE, "/services/auth", None).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (_, list) = host.api(Method::GET, "/services", None).await;
    assert_eq!(list["services"].as_array().unwrap().len(), 1);
}

/// Runs a CLI command on `data_dir` and returns what it printed.
async fn cli_output(data_dir: &std::path::Path, args: &[&str]) -> String {
    use clap::Parser;
    let mut argv = vec!["pulse-host", "--data-dir", data_dir.to_str().unwrap()];
    argv.extend_from_slice(args);
    let parsed = Cli::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    cli::run(parsed, &mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn cli_manages_what_the_server_serves() {
    let host = TestHost::start().await;
    let dir = host.data_dir();

    let created = cli_output(
        &dir,
        &[
            "--public-url",
            "https://pulse.example.com",
            "integration",
            "set",
            "acme",
            "billing-api",
        ],
    )
    .await;
    let secret = created
        .lines()
        .find_map(|line| line.trim().strip_prefix("secret:"))
        .expect("the secret is printed on creation")
        .trim()
        .to_string();
    assert!(
        created.starts_with("Created integration acme\n"),
        "{created}"
    );
    assert!(created.contains("  webhook URL: https://pulse.example.com/webhooks/heroku/acme\n"));
    assert!(created.contains(&format!(
        "heroku webhooks:add -i api:build,api:release -l sync -u https://pulse.example.com/webhooks/heroku/acme -s {secret} -a billing-api"
    )));

    let updated = cli_output(
        &dir,
        &["integration", "set", "acme", "billing-api", "payments"],
    )
    .await;
    assert!(
        updated.starts_with("Updated integration acme\n"),
        "{updated}"
    );
    assert!(!updated.contains(&secret), "the secret is not shown again");

    let service = cli_output(
        &dir,
        &["service", "set", "billing", "--heroku-app", "billing-api"],
    )
    .await;
    assert_eq!(
        service,
        "Created service billing (Heroku app billing-api)\n"
    );
    let services = cli_output(&dir, &["service", "list"]).await;
    assert_eq!(services, "SERVICE  HEROKU APP\nbilling  billing-api\n");

    // The running server sees what the CLI wrote.
    let (status, _) = host
        .deliver("acme", &secret, &fixture("release-update-deployed.json"))
        .await;
    assert_eq!(status, StatusCode::OK);

    let table = cli_output(&dir, &["pulses"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[1].contains("2024-03-09T09:59:41Z"), "{table}");
    assert!(lines[1].contains("billing"), "{table}");
    assert!(
        lines[1].ends_with("[Heroku][Release] Deploy 69eec518"),
        "{table}"
    );

    let json_out = cli_output(&dir, &["pulses", "--json", "--service", "billing"]).await;
    let page: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(
        page["pulses"][0]["summary"],
        "[Heroku][Release] Deploy 69eec518"
    );
    assert_eq!(page["pulses"][0]["services"], json!(["billing"]));
}

#[tokio::test]
async fn app_ids_are_kept_in_the_lowercase_heroku_sends() {
    let host = TestHost::start().await;
    let (status, body) = host
        .put_integration("acme", &["4A4D3B52-1AD1-4F3C-9A8B-2F0C4B9D7E11"])
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        body["apps"],
        json!(["4a4d3b52-1ad1-4f3c-9a8b-2f0c4b9d7e11"])
    );
    // The fixture's app has that id, so its release is in scope.
    let secret = body["webhook_secret"].as_str().unwrap();
    let (_, answer) = host
        .deliver("acme", secret, &fixture("release-update-deployed.json"))
        .await;
    assert_eq!(answer["status"], "stored");
}

#[tokio::test]
async fn every_error_is_json_even_for_routing_and_headers() {
    let host = TestHost::start().await;
    let cases = [
        (
            Method::GET,
            "/webhooks/heroku/acme",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::POST,
            "/api/services/billing",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::POST,
            "/webhooks/heroku/%FF",
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (Method::GET, "/nowhere", StatusCode::NOT_FOUND, "not_found"),
    ];
    for (method, path, expected, code) in cases {
        let response = host
            .client
            .request(method.clone(), format!("{}{path}", host.base))
            .bearer_auth(&host.token)
            .send()
            .await
            .unwrap();
        let (status, body) = pulse_e2e::read(response).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (expected, &json!(code)),
            "{method} {path}"
        );
    }

    let (status, body) = host.api(Method::GET, "/pulses?limit=-1", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["message"], "limit must be 1 to 500");

    // Two Authorization headers are refused, whichever comes first.
    for pair in [["Bearer nope", "Bearer X"], ["Bearer X", "Bearer nope"]] {
        let good = format!("Bearer {}", host.token);
        let headers: Vec<String> = pair
            .iter()
            .map(|h| {
                if *h == "Bearer X" {
                    good.clone()
                } else {
                    h.to_string()
                }
            })
            .collect();
        let response = host
            .client
            .get(format!("{}/api/services", host.base))
            .header("Authorization", &headers[0])
            .header("Authorization", &headers[1])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}

/// Sends raw bytes on a new connection and returns what the server answers before it closes
/// the connection (or after `wait`).
async fn raw_exchange(
    host: &TestHost,
    request: &[u8],
    wait: std::time::Duration,
) -> (String, std::time::Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = host.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_declared_oversized_api_body_is_refused_before_it_arrives() {
    let host = TestHost::start().await;
    let request = format!(
        "PUT /api/integrations/acme HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{{",
        host.token
    );
    let (answer, _) =
        raw_exchange(&host, request.as_bytes(), std::time::Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let host = TestHost::start().await;
    let partial = b"POST /webhooks/heroku/acme HTTP/1.1\r\nHost: x\r\n";
    let (answer, waited) = raw_exchange(&host, partial, std::time::Duration::from_secs(30)).await;
    assert!(
        waited < std::time::Duration::from_secs(20),
        "closed after {waited:?}"
    );
    assert!(!answer.contains("200 OK"), "{answer}");
    // The server is still serving.
    let (status, _) = host.api(Method::GET, "/services", None).await;
    assert_eq!(status, StatusCode::OK);
}
