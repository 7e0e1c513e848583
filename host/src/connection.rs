//! Connecting an integration to a Heroku account: the OAuth authorization-code flow, tokens
//! sealed at rest and refreshed before they expire (and after a 401), and the plugin's
//! lifecycle calls, which reach the Platform API with the token the host adds on the way out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::admin::Admin;
use crate::data_dir;
use crate::database::{Database, DatabaseError};
use crate::model::{self, AppWebhook, Connection};
use crate::sandbox::{
    ActionError, ApiError, AppError, AppStatus, Context, Egress, Invocation, LifecycleError,
    Plugin, RunResult, RunSink,
};
use crate::vault::Vault;

/// Where Heroku is, and the OAuth client registered with it.
#[derive(Debug, Clone)]
pub struct HerokuConfig {
    /// The Platform API, `https://api.heroku.com` unless a test points elsewhere.
    pub api_url: String,
    /// The identity service, `https://id.heroku.com`.
    pub id_url: String,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

impl Default for HerokuConfig {
    fn default() -> Self {
        HerokuConfig {
            api_url: "https://api.heroku.com".into(),
            id_url: "https://id.heroku.com".into(),
            client_id: None,
            client_secret: None,
        }
    }
}

/// The scope asked for: managing webhooks (and, later, creating dynos) needs `write`.
const SCOPE: &str = "write";

/// How long an OAuth `state` and a connect link stay valid.
const STATE_LIFETIME: Duration = Duration::from_secs(10 * 60);
const LINK_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// A token this close to expiry is refreshed before use.
const REFRESH_MARGIN: i64 = 5 * 60;

/// A run needs its token for up to 40 minutes: one that expires sooner is refreshed first.
const RUN_REFRESH_MARGIN: i64 = 45 * 60;

/// What one call with a token came to.
enum Attempt<R> {
    Done(R),
    /// Heroku refused the token.
    Unauthenticated(ApiError),
}

/// The plugin's lifecycle calls.
#[derive(Clone, Copy)]
enum Lifecycle {
    Apply,
    Disconnect,
}

/// What a connected integration holds, sealed in the database.
#[derive(Serialize, Deserialize)]
struct Credentials {
    access_token: String,
    refresh_token: String,
    /// Unix seconds.
    expires_at: i64,
    user_id: Option<String>,
}

/// Heroku's token answer.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: i64,
    refresh_token: Option<String>,
    user_id: Option<String>,
}

