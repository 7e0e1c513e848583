//! The host's storage: integrations, the plugins' key-value spaces, services and pulses, in
//! SQLite (WAL mode, full fsync on commit) inside the data directory.
//!
//! Every method is a short blocking call; async callers run them on the blocking pool. Nothing
//! is cached in memory between calls, so several hosts could share one database later.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection as Sqlite, OpenFlags, OptionalExtension, params};
use serde::Serialize;

use crate::model::{
    AppWebhook, Connection, Integration, NewPulse, NewTimelineEvent, Run, Service, StoredPulse,
    TimelineEvent,
};

/// A storage failure. The message names the operation; SQL text and values are not included.
#[derive(Debug, thiserror::Error)]
#[error("the database failed to {operation}: {source}")]
pub struct DatabaseError {
    operation: &'static str,
    #[source]
    source: rusqlite::Error,
}

trait Context<T> {
    fn context(self, operation: &'static str) -> Result<T, DatabaseError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn context(self, operation: &'static str) -> Result<T, DatabaseError> {
        self.map_err(|source| DatabaseError { operation, source })
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS integrations (
    name        TEXT PRIMARY KEY,
    apps        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS plugin_kv (
    integration TEXT NOT NULL REFERENCES integrations(name) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       BLOB NOT NULL,
    PRIMARY KEY (integration, key)
) STRICT;

-- A connected (or once connected) Heroku account. `credentials` is sealed (see `vault`) and
-- erased on disconnect.
CREATE TABLE IF NOT EXISTS connections (
    integration TEXT PRIMARY KEY REFERENCES integrations(name) ON DELETE CASCADE,
    state       TEXT NOT NULL CHECK (state IN ('connected', 'disconnected')),
    reason      TEXT,
    credentials BLOB,
    updated_at  TEXT NOT NULL
) STRICT;

-- Where each monitored app stood after the last apply.
CREATE TABLE IF NOT EXISTS app_status (
    integration TEXT NOT NULL REFERENCES integrations(name) ON DELETE CASCADE,
    app         TEXT NOT NULL,
    webhook_id  TEXT,
    error       TEXT,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (integration, app)
) STRICT;

-- One-time values, stored as SHA-256 hashes: OAuth `state`s and connect links.
CREATE TABLE IF NOT EXISTS one_time (
    hash        TEXT PRIMARY KEY,
    purpose     TEXT NOT NULL,
    integration TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;

-- Runs of actions; their output is a file in the data directory's `runs/`.
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY,
    integration TEXT NOT NULL REFERENCES integrations(name) ON DELETE CASCADE,
    action      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    incident_id TEXT,
    params      TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('running', 'finished', 'failed')),
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    result      TEXT,
    error       TEXT,
    output_bytes INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS runs_by_integration ON runs (integration, id);

CREATE TABLE IF NOT EXISTS timeline_events (
    id          INTEGER PRIMARY KEY,
    incident_id TEXT NOT NULL,
    at          TEXT NOT NULL,
    source      TEXT NOT NULL,
    summary     TEXT NOT NULL,
    details     TEXT NOT NULL,
    run_id      INTEGER,
    output_url  TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS timeline_by_incident ON timeline_events (incident_id, id);

CREATE TABLE IF NOT EXISTS services (
    name            TEXT PRIMARY KEY,
    heroku_app_name TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS services_by_app ON services (heroku_app_name);

CREATE TABLE IF NOT EXISTS pulses (
    id              INTEGER PRIMARY KEY,
    integration     TEXT NOT NULL,
    dedupe_key      TEXT NOT NULL,
    summary         TEXT NOT NULL,
    source          TEXT NOT NULL,
    started_s       INTEGER NOT NULL,
    started_ns      INTEGER NOT NULL,
    ended_s         INTEGER,
    ended_ns        INTEGER,
    labels          TEXT NOT NULL,
    refs            TEXT NOT NULL,
    raw             TEXT NOT NULL,
    received_at     TEXT NOT NULL
) STRICT;
-- One pulse per change: a redelivery, or a copy that arrives at the same moment, is a no-op.
CREATE UNIQUE INDEX IF NOT EXISTS pulses_dedupe ON pulses (integration, dedupe_key);
CREATE INDEX IF NOT EXISTS pulses_newest ON pulses (started_s DESC, started_ns DESC, id DESC);

CREATE TABLE IF NOT EXISTS pulse_correlations (
    pulse_id INTEGER NOT NULL REFERENCES pulses(id) ON DELETE CASCADE,
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (pulse_id, key, value)
) STRICT;
CREATE INDEX IF NOT EXISTS correlations_by_value ON pulse_correlations (key, value);
";

/// How many read-only connections serve the reads on the delivery path.
const READERS: usize = 4;

/// The correlation key that services are matched on.
pub const APP_CORRELATION_KEY: &str = "heroku_app_name";

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Database {
    /// The connection that writes (and reads everything not on the delivery path).
    conn: Arc<Mutex<Sqlite>>,
    /// Read-only connections for the reads every delivery makes, so that they do not wait
    /// behind a commit's fsync: in WAL mode readers and the writer do not block each other.
    readers: Arc<[Mutex<Sqlite>]>,
    /// Pulses waiting for the next group commit (see [`Database::insert_pulses`]).
    queue: Arc<Mutex<Vec<PendingInsert>>>,
}

/// One caller's pulses, waiting to be committed with others.
struct PendingInsert {
    integration: String,
    pulses: Vec<NewPulse>,
    received_at: String,
    reply: std::sync::mpsc::SyncSender<Result<Vec<Inserted>, DatabaseError>>,
}

/// What became of a pulse handed to [`Database::insert_pulses`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Inserted {
    /// Stored under this id.
    New(i64),
    /// Another pulse with the same dedupe key was already stored.
    Duplicate,
}

/// Where a page of pulses starts: after the pulse with these sort keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub started_s: i64,
    pub started_ns: u32,
    pub id: i64,
}

impl Database {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Database, DatabaseError> {
        let conn = Sqlite::open(path).context("open the database file")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .context("set the busy timeout")?;
        // WAL lets readers proceed during a write; FULL makes every commit durable before we
        // answer the request that caused it.
        conn.pragma_update(None, "journal_mode", "WAL")
            .context("enable WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")
            .context("set synchronous")?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .context("enable foreign keys")?;
        conn.execute_batch(SCHEMA).context("create the schema")?;
        let readers = (0..READERS)
            .map(|_| {
                let reader = Sqlite::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .context("open a reading connection")?;
                reader
                    .busy_timeout(std::time::Duration::from_secs(5))
                    .context("set the busy timeout")?;
                Ok(Mutex::new(reader))
            })
            .collect::<Result<_, DatabaseError>>()?;
        Ok(Database {
            conn: Arc::new(Mutex::new(conn)),
            readers,
            queue: Arc::default(),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Sqlite> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is safe to keep using.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A reading connection: a free one if there is one, else one to wait for.
    fn reader(&self) -> MutexGuard<'_, Sqlite> {
        for reader in self.readers.iter() {
            match reader.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        // All busy: wait for one picked at random, so waiters do not all queue on the first.
        let random = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), ());
        let index = random as usize % self.readers.len();
        self.readers[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn queue(&self) -> MutexGuard<'_, Vec<PendingInsert>> {
        // Pushing and taking cannot panic halfway, so a poisoned queue is still whole.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The SQLite journal mode in effect (`wal` once opened).
    pub fn journal_mode(&self) -> Result<String, DatabaseError> {
        self.conn()
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .context("read the journal mode")
    }

    // --- integrations -------------------------------------------------------------------

    /// Creates the integration with `apps` and seeds its plugin storage with `seed`, or, when
    /// it exists, replaces its apps and leaves its storage alone. Returns whether it was
    /// created. One statement decides, so two concurrent creations cannot both win.
    pub fn upsert_integration(
        &self,
        name: &str,
        apps: &[String],
        seed: &[(&str, &[u8])],
        now: &str,
    ) -> Result<bool, DatabaseError> {
        let apps = serde_json::to_string(apps).expect("a list of strings serializes");
        let mut conn = self.conn();
        let tx = conn.transaction().context("begin a transaction")?;
        let created = tx
            .execute(
                "INSERT INTO integrations (name, apps, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?3) ON CONFLICT (name) DO NOTHING",
                params![name, apps, now],
            )
            .context("create the integration")?
            == 1;
        if created {
            for (key, value) in seed {
                tx.execute(
                    "INSERT INTO plugin_kv (integration, key, value) VALUES (?1, ?2, ?3)",
                    params![name, key, value],
                )
                .context("seed the integration's storage")?;
            }
        } else {
            tx.execute(
                "UPDATE integrations SET apps = ?2, updated_at = ?3 WHERE name = ?1",
                params![name, apps, now],
            )
            .context("update the integration")?;
        }
        tx.commit().context("commit the integration")?;
        Ok(created)
    }

    /// The integration called `name`, if there is one.
    pub fn integration(&self, name: &str) -> Result<Option<Integration>, DatabaseError> {
        self.reader()
            .query_row(
                "SELECT i.name, i.apps, i.created_at, i.updated_at, c.state, c.reason
                 FROM integrations i LEFT JOIN connections c ON c.integration = i.name
                 WHERE i.name = ?1",
                [name],
                integration_from_row,
            )
            .optional()
            .context("read an integration")
    }

    /// Every integration, by name.
    pub fn integrations(&self) -> Result<Vec<Integration>, DatabaseError> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT i.name, i.apps, i.created_at, i.updated_at, c.state, c.reason
                 FROM integrations i LEFT JOIN connections c ON c.integration = i.name
                 ORDER BY i.name",
            )
            .context("list integrations")?;
        let rows = statement
            .query_map([], integration_from_row)
            .context("list integrations")?;
        rows.collect::<Result<_, _>>().context("list integrations")
    }

    // --- connections ----------------------------------------------------------------------

    /// Marks the integration connected with these sealed credentials.
    pub fn connect(
        &self,
        integration: &str,
        credentials: &[u8],
        now: &str,
    ) -> Result<(), DatabaseError> {
        self.conn()
            .execute(
                "INSERT INTO connections (integration, state, reason, credentials, updated_at)
                 VALUES (?1, 'connected', NULL, ?2, ?3)
                 ON CONFLICT (integration) DO UPDATE SET state = 'connected', reason = NULL,
                     credentials = excluded.credentials, updated_at = excluded.updated_at",
                params![integration, credentials, now],
            )
            .context("store a connection")?;
        Ok(())
    }

    /// Replaces the sealed credentials of a connected integration.
    pub fn update_credentials(
        &self,
        integration: &str,
        credentials: &[u8],
        now: &str,
    ) -> Result<(), DatabaseError> {
        self.conn()
            .execute(
                "UPDATE connections SET credentials = ?2, updated_at = ?3
                 WHERE integration = ?1 AND state = 'connected'",
                params![integration, credentials, now],
            )
            .context("store refreshed credentials")?;
        Ok(())
    }

    /// Marks the integration disconnected for `reason` and erases its credentials.
    pub fn disconnect(
        &self,
        integration: &str,
        reason: &str,
        now: &str,
    ) -> Result<(), DatabaseError> {
        self.conn()
            .execute(
                "INSERT INTO connections (integration, state, reason, credentials, updated_at)
                 VALUES (?1, 'disconnected', ?2, NULL, ?3)
                 ON CONFLICT (integration) DO UPDATE SET state = 'disconnected',
                     reason = excluded.reason, credentials = NULL, updated_at = excluded.updated_at",
                params![integration, reason, now],
            )
            .context("record a disconnection")?;
        Ok(())
    }

    /// The sealed credentials of a connected integration.
    pub fn credentials(&self, integration: &str) -> Result<Option<Vec<u8>>, DatabaseError> {
        self.conn()
            .query_row(
                "SELECT credentials FROM connections WHERE integration = ?1 AND state = 'connected'",
                [integration],
                |row| row.get(0),
            )
            .optional()
            .context("read credentials")
            .map(Option::flatten)
    }

    /// Records where the apps stand after an apply, replacing what was recorded before.
    pub fn set_app_webhooks(
        &self,
        integration: &str,
        webhooks: &[AppWebhook],
        now: &str,
    ) -> Result<(), DatabaseError> {
        let mut conn = self.conn();
        let tx = conn.transaction().context("begin a transaction")?;
        tx.execute(
            "DELETE FROM app_status WHERE integration = ?1",
            [integration],
        )
        .context("record app states")?;
        for state in webhooks {
            tx.execute(
                "INSERT OR REPLACE INTO app_status (integration, app, webhook_id, error, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![integration, state.app, state.webhook_id, state.error, now],
            )
            .context("record app states")?;
        }
        tx.commit().context("record app states")
    }

    pub fn app_webhooks(&self, integration: &str) -> Result<Vec<AppWebhook>, DatabaseError> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT app, webhook_id, error, updated_at FROM app_status
                 WHERE integration = ?1 ORDER BY app",
            )
            .context("read app states")?;
        let rows = statement
            .query_map([integration], |row| {
                Ok(AppWebhook {
                    app: row.get(0)?,
                    webhook_id: row.get(1)?,
                    error: row.get(2)?,
                    updated_at: row.get(3)?,
                })
            })
            .context("read app states")?;
        rows.collect::<Result<_, _>>().context("read app states")
    }

    // --- one-time values ------------------------------------------------------------------

    /// Remembers a one-time value (by its hash) for `purpose` until `expires_at` (Unix s).
    pub fn put_one_time(
        &self,
        hash: &str,
        purpose: &str,
        integration: &str,
        expires_at: i64,
    ) -> Result<(), DatabaseError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM one_time WHERE expires_at < ?1",
            [expires_at - 86_400],
        )
        .context("forget expired one-time values")?;
        conn.execute(
            "INSERT INTO one_time (hash, purpose, integration, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, purpose, integration, expires_at],
        )
        .context("store a one-time value")?;
        Ok(())
    }

