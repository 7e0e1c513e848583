//! Slack for the host: posting messages and sharing files in channels through the Web API, with
//! the bot token kept here, never in a plugin. Each channel's outcome is reported on its own, with
//! a message that says what to fix.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;

use crate::model;

/// Where Slack is and the bot token the host calls it with.
#[derive(Clone)]
pub struct SlackConfig {
    /// A bot token (`xoxb-...`), from `PULSE_SLACK_TOKEN`; without one nothing is sent.
    pub token: Option<String>,
    /// The Web API's base, `https://slack.com/api` unless a test points elsewhere.
    pub api_url: String,
}

impl Default for SlackConfig {
    fn default() -> Self {
        SlackConfig {
            token: None,
            api_url: "https://slack.com/api".into(),
        }
    }
}

impl fmt::Debug for SlackConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Configs end up in startup logs; the token must not.
        f.debug_struct("SlackConfig")
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("api_url", &self.api_url)
            .finish()
    }
}

/// How long one connection attempt and one Web API call may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An upload gets this long plus a second per [`SLOWEST_UPLOAD`] bytes, so a 20 MiB file on a
/// slow link is not cut off while a stalled one still ends.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);
const SLOWEST_UPLOAD: u64 = 100 * 1024;

/// How often one call is retried after a 429, and the longest `Retry-After` honoured: a share
/// runs inside a workflow, which must not hang for minutes on one channel.
const MAX_RETRIES: u32 = 3;
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// The wait when a 429 comes without a usable `Retry-After` (Slack always sends one).
const DEFAULT_RETRY_WAIT: Duration = Duration::from_secs(1);

/// What the file upload is called in errors and logs; the other steps are Web API methods.
const UPLOAD_STEP: &str = "the file upload";

const GET_UPLOAD_URL: &str = "files.getUploadURLExternal";
const COMPLETE_UPLOAD: &str = "files.completeUploadExternal";
const POST_MESSAGE: &str = "chat.postMessage";

