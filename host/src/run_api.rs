//! The run endpoints: `POST /api/integrations/{name}/actions/{action}` runs an action and
//! streams its progress as JSON lines; the rest list actions, runs, a run's output and an
//! incident's timeline.

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::runs::{RunError, RunRequest, StartedRun, Utf8Pieces};
use crate::sandbox::ParamKind;
use crate::server::{ApiError, ApiJson, ApiPath, AppState, error_response};

/// The body of a run request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default)]
    context: Value,
}

impl From<RunError> for ApiError {
    fn from(err: RunError) -> Self {
        let (status, code) = status_of(&err);
        if status.is_server_error() {
            tracing::error!(error = %err, "a run failed");
        }
        ApiError::from_response(error_response(status, code, &err.to_string()))
    }
}

fn status_of(err: &RunError) -> (StatusCode, &'static str) {
    match err {
        RunError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        RunError::UnknownAction(_) => (StatusCode::NOT_FOUND, "unknown_action"),
        RunError::Template(_) => (StatusCode::UNPROCESSABLE_ENTITY, "template"),
        RunError::NotPermitted(_) => (StatusCode::FORBIDDEN, "not_permitted"),
        RunError::Heroku { .. } => (StatusCode::BAD_GATEWAY, "heroku_api"),
        RunError::Transport(_) => (StatusCode::BAD_GATEWAY, "heroku_unreachable"),
        RunError::Connect(err) => crate::server::connect_status(err),
        RunError::Plugin(_) => (StatusCode::INTERNAL_SERVER_ERROR, "plugin_failed"),
        RunError::Database(_) | RunError::Spool(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    }
}

/// `POST /api/integrations/{name}/actions/{action}`: runs the action. A request that cannot
/// run is answered with its JSON error and status; once the dyno is up the answer is 200,
/// `application/x-ndjson`: a `started` line, `output` lines as the output arrives, and a
/// last `result` (or `error`) line.
pub async fn run_action(
    State(state): State<AppState>,
    ApiPath((name, action)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<RunBody>,
) -> Result<Response, ApiError> {
    let request = RunRequest {
        integration: name,
        action,
        params: body.params,
        context: body.context,
        actor: "admin".into(),
    };
    let mut run = state.host.runner.start(request).await?;

    // Until the dyno is up a failure is still an ordinary error answer.
    let started = loop {
        if let Some(started) = run.progress.borrow_and_update().started.clone() {
            break started;
        }
        tokio::select! {
            changed = run.progress.changed() => {
                if changed.is_err() && run.progress.borrow().started.is_none() {
                    // The run ended without starting: its outcome says why.
                    return match (&mut run.outcome).await {
                        Ok(Ok(record)) => Ok(axum::Json(record).into_response()),
                        Ok(Err(err)) => Err(err.into()),
                        Err(err) => Err(RunError::Plugin(err.to_string()).into()),
                    };
                }
            }
        }
    };

    let first =
        json!({"type": "started", "run_id": run.id, "dyno": started.0, "command": started.1});
    let stream =
        futures_util::stream::unfold(Follow::Started(Some(first), run), |state| async move {
            state.step().await
        });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Where a streamed answer stands.
enum Follow {
    Started(Option<Value>, StartedRun),
    Output(Utf8Pieces, StartedRun),
    Done,
}

type Line = Result<Vec<u8>, std::io::Error>;

fn line(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).expect("JSON values serialize");
    bytes.push(b'\n');
    bytes
}

impl Follow {
    async fn step(self) -> Option<(Line, Follow)> {
        match self {
            Follow::Started(first, run) => {
                let first = first?;
                Some((Ok(line(&first)), Follow::Output(Utf8Pieces::default(), run)))
            }
            Follow::Output(mut pieces, mut run) => loop {
                match run.output.next().await {
                    Ok(Some(bytes)) => {
                        let text = pieces.push(&bytes);
                        if text.is_empty() {
                            continue;
                        }
                        let output = line(&json!({"type": "output", "text": text}));
                        return Some((Ok(output), Follow::Output(pieces, run)));
                    }
                    Ok(None) => {
                        let rest = pieces.finish();
                        let last = finish_line(run).await;
                        let mut bytes = Vec::new();
                        if !rest.is_empty() {
                            bytes = line(&json!({"type": "output", "text": rest}));
                        }
                        bytes.extend(last);
                        return Some((Ok(bytes), Follow::Done));
                    }
                    Err(err) => return Some((Err(err), Follow::Done)),
                }
            },
            Follow::Done => None,
        }
    }
}

async fn finish_line(run: StartedRun) -> Vec<u8> {
    match run.outcome.await {
        Ok(Ok(record)) => line(&json!({"type": "result", "run": record})),
        Ok(Err(err)) => {
            let (_, code) = status_of(&err);
            line(&json!({"type": "error", "error": {"code": code, "message": err.to_string()}}))
        }
        Err(err) => line(&json!({"type": "error", "error": {
            "code": "internal", "message": format!("the run's task failed: {err}")
        }})),
    }
}

/// `GET /api/integrations/{name}/actions`: what the plugin offers, for drawing forms.
pub async fn describe(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.host.connector.existing(&name)?;
    let specs = state
        .host
        .plugin
        .describe(state.host.admin.database())
        .await
        .map_err(|err| RunError::Plugin(err.to_string()))?;
    let actions: Vec<Value> = specs
        .into_iter()
        .map(|spec| {
            json!({
                "name": spec.name,
                "title": spec.title,
                "help": spec.help,
                "params": spec.params.into_iter().map(|param| json!({
                    "name": param.name,
                    "kind": kind_name(param.kind),
                    "required": param.required,
                    "default": param.default_value,
                    "allowed": param.allowed,
                    "help": param.help,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "actions": actions })).into_response())
}

fn kind_name(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Text => "text",
        ParamKind::Template => "template",
        ParamKind::App => "app",
        ParamKind::Choice => "choice",
        ParamKind::Integer => "integer",
        ParamKind::Boolean => "boolean",
        ParamKind::Channels => "channels",
    }
}

/// `GET /api/integrations/{name}/runs`: the newest 100 runs.
pub async fn list_runs(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.host.connector.existing(&name)?;
    let database = state.host.admin.database().clone();
    let runs = tokio::task::spawn_blocking(move || database.runs(&name, 100))
        .await
        .map_err(|err| RunError::Plugin(err.to_string()))?
        .map_err(RunError::from)?;
    Ok(axum::Json(json!({ "runs": runs })).into_response())
}

/// `GET /api/runs/{id}`.
pub async fn get_run(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    let run = state
        .host
        .admin
        .database()
        .run(id)
        .map_err(RunError::from)?
        .ok_or_else(|| not_found(id))?;
    Ok(axum::Json(run).into_response())
}

/// `GET /api/runs/{id}/output`: the output as text, streamed from its file.
pub async fn run_output(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    state
        .host
        .admin
        .database()
        .run(id)
        .map_err(RunError::from)?
        .ok_or_else(|| not_found(id))?;
    let file = tokio::fs::File::open(state.host.runner.output_path(id))
        .await
        .map_err(RunError::from)?;
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `GET /api/incidents/{id}/timeline`: the incident's events, oldest first.
pub async fn timeline(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    crate::model::check_incident_id(&id).map_err(|err| RunError::Invalid(err.0))?;
    let database = state.host.admin.database().clone();
    let events = tokio::task::spawn_blocking(move || database.timeline(&id))
        .await
        .map_err(|err| RunError::Plugin(err.to_string()))?
        .map_err(RunError::from)?;
    Ok(axum::Json(json!({ "events": events })).into_response())
}

fn not_found(id: i64) -> ApiError {
    ApiError::from_response(error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no run with id {id}"),
    ))
}
