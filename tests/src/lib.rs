//! The end-to-end harness: a real `pulse-host` server on an ephemeral loopback port with a
//! temporary data directory, and an HTTP client that talks to it like Heroku and an admin do.

pub mod fake_heroku;
pub mod fake_slack;
pub mod process;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use pulse_host::connection::HerokuConfig;
use pulse_host::sandbox::Limits;
use pulse_host::{ServeConfig, Server};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::Sha256;

/// The test component that traps, loops or hoards memory on request.
pub const FAULTY_PLUGIN: &str = env!("PULSE_FAULTY_PLUGIN_WASM");

/// A fixture body from `plugin/fixtures/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugin/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// A fixture with some of its JSON changed, re-serialized.
pub fn fixture_with(name: &str, change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&fixture(name)).unwrap();
    change(&mut value);
    serde_json::to_vec(&value).unwrap()
}

/// A pending build of its own for each `n` (its event and build ids carry `n`), so that each
/// delivery makes a pulse of its own.
pub fn numbered_build(n: usize) -> Vec<u8> {
    fixture_with("build-create-pending.json", |event| {
        event["id"] = serde_json::json!(format!("00000000-0000-4000-8000-{n:012}"));
        event["data"]["id"] = serde_json::json!(numbered_build_id(n));
    })
}

/// The build id of [`numbered_build`]`(n)`.
pub fn numbered_build_id(n: usize) -> String {
    format!("b0000000-0000-4000-8000-{n:012}")
}

/// Signs a body the way Heroku does: base64 of HMAC-SHA256 keyed with the secret.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Every log line the hosts of this test binary wrote, at every level.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Sends the host's logs (`tracing`) to [`LOGS`], once per test binary. Set `PULSE_TEST_LOG`
/// to also see them on stderr.
fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        struct Capture;
        impl std::io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                LOGS.lock().unwrap().extend_from_slice(buf);
                if std::env::var_os("PULSE_TEST_LOG").is_some() {
                    std::io::stderr().write_all(buf)?;
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        use tracing_subscriber::util::SubscriberInitExt as _;
        tracing_subscriber::fmt()
            .with_env_filter("trace,cranelift_codegen=info,wasmtime_cranelift=info")
            .with_ansi(false)
            .with_writer(|| Capture)
            .finish()
            .try_init()
            .ok();
    });
}

/// What the hosts of this test binary have logged so far.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

/// How a test host is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub plugin: Option<PathBuf>,
    pub limits: Option<Limits>,
    pub admin_token: Option<String>,
    /// Where Heroku is; the real one (never called unless connected) when unset.
    pub heroku: Option<HerokuConfig>,
    /// Where Slack is and its token; none configured when unset.
    pub slack: Option<pulse_host::slack::SlackConfig>,
    /// How long clients may take to send requests; the server's defaults when unset.
    pub timeouts: Option<pulse_host::Timeouts>,
}

impl Options {
    /// Heroku is `fake`, with its OAuth client.
    pub fn with_fake(fake: &fake_heroku::FakeHeroku) -> Options {
        Options {
            heroku: Some(HerokuConfig {
                api_url: fake.api_url(),
                id_url: fake.id_url(),
                client_id: Some(fake.client_id()),
                client_secret: Some(fake.client_secret()),
            }),
            ..Options::default()
        }
    }
}

