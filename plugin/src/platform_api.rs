//! Calls to Heroku's Platform API: the v3 headers, Heroku's error bodies, bounded retries on
//! 429 and `Next-Range` pagination. The bytes travel through a [`Transport`], which is
//! `wasi:http` in the component; the host adds the credentials on the way out.

use std::time::Duration;

use serde_json::Value;

/// The media type every Platform API request asks for.
pub const ACCEPT: &str = "application/vnd.heroku+json; version=3";

/// How often a 429 is retried, and the first wait; each wait doubles (0.5 s to 4 s, 7.5 s
/// in all), which is within the 75-requests-a-minute refill of Heroku's rate limit.
const RATE_LIMIT_RETRIES: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The most pages a list is followed through, so a misbehaving server cannot loop us.
const MAX_PAGES: usize = 100;

/// An answer, read whole (Platform API answers are small).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A piece of a streamed answer, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The next bytes.
    Chunk(Vec<u8>),
    /// The answer ended.
    End,
    /// Nothing arrived within the wait; the stream is still open.
    Idle,
    /// The stream broke.
    Failed(String),
}

/// An answer's body, read as it arrives.
#[allow(async_fn_in_trait)]
pub trait Chunks {
    /// The next piece, waiting at most `wait` for it.
    async fn next(&mut self, wait: Duration) -> Read;
}

/// Sends requests; `wasi:http` in the component.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// A streamed answer's body.
    type Chunks: Chunks;

    /// GETs `url` (a log stream, say) and returns its status and its body as it arrives.
    async fn open(&self, url: &str) -> Result<(u16, Self::Chunks), String>;

    /// Sends one request to `url`; an error means no answer was read.
    async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Response, String>;

    /// Waits, without blocking the host.
    async fn sleep(&self, duration: Duration);
}

/// An error answer from Heroku.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub id: String,
    pub message: String,
    pub request_id: Option<String>,
}

/// Why a call produced no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Heroku answered with an error.
    Api(ApiError),
    /// The request did not get an answer we could read.
    Transport(String),
}

impl Failure {
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Failure::Api(error) if error.status == 401)
    }
}

/// A Platform API client over a transport.
pub struct PlatformApi<T> {
    transport: T,
    base: String,
}

impl<T: Transport> PlatformApi<T> {
    pub fn new(transport: T, base: &str) -> Self {
        PlatformApi {
            transport,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// The transport, for requests outside the Platform API (log streams).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// One call; a JSON body is sent when given. Returns the parsed JSON answer (`null`
    /// when empty) and the response.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        range: Option<&str>,
    ) -> Result<(Value, Response), Failure> {
        let url = format!("{}{path}", self.base);
        let payload = body.map(|body| serde_json::to_vec(body).expect("JSON values serialize"));
        let mut headers = vec![("Accept", ACCEPT)];
        if payload.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        if let Some(range) = range {
            headers.push(("Range", range));
        }

        let mut wait = FIRST_BACKOFF;
        let mut attempt = 0;
        let response = loop {
            let response = self
                .transport
                .send(method, &url, &headers, payload.clone())
                .await
                .map_err(Failure::Transport)?;
            if response.status != 429 || attempt == RATE_LIMIT_RETRIES {
                break response;
            }
            attempt += 1;
            self.transport.sleep(wait).await;
            wait *= 2;
        };

        if response.status >= 400 {
            return Err(Failure::Api(api_error(&response)));
        }
        let value = if response.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&response.body).map_err(|err| {
                Failure::Transport(format!("{method} {path}: the answer is not JSON: {err}"))
            })?
        };
        Ok((value, response))
    }

    /// Every item of a list, following `Next-Range` to the end.
    pub async fn list(&self, path: &str) -> Result<Vec<Value>, Failure> {
        let mut items = Vec::new();
        let mut range: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let (page, response) = self.call("GET", path, None, range.as_deref()).await?;
            match page {
                Value::Array(page) => items.extend(page),
                _ => {
                    return Err(Failure::Transport(format!(
                        "GET {path}: the answer is not a list"
                    )));
                }
            }
            match (response.status, response.header("Next-Range")) {
                (206, Some(next)) => range = Some(next.to_string()),
                _ => return Ok(items),
            }
        }
        Err(Failure::Transport(format!(
            "GET {path}: more than {MAX_PAGES} pages"
        )))
    }
}

/// Reads Heroku's error body (`{"id", "message"}`), or describes what came instead.
fn api_error(response: &Response) -> ApiError {
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_string);
    ApiError {
        status: response.status,
        id: text("id").unwrap_or_else(|| format!("http_{}", response.status)),
        message: text("message")
            .unwrap_or_else(|| format!("Heroku answered {} with no message", response.status)),
        request_id: response.header("Request-Id").map(str::to_string),
    }
}
