//! Keeps this integration's webhook on exactly the monitored apps. Our webhooks are the ones
//! whose URL is the integration's webhook URL; they are found by listing each app's webhooks,
//! so a lost record or a webhook deleted on Heroku's side is repaired on the next apply, and
//! webhooks anyone else created are never touched.

use serde_json::{Value, json};

use crate::platform_api::{Failure, PlatformApi, Transport};

/// The events our webhooks subscribe to.
pub const INCLUDE: [&str; 3] = ["api:build", "api:release", "api:dyno"];

/// Deliveries are retried by Heroku for up to 72 hours at this level.
pub const LEVEL: &str = "sync";

/// Where the id of our webhook on an app is recorded: `webhook/{app}`.
const RECORD_PREFIX: &str = "webhook/";

/// The plugin's records, kept in the host's storage for the integration.
pub trait Records {
    fn set(&self, key: &str, value: &str) -> Result<(), String>;
    fn delete(&self, key: &str) -> Result<(), String>;
    fn keys(&self, prefix: &str) -> Result<Vec<String>, String>;
}

/// Where one app stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppStatus {
    pub app: String,
    pub webhook_id: Option<String>,
    pub error: Option<Failure>,
}

/// Why a whole apply or disconnect stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Heroku refused the credentials.
    Unauthenticated(crate::platform_api::ApiError),
    /// A listed app is not an app name or id.
    Invalid(String),
    /// The records could not be read or written.
    Records(String),
}

/// What we ask Heroku for, per app.
pub struct Subscription<'a> {
    pub url: &'a str,
    pub secret: &'a str,
}

/// Makes Heroku match `apps`: one webhook of ours on each, none on apps recorded before but
/// no longer listed.
pub async fn apply<T: Transport, R: Records>(
    api: &PlatformApi<T>,
    records: &R,
    apps: &[String],
    subscription: &Subscription<'_>,
) -> Result<Vec<AppStatus>, Stop> {
    for app in apps {
        if !is_app_identity(app) {
            return Err(Stop::Invalid(format!(
                "{app:?} is not a Heroku app name (^[a-z][a-z0-9-]{{1,28}}[a-z0-9]$) or an app id"
            )));
        }
    }

    let mut statuses = Vec::with_capacity(apps.len());
    for app in apps {
        let status = match ensure(api, app, subscription).await {
            Ok(id) => {
                records.set(&record_key(app), &id).map_err(Stop::Records)?;
                AppStatus {
                    app: app.clone(),
                    webhook_id: Some(id),
                    error: None,
                }
            }
            Err(failure) if failure.is_unauthorized() => return Err(unauthenticated(failure)),
            Err(failure) => AppStatus {
                app: app.clone(),
                webhook_id: None,
                error: Some(failure),
            },
        };
        statuses.push(status);
    }

    for app in recorded_apps(records)? {
        if apps.contains(&app) {
            continue;
        }
        match remove(api, &app, subscription.url).await {
            Ok(()) => records.delete(&record_key(&app)).map_err(Stop::Records)?,
            Err(failure) if failure.is_unauthorized() => return Err(unauthenticated(failure)),
            // Keep the record, so the next apply tries again.
            Err(failure) => statuses.push(AppStatus {
                app,
                webhook_id: None,
                error: Some(failure),
            }),
        }
    }
    Ok(statuses)
}

/// Removes our webhooks from every listed or recorded app.
pub async fn disconnect<T: Transport, R: Records>(
    api: &PlatformApi<T>,
    records: &R,
    apps: &[String],
    url: &str,
) -> Result<Vec<AppStatus>, Stop> {
    let mut targets: Vec<String> = apps
        .iter()
        .filter(|app| is_app_identity(app))
        .cloned()
        .collect();
    for app in recorded_apps(records)? {
        if !targets.contains(&app) {
            targets.push(app);
        }
    }

    let mut statuses = Vec::with_capacity(targets.len());
    for app in targets {
        let error = match remove(api, &app, url).await {
            Ok(()) => {
                records.delete(&record_key(&app)).map_err(Stop::Records)?;
                None
            }
            Err(failure) if failure.is_unauthorized() => return Err(unauthenticated(failure)),
            Err(failure) => Some(failure),
        };
        statuses.push(AppStatus {
            app,
            webhook_id: None,
            error,
        });
    }
    Ok(statuses)
}

