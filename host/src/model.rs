//! The host's records: integrations, services and pulses, and the rules for the names and
//! values people and plugins give us.

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One connected Heroku account and the apps it monitors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Integration {
    pub name: String,
    pub apps: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub connection: Connection,
}

/// Whether the integration holds a Heroku authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Connection {
    /// Never connected: webhooks are added by hand with the secret.
    Never,
    Connected,
    /// Disconnected by an admin or because the authorization stopped working; the reason
    /// says which and what to do.
    Disconnected(String),
}

/// Where one monitored app stood after the last apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppWebhook {
    pub app: String,
    pub webhook_id: Option<String>,
    pub error: Option<String>,
    pub updated_at: String,
}

/// An event to record on an incident's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTimelineEvent {
    /// The incident, as the workflow engine names it.
    pub incident_id: String,
    /// The integration that recorded it.
    pub source: String,
    pub summary: String,
    /// Facts about the event, a JSON object of strings.
    pub details: serde_json::Value,
    pub run_id: Option<i64>,
    /// A link to the run's output.
    pub output_url: Option<String>,
}

impl NewTimelineEvent {
    /// Incident ids are printable and at most 256 bytes; summaries 1 to 1,024 bytes; details
    /// at most 16 KiB of JSON.
    pub fn check(&self) -> Result<(), Invalid> {
        check_incident_id(&self.incident_id)?;
        if self.summary.is_empty() || self.summary.len() > 1024 {
            return Err(Invalid(
                "a timeline summary must be 1 to 1,024 bytes".into(),
            ));
        }
        if self.details.to_string().len() > 16 << 10 {
            return Err(Invalid("timeline details are limited to 16 KiB".into()));
        }
        Ok(())
    }
}

/// Incident ids come from workflow engines: any printable text up to 256 bytes.
pub fn check_incident_id(id: &str) -> Result<(), Invalid> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(Invalid(format!(
            "incident id {:?} is not valid: use 1 to 256 printable characters",
            shorten(id)
        )));
    }
    Ok(())
}

/// A recorded timeline event, as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEvent {
    pub id: i64,
    pub incident_id: String,
    pub at: String,
    pub source: String,
    pub summary: String,
    pub details: serde_json::Value,
    pub run_id: Option<i64>,
    pub output_url: Option<String>,
}

/// One run of an action, as stored and listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub id: i64,
    pub integration: String,
    pub action: String,
    /// Who started it: `admin` (the API) or `cli:<user>`.
    pub actor: String,
    pub incident_id: Option<String>,
    /// The parameters as given.
    pub params: serde_json::Value,
    /// `running`, `finished` (the command ended or timed out) or `failed` (it could not run).
    pub state: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// What the run did, once finished: dyno, exit, duration, output size, command, shares.
    pub result: Option<serde_json::Value>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Bytes of output kept.
    pub output_bytes: u64,
}

/// Something incidents are about, linked to pulses by its Heroku app name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub heroku_app_name: String,
}

/// Seconds and nanoseconds since the Unix epoch, UTC.
pub type UnixTime = (i64, u32);

/// A pulse a plugin made, checked and ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPulse {
    pub summary: String,
    pub source: String,
    pub started_at: UnixTime,
    pub ended_at: Option<UnixTime>,
    pub labels: BTreeMap<String, String>,
    pub refs: BTreeMap<String, String>,
    pub correlations: Vec<(String, String)>,
    pub dedupe_key: String,
    pub raw: String,
}

/// A stored pulse as the API lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPulse {
    pub id: i64,
    pub integration: String,
    pub summary: String,
    pub source: String,
    pub started_at: UnixTime,
    pub ended_at: Option<UnixTime>,
    pub labels: BTreeMap<String, String>,
    pub refs: BTreeMap<String, String>,
    pub services: Vec<String>,
}

/// A name or value that breaks one of the rules below; the message says which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Integration and service names: they appear in URLs and file-free paths, so they are
/// limited to letters, digits, `-`, `_` and `.`, start with a letter or digit, and are at
/// most 64 characters long.
pub fn check_name(kind: &str, name: &str) -> Result<(), Invalid> {
    let valid = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{kind} name {:?} is not valid: use 1 to 64 letters, digits, '-', '_' or '.', \
             starting with a letter or digit",
            shorten(name)
        )))
    }
}

/// Heroku's app-name pattern, as the Platform API documents it.
pub const APP_NAME_PATTERN: &str = "^[a-z][a-z0-9-]{1,28}[a-z0-9]$";

