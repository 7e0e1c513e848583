//! The Heroku integration: turns signed webhook deliveries into pulses, and keeps a webhook
//! on exactly the monitored apps.
//!
//! This is the core, plain Rust that does not depend on `wit-bindgen`, so it is tested and
//! benchmarked natively; `plugin/component` is the thin layer that exports it as a WASI 0.2
//! component targeting the `pulse:plugin/integration` world.

pub mod convert;
pub mod event;
pub mod log_session;
pub mod platform_api;
pub mod pulse;
pub mod run_command;
pub mod signature;
pub mod subscriptions;
pub mod template;

pub use convert::Scope;
pub use pulse::{DeliveryError, Outcome, Pulse, Timestamp};

/// The storage key the host keeps the integration's webhook secret under.
pub const WEBHOOK_SECRET_KEY: &str = "webhook-secret";

/// Handles one delivery, in the order that keeps unauthenticated input away from the parser:
/// verify the signature over the raw bytes, parse, drop what is out of scope, convert.
pub fn handle<'a, H>(
    scope: Scope<'_>,
    secret: &[u8],
    headers: H,
    body: &[u8],
) -> Result<Outcome, DeliveryError>
where
    H: IntoIterator<Item = (&'a str, &'a str)>,
{
    let unauthenticated =
        |err: signature::SignatureError| DeliveryError::Unauthenticated(err.to_string());
    let header = signature::find(headers).map_err(unauthenticated)?;
    signature::verify(secret, header, body).map_err(unauthenticated)?;

    let malformed = |err: event::ParseError| DeliveryError::Malformed(err.0);
    let envelope = event::parse_envelope(body).map_err(malformed)?;
    // `parse_envelope` has checked that the body is UTF-8.
    let raw = std::str::from_utf8(body).unwrap_or_default();
    convert::convert(scope, envelope, raw).map_err(malformed)
}
