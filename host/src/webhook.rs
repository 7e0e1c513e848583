//! `POST /webhooks/heroku/{integration}`: one delivery through the plugin into the database.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::database::Inserted;
use crate::model::{self, NewPulse};
use crate::sandbox::{CallError, Context, Delivery, DeliveryError, Header, Outcome, Pulse};
use crate::server::{
    ApiPath, AppState, DeliveryHandler, error_response, read_body, refuse_declared_length,
};

/// The largest delivery accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The most pulses one delivery may make.
const MAX_PULSES: usize = 16;

pub async fn receive(
    State(state): State<AppState>,
    ApiPath(integration): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let response = handle(&state, &integration, headers, body).await;
    // One line per delivery; never the body, the headers or the reason text.
    let outcome = response
        .extensions()
        .get::<Logged>()
        .map_or("refused", |outcome| outcome.0);
    tracing::info!(
        integration = %model::shorten(&integration).escape_debug(),
        status = response.status().as_u16(),
        outcome,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "delivery"
    );
    response
}

/// The outcome a 200 answer reports, for the log line.
#[derive(Clone, Copy)]
struct Logged(&'static str);

fn accepted(outcome: &'static str, body: serde_json::Value) -> Response {
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    response.extensions_mut().insert(Logged(outcome));
    response
}

async fn handle(state: &AppState, name: &str, headers: HeaderMap, body: Body) -> Response {
    if let Err(response) = refuse_declared_length(&headers, MAX_BODY_BYTES) {
        return response;
    }

    let database = state.host.admin.database().clone();
    let lookup = {
        let name = name.to_string();
        tokio::task::spawn_blocking(move || database.integration(&name)).await
    };
    let integration = match lookup {
        Ok(Ok(Some(integration))) => integration,
        Ok(Ok(None)) => {
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no integration named {:?}", model::shorten(name)),
            );
        }
        Ok(Err(err)) => return internal(&err.to_string()),
        Err(err) => return internal(&err.to_string()),
    };

    if let crate::model::Connection::Disconnected(reason) = &integration.connection {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "disconnected",
            &format!("integration {} is disconnected: {reason}", integration.name),
        );
    }

    let body = match read_body(&headers, body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(response) => return response,
    };

    let context = Context {
        webhook_url: state.host.admin.webhook_url(&integration.name),
        // Deliveries reach no network: the plugin gets the API's address, not access to it.
        api_url: state.host.connector.api_url().to_string(),
        integration: integration.name,
        apps: integration.apps,
    };
    let delivery = Delivery {
        // Every header reaches the plugin; bytes that are not UTF-8 become U+FFFD.
        headers: headers
            .iter()
            .map(|(name, value)| Header {
                name: name.as_str().to_string(),
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            })
            .collect(),
        body: body.to_vec(),
    };

    let database = state.host.admin.database();
    let handled = match state.host.handler {
        DeliveryHandler::Sandbox => {
            state
                .host
                .plugin
                .handle_delivery(database, &context, &delivery)
                .await
        }
        #[cfg(feature = "native-handler")]
        DeliveryHandler::Native => Ok(crate::native::handle_delivery(
            database, &context, &delivery,
        )),
    };
    let outcome = match handled {
        Ok(outcome) => outcome,
        Err(CallError::Busy(slots)) => {
            let mut response = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                &format!("all {slots} plugin slots are busy; retry shortly"),
            );
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            return response;
        }
        Err(err) => {
            tracing::error!(integration = %context.integration, error = %err, "the plugin failed");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "plugin_failed",
                "the plugin failed on this delivery; the host logged why",
            );
        }
    };

    match outcome {
        Err(DeliveryError::Unauthenticated(message)) => {
            error_response(StatusCode::UNAUTHORIZED, "unauthenticated", &message)
        }
        Err(DeliveryError::Malformed(message)) => {
            error_response(StatusCode::BAD_REQUEST, "malformed", &message)
        }
        Err(DeliveryError::Internal(message)) => {
            tracing::error!(integration = %context.integration, %message, "the plugin reported an error");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "plugin_error", &message)
        }
        Ok(Outcome::Ignored(reason)) => {
            accepted("ignored", json!({"status": "ignored", "reason": reason}))
        }
        Ok(Outcome::Pulses(pulses)) => store(state, &context.integration, pulses).await,
    }
}

