//! A fake Slack Web API on loopback: `chat.postMessage` and the three-step external file upload
//! (`files.getUploadURLExternal`, a POST of the bytes to the upload URL it hands out,
//! `files.completeUploadExternal`), with the channels, bot token and scopes a test gives it.
//!
//! It answers as Slack does where the host depends on it: HTTP 200 with `{"ok": false, "error":
//! code}` for refusals (`not_authed`, `invalid_auth`, `missing_scope` with `needed`,
//! `channel_not_found`, `not_in_channel`, `is_archived`, `invalid_arguments`,
//! `file_not_found`, `no_text`), HTTP 429 with `Retry-After` when asked to rate-limit,
//! form-encoded arguments everywhere and JSON bodies where Slack takes them (not for
//! `files.getUploadURLExternal`). Methods live under `{api_url}/{method}`; uploads under
//! `/upload/v1/{key}`, which need no token. Every request is recorded; upload bodies are
//! counted and hashed, not kept, beyond a small size.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use futures_util::StreamExt as _;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

/// Upload bodies up to this size are kept whole in [`Shared::bytes`]; bigger ones only as a
/// size and a hash, so a 20 MiB test does not keep copies around.
pub const KEPT_BYTES: u64 = 64 * 1024;

/// The largest Web API call body the fake reads.
const MAX_CALL_BODY: usize = 1 << 20;

/// The scopes the bot token has unless a test says otherwise.
const DEFAULT_SCOPES: [&str; 2] = ["chat:write", "files:write"];

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// The path and query.
    pub uri: String,
    pub headers: HeaderMap,
    /// The body of a Web API call; empty for an upload, whose size is in `body_len`.
    pub body: Bytes,
    pub body_len: u64,
    /// The status the fake answered with.
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Whether this was a POST of file bytes to an upload URL.
    pub fn is_upload(&self) -> bool {
        self.uri.starts_with("/upload/")
    }

    /// The Web API method called (`chat.postMessage`), or `None` for an upload.
    pub fn api_method(&self) -> Option<&str> {
        let path = self.uri.split('?').next().unwrap_or_default();
        path.strip_prefix("/api/")
    }
}

/// A file shared in a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    pub channel: String,
    pub file_id: String,
    pub filename: String,
    pub title: String,
    pub initial_comment: Option<String>,
    pub size: u64,
    /// Lowercase hex of the SHA-256 of the bytes uploaded.
    pub sha256: String,
    /// The bytes, for files up to [`KEPT_BYTES`].
    pub bytes: Option<Vec<u8>>,
}

/// A message posted with `chat.postMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub channel: String,
    pub text: String,
}

#[derive(Debug)]
struct Channel {
    member: bool,
    archived: bool,
}

/// What was uploaded to a reserved file.
#[derive(Debug, Clone)]
struct Upload {
    size: u64,
    sha256: String,
    bytes: Option<Vec<u8>>,
}

#[derive(Debug)]
enum FileState {
    /// Reserved by `files.getUploadURLExternal`, no bytes yet.
    Reserved,
    /// The announced length arrived.
    Uploaded(Upload),
    /// Some other length arrived: Slack cannot use the file.
    Unusable,
    Completed,
}

#[derive(Debug)]
struct File {
    filename: String,
    length: u64,
    state: FileState,
}

struct FakeState {
    base: String,
    token: String,
    scopes: BTreeSet<String>,
    channels: BTreeMap<String, Channel>,
    files: HashMap<String, File>,
    /// Upload URL keys to file ids.
    uploads: HashMap<String, String>,
    rate_limited: u32,
    shares: Vec<Shared>,
    messages: Vec<Message>,
    requests: Vec<Recorded>,
}

type SharedState = Arc<Mutex<FakeState>>;

