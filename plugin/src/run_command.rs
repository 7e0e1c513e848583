//! The `run-command` action: renders a command from a Liquid template and the incident
//! context, runs it on a detached one-off dyno, streams its output from a log session as it
//! arrives, finds its exit status (or stops it at its timeout), then shares the output in
//! Slack and records it on the incident's timeline when asked.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::log_session::LogReader;
use crate::platform_api::{ApiError, Chunks, Failure, PlatformApi, Read, Transport};
use crate::subscriptions::is_app_identity;
use crate::template;

/// The action's name in `describe` and `invoke`.
pub const NAME: &str = "run-command";

/// The dyno sizes a run may ask for; the first is the default.
pub const SIZES: [&str; 2] = ["standard-1X", "standard-2X"];

/// The longest a run may take; a longer timeout is capped to it.
pub const MAX_TIMEOUT_SECONDS: i64 = 1800;

/// How often a 409 (the app has no release yet) is retried, and how long apart.
const CONFLICT_RETRIES: u32 = 5;
const CONFLICT_WAIT: Duration = Duration::from_secs(2);

/// How many times in a row a log session may fail to open before the run gives up.
const SESSION_FAILURES: u32 = 5;

/// After the exit status, how long late output and the final state line are waited for.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// The longest single wait on the log stream, so the deadline is checked at least this often.
const POLL: Duration = Duration::from_secs(5);

/// Lines a log session replays when it opens: the most Logplex gives, so output written
/// before the session (or between two sessions) is not lost.
const REPLAY_LINES: u32 = 1500;

/// What a parameter holds, so that a form can draw the right field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Text,
    Template,
    App,
    Choice,
    Integer,
    Boolean,
    Channels,
}

/// One parameter of an action. See `actions.param-spec` in the WIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    pub required: bool,
    pub default_value: Option<&'static str>,
    pub allowed: Vec<&'static str>,
    pub help: &'static str,
}

/// An action a workflow can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionSpec {
    pub name: &'static str,
    pub title: &'static str,
    pub help: &'static str,
    pub params: Vec<ParamSpec>,
}

/// A parameter's value as the caller gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    Text(String),
    Integer(i64),
    Boolean(bool),
    TextList(Vec<String>),
}

/// Why a run did not happen or did not finish. See `actions.action-error` in the WIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionError {
    UnknownAction(String),
    InvalidParams(String),
    Template(String),
    NotPermitted(String),
    /// Returned only before a dyno was created, so the host may refresh and retry.
    Unauthenticated(ApiError),
    HerokuApi(ApiError),
    Transport(String),
    Internal(String),
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Status(i32),
    TimedOut,
}

/// What became of sharing in one Slack channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub channel: String,
    pub error: Option<String>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    pub dyno: String,
    pub exit: Exit,
    pub duration: Duration,
    pub output_bytes: u64,
    pub command: String,
    pub shares: Vec<Share>,
    pub timeline_recorded: bool,
    pub timeline_error: Option<String>,
}

/// What the host does for a run: take its output, share it, record it.
pub trait RunHost {
    /// The dyno is created; `command` is what runs on it.
    fn started(&self, dyno: &str, command: &str);
    /// A piece of output, in order.
    fn write(&self, chunk: &[u8]);
    /// Shares everything written so far in each channel.
    fn share(&self, channels: &[String], title: &str, comment: &str) -> Vec<Share>;
    /// Records an event on an incident's timeline.
    fn add_event(
        &self,
        incident: &str,
        summary: &str,
        details: Vec<(String, String)>,
    ) -> Result<(), String>;
}

/// A run's checked parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub command: String,
    pub app: String,
    pub size: String,
    pub timeout: Duration,
    pub record_timeline: bool,
    pub slack_channels: Vec<String>,
}