async fn store(state: &AppState, integration: &str, pulses: Vec<Pulse>) -> Response {
    if pulses.is_empty() {
        let body = json!({"status": "ignored", "reason": "the plugin made no pulses"});
        return accepted("ignored", body);
    }
    let checked: Result<Vec<NewPulse>, String> = if pulses.len() > MAX_PULSES {
        Err(format!(
            "{} pulses from one delivery; the limit is {MAX_PULSES}",
            pulses.len()
        ))
    } else {
        pulses.into_iter().map(check_pulse).collect()
    };
    let pulses = match checked {
        Ok(pulses) => pulses,
        Err(reason) => {
            tracing::error!(integration, %reason, "the plugin returned an invalid pulse");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "plugin_failed",
                "the plugin returned an invalid pulse; the host logged why",
            );
        }
    };

    let database = state.host.admin.database().clone();
    let integration = integration.to_string();
    let inserted = tokio::task::spawn_blocking(move || {
        database.insert_pulses(&integration, pulses, &model::now())
    })
    .await;
    let results = match inserted {
        Ok(Ok(results)) => results,
        Ok(Err(err)) => return internal(&err.to_string()),
        Err(err) => return internal(&err.to_string()),
    };
    let ids: Vec<i64> = results
        .iter()
        .filter_map(|result| match result {
            Inserted::New(id) => Some(*id),
            Inserted::Duplicate => None,
        })
        .collect();
    if ids.is_empty() {
        accepted("duplicate", json!({"status": "duplicate"}))
    } else {
        accepted("stored", json!({"status": "stored", "pulse_ids": ids}))
    }
}

/// Checks a plugin's pulse against the host's limits: a plugin is untrusted code.
fn check_pulse(pulse: Pulse) -> Result<NewPulse, String> {
    fn text(field: &str, value: &str, max: usize, required: bool) -> Result<(), String> {
        if required && value.is_empty() {
            return Err(format!("{field} is empty"));
        }
        if value.len() > max {
            return Err(format!("{field} is longer than {max} bytes"));
        }
        Ok(())
    }
    fn pairs(field: &str, list: &[crate::sandbox::KeyValue]) -> Result<(), String> {
        if list.len() > 64 {
            return Err(format!("{field} has more than 64 entries"));
        }
        for pair in list {
            text(&format!("a key in {field}"), &pair.key, 128, true)?;
            text(
                &format!("{field}.{}", model::shorten(&pair.key)),
                &pair.value,
                2048,
                false,
            )?;
        }
        Ok(())
    }
    let time = |field: &str, t: crate::sandbox::Timestamp| {
        let t = (t.seconds, t.nanoseconds);
        if model::is_representable(t) {
            Ok(t)
        } else {
            Err(format!("{field} is out of range"))
        }
    };

    text("summary", &pulse.summary, 1024, true)?;
    text("source", &pulse.source, 64, true)?;
    text("dedupe-key", &pulse.dedupe_key, 512, true)?;
    text("raw", &pulse.raw, MAX_BODY_BYTES, false)?;
    pairs("labels", &pulse.labels)?;
    pairs("refs", &pulse.refs)?;
    pairs("correlations", &pulse.correlations)?;
    let started_at = time("started-at", pulse.started_at)?;
    let ended_at = pulse.ended_at.map(|t| time("ended-at", t)).transpose()?;

    let map = |list: Vec<crate::sandbox::KeyValue>| -> BTreeMap<String, String> {
        list.into_iter()
            .map(|pair| (pair.key, pair.value))
            .collect()
    };
    Ok(NewPulse {
        summary: pulse.summary,
        source: pulse.source,
        started_at,
        ended_at,
        labels: map(pulse.labels),
        refs: map(pulse.refs),
        correlations: pulse
            .correlations
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect(),
        dedupe_key: pulse.dedupe_key,
        raw: pulse.raw,
    })
}

fn internal(detail: &str) -> Response {
    tracing::error!(error = %detail, "storing a delivery failed");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the host could not store this delivery; it logged why",
    )
}