    /// Uses up a one-time value: returns its integration if it was there for `purpose` and
    /// had not expired at `now`. A second use finds nothing.
    pub fn take_one_time(
        &self,
        hash: &str,
        purpose: &str,
        now: i64,
    ) -> Result<Option<String>, DatabaseError> {
        self.conn()
            .query_row(
                "DELETE FROM one_time WHERE hash = ?1 AND purpose = ?2 RETURNING integration, expires_at",
                [hash, purpose],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
            )
            .optional()
            .context("use a one-time value")
            .map(|found| found.filter(|(_, expires)| *expires >= now).map(|(name, _)| name))
    }

    // --- runs and the timeline -------------------------------------------------------------

    /// Records a run as started; returns its id.
    pub fn start_run(
        &self,
        integration: &str,
        action: &str,
        actor: &str,
        incident_id: Option<&str>,
        params: &serde_json::Value,
        now: &str,
    ) -> Result<i64, DatabaseError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO runs (integration, action, actor, incident_id, params, state, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6)",
            params![
                integration,
                action,
                actor,
                incident_id,
                params.to_string(),
                now
            ],
        )
        .context("record a run")?;
        Ok(conn.last_insert_rowid())
    }

    /// Records how a run ended: `result` when it ran, `error` when it could not.
    pub fn finish_run(
        &self,
        id: i64,
        result: Option<&serde_json::Value>,
        error: Option<&str>,
        output_bytes: u64,
        now: &str,
    ) -> Result<(), DatabaseError> {
        let state = if error.is_some() {
            "failed"
        } else {
            "finished"
        };
        self.conn()
            .execute(
                "UPDATE runs SET state = ?2, result = ?3, error = ?4, output_bytes = ?5,
                     finished_at = ?6
                 WHERE id = ?1",
                params![
                    id,
                    state,
                    result.map(|r| r.to_string()),
                    error,
                    output_bytes as i64,
                    now
                ],
            )
            .context("record the end of a run")?;
        Ok(())
    }

    /// Marks runs still `running` as failed: after a restart nothing is following them.
    pub fn abandon_runs(&self, now: &str) -> Result<usize, DatabaseError> {
        self.conn()
            .execute(
                "UPDATE runs SET state = 'failed', finished_at = ?1,
                     error = 'the host stopped while the run was going on; its dyno ends at \
                              its time to live'
                 WHERE state = 'running'",
                [now],
            )
            .context("mark abandoned runs")
    }

    pub fn run(&self, id: i64) -> Result<Option<Run>, DatabaseError> {
        self.conn()
            .query_row(&format!("{RUN_COLUMNS} WHERE id = ?1"), [id], run_from_row)
            .optional()
            .context("read a run")
    }

    /// An integration's runs, newest first.
    pub fn runs(&self, integration: &str, limit: u32) -> Result<Vec<Run>, DatabaseError> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(&format!(
                "{RUN_COLUMNS} WHERE integration = ?1 ORDER BY id DESC LIMIT ?2"
            ))
            .context("list runs")?;
        let rows = statement
            .query_map(params![integration, limit], run_from_row)
            .context("list runs")?;
        rows.collect::<Result<_, _>>().context("list runs")
    }

    pub fn add_timeline_event(
        &self,
        event: &NewTimelineEvent,
        now: &str,
    ) -> Result<i64, DatabaseError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO timeline_events
                 (incident_id, at, source, summary, details, run_id, output_url)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                event.incident_id,
                now,
                event.source,
                event.summary,
                event.details.to_string(),
                event.run_id,
                event.output_url
            ],
        )
        .context("record a timeline event")?;
        Ok(conn.last_insert_rowid())
    }

    /// An incident's timeline, oldest first.
    pub fn timeline(&self, incident_id: &str) -> Result<Vec<TimelineEvent>, DatabaseError> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT id, incident_id, at, source, summary, details, run_id, output_url
                 FROM timeline_events WHERE incident_id = ?1 ORDER BY id",
            )
            .context("read a timeline")?;
        let rows = statement
            .query_map([incident_id], |row| {
                let details: String = row.get(5)?;
                Ok(TimelineEvent {
                    id: row.get(0)?,
                    incident_id: row.get(1)?,
                    at: row.get(2)?,
                    source: row.get(3)?,
                    summary: row.get(4)?,
                    details: serde_json::from_str(&details).unwrap_or_default(),
                    run_id: row.get(6)?,
                    output_url: row.get(7)?,
                })
            })
            .context("read a timeline")?;
        rows.collect::<Result<_, _>>().context("read a timeline")
    }

    // --- the plugins' key-value spaces ----------------------------------------------------

    pub fn kv_get(&self, integration: &str, key: &str) -> Result<Option<Vec<u8>>, DatabaseError> {
        self.reader()
            .query_row(
                "SELECT value FROM plugin_kv WHERE integration = ?1 AND key = ?2",
                [integration, key],
                |row| row.get(0),
            )
            .optional()
            .context("read plugin storage")
    }

    pub fn kv_set(&self, integration: &str, key: &str, value: &[u8]) -> Result<(), DatabaseError> {
        self.conn()
            .execute(
                "INSERT INTO plugin_kv (integration, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (integration, key) DO UPDATE SET value = excluded.value",
                params![integration, key, value],
            )
            .context("write plugin storage")?;
        Ok(())
    }

    pub fn kv_delete(&self, integration: &str, key: &str) -> Result<(), DatabaseError> {
        self.conn()
            .execute(
                "DELETE FROM plugin_kv WHERE integration = ?1 AND key = ?2",
                [integration, key],
            )
            .context("delete from plugin storage")?;
        Ok(())
    }

    /// Keys starting with `prefix`, in byte order. Compares bytes rather than using LIKE, whose
    /// wildcards and case folding would widen the match.
    pub fn kv_keys(&self, integration: &str, prefix: &str) -> Result<Vec<String>, DatabaseError> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT key FROM plugin_kv
                 WHERE integration = ?1 AND substr(key, 1, length(?2)) = ?2 ORDER BY key",
            )
            .context("list plugin storage")?;
        let rows = statement
            .query_map([integration, prefix], |row| row.get(0))
            .context("list plugin storage")?;
        rows.collect::<Result<_, _>>()
            .context("list plugin storage")
    }

    // --- services -------------------------------------------------------------------------

    /// Creates or updates a service; returns whether it was created.
    pub fn upsert_service(&self, name: &str, heroku_app_name: &str) -> Result<bool, DatabaseError> {
        let mut conn = self.conn();
        let tx = conn.transaction().context("begin a transaction")?;
        let existed: bool = tx
            .query_row("SELECT 1 FROM services WHERE name = ?1", [name], |_| {
                Ok(true)
            })
            .optional()
            .context("read a service")?
            .unwrap_or(false);
        tx.execute(
            "INSERT INTO services (name, heroku_app_name) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET heroku_app_name = excluded.heroku_app_name",
            [name, heroku_app_name],
        )
        .context("write a service")?;
        tx.commit().context("commit a service")?;
        Ok(!existed)
    }

    pub fn service(&self, name: &str) -> Result<Option<Service>, DatabaseError> {
        self.conn()
            .query_row(
                "SELECT name, heroku_app_name FROM services WHERE name = ?1",
                [name],
                |row| {
                    Ok(Service {
                        name: row.get(0)?,
                        heroku_app_name: row.get(1)?,
                    })
                },
            )
            .optional()
            .context("read a service")
    }

    pub fn services(&self) -> Result<Vec<Service>, DatabaseError> {
        let conn = self.conn();
        let mut statement = conn
            .prepare("SELECT name, heroku_app_name FROM services ORDER BY name")
            .context("list services")?;
        let rows = statement
            .query_map([], |row| {
                Ok(Service {
                    name: row.get(0)?,
                    heroku_app_name: row.get(1)?,
                })
            })
            .context("list services")?;
        rows.collect::<Result<_, _>>().context("list services")
    }

    /// Deletes a service; returns whether it existed. Its pulses stay.
    pub fn delete_service(&self, name: &str) -> Result<bool, DatabaseError> {
        let deleted = self
            .conn()
            .execute("DELETE FROM services WHERE name = ?1", [name])
            .context("delete a service")?;
        Ok(deleted == 1)
    }

    // --- pulses ---------------------------------------------------------------------------

    /// Stores pulses for `integration`, each unless one with the same dedupe key is stored
    /// already, and returns what became of each once it is durable.
    ///
    /// Callers that arrive while another commit is being written are committed together in
    /// the next transaction (group commit): one fsync then makes many deliveries durable,
    /// which is what lets the webhook endpoint answer thousands a second with full fsync.
    pub fn insert_pulses(
        &self,
        integration: &str,
        pulses: Vec<NewPulse>,
        received_at: &str,
    ) -> Result<Vec<Inserted>, DatabaseError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.queue().push(PendingInsert {
            integration: integration.to_string(),
            pulses,
            received_at: received_at.to_string(),
            reply,
        });
        {
            // Whoever holds the connection commits everything queued so far. When the queue is
            // empty here, the holder before us took our insert and has already answered it.
            let mut conn = self.conn();
            let batch = std::mem::take(&mut *self.queue());
            if !batch.is_empty() {
                commit_batch(&mut conn, batch);
            }
        }
        answer
            .recv()
            .expect("every queued insert is answered before the connection is released")
    }

    /// A page of pulses, newest first (by start time, then by id), optionally only those
    /// linked to `service`. Returns the page and the cursor of the page after it, if any.
    pub fn pulses(
        &self,
        service: Option<&str>,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<(Vec<StoredPulse>, Option<Cursor>), DatabaseError> {
        let conn = self.reader();
        let (after_s, after_ns, after_id) = match after {
            Some(c) => (Some(c.started_s), Some(c.started_ns), Some(c.id)),
            None => (None, None, None),
        };
        let mut statement = conn
            .prepare_cached(
                "SELECT p.id, p.summary, p.source, p.started_s, p.started_ns, p.ended_s,
                        p.ended_ns, p.labels, p.refs, p.integration
                 FROM pulses p
                 WHERE (?1 IS NULL OR EXISTS (
                         SELECT 1 FROM pulse_correlations c
                         JOIN services s ON s.heroku_app_name = c.value
                         WHERE c.pulse_id = p.id AND c.key = ?5 AND s.name = ?1))
                   AND (?2 IS NULL OR (p.started_s, p.started_ns, p.id) < (?2, ?3, ?4))
                 ORDER BY p.started_s DESC, p.started_ns DESC, p.id DESC
                 LIMIT ?6",
            )
            .context("list pulses")?;
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let rows = statement
            .query_map(
                params![
                    service,
                    after_s,
                    after_ns,
                    after_id,
                    APP_CORRELATION_KEY,
                    fetch
                ],
                pulse_from_row,
            )
            .context("list pulses")?;
        let mut pulses: Vec<StoredPulse> = rows.collect::<Result<_, _>>().context("list pulses")?;

        let next = if pulses.len() > limit {
            pulses.truncate(limit);
            pulses.last().map(|last| Cursor {
                started_s: last.started_at.0,
                started_ns: last.started_at.1,
                id: last.id,
            })
        } else {
            None
        };

        let mut linked = conn
            .prepare_cached(
                "SELECT DISTINCT s.name FROM pulse_correlations c
                 JOIN services s ON s.heroku_app_name = c.value
                 WHERE c.pulse_id = ?1 AND c.key = ?2 ORDER BY s.name",
            )
            .context("list a pulse's services")?;
        for pulse in &mut pulses {
            let names = linked
                .query_map(params![pulse.id, APP_CORRELATION_KEY], |row| row.get(0))
                .context("list a pulse's services")?;
            pulse.services = names
                .collect::<Result<_, _>>()
                .context("list a pulse's services")?;
        }
        Ok((pulses, next))
    }

    /// The raw event a pulse was made from.
    pub fn pulse_raw(&self, id: i64) -> Result<Option<String>, DatabaseError> {
        self.reader()
            .query_row("SELECT raw FROM pulses WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()
            .context("read a pulse")
    }
}

const RUN_COLUMNS: &str = "SELECT id, integration, action, actor, incident_id, params, state,
    started_at, finished_at, result, error, output_bytes FROM runs";

fn run_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    let json = |text: Option<String>| text.and_then(|text| serde_json::from_str(&text).ok());
    Ok(Run {
        id: row.get(0)?,
        integration: row.get(1)?,
        action: row.get(2)?,
        actor: row.get(3)?,
        incident_id: row.get(4)?,
        params: json(row.get(5)?).unwrap_or_default(),
        state: row.get(6)?,
        started_at: row.get(7)?,
        finished_at: row.get(8)?,
        result: json(row.get(9)?),
        error: row.get(10)?,
        output_bytes: row.get::<_, i64>(11)? as u64,
    })
}

