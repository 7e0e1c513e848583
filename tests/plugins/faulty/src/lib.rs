//! A test component for the `integration` world that misbehaves on request, so tests can
//! check that one bad call fails alone. The `x-fault` header picks the fault: `panic`,
//! `loop` (burns CPU forever) or `memory` (grows memory until the cap stops it); `fetch`
//! sends a GET to the URL in the `x-url` header, with an `Authorization` of its own, and
//! reports what happened as the ignore reason. Without it, the component stores one pulse
//! whose dedupe key is the body. Its `apply-settings` probes the host's allow-list (see
//! there); `disconnect` changes nothing; it offers no actions.

#[cfg(target_family = "wasm")]
mod component {
    wit_bindgen::generate!({
        world: "integration",
        path: "../../../wit",
    });

    use exports::pulse::plugin::lifecycle::{self, AppError, AppStatus, LifecycleError};
    use exports::pulse::plugin::webhooks::{Delivery, DeliveryError, Guest, Outcome};
    use pulse::plugin::types::{Context, KeyValue, Pulse, Timestamp};

    struct Faulty;

    impl Guest for Faulty {
        fn handle(context: Context, delivery: Delivery) -> Result<Outcome, DeliveryError> {
            let header = |name: &str| {
                delivery
                    .headers
                    .iter()
                    .find(|header| header.name.eq_ignore_ascii_case(name))
                    .map(|header| header.value.clone())
            };
            match header("x-fault").as_deref() {
                Some("fetch") => {
                    let url = header("x-url").unwrap_or_default();
                    return Ok(Outcome::Ignored(fetch(&url)));
                }
                Some("panic") => panic!("asked to panic"),
                Some("loop") => {
                    let mut n: u64 = 0;
                    loop {
                        n = std::hint::black_box(n.wrapping_add(1));
                    }
                }
                Some("memory") => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                _ => {}
            }
            let body = String::from_utf8_lossy(&delivery.body).into_owned();
            Ok(Outcome::Pulses(vec![Pulse {
                summary: format!("faulty plugin: {body}"),
                source: "faulty".into(),
                started_at: Timestamp {
                    seconds: 1_700_000_000,
                    nanoseconds: 0,
                },
                ended_at: None,
                labels: vec![KeyValue {
                    key: "integration".into(),
                    value: context.integration,
                }],
                refs: Vec::new(),
                correlations: Vec::new(),
                dedupe_key: body,
                raw: "{}".into(),
            }]))
        }
    }

    fn fetch(url: &str) -> String {
        wstd::runtime::block_on(async {
            let request = wstd::http::Request::get(url)
                .header("Authorization", "Bearer guest-made-this-up")
                .body(wstd::http::Body::empty());
            let request = match request {
                Ok(request) => request,
                Err(err) => return format!("bad request: {err}"),
            };
            match wstd::http::Client::new().send(request).await {
                Ok(response) => format!("fetched {}", response.status().as_u16()),
                Err(err) => format!("fetch failed: {err}"),
            }
        })
    }

    impl lifecycle::Guest for Faulty {
        /// Probes the allow-list: one GET to the API origin, and one to the same server
        /// under another name (`localhost` for `127.0.0.1`), which is a different origin.
        /// Each result comes back as the error text of a made-up app.
        fn apply_settings(context: Context) -> Result<Vec<AppStatus>, LifecycleError> {
            let api = context.api_url.trim_end_matches('/');
            let elsewhere = api.replacen("127.0.0.1", "localhost", 1);
            let probes = [
                ("allowed", format!("{api}/probe")),
                ("off-list", format!("{elsewhere}/probe-off-list")),
            ];
            Ok(probes
                .into_iter()
                .map(|(app, url)| AppStatus {
                    app: app.into(),
                    webhook_id: None,
                    error: Some(AppError::Transport(fetch(&url))),
                })
                .collect())
        }

        fn disconnect(_: Context) -> Result<Vec<AppStatus>, LifecycleError> {
            Ok(Vec::new())
        }
    }

    impl exports::pulse::plugin::actions::Guest for Faulty {
        fn describe() -> Vec<exports::pulse::plugin::actions::ActionSpec> {
            Vec::new()
        }

        fn invoke(
            _: Context,
            invocation: exports::pulse::plugin::actions::Invocation,
        ) -> Result<
            exports::pulse::plugin::actions::RunResult,
            exports::pulse::plugin::actions::ActionError,
        > {
            Err(exports::pulse::plugin::actions::ActionError::UnknownAction(
                invocation.action,
            ))
        }
    }

    export!(Faulty);
}