/// A running fake Slack. Dropping it stops the server.
pub struct FakeSlack {
    state: SharedState,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSlack {
    fn drop(&mut self) {
        self.task.abort();
    }
}

static SEQUENCE: AtomicU64 = AtomicU64::new(1);

/// `len` characters from `alphabet`, different on every call and across test runs.
fn random(alphabet: &[u8], len: usize) -> String {
    let seed = RandomState::new();
    let serial = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    (0..len)
        .map(|i| {
            let pick = seed.hash_one((serial, i)) as usize % alphabet.len();
            alphabet[pick] as char
        })
        .collect()
}

const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

impl FakeSlack {
    /// Starts the fake on an ephemeral loopback port, with a bot token and no channels.
    pub async fn start() -> FakeSlack {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState {
            base: format!("http://{addr}"),
            token: format!("xoxb-{}-{}", random(b"0123456789", 12), random(LOWER, 24)),
            scopes: DEFAULT_SCOPES
                .iter()
                .map(|scope| scope.to_string())
                .collect(),
            channels: BTreeMap::new(),
            files: HashMap::new(),
            uploads: HashMap::new(),
            rate_limited: 0,
            shares: Vec::new(),
            messages: Vec::new(),
            requests: Vec::new(),
        }));
        let router = Router::new()
            .route("/api/{method}", any(api))
            .route("/upload/v1/{key}", post(upload))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        FakeSlack { state, addr, task }
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// The Web API's base, as `SlackConfig::api_url`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// The bot token the fake accepts; any other is `invalid_auth`.
    pub fn token(&self) -> String {
        self.state().token.clone()
    }

    /// Makes a channel known; `member` says whether the app is in it.
    pub fn add_channel(&self, id: &str, member: bool) {
        self.state().channels.insert(
            id.to_string(),
            Channel {
                member,
                archived: false,
            },
        );
    }

    /// Archives a known channel.
    pub fn archive_channel(&self, id: &str) {
        self.state().channels.get_mut(id).unwrap().archived = true;
    }

    /// Replaces the token's scopes.
    pub fn set_scopes(&self, scopes: &[&str]) {
        self.state().scopes = scopes.iter().map(|scope| scope.to_string()).collect();
    }

    /// The next `n` Web API calls (not uploads) are answered 429 with `Retry-After: 1`.
    pub fn rate_limit_next(&self, n: u32) {
        self.state().rate_limited = n;
    }

    /// Every file shared so far, in order.
    pub fn shares(&self) -> Vec<Shared> {
        self.state().shares.clone()
    }

    /// Every message posted so far, in order.
    pub fn messages(&self) -> Vec<Message> {
        self.state().messages.clone()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }
}

/// Slack's refusal: HTTP 200 and `ok: false`.
fn refuse(code: &str) -> Value {
    json!({"ok": false, "error": code})
}

/// A Web API call: `POST /api/{method}` (Slack also takes GET with a query string).
async fn api(
    State(state): State<SharedState>,
    Path(method): Path<String>,
    http_method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = axum::body::to_bytes(body, MAX_CALL_BODY)
        .await
        .unwrap_or_default();
    let mut state = state.lock().unwrap();
    let (status, answer) = answer_call(&mut state, &method, &uri, &headers, &body);
    let mut response = (status, axum::Json(answer)).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, "1".parse().unwrap());
    }
    state.requests.push(Recorded {
        method: http_method,
        uri: uri.to_string(),
        headers,
        body_len: body.len() as u64,
        body,
        status: status.as_u16(),
    });
    response
}