fn integration_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Integration> {
    let apps: String = row.get(1)?;
    let state: Option<String> = row.get(4)?;
    let reason: Option<String> = row.get(5)?;
    Ok(Integration {
        name: row.get(0)?,
        // Only this module writes the column, always as a JSON list of strings.
        apps: serde_json::from_str(&apps).unwrap_or_default(),
        created_at: row.get(2)?,
        updated_at: row.get(3)?,
        connection: match state.as_deref() {
            Some("connected") => Connection::Connected,
            Some(_) => Connection::Disconnected(reason.unwrap_or_default()),
            None => Connection::Never,
        },
    })
}

fn pulse_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredPulse> {
    let ended = match (row.get::<_, Option<i64>>(5)?, row.get::<_, Option<u32>>(6)?) {
        (Some(s), Some(ns)) => Some((s, ns)),
        _ => None,
    };
    let labels: String = row.get(7)?;
    let refs: String = row.get(8)?;
    Ok(StoredPulse {
        id: row.get(0)?,
        summary: row.get(1)?,
        source: row.get(2)?,
        started_at: (row.get(3)?, row.get(4)?),
        ended_at: ended,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        refs: serde_json::from_str(&refs).unwrap_or_default(),
        integration: row.get(9)?,
        services: Vec::new(),
    })
}

