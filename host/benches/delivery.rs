//! One delivery in process: the Heroku core run natively (`native::handle_delivery`, the
//! handler behind `serve --native-handler`) against the same core run in the sandbox (a fresh instance from the pre-instantiated pool, then `webhooks.handle`), for a
//! small build event, a typical release event and a 64 KiB release event. Prints the medians
//! and the sandbox-to-native ratios at the end.
//!
//! `cargo bench -p pulse-host --features native-handler --bench delivery`

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use criterion::{BenchmarkId, Criterion, Throughput};
use hmac::{Hmac, Mac};
use pulse_host::database::Database;
use pulse_host::native;
use pulse_host::sandbox::{Context, Delivery, Header, Limits, Outcome, Runtime};
use sha2::Sha256;

const SECRET: &str = "bench-secret";
const INTEGRATION: &str = "acme";

/// The events measured: a name and a signed body.
fn events() -> Vec<(&'static str, Vec<u8>)> {
    let fixture = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugin/fixtures")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    };
    // A release as big as real ones get: Heroku adds fields without notice, and the
    // description and process table grow with the app.
    let mut large: serde_json::Value =
        serde_json::from_slice(&fixture("release-update-deployed.json")).unwrap();
    let process = |i: usize| serde_json::json!({"type": format!("worker-{i}"), "command": "bundle exec sidekiq -C config/sidekiq.yml", "size": "Standard-1X", "quantity": 2});
    large["data"]["pstable"] = (0..500).map(process).collect();
    let mut large = serde_json::to_vec(&large).unwrap();
    let padding = 64 * 1024 - large.len();
    let object =
        serde_json::to_vec(&serde_json::json!({ "notes": "n".repeat(padding - 12) })).unwrap();
    // Splice `"notes": ...` into the top-level object so the body is exactly about 64 KiB.
    large.pop();
    large.push(b',');
    large.extend_from_slice(&object[1..]);
    assert!(
        (60 << 10..=68 << 10).contains(&large.len()),
        "{}",
        large.len()
    );

    vec![
        ("build-small", fixture("build-create-pending.json")),
        ("release-typical", fixture("release-update-deployed.json")),
        ("release-64KiB", large),
    ]
}

fn signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn headers(body: &[u8]) -> Vec<Header> {
    vec![
        Header {
            name: "content-type".into(),
            value: "application/json".into(),
        },
        Header {
            name: "heroku-webhook-hmac-sha256".into(),
            value: signature(body),
        },
    ]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let database = Database::open(&dir.path().join("pulse.db")).unwrap();
    let apps = vec!["billing-api".to_string(), "example-app".to_string()];
    let seed = [("webhook-secret", SECRET.as_bytes())];
    database
        .upsert_integration(INTEGRATION, &apps, &seed, "2026-01-01T00:00:00Z")
        .unwrap();
    let context = Context {
        integration: INTEGRATION.into(),
        apps: apps.clone(),
        webhook_url: "http://127.0.0.1/webhooks/heroku/acme".into(),
        api_url: "https://api.heroku.com".into(),
    };

    let runtime = Runtime::new(Limits::default()).unwrap();
    let plugin = runtime
        .load(pulse_host::HEROKU_PLUGIN, &dir.path().join("compiled"))
        .unwrap();
    let executor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = criterion.benchmark_group("delivery");
    for (name, body) in events() {
        let delivery = Delivery {
            headers: headers(&body),
            body: body.clone(),
        };
        // Both sides must agree before either is timed.
        let natively = native::handle_delivery(&database, &context, &delivery).unwrap();
        let sandboxed = executor
            .block_on(plugin.handle_delivery(&database, &context, &delivery))
            .unwrap()
            .unwrap();
        let agree = format!("{natively:?}") == format!("{sandboxed:?}");
        assert!(agree, "{name}: native and sandbox give the same pulses");
        assert!(matches!(sandboxed, Outcome::Pulses(ref p) if p.len() == 1));

        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(BenchmarkId::new("native", name), |b| {
            b.iter(|| native::handle_delivery(&database, &context, &delivery))
        });
        group.bench_function(BenchmarkId::new("sandbox", name), |b| {
            b.iter(|| {
                executor
                    .block_on(plugin.handle_delivery(&database, &context, &delivery))
                    .unwrap()
                    .unwrap()
            })
        });
    }
    group.finish();

    // Where the sandbox's time goes: a fresh instance and the smallest call there is.
    criterion.bench_function("instance/describe", |b| {
        b.iter(|| executor.block_on(plugin.describe(&database)).unwrap())
    });
    criterion.final_summary();
    report_ratios();
}

/// Reads the medians criterion wrote for this run and prints them with the ratios.
fn report_ratios() {
    let root = criterion_dir().join("delivery");
    let median = |side: &str, event: &str| -> Option<f64> {
        let path = root.join(side).join(event).join("new/estimates.json");
        let text = std::fs::read_to_string(path).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        value["median"]["point_estimate"].as_f64()
    };
    println!(
        "\n{:<16} {:>12} {:>12} {:>8}",
        "event", "native", "sandbox", "ratio"
    );
    for (event, _) in events() {
        let (Some(native), Some(sandbox)) = (median("native", event), median("sandbox", event))
        else {
            continue; // Filtered out on the command line.
        };
        println!(
            "{event:<16} {:>10.1}µs {:>10.1}µs {:>7.2}x",
            native / 1e3,
            sandbox / 1e3,
            sandbox / native
        );
    }
}

/// Where criterion writes its results: `$CARGO_TARGET_DIR/criterion`, else `target/criterion`
/// in the workspace.
fn criterion_dir() -> std::path::PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(Into::into)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(|dir| std::path::PathBuf::from(dir).join("criterion"))
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion"))
}
