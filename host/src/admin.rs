//! Managing integrations, services and pulses: the operations behind both the `/api`
//! endpoints and the CLI, with the validation they share.

use serde::Serialize;

use crate::data_dir;
use crate::database::{Cursor, Database, DatabaseError};
use crate::model::{self, AppWebhook, Connection, Invalid, Service, StoredPulse};

/// The plugin storage key the webhook secret is kept under; see `wit/plugin.wit`.
pub const WEBHOOK_SECRET_KEY: &str = "webhook-secret";

/// The most apps one integration may monitor.
pub const MAX_APPS: usize = 100;

/// The page size of `pulses` when none is asked for, and the largest allowed.
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 500;

/// Why a management operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is wrong; the message says how to fix it.
    #[error("{0}")]
    Invalid(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// The host failed in a way the request did not cause.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Invalid> for AdminError {
    fn from(err: Invalid) -> Self {
        AdminError::Invalid(err.0)
    }
}

/// An integration as the API shows it. The secret is there only in the answer that created
/// the integration.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrationView {
    pub name: String,
    pub apps: Vec<String>,
    pub webhook_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Whether a Heroku account is connected, and if it was disconnected, why.
    pub connection: Connection,
    /// Where each app stood after the last apply: its webhook, or the error.
    pub webhooks: Vec<AppWebhook>,
    /// Why applying the settings on Heroku failed, in the answer to a change that tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A pulse as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PulseView {
    pub id: i64,
    pub integration: String,
    pub summary: String,
    pub source: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub refs: std::collections::BTreeMap<String, String>,
    pub services: Vec<String>,
}

