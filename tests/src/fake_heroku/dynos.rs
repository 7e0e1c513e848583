//! The fake Heroku's one-off dynos and log sessions. A test scripts what the next dyno does
//! (lines of output over time, an exit status, or running until stopped); a log session
//! streams those lines from a third loopback origin as Logplex does, replaying recent lines
//! when it opens and ending early when a test makes sessions expire.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{Shared, find_app, heroku_error, link_validator, timestamp, uuid, valid_body};

/// What the next one-off dyno does.
#[derive(Debug, Clone)]
pub struct Script {
    /// Output lines, each written this long after the dyno starts.
    pub lines: Vec<(Duration, String)>,
    /// `count` copies of a line, written at once when the dyno starts: a large output.
    pub bulk: Option<(usize, String)>,
    /// The exit status and how long after the start it comes; none runs until stopped.
    pub exit: Option<(i32, Duration)>,
    /// A log session ends after streaming this many lines, as an expiring one does.
    pub session_lines: Option<usize>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            lines: Vec::new(),
            bulk: None,
            exit: Some((0, Duration::ZERO)),
            session_lines: None,
        }
    }
}

impl Script {
    /// Prints `lines`, each `(milliseconds after the start, text)`, then exits 0 just after
    /// the last.
    pub fn printing(lines: &[(u64, &str)]) -> Script {
        let last = lines.iter().map(|(ms, _)| *ms).max().unwrap_or(0);
        Script {
            lines: lines
                .iter()
                .map(|(ms, text)| (Duration::from_millis(*ms), text.to_string()))
                .collect(),
            exit: Some((0, Duration::from_millis(last + 50))),
            ..Script::default()
        }
    }

    /// Exits with `status` `ms` after the start instead.
    pub fn exiting(mut self, status: i32, ms: u64) -> Script {
        self.exit = Some((status, Duration::from_millis(ms)));
        self
    }

    /// Runs until it is stopped.
    pub fn never_exiting(mut self) -> Script {
        self.exit = None;
        self
    }
}

/// A dyno the fake created.
#[derive(Debug, Clone)]
pub struct Dyno {
    pub id: String,
    pub app: String,
    pub name: String,
    /// The request body it was created with.
    pub request: Value,
    pub stopped: bool,
    started: Instant,
    started_wall: OffsetDateTime,
    script: Script,
}

impl Dyno {
    fn events(&self) -> usize {
        let bulk = self.script.bulk.as_ref().map_or(0, |(count, _)| *count);
        bulk + self.script.lines.len() + if self.script.exit.is_some() { 2 } else { 0 }
    }

    /// The `index`th line of its log and when it is written, made on demand so a large
    /// output is never held whole.
    fn event(&self, index: usize) -> (Duration, String) {
        let bulk = self.script.bulk.as_ref().map_or(0, |(count, _)| *count);
        let lines = self.script.lines.len();
        let (at, source, text) = if index < bulk {
            let (_, text) = self.script.bulk.as_ref().unwrap();
            (Duration::ZERO, "app", text.clone())
        } else if index < bulk + lines {
            let (at, text) = &self.script.lines[index - bulk];
            (*at, "app", text.clone())
        } else {
            let (status, at) = self.script.exit.unwrap();
            // The state line first: the two come in either order.
            let text = if index == bulk + lines {
                "State changed from up to complete".to_string()
            } else {
                format!("Process exited with status {status}")
            };
            (at, "heroku", text)
        };
        // Strictly increasing microseconds, as Logplex's timestamps are.
        let stamp = self.started_wall + at + Duration::from_micros(index as u64);
        let stamp = stamp
            .format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+00:00"
            ))
            .unwrap();
        (at, format!("{stamp} {source}[{}]: {text}\n", self.name))
    }
}

/// The dynos, scripts and log sessions.
pub(super) struct Dynos {
    pub(super) dynos: Vec<Dyno>,
    scripts: VecDeque<Script>,
    conflicts: u32,
    /// Session id to (dyno index, already opened).
    sessions: HashMap<String, (usize, bool)>,
    pub(super) logs_url: String,
    create_validator: Arc<jsonschema::Validator>,
    session_validator: Arc<jsonschema::Validator>,
}

impl Dynos {
    pub(super) fn new() -> Dynos {
        Dynos {
            dynos: Vec::new(),
            scripts: VecDeque::new(),
            conflicts: 0,
            sessions: HashMap::new(),
            logs_url: String::new(),
            create_validator: Arc::new(link_validator("dyno", "create")),
            session_validator: Arc::new(link_validator("log-session", "create")),
        }
    }
}

impl super::FakeHeroku {
    /// The next dyno created runs `script`; without one a dyno exits 0 at once.
    pub fn script_next_dyno(&self, script: Script) {
        self.state().dynos.scripts.push_back(script);
    }

    /// The next `n` dyno creations answer 409, as right after an app is created.
    pub fn conflict_next_dynos(&self, n: u32) {
        self.state().dynos.conflicts = n;
    }

    /// Every dyno created so far.
    pub fn dynos(&self) -> Vec<Dyno> {
        self.state().dynos.dynos.clone()
    }

    /// The log server's base URL.
    pub fn logs_url(&self) -> String {
        self.state().dynos.logs_url.clone()
    }
}

