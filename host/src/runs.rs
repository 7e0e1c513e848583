//! Runs of a plugin's actions, for the API and the CLI alike: checking the request, recording
//! the run, spooling its output to a file in the data directory as it arrives, and following
//! that file so a caller sees the output live while memory stays flat however long it is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::connection::{ConnectError, Connector};
use crate::database::{Database, DatabaseError};
use crate::model::{self, Connection, Run};
use crate::sandbox::{
    ActionError, Exit, Invocation, Param, ParamValue, Progress, RunResult, RunSink,
};
use crate::slack::Slack;

/// The largest piece of output handed to a follower at once.
const READ_CHUNK: usize = 64 << 10;

/// A request to run an action.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub integration: String,
    pub action: String,
    /// The parameters, by name.
    pub params: Map<String, Value>,
    /// What the run is for: `{"incident": {"id": ..., "title": ..., ...}}`.
    pub context: Value,
    /// Who asked: `admin` for the API, `cli:<user>` for the CLI.
    pub actor: String,
}

/// Why a run did not happen or did not finish; the messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    UnknownAction(String),
    #[error("the command template cannot be rendered: {0}")]
    Template(String),
    #[error("{0}")]
    NotPermitted(String),
    #[error("Heroku answered {status} {id}: {message}{request}")]
    Heroku {
        status: u16,
        id: String,
        message: String,
        request: String,
    },
    #[error("a request to Heroku failed: {0}")]
    Transport(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the plugin failed: {0}")]
    Plugin(String),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("cannot spool the run's output: {0}")]
    Spool(#[from] std::io::Error),
}

/// A run that has been accepted and is going on in the background.
pub struct StartedRun {
    pub id: i64,
    /// Follows the output as it is written.
    pub output: OutputTail,
    /// How far the run has got.
    pub progress: watch::Receiver<Progress>,
    /// The run's record once it is over.
    pub outcome: JoinHandle<Result<Run, RunError>>,
}

/// Starts, records and follows runs.
#[derive(Clone)]
pub struct Runner {
    connector: Connector,
    database: Database,
    dir: PathBuf,
    slack: Slack,
    public_url: String,
}

impl Runner {
    /// `dir` holds the runs' output files.
    pub fn new(
        connector: Connector,
        database: Database,
        dir: PathBuf,
        slack: Slack,
        public_url: &str,
    ) -> Runner {
        Runner {
            connector,
            database,
            dir,
            slack,
            public_url: public_url.trim_end_matches('/').to_string(),
        }
    }

    /// Where a run's output is kept.
    pub fn output_path(&self, id: i64) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// The link to a run's output (it needs the admin token).
    pub fn output_url(&self, id: i64) -> String {
        format!("{}/api/runs/{id}/output", self.public_url)
    }

    /// Checks the request, records the run and starts it in the background: it goes on to
    /// its end even when the caller stops following it.
    pub async fn start(&self, request: RunRequest) -> Result<StartedRun, RunError> {
        let integration = self.connector.existing(&request.integration)?;
        match &integration.connection {
            Connection::Connected => {}
            Connection::Never => {
                return Err(ConnectError::NotConnected(integration.name.clone()).into());
            }
            Connection::Disconnected(reason) => {
                return Err(ConnectError::Reconnect(reason.clone()).into());
            }
        }
        let incident_id = check_context(&request.context)?;
        let params = wit_params(&request.params)?;
        let invocation = Invocation {
            action: request.action.clone(),
            params,
            context_json: request.context.to_string(),
        };
        let context = self.connector.context(&integration.name)?;

        std::fs::create_dir_all(&self.dir)?;
        let id = self.database.start_run(
            &integration.name,
            &request.action,
            &request.actor,
            Some(&incident_id),
            &Value::Object(request.params.clone()),
            &model::now(),
        )?;
        let path = self.output_path(id);
        let spool = create_private(&path)?;
        let (progress, watching) = watch::channel(Progress::default());
        let progress = Arc::new(progress);
        let output = OutputTail::open(&path, watching.clone()).await?;
        tracing::info!(
            integration = %integration.name,
            run = id,
            action = %request.action,
            actor = %request.actor,
            "run started"
        );

        let runner = self.clone();
        let outcome = tokio::spawn(async move {
            let make_sink = || -> std::io::Result<RunSink> {
                Ok(RunSink {
                    run_id: id,
                    spool: spool.try_clone()?,
                    spool_path: path.clone(),
                    output_url: runner.output_url(id),
                    progress: progress.clone(),
                    slack: runner.slack.clone(),
                    truncated: false,
                })
            };
            let result = runner
                .connector
                .run_action(&context, &invocation, &make_sink)
                .await;
            drop(spool);
            let written = progress.borrow().written;
            // The followers see the output end once every sender is gone.
            drop(progress);
            runner.finish(id, &context.integration, result, written)
        });
        Ok(StartedRun {
            id,
            output,
            progress: watching,
            outcome,
        })
    }