/// The actions this plugin offers.
pub fn describe() -> Vec<ActionSpec> {
    let param = |name, kind, required, default_value, help| ParamSpec {
        name,
        kind,
        required,
        default_value,
        allowed: Vec::new(),
        help,
    };
    vec![ActionSpec {
        name: NAME,
        title: "Run Command on Heroku",
        help: "Runs a command on a fresh one-off dyno of a monitored app, streams its output, \
               and shares it in Slack when it ends.",
        params: vec![
            param(
                "command",
                ParamKind::Template,
                true,
                None,
                "The command, a Liquid template rendered with the incident context. Every \
                 value it interpolates is shell-quoted; `| raw` opts out for a trusted value. \
                 The context is also in the dyno's environment (INCIDENT_ID, \
                 INCIDENT_TITLE, ...).",
            ),
            param(
                "app_name",
                ParamKind::App,
                true,
                None,
                "The Heroku app to run on: one of the integration's monitored apps.",
            ),
            ParamSpec {
                allowed: SIZES.to_vec(),
                ..param(
                    "size",
                    ParamKind::Choice,
                    false,
                    Some(SIZES[0]),
                    "The one-off dyno's size.",
                )
            },
            param(
                "timeout_seconds",
                ParamKind::Integer,
                false,
                Some("1800"),
                "How long the command may run before its dyno is stopped; at most 1800.",
            ),
            param(
                "record_timeline",
                ParamKind::Boolean,
                false,
                Some("false"),
                "Record the run on the incident's timeline.",
            ),
            param(
                "slack_channels",
                ParamKind::Channels,
                false,
                None,
                "Slack channel ids (such as C0123ABC) that receive the output as a file.",
            ),
        ],
    }]
}

/// Checks a run's parameters against the spec and the integration's monitored apps.
pub fn parse_params(
    given: Vec<(String, ParamValue)>,
    apps: &[String],
) -> Result<Params, ActionError> {
    let spec = &describe()[0];
    let invalid = |message: String| Err(ActionError::InvalidParams(message));
    let mut values: Map<String, Value> = Map::new();
    for (name, value) in given {
        if !spec.params.iter().any(|param| param.name == name) {
            let known: Vec<&str> = spec.params.iter().map(|param| param.name).collect();
            return invalid(format!(
                "{} is not a parameter of {NAME}; its parameters are {}",
                shorten(&name),
                known.join(", ")
            ));
        }
        let value = match value {
            ParamValue::Text(text) => Value::String(text),
            ParamValue::Integer(n) => json!(n),
            ParamValue::Boolean(b) => json!(b),
            ParamValue::TextList(list) => json!(list),
        };
        if values.insert(name.clone(), value).is_some() {
            return invalid(format!("{name} is given twice"));
        }
    }

    let command = match values.remove("command") {
        Some(Value::String(text)) if !text.trim().is_empty() => text,
        Some(Value::String(_)) | None => return invalid("command is required".into()),
        Some(_) => return invalid("command must be text".into()),
    };

    let app = match values.remove("app_name") {
        Some(Value::String(app)) => app,
        None => return invalid("app_name is required".into()),
        Some(_) => return invalid("app_name must be text".into()),
    };
    if !is_app_identity(&app) {
        return invalid(format!(
            "app_name {} is not a Heroku app name (^[a-z][a-z0-9-]{{1,28}}[a-z0-9]$) or an \
             app id",
            shorten(&app)
        ));
    }
    if !apps.contains(&app) {
        return Err(ActionError::NotPermitted(format!(
            "{app} is not one of the integration's monitored apps: an admin must add it \
             before a workflow can run commands on it"
        )));
    }

    let size = match values.remove("size") {
        None => SIZES[0].to_string(),
        Some(Value::String(size)) => match SIZES.iter().find(|s| s.eq_ignore_ascii_case(&size)) {
            Some(size) => size.to_string(),
            None => {
                return invalid(format!(
                    "size {} is not allowed; the sizes are {}",
                    shorten(&size),
                    SIZES.join(", ")
                ));
            }
        },
        Some(_) => return invalid(format!("size must be one of {}", SIZES.join(", "))),
    };

    let timeout = match values.remove("timeout_seconds") {
        None => MAX_TIMEOUT_SECONDS,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or_default(),
        Some(Value::String(text)) if text.trim().parse::<i64>().is_ok() => {
            text.trim().parse().unwrap_or_default()
        }
        Some(_) => return invalid("timeout_seconds must be a whole number of seconds".into()),
    };
    if timeout <= 0 {
        return invalid(format!(
            "timeout_seconds must be at least 1 (it was {timeout}); at most \
             {MAX_TIMEOUT_SECONDS} is used"
        ));
    }
    let timeout = Duration::from_secs(timeout.min(MAX_TIMEOUT_SECONDS) as u64);

    let record_timeline = match values.remove("record_timeline") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(Value::String(text)) if text == "true" || text == "false" => text == "true",
        Some(_) => return invalid("record_timeline must be true or false".into()),
    };

    let slack_channels = match values.remove("slack_channels") {
        None => Vec::new(),
        Some(Value::Array(list)) => list
            .into_iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ActionError::InvalidParams("slack_channels must be a list of channel ids".into())
            })?,
        Some(Value::String(one)) => vec![one],
        Some(_) => return invalid("slack_channels must be a list of channel ids".into()),
    };
    if let Some(bad) = slack_channels.iter().find(|c| !is_channel_id(c)) {
        return invalid(format!(
            "{} is not a Slack channel id (such as C0123ABC: capital letters and digits)",
            shorten(bad)
        ));
    }

    Ok(Params {
        command,
        app,
        size,
        timeout,
        record_timeline,
        slack_channels,
    })
}

