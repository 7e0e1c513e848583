//! A test component for the `integration` world that misbehaves on request, so tests can
//! check that one bad call fails alone. The `x-fault` header picks the fault: `panic`,
//! `loop` (burns CPU forever) or `memory` (grows memory until the cap stops it). Without it,
//! the component stores one pulse whose dedupe key is the body.

#[cfg(target_family = "wasm")]
mod component {
    wit_bindgen::generate!({
        world: "integration",
        path: "../../../wit",
    });

    use exports::pulse::plugin::webhooks::{Delivery, DeliveryError, Guest, Outcome};
    use pulse::plugin::types::{Context, KeyValue, Pulse, Timestamp};

    struct Faulty;

    impl Guest for Faulty {
        fn handle(context: Context, delivery: Delivery) -> Result<Outcome, DeliveryError> {
            let fault = delivery
                .headers
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case("x-fault"))
                .map(|header| header.value.as_str());
            match fault {
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

    export!(Faulty);
}
