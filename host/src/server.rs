//! `pulse-host serve`: the HTTP server that takes webhook deliveries and the management API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::admin::{Admin, AdminError, PulseQuery};
use crate::connection::{ConnectError, Connector, HerokuConfig};
use crate::data_dir::{DataDir, TokenSource};
use crate::database::Database;
use crate::runs::Runner;
use crate::sandbox::{Limits, Plugin, Runtime};
use crate::slack::{Slack, SlackConfig};
use crate::vault::Vault;
use crate::{oauth, run_api, webhook};

/// The Heroku plugin this host was built with.
pub static HEROKU_PLUGIN: &[u8] = include_bytes!(env!("PULSE_HEROKU_PLUGIN_WASM"));

/// The largest management API request body.
const MAX_API_BODY_BYTES: usize = 64 << 10;

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A component to load instead of the built-in Heroku plugin.
    pub plugin: Option<PathBuf>,
    /// The base URL Heroku reaches this host at; `http://{listen}` when not given.
    pub public_url: Option<String>,
    /// The admin token; generated into the data directory when not given.
    pub admin_token: Option<String>,
    pub limits: Limits,
    /// Heroku's URLs and the OAuth client.
    pub heroku: HerokuConfig,
    /// The key that seals credentials (base64, 32 bytes); generated into the data directory
    /// when not given.
    pub encryption_key: Option<String>,
    /// Where Slack is, and the bot token that shares run output.
    pub slack: SlackConfig,
    /// What runs webhook deliveries.
    pub handler: DeliveryHandler,
    /// How long clients may take to send a request.
    pub timeouts: Timeouts,
}

/// How long a client may take to send a request before it is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To send a request's headers; also how long an idle keep-alive connection stays open.
    pub headers: Duration,
    /// The longest pause while sending a body; past it the answer is 408.
    pub body_pause: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            headers: Duration::from_secs(10),
            body_pause: Duration::from_secs(30),
        }
    }
}

/// What runs webhook deliveries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeliveryHandler {
    /// The plugin component, in the sandbox.
    #[default]
    Sandbox,
    /// The Heroku core compiled into the host, without a sandbox: a build for benchmarks that
    /// measure what the sandbox costs.
    #[cfg(feature = "native-handler")]
    Native,
}

impl ServeConfig {
    /// The defaults of `pulse-host serve`, on `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> ServeConfig {
        ServeConfig {
            listen,
            data_dir,
            plugin: None,
            public_url: None,
            admin_token: None,
            limits: Limits::default(),
            heroku: HerokuConfig::default(),
            encryption_key: None,
            slack: SlackConfig::default(),
            handler: DeliveryHandler::default(),
            timeouts: Timeouts::default(),
        }
    }
}

/// The host's parts, opened from a data directory: what the server's handlers and the CLI's
/// commands work with.
#[derive(Clone)]
pub struct Host {
    pub admin: Admin,
    pub plugin: Plugin,
    pub connector: Connector,
    pub runner: Runner,
    pub handler: DeliveryHandler,
    runtime: Arc<Runtime>,
}

impl Host {
    /// Opens the data directory, the database, the vault and the plugin. `public_url` is
    /// where Heroku and browsers reach the host.
    pub fn open(
        config: &ServeConfig,
        data_dir: &DataDir,
        public_url: &str,
    ) -> Result<Host, StartError> {
        let database = Database::open(&data_dir.database())?;
        let vault = Vault::open(config.encryption_key.as_deref(), &data_dir.encryption_key())?;
        let runtime = Arc::new(Runtime::new(config.limits)?);
        let plugin = match &config.plugin {
            Some(path) => runtime.load_file(path, &data_dir.compiled())?,
            None => runtime.load(HEROKU_PLUGIN, &data_dir.compiled())?,
        };
        let admin = Admin::new(database, public_url);
        let connector = Connector::new(admin.clone(), vault, config.heroku.clone(), plugin.clone());
        let runner = Runner::new(
            connector.clone(),
            admin.database().clone(),
            data_dir.runs(),
            Slack::new(config.slack.clone()),
            public_url,
        );
        Ok(Host {
            admin,
            plugin,
            connector,
            runner,
            handler: config.handler,
            runtime,
        })
    }
}

/// State shared by every request handler.
#[derive(Clone)]
pub struct AppState {
    pub(crate) host: Host,
    admin_token: Arc<str>,
}