/// One page of pulses and where the next one starts.
#[derive(Debug, Clone, Serialize)]
pub struct PulsePage {
    pub pulses: Vec<PulseView>,
    pub next_cursor: Option<String>,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct PulseQuery {
    pub service: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// The management operations, over one database.
#[derive(Clone)]
pub struct Admin {
    database: Database,
    public_url: String,
}

impl Admin {
    /// `public_url` is the base URL Heroku reaches this host at; webhook URLs start with it.
    pub fn new(database: Database, public_url: &str) -> Admin {
        Admin {
            database,
            public_url: public_url.trim_end_matches('/').to_string(),
        }
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The base URL Heroku and browsers reach this host at.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// The URL Heroku should deliver `integration`'s webhooks to.
    pub fn webhook_url(&self, integration: &str) -> String {
        format!("{}/webhooks/heroku/{integration}", self.public_url)
    }

    /// Creates the integration, or sets the apps of an existing one. Apps are checked against
    /// Heroku's naming rules and duplicates are dropped, keeping the given order. A new
    /// integration gets a random webhook secret, returned this once.
    pub fn put_integration(
        &self,
        name: &str,
        apps: &[String],
    ) -> Result<(IntegrationView, bool), AdminError> {
        model::check_name("integration", name)?;
        if apps.len() > MAX_APPS {
            return Err(AdminError::Invalid(format!(
                "an integration monitors at most {MAX_APPS} apps; {} were given",
                apps.len()
            )));
        }
        let mut unique: Vec<String> = Vec::with_capacity(apps.len());
        for app in apps {
            model::check_app(app)?;
            let app = model::normalize_app(app);
            if !unique.contains(&app) {
                unique.push(app);
            }
        }

        let secret = data_dir::random_token();
        let seed = [(WEBHOOK_SECRET_KEY, secret.as_bytes())];
        let created = self
            .database
            .upsert_integration(name, &unique, &seed, &model::now())?;
        let mut view = self.integration(name)?;
        if created {
            view.webhook_secret = Some(secret);
        }
        Ok((view, created))
    }

    /// The integration called `name`, without its secret.
    pub fn integration(&self, name: &str) -> Result<IntegrationView, AdminError> {
        let integration = self.database.integration(name)?.ok_or_else(|| {
            AdminError::NotFound(format!("no integration named {:?}", model::shorten(name)))
        })?;
        self.view(integration)
    }

    pub fn integrations(&self) -> Result<Vec<IntegrationView>, AdminError> {
        self.database
            .integrations()?
            .into_iter()
            .map(|i| self.view(i))
            .collect()
    }

    fn view(&self, integration: model::Integration) -> Result<IntegrationView, AdminError> {
        Ok(IntegrationView {
            webhook_url: self.webhook_url(&integration.name),
            webhooks: self.database.app_webhooks(&integration.name)?,
            name: integration.name,
            apps: integration.apps,
            webhook_secret: None,
            apply_error: None,
            connection: integration.connection,
            created_at: integration.created_at,
            updated_at: integration.updated_at,
        })
    }

    /// Creates or updates a service; returns it and whether it was created.
    pub fn put_service(
        &self,
        name: &str,
        heroku_app_name: &str,
    ) -> Result<(Service, bool), AdminError> {
        model::check_name("service", name)?;
        model::check_service_app(heroku_app_name)?;
        let created = self.database.upsert_service(name, heroku_app_name)?;
        let service = Service {
            name: name.into(),
            heroku_app_name: heroku_app_name.into(),
        };
        Ok((service, created))
    }

    pub fn services(&self) -> Result<Vec<Service>, AdminError> {
        Ok(self.database.services()?)
    }

    pub fn delete_service(&self, name: &str) -> Result<(), AdminError> {
        if self.database.delete_service(name)? {
            Ok(())
        } else {
            Err(AdminError::NotFound(format!(
                "no service named {:?}",
                model::shorten(name)
            )))
        }
    }

    /// A page of pulses, newest first.
    pub fn pulses(&self, query: &PulseQuery) -> Result<PulsePage, AdminError> {
        let limit = query.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(AdminError::Invalid(format!(
                "limit must be 1 to {MAX_PAGE}"
            )));
        }
        if let Some(service) = &query.service {
            if self.database.service(service)?.is_none() {
                return Err(AdminError::NotFound(format!(
                    "no service named {:?}",
                    model::shorten(service)
                )));
            }
        }
        let after = query.cursor.as_deref().map(parse_cursor).transpose()?;
        let (pulses, next) = self
            .database
            .pulses(query.service.as_deref(), after, limit)?;
        Ok(PulsePage {
            pulses: pulses.into_iter().map(pulse_view).collect(),
            next_cursor: next.map(format_cursor),
        })
    }

    /// The raw event a pulse was made from, as stored.
    pub fn pulse_raw(&self, id: i64) -> Result<String, AdminError> {
        self.database
            .pulse_raw(id)?
            .ok_or_else(|| AdminError::NotFound(format!("no pulse with id {id}")))
    }
}

fn pulse_view(pulse: StoredPulse) -> PulseView {
    PulseView {
        id: pulse.id,
        integration: pulse.integration,
        summary: pulse.summary,
        source: pulse.source,
        started_at: model::format_time(pulse.started_at),
        ended_at: pulse.ended_at.map(model::format_time),
        labels: pulse.labels,
        refs: pulse.refs,
        services: pulse.services,
    }
}

fn format_cursor(cursor: Cursor) -> String {
    format!("{}.{}.{}", cursor.started_s, cursor.started_ns, cursor.id)
}

fn parse_cursor(text: &str) -> Result<Cursor, AdminError> {
    let invalid = || AdminError::Invalid("cursor is not one this API returned".into());
    let mut parts = text.splitn(3, '.');
    let mut next = || parts.next().ok_or_else(invalid);
    Ok(Cursor {
        started_s: next()?.parse().map_err(|_| invalid())?,
        started_ns: next()?.parse().map_err(|_| invalid())?,
        id: next()?.parse().map_err(|_| invalid())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_garbage_is_refused() {
        let cursor = Cursor {
            started_s: -5,
            started_ns: 7,
            id: 42,
        };
        assert_eq!(parse_cursor(&format_cursor(cursor)).unwrap(), cursor);
        for bad in ["", "1.2", "a.b.c", "1.2.3.4", "1.-2.3"] {
            assert!(
                matches!(parse_cursor(bad), Err(AdminError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
