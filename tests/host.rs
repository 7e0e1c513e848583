//! The host around the plugin: restarts, the compiled-component cache, faults in the
//! component, and `--plugin`.

use std::time::Duration;

use pulse_e2e::{FAULTY_PLUGIN, Options, TestHost, fixture};
use pulse_host::sandbox::Limits;
use reqwest::StatusCode;
use serde_json::json;

fn compiled_files(host: &TestHost) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(host.data_dir().join("compiled"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn pulses_survive_a_restart_which_reuses_the_compiled_plugin() {
    let host = TestHost::start().await;
    let secret = host.integration("acme", &["billing-api"]).await;
    host.service("billing", "billing-api").await;
    host.deliver("acme", &secret, &fixture("release-update-deployed.json"))
        .await;
    let compiled = compiled_files(&host);
    assert_eq!(compiled.len(), 1);
    let written = std::fs::metadata(&compiled[0]).unwrap().modified().unwrap();
    let token = host.token.clone();

    let host = host.restart().await;
    assert_eq!(host.token, token, "the generated admin token is kept");
    assert_eq!(
        host.summaries("service=billing").await,
        ["[Heroku][Release] Deploy 69eec518"]
    );
    // The secret is still known, and redelivery is still a duplicate.
    let (status, answer) = host
        .deliver("acme", &secret, &fixture("release-update-deployed.json"))
        .await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!({"status": "duplicate"}))
    );
    // Not recompiled: the cached file is the one written at first start.
    assert_eq!(compiled_files(&host), compiled);
    assert_eq!(
        std::fs::metadata(&compiled[0]).unwrap().modified().unwrap(),
        written
    );
}

#[tokio::test]
async fn corrupt_compiled_plugin_is_recompiled_not_trusted() {
    let host = TestHost::start().await;
    let secret = host.integration("acme", &["billing-api"]).await;
    let compiled = compiled_files(&host).remove(0);
    let original = std::fs::read(&compiled).unwrap();
    let mut corrupt = original.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0xff;
    std::fs::write(&compiled, &corrupt).unwrap();

    let host = host.restart().await;
    let (status, answer) = host
        .deliver("acme", &secret, &fixture("release-update-deployed.json"))
        .await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!("stored"))
    );
    assert_ne!(
        std::fs::read(&compiled).unwrap(),
        corrupt,
        "the corrupt file was replaced"
    );
}

#[tokio::test]
async fn data_directory_and_admin_token_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let host = TestHost::start().await;
    let mode =
        |path: std::path::PathBuf| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(host.data_dir()), 0o700);
    assert_eq!(mode(host.data_dir().join("admin-token")), 0o600);
    assert_eq!(
        std::fs::read_to_string(host.data_dir().join("admin-token")).unwrap(),
        host.token
    );
}

async fn faulty_host() -> TestHost {
    let limits = Limits {
        deadline: Duration::from_millis(500),
        ..Limits::default()
    };
    TestHost::start_with(Options {
        plugin: Some(FAULTY_PLUGIN.into()),
        limits: Some(limits),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_faulting_plugin_fails_one_delivery_and_the_next_succeeds() {
    let host = faulty_host().await;
    host.integration("acme", &[]).await;

    for (fault, round) in [("panic", 1), ("loop", 2), ("memory", 3)] {
        let started = std::time::Instant::now();
        let (status, answer) = host
            .post_webhook("acme", b"bad".to_vec(), &[("x-fault", fault)])
            .await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{fault}: {answer}"
        );
        assert_eq!(answer["error"]["code"], "plugin_failed", "{fault}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{fault} was stopped"
        );

        let body = format!("good {round}").into_bytes();
        let (status, answer) = host.post_webhook("acme", body, &[]).await;
        assert_eq!(
            (status, &answer["status"]),
            (StatusCode::OK, &json!("stored")),
            "{fault}"
        );
    }
    assert_eq!(
        host.summaries("").await.len(),
        3,
        "only the good deliveries stored pulses"
    );
}

#[tokio::test]
async fn faults_in_parallel_do_not_block_good_deliveries() {
    let host = faulty_host().await;
    host.integration("acme", &[]).await;
    let loops = (0..4).map(|_| host.post_webhook("acme", b"x".to_vec(), &[("x-fault", "loop")]));
    let goods = (0..4).map(|i| host.post_webhook("acme", format!("ok {i}").into_bytes(), &[]));
    let (loops, goods) = tokio::join!(
        futures_util::future::join_all(loops),
        futures_util::future::join_all(goods)
    );
    assert!(
        loops
            .iter()
            .all(|(status, _)| *status == StatusCode::INTERNAL_SERVER_ERROR)
    );
    assert!(goods.iter().all(|(status, _)| *status == StatusCode::OK));
}

#[tokio::test]
async fn a_file_that_is_not_a_component_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"not wasm").unwrap();
    let mut config =
        pulse_host::ServeConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    config.plugin = Some(bogus);
    let err = pulse_host::Server::start(config)
        .await
        .err()
        .expect("start fails");
    assert!(
        err.to_string()
            .starts_with("compiling the plugin failed (is it a WASI 0.2 component?)"),
        "{err}"
    );

    let mut config =
        pulse_host::ServeConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    config.plugin = Some(dir.path().join("missing.wasm"));
    let err = pulse_host::Server::start(config)
        .await
        .err()
        .expect("start fails");
    assert!(err.to_string().starts_with("reading the plugin"), "{err}");
}

#[tokio::test]
async fn a_pool_that_cannot_be_reserved_falls_back_to_on_demand_allocation() {
    // Ten million 64 MiB slots need far more address space than any machine has.
    let limits = Limits {
        concurrency: 10_000_000,
        ..Limits::default()
    };
    let runtime = pulse_host::sandbox::Runtime::new(limits).unwrap();
    assert_eq!(
        runtime.allocation(),
        pulse_host::sandbox::Allocation::OnDemand
    );
    drop(runtime);

    let host = TestHost::start_with(Options {
        limits: Some(limits),
        ..Options::default()
    })
    .await;
    let secret = host.integration("acme", &["billing-api"]).await;
    let (status, answer) = host
        .deliver("acme", &secret, &fixture("release-update-deployed.json"))
        .await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!("stored"))
    );
}

#[tokio::test]
async fn the_default_pool_is_reserved_here() {
    let runtime = pulse_host::sandbox::Runtime::new(Limits::default()).unwrap();
    assert_eq!(
        runtime.allocation(),
        pulse_host::sandbox::Allocation::Pooling
    );
}