/// A running host, its data directory and a client for it.
pub struct TestHost {
    server: Option<Server>,
    dir: tempfile::TempDir,
    options: Options,
    pub client: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl TestHost {
    /// Starts a host with the built-in Heroku plugin on a fresh data directory.
    pub async fn start() -> TestHost {
        TestHost::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> TestHost {
        let dir = tempfile::tempdir().unwrap();
        TestHost::start_in(dir, options).await
    }

    async fn start_in(dir: tempfile::TempDir, options: Options) -> TestHost {
        capture_logs();
        let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
        config.plugin = options.plugin.clone();
        config.admin_token = options.admin_token.clone();
        if let Some(limits) = options.limits {
            config.limits = limits;
        }
        if let Some(heroku) = &options.heroku {
            config.heroku = heroku.clone();
        }
        if let Some(slack) = &options.slack {
            config.slack = slack.clone();
        }
        if let Some(timeouts) = options.timeouts {
            config.timeouts = timeouts;
        }
        let server = Server::start(config).await.expect("the server starts");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        TestHost {
            base: format!("http://{}", server.addr()),
            token: server.admin_token().to_string(),
            server: Some(server),
            dir,
            options,
            client,
        }
    }

    /// Stops the server and starts a new one on the same data directory.
    pub async fn restart(mut self) -> TestHost {
        self.server.take().unwrap().stop().await.unwrap();
        let options = self.options.clone();
        TestHost::start_in(self.dir, options).await
    }

    /// Starts a host whose Heroku is `fake`, and registers the host's callback as the fake
    /// OAuth client's redirect URI.
    pub async fn start_with_fake(fake: &fake_heroku::FakeHeroku, options: Options) -> TestHost {
        let host = TestHost::start_with(Options {
            heroku: Options::with_fake(fake).heroku,
            ..options
        })
        .await;
        fake.set_redirect_uri(&format!("{}/oauth/heroku/callback", host.base));
        host
    }

    /// Connects `integration` to Heroku as a person does: asks the API for a connect link,
    /// opens it in a "browser" that follows every redirect (to Heroku's consent page and
    /// back to the callback), and returns the final status and page.
    pub async fn connect(&self, integration: &str) -> (StatusCode, String) {
        let (status, link) = self
            .api(
                Method::POST,
                &format!("/integrations/{integration}/heroku/connect-link"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{link}");
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(5))
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let response = browser
            .get(link["url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let landed = response.url().path().to_string();
        assert_eq!(
            landed, "/oauth/heroku/callback",
            "the browser ends on our callback"
        );
        (status, response.text().await.unwrap())
    }

    /// The host's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// An admin API call with the admin token; returns the status and the JSON body
    /// (`Value::Null` when the body is empty).
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}/api{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        read(request.send().await.unwrap()).await
    }

    /// Creates (or updates) an integration; returns the answer.
    pub async fn put_integration(&self, name: &str, apps: &[&str]) -> (StatusCode, Value) {
        let body = serde_json::json!({ "apps": apps });
        self.api(Method::PUT, &format!("/integrations/{name}"), Some(body))
            .await
    }

    /// Creates an integration and returns its webhook secret.
    pub async fn integration(&self, name: &str, apps: &[&str]) -> String {
        let (status, body) = self.put_integration(name, apps).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["webhook_secret"].as_str().unwrap().to_string()
    }

    pub async fn service(&self, name: &str, heroku_app_name: &str) {
        let body = serde_json::json!({ "heroku_app_name": heroku_app_name });
        let (status, body) = self
            .api(Method::PUT, &format!("/services/{name}"), Some(body))
            .await;
        assert!(status.is_success(), "{status} {body}");
    }

    /// Posts a delivery signed with `secret`, as Heroku would.
    pub async fn deliver(
        &self,
        integration: &str,
        secret: &str,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let signature = sign(secret, body);
        self.post_webhook(
            integration,
            body.to_vec(),
            &[("Heroku-Webhook-Hmac-SHA256", &signature)],
        )
        .await
    }

    /// Posts raw bytes to the webhook endpoint with exactly these extra headers.
    pub async fn post_webhook(
        &self,
        integration: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(format!("{}/webhooks/heroku/{integration}", self.base))
            .header("Content-Type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read(request.send().await.unwrap()).await
    }

    /// `GET /api/pulses` with a query string (without the `?`).
    pub async fn pulses(&self, query: &str) -> Value {
        let (status, body) = self
            .api(Method::GET, &format!("/pulses?{query}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// The summaries of every pulse, newest first.
    pub async fn summaries(&self, query: &str) -> Vec<String> {
        self.pulses(query).await["pulses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pulse| pulse["summary"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Reads a response's status and JSON body.
pub async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    (status, body)
}