/// A server that is listening.
pub struct Server {
    addr: SocketAddr,
    admin_token: String,
    token_source: TokenSource,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    _runtime: Arc<Runtime>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Database(#[from] crate::database::DatabaseError),
    #[error(transparent)]
    Plugin(#[from] crate::sandbox::LoadError),
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Server {
    /// Opens the data directory, loads the plugin and starts listening. Returns once the
    /// listener is bound, so requests can be sent as soon as this returns.
    pub async fn start(config: ServeConfig) -> Result<Server, StartError> {
        let data_error = |source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        };
        let data_dir = DataDir::open(&config.data_dir).map_err(data_error)?;
        let (admin_token, token_source) = data_dir
            .admin_token(config.admin_token.as_deref())
            .map_err(data_error)?;

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));

        let host = Host::open(&config, &data_dir, &public_url)?;
        let abandoned = host.admin.database().abandon_runs(&crate::model::now())?;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "runs left going when the host last stopped are marked failed"
            );
        }
        let runtime = host.runtime.clone();
        let state = AppState {
            host,
            admin_token: admin_token.clone().into(),
        };
        let (shutdown, stopped) = oneshot::channel::<()>();
        let app = router(state, config.timeouts.body_pause);
        let task = tokio::spawn(accept_loop(listener, app, config.timeouts.headers, stopped));
        tracing::info!(
            %addr,
            data_dir = %config.data_dir.display(),
            allocation = ?runtime.allocation(),
            "pulse-host listening"
        );
        Ok(Server {
            addr,
            admin_token,
            token_source,
            shutdown: Some(shutdown),
            task,
            _runtime: runtime,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin token the API expects.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Where the admin token came from; `Generated` means this start created it.
    pub fn token_source(&self) -> &TokenSource {
        &self.token_source
    }

    /// Stops accepting connections, finishes the requests in flight and returns.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.task).await.map_err(std::io::Error::other)?
    }

    /// Serves until `signal` resolves, then stops gracefully; returns early if serving fails.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        tokio::select! {
            _ = signal => {}
            result = &mut self.task => return result.map_err(std::io::Error::other)?,
        }
        self.stop().await
    }
}

/// The most a request's target and headers may take; past it the answer is 431. hyper's read
/// buffer is capped at this size too (bodies stream through it, so they are not limited), but
/// a head that arrives in one read can pass that cap, so [`limit_head`] checks it again.
const MAX_HEADER_BYTES: usize = 64 << 10;

/// The most connections served at once. Past it, new connections wait in the listen
/// backlog, so slow or idle clients cannot use up the process's file descriptors.
const MAX_CONNECTIONS: usize = 1024;

/// Serves HTTP/1.1 connections until `stopped` fires, then lets the requests in flight finish.
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    stopped: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    tokio::pin!(stopped);

    loop {
        let permit = tokio::select! {
            _ = &mut stopped => break,
            permit = connections.clone().acquire_owned() => permit.expect("never closed"),
        };
        let stream = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Running out of descriptors and similar are transient: pause, go on.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn router(state: AppState, body_pause: Duration) -> Router {
    let api = Router::new()
        .route("/integrations", get(list_integrations))
        .route(
            "/integrations/{name}",
            put(put_integration).get(get_integration),
        )
        .route(
            "/integrations/{name}/heroku/connect-link",
            post(create_connect_link),
        )
        .route(
            "/integrations/{name}/heroku",
            axum::routing::delete(disconnect_heroku),
        )
        .route("/integrations/{name}/actions", get(run_api::describe))
        .route(
            "/integrations/{name}/actions/{action}",
            post(run_api::run_action),
        )
        .route("/integrations/{name}/runs", get(run_api::list_runs))
        .route("/runs/{id}", get(run_api::get_run))
        .route("/runs/{id}/output", get(run_api::run_output))
        .route("/incidents/{id}/timeline", get(run_api::timeline))
        .route("/services", get(list_services))
        .route("/services/{name}", put(put_service).delete(delete_service))
        .route("/pulses", get(list_pulses))
        .route("/pulses/{id}/raw", get(pulse_raw))
        .layer(DefaultBodyLimit::max(MAX_API_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));

    Router::new()
        .route("/webhooks/heroku/{integration}", post(webhook::receive))
        .route("/integrations/{name}/heroku/connect", get(oauth::connect))
        .route("/oauth/heroku/callback", get(oauth::callback))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .nest("/api", api)
        .fallback(|| async {
            error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(limit_head))
        .layer(RequestBodyTimeoutLayer::new(body_pause))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the host failed on this request",
            )
        }))
        .with_state(state)
}

/// Refuses a request whose target and headers together pass [`MAX_HEADER_BYTES`].
async fn limit_head(request: Request, next: Next) -> Response {
    let headers: usize = request
        .headers()
        .iter()
        // Each header line also has ": " and "\r\n".
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if headers + target > MAX_HEADER_BYTES {
        return error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            &format!("a request's target and headers are limited to {MAX_HEADER_BYTES} bytes"),
        );
    }
    next.run(request).await
}