fn answer_call(
    state: &mut FakeState,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, Value) {
    if state.rate_limited > 0 {
        state.rate_limited -= 1;
        return (StatusCode::TOO_MANY_REQUESTS, refuse("ratelimited"));
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    let args = match arguments(uri, body, is_json) {
        Some(args) => args,
        None => return (StatusCode::OK, refuse("invalid_form_data")),
    };

    // Slack reads the token from the header, or from a form or query argument; never from a
    // JSON body.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let argument = (!is_json)
        .then(|| args.get("token").and_then(Value::as_str))
        .flatten();
    match bearer.or(argument) {
        None => return (StatusCode::OK, refuse("not_authed")),
        Some(token) if token != state.token => return (StatusCode::OK, refuse("invalid_auth")),
        Some(_) => {}
    }

    let (scope, takes_json) = match method {
        "files.getUploadURLExternal" => ("files:write", false),
        "files.completeUploadExternal" => ("files:write", true),
        "chat.postMessage" => ("chat:write", true),
        _ => return (StatusCode::OK, refuse("unknown_method")),
    };
    if !state.scopes.contains(scope) {
        let provided: Vec<&str> = state.scopes.iter().map(String::as_str).collect();
        let answer = json!({
            "ok": false,
            "error": "missing_scope",
            "needed": scope,
            "provided": provided.join(","),
        });
        return (StatusCode::OK, answer);
    }
    // Slack does not read a JSON body for this method: the arguments look missing.
    if is_json && !takes_json {
        return (StatusCode::OK, refuse("invalid_arguments"));
    }

    let answer = match method {
        "files.getUploadURLExternal" => reserve(state, &args),
        "files.completeUploadExternal" => complete(state, &args),
        _ => post_message(state, &args),
    };
    (StatusCode::OK, answer.unwrap_or_else(refuse))
}

/// The call's arguments: the query string's, then the body's (a JSON object or a form).
fn arguments(uri: &Uri, body: &[u8], is_json: bool) -> Option<Map<String, Value>> {
    let mut args = Map::new();
    let query = uri.query().unwrap_or_default().as_bytes();
    for (name, value) in form_urlencoded::parse(query) {
        args.insert(name.into_owned(), Value::String(value.into_owned()));
    }
    if is_json {
        let Value::Object(object) = serde_json::from_slice(body).ok()? else {
            return None;
        };
        args.extend(object);
    } else {
        for (name, value) in form_urlencoded::parse(body) {
            args.insert(name.into_owned(), Value::String(value.into_owned()));
        }
    }
    Some(args)
}

/// A text argument; numbers count too, as Slack reads them.
fn arg(args: &Map<String, Value>, name: &str) -> Option<String> {
    match args.get(name)? {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Whether the app may use `id`, as Slack checks it: the channel must exist, be open, and have
/// the app as a member.
fn usable_channel(state: &FakeState, id: &str) -> Result<(), &'static str> {
    let channel = state.channels.get(id).ok_or("channel_not_found")?;
    if channel.archived {
        return Err("is_archived");
    }
    if !channel.member {
        return Err("not_in_channel");
    }
    Ok(())
}

/// `files.getUploadURLExternal`: reserves a file of `length` bytes and hands out its URL.
fn reserve(state: &mut FakeState, args: &Map<String, Value>) -> Result<Value, &'static str> {
    let filename = arg(args, "filename").filter(|name| !name.is_empty());
    let length = arg(args, "length").and_then(|length| length.parse::<u64>().ok());
    let (Some(filename), Some(length)) = (filename, length.filter(|length| *length > 0)) else {
        return Err("invalid_arguments");
    };
    let file_id = format!("F{}", random(UPPER, 10));
    let key = random(LOWER, 32);
    state.files.insert(
        file_id.clone(),
        File {
            filename,
            length,
            state: FileState::Reserved,
        },
    );
    state.uploads.insert(key.clone(), file_id.clone());
    let upload_url = format!("{}/upload/v1/{key}", state.base);
    Ok(json!({"ok": true, "upload_url": upload_url, "file_id": file_id}))
}

/// `files.completeUploadExternal`: shares uploaded files in a channel, or keeps them private
/// when none is named.
fn complete(state: &mut FakeState, args: &Map<String, Value>) -> Result<Value, &'static str> {
    let files = match args.get("files") {
        Some(Value::String(encoded)) => serde_json::from_str(encoded).ok(),
        Some(Value::Array(files)) => Some(Value::Array(files.clone())),
        _ => None,
    };
    let Some(Value::Array(files)) = files else {
        return Err("invalid_arguments");
    };
    if files.is_empty() {
        return Err("invalid_arguments");
    }
    let mut wanted = Vec::new();
    for file in &files {
        let id = file["id"].as_str().ok_or("invalid_arguments")?;
        let title = file["title"].as_str();
        let found = state.files.get(id).ok_or("file_not_found")?;
        let upload = match &found.state {
            FileState::Uploaded(upload) => upload.clone(),
            FileState::Completed => return Err("file_not_found"),
            FileState::Reserved | FileState::Unusable => return Err("invalid_arguments"),
        };
        let title = title.unwrap_or(&found.filename).to_string();
        wanted.push((id.to_string(), found.filename.clone(), title, upload));
    }

    let channels: Vec<String> = match (arg(args, "channel_id"), arg(args, "channels")) {
        (Some(channel), _) => vec![channel],
        (None, Some(list)) => list.split(',').map(|c| c.trim().to_string()).collect(),
        (None, None) => Vec::new(),
    };
    for channel in &channels {
        usable_channel(state, channel)?;
    }
    let initial_comment = arg(args, "initial_comment").filter(|comment| !comment.is_empty());

    let mut answered = Vec::new();
    for (file_id, filename, title, upload) in wanted {
        state.files.get_mut(&file_id).unwrap().state = FileState::Completed;
        for channel in &channels {
            state.shares.push(Shared {
                channel: channel.clone(),
                file_id: file_id.clone(),
                filename: filename.clone(),
                title: title.clone(),
                initial_comment: initial_comment.clone(),
                size: upload.size,
                sha256: upload.sha256.clone(),
                bytes: upload.bytes.clone(),
            });
        }
        answered.push(json!({"id": file_id, "title": title}));
    }
    Ok(json!({"ok": true, "files": answered}))
}