/// Checks a monitored app: a Heroku app name or an app id (a UUID).
pub fn check_app(app: &str) -> Result<(), Invalid> {
    if is_app_name(app) || is_uuid(app) {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{:?} is not a Heroku app name ({APP_NAME_PATTERN}) or an app id (a UUID)",
            shorten(app)
        )))
    }
}

fn is_app_name(app: &str) -> bool {
    let bytes = app.as_bytes();
    (3..=30).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-'
}

fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A service's Heroku app name is matched exactly against pulses, so it is kept as given;
/// it only has to be something an app could be called.
pub fn check_service_app(app: &str) -> Result<(), Invalid> {
    let characters = app.chars().count();
    let printable = !app.chars().any(|c| c.is_control() || is_invisible(c));
    if !(1..=100).contains(&characters) || !printable || app.trim() != app {
        return Err(Invalid(
            "heroku_app_name must be 1 to 100 printable characters, without surrounding spaces"
                .into(),
        ));
    }
    Ok(())
}

/// Formatting characters that render as nothing (or reorder text), so two names that look
/// the same would differ.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// The form an app is stored in: app ids in lowercase, as Heroku sends them in events.
pub fn normalize_app(app: &str) -> String {
    if is_uuid(app) {
        app.to_ascii_lowercase()
    } else {
        app.to_string()
    }
}

/// Formats a Unix time as RFC 3339 in UTC, with as many fraction digits as it has.
pub fn format_time((seconds, nanoseconds): UnixTime) -> String {
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| t.replace_nanosecond(nanoseconds).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{seconds}.{nanoseconds:09}"))
}

/// Whether a Unix time is one we can show as RFC 3339 (years 0000 to 9999).
pub fn is_representable((seconds, nanoseconds): UnixTime) -> bool {
    nanoseconds < 1_000_000_000
        && OffsetDateTime::from_unix_timestamp(seconds)
            .is_ok_and(|t| (0..=9999).contains(&t.year()))
}

/// Now, as RFC 3339 in UTC.
pub fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("the current time formats")
}

/// Cuts long input down for error messages, so an error never echoes 10,000 characters.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_follow_herokus_pattern() {
        for good in [
            "billing-api",
            "abc",
            "a1b",
            "a234567890123456789012345678z9",
        ] {
            assert_eq!(check_app(good), Ok(()), "{good}");
        }
        for bad in [
            "ab", "Billing", "1abc", "abc-", "a_b", "", "a/b", "../etc", "a\0b",
        ] {
            assert!(check_app(bad).is_err(), "{bad}");
        }
        assert_eq!(check_app("01234567-89ab-cdef-0123-456789abcdef"), Ok(()));
    }

    #[test]
    fn bad_app_message_names_the_pattern() {
        assert_eq!(
            check_app("Billing").unwrap_err().0,
            "\"Billing\" is not a Heroku app name (^[a-z][a-z0-9-]{1,28}[a-z0-9]$) \
             or an app id (a UUID)"
        );
    }

    #[test]
    fn names_refuse_paths_and_quotes() {
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            "a'b",
            "a%00",
            &"x".repeat(65),
        ] {
            assert!(check_name("integration", bad).is_err(), "{bad}");
        }
        for good in ["acme", "Acme_prod.2", "x"] {
            assert_eq!(check_name("integration", good), Ok(()));
        }
    }

    #[test]
    fn service_app_names_are_printable_and_trimmed() {
        assert_eq!(check_service_app("Billing-API"), Ok(()));
        assert_eq!(check_service_app(&"é".repeat(100)), Ok(()));
        for bad in [
            "",
            " billing-api",
            "billing-api ",
            "x\u{202e}",
            "a\nb",
            &"é".repeat(101),
        ] {
            assert!(check_service_app(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn app_ids_are_normalized_to_lowercase() {
        assert_eq!(
            normalize_app("4A4D3B52-1AD1-4F3C-9A8B-2F0C4B9D7E11"),
            "4a4d3b52-1ad1-4f3c-9a8b-2f0c4b9d7e11"
        );
        assert_eq!(normalize_app("billing-api"), "billing-api");
    }

    #[test]
    fn times_format_as_rfc3339_utc() {
        assert_eq!(format_time((1_709_978_337, 0)), "2024-03-09T09:58:57Z");
        assert_eq!(
            format_time((1_691_056_830, 693_808_000)),
            "2023-08-03T10:00:30.693808Z"
        );
        assert!(is_representable((0, 0)));
        assert!(!is_representable((i64::MAX, 0)));
        assert!(!is_representable((0, 1_000_000_000)));
    }

    #[test]
    fn long_input_is_shortened_in_messages() {
        assert_eq!(shorten(&"é".repeat(100)).chars().count(), 83);
        assert_eq!(shorten("short"), "short");
    }
}
