//! A fake Heroku on loopback: the identity service (OAuth authorize and token endpoints) and
//! the Platform API's app-webhook, dyno, log-session and OAuth-authorization endpoints, and
//! a log-stream server, each on its own port so they are different origins, as
//! `id.heroku.com`, `api.heroku.com` and `logplex.heroku.com` are.
//!
//! It behaves like the real service where the tests depend on it: the v3 `Accept` header is
//! required (406), a valid bearer token is required (401), request bodies are validated
//! against Heroku's published JSON schema (422), errors use Heroku's `{id, message}` bodies,
//! every answer has `Request-Id` and `RateLimit-Remaining`, lists are paginated with
//! `Next-Range` past a small page size, and apps can be made forbidden (403) or missing
//! (404). Tests can expire or revoke tokens, ask for 429s, read every request it received,
//! and have it send signed deliveries to the webhooks it holds.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;

mod dynos;
pub use dynos::{Dyno, Script};

/// The media type the Platform API requires.
const V3: &str = "application/vnd.heroku+json; version=3";

/// How long an access token lives unless a test says otherwise: Heroku's eight hours.
const TOKEN_LIFETIME: Duration = Duration::from_secs(28_799);

/// Heroku's published Platform API schema, copied from the shared reference.
static SCHEMA: OnceLock<Value> = OnceLock::new();

fn schema() -> &'static Value {
    SCHEMA.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/platform-api-schema.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        serde_json::from_str(&text).expect("the Platform API schema is JSON")
    })
}

/// A validator for the request body of one link (`rel`) of one resource in the schema: the
/// link's schema with the document's definitions beside it, so its `$ref`s resolve.
fn link_validator(resource: &str, rel: &str) -> jsonschema::Validator {
    let root = schema();
    let link = root["definitions"][resource]["links"]
        .as_array()
        .and_then(|links| links.iter().find(|link| link["rel"] == rel))
        .unwrap_or_else(|| panic!("the schema has no {resource} {rel} link"));
    let mut document = link["schema"].clone();
    document["definitions"] = root["definitions"].clone();
    jsonschema::draft4::new(&document).expect("the link schema compiles")
}

/// Which of the fake's two servers a request reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The identity service (`id.heroku.com`).
    Id,
    /// The Platform API (`api.heroku.com`).
    Api,
    /// The log-stream server (`logplex.heroku.com`).
    Logs,
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub side: Side,
    pub method: Method,
    /// The path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status the fake answered with.
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Whether this request changed webhooks.
    pub fn is_webhook_change(&self) -> bool {
        self.side == Side::Api
            && self.uri.contains("/webhooks")
            && matches!(self.method, Method::POST | Method::PATCH | Method::DELETE)
    }
}

/// A webhook subscription the fake holds.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: String,
    pub app: String,
    pub include: Vec<String>,
    pub level: String,
    pub url: String,
    pub secret: String,
    pub created_at: String,
}

impl Webhook {
    fn json(&self, app_id: &str) -> Value {
        json!({
            "id": self.id,
            "app": {"id": app_id, "name": self.app},
            "include": self.include,
            "level": self.level,
            "url": self.url,
            "created_at": self.created_at,
            "updated_at": self.created_at,
        })
    }
}

/// Who may reach an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// The account has no access: 403 `forbidden`.
    Forbidden,
}

#[derive(Debug)]
struct App {
    id: String,
    access: Access,
    webhooks: Vec<Webhook>,
}

#[derive(Debug)]
struct Authorization {
    id: String,
    refresh_token: String,
    revoked: bool,
}

#[derive(Debug)]
struct AccessToken {
    authorization: String,
    expires: Instant,
}

struct FakeState {
    client_id: String,
    client_secret: String,
    redirect_uri: Option<String>,
    apps: BTreeMap<String, App>,
    /// Authorization codes not yet exchanged.
    codes: std::collections::HashSet<String>,
    authorizations: Vec<Authorization>,
    tokens: HashMap<String, AccessToken>,
    token_lifetime: Duration,
    page_size: usize,
    rate_limited: u32,
    requests: Vec<Recorded>,
    /// Every token and secret the fake handed out or was given, for log checks.
    secrets: Vec<String>,
    create_validator: Arc<jsonschema::Validator>,
    update_validator: Arc<jsonschema::Validator>,
    dynos: dynos::Dynos,
}