/// `chat.postMessage`.
fn post_message(state: &mut FakeState, args: &Map<String, Value>) -> Result<Value, &'static str> {
    let channel = arg(args, "channel").ok_or("channel_not_found")?;
    usable_channel(state, &channel)?;
    let text = arg(args, "text").unwrap_or_default();
    if text.is_empty() && args.get("blocks").is_none() {
        return Err("no_text");
    }
    let serial = state.messages.len() + 1;
    state.messages.push(Message {
        channel: channel.clone(),
        text: text.clone(),
    });
    Ok(json!({
        "ok": true,
        "channel": channel,
        "ts": format!("1700000000.{serial:06}"),
        "message": {"text": text},
    }))
}

/// `POST /upload/v1/{key}`: the file's bytes, read as they arrive, counted and hashed. A body
/// of any other length than the one reserved makes the file unusable, so completing it fails.
async fn upload(
    State(state): State<SharedState>,
    Path(key): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut kept = Vec::new();
    let mut stream = body.into_data_stream();
    let mut broken = false;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            broken = true;
            break;
        };
        hasher.update(&chunk);
        size += chunk.len() as u64;
        if size <= KEPT_BYTES {
            kept.extend_from_slice(&chunk);
        }
    }

    let mut state = state.lock().unwrap();
    let file_id = state.uploads.get(&key).cloned();
    let file = file_id.as_ref().and_then(|id| state.files.get_mut(id));
    let (status, answer) = match file {
        None => (StatusCode::NOT_FOUND, "no such upload".to_string()),
        Some(file) if matches!(file.state, FileState::Completed) => {
            (StatusCode::GONE, "the file is already complete".to_string())
        }
        Some(file) => {
            file.state = if !broken && size == file.length {
                FileState::Uploaded(Upload {
                    size,
                    sha256: format!("{:x}", hasher.finalize()),
                    bytes: (size <= KEPT_BYTES).then_some(kept),
                })
            } else {
                FileState::Unusable
            };
            (StatusCode::OK, format!("OK - {size}"))
        }
    };
    state.requests.push(Recorded {
        method: Method::POST,
        uri: uri.to_string(),
        headers,
        body: Bytes::new(),
        body_len: size,
        status: status.as_u16(),
    });
    (status, answer).into_response()
}