/// Slack channel, group and conversation ids: capital letters and digits.
fn is_channel_id(id: &str) -> bool {
    (2..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Runs the command to its end. The template is rendered before anything reaches Heroku, so
/// a template error changes nothing.
pub async fn run<T: Transport, H: RunHost>(
    api: &PlatformApi<T>,
    host: &H,
    params: &Params,
    context: &Value,
) -> Result<RunResult, ActionError> {
    let command = template::render(&params.command, context)
        .map_err(|err| ActionError::Template(err.to_string()))?
        .command;
    let env: Map<String, Value> = template::environment(context)
        .into_iter()
        .map(|(name, value)| (name, Value::String(value)))
        .collect();

    let started = Instant::now();
    let dyno = create_dyno(api, params, &command, env).await?;
    host.started(&dyno, &command);

    let deadline = started + params.timeout;
    let (exit, output_bytes) = match follow(api, host, &params.app, &dyno, deadline).await {
        Ok(followed) => followed,
        Err(err) => {
            stop(api, &params.app, &dyno).await;
            return Err(err);
        }
    };
    if exit == Exit::TimedOut {
        stop(api, &params.app, &dyno).await;
    }
    let duration = started.elapsed();

    let ended = match exit {
        Exit::Status(status) => format!("exited with status {status}"),
        Exit::TimedOut => format!(
            "timed out after {}s and was stopped",
            params.timeout.as_secs()
        ),
    };
    let shown = shorten(&command);
    let shares = if params.slack_channels.is_empty() {
        Vec::new()
    } else {
        let title = format!("{dyno} on {}", params.app);
        let comment = format!("{}: `{shown}` {ended} ({})", params.app, human(duration));
        host.share(&params.slack_channels, &title, &comment)
    };

    let (timeline_recorded, timeline_error) = if params.record_timeline {
        match incident_id(context) {
            Some(incident) => {
                let summary = format!("Ran `{shown}` on {} ({dyno}): {ended}", params.app);
                let exit_status = match exit {
                    Exit::Status(status) => status.to_string(),
                    Exit::TimedOut => "timed out".into(),
                };
                let details = vec![
                    ("app".to_string(), params.app.clone()),
                    ("dyno".to_string(), dyno.clone()),
                    ("command".to_string(), command.clone()),
                    ("exit_status".to_string(), exit_status),
                    ("duration_ms".to_string(), duration.as_millis().to_string()),
                ];
                match host.add_event(&incident, &summary, details) {
                    Ok(()) => (true, None),
                    Err(err) => (false, Some(err)),
                }
            }
            None => (false, Some("the context has no incident.id".into())),
        }
    } else {
        (false, None)
    };

    Ok(RunResult {
        dyno,
        exit,
        duration,
        output_bytes,
        command,
        shares,
        timeline_recorded,
        timeline_error,
    })
}

/// Creates the detached one-off dyno; returns its name.
async fn create_dyno<T: Transport>(
    api: &PlatformApi<T>,
    params: &Params,
    command: &str,
    env: Map<String, Value>,
) -> Result<String, ActionError> {
    let body = json!({
        "command": command,
        "attach": false,
        "type": "run",
        "size": params.size,
        "time_to_live": params.timeout.as_secs(),
        "env": env,
    });
    let path = format!("/apps/{}/dynos", params.app);
    let mut attempt = 0;
    loop {
        match api.call("POST", &path, Some(&body), None).await {
            Ok((dyno, _)) => {
                return dyno["name"].as_str().map(str::to_string).ok_or_else(|| {
                    ActionError::Transport("Heroku's answer to the dyno has no name".into())
                });
            }
            // Right after an app is created it has no release to run yet.
            Err(Failure::Api(error)) if error.status == 409 && attempt < CONFLICT_RETRIES => {
                attempt += 1;
                api.transport().sleep(CONFLICT_WAIT).await;
            }
            Err(Failure::Api(error)) if error.status == 401 => {
                return Err(ActionError::Unauthenticated(error));
            }
            Err(Failure::Api(error)) if error.status == 403 || error.status == 404 => {
                return Err(ActionError::NotPermitted(format!(
                    "the connected account cannot create dynos on {}: check its access \
                     (Heroku answered {} {}: {})",
                    params.app, error.status, error.id, error.message
                )));
            }
            Err(Failure::Api(error)) => return Err(ActionError::HerokuApi(error)),
            Err(Failure::Transport(message)) => return Err(ActionError::Transport(message)),
        }
    }
}

/// Reads the dyno's logs until its exit status or the deadline, reopening the session when
/// it ends or expires. Returns how it ended and how much output was written.
async fn follow<T: Transport, H: RunHost>(
    api: &PlatformApi<T>,
    host: &H,
    app: &str,
    dyno: &str,
    deadline: Instant,
) -> Result<(Exit, u64), ActionError> {
    let mut reader = LogReader::new();
    let mut written: u64 = 0;
    let mut emit = |output: Vec<u8>| {
        if !output.is_empty() {
            written += output.len() as u64;
            host.write(&output);
        }
    };
    let mut failures = 0;
    loop {
        if Instant::now() >= deadline {
            return Ok((Exit::TimedOut, written));
        }
        let mut chunks = match open_session(api, app, dyno).await {
            Ok(chunks) => {
                failures = 0;
                chunks
            }
            Err(err) => {
                failures += 1;
                if failures >= SESSION_FAILURES {
                    return Err(err);
                }
                api.transport().sleep(Duration::from_secs(1)).await;
                continue;
            }
        };

        let mut exited_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok((Exit::TimedOut, written));
            }
            let mut wait = (deadline - now).min(POLL);
            if let Some(at) = exited_at {
                wait = wait.min(EXIT_GRACE.saturating_sub(at.elapsed()));
            }
            match chunks.next(wait).await {
                Read::Chunk(bytes) => emit(reader.feed(&bytes)),
                Read::Idle => {}
                Read::End | Read::Failed(_) => {
                    emit(reader.end_of_stream());
                    break;
                }
            }
            if let Some(status) = reader.exit_status() {
                let at = *exited_at.get_or_insert_with(Instant::now);
                if reader.finished() || at.elapsed() >= EXIT_GRACE {
                    emit(reader.end_of_stream());
                    return Ok((Exit::Status(status), written));
                }
            }
        }
        if let Some(status) = reader.exit_status() {
            return Ok((Exit::Status(status), written));
        }
        // The session ended or expired before the command did: open another.
        api.transport().sleep(Duration::from_millis(200)).await;
    }
}

