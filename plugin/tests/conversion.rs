//! The conversion rules, driven through `handle` with signed fixtures, as the component sees
//! deliveries: every Heroku example body and our own fixtures modelled on real deliveries.

use heroku_plugin::signature::{self, HEADER};
use heroku_plugin::{DeliveryError, Outcome, Pulse, Scope, Timestamp, handle};

const SECRET: &[u8] = b"whsec-fixture";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|err| panic!("{path}: {err}"))
}

fn deliver_to(apps: &[&str], body: &[u8]) -> Result<Outcome, DeliveryError> {
    let apps: Vec<String> = apps.iter().map(|app| app.to_string()).collect();
    let scope = Scope {
        integration: "acme",
        apps: &apps,
    };
    let sig = signature::sign(SECRET, body);
    handle(
        scope,
        SECRET,
        [("Content-Type", "application/json"), (HEADER, sig.as_str())],
        body,
    )
}

fn deliver(name: &str) -> Result<Outcome, DeliveryError> {
    deliver_to(&["billing-api"], &fixture(name))
}

fn one_pulse(name: &str) -> Pulse {
    match deliver(name) {
        Ok(Outcome::Pulses(mut pulses)) if pulses.len() == 1 => pulses.remove(0),
        other => panic!("{name}: expected one pulse, got {other:?}"),
    }
}

fn ignored(result: Result<Outcome, DeliveryError>) -> String {
    match result {
        Ok(Outcome::Ignored(reason)) => reason,
        other => panic!("expected an ignore, got {other:?}"),
    }
}

