//! Lenient parsing of Heroku webhook events: the envelope every delivery shares and the build
//! and release entities we convert. Unknown fields are ignored and almost every field may be
//! null or absent, because Heroku adds fields without notice and real deliveries differ from
//! the published examples.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::pulse::Timestamp;

/// The envelope shared by every entity. `resource`, `action` and `data` are required.
#[derive(Debug, Deserialize)]
#[serde(expecting = "a Heroku webhook event object")]
pub struct Envelope {
    /// The event id; stable across retries.
    #[serde(default)]
    pub id: Option<String>,
    pub resource: String,
    pub action: String,
    /// Checked to be an object by `parse_envelope` and typed per resource later.
    #[serde(default)]
    pub data: serde_json::Value,
    #[serde(default)]
    pub actor: Option<Actor>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub webhook_metadata: Option<WebhookMetadata>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "an object with an `email`")]
pub struct Actor {
    #[serde(default)]
    pub email: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "an object")]
pub struct WebhookMetadata {
    #[serde(default)]
    pub event: Option<EventMetadata>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "an object")]
pub struct EventMetadata {
    /// The subscription's name for the event type: `api:build`, `dyno`, ...
    #[serde(default)]
    pub include: Option<String>,
}

/// An app as events reference it.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "an object with the app's `id` and `name`")]
pub struct AppRef {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// `api:build` data.
#[derive(Debug, Deserialize)]
#[serde(expecting = "a build object")]
pub struct Build {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub app: Option<AppRef>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub source_blob: Option<SourceBlob>,
    #[serde(default)]
    pub slug: Option<SlugRef>,
    #[serde(default)]
    pub release: Option<ReleaseRef>,
    #[serde(default)]
    pub stack: Option<Stack>,
    #[serde(default)]
    pub user: Option<Actor>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "an object with a `version`")]
pub struct SourceBlob {
    /// The commit sha, for git pushes.
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "an object with the slug's `id` and `commit`")]
pub struct SlugRef {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub commit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "an object with the release's `id` and `version`")]
pub struct ReleaseRef {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub version: Option<u64>,
}

/// A stack is a plain name in builds and `{id, name}` in some other payloads.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a stack name or an object with a `name`")]
pub enum Stack {
    Name(String),
    Object {
        #[serde(default)]
        name: Option<String>,
    },
}

impl Stack {
    pub fn name(&self) -> Option<&str> {
        match self {
            Stack::Name(name) => Some(name),
            Stack::Object { name } => name.as_deref(),
        }
    }
}

/// `api:release` data.
#[derive(Debug, Deserialize)]
#[serde(expecting = "a release object")]
pub struct Release {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub app: Option<AppRef>,
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub current: Option<bool>,
    #[serde(default)]
    pub slug: Option<SlugRef>,
    #[serde(default)]
    pub stack: Option<Stack>,
    #[serde(default)]
    pub user: Option<Actor>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// Why a body could not be read as an event. The message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// Parses the envelope from the raw body.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, ParseError> {
    if std::str::from_utf8(body).is_err() {
        return Err(ParseError("the body is not UTF-8".into()));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|err| ParseError(format!("the body is not JSON: {err}")))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(ParseError("the body is not a JSON object".into()));
    };
    for field in ["resource", "action", "data"] {
        if object.get(field).is_none_or(serde_json::Value::is_null) {
            return Err(ParseError(format!("the event has no `{field}`")));
        }
    }
    if !object["data"].is_object() {
        return Err(ParseError("`data` is not a JSON object".into()));
    }
    // Take `data` out before typing the rest, so it is not copied.
    let data = object.remove("data").unwrap_or_default();
    let mut envelope: Envelope = typed(serde_json::Value::Object(object), "")?;
    envelope.data = data;
    Ok(envelope)
}

/// Types `value` (found at `prefix`), naming the field that did not fit in the error.
pub fn typed<T: DeserializeOwned>(value: serde_json::Value, prefix: &str) -> Result<T, ParseError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = match (prefix.is_empty(), path == ".") {
            (true, _) => path,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{path}"),
        };
        ParseError(format!("`{field}`: {}", err.into_inner()))
    })
}

