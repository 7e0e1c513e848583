//! `pulse-host serve` in a process of its own, for tests and benchmarks that kill it or
//! measure its memory. The binary is the test package's `pulse-host-e2e`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The admin token every server process is started with.
pub const ADMIN_TOKEN: &str = "process-test-admin-token";

/// A running `pulse-host serve`.
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Where its log (stderr) goes.
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `binary serve` on `data_dir` and a free loopback port, with `extra` arguments
    /// after `serve`, and returns once it says where it listens. Its log goes to
    /// `serve.log` beside the data directory.
    pub fn start(binary: &Path, data_dir: &Path, extra: &[&str]) -> ServerProcess {
        let log = data_dir.with_file_name("serve.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(binary)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "serve"])
            .args(extra)
            .env("PULSE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("PULSE_LISTEN")
            .env_remove("PULSE_DATA_DIR")
            .env_remove("PULSE_PUBLIC_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", binary.display()));

        // The one line `serve` prints once it listens (the token is given, so it prints no
        // other). Reading ends when the process exits.
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let Some(base) = line.trim().strip_prefix("Listening on ") else {
            let _ = child.kill();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("the server did not start: {line:?}\n{log}");
        };
        ServerProcess {
            base: base.to_string(),
            child,
            log,
        }
    }

    /// An admin API call (`path` after `/api`) with the admin token; returns the answer's
    /// status and JSON body.
    pub async fn api(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut request = client
            .request(method, format!("{}/api{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        crate::read(request.send().await.unwrap()).await
    }

    /// Creates an integration monitoring `apps` and returns its webhook secret.
    pub async fn integration(&self, client: &reqwest::Client, name: &str, apps: &[&str]) -> String {
        let body = serde_json::json!({ "apps": apps });
        let path = format!("/integrations/{name}");
        let (status, answer) = self
            .api(client, reqwest::Method::PUT, &path, Some(body))
            .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{answer}");
        answer["webhook_secret"].as_str().unwrap().to_string()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL, as a power cut or the OOM killer would.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process's resident memory now, and its peak so far, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/<pid>/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