    /// Records how a run ended and returns its record, or the error that ended it.
    fn finish(
        &self,
        id: i64,
        integration: &str,
        result: Result<Result<RunResult, ActionError>, ConnectError>,
        written: u64,
    ) -> Result<Run, RunError> {
        let now = model::now();
        let outcome = match result {
            Ok(Ok(result)) => Ok(result_json(&result, &self.output_url(id))),
            Ok(Err(error)) => Err(action_error(error)),
            Err(error) => Err(RunError::Connect(error)),
        };
        match &outcome {
            Ok(result) => {
                self.database
                    .finish_run(id, Some(result), None, written, &now)?;
                tracing::info!(
                    integration,
                    run = id,
                    dyno = %result["dyno"].as_str().unwrap_or(""),
                    exit_status = %result["exit_status"],
                    timed_out = %result["timed_out"],
                    output_bytes = written,
                    "run finished"
                );
            }
            Err(error) => {
                let message = error.to_string();
                self.database
                    .finish_run(id, None, Some(&message), written, &now)?;
                tracing::warn!(integration, run = id, error = %message, "run failed");
            }
        }
        outcome?;
        Ok(self
            .database
            .run(id)?
            .expect("the run was recorded before it started"))
    }
}

/// The incident context must be an object whose `incident` is an object with an `id`;
/// returns the id as text.
fn check_context(context: &Value) -> Result<String, RunError> {
    let invalid = |message: &str| Err(RunError::Invalid(message.to_string()));
    let Some(incident) = context.get("incident").filter(|i| i.is_object()) else {
        return invalid("context.incident must be an object (with id, title, severity, ...)");
    };
    let id = match &incident["id"] {
        Value::String(id) => id.clone(),
        Value::Number(n) => n.to_string(),
        _ => return invalid("context.incident.id is required (text or a number)"),
    };
    model::check_incident_id(&id).map_err(|err| RunError::Invalid(err.0))?;
    Ok(id)
}

/// JSON parameters as the WIT's typed values.
fn wit_params(params: &Map<String, Value>) -> Result<Vec<Param>, RunError> {
    params
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Value::String(text) => ParamValue::Text(text.clone()),
                Value::Bool(b) => ParamValue::Boolean(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(n) => ParamValue::Integer(n),
                    None => {
                        return Err(RunError::Invalid(format!(
                            "params.{} must be a whole number",
                            model::shorten(name)
                        )));
                    }
                },
                Value::Array(items) => ParamValue::TextList(
                    items
                        .iter()
                        .map(|item| item.as_str().map(str::to_string))
                        .collect::<Option<_>>()
                        .ok_or_else(|| {
                            RunError::Invalid(format!(
                                "params.{} must be a list of text",
                                model::shorten(name)
                            ))
                        })?,
                ),
                Value::Null | Value::Object(_) => {
                    return Err(RunError::Invalid(format!(
                        "params.{} must be text, a whole number, true or false, or a list of \
                         text",
                        model::shorten(name)
                    )));
                }
            };
            Ok(Param {
                name: name.clone(),
                value,
            })
        })
        .collect()
}

fn result_json(result: &RunResult, output_url: &str) -> Value {
    let (exit_status, timed_out) = match result.exit {
        Exit::Status(status) => (json!(status), false),
        Exit::TimedOut => (Value::Null, true),
    };
    json!({
        "dyno": result.dyno,
        "exit_status": exit_status,
        "timed_out": timed_out,
        "duration_ms": result.duration_ms,
        "output_bytes": result.output_bytes,
        "command": result.command,
        "shares": result.shares.iter().map(|share| json!({
            "channel": share.channel,
            "error": share.error,
        })).collect::<Vec<_>>(),
        "timeline_recorded": result.timeline_recorded,
        "timeline_error": result.timeline_error,
        "output_url": output_url,
    })
}

