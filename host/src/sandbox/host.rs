//! What a plugin instance may call: its integration's storage, the log and, during an
//! action's run, the run's output, Slack and the incident timeline. Each call's state names
//! one integration, so a plugin cannot reach another's keys.

use std::io::Write as _;
use std::path::PathBuf;

use tokio::sync::watch;
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::pulse::plugin::{log, run_output, slack, storage, timeline};
use crate::database::Database;
use crate::slack::Slack;

/// The largest key and value a plugin may store.
const MAX_KEY_BYTES: usize = 512;
const MAX_VALUE_BYTES: usize = 256 << 10;
/// Longer log messages are cut, so a plugin cannot flood the host's log.
const MAX_LOG_CHARS: usize = 2048;

// Limitation: storage calls are short SQLite queries made on the async worker that runs the
// call, so a slow disk delays other requests on that worker; they are not moved to the
// blocking pool because a delivery makes only one of them.

/// The state of one call: a WASI context that grants nothing, the call's limits and the
/// integration it is for.
pub struct CallState {
    pub(super) wasi: WasiCtx,
    pub(super) http: wasmtime_wasi_http::WasiHttpCtx,
    pub(super) hooks: super::http::OutboundHooks,
    pub(super) table: ResourceTable,
    pub(super) limits: StoreLimits,
    pub(super) integration: String,
    pub(super) database: Database,
    /// Where a run's output goes; none outside action calls.
    pub(super) run: Option<RunSink>,
}

/// The most output a run keeps; past it, output is dropped and the spool says so.
const MAX_OUTPUT_BYTES: u64 = 1 << 30;

/// How far a run has got, for whoever follows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The dyno and the command, once the run has started.
    pub started: Option<(String, String)>,
    /// Bytes of output written to the spool so far.
    pub written: u64,
}

/// Where one run's output, Slack shares and timeline events go.
pub struct RunSink {
    /// The run's id in the database.
    pub run_id: i64,
    /// The output, appended as it arrives: memory stays flat however long it is.
    pub spool: std::fs::File,
    pub spool_path: PathBuf,
    /// A link to the output, for the timeline.
    pub output_url: String,
    pub progress: std::sync::Arc<watch::Sender<Progress>>,
    pub slack: Slack,
    /// Set when output past [`MAX_OUTPUT_BYTES`] was dropped.
    pub truncated: bool,
}

impl CallState {
    fn sink(&mut self) -> Option<&mut RunSink> {
        self.run.as_mut()
    }
}

impl run_output::Host for CallState {
    fn started(&mut self, dyno: String, command: String) {
        if let Some(sink) = self.sink() {
            sink.progress
                .send_modify(|progress| progress.started = Some((dyno, command)));
        }
    }

    fn write(&mut self, chunk: Vec<u8>) {
        let integration = self.integration.clone();
        let Some(sink) = self.sink() else { return };
        let written = sink.progress.borrow().written;
        if written + chunk.len() as u64 > MAX_OUTPUT_BYTES {
            if !sink.truncated {
                sink.truncated = true;
                tracing::warn!(
                    integration,
                    run = sink.run_id,
                    "run output past 1 GiB dropped"
                );
            }
            return;
        }
        match sink.spool.write_all(&chunk) {
            Ok(()) => sink
                .progress
                .send_modify(|progress| progress.written += chunk.len() as u64),
            Err(err) => {
                tracing::error!(integration, run = sink.run_id, error = %err, "spooling run output failed")
            }
        }
    }
}

impl slack::Host for CallState {
    async fn share_output(
        &mut self,
        channels: Vec<String>,
        title: String,
        comment: String,
    ) -> Vec<slack::ShareOutcome> {
        let Some(sink) = self.run.as_mut() else {
            return channels
                .into_iter()
                .map(|channel| slack::ShareOutcome {
                    channel,
                    error: Some("there is no run output to share outside a run".into()),
                })
                .collect();
        };
        if let Err(err) = sink.spool.flush().and_then(|()| sink.spool.sync_data()) {
            tracing::error!(run = sink.run_id, error = %err, "flushing run output failed");
        }
        let filename = format!("run-{}.txt", sink.run_id);
        sink.slack
            .share_file(&channels, &sink.spool_path, &filename, &title, &comment)
            .await
            .into_iter()
            .map(|share| slack::ShareOutcome {
                channel: share.channel,
                error: share.error,
            })
            .collect()
    }
}

impl timeline::Host for CallState {
    fn add_event(&mut self, event: timeline::Event) -> Result<(), String> {
        let Some(sink) = self.run.as_ref() else {
            return Err("timeline events are recorded only during a run".into());
        };
        let details: serde_json::Map<String, serde_json::Value> = event
            .details
            .into_iter()
            .map(|pair| (pair.key, serde_json::Value::String(pair.value)))
            .collect();
        let new = crate::model::NewTimelineEvent {
            incident_id: event.incident_id,
            source: self.integration.clone(),
            summary: event.summary,
            details: serde_json::Value::Object(details),
            run_id: Some(sink.run_id),
            output_url: Some(sink.output_url.clone()),
        };
        new.check().map_err(|err| err.to_string())?;
        self.database
            .add_timeline_event(&new, &crate::model::now())
            .map(|_| ())
            .map_err(|err| {
                tracing::error!(error = %err, "recording a timeline event failed");
                "the host's storage failed; the error is logged".to_string()
            })
    }
}

impl wasmtime_wasi_http::WasiHttpView for CallState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn unavailable(err: crate::database::DatabaseError) -> storage::StorageError {
    tracing::error!(error = %err, "plugin storage failed");
    storage::StorageError::Unavailable("the host's storage failed; the error is logged".into())
}

fn check_key(key: &str) -> Result<(), storage::StorageError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(storage::StorageError::TooLarge(format!(
            "keys are limited to {MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}

impl storage::Host for CallState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, storage::StorageError> {
        check_key(&key)?;
        self.database
            .kv_get(&self.integration, &key)
            .map_err(unavailable)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), storage::StorageError> {
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(storage::StorageError::TooLarge(format!(
                "values are limited to {MAX_VALUE_BYTES} bytes"
            )));
        }
        self.database
            .kv_set(&self.integration, &key, &value)
            .map_err(unavailable)
    }

    fn delete(&mut self, key: String) -> Result<(), storage::StorageError> {
        check_key(&key)?;
        self.database
            .kv_delete(&self.integration, &key)
            .map_err(unavailable)
    }

    fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, storage::StorageError> {
        check_key(&prefix)?;
        self.database
            .kv_keys(&self.integration, &prefix)
            .map_err(unavailable)
    }
}

impl log::Host for CallState {
    fn write(&mut self, level: log::Level, message: String) {
        let message = match message.char_indices().nth(MAX_LOG_CHARS) {
            Some((at, _)) => format!("{}... (cut)", &message[..at]),
            None => message,
        };
        let integration = self.integration.as_str();
        match level {
            log::Level::Debug => {
                tracing::debug!(integration, plugin_message = %message.escape_debug())
            }
            log::Level::Info => {
                tracing::info!(integration, plugin_message = %message.escape_debug())
            }
            log::Level::Warn => {
                tracing::warn!(integration, plugin_message = %message.escape_debug())
            }
            log::Level::Error => {
                tracing::error!(integration, plugin_message = %message.escape_debug())
            }
        }
    }
}

/// The shared types interface has no functions to provide.
impl super::bindings::pulse::plugin::types::Host for CallState {}