/// A running fake Heroku. Dropping it stops both servers.
pub struct FakeHeroku {
    state: Arc<Mutex<FakeState>>,
    api_addr: SocketAddr,
    id_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    client: reqwest::Client,
}

impl Drop for FakeHeroku {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A value no other call returns, with `prefix`; random enough that a test's values cannot
/// turn up in another test's logs by chance.
fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let noise = RandomState::new().hash_one(n);
    format!("{prefix}{n:04}{noise:016x}")
}

/// A UUID-shaped id.
fn uuid() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let noise = RandomState::new().hash_one(n);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        noise >> 32,
        (noise >> 16) & 0xffff,
        noise & 0xfff,
        (n >> 48) & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

fn timestamp() -> String {
    // Whole seconds, as Heroku shows `created_at`.
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("zero nanoseconds is valid");
    now.format(&time::format_description::well_known::Rfc3339)
        .expect("the current time formats as RFC 3339")
}

impl FakeHeroku {
    /// Starts both servers on ephemeral loopback ports, with an OAuth client and no apps.
    pub async fn start() -> FakeHeroku {
        let client_id = uuid();
        let client_secret = unique("client-secret-");
        let state = Arc::new(Mutex::new(FakeState {
            secrets: vec![client_secret.clone()],
            client_id,
            client_secret,
            redirect_uri: None,
            apps: BTreeMap::new(),
            codes: Default::default(),
            authorizations: Vec::new(),
            tokens: HashMap::new(),
            token_lifetime: TOKEN_LIFETIME,
            page_size: 2,
            rate_limited: 0,
            requests: Vec::new(),
            create_validator: Arc::new(link_validator("app-webhook", "create")),
            update_validator: Arc::new(link_validator("app-webhook", "update")),
            dynos: dynos::Dynos::new(),
        }));

        let api = Router::new()
            .route(
                "/apps/{app}/webhooks",
                get(list_webhooks).post(create_webhook),
            )
            .route(
                "/apps/{app}/webhooks/{id}",
                patch(update_webhook).delete(delete_webhook),
            )
            .route("/apps/{app}/dynos", post(dynos::create_dyno))
            .route(
                "/apps/{app}/dynos/{dyno}/actions/stop",
                post(dynos::stop_dyno),
            )
            .route("/apps/{app}/log-sessions", post(dynos::create_log_session))
            .route("/oauth/authorizations", get(list_authorizations))
            .route("/oauth/authorizations/{id}", delete(revoke_authorization))
            .fallback(|| async {
                heroku_error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "The requested API endpoint was not found.",
                )
            })
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                platform_api,
            ))
            .layer(axum::middleware::from_fn_with_state(
                (state.clone(), Side::Api),
                record,
            ))
            .with_state(state.clone());
        let id = Router::new()
            .route("/oauth/authorize", get(authorize))
            .route("/oauth/token", post(token))
            .layer(axum::middleware::from_fn_with_state(
                (state.clone(), Side::Id),
                record,
            ))
            .with_state(state.clone());

        let logs = Router::new()
            .route("/sessions/{id}", get(dynos::stream_session))
            .layer(axum::middleware::from_fn_with_state(
                (state.clone(), Side::Logs),
                record,
            ))
            .with_state(state.clone());

        let (api_addr, api_task) = serve(api).await;
        let (id_addr, id_task) = serve(id).await;
        let (logs_addr, logs_task) = serve(logs).await;
        state.lock().unwrap().dynos.logs_url = format!("http://{logs_addr}");
        FakeHeroku {
            state,
            api_addr,
            id_addr,
            tasks: vec![api_task, id_task, logs_task],
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// The Platform API's base URL (`PULSE_HEROKU_API_URL`).
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// The identity service's base URL (`PULSE_HEROKU_ID_URL`).
    pub fn id_url(&self) -> String {
        format!("http://{}", self.id_addr)
    }

    pub fn client_id(&self) -> String {
        self.state().client_id.clone()
    }

    pub fn client_secret(&self) -> String {
        self.state().client_secret.clone()
    }

    /// Registers the OAuth client's redirect URI, where `authorize` sends the browser.
    pub fn set_redirect_uri(&self, uri: &str) {
        self.state().redirect_uri = Some(uri.to_string());
    }

    /// Adds an app the account can reach.
    pub fn add_app(&self, name: &str) {
        self.add_app_with(name, Access::Granted);
    }

    pub fn add_app_with(&self, name: &str, access: Access) {
        self.state().apps.insert(
            name.to_string(),
            App {
                id: uuid(),
                access,
                webhooks: Vec::new(),
            },
        );
    }

    /// An app's id.
    pub fn app_id(&self, name: &str) -> String {
        self.state().apps[name].id.clone()
    }

    /// Adds a webhook someone else made, as if through the dashboard.
    pub fn add_foreign_webhook(&self, app: &str, url: &str) -> String {
        let mut state = self.state();
        let id = uuid();
        state.apps.get_mut(app).unwrap().webhooks.push(Webhook {
            id: id.clone(),
            app: app.to_string(),
            include: vec!["api:release".into()],
            level: "notify".into(),
            url: url.to_string(),
            secret: unique("foreign-secret-"),
            created_at: timestamp(),
        });
        id
    }

    /// Deletes a webhook as if someone removed it on Heroku's side.
    pub fn remove_webhook(&self, app: &str, id: &str) {
        self.state()
            .apps
            .get_mut(app)
            .unwrap()
            .webhooks
            .retain(|hook| hook.id != id);
    }

    /// The webhooks on an app.
    pub fn webhooks(&self, app: &str) -> Vec<Webhook> {
        self.state().apps[app].webhooks.clone()
    }

    /// The webhooks on an app whose URL is `url`.
    pub fn webhooks_to(&self, app: &str, url: &str) -> Vec<Webhook> {
        self.webhooks(app)
            .into_iter()
            .filter(|hook| hook.url == url)
            .collect()
    }

    /// How many items a list page holds before `Next-Range` is needed.
    pub fn set_page_size(&self, size: usize) {
        self.state().page_size = size.max(1);
    }

    /// Access tokens issued from now on live this long.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state().token_lifetime = lifetime;
    }

    /// Makes every access token issued so far expired; refresh tokens still work.
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for token in self.state().tokens.values_mut() {
            token.expires = now;
        }
    }

    /// Revokes every authorization, as a user does under Account settings, Applications:
    /// their access and refresh tokens stop working.
    pub fn revoke_all(&self) {
        let mut state = self.state();
        for authorization in &mut state.authorizations {
            authorization.revoked = true;
        }
    }

    /// Authorizations not revoked.
    pub fn live_authorizations(&self) -> usize {
        self.state()
            .authorizations
            .iter()
            .filter(|a| !a.revoked)
            .count()
    }

    /// The next `n` Platform API calls are answered 429.
    pub fn rate_limit_next(&self, n: u32) {
        self.state().rate_limited = n;
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// Forgets the requests received so far.
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// Every token and secret the fake issued or was given.
    pub fn secrets(&self) -> Vec<String> {
        self.state().secrets.clone()
    }

    /// Sends `body` to every webhook on `app` that includes `include`, signed with the
    /// webhook's secret as Heroku does. Returns each webhook's answer.
    pub async fn deliver(&self, app: &str, include: &str, body: &[u8]) -> Vec<(u16, Value)> {
        let targets: Vec<Webhook> = self
            .webhooks(app)
            .into_iter()
            .filter(|hook| hook.include.iter().any(|i| i == include))
            .collect();
        let mut answers = Vec::new();
        for hook in targets {
            let response = self
                .client
                .post(&hook.url)
                .header("Content-Type", "application/json")
                .header(
                    "Heroku-Webhook-Hmac-SHA256",
                    crate::sign(&hook.secret, body),
                )
                .header("User-Agent", "Heroku Webhooks")
                .body(body.to_vec())
                .send()
                .await
                .expect("the webhook URL answers");
            let status = response.status().as_u16();
            let body = response.json().await.unwrap_or(Value::Null);
            answers.push((status, body));
        }
        answers
    }
}