fn action_error(error: ActionError) -> RunError {
    match error {
        ActionError::UnknownAction(m) => RunError::UnknownAction(m),
        ActionError::InvalidParams(m) => RunError::Invalid(m),
        ActionError::Template(m) => RunError::Template(m),
        ActionError::NotPermitted(m) => RunError::NotPermitted(m),
        ActionError::Unauthenticated(e) | ActionError::HerokuApi(e) => RunError::Heroku {
            status: e.status,
            id: e.id,
            message: e.message,
            request: e
                .request_id
                .map(|id| format!(" (request {id})"))
                .unwrap_or_default(),
        },
        ActionError::Transport(m) => RunError::Transport(m),
        ActionError::Internal(m) => RunError::Plugin(m),
    }
}

/// Creates a file only its owner can read: run output may hold anything.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Reads a run's output file as it grows, until the run is over and all of it is read.
pub struct OutputTail {
    file: tokio::fs::File,
    offset: u64,
    progress: watch::Receiver<Progress>,
    closed: bool,
}

impl OutputTail {
    async fn open(path: &Path, progress: watch::Receiver<Progress>) -> std::io::Result<Self> {
        Ok(OutputTail {
            file: tokio::fs::File::open(path).await?,
            offset: 0,
            progress,
            closed: false,
        })
    }

    /// The next piece of output, waiting for it; `None` once the run is over and everything
    /// was read.
    pub async fn next(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            let written = self.progress.borrow_and_update().written;
            if written > self.offset {
                let want = (written - self.offset).min(READ_CHUNK as u64) as usize;
                let mut buffer = vec![0; want];
                self.file
                    .seek(std::io::SeekFrom::Start(self.offset))
                    .await?;
                self.file.read_exact(&mut buffer).await?;
                self.offset += want as u64;
                return Ok(Some(buffer));
            }
            if self.closed {
                return Ok(None);
            }
            if self.progress.changed().await.is_err() {
                self.closed = true;
            }
        }
    }
}

/// Splits bytes into text without breaking a character across two pieces.
#[derive(Debug, Default)]
pub struct Utf8Pieces {
    carry: Vec<u8>,
}

impl Utf8Pieces {
    /// The text of `bytes` after what was carried; an unfinished character at the end is kept
    /// for the next piece, and bytes that are not UTF-8 become U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.carry.extend_from_slice(bytes);
        let keep = match std::str::from_utf8(&self.carry) {
            Ok(_) => 0,
            Err(err) if err.error_len().is_none() => self.carry.len() - err.valid_up_to(),
            Err(_) => 0,
        };
        let rest = self.carry.split_off(self.carry.len() - keep);
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry = rest;
        text
    }

    /// Whatever is left, once the output has ended.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_pieces_are_joined() {
        let mut pieces = Utf8Pieces::default();
        let text = "naïve ✓".as_bytes();
        assert_eq!(pieces.push(&text[..3]), "na");
        assert_eq!(pieces.push(&text[3..8]), "ïve ");
        assert_eq!(pieces.push(&text[8..]), "✓");
        assert_eq!(pieces.push(b"\xff!"), "\u{fffd}!");
        assert_eq!(pieces.push(b"\xe2\x9c"), "");
        assert_eq!(pieces.finish(), "\u{fffd}");
    }

    #[test]
    fn the_context_needs_an_incident_with_an_id() {
        assert_eq!(
            check_context(&json!({"incident": {"id": 42}})).unwrap(),
            "42"
        );
        for bad in [
            json!({}),
            json!({"incident": "x"}),
            json!({"incident": {"title": "t"}}),
        ] {
            assert!(
                matches!(check_context(&bad), Err(RunError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn parameters_keep_their_types() {
        let params = json!({"a": "x", "b": 3, "c": true, "d": ["C1", "C2"]});
        let params = wit_params(params.as_object().unwrap()).unwrap();
        assert_eq!(params.len(), 4);
        assert!(matches!(&params[3].value, ParamValue::TextList(list) if list.len() == 2));
        let bad = json!({"e": {"nested": 1}});
        assert!(wit_params(bad.as_object().unwrap()).is_err());
        let bad = json!({"f": 1.5});
        assert!(wit_params(bad.as_object().unwrap()).is_err());
    }
}
