//! Hostile requests on every endpoint: each one gets its documented status and a JSON error
//! (the few that cannot are pinned as limitations), none of them stores or creates anything,
//! and the server goes on serving.

use pulse_e2e::fake_heroku::FakeHeroku;
use pulse_e2e::{Options, TestHost, fixture, fixture_with, sign};
use reqwest::StatusCode;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};

const DEPLOYED: &str = "release-update-deployed.json";

/// A SQL fragment that must stay a plain string everywhere.
const SQL: &str = "x'; DROP TABLE pulses;--";

/// [`SQL`] as it goes in a path or a query.
const SQL_ENCODED: &str = "x%27%3B%20DROP%20TABLE%20pulses%3B--";

/// One request, sent through reqwest unless it is `raw`.
struct Request {
    method: &'static str,
    /// The request target: path and query, exactly as it goes on the wire when `raw`.
    target: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// Sent as bytes on a TCP connection, for what reqwest would normalize or refuse.
    raw: bool,
}

impl Request {
    /// A request without the admin token.
    fn anonymous(method: &'static str, target: impl Into<Vec<u8>>) -> Request {
        Request {
            method,
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
            raw: false,
        }
    }

    fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Request {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// A JSON body, declared as such.
    fn json(self, body: impl Into<Vec<u8>>) -> Request {
        self.header("Content-Type", "application/json").body(body)
    }

    fn raw(mut self) -> Request {
        self.raw = true;
        self
    }
}

/// What a case expects besides its status.
enum Expected {
    /// `{"error": {"code", "message"}}` with this code, and a message starting with `message`
    /// when given.
    Json {
        code: &'static str,
        message: Option<String>,
    },
    /// Answered before a handler of ours runs (hyper's parser) or as a page for a browser, so
    /// not JSON, as the README says.
    NotJson {
        content_type: Option<&'static str>,
        body: &'static str,
    },
}

/// What hyper answers to a request it cannot parse: a 400 with no body.
const HYPER_REFUSED: Expected = Expected::NotJson {
    content_type: None,
    body: "",
};

struct Case {
    name: String,
    request: Request,
    status: StatusCode,
    expected: Expected,
}

/// The cases, in the order they are sent.
#[derive(Default)]
struct Table {
    cases: Vec<Case>,
}

impl Table {
    /// A case answered with a JSON error whose code is `code`.
    fn add(&mut self, name: &str, request: Request, status: StatusCode, code: &'static str) {
        let expected = Expected::Json {
            code,
            message: None,
        };
        self.push(name, request, status, expected);
    }

    fn push(&mut self, name: &str, request: Request, status: StatusCode, expected: Expected) {
        self.cases.push(Case {
            name: name.to_string(),
            request,
            status,
            expected,
        });
    }
}

/// An answer, however it was received.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    body: Vec<u8>,
}

async fn send(host: &TestHost, request: &Request) -> Answer {
    if request.raw {
        return send_raw(host, request).await;
    }
    let target = std::str::from_utf8(&request.target).expect("a reqwest target is text");
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap();
    let mut builder = host
        .client
        .request(method, format!("{}{target}", host.base))
        .body(request.body.clone());
    for (name, value) in &request.headers {
        // `header` appends, so a repeated header goes out twice.
        builder = builder.header(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let response = builder.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_string());
    let body = response.bytes().await.unwrap().to_vec();
    Answer {
        status,
        content_type,
        body,
    }
}

/// Sends the request as bytes on a new connection and reads the answer until the server
/// closes it.
async fn send_raw(host: &TestHost, request: &Request) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut bytes = Vec::new();
    bytes.extend_from_slice(request.method.as_bytes());
    bytes.push(b' ');
    bytes.extend_from_slice(&request.target);
    bytes.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in &request.headers {
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("Content-Length: {}\r\n\r\n", request.body.len()).as_bytes());
    bytes.extend_from_slice(&request.body);

    let addr = host.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the server answers and closes the connection")
    .unwrap();
    parse_answer(&answer)
}

/// Splits a raw HTTP/1.1 answer with a `Content-Length` (or none) into its parts.
fn parse_answer(answer: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let mut lines = head.lines();
    let code: u16 = lines
        .next()
        .and_then(|line| line.strip_prefix("HTTP/1.1 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let mut content_type = None;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            panic!("a chunked answer: {text:?}");
        }
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_string());
        }
    }
    Answer {
        status: StatusCode::from_u16(code).unwrap(),
        content_type,
        body: body.as_bytes().to_vec(),
    }
}