/// Opens a log session for the dyno and starts reading it.
async fn open_session<T: Transport>(
    api: &PlatformApi<T>,
    app: &str,
    dyno: &str,
) -> Result<T::Chunks, ActionError> {
    // The CLI sends `dyno`, the newest schema `dyno_name`: both are sent.
    let body = json!({"dyno": dyno, "dyno_name": dyno, "tail": true, "lines": REPLAY_LINES});
    let (session, _) = api
        .call(
            "POST",
            &format!("/apps/{app}/log-sessions"),
            Some(&body),
            None,
        )
        .await
        .map_err(|failure| match failure {
            Failure::Api(error) => ActionError::HerokuApi(error),
            Failure::Transport(message) => ActionError::Transport(message),
        })?;
    let url = session["logplex_url"].as_str().ok_or_else(|| {
        ActionError::Transport("Heroku's answer to the log session has no logplex_url".into())
    })?;
    let (status, chunks) = api
        .transport()
        .open(url)
        .await
        .map_err(ActionError::Transport)?;
    if status >= 400 {
        return Err(ActionError::Transport(format!(
            "the log stream answered {status}"
        )));
    }
    Ok(chunks)
}

/// Stops the dyno; a failure is only logged by the caller's host, since the dyno's
/// `time_to_live` ends it anyway.
async fn stop<T: Transport>(api: &PlatformApi<T>, app: &str, dyno: &str) {
    let path = format!("/apps/{app}/dynos/{dyno}/actions/stop");
    let _ = api.call("POST", &path, None, None).await;
}

