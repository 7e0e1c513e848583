//! The component glue: maps the `pulse:plugin` WIT types to the core and back. Nothing here
//! decides anything about Heroku.

wit_bindgen::generate!({
    world: "integration",
    path: "../wit",
});

use exports::pulse::plugin::webhooks::{self, Delivery, DeliveryError, Outcome};
use pulse::plugin::log::{self, Level};
use pulse::plugin::storage;
use pulse::plugin::types::{Context, KeyValue, Pulse, Timestamp};

struct HerokuPlugin;

impl webhooks::Guest for HerokuPlugin {
    fn handle(context: Context, delivery: Delivery) -> Result<Outcome, DeliveryError> {
        let secret = match storage::get(crate::WEBHOOK_SECRET_KEY) {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                return Err(DeliveryError::Internal(
                    "the integration has no webhook secret; recreate it".into(),
                ));
            }
            Err(err) => {
                let message = match err {
                    storage::StorageError::Unavailable(m) | storage::StorageError::TooLarge(m) => m,
                };
                log::write(
                    Level::Error,
                    &format!("reading the webhook secret failed: {message}"),
                );
                return Err(DeliveryError::Internal(format!(
                    "storage failed: {message}"
                )));
            }
        };

        let scope = crate::Scope {
            integration: &context.integration,
            apps: &context.apps,
        };
        let headers = delivery
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()));
        match crate::handle(scope, &secret, headers, &delivery.body) {
            Ok(crate::Outcome::Pulses(pulses)) => {
                Ok(Outcome::Pulses(pulses.into_iter().map(to_wit).collect()))
            }
            Ok(crate::Outcome::Ignored(reason)) => Ok(Outcome::Ignored(reason)),
            Err(crate::DeliveryError::Unauthenticated(m)) => Err(DeliveryError::Unauthenticated(m)),
            Err(crate::DeliveryError::Malformed(m)) => Err(DeliveryError::Malformed(m)),
            Err(crate::DeliveryError::Internal(m)) => Err(DeliveryError::Internal(m)),
        }
    }
}

fn to_wit(pulse: crate::Pulse) -> Pulse {
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