async fn serve(router: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (addr, task)
}

type Shared = Arc<Mutex<FakeState>>;

/// Heroku's error body.
fn heroku_error(status: StatusCode, id: &str, message: &str) -> Response {
    (status, axum::Json(json!({"id": id, "message": message, "url": "https://devcenter.heroku.com/articles/platform-api-reference"})))
        .into_response()
}

/// Records the request and its answer; runs outside everything else.
async fn record(
    State((state, side)): State<(Shared, Side)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let mut recorded = Recorded {
        side,
        method: parts.method.clone(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
        status: 0,
    };
    let response = next
        .run(axum::extract::Request::from_parts(
            parts,
            axum::body::Body::from(body),
        ))
        .await;
    recorded.status = response.status().as_u16();
    state.lock().unwrap().requests.push(recorded);
    response
}

/// What every Platform API call goes through: the `Accept` header, the bearer token, the
/// rate limit, and the headers every answer carries.
async fn platform_api(
    State(state): State<Shared>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = match check_call(&state, &request) {
        Ok(authorization) => {
            request.extensions_mut().insert(Caller(authorization));
            next.run(request).await
        }
        Err(refusal) => refusal,
    };
    let headers = response.headers_mut();
    headers.insert("Request-Id", HeaderValue::from_str(&uuid()).unwrap());
    headers.insert("RateLimit-Remaining", HeaderValue::from_static("4499"));
    response
}

/// The authorization a Platform API call was made with.
#[derive(Clone)]
struct Caller(String);

/// Checks a Platform API call; returns the caller's authorization id, or the refusal.
fn check_call(state: &Shared, request: &axum::extract::Request) -> Result<String, Response> {
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if !accept.starts_with(V3) {
        return Err(heroku_error(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "Please specify a version along with Heroku's API MIME type. For example, `Accept: application/vnd.heroku+json; version=3`.",
        ));
    }
    let mut state = state.lock().unwrap();
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let authorization = token.and_then(|token| {
        let found = state.tokens.get(token)?;
        let live = state
            .authorizations
            .iter()
            .any(|a| a.id == found.authorization && !a.revoked);
        (live && found.expires > Instant::now()).then(|| found.authorization.clone())
    });
    let Some(authorization) = authorization else {
        return Err(heroku_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Invalid credentials provided.",
        ));
    };
    if state.rate_limited > 0 {
        state.rate_limited -= 1;
        return Err(heroku_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit",
            "Your account reached the API rate limit. Please wait a few minutes before making new requests.",
        ));
    }
    Ok(authorization)
}