/// The JSON error every endpoint answers with.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match self {
            AdminError::Invalid(message) => {
                error_response(StatusCode::BAD_REQUEST, "invalid", &message)
            }
            AdminError::NotFound(message) => {
                error_response(StatusCode::NOT_FOUND, "not_found", &message)
            }
            AdminError::Internal(detail) => {
                tracing::error!(error = %detail, "a management request failed");
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the host failed on this request; it logged why",
                )
            }
            AdminError::Database(err) => {
                tracing::error!(error = %err, "a management request failed");
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the host's database failed; it logged why",
                )
            }
        }
    }
}

/// The bearer token of a request, when it has exactly one `Authorization` header.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    // A repeated header is refused rather than guessed at.
    match (values.next(), values.next()) {
        // The scheme is case-insensitive (RFC 9110), the token is not.
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token),
        _ => None,
    }
}

impl AppState {
    /// Whether the request carries the admin token.
    pub(crate) fn is_admin(&self, headers: &axum::http::HeaderMap) -> bool {
        bearer(headers)
            .is_some_and(|token| bool::from(token.as_bytes().ct_eq(self.admin_token.as_bytes())))
    }
}

async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = bearer(request.headers());
    let accepted = state.is_admin(request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    if accepted {
        let response = next.run(request).await;
        if method != axum::http::Method::GET {
            tracing::info!(%method, path = %path.escape_debug(), status = response.status().as_u16(), "api");
        }
        return response;
    }
    tracing::warn!(%method, path = %path.escape_debug(), "api request refused: no valid admin token");
    let message = if presented.is_some() {
        "the admin token is wrong"
    } else {
        "send the admin token as `Authorization: Bearer <token>`"
    };
    let mut response = error_response(StatusCode::UNAUTHORIZED, "unauthorized", message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// A failed request, answered with the JSON error body.
pub struct ApiError(Response);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0
    }
}

impl ApiError {
    /// An error answered with `response`, normally one made by [`error_response`].
    pub(crate) fn from_response(response: Response) -> ApiError {
        ApiError(response)
    }
}

impl From<AdminError> for ApiError {
    fn from(err: AdminError) -> Self {
        ApiError(err.into_response())
    }
}

/// A path parameter; a bad one is a JSON 400.
pub(crate) struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError(error_response(
                StatusCode::BAD_REQUEST,
                "invalid",
                &rejection.body_text(),
            ))),
        }
    }
}

/// Reads a request body of at most `limit` bytes. The answer when it cannot: 413 when the
/// body is declared or turns out larger, 408 when the client pauses past the body timeout,
/// 400 when the connection fails.
pub(crate) async fn read_body(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<Bytes, Response> {
    refuse_declared_length(headers, limit)?;
    match axum::body::to_bytes(body, limit).await {
        Ok(body) => Ok(body),
        Err(err) if caused_by::<http_body_util::LengthLimitError>(&err) => Err(too_large(limit)),
        Err(err) if caused_by::<tower_http::timeout::TimeoutError>(&err) => Err(error_response(
            StatusCode::REQUEST_TIMEOUT,
            "timed_out",
            "the body arrived too slowly",
        )),
        Err(_) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body could not be read",
        )),
    }
}

/// A 413 for a request whose `Content-Length` is above `limit`, before its body is read.
pub(crate) fn refuse_declared_length(
    headers: &axum::http::HeaderMap,
    limit: usize,
) -> Result<(), Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => Err(too_large(limit)),
        _ => Ok(()),
    }
}

fn too_large(limit: usize) -> Response {
    let message = format!("request bodies here are limited to {limit} bytes");
    error_response(StatusCode::PAYLOAD_TOO_LARGE, "too_large", &message)
}

fn caused_by<E: std::error::Error + 'static>(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if current.is::<E>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// A query string: one that does not fit `T` (a wrong type, a repeated field) is a 400 that
/// says why.
pub(crate) struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError(error_response(
                StatusCode::BAD_REQUEST,
                "invalid",
                &rejection.body_text(),
            ))),
        }
    }
}

/// A JSON request body: another content type is a 415, a body above the limit a 413, and
/// unknown fields or wrong types a 400 that says which.
pub(crate) struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError(error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            )));
        }
        let (parts, body) = request.into_parts();
        let body = read_body(&parts.headers, body, MAX_API_BODY_BYTES)
            .await
            .map_err(ApiError)?;
        serde_json::from_slice(&body).map(ApiJson).map_err(|err| {
            let message = format!("the body is not valid: {err}");
            ApiError(error_response(StatusCode::BAD_REQUEST, "invalid", &message))
        })
    }
}

