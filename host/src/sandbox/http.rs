//! Outbound HTTP from plugins: the host decides every request. Only the integration's API
//! origin is reachable, and, during an action, the log-stream URLs that API hands out in its
//! answers to `POST /apps/{app}/log-sessions`. The integration's token is added for the API
//! origin and nowhere else, and any `Authorization` a plugin sets is removed, so a plugin can
//! neither see nor misdirect a credential.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{AUTHORIZATION, HeaderValue};
use http_body_util::BodyExt;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// Where a call's plugin may send requests, and the token that goes with them.
#[derive(Clone, Default)]
pub struct Egress {
    /// `scheme://host[:port]` of the API origin the plugin may reach; none for deliveries.
    pub origin: Option<String>,
    /// The bearer token added to requests for that origin.
    pub token: Option<String>,
    /// Whether the log-stream URLs in the API's log-session answers may be fetched (without
    /// the token).
    pub log_streams: bool,
}

impl std::fmt::Debug for Egress {
    // The token is left out, so the struct can be logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("origin", &self.origin)
            .field("log_streams", &self.log_streams)
            .finish_non_exhaustive()
    }
}

/// The longest a plugin's request may wait for each step; a plugin cannot ask for more.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// A log stream of a quiet command sends nothing for a while; the plugin reopens it when it
/// ends.
const LOG_STREAM_IDLE: Duration = Duration::from_secs(300);

/// The largest log-session answer read to learn its stream's URL.
const MAX_SESSION_ANSWER: usize = 64 << 10;

/// The `scheme://authority` of a URL, lowercased; `None` for a relative one.
pub fn origin_of(uri: &http::Uri) -> Option<String> {
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?;
    Some(format!("{scheme}://{authority}").to_ascii_lowercase())
}

/// The hooks of one call.
pub(crate) struct OutboundHooks {
    pub(crate) egress: Egress,
    pub(crate) integration: String,
    /// Log-stream URLs (without query) the API handed out during this call.
    pub(crate) log_streams: Arc<Mutex<Vec<String>>>,
}

/// Which kind of destination a request has.
enum Destination {
    Api,
    LogStream,
}

impl OutboundHooks {
    fn destination(&self, uri: &http::Uri) -> Option<Destination> {
        let origin = origin_of(uri)?;
        if self.egress.origin.as_deref() == Some(origin.as_str()) {
            return Some(Destination::Api);
        }
        let url = without_query(uri);
        let streams = self.log_streams.lock().unwrap_or_else(|p| p.into_inner());
        streams
            .iter()
            .any(|allowed| *allowed == url)
            .then_some(Destination::LogStream)
    }
}

/// `scheme://authority/path`, lowercased scheme and authority, without the query.
fn without_query(uri: &http::Uri) -> String {
    format!("{}{}", origin_of(uri).unwrap_or_default(), uri.path())
}

type Io = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;
type Sent = Box<
    dyn Future<Output = Result<(http::Response<WasiBody>, Io), wasmtime_wasi_http::Error>> + Send,
>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Io,
    ) -> Sent {
        let Some(destination) = self.destination(request.uri()) else {
            tracing::warn!(
                integration = %self.integration,
                origin = %origin_of(request.uri()).as_deref().unwrap_or("(none)"),
                "refused a plugin request to an origin off the allow-list"
            );
            return Box::new(refuse(request));
        };

        request.headers_mut().remove(AUTHORIZATION);
        let mut idle = RESPONSE_TIMEOUT;
        match destination {
            Destination::Api => {
                if let Some(token) = &self.egress.token {
                    match HeaderValue::from_str(&format!("Bearer {token}")) {
                        Ok(mut value) => {
                            value.set_sensitive(true);
                            request.headers_mut().insert(AUTHORIZATION, value);
                        }
                        Err(_) => {
                            tracing::error!(
                                integration = %self.integration,
                                "the stored token is not a valid header value"
                            );
                            return Box::new(refuse(request));
                        }
                    }
                }
            }
            Destination::LogStream => idle = LOG_STREAM_IDLE,
        }

        let clamp =
            |asked: Option<Duration>, most: Duration| Some(asked.map_or(most, |d| d.min(most)));
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: clamp(options.connect_timeout, CONNECT_TIMEOUT),
            first_byte_timeout: clamp(options.first_byte_timeout, RESPONSE_TIMEOUT),
            between_bytes_timeout: clamp(options.between_bytes_timeout, idle),
        };
        let learn = matches!(destination, Destination::Api)
            && self.egress.log_streams
            && request.method() == http::Method::POST
            && request.uri().path().ends_with("/log-sessions");
        let streams = self.log_streams.clone();
        let integration = self.integration.clone();
        Box::new(async move {
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            let response = response.map(BodyExt::boxed_unsync);
            let response = if learn {
                learn_log_stream(response, &streams, &integration).await?
            } else {
                response
            };
            Ok((response, Box::new(io) as Io))
        })
    }
}

/// Reads a log-session answer (it is small), allows the stream URL it names for the rest of
/// the call, and hands the plugin the same answer.
async fn learn_log_stream(
    response: http::Response<WasiBody>,
    streams: &Mutex<Vec<String>>,
    integration: &str,
) -> Result<http::Response<WasiBody>, wasmtime_wasi_http::Error> {
    let (parts, body) = response.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_SESSION_ANSWER);
    let bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(wasmtime_wasi_http::Error::HttpResponseBodySize(None));
        }
    };
    if parts.status.is_success() {
        let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        match answer["logplex_url"]
            .as_str()
            .and_then(|url| url.parse::<http::Uri>().ok())
        {
            Some(uri) if origin_of(&uri).is_some() => {
                tracing::debug!(
                    integration,
                    origin = %origin_of(&uri).unwrap_or_default(),
                    "allowed a log stream the API handed out"
                );
                streams
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(without_query(&uri));
            }
            _ => tracing::warn!(integration, "a log-session answer names no stream URL"),
        }
    }
    let body = http_body_util::Full::new(bytes)
        .map_err(|never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} })
        .boxed_unsync();
    Ok(http::Response::from_parts(parts, body))
}

/// Refuses a request with `HttpRequestDenied`. The body the plugin is still writing is read
/// to its end (and dropped) first: closing it early would make the plugin's HTTP client
/// report a reset connection instead of the denial.
async fn refuse(
    request: http::Request<WasiBody>,
) -> Result<(http::Response<WasiBody>, Io), wasmtime_wasi_http::Error> {
    let mut body = request.into_body();
    while let Some(Ok(_)) = body.frame().await {}
    Err(wasmtime_wasi_http::Error::HttpRequestDenied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_include_the_port_and_ignore_case() {
        let uri: http::Uri = "HTTPS://API.Heroku.com/apps".parse().unwrap();
        assert_eq!(origin_of(&uri).as_deref(), Some("https://api.heroku.com"));
        let uri: http::Uri = "http://127.0.0.1:4000/apps?x=1".parse().unwrap();
        assert_eq!(origin_of(&uri).as_deref(), Some("http://127.0.0.1:4000"));
        let uri: http::Uri = "/apps".parse().unwrap();
        assert_eq!(origin_of(&uri), None);
    }
}
