//! The whole host measured from outside, in one run: the size of the component, start-up
//! (first start, which compiles the component, against restarts that load the compiled copy),
//! throughput and latency of signed deliveries over loopback with the sandbox against the same
//! core compiled into the host, and the server's memory at idle, under that load and while a
//! run streams 100 MiB of output from the fake Heroku.
//!
//! `cargo bench -p pulse-e2e --features native-handler --bench load`
//!
//! The load generator shares the machine with the server, sends a fixed number of deliveries
//! at a fixed concurrency and stops by itself. `PULSE_BENCH_DELIVERIES` and
//! `PULSE_BENCH_CONCURRENCY` change the defaults (20,000 and 32). Arguments after `--` pick
//! sections by name: `startup`, `load`, `streaming`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use pulse_e2e::fake_heroku::{FakeHeroku, Script};
use pulse_e2e::process::{ADMIN_TOKEN, ServerProcess};
use pulse_e2e::{numbered_build, sign};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_pulse-host-e2e");
/// How many times each handler takes the load.
const ROUNDS: usize = 3;
const APP: &str = "billing-api";

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument names the sections to run.
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let runs = |section: &str| picked.is_empty() || picked.iter().any(|p| p == section);
    let deliveries = setting("PULSE_BENCH_DELIVERIES", 20_000);
    let concurrency = setting("PULSE_BENCH_CONCURRENCY", 32);
    // One thread for the load generator, so the server keeps at least one core of two.
    let executor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let binary = Path::new(BINARY);

    println!("# pulse-host load benchmark");
    println!();
    println!(
        "component: {} bytes ({:.2} MiB)",
        pulse_host::HEROKU_PLUGIN.len(),
        pulse_host::HEROKU_PLUGIN.len() as f64 / (1 << 20) as f64
    );

    if runs("startup") {
        let startup = executor.block_on(startup(binary, &dir.path().join("startup")));
        println!();
        println!("## start-up, to the first answered request");
        println!(
            "first start (compiles the component): {:>8.1} ms",
            ms(startup.first)
        );
        println!(
            "restart (compiled copy), median of {}:  {:>8.1} ms",
            startup.restarts.len(),
            ms(median(&startup.restarts))
        );
        println!(
            "ratio first / restart: {:.1}x",
            startup.first.as_secs_f64() / median(&startup.restarts).as_secs_f64()
        );
    }
    if runs("load") {
        println!();
        println!(
            "## {deliveries} signed deliveries, {concurrency} at a time, SQLite with full fsync"
        );
        println!(
            "{:<10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>10}",
            "handler", "per second", "p50 ms", "p99 ms", "idle MiB", "peak MiB", "failed"
        );
        // The two handlers take turns, three rounds each: this VM's speed drifts by tens of
        // percent over minutes, so one round of each would compare different machines.
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 1..=ROUNDS {
            for (side, (handler, args)) in
                [("sandbox", &[][..]), ("native", &["--native-handler"][..])]
                    .into_iter()
                    .enumerate()
            {
                let data = dir.path().join(format!("{handler}-{round}")).join("data");
                std::fs::create_dir_all(data.parent().unwrap()).unwrap();
                let load = executor.block_on(load(binary, &data, args, deliveries, concurrency));
                println!(
                    "{:<10} {:>10.0} {:>9.2} {:>9.2} {:>10.1} {:>10.1} {:>10}",
                    format!("{handler} {round}"),
                    load.rate,
                    ms(load.p50),
                    ms(load.p99),
                    mib(load.idle_kib),
                    mib(load.peak_kib),
                    load.failed
                );
                rates[side].push(load.rate);
            }
        }
        let middle = |values: &[f64]| {
            let mut sorted = values.to_vec();
            sorted.sort_by(f64::total_cmp);
            sorted[sorted.len() / 2]
        };
        let (sandbox, native) = (middle(&rates[0]), middle(&rates[1]));
        println!("median per second: sandbox {sandbox:.0}, native {native:.0}");
        println!("ratio sandbox / native throughput: {:.2}", sandbox / native);
    }
    if runs("streaming") {
        let streaming = executor.block_on(streaming(binary, &dir.path().join("streaming")));
        println!();
        println!(
            "## a run that streams {} MiB of output",
            STREAMED_BYTES >> 20
        );
        println!(
            "idle {:.1} MiB, peak {:.1} MiB, growth {:.1} MiB, {:.1} s",
            mib(streaming.idle_kib),
            mib(streaming.peak_kib),
            mib(streaming.peak_kib.saturating_sub(streaming.idle_kib)),
            streaming.elapsed.as_secs_f64()
        );
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap()
}

struct Startup {
    first: Duration,
    restarts: Vec<Duration>,
}

/// Starts the server on a fresh data directory, then restarts it five times on the same one;
/// each time from spawning the process to the first answer to `GET /healthz`.
async fn startup(binary: &Path, dir: &Path) -> Startup {
    std::fs::create_dir_all(dir).unwrap();
    let data = dir.join("data");
    let client = client();
    let mut times = Vec::new();
    for _ in 0..6 {
        let started = Instant::now();
        let server = ServerProcess::start(binary, &data, &[]);
        let response = client
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        times.push(started.elapsed());
        server.stop();
    }
    Startup {
        first: times[0],
        restarts: times[1..].to_vec(),
    }
}

/// Starts the server on `data` as it runs day to day: a first start compiles the component
/// into the data directory (and keeps the compiler's heap), so it is stopped and started
/// again, which loads the compiled copy.
fn warm_start(binary: &Path, data: &Path, args: &[&str]) -> ServerProcess {
    ServerProcess::start(binary, data, args).stop();
    ServerProcess::start(binary, data, args)
}