/// `POST /apps/{app}/dynos`.
pub(super) async fn create_dyno(
    State(state): State<Shared>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    let validator = state.dynos.create_validator.clone();
    let request = match valid_body(&headers, &body, &validator) {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let (name, app) = match find_app(&mut state, &app) {
        Ok(found) => (found.0, found.1.id.clone()),
        Err(refusal) => return refusal,
    };
    if state.dynos.conflicts > 0 {
        state.dynos.conflicts -= 1;
        return heroku_error(
            StatusCode::CONFLICT,
            "conflict",
            "Couldn't find a release to run: deploy the app first.",
        );
    }
    let script = state.dynos.scripts.pop_front().unwrap_or_default();
    let number = 1000 + state.dynos.dynos.len();
    let dyno = Dyno {
        id: uuid(),
        app: name.clone(),
        name: format!("run.{number}"),
        request: request.clone(),
        stopped: false,
        started: Instant::now(),
        started_wall: OffsetDateTime::now_utc(),
        script,
    };
    // Heroku echoes sizes in title case.
    let size = request["size"].as_str().unwrap_or("standard-1X");
    let size = format!("S{}", size.strip_prefix('s').unwrap_or(size));
    let answer = json!({
        "id": dyno.id,
        "name": dyno.name,
        "type": "run",
        "state": "starting",
        "size": size,
        "command": request["command"],
        "attach_url": null,
        "app": {"id": app, "name": name},
        "release": {"id": uuid(), "version": 42},
        "created_at": timestamp(),
        "updated_at": timestamp(),
    });
    state.dynos.dynos.push(dyno);
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

/// `POST /apps/{app}/dynos/{dyno}/actions/stop`.
pub(super) async fn stop_dyno(
    State(state): State<Shared>,
    Path((app, dyno)): Path<(String, String)>,
) -> Response {
    let mut state = state.lock().unwrap();
    let name = match find_app(&mut state, &app) {
        Ok(found) => found.0,
        Err(refusal) => return refusal,
    };
    let found = state
        .dynos
        .dynos
        .iter_mut()
        .find(|d| d.app == name && (d.name == dyno || d.id == dyno));
    let Some(found) = found else {
        return heroku_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "Couldn't find that dyno.",
        );
    };
    found.stopped = true;
    (StatusCode::ACCEPTED, axum::Json(json!({}))).into_response()
}

/// `POST /apps/{app}/log-sessions`.
pub(super) async fn create_log_session(
    State(state): State<Shared>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    let validator = state.dynos.session_validator.clone();
    let request = match valid_body(&headers, &body, &validator) {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let name = match find_app(&mut state, &app) {
        Ok(found) => found.0,
        Err(refusal) => return refusal,
    };
    let wanted = request["dyno_name"].as_str().or(request["dyno"].as_str());
    let index = state
        .dynos
        .dynos
        .iter()
        .position(|d| d.app == name && Some(d.name.as_str()) == wanted);
    let Some(index) = index else {
        return heroku_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "Couldn't find that dyno.",
        );
    };
    let id = uuid();
    state.dynos.sessions.insert(id.clone(), (index, false));
    let url = format!("{}/sessions/{id}?srv=1325419200", state.dynos.logs_url);
    let answer = json!({
        "id": id,
        "logplex_url": url,
        "created_at": timestamp(),
        "updated_at": timestamp(),
    });
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

/// `GET /sessions/{id}` on the log server: the dyno's log, replayed from the start and then
/// as it is written. A session streams once; it ends when the dyno's log does, when the
/// dyno is stopped, or after the script's `session_lines`.
pub(super) async fn stream_session(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Response {
    let (index, dyno) = {
        let mut state = state.lock().unwrap();
        let Some((index, opened)) = state.dynos.sessions.get_mut(&id) else {
            return (StatusCode::NOT_FOUND, "no such session").into_response();
        };
        if *opened {
            return (StatusCode::NOT_FOUND, "session expired").into_response();
        }
        *opened = true;
        let index = *index;
        (index, state.dynos.dynos[index].clone())
    };
    let limit = dyno.script.session_lines;
    let total = dyno.events();
    // The lines already written are replayed; `session_lines` counts only the live ones.
    let replayed = (0..total)
        .take_while(|i| dyno.started + dyno.event(*i).0 <= Instant::now())
        .count();
    let stream = futures_util::stream::unfold(0usize, move |next| {
        let state = state.clone();
        let dyno = dyno.clone();
        async move {
            let live = |at: usize| at.saturating_sub(replayed);
            let expired = |at: usize| limit.is_some_and(|limit| live(at) >= limit);
            if next >= total || expired(next) {
                if next >= total && dyno.script.exit.is_none() {
                    // Runs until stopped: keep the stream open until then.
                    while !state.lock().unwrap().dynos.dynos[index].stopped {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                return None;
            }
            // Lines are sent in pieces of up to 64 KiB, as they come due.
            let mut chunk = Vec::new();
            let mut at = next;
            while at < total && !expired(at) && chunk.len() < 64 << 10 {
                let (offset, line) = dyno.event(at);
                let due = dyno.started + offset;
                if Instant::now() < due {
                    if !chunk.is_empty() {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
                if state.lock().unwrap().dynos.dynos[index].stopped {
                    return None;
                }
                chunk.extend_from_slice(line.as_bytes());
                at += 1;
            }
            Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), at))
        }
    });
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}