/// Commits a batch of callers' pulses in one transaction and answers each caller. Each
/// caller's pulses go in a savepoint of their own, so one caller's failure is its own; if the
/// commit itself fails, each caller is retried in a transaction of its own, so that each gets
/// the error its own pulses meet.
fn commit_batch(conn: &mut Sqlite, batch: Vec<PendingInsert>) {
    let together = (|| {
        let mut tx = conn.transaction()?;
        let mut results = Vec::with_capacity(batch.len());
        for pending in &batch {
            let savepoint = tx.savepoint()?;
            let result = insert_all(&savepoint, pending);
            if result.is_ok() {
                savepoint.commit()?;
            }
            results.push(result);
        }
        tx.commit()?;
        Ok::<_, rusqlite::Error>(results)
    })();
    match together {
        Ok(results) => {
            for (pending, result) in batch.iter().zip(results) {
                // A caller that stopped waiting (its task was cancelled) needs no answer.
                let _ = pending.reply.send(result);
            }
        }
        Err(_) => {
            for pending in &batch {
                let result = conn
                    .transaction()
                    .context("begin a transaction")
                    .and_then(|tx| {
                        let inserted = insert_all(&tx, pending)?;
                        tx.commit().context("commit pulses")?;
                        Ok(inserted)
                    });
                let _ = pending.reply.send(result);
            }
        }
    }
}

