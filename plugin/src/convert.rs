//! The conversion rules: which events in scope become pulses, and what each pulse says.

use crate::event::{self, AppRef, Build, Envelope, ParseError, Release};
use crate::pulse::{Outcome, Pulse, Timestamp};

/// The source every Heroku pulse carries.
pub const SOURCE: &str = "heroku";

/// The correlation key that links a pulse to services with the same Heroku app name.
pub const APP_CORRELATION_KEY: &str = "heroku_app_name";

/// The longest text a pulse field or an ignore reason takes from an event, in characters.
/// Events are signed by Heroku, but a field far longer than any real one is cut rather than
/// passed on: the host refuses pulses above its limits, and reasons are for people.
const MAX_VALUE_CHARS: usize = 256;
const MAX_SHOWN_CHARS: usize = 80;

/// The most bytes of event text a summary takes. 256 characters of four bytes each would take
/// the summary past the host's limit of 1024 bytes; this leaves room for the summary's words.
const MAX_SUMMARY_TEXT_BYTES: usize = 960;

/// The longest entity id accepted, in bytes; real ids are 36-character UUIDs. Ids go into
/// dedupe keys, which the host limits to 512 bytes, so they are measured in bytes and refused
/// rather than cut: two long ids must not collide.
const MAX_ID_BYTES: usize = 128;

/// Which apps an integration monitors.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub integration: &'a str,
    /// App names or ids.
    pub apps: &'a [String],
}

impl Scope<'_> {
    /// Why an event for `app` is out of scope, or `None` when it is in scope.
    fn excludes(&self, app: &AppRef) -> Option<String> {
        if self.apps.is_empty() {
            return Some(format!("integration {} monitors no apps", self.integration));
        }
        let listed = |value: &Option<String>| {
            value
                .as_deref()
                .is_some_and(|value| self.apps.iter().any(|app| app == value))
        };
        if listed(&app.name) || listed(&app.id) {
            return None;
        }
        let shown = clip(
            app.name
                .as_deref()
                .or(app.id.as_deref())
                .unwrap_or("(unnamed)"),
            MAX_SHOWN_CHARS,
        );
        Some(format!(
            "app {shown} is not monitored by integration {}",
            self.integration
        ))
    }
}

/// Scopes and converts a parsed event. `raw` is the body, kept on the pulse for drill-down.
pub fn convert(scope: Scope<'_>, mut envelope: Envelope, raw: &str) -> Result<Outcome, ParseError> {
    match envelope.resource.as_str() {
        "build" => {
            let build: Build = event::typed(envelope.data.take(), "data")?;
            let app = required_app(&build.app)?;
            if let Some(reason) = scope.excludes(app) {
                return Ok(Outcome::Ignored(reason));
            }
            convert_build(&envelope, build, raw)
        }
        "release" => {
            let release: Release = event::typed(envelope.data.take(), "data")?;
            let app = required_app(&release.app)?;
            if let Some(reason) = scope.excludes(app) {
                return Ok(Outcome::Ignored(reason));
            }
            convert_release(&envelope, release, raw)
        }
        other => {
            let app: Option<AppRef> = envelope
                .data
                .get("app")
                .and_then(|app| serde_json::from_value(app.clone()).ok());
            if let Some(reason) = app.as_ref().and_then(|app| scope.excludes(app)) {
                return Ok(Outcome::Ignored(reason));
            }
            let reason = if other == "dyno" {
                "dyno events are not converted".to_string()
            } else {
                format!("{} events are not converted", clip(other, MAX_SHOWN_CHARS))
            };
            Ok(Outcome::Ignored(reason))
        }
    }
}

fn required_app(app: &Option<AppRef>) -> Result<&AppRef, ParseError> {
    match app {
        Some(app) if app.name.is_some() => Ok(app),
        _ => Err(ParseError("`data.app.name` is missing".into())),
    }
}