/// Finds an app by name or id; returns its name and the app, or Heroku's refusal.
fn find_app<'a>(
    state: &'a mut FakeState,
    identity: &str,
) -> Result<(String, &'a mut App), Response> {
    let found = state
        .apps
        .iter_mut()
        .find(|(name, app)| name.as_str() == identity || app.id == identity);
    let Some((name, app)) = found else {
        return Err(heroku_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "Couldn't find that app.",
        ));
    };
    if app.access == Access::Forbidden {
        return Err(heroku_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("You do not have access to the app {name}."),
        ));
    }
    Ok((name.clone(), app))
}

/// Parses a JSON request body and validates it against the link's schema.
fn valid_body(
    headers: &HeaderMap,
    body: &[u8],
    validator: &jsonschema::Validator,
) -> Result<Value, Response> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !json_type {
        return Err(heroku_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Content-Type must be application/json.",
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        heroku_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("Invalid JSON: {err}"),
        )
    })?;
    if let Some(error) = validator.iter_errors(&value).next() {
        return Err(heroku_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_params",
            &format!("Invalid params: {error} at {}", error.instance_path),
        ));
    }
    Ok(value)
}

/// `GET /apps/{app}/webhooks`, paginated by id: `Range: id ]{last}..; max={n}`.
async fn list_webhooks(
    State(state): State<Shared>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut state = state.lock().unwrap();
    let page_size = state.page_size;
    let (_, app) = match find_app(&mut state, &app) {
        Ok(found) => found,
        Err(refusal) => return refusal,
    };
    let mut hooks = app.webhooks.clone();
    hooks.sort_by(|a, b| a.id.cmp(&b.id));
    let range = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok());
    let mut max = page_size;
    if let Some(range) = range {
        let Some((after, asked)) = parse_range(range) else {
            return heroku_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "Invalid Range header.",
            );
        };
        if let Some(after) = after {
            hooks.retain(|hook| hook.id.as_str() > after.as_str());
        }
        max = asked.min(page_size);
    }
    let more = hooks.len() > max;
    hooks.truncate(max);
    let body: Vec<Value> = hooks.iter().map(|hook| hook.json(&app.id)).collect();
    let mut response = axum::Json(body).into_response();
    if more {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let last = hooks.last().map(|hook| hook.id.as_str()).unwrap_or("");
        let next = format!("id ]{last}..; max={max}");
        response
            .headers_mut()
            .insert("Next-Range", HeaderValue::from_str(&next).unwrap());
    }
    response
}