/// Inserts one caller's pulses inside the transaction (or savepoint) `tx`.
fn insert_all(tx: &Sqlite, pending: &PendingInsert) -> Result<Vec<Inserted>, DatabaseError> {
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO pulses (integration, dedupe_key, summary, source, started_s,
                 started_ns, ended_s, ended_ns, labels, refs, raw, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (integration, dedupe_key) DO NOTHING",
        )
        .context("store a pulse")?;
    let mut correlate = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO pulse_correlations (pulse_id, key, value)
             VALUES (?1, ?2, ?3)",
        )
        .context("store a pulse's correlations")?;
    let mut results = Vec::with_capacity(pending.pulses.len());
    for pulse in &pending.pulses {
        let changed = insert
            .execute(params![
                pending.integration,
                pulse.dedupe_key,
                pulse.summary,
                pulse.source,
                pulse.started_at.0,
                pulse.started_at.1,
                pulse.ended_at.map(|t| t.0),
                pulse.ended_at.map(|t| t.1),
                serde_json::to_string(&pulse.labels).expect("labels serialize"),
                serde_json::to_string(&pulse.refs).expect("refs serialize"),
                pulse.raw,
                pending.received_at,
            ])
            .context("store a pulse")?;
        if changed == 0 {
            results.push(Inserted::Duplicate);
            continue;
        }
        let id = tx.last_insert_rowid();
        for (key, value) in &pulse.correlations {
            correlate
                .execute(params![id, key, value])
                .context("store a pulse's correlations")?;
        }
        results.push(Inserted::New(id));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulse(key: &str, app: &str) -> NewPulse {
        NewPulse {
            summary: format!("pulse {key}"),
            source: "test".into(),
            started_at: (1_700_000_000, 0),
            ended_at: None,
            labels: Default::default(),
            refs: Default::default(),
            correlations: vec![(APP_CORRELATION_KEY.into(), app.into())],
            dedupe_key: key.into(),
            raw: "{}".into(),
        }
    }

    fn open() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::open(&dir.path().join("test.sqlite3")).unwrap();
        (dir, database)
    }

    #[test]
    fn opens_in_wal_mode() {
        let (_dir, database) = open();
        assert_eq!(database.journal_mode().unwrap(), "wal");
    }

    #[test]
    fn dedupe_key_is_unique_per_integration() {
        let (_dir, database) = open();
        let now = "2026-01-01T00:00:00Z";
        let first = database.insert_pulses("a", vec![pulse("k", "app"), pulse("k", "app")], now);
        assert_eq!(first.unwrap(), [Inserted::New(1), Inserted::Duplicate]);
        assert_eq!(
            database
                .insert_pulses("a", vec![pulse("k", "app")], now)
                .unwrap(),
            [Inserted::Duplicate]
        );
        assert_eq!(
            database
                .insert_pulses("b", vec![pulse("k", "app")], now)
                .unwrap(),
            [Inserted::New(2)]
        );
    }

    #[test]
    fn concurrent_inserts_are_each_answered_and_stored_once() {
        let (_dir, database) = open();
        let now = "2026-01-01T00:00:00Z";
        // 16 threads, each storing 50 pulses of its own and one that every thread shares.
        let answers: Vec<Vec<Inserted>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..16)
                .map(|t| {
                    let database = database.clone();
                    scope.spawn(move || {
                        let mut answers = Vec::new();
                        for i in 0..50 {
                            let key = format!("{t}-{i}");
                            let pulses = vec![pulse(&key, "app")];
                            answers.extend(database.insert_pulses("a", pulses, now).unwrap());
                        }
                        let shared = vec![pulse("shared", "app")];
                        answers.extend(database.insert_pulses("a", shared, now).unwrap());
                        answers
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let mut ids: Vec<i64> = answers
            .iter()
            .flatten()
            .filter_map(|inserted| match inserted {
                Inserted::New(id) => Some(*id),
                Inserted::Duplicate => None,
            })
            .collect();
        ids.sort();
        assert_eq!(ids, (1..=16 * 50 + 1).collect::<Vec<i64>>());
        let duplicates = answers
            .iter()
            .flatten()
            .filter(|a| **a == Inserted::Duplicate);
        assert_eq!(duplicates.count(), 15, "the shared pulse is stored once");
    }

    #[test]
    fn plugin_keys_are_listed_by_exact_prefix() {
        let (_dir, database) = open();
        database.upsert_integration("a", &[], &[], "now").unwrap();
        database.upsert_integration("b", &[], &[], "now").unwrap();
        for key in ["hook/1", "hook/2", "Hook/3", "hooks", "h%ok/4"] {
            database.kv_set("a", key, b"v").unwrap();
        }
        database.kv_set("b", "hook/9", b"v").unwrap();
        assert_eq!(
            database.kv_keys("a", "hook/").unwrap(),
            ["hook/1", "hook/2"]
        );
        assert_eq!(database.kv_keys("a", "h%").unwrap(), ["h%ok/4"]);
        assert_eq!(database.kv_keys("b", "").unwrap(), ["hook/9"]);
        database.kv_delete("a", "hook/1").unwrap();
        assert_eq!(database.kv_get("a", "hook/1").unwrap(), None);
        assert_eq!(database.kv_get("a", "hook/2").unwrap(), Some(b"v".to_vec()));
    }
}