/// Parses the timestamp shapes seen in deliveries (`2016-10-26T22:50:14Z`,
/// `2023-08-03T10:00:30.693808Z`, `2024-03-09T09:58:57+00:00`), or any other RFC 3339 form.
pub fn parse_timestamp(text: &str, field: &str) -> Result<Timestamp, ParseError> {
    let shown: String = text.chars().take(40).collect();
    let parsed = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|_| ParseError(format!("`{field}` is not an RFC 3339 timestamp: {shown:?}")))?;
    let utc = parsed.checked_to_offset(time::UtcOffset::UTC);
    if !utc.is_some_and(|utc| (0..=9999).contains(&utc.year())) {
        return Err(ParseError(format!(
            "`{field}` is outside the years 0000 to 9999 in UTC: {shown:?}"
        )));
    }
    Ok(Timestamp {
        seconds: parsed.unix_timestamp(),
        nanoseconds: parsed.nanosecond(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_timestamp_shapes_parse() {
        assert_eq!(
            parse_timestamp("2016-10-26T22:50:14Z", "t"),
            Ok(Timestamp {
                seconds: 1_477_522_214,
                nanoseconds: 0
            })
        );
        assert_eq!(
            parse_timestamp("2023-08-03T10:00:30.693808Z", "t"),
            Ok(Timestamp {
                seconds: 1_691_056_830,
                nanoseconds: 693_808_000
            })
        );
        assert_eq!(
            parse_timestamp("2024-03-09T09:58:57+00:00", "t"),
            Ok(Timestamp {
                seconds: 1_709_978_337,
                nanoseconds: 0
            })
        );
    }

    #[test]
    fn timestamps_outside_four_digit_years_are_refused() {
        for text in ["0000-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"] {
            let err = parse_timestamp(text, "data.created_at").unwrap_err();
            assert!(
                err.0.starts_with("`data.created_at` is outside the years"),
                "{}",
                err.0
            );
        }
        assert!(parse_timestamp("9999-12-31T23:59:59Z", "t").is_ok());
        assert!(parse_timestamp("0000-01-01T00:00:00Z", "t").is_ok());
    }

    #[test]
    fn offsets_are_converted_to_utc() {
        assert_eq!(
            parse_timestamp("2024-03-09T10:58:57+01:00", "t"),
            parse_timestamp("2024-03-09T09:58:57Z", "t")
        );
    }

    #[test]
    fn garbage_timestamp_names_the_field() {
        let err = parse_timestamp("yesterday", "data.created_at").unwrap_err();
        assert_eq!(
            err.0,
            "`data.created_at` is not an RFC 3339 timestamp: \"yesterday\""
        );
    }

    #[test]
    fn body_must_be_an_object_with_resource_action_and_data() {
        let cases: [(&[u8], &str); 7] = [
            (b"[]", "the body is not a JSON object"),
            (b"\"release\"", "the body is not a JSON object"),
            (
                br#"{"action":"update","data":{}}"#,
                "the event has no `resource`",
            ),
            (
                br#"{"resource":"build","data":{}}"#,
                "the event has no `action`",
            ),
            (
                br#"{"resource":"build","action":"create"}"#,
                "the event has no `data`",
            ),
            (
                br#"{"resource":"build","action":"create","data":null}"#,
                "the event has no `data`",
            ),
            (
                br#"{"resource":"build","action":"create","data":[1]}"#,
                "`data` is not a JSON object",
            ),
        ];
        for (body, message) in cases {
            assert_eq!(parse_envelope(body).unwrap_err().0, message, "{body:?}");
        }
    }

    #[test]
    fn invalid_utf8_and_broken_json_are_refused() {
        assert_eq!(
            parse_envelope(b"{\"a\":\"\xff\"}").unwrap_err().0,
            "the body is not UTF-8"
        );
        assert!(
            parse_envelope(b"{\"a\":")
                .unwrap_err()
                .0
                .starts_with("the body is not JSON")
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let data = serde_json::json!({"version": "12"});
        let err = typed::<Release>(data, "data").unwrap_err();
        assert!(
            err.0
                .starts_with("`data.version`: invalid type: string \"12\""),
            "{}",
            err.0
        );
    }

    #[test]
    fn stack_is_a_name_or_an_object() {
        let build: Build = typed(serde_json::json!({"stack": "heroku-24"}), "data").unwrap();
        assert_eq!(build.stack.unwrap().name(), Some("heroku-24"));
        let release: Release = typed(
            serde_json::json!({"stack": {"id": "x", "name": "heroku-22"}}),
            "data",
        )
        .unwrap();
        assert_eq!(release.stack.unwrap().name(), Some("heroku-22"));
    }
}
