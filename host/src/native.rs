//! A delivery handler that runs the Heroku core natively in the host's process instead of in
//! the sandbox. Built only with the `native-handler` feature, so the benchmarks can measure
//! what the sandbox costs against the same code; it is never a way to run other plugins.

use crate::database::Database;
use crate::sandbox::{Context, Delivery, DeliveryError, KeyValue, Outcome, Pulse, Timestamp};

/// Does what the component's `webhooks.handle` does: reads the integration's secret from its
/// storage, then verifies, parses, scopes and converts the delivery.
pub fn handle_delivery(
    database: &Database,
    context: &Context,
    delivery: &Delivery,
) -> Result<Outcome, DeliveryError> {
    let secret = database
        .kv_get(&context.integration, heroku_plugin::WEBHOOK_SECRET_KEY)
        .map_err(|err| DeliveryError::Internal(format!("storage failed: {err}")))?
        .ok_or_else(|| {
            DeliveryError::Internal("the integration has no webhook secret; recreate it".into())
        })?;
    let scope = heroku_plugin::Scope {
        integration: &context.integration,
        apps: &context.apps,
    };
    let headers = delivery
        .headers
        .iter()
        .map(|header| (header.name.as_str(), header.value.as_str()));

    match heroku_plugin::handle(scope, &secret, headers, &delivery.body) {
        Ok(heroku_plugin::Outcome::Pulses(pulses)) => {
            Ok(Outcome::Pulses(pulses.into_iter().map(pulse).collect()))
        }
        Ok(heroku_plugin::Outcome::Ignored(reason)) => Ok(Outcome::Ignored(reason)),
        Err(heroku_plugin::DeliveryError::Unauthenticated(m)) => {
            Err(DeliveryError::Unauthenticated(m))
        }
        Err(heroku_plugin::DeliveryError::Malformed(m)) => Err(DeliveryError::Malformed(m)),
        Err(heroku_plugin::DeliveryError::Internal(m)) => Err(DeliveryError::Internal(m)),
    }
}

fn pulse(pulse: heroku_plugin::Pulse) -> Pulse {
    let pairs = |pairs: Vec<(String, String)>| {
        pairs
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect()
    };
    let time = |t: heroku_plugin::Timestamp| Timestamp {
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