fn at(text: &str) -> Timestamp {
    heroku_plugin::event::parse_timestamp(text, "test").unwrap()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_heroku_example_parses_into_a_pulse_or_a_reason() {
    let dir = format!("{}/fixtures/heroku-examples", env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let body = std::fs::read(&path).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let app = value["data"]["app"]["name"]
            .as_str()
            .unwrap_or("none")
            .to_string();
        let outcome = deliver_to(&[app.as_str()], &body);
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        match (name.as_str(), outcome) {
            ("api-release-update.json", Ok(Outcome::Pulses(pulses))) => {
                // Heroku's example is a failed release with a null description.
                assert_eq!(pulses[0].summary, "[Heroku][Release] v1 (failed)");
            }
            ("api-release-create.json", Ok(Outcome::Ignored(reason))) => {
                assert_eq!(reason, "release v3 is not current");
            }
            ("api-dyno-create.json", Ok(Outcome::Ignored(reason))) => {
                assert_eq!(reason, "dyno events are not converted");
            }
            (_, Ok(Outcome::Ignored(reason))) => {
                let resource = value["resource"].as_str().unwrap();
                assert_eq!(
                    reason,
                    format!("{resource} events are not converted"),
                    "{name}"
                );
            }
            (_, other) => panic!("{name}: unexpected {other:?}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 24, "every example in {dir} was checked");
}

#[test]
fn pending_build_has_no_end_and_its_labels_and_refs() {
    let pulse = one_pulse("build-create-pending.json");
    assert_eq!(pulse.summary, "[Heroku][Build] billing-api pending");
    assert_eq!(pulse.source, "heroku");
    assert_eq!(pulse.started_at, at("2024-03-09T09:58:02.120394Z"));
    assert_eq!(pulse.ended_at, None);
    assert_eq!(
        pulse.labels,
        pairs(&[
            ("app", "billing-api"),
            ("kind", "build"),
            ("status", "pending"),
            ("stack", "heroku-24"),
            ("user", "dana@example.com"),
        ])
    );
    assert_eq!(
        pulse.refs,
        pairs(&[
            ("build_id", "7f3a9c1e-5b2d-4e8f-a6c4-1d2e3f4a5b6c"),
            ("commit", "69eec518a1b2c3d4e5f60718293a4b5c6d7e8f90"),
            ("event_id", "a0000000-0000-4000-8000-000000000001"),
        ])
    );
    assert_eq!(
        pulse.correlations,
        pairs(&[("heroku_app_name", "billing-api")])
    );
    assert_eq!(
        pulse.dedupe_key,
        "build:7f3a9c1e-5b2d-4e8f-a6c4-1d2e3f4a5b6c:pending"
    );
    assert_eq!(pulse.raw.as_bytes(), fixture("build-create-pending.json"));
}

#[test]
fn succeeded_build_ends_and_refs_its_release() {
    let pulse = one_pulse("build-update-succeeded.json");
    assert_eq!(pulse.summary, "[Heroku][Build] billing-api succeeded");
    assert_eq!(pulse.ended_at, Some(at("2024-03-09T09:59:40.877Z")));
    assert_eq!(
        pulse.reference("release_id"),
        Some("d1e2f3a4-0000-4000-8000-000000000042")
    );
    assert_eq!(pulse.reference("release_version"), Some("v42"));
    assert_eq!(
        pulse.dedupe_key,
        "build:7f3a9c1e-5b2d-4e8f-a6c4-1d2e3f4a5b6c:succeeded"
    );
}

#[test]
fn failed_build_takes_its_commit_from_the_slug_and_has_no_stack() {
    let pulse = one_pulse("build-update-failed.json");
    assert_eq!(pulse.summary, "[Heroku][Build] billing-api failed");
    assert_eq!(pulse.label("status"), Some("failed"));
    assert_eq!(pulse.label("stack"), None);
    assert_eq!(
        pulse.reference("commit"),
        Some("0123456789abcdef0123456789abcdef01234567")
    );
    assert_eq!(pulse.ended_at, Some(at("2024-03-09T10:03:11Z")));
}

#[test]
fn deployed_release_is_a_pulse() {
    let pulse = one_pulse("release-update-deployed.json");
    assert_eq!(pulse.summary, "[Heroku][Release] Deploy 69eec518");
    assert_eq!(pulse.started_at, at("2024-03-09T09:59:41Z"));
    assert_eq!(pulse.ended_at, Some(at("2024-03-09T10:00:31.102Z")));
    assert_eq!(
        pulse.labels,
        pairs(&[
            ("app", "billing-api"),
            ("kind", "release"),
            ("status", "succeeded"),
            ("stack", "heroku-24"),
            ("user", "dana@example.com"),
        ])
    );
    assert_eq!(
        pulse.refs,
        pairs(&[
            ("release_id", "d1e2f3a4-0000-4000-8000-000000000042"),
            ("release_version", "v42"),
            ("slug_id", "3c2b1a09-0000-4000-8000-0000000000aa"),
            ("event_id", "b0000000-0000-4000-8000-000000000003"),
        ])
    );
    assert_eq!(
        pulse.dedupe_key,
        "release:d1e2f3a4-0000-4000-8000-000000000042:succeeded"
    );
}

#[test]
fn release_create_and_intermediate_update_are_not_current() {
    assert_eq!(
        ignored(deliver("release-create-pending.json")),
        "release v42 is not current"
    );
    assert_eq!(
        ignored(deliver("release-update-intermediate.json")),
        "release v42 is not current"
    );
}

#[test]
fn failed_release_says_so() {
    let pulse = one_pulse("release-update-failed.json");
    assert_eq!(pulse.summary, "[Heroku][Release] Deploy 7a8b9c0d (failed)");
    assert_eq!(pulse.label("status"), Some("failed"));
    assert_eq!(
        pulse.dedupe_key,
        "release:d1e2f3a4-0000-4000-8000-000000000044:failed"
    );
}

#[test]
fn empty_description_and_missing_metadata_fall_back_to_the_version() {
    let pulse = one_pulse("release-update-no-metadata.json");
    assert_eq!(pulse.summary, "[Heroku][Release] v43");
}

#[test]
fn nulls_where_examples_have_values_still_convert() {
    let pulse = one_pulse("release-update-nulls.json");
    assert_eq!(pulse.summary, "[Heroku][Release] v45");
    assert_eq!(pulse.label("stack"), None);
    assert_eq!(pulse.label("user"), None);
    assert_eq!(pulse.reference("commit"), None);
}

#[test]
fn dyno_lifecycle_events_are_acknowledged_and_ignored() {
    assert_eq!(
        ignored(deliver("dyno-lifecycle-down.json")),
        "dyno events are not converted"
    );
}

#[test]
fn unlisted_app_is_ignored_with_a_reason() {
    let reason = ignored(deliver_to(
        &["payments"],
        &fixture("release-update-deployed.json"),
    ));
    assert_eq!(
        reason,
        "app billing-api is not monitored by integration acme"
    );
}

#[test]
fn empty_app_list_ignores_everything() {
    for name in ["release-update-deployed.json", "build-create-pending.json"] {
        let reason = ignored(deliver_to(&[], &fixture(name)));
        assert_eq!(reason, "integration acme monitors no apps");
    }
}

#[test]
fn app_may_be_listed_by_id() {
    let body = fixture("release-update-deployed.json");
    let outcome = deliver_to(&["4a4d3b52-1ad1-4f3c-9a8b-2f0c4b9d7e11"], &body).unwrap();
    assert!(
        matches!(outcome, Outcome::Pulses(ref p) if p.len() == 1),
        "{outcome:?}"
    );
}

#[test]
fn app_names_match_case_sensitively() {
    let reason = ignored(deliver_to(
        &["Billing-API"],
        &fixture("release-update-deployed.json"),
    ));
    assert_eq!(
        reason,
        "app billing-api is not monitored by integration acme"
    );
}

#[test]
fn bad_signature_is_refused_before_parsing() {
    let body = b"this is not json";
    let headers = [(HEADER, "Ic1Txq9396O+EtPi4lTs9PiOWAE1lxjnBnHJFC9tHbg=")];
    let scope = Scope {
        integration: "acme",
        apps: &[],
    };
    assert_eq!(
        handle(scope, SECRET, headers, body),
        Err(DeliveryError::Unauthenticated(
            "the Heroku-Webhook-Hmac-SHA256 header does not match the body and the \
             integration's secret"
                .into()
        ))
    );
}

#[test]
fn missing_signature_is_refused() {
    let scope = Scope {
        integration: "acme",
        apps: &[],
    };
    let body = fixture("release-update-deployed.json");
    assert_eq!(
        handle(scope, SECRET, [("Content-Type", "application/json")], &body),
        Err(DeliveryError::Unauthenticated(
            "the Heroku-Webhook-Hmac-SHA256 header is missing".into()
        ))
    );
}

#[test]
fn wrong_field_types_are_malformed_and_name_the_field() {
    let cases = [
        (
            r#"{"resource":"release","action":"update","data":{"version":"42","app":{"name":"billing-api"}}}"#,
            "`data.version`: invalid type: string \"42\", expected u64",
        ),
        (
            r#"{"resource":"release","action":"update","data":{"current":"yes","app":{"name":"billing-api"}}}"#,
            "`data.current`: invalid type: string \"yes\", expected a boolean",
        ),
        (
            r#"{"resource":"build","action":"create","data":{"app":{"name":7}}}"#,
            "`data.app.name`: invalid type: integer `7`, expected a string",
        ),
        (
            r#"{"resource":"build","action":"create","data":{"status":"pending","id":"b"}}"#,
            "`data.app.name` is missing",
        ),
        (
            r#"{"resource":5,"action":"update","data":{}}"#,
            "`resource`: invalid type: integer `5`, expected a string",
        ),
        (
            r#"{"resource":"build","action":"create","data":{"app":{"name":"billing-api"},"status":"pending","id":"b","created_at":"soon"}}"#,
            "`data.created_at` is not an RFC 3339 timestamp: \"soon\"",
        ),
    ];
    for (body, message) in cases {
        match deliver_to(&["billing-api"], body.as_bytes()) {
            Err(DeliveryError::Malformed(got)) => assert!(got.starts_with(message), "{got}"),
            other => panic!("{body}: expected malformed, got {other:?}"),
        }
    }
}

fn with(name: &str, change: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut value: serde_json::Value = serde_json::from_slice(&fixture(name)).unwrap();
    change(&mut value);
    serde_json::to_vec(&value).unwrap()
}

#[test]
fn overlong_fields_are_cut_to_fit_the_pulse() {
    let body = with("release-update-deployed.json", |event| {
        event["data"]["description"] = "D".repeat(1010).into();
        event["data"]["stack"] = "s".repeat(3000).into();
        event["id"] = "e".repeat(3000).into();
    });
    let Ok(Outcome::Pulses(pulses)) = deliver_to(&["billing-api"], &body) else {
        panic!("expected a pulse");
    };
    let pulse = &pulses[0];
    assert_eq!(
        pulse.summary,
        format!("[Heroku][Release] {}...", "D".repeat(256))
    );
    assert_eq!(
        pulse.label("stack"),
        Some(format!("{}...", "s".repeat(256)).as_str())
    );
    assert_eq!(pulse.reference("event_id").map(str::len), Some(259));
}

#[test]
fn overlong_ids_are_malformed_rather_than_cut() {
    let body = with("release-update-deployed.json", |event| {
        event["data"]["id"] = "r".repeat(505).into();
    });
    assert_eq!(
        deliver_to(&["billing-api"], &body),
        Err(DeliveryError::Malformed(
            "`data.id` is longer than 128 bytes".into()
        ))
    );
}

#[test]
fn wide_characters_are_cut_to_keep_the_summary_within_the_hosts_1024_bytes() {
    // Found by tests/robustness.rs: 256 four-byte characters made a 1048-byte summary.
    let body = with("build-create-pending.json", |event| {
        event["data"]["app"]["name"] = "𝄞".repeat(256).into();
    });
    let Ok(Outcome::Pulses(pulses)) = deliver_to(&["4a4d3b52-1ad1-4f3c-9a8b-2f0c4b9d7e11"], &body)
    else {
        panic!("expected a pulse");
    };
    assert_eq!(
        pulses[0].summary,
        format!("[Heroku][Build] {}... pending", "𝄞".repeat(240))
    );
    assert_eq!(pulses[0].summary.len(), 987);
    assert_eq!(pulses[0].label("app"), Some("𝄞".repeat(256).as_str()));

    let body = with("release-update-failed.json", |event| {
        event["data"]["description"] = "😀".repeat(300).into();
    });
    let Ok(Outcome::Pulses(pulses)) = deliver_to(&["billing-api"], &body) else {
        panic!("expected a pulse");
    };
    assert_eq!(
        pulses[0].summary,
        format!("[Heroku][Release] {}... (failed)", "😀".repeat(240))
    );
}

#[test]
fn ids_are_measured_in_bytes_so_dedupe_keys_stay_within_512() {
    // Found by tests/robustness.rs: 128 four-byte characters made a 530-byte dedupe key.
    let body = with("release-update-deployed.json", |event| {
        event["data"]["id"] = "𝄞".repeat(128).into();
    });
    assert_eq!(
        deliver_to(&["billing-api"], &body),
        Err(DeliveryError::Malformed(
            "`data.id` is longer than 128 bytes".into()
        ))
    );

    let body = with("release-update-deployed.json", |event| {
        event["data"]["id"] = "𝄞".repeat(32).into();
    });
    let Ok(Outcome::Pulses(pulses)) = deliver_to(&["billing-api"], &body) else {
        panic!("expected a pulse");
    };
    assert_eq!(
        pulses[0].dedupe_key,
        format!("release:{}:succeeded", "𝄞".repeat(32))
    );
}

#[test]
fn reasons_cut_a_huge_action_or_status() {
    // Found by tests/robustness.rs: the action and status were quoted whole.
    let cases = [
        (
            "build-create-pending.json",
            "/action",
            "build {}... events are not converted",
        ),
        (
            "build-create-pending.json",
            "/data/status",
            "build status \"{}...\" is not converted",
        ),
        (
            "release-update-deployed.json",
            "/action",
            "release {}... events are not converted",
        ),
        (
            "release-update-deployed.json",
            "/data/status",
            "release v42 status \"{}...\" is not converted",
        ),
    ];
    for (name, field, reason) in cases {
        let body = with(name, |event| {
            *event.pointer_mut(field).unwrap() = "x".repeat(10_000).into();
        });
        assert_eq!(
            ignored(deliver_to(&["billing-api"], &body)),
            reason.replace("{}", &"x".repeat(80)),
            "{name} {field}"
        );
    }
}

#[test]
fn reasons_do_not_echo_huge_input() {
    let body = with("release-update-deployed.json", |event| {
        event["resource"] = "x".repeat(10_000).into();
    });
    let reason = ignored(deliver_to(&["billing-api"], &body));
    assert_eq!(
        reason,
        format!("{}... events are not converted", "x".repeat(80))
    );
}

#[test]
fn a_change_never_ends_before_it_starts() {
    let body = with("build-update-succeeded.json", |event| {
        event["data"]["updated_at"] = "2020-01-01T00:00:00Z".into();
    });
    let Ok(Outcome::Pulses(pulses)) = deliver_to(&["billing-api"], &body) else {
        panic!("expected a pulse");
    };
    assert_eq!(pulses[0].ended_at, Some(pulses[0].started_at));
}

#[test]
fn type_errors_read_as_heroku_terms() {
    let body = br#"{"resource":"release","action":"update","data":{"app":"billing-api"}}"#;
    assert_eq!(
        deliver_to(&["billing-api"], body),
        Err(DeliveryError::Malformed(
            "`data.app`: invalid type: string \"billing-api\", expected an object with the \
             app's `id` and `name`"
                .into()
        ))
    );
}

#[test]
fn an_empty_id_is_malformed_rather_than_a_duplicate_of_every_other() {
    for fixture in ["release-update-deployed.json", "build-create-pending.json"] {
        let body = with(fixture, |event| event["data"]["id"] = "".into());
        assert_eq!(
            deliver_to(&["billing-api"], &body),
            Err(DeliveryError::Malformed("`data.id` is empty".into())),
            "{fixture}"
        );
    }
}