fn convert_build(envelope: &Envelope, build: Build, raw: &str) -> Result<Outcome, ParseError> {
    let action = envelope.action.as_str();
    if action != "create" && action != "update" {
        let action = clip(action, MAX_SHOWN_CHARS);
        return Ok(Outcome::Ignored(format!(
            "build {action} events are not converted"
        )));
    }
    let status = build.status.as_deref().unwrap_or_default();
    if !matches!(status, "pending" | "succeeded" | "failed") {
        let status = clip(status, MAX_SHOWN_CHARS);
        return Ok(Outcome::Ignored(format!(
            "build status {status:?} is not converted"
        )));
    }
    let id = entity_id(build.id.as_deref())?;
    let app = build
        .app
        .as_ref()
        .and_then(|app| app.name.as_deref())
        .unwrap_or_default();

    let (started_at, updated_at) = times(
        envelope,
        build.created_at.as_deref(),
        build.updated_at.as_deref(),
    )?;
    let ended_at = if status == "pending" {
        None
    } else {
        Some(updated_at)
    };

    let user = user_email(envelope, build.user.as_ref());
    let labels = labels("build", app, status, build.stack.as_ref(), user);

    let mut refs = vec![pair("build_id", id)];
    let commit = build
        .source_blob
        .as_ref()
        .and_then(|blob| blob.version.as_deref())
        .or_else(|| build.slug.as_ref().and_then(|slug| slug.commit.as_deref()));
    push_some(&mut refs, "commit", commit);
    if let Some(release) = &build.release {
        push_some(&mut refs, "release_id", release.id.as_deref());
        push_some(
            &mut refs,
            "release_version",
            release.version.map(version).as_deref(),
        );
    }
    push_some(&mut refs, "event_id", envelope.id.as_deref());

    Ok(Outcome::Pulses(vec![Pulse {
        summary: format!("[Heroku][Build] {} {status}", summary_text(app)),
        source: SOURCE.into(),
        started_at,
        ended_at,
        labels,
        refs,
        correlations: vec![pair(APP_CORRELATION_KEY, app)],
        dedupe_key: format!("build:{id}:{status}"),
        raw: raw.into(),
    }]))
}

fn convert_release(
    envelope: &Envelope,
    release: Release,
    raw: &str,
) -> Result<Outcome, ParseError> {
    let action = envelope.action.as_str();
    let status = release.status.as_deref().unwrap_or_default();
    let shown_version = release.version.map(version);
    let name = shown_version.as_deref().unwrap_or("release");
    if action != "update" && action != "create" {
        let action = clip(action, MAX_SHOWN_CHARS);
        return Ok(Outcome::Ignored(format!(
            "release {action} events are not converted"
        )));
    }
    let current = release.current == Some(true);
    let deployed = status == "succeeded" && current;
    let failed = status == "failed";
    if action == "create" || (!deployed && !failed && !current) {
        return Ok(Outcome::Ignored(format!("release {name} is not current")));
    }
    if !deployed && !failed {
        let status = clip(status, MAX_SHOWN_CHARS);
        return Ok(Outcome::Ignored(format!(
            "release {name} status {status:?} is not converted"
        )));
    }
    let id = entity_id(release.id.as_deref())?;
    let app = release
        .app
        .as_ref()
        .and_then(|app| app.name.as_deref())
        .unwrap_or_default();

    let (started_at, updated_at) = times(
        envelope,
        release.created_at.as_deref(),
        release.updated_at.as_deref(),
    )?;

    let description = match release.description.as_deref().map(str::trim) {
        Some(text) if !text.is_empty() => summary_text(text),
        _ => shown_version
            .clone()
            .unwrap_or_else(|| format!("release {id}")),
    };
    let summary = if failed {
        format!("[Heroku][Release] {description} (failed)")
    } else {
        format!("[Heroku][Release] {description}")
    };

    let user = user_email(envelope, release.user.as_ref());
    let labels = labels("release", app, status, release.stack.as_ref(), user);

    let mut refs = vec![pair("release_id", id)];
    push_some(&mut refs, "release_version", shown_version.as_deref());
    push_some(
        &mut refs,
        "commit",
        release
            .slug
            .as_ref()
            .and_then(|slug| slug.commit.as_deref()),
    );
    push_some(
        &mut refs,
        "slug_id",
        release.slug.as_ref().and_then(|slug| slug.id.as_deref()),
    );
    push_some(&mut refs, "event_id", envelope.id.as_deref());

    Ok(Outcome::Pulses(vec![Pulse {
        summary,
        source: SOURCE.into(),
        started_at,
        ended_at: Some(updated_at),
        labels,
        refs,
        correlations: vec![pair(APP_CORRELATION_KEY, app)],
        dedupe_key: format!("release:{id}:{status}"),
        raw: raw.into(),
    }]))
}