struct Load {
    rate: f64,
    p50: Duration,
    p99: Duration,
    idle_kib: u64,
    peak_kib: u64,
    failed: usize,
}

async fn load(
    binary: &Path,
    data: &Path,
    args: &[&str],
    deliveries: usize,
    concurrency: usize,
) -> Load {
    let server = warm_start(binary, data, args);
    let client = client();
    let secret = server.integration(&client, "acme", &[APP]).await;
    let url = format!("{}/webhooks/heroku/acme", server.base);

    // Signed before the clock starts; a warm-up of a tenth first, not counted.
    let warm_up = deliveries / 10;
    let requests: Arc<Vec<(Vec<u8>, String)>> = Arc::new(
        (0..warm_up + deliveries)
            .map(|n| {
                let body = numbered_build(n);
                let signature = sign(&secret, &body);
                (body, signature)
            })
            .collect(),
    );
    let send = async |range: std::ops::Range<usize>| {
        let next = Arc::new(AtomicUsize::new(range.start));
        let failed = Arc::new(AtomicUsize::new(0));
        let senders = (0..concurrency).map(|_| {
            let (client, url, requests) = (client.clone(), url.clone(), requests.clone());
            let (next, failed, end) = (next.clone(), failed.clone(), range.end);
            async move {
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= end {
                        return latencies;
                    }
                    let (body, signature) = &requests[n];
                    let started = Instant::now();
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("heroku-webhook-hmac-sha256", signature)
                        .body(body.clone())
                        .send()
                        .await;
                    let stored = match response {
                        Ok(response) if response.status().is_success() => response
                            .json::<Value>()
                            .await
                            .is_ok_and(|answer| answer["status"] == "stored"),
                        _ => false,
                    };
                    latencies.push(started.elapsed());
                    if !stored {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        let started = Instant::now();
        let latencies: Vec<Duration> = futures_util::future::join_all(senders)
            .await
            .into_iter()
            .flatten()
            .collect();
        (started.elapsed(), latencies, failed.load(Ordering::Relaxed))
    };

    send(0..warm_up).await;
    let (idle_kib, _) = server.memory_kib();
    let sampler = Sampler::start(&server);
    let (elapsed, mut latencies, failed) = send(warm_up..warm_up + deliveries).await;
    let peak_kib = sampler.stop();
    latencies.sort();
    let at = |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction) as usize];
    let result = Load {
        rate: deliveries as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        idle_kib,
        peak_kib,
        failed,
    };
    server.stop();
    result
}

/// Samples a server's resident memory every 10 ms on a thread of its own and keeps the
/// highest value (the kernel's own peak, VmHWM, also counts start-up).
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(server: &ServerProcess) -> Sampler {
        let status = format!("/proc/{}/status", server.pid());
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = std::fs::read_to_string(&status).ok().and_then(|text| {
                        text.lines()
                            .find_map(|line| line.strip_prefix("VmRSS:"))
                            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                    }) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Sampler { stop, peak, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

const STREAMED_BYTES: usize = 100 << 20;

struct Streaming {
    idle_kib: u64,
    peak_kib: u64,
    elapsed: Duration,
}

/// Connects an integration to the fake Heroku, then runs a command whose dyno prints 100 MiB,
/// reading the streamed answer as the CLI would, while sampling the server's memory.
async fn streaming(binary: &Path, dir: &Path) -> Streaming {
    std::fs::create_dir_all(dir).unwrap();
    let fake = FakeHeroku::start().await;
    fake.add_app(APP);
    let (api_url, id_url) = (fake.api_url(), fake.id_url());
    let (client_id, client_secret) = (fake.client_id(), fake.client_secret());
    let server = warm_start(
        binary,
        &dir.join("data"),
        &[
            "--heroku-api-url",
            &api_url,
            "--heroku-id-url",
            &id_url,
            "--heroku-client-id",
            &client_id,
            "--heroku-client-secret",
            &client_secret,
        ],
    );
    fake.set_redirect_uri(&format!("{}/oauth/heroku/callback", server.base));
    let client = client();
    let api = |path: &str| format!("{}/api{path}", server.base);

    server.integration(&client, "shop", &[APP]).await;
    let path = "/integrations/shop/heroku/connect-link";
    let (_, link) = server.api(&client, reqwest::Method::POST, path, None).await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .unwrap();
    let page = browser
        .get(link["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert!(page.status().is_success(), "connecting failed");

    // 64-byte lines: 63 characters and a newline.
    fake.script_next_dyno(Script {
        bulk: Some((STREAMED_BYTES / 64, "x".repeat(63))),
        ..Script::default()
    });
    let (idle_kib, _) = server.memory_kib();
    let sampler = Sampler::start(&server);
    let started = Instant::now();
    let response = client
        .post(api("/integrations/shop/actions/run-command"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({
            "params": {"command": "dump", "app_name": APP},
            "context": {"incident": {
                "id": "INC-1", "title": "bench", "severity": "sev2", "status": "triggered",
                "services": ["billing"], "url": "https://incidents.example.com/INC-1",
            }},
        }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let mut body = response.bytes_stream();
    let mut last = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        // Keep only the end: the last line is the result.
        last.extend_from_slice(&chunk);
        if last.len() > 64 << 10 {
            last.drain(..last.len() - (32 << 10));
        }
    }
    let elapsed = started.elapsed();
    let peak_kib = sampler.stop();
    let text = String::from_utf8_lossy(&last);
    let result: Value = text
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .expect("the run ends with its result");
    assert_eq!(
        result["run"]["output_bytes"], STREAMED_BYTES,
        "the whole output was read: {result}"
    );
    server.stop();
    Streaming {
        idle_kib,
        peak_kib,
        elapsed,
    }
}