/// Reads `id ]{after}..; max={n}` or `id ..; max={n}`.
fn parse_range(range: &str) -> Option<(Option<String>, usize)> {
    let rest = range.strip_prefix("id ")?;
    let (span, max) = rest.split_once("; max=")?;
    let max: usize = max.trim().parse().ok()?;
    let span = span.strip_suffix("..")?;
    let after = match span.strip_prefix(']') {
        Some(after) => Some(after.to_string()),
        None if span.is_empty() => None,
        None => return None,
    };
    Some((after, max))
}

/// `POST /apps/{app}/webhooks`.
async fn create_webhook(
    State(state): State<Shared>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    let validator = state.create_validator.clone();
    let body = match valid_body(&headers, &body, &validator) {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let given_secret = body["secret"].as_str().map(str::to_string);
    if let Some(secret) = &given_secret {
        state.secrets.push(secret.clone());
    }
    let (name, app) = match find_app(&mut state, &app) {
        Ok(found) => found,
        Err(refusal) => return refusal,
    };
    let hook = Webhook {
        id: uuid(),
        app: name,
        include: strings(&body["include"]),
        level: body["level"].as_str().unwrap_or_default().to_string(),
        url: body["url"].as_str().unwrap_or_default().to_string(),
        secret: given_secret
            .clone()
            .unwrap_or_else(|| unique("generated-secret-")),
        created_at: timestamp(),
    };
    let json = hook.json(&app.id);
    let secret = hook.secret.clone();
    app.webhooks.push(hook);
    let mut response = (StatusCode::CREATED, axum::Json(json)).into_response();
    if given_secret.is_none() {
        state.secrets.push(secret.clone());
        response.headers_mut().insert(
            "Heroku-Webhook-Secret",
            HeaderValue::from_str(&secret).unwrap(),
        );
    }
    response
}

/// `PATCH /apps/{app}/webhooks/{id}`.
async fn update_webhook(
    State(state): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    let validator = state.update_validator.clone();
    let body = match valid_body(&headers, &body, &validator) {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    if let Some(secret) = body["secret"].as_str() {
        state.secrets.push(secret.to_string());
    }
    let (_, app) = match find_app(&mut state, &app) {
        Ok(found) => found,
        Err(refusal) => return refusal,
    };
    let app_id = app.id.clone();
    let Some(hook) = app.webhooks.iter_mut().find(|hook| hook.id == id) else {
        return heroku_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "Couldn't find that webhook.",
        );
    };
    if body.get("include").is_some() {
        hook.include = strings(&body["include"]);
    }
    if let Some(level) = body["level"].as_str() {
        hook.level = level.to_string();
    }
    if let Some(url) = body["url"].as_str() {
        hook.url = url.to_string();
    }
    if let Some(secret) = body["secret"].as_str() {
        hook.secret = secret.to_string();
    }
    axum::Json(hook.json(&app_id)).into_response()
}

/// `DELETE /apps/{app}/webhooks/{id}`: answers with the deleted webhook.
async fn delete_webhook(
    State(state): State<Shared>,
    Path((app, id)): Path<(String, String)>,
) -> Response {
    let mut state = state.lock().unwrap();
    let (_, app) = match find_app(&mut state, &app) {
        Ok(found) => found,
        Err(refusal) => return refusal,
    };
    let Some(index) = app.webhooks.iter().position(|hook| hook.id == id) else {
        return heroku_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "Couldn't find that webhook.",
        );
    };
    let hook = app.webhooks.remove(index);
    axum::Json(hook.json(&app.id)).into_response()
}