/// What is wrong with `answer` for `case`, if anything.
fn check(case: &Case, answer: &Answer) -> Option<String> {
    let text = String::from_utf8_lossy(&answer.body);
    if answer.status != case.status {
        return Some(format!(
            "{} ({:?}): {text}",
            answer.status, answer.content_type
        ));
    }
    let (code, message) = match &case.expected {
        Expected::Json { code, message } => (*code, message),
        Expected::NotJson { content_type, body } => {
            let same = answer.content_type.as_deref() == *content_type && text == *body;
            return (!same).then(|| format!("{:?}: {text}", answer.content_type));
        }
    };
    if answer.content_type.as_deref() != Some("application/json") {
        return Some(format!("content type {:?}: {text}", answer.content_type));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&answer.body) else {
        return Some(format!("not JSON: {text}"));
    };
    let error = &body["error"];
    let shaped = body.as_object().is_some_and(|object| object.len() == 1)
        && error.as_object().is_some_and(|object| object.len() == 2)
        && error["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty());
    if !shaped {
        return Some(format!(
            "not {{\"error\": {{\"code\", \"message\"}}}}: {body}"
        ));
    }
    if error["code"] != code {
        return Some(format!("code {}: {body}", error["code"]));
    }
    let said = error["message"].as_str().unwrap();
    match message {
        Some(start) if !said.starts_with(start.as_str()) => Some(format!("message {said:?}")),
        _ => None,
    }
}

/// Arrays nested `depth` deep.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// The fixture with `field` (a dotted path) replaced by `value`.
fn release_with(field: &str, value: Value) -> Vec<u8> {
    fixture_with(DEPLOYED, |event| {
        let mut target = event;
        let parts: Vec<&str> = field.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            target = &mut target[*part];
        }
        assert!(
            target.get(parts[parts.len() - 1]).is_some(),
            "the fixture has {field}"
        );
        target[parts[parts.len() - 1]] = value;
    })
}

/// The fixture's text with `from` replaced by `to`, for numbers `serde_json` cannot hold.
fn release_text_with(from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture(DEPLOYED)).unwrap();
    assert!(text.contains(from), "the fixture has {from}");
    text.replacen(from, to, 1).into_bytes()
}