/// Why a message or a file did not reach a channel; messages say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackError {
    #[error("Slack is not configured: set PULSE_SLACK_TOKEN")]
    NotConfigured,
    #[error(
        "{0:?} is not a Slack channel id (like C0123ABC): use the id shown at the bottom of \
         the channel's details, not its name"
    )]
    InvalidChannel(String),
    #[error("cannot read {path}: {detail}: check that the file exists and the host may read it")]
    File { path: String, detail: String },
    #[error(
        "the Slack app is not in channel {0}: invite it with /invite @<app name> in that channel"
    )]
    NotInChannel(String),
    #[error(
        "Slack has no channel {0} the app can see: check the channel id, and invite the app if \
         the channel is private"
    )]
    ChannelNotFound(String),
    #[error("channel {0} is archived: unarchive it or choose another channel")]
    Archived(String),
    /// The token is missing, wrong, revoked or its app uninstalled; holds Slack's code.
    #[error(
        "Slack refused the token ({0}): check PULSE_SLACK_TOKEN (a bot token, xoxb-...) and \
         that the app is still installed"
    )]
    Unauthorized(String),
    /// Holds the scope the call needs.
    #[error(
        "the Slack app lacks the {0} scope: add it under OAuth & Permissions and reinstall the app"
    )]
    MissingScope(String),
    #[error("Slack kept rate-limiting {0} after {MAX_RETRIES} retries: try again in a minute")]
    RateLimited(&'static str),
    #[error("Slack refused {method} ({code}): see https://api.slack.com/methods/{method}")]
    Refused { method: &'static str, code: String },
    #[error("Slack answered HTTP {status} to {step}: try again later")]
    Http { step: &'static str, status: u16 },
    #[error("Slack's answer to {step} is not what Slack sends ({detail}): try again later")]
    Unexpected { step: &'static str, detail: String },
    #[error("could not reach Slack for {step} ({detail}): check the host's network access")]
    Transport { step: &'static str, detail: String },
}

impl SlackError {
    /// A short code for logs: Slack's own error code where Slack gave one.
    pub fn code(&self) -> &str {
        match self {
            SlackError::NotConfigured => "not_configured",
            SlackError::InvalidChannel(_) => "invalid_channel",
            SlackError::File { .. } => "unreadable_file",
            SlackError::NotInChannel(_) => "not_in_channel",
            SlackError::ChannelNotFound(_) => "channel_not_found",
            SlackError::Archived(_) => "is_archived",
            SlackError::Unauthorized(code) => code,
            SlackError::MissingScope(_) => "missing_scope",
            SlackError::RateLimited(_) => "ratelimited",
            SlackError::Refused { code, .. } => code,
            SlackError::Http { .. } => "http_error",
            SlackError::Unexpected { .. } => "unexpected_answer",
            SlackError::Transport { .. } => "transport_error",
        }
    }
}

/// Where one channel stands after a share.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChannelShare {
    pub channel: String,
    /// Why the channel did not get the file, or `None` when it did.
    pub error: Option<String>,
}

/// A Slack Web API client holding the bot token. Cheap to clone.
#[derive(Clone)]
pub struct Slack {
    token: Option<Arc<str>>,
    api_url: Arc<str>,
    client: reqwest::Client,
}

impl Slack {
    pub fn new(config: SlackConfig) -> Slack {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Slack's methods and upload URLs answer directly; a redirect would be a surprise
            // the bearer token should not follow.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client builds");
        let token = config
            .token
            .filter(|token| !token.trim().is_empty())
            .map(Arc::from);
        Slack {
            token,
            api_url: Arc::from(config.api_url.trim_end_matches('/')),
            client,
        }
    }

    /// Whether a token is set; without one every call fails with [`SlackError::NotConfigured`].
    pub fn is_configured(&self) -> bool {
        self.token.is_some()
    }

    /// Shares the file at `path` in each channel: for each channel separately the three-step
    /// upload (`files.getUploadURLExternal` with the filename and length, the bytes streamed
    /// from disk to the upload URL, `files.completeUploadExternal` with the title, the channel
    /// and `comment`). An empty file is posted as a message of `comment` instead, because
    /// Slack refuses a length of 0.
    ///
    /// Uploading once per channel costs bandwidth but keeps each channel's outcome its own: a
    /// channel that fails never stops the others. Returns one entry per channel, in order.
    pub async fn share_file(
        &self,
        channels: &[String],
        path: &Path,
        filename: &str,
        title: &str,
        comment: &str,
    ) -> Vec<ChannelShare> {
        let length = match self.token() {
            Ok(_) => file_length(path).await,
            Err(err) => Err(err),
        };

        let mut shares = Vec::with_capacity(channels.len());
        for channel in channels {
            let outcome = match &length {
                Ok(length) => {
                    let file = File {
                        path,
                        length: *length,
                        filename,
                        title,
                        comment,
                    };
                    self.share_in(channel, &file).await
                }
                Err(err) => Err(err.clone()),
            };
            log_outcome("slack file share", channel, &outcome);
            shares.push(ChannelShare {
                channel: channel.clone(),
                error: outcome.err().map(|err| err.to_string()),
            });
        }
        shares
    }

    /// Posts `text` in `channel` with `chat.postMessage`.
    pub async fn post_message(&self, channel: &str, text: &str) -> Result<(), SlackError> {
        let outcome = self.post(channel, text).await;
        log_outcome("slack message", channel, &outcome);
        outcome
    }

    fn token(&self) -> Result<&str, SlackError> {
        self.token.as_deref().ok_or(SlackError::NotConfigured)
    }

    async fn post(&self, channel: &str, text: &str) -> Result<(), SlackError> {
        self.token()?;
        valid_channel(channel)?;
        self.call(
            POST_MESSAGE,
            channel,
            &[("channel", channel), ("text", text)],
        )
        .await?;
        Ok(())
    }

    async fn share_in(&self, channel: &str, file: &File<'_>) -> Result<(), SlackError> {
        valid_channel(channel)?;
        if file.length == 0 {
            // An empty comment would be refused as `no_text`; the filename still says what
            // was meant to arrive.
            let text = match file.comment.trim() {
                "" => format!("{} (empty file)", file.filename),
                _ => file.comment.to_string(),
            };
            return self.post(channel, &text).await;
        }

        let length = file.length.to_string();
        let reserved = self
            .call(
                GET_UPLOAD_URL,
                channel,
                &[("filename", file.filename), ("length", &length)],
            )
            .await?;
        let (Some(upload_url), Some(file_id)) = (
            reserved["upload_url"].as_str(),
            reserved["file_id"].as_str(),
        ) else {
            return Err(SlackError::Unexpected {
                step: GET_UPLOAD_URL,
                detail: "no upload_url or file_id".into(),
            });
        };

        self.upload(upload_url, file).await?;

        let files = json!([{"id": file_id, "title": file.title}]).to_string();
        let mut form = vec![("files", files.as_str()), ("channel_id", channel)];
        if !file.comment.is_empty() {
            form.push(("initial_comment", file.comment));
        }
        // Limitation: Slack completes the share after it answers `ok`; a share that fails
        // after that is not seen here and is reported as shared.
        self.call(COMPLETE_UPLOAD, channel, &form).await?;
        Ok(())
    }

    /// Calls a Web API method with a form-encoded body (which every method accepts, unlike
    /// JSON) and the token in the `Authorization` header. Returns Slack's answer when `ok`.
    async fn call(
        &self,
        method: &'static str,
        channel: &str,
        form: &[(&str, &str)],
    ) -> Result<Value, SlackError> {
        let token = self.token()?;
        let url = format!("{}/{method}", self.api_url);
        let url = url.as_str();
        let response = self
            .send(method, || async move {
                Ok(self
                    .client
                    .post(url)
                    .bearer_auth(token)
                    .form(form)
                    .timeout(CALL_TIMEOUT))
            })
            .await?;

        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|err| transport_error(method, err))?;
        let answer: Option<Value> = serde_json::from_str(&text).ok();
        match answer {
            Some(answer) if status.is_success() && answer["ok"] == true => Ok(answer),
            Some(answer) if answer["error"].is_string() => Err(refusal(method, channel, &answer)),
            _ if !status.is_success() => Err(SlackError::Http {
                step: method,
                status: status.as_u16(),
            }),
            _ => Err(SlackError::Unexpected {
                step: method,
                detail: "no JSON with ok or error".into(),
            }),
        }
    }

    /// POSTs the file's bytes to the URL Slack reserved for them. The URL is pre-signed, so it
    /// gets no token; the bytes are streamed from disk, so memory stays flat for a big file.
    async fn upload(&self, url: &str, file: &File<'_>) -> Result<(), SlackError> {
        let timeout = UPLOAD_TIMEOUT + Duration::from_secs(file.length / SLOWEST_UPLOAD);
        let response = self
            .send(UPLOAD_STEP, || async move {
                let opened = tokio::fs::File::open(file.path)
                    .await
                    .map_err(|err| unreadable(file.path, &err))?;
                // Exactly the announced length: a file that grew since it was measured still
                // matches what Slack expects, and one that shrank fails the request.
                let stream = tokio_util::io::ReaderStream::with_capacity(
                    opened.take(file.length),
                    64 * 1024,
                );
                Ok(self
                    .client
                    .post(url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, file.length)
                    .body(reqwest::Body::wrap_stream(stream))
                    .timeout(timeout))
            })
            .await?;

        let status = response.status();
        if !status.is_success() {
            return Err(SlackError::Http {
                step: UPLOAD_STEP,
                status: status.as_u16(),
            });
        }
        Ok(())
    }

    /// Sends the request `build` makes, again after each 429 once `Retry-After` has passed, at
    /// most [`MAX_RETRIES`] times. `build` runs once per attempt because a body is used up.
    ///
    /// `build` is a plain closure returning a future, not an async closure, so the share's
    /// future stays `Send` for callers that spawn it.
    async fn send<F>(
        &self,
        step: &'static str,
        build: impl Fn() -> F,
    ) -> Result<reqwest::Response, SlackError>
    where
        F: Future<Output = Result<reqwest::RequestBuilder, SlackError>>,
    {
        let mut retries = 0;
        loop {
            let response = build()
                .await?
                .send()
                .await
                .map_err(|err| transport_error(step, err))?;
            if response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
                return Ok(response);
            }
            if retries == MAX_RETRIES {
                return Err(SlackError::RateLimited(step));
            }
            retries += 1;
            let wait = retry_after(&response);
            tracing::debug!(
                step,
                wait_ms = wait.as_millis() as u64,
                "Slack rate-limited"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

/// The file being shared, as measured before the first channel.
struct File<'a> {
    path: &'a Path,
    length: u64,
    filename: &'a str,
    title: &'a str,
    comment: &'a str,
}

async fn file_length(path: &Path) -> Result<u64, SlackError> {
    let metadata = tokio::fs::metadata(path)
        .await
        .map_err(|err| unreadable(path, &err))?;
    if !metadata.is_file() {
        return Err(SlackError::File {
            path: path.display().to_string(),
            detail: "not a regular file".into(),
        });
    }
    Ok(metadata.len())
}

fn unreadable(path: &Path, err: &std::io::Error) -> SlackError {
    SlackError::File {
        path: path.display().to_string(),
        detail: err.to_string(),
    }
}

/// Checks the shape of a channel id (`C0123ABC`, `G...`, `D...`) before anything is sent, so
/// a channel name or a typo fails with advice rather than as Slack's `channel_not_found`.
fn valid_channel(channel: &str) -> Result<(), SlackError> {
    let shaped = (2..=32).contains(&channel.len())
        && channel
            .bytes()
            .all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit());
    if shaped {
        Ok(())
    } else {
        Err(SlackError::InvalidChannel(model::shorten(channel)))
    }
}

/// Turns Slack's `{"ok": false, "error": code}` into an error that says what to do.
fn refusal(method: &'static str, channel: &str, answer: &Value) -> SlackError {
    let code = answer["error"].as_str().unwrap_or("unknown_error");
    match code {
        "not_in_channel" => SlackError::NotInChannel(channel.to_string()),
        "channel_not_found" => SlackError::ChannelNotFound(channel.to_string()),
        "is_archived" => SlackError::Archived(channel.to_string()),
        "invalid_auth" | "not_authed" | "account_inactive" | "token_revoked" | "token_expired" => {
            SlackError::Unauthorized(code.to_string())
        }
        "missing_scope" => {
            // Slack names the scope it wanted in `needed`; without it, the method's own.
            let needed = answer["needed"]
                .as_str()
                .filter(|needed| !needed.is_empty())
                .map(model::shorten);
            let scope = if method == POST_MESSAGE {
                "chat:write"
            } else {
                "files:write"
            };
            SlackError::MissingScope(needed.unwrap_or_else(|| scope.to_string()))
        }
        "ratelimited" | "rate_limited" => SlackError::RateLimited(method),
        _ => SlackError::Refused {
            method,
            code: model::shorten(code),
        },
    }
}

/// A transport error without its URL: an upload URL is pre-signed and must not reach logs.
fn transport_error(step: &'static str, err: reqwest::Error) -> SlackError {
    let detail = if err.is_timeout() {
        "timed out".to_string()
    } else {
        err.without_url().to_string()
    };
    SlackError::Transport { step, detail }
}

/// How long a 429 asks us to wait, within [`MAX_RETRY_WAIT`].
fn retry_after(response: &reqwest::Response) -> Duration {
    response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_WAIT, Duration::from_secs)
        .min(MAX_RETRY_WAIT)
}

/// The one log line per channel outcome: the channel and `ok` or the error code, never the
/// token or the file.
fn log_outcome(what: &'static str, channel: &str, outcome: &Result<(), SlackError>) {
    let channel = model::shorten(channel);
    let channel = channel.escape_debug();
    match outcome {
        Ok(()) => tracing::info!(%channel, outcome = "ok", "{what}"),
        Err(err) => tracing::warn!(%channel, outcome = err.code(), "{what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_ids_are_uppercase_letters_and_digits() {
        for good in ["C0123ABC", "G01", "D9", "C0123456789ABCDEFGHIJKLMNOPQRSTU"] {
            assert_eq!(valid_channel(good), Ok(()), "{good}");
        }
        for bad in [
            "", "C", "#general", "general", "c0123abc", "C0123 ", "C01\n", "Ç012",
        ] {
            assert_eq!(
                valid_channel(bad),
                Err(SlackError::InvalidChannel(bad.to_string())),
                "{bad:?}"
            );
        }
        let long = "C".repeat(33);
        assert_eq!(valid_channel(&long), Err(SlackError::InvalidChannel(long)));
    }

    #[test]
    fn missing_scope_names_the_scope_slack_asked_for_or_the_methods_own() {
        let named = json!({"ok": false, "error": "missing_scope", "needed": "files:write"});
        assert_eq!(
            refusal(COMPLETE_UPLOAD, "C1", &named),
            SlackError::MissingScope("files:write".into())
        );
        let unnamed = json!({"ok": false, "error": "missing_scope"});
        assert_eq!(
            refusal(POST_MESSAGE, "C1", &unnamed),
            SlackError::MissingScope("chat:write".into())
        );
        assert_eq!(
            SlackError::MissingScope("chat:write".into()).to_string(),
            "the Slack app lacks the chat:write scope: add it under OAuth & Permissions and \
             reinstall the app"
        );
    }

    #[test]
    fn config_debug_hides_the_token() {
        let config = SlackConfig {
            token: Some("xoxb-secret".into()),
            ..SlackConfig::default()
        };
        assert_eq!(
            format!("{config:?}"),
            r#"SlackConfig { token: Some("<hidden>"), api_url: "https://slack.com/api" }"#
        );
    }
}
