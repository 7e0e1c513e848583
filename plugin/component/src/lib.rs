//! The Heroku integration as a WASI 0.2 component: the thin `wit-bindgen` layer over the
//! `heroku-plugin` core. It maps the `pulse:plugin` WIT types to the core and back, and gives
//! the core its transport (`wasi:http`, through `wstd`) and its records (the host's storage).
//! Nothing here decides anything about Heroku.
//!
//! Built with `cargo build --target wasm32-wasip2` (the host's build script does it); natively
//! this crate is empty.

#![cfg(target_family = "wasm")]

wit_bindgen::generate!({
    world: "integration",
    path: "../../wit",
});

use std::time::Duration;

use wstd::http::body::Bytes;
use wstd::http::body::util::combinators::UnsyncBoxBody;

use exports::pulse::plugin::actions::{
    self, ActionError, ActionSpec, Exit, Invocation, ParamKind, ParamSpec, ParamValue, RunResult,
};
use exports::pulse::plugin::lifecycle::{self, AppError, AppStatus, LifecycleError};
use exports::pulse::plugin::webhooks::{self, Delivery, DeliveryError, Outcome};
use pulse::plugin::log::{self, Level};
use pulse::plugin::types::{ApiError, Context, KeyValue, Pulse, Timestamp};
use pulse::plugin::{run_output, slack, storage, timeline};

use heroku_plugin::platform_api::{self, Chunks, Failure, PlatformApi, Read, Response, Transport};
use heroku_plugin::run_command;
use heroku_plugin::subscriptions::{self, Records, Stop, Subscription};

struct HerokuPlugin;