/// Why a connection operation failed; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "Heroku OAuth is not configured: set PULSE_HEROKU_CLIENT_ID and \
         PULSE_HEROKU_CLIENT_SECRET (the client's redirect URI is \
         {0}/oauth/heroku/callback)"
    )]
    NotConfigured(String),
    #[error("integration {0} is not connected to Heroku: connect it first")]
    NotConnected(String),
    #[error("{0}")]
    Reconnect(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the connect link or OAuth state is unknown, used or expired: start again")]
    BadState,
    #[error("{0}")]
    NotFound(String),
    #[error("Heroku's identity service failed: {0}")]
    Identity(String),
    #[error("the plugin failed: {0}")]
    Plugin(String),
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

/// What a disconnect did.
#[derive(Debug, Clone, Serialize)]
pub struct DisconnectReport {
    /// Apps whose webhooks could not be removed, with why.
    pub failed: Vec<AppWebhook>,
    /// Whether Heroku confirmed the authorization is revoked.
    pub revoked: bool,
}

/// Connects integrations and runs their lifecycle calls.
#[derive(Clone)]
pub struct Connector {
    admin: Admin,
    vault: Vault,
    heroku: HerokuConfig,
    client: reqwest::Client,
    plugin: Plugin,
}

impl Connector {
    pub fn new(admin: Admin, vault: Vault, heroku: HerokuConfig, plugin: Plugin) -> Connector {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("the HTTP client builds");
        Connector {
            admin,
            vault,
            heroku,
            client,
            plugin,
        }
    }

    fn database(&self) -> &Database {
        self.admin.database()
    }

    /// The Platform API's base URL, without a trailing slash.
    pub fn api_url(&self) -> &str {
        self.heroku.api_url.trim_end_matches('/')
    }

    fn client_credentials(&self) -> Result<(&str, &str), ConnectError> {
        match (&self.heroku.client_id, &self.heroku.client_secret) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Ok((id, secret)),
            _ => Err(ConnectError::NotConfigured(
                self.admin.public_url().to_string(),
            )),
        }
    }

    /// The URL of Heroku's consent page for `integration`, with a fresh `state` bound to it.
    pub fn authorize_url(&self, integration: &str) -> Result<String, ConnectError> {
        let (client_id, _) = self.client_credentials()?;
        self.existing(integration)?;
        let state = data_dir::random_token();
        let expires = unix_now() + STATE_LIFETIME.as_secs() as i64;
        self.database()
            .put_one_time(&hash(&state), "oauth-state", integration, expires)?;
        let mut url = reqwest::Url::parse(&format!("{}/oauth/authorize", self.heroku.id_url))
            .map_err(|err| {
                ConnectError::Invalid(format!("PULSE_HEROKU_ID_URL is not a URL: {err}"))
            })?;
        url.query_pairs_mut()
            .append_pair("client_id", client_id)
            .append_pair("response_type", "code")
            .append_pair("scope", SCOPE)
            .append_pair("state", &state);
        Ok(url.into())
    }

    /// A link a person can open in a browser, once, within a few minutes, to connect
    /// `integration` without the admin token. Returns the URL and its expiry (RFC 3339).
    pub fn connect_link(&self, integration: &str) -> Result<(String, String), ConnectError> {
        self.client_credentials()?;
        self.existing(integration)?;
        let token = data_dir::random_token();
        let expires = unix_now() + LINK_LIFETIME.as_secs() as i64;
        self.database()
            .put_one_time(&hash(&token), "connect-link", integration, expires)?;
        let url = format!(
            "{}/integrations/{integration}/heroku/connect?link={token}",
            self.admin.public_url()
        );
        Ok((url, model::format_time((expires, 0))))
    }

    /// Uses up a connect link; it must be for `integration`.
    pub fn redeem_link(&self, integration: &str, link: &str) -> Result<(), ConnectError> {
        match self
            .database()
            .take_one_time(&hash(link), "connect-link", unix_now())?
        {
            Some(name) if name == integration => Ok(()),
            _ => Err(ConnectError::BadState),
        }
    }

    /// Finishes the flow when Heroku sends the browser back: checks `state`, exchanges
    /// `code` for tokens, stores them sealed and applies the settings. Returns the
    /// integration's name and where its apps stand.
    pub async fn complete(
        &self,
        code: &str,
        state: &str,
    ) -> Result<(String, Result<Vec<AppWebhook>, ConnectError>), ConnectError> {
        let integration = self
            .database()
            .take_one_time(&hash(state), "oauth-state", unix_now())?
            .ok_or(ConnectError::BadState)?;
        let (_, secret) = self.client_credentials()?;
        let answer = self
            .token_request(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("client_secret", secret),
            ])
            .await?;
        let refresh_token = answer.refresh_token.clone().ok_or_else(|| {
            ConnectError::Identity("the token answer has no refresh token".into())
        })?;
        let credentials = Credentials {
            access_token: answer.access_token,
            refresh_token,
            expires_at: unix_now() + answer.expires_in,
            user_id: answer.user_id,
        };
        self.store(&integration, &credentials, true)?;
        tracing::info!(integration = %integration, "connected to Heroku");

        // Connecting (or reconnecting) re-applies the list, re-creating missing webhooks.
        let applied = self.apply(&integration).await;
        Ok((integration, applied))
    }

    /// Makes Heroku match the integration's app list, refreshing the token when it is about
    /// to expire or Heroku refuses it. Records and returns where each app stands.
    pub async fn apply(&self, integration: &str) -> Result<Vec<AppWebhook>, ConnectError> {
        let context = self.context(integration)?;
        let statuses = self.with_token(&context, Lifecycle::Apply).await?;
        let webhooks: Vec<AppWebhook> = statuses.into_iter().map(app_webhook).collect();
        self.database()
            .set_app_webhooks(integration, &webhooks, &model::now())?;
        for webhook in &webhooks {
            match &webhook.error {
                Some(error) => {
                    tracing::warn!(integration, app = %webhook.app, %error, "app not applied")
                }
                None => tracing::info!(integration, app = %webhook.app, "webhook in place"),
            }
        }
        Ok(webhooks)
    }

    /// Removes our webhooks, revokes the authorization where Heroku allows it and erases the
    /// tokens. Pulses stay; deliveries are refused from now on.
    pub async fn disconnect(&self, integration: &str) -> Result<DisconnectReport, ConnectError> {
        if self.existing(integration)?.connection == Connection::Never {
            return Err(ConnectError::NotConnected(integration.to_string()));
        }
        let context = self.context(integration)?;
        let removed = self.with_token(&context, Lifecycle::Disconnect).await;
        let failed: Vec<AppWebhook> = match removed {
            Ok(statuses) => statuses
                .into_iter()
                .map(app_webhook)
                .filter(|webhook| webhook.error.is_some())
                .collect(),
            // Without a working token nothing can be removed; the tokens are erased anyway.
            Err(ConnectError::Reconnect(_)) | Err(ConnectError::NotConnected(_)) => Vec::new(),
            Err(err) => return Err(err),
        };
        let revoked = match self.credentials(integration) {
            Ok(credentials) => self.revoke(&credentials).await,
            Err(_) => false,
        };
        let reason = "disconnected by an admin: connect again to receive deliveries";
        self.database()
            .disconnect(integration, reason, &model::now())?;
        self.database()
            .set_app_webhooks(integration, &failed, &model::now())?;
        tracing::info!(
            integration,
            revoked,
            failed = failed.len(),
            "disconnected from Heroku"
        );
        Ok(DisconnectReport { failed, revoked })
    }

    /// Runs a lifecycle call with a fresh token; see [`Connector::authorized`].
    async fn with_token(
        &self,
        context: &Context,
        call: Lifecycle,
    ) -> Result<Vec<AppStatus>, ConnectError> {
        let database = self.database();
        let plugin = &self.plugin;
        self.authorized(
            &context.integration,
            REFRESH_MARGIN,
            false,
            move |egress| async move {
                let result = match call {
                    Lifecycle::Apply => plugin.apply_settings(database, context, egress).await,
                    Lifecycle::Disconnect => plugin.disconnect(database, context, egress).await,
                };
                match result {
                    Ok(Ok(statuses)) => Ok(Attempt::Done(statuses)),
                    Ok(Err(LifecycleError::Unauthenticated(error))) => {
                        Ok(Attempt::Unauthenticated(error))
                    }
                    Ok(Err(LifecycleError::Invalid(message))) => {
                        Err(ConnectError::Invalid(message))
                    }
                    Ok(Err(LifecycleError::Internal(message))) => {
                        Err(ConnectError::Plugin(message))
                    }
                    Err(err) => Err(ConnectError::Plugin(err.to_string())),
                }
            },
        )
        .await
    }

    /// Runs an action of the plugin with a token that lasts the whole run, writing its output
    /// to the sinks `sink` makes (a fresh one for each attempt).
    pub async fn run_action(
        &self,
        context: &Context,
        invocation: &Invocation,
        sink: impl Fn() -> std::io::Result<RunSink> + Sync,
    ) -> Result<Result<RunResult, ActionError>, ConnectError> {
        let database = self.database();
        let plugin = &self.plugin;
        let sink = &sink;
        self.authorized(
            &context.integration,
            RUN_REFRESH_MARGIN,
            true,
            move |egress| async move {
                let sink = sink().map_err(|err| {
                    ConnectError::Plugin(format!("cannot open the run's output file: {err}"))
                })?;
                match plugin
                    .invoke(database, context, invocation, egress, sink)
                    .await
                {
                    // The plugin reports a refused token only before it changed anything.
                    Ok(Err(ActionError::Unauthenticated(error))) => {
                        Ok(Attempt::Unauthenticated(error))
                    }
                    Ok(result) => Ok(Attempt::Done(result)),
                    Err(err) => Err(ConnectError::Plugin(err.to_string())),
                }
            },
        )
        .await
    }

    /// Runs `call` with a token that is good for at least `margin` seconds; after a refusal
    /// (401) refreshes once and retries; when refreshing fails, or the fresh token is refused
    /// too, marks the integration disconnected with a reason to reconnect.
    async fn authorized<R, F>(
        &self,
        integration: &str,
        margin: i64,
        log_streams: bool,
        mut call: impl FnMut(Egress) -> F,
    ) -> Result<R, ConnectError>
    where
        F: Future<Output = Result<Attempt<R>, ConnectError>>,
    {
        let origin =
            crate::sandbox::origin_of(
                &self.heroku.api_url.parse().map_err(|_| {
                    ConnectError::Invalid("PULSE_HEROKU_API_URL is not a URL".into())
                })?,
            );
        let mut credentials = self.credentials(integration)?;
        if credentials.expires_at - unix_now() < margin {
            credentials = self.refresh(integration, credentials).await?;
        }
        for attempt in 0..2 {
            let egress = Egress {
                origin: origin.clone(),
                token: Some(credentials.access_token.clone()),
                log_streams,
            };
            match call(egress).await? {
                Attempt::Done(result) => return Ok(result),
                Attempt::Unauthenticated(_) if attempt == 0 => {
                    credentials = self.refresh(integration, credentials).await?;
                }
                Attempt::Unauthenticated(error) => {
                    let reason = format!(
                        "Heroku refused a fresh token ({} {}): reconnect the integration",
                        error.status, error.id
                    );
                    self.database()
                        .disconnect(integration, &reason, &model::now())?;
                    return Err(ConnectError::Reconnect(reason));
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Trades the refresh token for a new access token. A refusal means the authorization was
    /// revoked: the integration is marked disconnected and its tokens erased.
    async fn refresh(
        &self,
        integration: &str,
        credentials: Credentials,
    ) -> Result<Credentials, ConnectError> {
        let (_, secret) = self.client_credentials()?;
        let answer = self
            .token_request(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &credentials.refresh_token),
                ("client_secret", secret),
            ])
            .await;
        match answer {
            Ok(answer) => {
                let refreshed = Credentials {
                    access_token: answer.access_token,
                    refresh_token: answer.refresh_token.unwrap_or(credentials.refresh_token),
                    expires_at: unix_now() + answer.expires_in,
                    user_id: answer.user_id.or(credentials.user_id),
                };
                self.store(integration, &refreshed, false)?;
                tracing::info!(integration, "refreshed the Heroku token");
                Ok(refreshed)
            }
            Err(ConnectError::Identity(detail)) => {
                let reason = format!(
                    "Heroku refused to refresh the authorization (revoked or expired: {detail}): \
                     reconnect the integration"
                );
                tracing::warn!(integration, %reason, "disconnected");
                self.database()
                    .disconnect(integration, &reason, &model::now())?;
                Err(ConnectError::Reconnect(reason))
            }
            Err(err) => Err(err),
        }
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenAnswer, ConnectError> {
        let url = format!("{}/oauth/token", self.heroku.id_url);
        let response = self
            .client
            .post(&url)
            .form(form)
            .send()
            .await
            .map_err(|err| ConnectError::Identity(format!("POST {url}: {err}")))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            // Heroku's error body names the problem; it never echoes the secrets we sent.
            let id = body["id"].as_str().unwrap_or("unknown");
            let message = body["message"].as_str().unwrap_or("no message");
            return Err(ConnectError::Identity(format!("{status} {id}: {message}")));
        }
        serde_json::from_value(body).map_err(|err| {
            ConnectError::Identity(format!("the token answer is not what Heroku sends: {err}"))
        })
    }

    /// Revokes our authorization: finds it among the account's authorizations by our client
    /// id and deletes it. Best effort: the tokens are erased either way.
    async fn revoke(&self, credentials: &Credentials) -> bool {
        let Some(client_id) = self.heroku.client_id.as_deref() else {
            return false;
        };
        let api = &self.heroku.api_url;
        let list = self
            .client
            .get(format!("{api}/oauth/authorizations"))
            .header("Accept", "application/vnd.heroku+json; version=3")
            .bearer_auth(&credentials.access_token)
            .send()
            .await;
        let Ok(list) = list else { return false };
        let authorizations: Vec<serde_json::Value> = list.json().await.unwrap_or_default();
        let mut revoked = false;
        for authorization in authorizations {
            let ours = authorization["client"]["id"].as_str() == Some(client_id);
            let Some(id) = authorization["id"].as_str().filter(|_| ours) else {
                continue;
            };
            let deleted = self
                .client
                .delete(format!("{api}/oauth/authorizations/{id}"))
                .header("Accept", "application/vnd.heroku+json; version=3")
                .bearer_auth(&credentials.access_token)
                .send()
                .await;
            revoked |= deleted.is_ok_and(|response| response.status().is_success());
        }
        revoked
    }

    pub fn existing(&self, integration: &str) -> Result<model::Integration, ConnectError> {
        self.database().integration(integration)?.ok_or_else(|| {
            ConnectError::NotFound(format!(
                "no integration named {:?}",
                model::shorten(integration)
            ))
        })
    }

    pub fn context(&self, integration: &str) -> Result<Context, ConnectError> {
        let found = self.existing(integration)?;
        Ok(Context {
            webhook_url: self.admin.webhook_url(&found.name),
            api_url: self.api_url().to_string(),
            integration: found.name,
            apps: found.apps,
        })
    }

    fn credentials(&self, integration: &str) -> Result<Credentials, ConnectError> {
        let sealed = self.database().credentials(integration)?.ok_or_else(|| {
            match self.existing(integration).map(|i| i.connection) {
                Ok(Connection::Disconnected(reason)) => ConnectError::Reconnect(reason),
                _ => ConnectError::NotConnected(integration.to_string()),
            }
        })?;
        let plain = self
            .vault
            .unseal(integration, &sealed)
            .map_err(|err| ConnectError::Reconnect(format!("{err}: reconnect the integration")))?;
        serde_json::from_slice(&plain).map_err(|_| {
            ConnectError::Reconnect("stored credentials are unreadable: reconnect".into())
        })
    }

    fn store(
        &self,
        integration: &str,
        credentials: &Credentials,
        connect: bool,
    ) -> Result<(), ConnectError> {
        let plain = serde_json::to_vec(credentials).expect("credentials serialize");
        let sealed = self.vault.seal(integration, &plain);
        if connect {
            self.database()
                .connect(integration, &sealed, &model::now())?;
        } else {
            self.database()
                .update_credentials(integration, &sealed, &model::now())?;
        }
        Ok(())
    }
}

fn app_webhook(status: AppStatus) -> AppWebhook {
    AppWebhook {
        app: status.app,
        webhook_id: status.webhook_id,
        error: status.error.map(|error| match error {
            AppError::Api(error) => format!(
                "Heroku answered {} {}: {}{}",
                error.status,
                error.id,
                error.message,
                error
                    .request_id
                    .map(|id| format!(" (request {id})"))
                    .unwrap_or_default()
            ),
            AppError::Transport(message) => message,
        }),
        updated_at: model::now(),
    }
}

fn hash(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