/// The entity's created and updated times. Missing ones fall back to the envelope's
/// `created_at`, then to each other, so a sparse event still places its pulse in time.
fn times(
    envelope: &Envelope,
    created: Option<&str>,
    updated: Option<&str>,
) -> Result<(Timestamp, Timestamp), ParseError> {
    let created = created
        .map(|text| event::parse_timestamp(text, "data.created_at"))
        .transpose()?;
    let updated = updated
        .map(|text| event::parse_timestamp(text, "data.updated_at"))
        .transpose()?;
    let sent = envelope
        .created_at
        .as_deref()
        .map(|text| event::parse_timestamp(text, "created_at"))
        .transpose()?;
    let started = created
        .or(sent)
        .or(updated)
        .ok_or_else(|| ParseError("the event has no `created_at` or `updated_at`".into()))?;
    // A change cannot end before it starts; clock skew between Heroku's services can say so.
    Ok((started, updated.unwrap_or(started).max(started)))
}

/// The labels every Heroku pulse has: app, kind and status, then stack and user when known.
fn labels(
    kind: &str,
    app: &str,
    status: &str,
    stack: Option<&event::Stack>,
    user: Option<&str>,
) -> Vec<(String, String)> {
    let mut labels = vec![pair("app", app), pair("kind", kind), pair("status", status)];
    push_some(&mut labels, "stack", stack.and_then(|stack| stack.name()));
    push_some(&mut labels, "user", user);
    labels
}

fn user_email<'a>(envelope: &'a Envelope, user: Option<&'a event::Actor>) -> Option<&'a str> {
    user.and_then(|user| user.email.as_deref()).or_else(|| {
        envelope
            .actor
            .as_ref()
            .and_then(|actor| actor.email.as_deref())
    })
}

/// The entity's id, which must be present and of a sane length.
fn entity_id(id: Option<&str>) -> Result<&str, ParseError> {
    match id {
        None => Err(ParseError("`data.id` is missing".into())),
        // An empty id would make every such event a duplicate of the first.
        Some("") => Err(ParseError("`data.id` is empty".into())),
        Some(id) if id.len() > MAX_ID_BYTES => Err(ParseError(format!(
            "`data.id` is longer than {MAX_ID_BYTES} bytes"
        ))),
        Some(id) => Ok(id),
    }
}

/// `text` cut to at most `max` characters, marked with an ellipsis when cut.
fn clip(text: &str, max: usize) -> String {
    clip_to(text, max, usize::MAX)
}

/// Event text for a summary: cut to `MAX_VALUE_CHARS` characters like other values, and to
/// `MAX_SUMMARY_TEXT_BYTES` bytes, so the summary fits the host's limit.
fn summary_text(text: &str) -> String {
    clip_to(text, MAX_VALUE_CHARS, MAX_SUMMARY_TEXT_BYTES)
}

/// `text` cut to at most `max_chars` characters and `max_bytes` bytes, on a character boundary,
/// marked with an ellipsis when cut.
fn clip_to(text: &str, max_chars: usize, max_bytes: usize) -> String {
    let by_chars = text
        .char_indices()
        .nth(max_chars)
        .map_or(text.len(), |(at, _)| at);
    let at = text.floor_char_boundary(by_chars.min(max_bytes));
    if at == text.len() {
        text.to_string()
    } else {
        format!("{}...", &text[..at])
    }
}

fn version(number: u64) -> String {
    format!("v{number}")
}

fn pair(key: &str, value: &str) -> (String, String) {
    (key.to_string(), clip(value, MAX_VALUE_CHARS))
}

fn push_some(pairs: &mut Vec<(String, String)>, key: &str, value: Option<&str>) {
    if let Some(value) = value.filter(|value| !value.is_empty()) {
        pairs.push(pair(key, value));
    }
}
