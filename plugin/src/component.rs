//! The component glue: maps the `pulse:plugin` WIT types to the core and back, and gives the
//! core its transport (`wasi:http`, through `wstd`) and its records (the host's storage).
//! Nothing here decides anything about Heroku.

wit_bindgen::generate!({
    world: "integration",
    path: "../wit",
});

use std::time::Duration;

use exports::pulse::plugin::lifecycle::{self, AppError, AppStatus, LifecycleError};
use exports::pulse::plugin::webhooks::{self, Delivery, DeliveryError, Outcome};
use pulse::plugin::log::{self, Level};
use pulse::plugin::storage;
use pulse::plugin::types::{ApiError, Context, KeyValue, Pulse, Timestamp};

use crate::platform_api::{self, Failure, PlatformApi, Response, Transport};
use crate::subscriptions::{self, Records, Stop, Subscription};

struct HerokuPlugin;

impl webhooks::Guest for HerokuPlugin {
    fn handle(context: Context, delivery: Delivery) -> Result<Outcome, DeliveryError> {
        let secret = webhook_secret().map_err(DeliveryError::Internal)?;
        let scope = crate::Scope {
            integration: &context.integration,
            apps: &context.apps,
        };
        let headers = delivery
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()));
        match crate::handle(scope, secret.as_bytes(), headers, &delivery.body) {
            Ok(crate::Outcome::Pulses(pulses)) => Ok(Outcome::Pulses(
                pulses.into_iter().map(pulse_to_wit).collect(),
            )),
            Ok(crate::Outcome::Ignored(reason)) => Ok(Outcome::Ignored(reason)),
            Err(crate::DeliveryError::Unauthenticated(m)) => Err(DeliveryError::Unauthenticated(m)),
            Err(crate::DeliveryError::Malformed(m)) => Err(DeliveryError::Malformed(m)),
            Err(crate::DeliveryError::Internal(m)) => Err(DeliveryError::Internal(m)),
        }
    }
}

impl lifecycle::Guest for HerokuPlugin {
    fn apply_settings(context: Context) -> Result<Vec<AppStatus>, LifecycleError> {
        let secret = webhook_secret().map_err(LifecycleError::Internal)?;
        let api = PlatformApi::new(WasiTransport, &context.api_url);
        let subscription = Subscription {
            url: &context.webhook_url,
            secret: &secret,
        };
        let result = wstd::runtime::block_on(subscriptions::apply(
            &api,
            &StorageRecords,
            &context.apps,
            &subscription,
        ));
        statuses_to_wit(result)
    }

    fn disconnect(context: Context) -> Result<Vec<AppStatus>, LifecycleError> {
        let api = PlatformApi::new(WasiTransport, &context.api_url);
        let result = wstd::runtime::block_on(subscriptions::disconnect(
            &api,
            &StorageRecords,
            &context.apps,
            &context.webhook_url,
        ));
        statuses_to_wit(result)
    }
}

/// The webhook secret the host keeps for the integration.
fn webhook_secret() -> Result<String, String> {
    match storage::get(crate::WEBHOOK_SECRET_KEY) {
        Ok(Some(secret)) => String::from_utf8(secret)
            .map_err(|_| "the stored webhook secret is not UTF-8; recreate the integration".into()),
        Ok(None) => Err("the integration has no webhook secret; recreate it".into()),
        Err(err) => {
            let message = storage_message(err);
            log::write(
                Level::Error,
                &format!("reading the webhook secret failed: {message}"),
            );
            Err(format!("storage failed: {message}"))
        }
    }
}

fn storage_message(err: storage::StorageError) -> String {
    match err {
        storage::StorageError::Unavailable(m) | storage::StorageError::TooLarge(m) => m,
    }
}

/// `wasi:http` through `wstd`.
struct WasiTransport;

impl Transport for WasiTransport {
    async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Response, String> {
        let mut request = wstd::http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = body
            .map(wstd::http::Body::from)
            .unwrap_or_else(wstd::http::Body::empty);
        let request = request
            .body(body)
            .map_err(|err| format!("{method} {url}: {err}"))?;

        let mut client = wstd::http::Client::new();
        client.set_connect_timeout(Duration::from_secs(10));
        client.set_first_byte_timeout(Duration::from_secs(30));
        client.set_between_bytes_timeout(Duration::from_secs(30));
        // A request the host refuses (an origin off its allow-list) fails here too, with
        // the denial in the error's text.
        let response = client
            .send(request)
            .await
            .map_err(|err| format!("{method} {url} failed: {err}"))?;

        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = response.into_body();
        let body = body
            .contents()
            .await
            .map_err(|err| format!("{method} {url}: {err}"))?
            .to_vec();
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    async fn sleep(&self, duration: Duration) {
        wstd::task::sleep(duration.into()).await;
    }
}

/// The records in the host's storage for the integration.
struct StorageRecords;

impl Records for StorageRecords {
    fn set(&self, key: &str, value: &str) -> Result<(), String> {
        storage::set(key, value.as_bytes()).map_err(storage_message)
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        storage::delete(key).map_err(storage_message)
    }

    fn keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        storage::list_keys(prefix).map_err(storage_message)
    }
}

fn statuses_to_wit(
    result: Result<Vec<subscriptions::AppStatus>, Stop>,
) -> Result<Vec<AppStatus>, LifecycleError> {
    match result {
        Ok(statuses) => Ok(statuses
            .into_iter()
            .map(|status| AppStatus {
                app: status.app,
                webhook_id: status.webhook_id,
                error: status.error.map(|failure| match failure {
                    Failure::Api(error) => AppError::Api(api_error_to_wit(error)),
                    Failure::Transport(message) => AppError::Transport(message),
                }),
            })
            .collect()),
        Err(Stop::Unauthenticated(error)) => {
            Err(LifecycleError::Unauthenticated(api_error_to_wit(error)))
        }
        Err(Stop::Invalid(message)) => Err(LifecycleError::Invalid(message)),
        Err(Stop::Records(message)) => Err(LifecycleError::Internal(message)),
    }
}

fn api_error_to_wit(error: platform_api::ApiError) -> ApiError {
    ApiError {
        status: error.status,
        id: error.id,
        message: error.message,
        request_id: error.request_id,
    }
}

fn pulse_to_wit(pulse: crate::Pulse) -> Pulse {
    let pairs = |pairs: Vec<(String, String)>| {
        pairs
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect()
    };
    let time = |t: crate::Timestamp| Timestamp {
        seconds: t.seconds,
        nanoseconds: t.nanoseconds,
    };
    Pulse {
        summary: pulse.summary,
        source: pulse.source,
        started_at: time(pulse.started_at),
        ended_at: pulse.ended_at.map(time),
        labels: pairs(pulse.labels),
        refs: pairs(pulse.refs),
        correlations: pairs(pulse.correlations),
        dedupe_key: pulse.dedupe_key,
        raw: pulse.raw,
    }
}

export!(HerokuPlugin);