/// `GET /oauth/authorizations`: the caller's own authorization.
async fn list_authorizations(
    State(state): State<Shared>,
    axum::Extension(Caller(caller)): axum::Extension<Caller>,
) -> Response {
    let state = state.lock().unwrap();
    let list: Vec<Value> = state
        .authorizations
        .iter()
        .filter(|a| a.id == caller && !a.revoked)
        .map(|a| {
            json!({
                "id": a.id,
                "client": {"id": state.client_id, "name": "pulse", "redirect_uri": state.redirect_uri},
                "scope": ["write"],
            })
        })
        .collect();
    axum::Json(list).into_response()
}

/// `DELETE /oauth/authorizations/{id}`.
async fn revoke_authorization(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let mut state = state.lock().unwrap();
    let Some(authorization) = state
        .authorizations
        .iter_mut()
        .find(|a| a.id == id && !a.revoked)
    else {
        return heroku_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "Couldn't find that authorization.",
        );
    };
    authorization.revoked = true;
    axum::Json(json!({"id": id})).into_response()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /oauth/authorize`: the consent page, consented to at once: sends the browser to the
/// registered redirect URI with a code and the caller's `state`.
async fn authorize(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut state = state.lock().unwrap();
    if query.get("client_id") != Some(&state.client_id) {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    if query.get("response_type").map(String::as_str) != Some("code") {
        return (StatusCode::BAD_REQUEST, "response_type must be code").into_response();
    }
    let Some(redirect) = state.redirect_uri.clone() else {
        return (StatusCode::BAD_REQUEST, "the client has no redirect URI").into_response();
    };
    let code = unique("code-");
    state.codes.insert(code.clone());
    state.secrets.push(code.clone());
    let mut url = reqwest::Url::parse(&redirect).unwrap();
    url.query_pairs_mut().append_pair("code", &code);
    if let Some(oauth_state) = query.get("state") {
        url.query_pairs_mut().append_pair("state", oauth_state);
    }
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}

/// `POST /oauth/token`: the authorization-code and refresh-token grants.
async fn token(
    State(state): State<Shared>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let mut state = state.lock().unwrap();
    if form.get("client_secret") != Some(&state.client_secret) {
        return heroku_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Invalid client secret.",
        );
    }
    let authorization = match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            if !state.codes.remove(&code) {
                return heroku_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "Invalid authorization code.",
                );
            }
            let authorization = Authorization {
                id: uuid(),
                refresh_token: unique("refresh-"),
                revoked: false,
            };
            let id = authorization.id.clone();
            state.secrets.push(authorization.refresh_token.clone());
            state.authorizations.push(authorization);
            id
        }
        Some("refresh_token") => {
            let refresh = form.get("refresh_token").cloned().unwrap_or_default();
            let found = state
                .authorizations
                .iter()
                .find(|a| a.refresh_token == refresh && !a.revoked);
            match found {
                Some(authorization) => authorization.id.clone(),
                None => {
                    return heroku_error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "Invalid refresh token.",
                    );
                }
            }
        }
        _ => {
            return heroku_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "Unsupported grant_type.",
            );
        }
    };
    let access_token = unique("HRKU-");
    let lifetime = state.token_lifetime;
    state.secrets.push(access_token.clone());
    state.tokens.insert(
        access_token.clone(),
        AccessToken {
            authorization: authorization.clone(),
            expires: Instant::now() + lifetime,
        },
    );
    let refresh_token = state
        .authorizations
        .iter()
        .find(|a| a.id == authorization)
        .map(|a| a.refresh_token.clone())
        .unwrap();
    axum::Json(json!({
        "access_token": access_token,
        "expires_in": lifetime.as_secs(),
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "user_id": "01234567-89ab-cdef-0123-456789abcdef",
        "session_nonce": null,
    }))
    .into_response()
}