#[tokio::test]
async fn hostile_requests_get_json_errors_and_change_nothing() {
    let fake = FakeHeroku::start().await;
    let host = TestHost::start_with_fake(&fake, Options::default()).await;
    let secret = host.integration("acme", &["billing-api"]).await;
    host.service("billing", "billing-api").await;
    let token = host.token.clone();
    let bearer = format!("Bearer {token}");
    let long = "a".repeat(10_000);

    // A request with the admin token.
    let api = |method: &'static str, target: &str| {
        Request::anonymous(method, target).header("Authorization", bearer.clone())
    };
    // A delivery to `acme` signed with its secret.
    let signed = |body: Vec<u8>| {
        Request::anonymous("POST", "/webhooks/heroku/acme")
            .header("Heroku-Webhook-Hmac-SHA256", sign(&secret, &body))
            .json(body)
    };
    let delivery_to = |integration: &str| {
        let body = fixture(DEPLOYED);
        Request::anonymous("POST", format!("/webhooks/heroku/{integration}"))
            .header("Heroku-Webhook-Hmac-SHA256", sign(&secret, &body))
            .json(body)
    };
    let mut table = Table::default();
    let bad = StatusCode::BAD_REQUEST;
    let not_found = StatusCode::NOT_FOUND;
    let unauthorized = StatusCode::UNAUTHORIZED;

    // Deliveries: bodies that are signed but are not events.
    let mut not_utf8 =
        br#"{"resource":"release","action":"update","data":{"description":""#.to_vec();
    not_utf8.extend_from_slice(b"\xff\xfe\"}}");
    table.add("delivery not UTF-8", signed(not_utf8), bad, "malformed");
    table.add(
        "delivery nested 10,000 deep",
        signed(nested(10_000).into_bytes()),
        bad,
        "malformed",
    );
    let deep_data = format!(
        r#"{{"resource":"release","action":"update","data":{{"app":{}}}}}"#,
        nested(10_000)
    );
    table.add(
        "delivery with data nested 10,000 deep",
        signed(deep_data.into_bytes()),
        bad,
        "malformed",
    );
    for (version, message) in [
        ("1e400", "the body is not JSON: number out of range"),
        (
            "99999999999999999999",
            "`data.version`: invalid type: floating point",
        ),
        ("-1", "`data.version`: invalid value: integer `-1`"),
        ("42.5", "`data.version`: invalid type: floating point"),
    ] {
        let body = release_text_with("\"version\": 42", &format!("\"version\": {version}"));
        let expected = Expected::Json {
            code: "malformed",
            message: Some(message.to_string()),
        };
        table.push(
            &format!("release version {version}"),
            signed(body),
            bad,
            expected,
        );
    }

    // Deliveries: every field of a release event with a wrong type, signed correctly. The
    // plugin refuses each as malformed, and its message starts by naming the field.
    let wrong_types = [
        ("id", json!(42)),
        ("action", json!(42)),
        ("resource", json!(["release"])),
        ("data", json!("release")),
        ("data.id", json!(42)),
        ("data.version", json!("42")),
        ("data.status", json!(true)),
        ("data.current", json!("true")),
        ("data.description", json!(7)),
        ("data.app", json!("billing-api")),
        ("data.app.name", json!(7)),
        ("data.created_at", json!(1_709_978_381)),
        ("data.updated_at", json!(false)),
        ("data.user", json!("dana@example.com")),
        ("data.slug", json!("3c2b1a09")),
        ("created_at", json!(1_709_978_381)),
        ("webhook_metadata", json!("b0000000")),
    ];
    for (field, value) in wrong_types {
        let expected = Expected::Json {
            code: "malformed",
            message: Some(format!("`{field}`")),
        };
        let name = format!("release with {field} = {value}");
        table.push(&name, signed(release_with(field, value)), bad, expected);
    }

    // Deliveries: signatures.
    let body = fixture(DEPLOYED);
    let good = sign(&secret, &body);
    let hex: String = base64_decode(&good)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let to_acme = || Request::anonymous("POST", "/webhooks/heroku/acme").json(body.clone());
    table.add(
        "signature in hex",
        to_acme().header("Heroku-Webhook-Hmac-SHA256", hex),
        unauthorized,
        "unauthenticated",
    );
    table.add(
        "signature sent twice, both right",
        to_acme()
            .header("Heroku-Webhook-Hmac-SHA256", good.clone())
            .header("Heroku-Webhook-Hmac-SHA256", good.clone()),
        unauthorized,
        "unauthenticated",
    );
    table.add(
        "signature sent twice, wrong then right",
        to_acme()
            .header("Heroku-Webhook-Hmac-SHA256", sign("wrong", &body))
            .header("heroku-webhook-hmac-sha256", good.clone()),
        unauthorized,
        "unauthenticated",
    );
    table.add(
        "signature empty",
        to_acme().header("Heroku-Webhook-Hmac-SHA256", ""),
        unauthorized,
        "unauthenticated",
    );
    table.add(
        "signature not UTF-8",
        to_acme().header("Heroku-Webhook-Hmac-SHA256", b"\xff\xfe".to_vec()),
        unauthorized,
        "unauthenticated",
    );

    // Deliveries: integration names.
    for (name, integration) in [
        ("delivery to ..%2Fetc", "..%2Fetc"),
        ("delivery to %00", "%00"),
        ("delivery to a quoted name", "%22acme%22"),
        ("delivery to a SQL fragment", SQL_ENCODED),
        ("delivery to a 10,000-character name", long.as_str()),
    ] {
        table.add(name, delivery_to(integration), not_found, "not_found");
    }
    table.add(
        "delivery to a name with /",
        delivery_to("acme/x"),
        not_found,
        "not_found",
    );
    table.add("delivery to %FF", delivery_to("%FF"), bad, "invalid");
    table.add(
        "delivery to %ZZ",
        delivery_to("%ZZ").raw(),
        not_found,
        "not_found",
    );
    // hyper refuses a raw byte above 0x7f in the path before any handler runs, with an empty
    // 400 (as the README says).
    table.push(
        "delivery to a raw byte 0xff",
        Request::anonymous("POST", b"/webhooks/heroku/\xff".to_vec())
            .header("Heroku-Webhook-Hmac-SHA256", good.clone())
            .json(body.clone())
            .raw(),
        bad,
        HYPER_REFUSED,
    );

    // Integrations: names.
    let apps = || br#"{"apps": ["billing-api"]}"#.to_vec();
    for (name, integration) in [
        ("integration a%2Fb", "a%2Fb"),
        ("integration %00", "%00"),
        ("integration in quotes", "%22acme%22"),
        ("integration SQL fragment", SQL_ENCODED),
        ("integration of 10,000 characters", long.as_str()),
        ("integration %ZZ", "%ZZ"),
    ] {
        let target = format!("/api/integrations/{integration}");
        table.add(name, api("PUT", &target).json(apps()), bad, "invalid");
    }
    table.add(
        "integration a/b",
        api("PUT", "/api/integrations/a/b").json(apps()),
        not_found,
        "not_found",
    );
    table.add(
        "integration ..",
        api("PUT", "/api/integrations/..").json(apps()).raw(),
        bad,
        "invalid",
    );

    // Integrations: bodies.
    let put_new = || api("PUT", "/api/integrations/newcomer");
    table.add(
        "integration body as text/plain",
        put_new().header("Content-Type", "text/plain").body(apps()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    table.add(
        "integration body without a content type",
        put_new().body(apps()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    table.add(
        "integration body not UTF-8",
        put_new().json(b"{\"apps\": [\"\xff\"]}".to_vec()),
        bad,
        "invalid",
    );
    table.add(
        "integration apps nested 10,000 deep",
        put_new().json(format!(r#"{{"apps": {}}}"#, nested(10_000))),
        bad,
        "invalid",
    );
    table.add(
        "integration apps [1e400]",
        put_new().json(r#"{"apps": [1e400]}"#),
        bad,
        "invalid",
    );
    table.add(
        "integration apps 99999999999999999999",
        put_new().json(r#"{"apps": 99999999999999999999}"#),
        bad,
        "invalid",
    );
    table.add(
        "integration apps given twice",
        put_new().json(r#"{"apps": [], "apps": ["billing-api"]}"#),
        bad,
        "invalid",
    );
    table.add(
        "integration app named with SQL",
        put_new().json(json!({ "apps": [SQL] }).to_string()),
        bad,
        "invalid",
    );
    for (name, integration) in [
        ("show integration %00", "%00"),
        ("show integration SQL fragment", SQL_ENCODED),
        ("show integration of 10,000 characters", long.as_str()),
    ] {
        let target = format!("/api/integrations/{integration}");
        table.add(name, api("GET", &target), not_found, "not_found");
    }
    table.add(
        "show integration %FF",
        api("GET", "/api/integrations/%FF"),
        bad,
        "invalid",
    );

    // Connecting and disconnecting.
    table.add(
        "connect link for a SQL fragment",
        api(
            "POST",
            &format!("/api/integrations/{SQL_ENCODED}/heroku/connect-link"),
        ),
        not_found,
        "not_found",
    );
    table.add(
        "connect link for a 10,000-character name",
        api(
            "POST",
            &format!("/api/integrations/{long}/heroku/connect-link"),
        ),
        not_found,
        "not_found",
    );
    table.add(
        "disconnect an integration never connected",
        api("DELETE", "/api/integrations/acme/heroku"),
        StatusCode::CONFLICT,
        "not_connected",
    );
    table.add(
        "disconnect a SQL fragment",
        api("DELETE", &format!("/api/integrations/{SQL_ENCODED}/heroku")),
        not_found,
        "not_found",
    );

    // Runs and actions.
    table.add(
        "runs of a SQL fragment",
        api("GET", &format!("/api/integrations/{SQL_ENCODED}/runs")),
        not_found,
        "not_found",
    );
    table.add(
        "runs of %FF",
        api("GET", "/api/integrations/%FF/runs"),
        bad,
        "invalid",
    );
    let run = |integration: &str| {
        api(
            "POST",
            &format!("/api/integrations/{integration}/actions/run-command"),
        )
    };
    table.add(
        "run-command as text/plain",
        run("acme")
            .header("Content-Type", "text/plain")
            .body(r#"{"params": {}}"#),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    table.add(
        "run-command with params as a string",
        run("acme").json(r#"{"params": "ls"}"#),
        bad,
        "invalid",
    );
    table.add(
        "run-command with an unknown field",
        run("acme").json(r#"{"params": {}, "sudo": true}"#),
        bad,
        "invalid",
    );
    table.add(
        "run-command with a number out of range",
        run("acme").json(r#"{"params": {"timeout": 1e400}}"#),
        bad,
        "invalid",
    );
    table.add(
        "run-command nested 10,000 deep",
        run("acme").json(format!(r#"{{"context": {}}}"#, nested(10_000))),
        bad,
        "invalid",
    );
    table.add(
        "run-command not UTF-8",
        run("acme").json(b"{\"params\": {\"command\": \"\xff\"}}".to_vec()),
        bad,
        "invalid",
    );
    table.add(
        "run-command on an integration never connected",
        run("acme").json(r#"{"params": {"command": "ls"}}"#),
        StatusCode::CONFLICT,
        "not_connected",
    );
    table.add(
        "run-command on a SQL fragment",
        run(SQL_ENCODED).json(r#"{"params": {"command": "ls"}}"#),
        not_found,
        "not_found",
    );

    // Services.
    let service_body = || br#"{"heroku_app_name": "billing-api"}"#.to_vec();
    for (name, service) in [
        ("service a%2Fb", "a%2Fb"),
        ("service %00", "%00"),
        ("service in quotes", "%22billing%22"),
        ("service SQL fragment", SQL_ENCODED),
        ("service of 10,000 characters", long.as_str()),
    ] {
        let target = format!("/api/services/{service}");
        table.add(
            name,
            api("PUT", &target).json(service_body()),
            bad,
            "invalid",
        );
    }
    table.add(
        "service a/b",
        api("PUT", "/api/services/a/b").json(service_body()),
        not_found,
        "not_found",
    );
    table.add(
        "service ..",
        api("PUT", "/api/services/..").json(service_body()).raw(),
        bad,
        "invalid",
    );
    table.push(
        "service with a raw byte 0xff",
        Request::anonymous("PUT", b"/api/services/\xff".to_vec())
            .header("Authorization", bearer.clone())
            .json(service_body())
            .raw(),
        bad,
        HYPER_REFUSED,
    );
    table.add(
        "service app name as a number",
        api("PUT", "/api/services/billing").json(r#"{"heroku_app_name": 42}"#),
        bad,
        "invalid",
    );
    table.add(
        "service app name with a NUL",
        api("PUT", "/api/services/billing").json(r#"{"heroku_app_name": "billing\u0000"}"#),
        bad,
        "invalid",
    );
    table.add(
        "service body as text/plain",
        api("PUT", "/api/services/billing")
            .header("Content-Type", "text/plain")
            .body(service_body()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    table.add(
        "service body not UTF-8",
        api("PUT", "/api/services/billing").json(b"{\"heroku_app_name\": \"\xff\"}".to_vec()),
        bad,
        "invalid",
    );
    table.add(
        "service read with GET",
        api("GET", "/api/services/billing"),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    table.add(
        "delete service SQL fragment",
        api("DELETE", &format!("/api/services/{SQL_ENCODED}")),
        not_found,
        "not_found",
    );
    table.add(
        "delete service %00",
        api("DELETE", "/api/services/%00"),
        not_found,
        "not_found",
    );

    // Listing pulses.
    for (name, query, status, code) in [
        ("pulses limit=abc", "limit=abc", bad, "invalid"),
        ("pulses limit=501", "limit=501", bad, "invalid"),
        (
            "pulses limit too large",
            "limit=99999999999999999999",
            bad,
            "invalid",
        ),
        ("pulses limit=-1", "limit=-1", bad, "invalid"),
        ("pulses limit=1e400", "limit=1e400", bad, "invalid"),
        ("pulses limit=%00", "limit=%00", bad, "invalid"),
        ("pulses cursor garbage", "cursor=%FF%FE", bad, "invalid"),
        ("pulses unknown parameter", "sort=id;DROP", bad, "invalid"),
        (
            "pulses limit given twice",
            "limit=1&limit=2",
            bad,
            "invalid",
        ),
    ] {
        table.add(
            name,
            api("GET", &format!("/api/pulses?{query}")),
            status,
            code,
        );
    }
    let long_cursor = format!("/api/pulses?cursor={long}");
    table.add(
        "pulses 10,000-character cursor",
        api("GET", &long_cursor),
        bad,
        "invalid",
    );
    let sql_service = format!("/api/pulses?service={SQL_ENCODED}");
    table.add(
        "pulses of a SQL service",
        api("GET", &sql_service),
        not_found,
        "not_found",
    );

    // One pulse's event, one run, one incident's timeline.
    for (name, id, status, code) in [
        ("raw pulse abc", "abc", bad, "invalid"),
        ("raw pulse -1", "-1", not_found, "not_found"),
        (
            "raw pulse 99999999999999999999",
            "99999999999999999999",
            bad,
            "invalid",
        ),
        ("raw pulse 1.5", "1.5", bad, "invalid"),
        ("raw pulse 0x1", "0x1", bad, "invalid"),
        ("raw pulse %00", "%00", bad, "invalid"),
        ("raw pulse 1 OR 1=1", "1%20OR%201=1", bad, "invalid"),
    ] {
        table.add(
            name,
            api("GET", &format!("/api/pulses/{id}/raw")),
            status,
            code,
        );
    }
    for (name, id, status, code) in [
        ("run abc", "abc", bad, "invalid"),
        ("run -1", "-1", not_found, "not_found"),
        (
            "run 99999999999999999999",
            "99999999999999999999",
            bad,
            "invalid",
        ),
        ("run 1;DROP", "1%3BDROP", bad, "invalid"),
    ] {
        table.add(name, api("GET", &format!("/api/runs/{id}")), status, code);
    }
    let long_incident = "i".repeat(300);
    for (name, id) in [
        ("timeline %00", "%00"),
        ("timeline newline", "INC%0A7"),
        ("timeline %FF", "%FF"),
        ("timeline of 300 characters", long_incident.as_str()),
    ] {
        let target = format!("/api/incidents/{id}/timeline");
        table.add(name, api("GET", &target), bad, "invalid");
    }

    // The browser side of connecting.
    table.add(
        "connect without a token or a link",
        Request::anonymous("GET", "/integrations/acme/heroku/connect"),
        bad,
        "bad_state",
    );
    table.add(
        "connect with a forged link",
        Request::anonymous("GET", "/integrations/acme/heroku/connect?link=forged"),
        bad,
        "bad_state",
    );
    table.add(
        "connect with a wrong token",
        Request::anonymous("GET", "/integrations/acme/heroku/connect")
            .header("Authorization", "Bearer nope"),
        bad,
        "bad_state",
    );
    table.add(
        "connect a SQL fragment with the token",
        api(
            "GET",
            &format!("/integrations/{SQL_ENCODED}/heroku/connect"),
        ),
        not_found,
        "not_found",
    );
    table.push(
        "connect with the link given twice",
        Request::anonymous("GET", "/integrations/acme/heroku/connect?link=a&link=b"),
        bad,
        Expected::Json {
            code: "invalid",
            message: Some("Failed to deserialize query string: duplicate field `link`".into()),
        },
    );
    // The callback is where Heroku sends the person's browser, so it answers with a page,
    // errors included (as the README says).
    table.push(
        "callback with the state given twice",
        Request::anonymous("GET", "/oauth/heroku/callback?code=x&state=a&state=b"),
        bad,
        Expected::NotJson {
            content_type: Some("text/html; charset=utf-8"),
            body: "<!doctype html><meta charset=utf-8><title>Not connected</title>\
                   <h1>Not connected</h1><pre>the callback's query string is malformed</pre>",
        },
    );
    table.push(
        "callback without code or state",
        Request::anonymous("GET", "/oauth/heroku/callback"),
        bad,
        Expected::NotJson {
            content_type: Some("text/html; charset=utf-8"),
            body: "<!doctype html><meta charset=utf-8><title>Not connected</title>\
                   <h1>Not connected</h1><pre>the callback is missing its code or state</pre>",
        },
    );
    table.push(
        "callback with a forged state",
        Request::anonymous("GET", "/oauth/heroku/callback?code=x&state=forged"),
        bad,
        Expected::NotJson {
            content_type: Some("text/html; charset=utf-8"),
            body: "<!doctype html><meta charset=utf-8><title>Not connected</title>\
                   <h1>Not connected</h1><pre>the connect link or OAuth state is unknown, \
                   used or expired: start again</pre>",
        },
    );
    table.push(
        "callback with markup in the error",
        Request::anonymous(
            "GET",
            "/oauth/heroku/callback?error=%3Cscript%3E&error_description=x",
        ),
        bad,
        Expected::NotJson {
            content_type: Some("text/html; charset=utf-8"),
            body: "<!doctype html><meta charset=utf-8>\
                   <title>Heroku did not authorize the integration</title>\
                   <h1>Heroku did not authorize the integration</h1>\
                   <pre>&lt;script&gt;: x</pre>",
        },
    );

    // The admin token.
    let unauthorized_cases = [
        ("token missing", None),
        ("token empty", Some(b"".to_vec())),
        (
            "token without a space",
            Some(format!("Bearer{token}").into_bytes()),
        ),
        (
            "token after two spaces",
            Some(format!("Bearer  {token}").into_bytes()),
        ),
        (
            "token with a byte more",
            Some(format!("Bearer {token}x").into_bytes()),
        ),
        (
            "token as Basic",
            Some(format!("Basic {token}").into_bytes()),
        ),
        ("token not UTF-8", Some(b"Bearer \xff\xfe".to_vec())),
    ];
    for (name, value) in unauthorized_cases {
        let mut request = Request::anonymous("GET", "/api/pulses");
        if let Some(value) = value {
            request = request.header("Authorization", value);
        }
        table.add(name, request, unauthorized, "unauthorized");
    }
    table.add(
        "token sent twice, both right",
        api("GET", "/api/services").header("Authorization", bearer.clone()),
        unauthorized,
        "unauthorized",
    );
    table.add(
        "token sent twice, wrong then right",
        Request::anonymous("GET", "/api/services")
            .header("Authorization", "Bearer nope")
            .header("Authorization", bearer.clone()),
        unauthorized,
        "unauthorized",
    );
    table.add(
        "token missing on a write",
        Request::anonymous("PUT", "/api/integrations/intruder").json(apps()),
        unauthorized,
        "unauthorized",
    );
    table.add(
        "token missing on a delete",
        Request::anonymous("DELETE", "/api/services/billing"),
        unauthorized,
        "unauthorized",
    );
    table.add(
        "token missing on run-command",
        Request::anonymous("POST", "/api/integrations/acme/actions/run-command")
            .json(r#"{"params": {"command": "ls"}}"#),
        unauthorized,
        "unauthorized",
    );

    let cases = table.cases;
    assert!(cases.len() >= 45, "{} cases", cases.len());
    let mut wrong = Vec::new();
    for case in &cases {
        let answer = send(&host, &case.request).await;
        if let Some(problem) = check(case, &answer) {
            wrong.push(format!(
                "{}: expected {}, got {problem}",
                case.name, case.status
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );

    // Nothing was stored or created, the SQL-fragment names included.
    assert_eq!(
        host.pulses("").await,
        json!({"pulses": [], "next_cursor": null})
    );
    let (_, integrations) = host.api(reqwest::Method::GET, "/integrations", None).await;
    let names: Vec<&str> = integrations["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|integration| integration["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme"]);
    let (_, services) = host.api(reqwest::Method::GET, "/services", None).await;
    assert_eq!(
        services,
        json!({"services": [{"name": "billing", "heroku_app_name": "billing-api"}]})
    );

    // And the server still serves: a good delivery is stored and linked.
    let (status, answer) = host.deliver("acme", &secret, &fixture(DEPLOYED)).await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!("stored")),
        "{answer}"
    );
    assert_eq!(
        host.summaries("service=billing").await,
        ["[Heroku][Release] Deploy 69eec518"]
    );

    // The token's scheme is case-insensitive, as HTTP's schemes are; the token is not.
    for (authorization, expected) in [
        (format!("bearer {}", host.token), StatusCode::OK),
        (format!("BEARER {}", host.token), StatusCode::OK),
        (
            format!("Bearer {}", host.token.to_uppercase()),
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let response = host
            .client
            .get(format!("{}/api/services", host.base))
            .header("Authorization", &authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{authorization}");
    }
}

/// Standard base64, the encoding Heroku's signatures use.
fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}