fn incident_id(context: &Value) -> Option<String> {
    match &context["incident"]["id"] {
        Value::String(id) if !id.is_empty() => Some(id.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `1m 5s`, `850ms`.
fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        1..=59 => format!("{secs}s"),
        _ => format!("{}m {}s", secs / 60, secs % 60),
    }
}

/// Input shown in messages is cut, so a huge value cannot flood them.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(name: &str, value: &str) -> (String, ParamValue) {
        (name.into(), ParamValue::Text(value.into()))
    }

    fn apps() -> Vec<String> {
        vec!["billing-api".into()]
    }

    fn base() -> Vec<(String, ParamValue)> {
        vec![text("command", "echo hi"), text("app_name", "billing-api")]
    }

    #[test]
    fn defaults_fill_in_what_is_not_given() {
        let params = parse_params(base(), &apps()).unwrap();
        assert_eq!(
            params,
            Params {
                command: "echo hi".into(),
                app: "billing-api".into(),
                size: "standard-1X".into(),
                timeout: Duration::from_secs(1800),
                record_timeline: false,
                slack_channels: vec![],
            }
        );
    }

    #[test]
    fn a_long_timeout_is_capped_and_a_non_positive_one_refused() {
        let mut given = base();
        given.push(("timeout_seconds".into(), ParamValue::Integer(3600)));
        assert_eq!(
            parse_params(given, &apps()).unwrap().timeout,
            Duration::from_secs(1800)
        );
        for bad in [0, -5] {
            let mut given = base();
            given.push(("timeout_seconds".into(), ParamValue::Integer(bad)));
            let Err(ActionError::InvalidParams(message)) = parse_params(given, &apps()) else {
                panic!("{bad} was accepted");
            };
            assert!(
                message.starts_with("timeout_seconds must be at least 1"),
                "{message}"
            );
        }
    }

    #[test]
    fn sizes_outside_the_list_are_refused_with_the_allowed_values() {
        let mut given = base();
        given.push(text("size", "performance-l"));
        assert_eq!(
            parse_params(given, &apps()),
            Err(ActionError::InvalidParams(
                "size performance-l is not allowed; the sizes are standard-1X, standard-2X".into()
            ))
        );
        let mut given = base();
        given.push(text("size", "STANDARD-2x"));
        assert_eq!(parse_params(given, &apps()).unwrap().size, "standard-2X");
    }

    #[test]
    fn only_monitored_apps_can_be_reached() {
        let given = vec![text("command", "ls"), text("app_name", "payments")];
        let Err(ActionError::NotPermitted(message)) = parse_params(given, &apps()) else {
            panic!("an unlisted app was accepted");
        };
        assert!(message.starts_with("payments is not one of the integration's monitored apps"));
        let given = vec![text("command", "ls"), text("app_name", "Billing_API")];
        assert!(matches!(
            parse_params(given, &apps()),
            Err(ActionError::InvalidParams(_))
        ));
    }

    #[test]
    fn unknown_and_missing_parameters_are_named() {
        let mut given = base();
        given.push(text("sizee", "x"));
        let Err(ActionError::InvalidParams(message)) = parse_params(given, &apps()) else {
            panic!();
        };
        assert!(message.starts_with("sizee is not a parameter of run-command"));
        assert_eq!(
            parse_params(vec![text("app_name", "billing-api")], &apps()),
            Err(ActionError::InvalidParams("command is required".into()))
        );
    }

    #[test]
    fn channels_must_be_slack_ids() {
        let mut given = base();
        given.push((
            "slack_channels".into(),
            ParamValue::TextList(vec!["C0123".into(), "#general".into()]),
        ));
        let Err(ActionError::InvalidParams(message)) = parse_params(given, &apps()) else {
            panic!();
        };
        assert!(message.starts_with("#general is not a Slack channel id"));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(65)), "1m 5s");
    }
}