impl webhooks::Guest for HerokuPlugin {
    fn handle(context: Context, delivery: Delivery) -> Result<Outcome, DeliveryError> {
        let secret = webhook_secret().map_err(DeliveryError::Internal)?;
        let scope = heroku_plugin::Scope {
            integration: &context.integration,
            apps: &context.apps,
        };
        let headers = delivery
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()));
        match heroku_plugin::handle(scope, secret.as_bytes(), headers, &delivery.body) {
            Ok(heroku_plugin::Outcome::Pulses(pulses)) => Ok(Outcome::Pulses(
                pulses.into_iter().map(pulse_to_wit).collect(),
            )),
            Ok(heroku_plugin::Outcome::Ignored(reason)) => Ok(Outcome::Ignored(reason)),
            Err(heroku_plugin::DeliveryError::Unauthenticated(m)) => {
                Err(DeliveryError::Unauthenticated(m))
            }
            Err(heroku_plugin::DeliveryError::Malformed(m)) => Err(DeliveryError::Malformed(m)),
            Err(heroku_plugin::DeliveryError::Internal(m)) => Err(DeliveryError::Internal(m)),
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

impl actions::Guest for HerokuPlugin {
    fn describe() -> Vec<ActionSpec> {
        run_command::describe()
            .into_iter()
            .map(|spec| ActionSpec {
                name: spec.name.into(),
                title: spec.title.into(),
                help: spec.help.into(),
                params: spec.params.into_iter().map(param_spec_to_wit).collect(),
            })
            .collect()
    }

    fn invoke(context: Context, invocation: Invocation) -> Result<RunResult, ActionError> {
        if invocation.action != run_command::NAME {
            return Err(ActionError::UnknownAction(format!(
                "this plugin has no action named {:?}; it has {}",
                invocation.action.chars().take(80).collect::<String>(),
                run_command::NAME
            )));
        }
        let given = invocation
            .params
            .into_iter()
            .map(|param| {
                let value = match param.value {
                    ParamValue::Text(text) => run_command::ParamValue::Text(text),
                    ParamValue::Integer(n) => run_command::ParamValue::Integer(n),
                    ParamValue::Boolean(b) => run_command::ParamValue::Boolean(b),
                    ParamValue::TextList(list) => run_command::ParamValue::TextList(list),
                };
                (param.name, value)
            })
            .collect();
        let run_context: serde_json::Value = serde_json::from_str(&invocation.context_json)
            .map_err(|err| ActionError::InvalidParams(format!("the context is not JSON: {err}")))?;
        if !run_context.is_object() {
            return Err(ActionError::InvalidParams(
                "the context must be a JSON object".into(),
            ));
        }
        let params =
            run_command::parse_params(given, &context.apps).map_err(action_error_to_wit)?;

        let api = PlatformApi::new(WasiTransport, &context.api_url);
        let result = wstd::runtime::block_on(run_command::run(
            &api,
            &ImportedRunHost,
            &params,
            &run_context,
        ));
        let result = result.map_err(action_error_to_wit)?;
        Ok(RunResult {
            dyno: result.dyno,
            exit: match result.exit {
                run_command::Exit::Status(status) => Exit::Status(status),
                run_command::Exit::TimedOut => Exit::TimedOut,
            },
            duration_ms: result.duration.as_millis() as u64,
            output_bytes: result.output_bytes,
            command: result.command,
            shares: result
                .shares
                .into_iter()
                .map(|share| slack::ShareOutcome {
                    channel: share.channel,
                    error: share.error,
                })
                .collect(),
            timeline_recorded: result.timeline_recorded,
            timeline_error: result.timeline_error,
        })
    }
}

fn param_spec_to_wit(spec: run_command::ParamSpec) -> ParamSpec {
    ParamSpec {
        name: spec.name.into(),
        kind: match spec.kind {
            run_command::ParamKind::Text => ParamKind::Text,
            run_command::ParamKind::Template => ParamKind::Template,
            run_command::ParamKind::App => ParamKind::App,
            run_command::ParamKind::Choice => ParamKind::Choice,
            run_command::ParamKind::Integer => ParamKind::Integer,
            run_command::ParamKind::Boolean => ParamKind::Boolean,
            run_command::ParamKind::Channels => ParamKind::Channels,
        },
        required: spec.required,
        default_value: spec.default_value.map(str::to_string),
        allowed: spec.allowed.into_iter().map(str::to_string).collect(),
        help: spec.help.into(),
    }
}

fn action_error_to_wit(error: run_command::ActionError) -> ActionError {
    use run_command::ActionError as E;
    match error {
        E::UnknownAction(m) => ActionError::UnknownAction(m),
        E::InvalidParams(m) => ActionError::InvalidParams(m),
        E::Template(m) => ActionError::Template(m),
        E::NotPermitted(m) => ActionError::NotPermitted(m),
        E::Unauthenticated(e) => ActionError::Unauthenticated(api_error_to_wit(e)),
        E::HerokuApi(e) => ActionError::HerokuApi(api_error_to_wit(e)),
        E::Transport(m) => ActionError::Transport(m),
        E::Internal(m) => ActionError::Internal(m),
    }
}

/// The run's host: the `run-output`, `slack` and `timeline` imports.
struct ImportedRunHost;

impl run_command::RunHost for ImportedRunHost {
    fn started(&self, dyno: &str, command: &str) {
        run_output::started(dyno, command);
    }

    fn write(&self, chunk: &[u8]) {
        run_output::write(chunk);
    }

    fn share(&self, channels: &[String], title: &str, comment: &str) -> Vec<run_command::Share> {
        slack::share_output(channels, title, comment)
            .into_iter()
            .map(|outcome| run_command::Share {
                channel: outcome.channel,
                error: outcome.error,
            })
            .collect()
    }

    fn add_event(
        &self,
        incident: &str,
        summary: &str,
        details: Vec<(String, String)>,
    ) -> Result<(), String> {
        timeline::add_event(&timeline::Event {
            incident_id: incident.into(),
            summary: summary.into(),
            details: details
                .into_iter()
                .map(|(key, value)| KeyValue { key, value })
                .collect(),
        })
    }
}

/// The webhook secret the host keeps for the integration.
fn webhook_secret() -> Result<String, String> {
    match storage::get(heroku_plugin::WEBHOOK_SECRET_KEY) {
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

/// A streamed answer's body through `wstd`.
struct WasiChunks(UnsyncBoxBody<Bytes, wstd::http::Error>);

impl Chunks for WasiChunks {
    async fn next(&mut self, wait: Duration) -> Read {
        use wstd::future::FutureExt as _;
        use wstd::http::body::util::BodyExt as _;
        loop {
            let frame = self
                .0
                .frame()
                .timeout(wstd::time::Duration::from(wait))
                .await;
            return match frame {
                Err(_) => Read::Idle,
                Ok(None) => Read::End,
                Ok(Some(Err(err))) => Read::Failed(err.to_string()),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Read::Chunk(data.to_vec()),
                    // Trailers carry no output.
                    Err(_) => continue,
                },
            };
        }
    }
}

impl Transport for WasiTransport {
    type Chunks = WasiChunks;

    async fn open(&self, url: &str) -> Result<(u16, WasiChunks), String> {
        let request = wstd::http::Request::get(url)
            .body(wstd::http::Body::empty())
            .map_err(|err| format!("GET {url}: {err}"))?;
        let mut client = wstd::http::Client::new();
        client.set_connect_timeout(Duration::from_secs(10));
        client.set_first_byte_timeout(Duration::from_secs(30));
        // A quiet command sends nothing for a while; the host bounds this too.
        client.set_between_bytes_timeout(Duration::from_secs(300));
        let response = client
            .send(request)
            .await
            .map_err(|err| format!("GET {url} failed: {err}"))?;
        let status = response.status().as_u16();
        Ok((status, WasiChunks(response.into_body().into_boxed_body())))
    }

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

fn pulse_to_wit(pulse: heroku_plugin::Pulse) -> Pulse {
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

export!(HerokuPlugin);