/// Makes sure exactly one webhook of ours is on `app`, as we want it; returns its id.
async fn ensure<T: Transport>(
    api: &PlatformApi<T>,
    app: &str,
    subscription: &Subscription<'_>,
) -> Result<String, Failure> {
    let path = format!("/apps/{app}/webhooks");
    let ours: Vec<Value> = api
        .list(&path)
        .await?
        .into_iter()
        .filter(|hook| hook["url"].as_str() == Some(subscription.url))
        .collect();

    let Some((keep, extra)) = ours.split_first() else {
        let body = json!({
            "include": INCLUDE,
            "level": LEVEL,
            "url": subscription.url,
            "secret": subscription.secret,
        });
        let (created, _) = api.call("POST", &path, Some(&body), None).await?;
        return id_of(&created);
    };

    for hook in extra {
        let id = id_of(hook)?;
        api.call("DELETE", &format!("{path}/{id}"), None, None)
            .await?;
    }

    let id = id_of(keep)?;
    if !is_as_wanted(keep) {
        let body = json!({"include": INCLUDE, "level": LEVEL, "secret": subscription.secret});
        api.call("PATCH", &format!("{path}/{id}"), Some(&body), None)
            .await?;
    }
    Ok(id)
}

/// Deletes every webhook of ours on `app`. An app that is gone (404) has none left.
async fn remove<T: Transport>(api: &PlatformApi<T>, app: &str, url: &str) -> Result<(), Failure> {
    let path = format!("/apps/{app}/webhooks");
    let hooks = match api.list(&path).await {
        Ok(hooks) => hooks,
        Err(Failure::Api(error)) if error.status == 404 => return Ok(()),
        Err(failure) => return Err(failure),
    };
    for hook in hooks
        .iter()
        .filter(|hook| hook["url"].as_str() == Some(url))
    {
        let id = id_of(hook)?;
        match api
            .call("DELETE", &format!("{path}/{id}"), None, None)
            .await
        {
            Ok(_) => {}
            Err(Failure::Api(error)) if error.status == 404 => {}
            Err(failure) => return Err(failure),
        }
    }
    Ok(())
}

fn is_as_wanted(hook: &Value) -> bool {
    let mut include: Vec<&str> = hook["include"]
        .as_array()
        .map(|list| list.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    include.sort_unstable();
    let mut wanted = INCLUDE.to_vec();
    wanted.sort_unstable();
    include == wanted && hook["level"].as_str() == Some(LEVEL)
}

fn id_of(hook: &Value) -> Result<String, Failure> {
    hook["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Failure::Transport("a webhook in Heroku's answer has no id".into()))
}

fn unauthenticated(failure: Failure) -> Stop {
    match failure {
        Failure::Api(error) => Stop::Unauthenticated(error),
        Failure::Transport(message) => Stop::Records(message),
    }
}

fn record_key(app: &str) -> String {
    format!("{RECORD_PREFIX}{app}")
}

fn recorded_apps<R: Records>(records: &R) -> Result<Vec<String>, Stop> {
    let keys = records.keys(RECORD_PREFIX).map_err(Stop::Records)?;
    Ok(keys
        .into_iter()
        .filter_map(|key| key.strip_prefix(RECORD_PREFIX).map(str::to_string))
        .collect())
}

/// Heroku's app-name pattern, or an app id (a UUID).
pub fn is_app_identity(app: &str) -> bool {
    let bytes = app.as_bytes();
    let name = (3..=30).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-';
    let uuid = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    name || uuid
}
