//! What a plugin instance may call: its integration's storage and the log. Each call's state
//! names one integration, so a plugin cannot reach another's keys.

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::pulse::plugin::{log, storage};
use crate::database::Database;

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