/// Runs a blocking management operation off the async workers.
async fn blocking<T, F>(state: &AppState, operation: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Admin) -> Result<T, AdminError> + Send + 'static,
{
    let admin = state.host.admin.clone();
    let result = tokio::task::spawn_blocking(move || operation(&admin))
        .await
        .unwrap_or_else(|err| Err(AdminError::Internal(err.to_string())));
    Ok(result?)
}

/// 201 for something new, 200 for an update.
fn saved(created: bool, body: impl serde::Serialize) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, axum::Json(body)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntegrationBody {
    apps: Vec<String>,
}

async fn put_integration(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<IntegrationBody>,
) -> Result<Response, ApiError> {
    let (mut view, created) = {
        let name = name.clone();
        blocking(&state, move |admin| {
            admin.put_integration(&name, &body.apps)
        })
        .await?
    };
    if view.connection == crate::model::Connection::Connected {
        match state.host.connector.apply(&name).await {
            Ok(webhooks) => view.webhooks = webhooks,
            Err(err) => view.apply_error = Some(err.to_string()),
        }
        if let Ok(Some(found)) = state.host.admin.database().integration(&name) {
            view.connection = found.connection;
        }
    }
    Ok(saved(created, view))
}

async fn get_integration(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let view = blocking(&state, move |admin| admin.integration(&name)).await?;
    Ok(axum::Json(view).into_response())
}

async fn list_integrations(State(state): State<AppState>) -> Result<Response, ApiError> {
    let list = blocking(&state, |admin| admin.integrations()).await?;
    Ok(axum::Json(json!({ "integrations": list })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceBody {
    heroku_app_name: String,
}

async fn put_service(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ServiceBody>,
) -> Result<Response, ApiError> {
    let (service, created) = blocking(&state, move |admin| {
        admin.put_service(&name, &body.heroku_app_name)
    })
    .await?;
    Ok(saved(created, service))
}

async fn list_services(State(state): State<AppState>) -> Result<Response, ApiError> {
    let list = blocking(&state, |admin| admin.services()).await?;
    Ok(axum::Json(json!({ "services": list })).into_response())
}

async fn delete_service(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    blocking(&state, move |admin| admin.delete_service(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PulseParams {
    service: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list_pulses(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<PulseParams>,
) -> Result<Response, ApiError> {
    let limit = match params.limit.as_deref().map(str::parse::<usize>) {
        None => None,
        Some(Ok(limit)) => Some(limit),
        Some(Err(_)) => {
            let message = format!("limit must be 1 to {}", crate::admin::MAX_PAGE);
            return Err(ApiError(error_response(
                StatusCode::BAD_REQUEST,
                "invalid",
                &message,
            )));
        }
    };
    let query = PulseQuery {
        service: params.service,
        limit,
        cursor: params.cursor,
    };
    let page = blocking(&state, move |admin| admin.pulses(&query)).await?;
    Ok(axum::Json(page).into_response())
}

async fn pulse_raw(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    let raw = blocking(&state, move |admin| admin.pulse_raw(id)).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], raw).into_response())
}

/// The status and code a connection error is answered with.
pub(crate) fn connect_status(err: &ConnectError) -> (StatusCode, &'static str) {
    match err {
        ConnectError::NotConfigured(_) => (StatusCode::CONFLICT, "not_configured"),
        ConnectError::NotConnected(_) => (StatusCode::CONFLICT, "not_connected"),
        ConnectError::Reconnect(_) => (StatusCode::CONFLICT, "reconnect"),
        ConnectError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        ConnectError::BadState => (StatusCode::BAD_REQUEST, "bad_state"),
        ConnectError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        ConnectError::Identity(_) => (StatusCode::BAD_GATEWAY, "heroku_identity"),
        ConnectError::Plugin(_) => (StatusCode::INTERNAL_SERVER_ERROR, "plugin_failed"),
        ConnectError::Database(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl From<ConnectError> for ApiError {
    fn from(err: ConnectError) -> Self {
        let (status, code) = connect_status(&err);
        if status.is_server_error() {
            tracing::error!(error = %err, "a connection request failed");
        }
        ApiError(error_response(status, code, &err.to_string()))
    }
}

async fn create_connect_link(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let connector = state.host.connector.clone();
    let (url, expires_at) = tokio::task::spawn_blocking(move || connector.connect_link(&name))
        .await
        .map_err(|err| ApiError::from(AdminError::Internal(err.to_string())))??;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"url": url, "expires_at": expires_at})),
    )
        .into_response())
}

async fn disconnect_heroku(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let report = state.host.connector.disconnect(&name).await?;
    Ok(axum::Json(report).into_response())
}
