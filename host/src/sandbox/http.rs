//! Outbound HTTP from plugins: the host decides every request. Only the integration's API
//! origin is reachable; the integration's token is added there and nowhere else, and any
//! `Authorization` a plugin sets is removed, so a plugin can neither see nor misdirect a
//! credential.

use std::future::Future;
use std::time::Duration;

use http::header::{AUTHORIZATION, HeaderValue};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// Where a call's plugin may send requests, and the token that goes with them.
#[derive(Clone, Default)]
pub struct Egress {
    /// `scheme://host[:port]` of the one origin the plugin may reach; none for deliveries.
    pub origin: Option<String>,
    /// The bearer token added to requests for that origin.
    pub token: Option<String>,
}

impl std::fmt::Debug for Egress {
    // The token is left out, so the struct can be logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The longest a plugin's request may wait for each step; a plugin cannot ask for more.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

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
        let origin = origin_of(request.uri());
        if origin.is_none() || origin != self.egress.origin {
            tracing::warn!(
                integration = %self.integration,
                origin = %origin.as_deref().unwrap_or("(none)"),
                "refused a plugin request to an origin off the allow-list"
            );
            return Box::new(refuse(request));
        }

        request.headers_mut().remove(AUTHORIZATION);
        if let Some(token) = &self.egress.token {
            match HeaderValue::from_str(&format!("Bearer {token}")) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    request.headers_mut().insert(AUTHORIZATION, value);
                }
                Err(_) => {
                    tracing::error!(integration = %self.integration, "the stored token is not a valid header value");
                    return Box::new(refuse(request));
                }
            }
        }

        let clamp =
            |asked: Option<Duration>, most: Duration| Some(asked.map_or(most, |d| d.min(most)));
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: clamp(options.connect_timeout, CONNECT_TIMEOUT),
            first_byte_timeout: clamp(options.first_byte_timeout, RESPONSE_TIMEOUT),
            between_bytes_timeout: clamp(options.between_bytes_timeout, RESPONSE_TIMEOUT),
        };
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Io))
        })
    }
}

/// Refuses a request with `HttpRequestDenied`. The body the plugin is still writing is read
/// to its end (and dropped) first: closing it early would make the plugin's HTTP client
/// report a reset connection instead of the denial.
async fn refuse(
    request: http::Request<WasiBody>,
) -> Result<(http::Response<WasiBody>, Io), wasmtime_wasi_http::Error> {
    use http_body_util::BodyExt;
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
