//! The browser side of connecting to Heroku: the connect redirect and the callback Heroku
//! sends the browser back to.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use crate::connection::ConnectError;
use crate::server::{ApiError, ApiPath, ApiQuery, AppState};

#[derive(Deserialize)]
pub struct ConnectQuery {
    link: Option<String>,
}

/// `GET /integrations/{name}/heroku/connect`: with the admin token or a one-time connect
/// link, redirects to Heroku's consent page.
pub async fn connect(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<ConnectQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !state.is_admin(&headers) {
        let link = query.link.ok_or(ConnectError::BadState)?;
        let connector = state.host.connector.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || connector.redeem_link(&name, &link))
            .await
            .map_err(|_| ConnectError::BadState)??;
    }
    let connector = state.host.connector.clone();
    let url = tokio::task::spawn_blocking(move || connector.authorize_url(&name))
        .await
        .map_err(|_| ConnectError::BadState)??;
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, url)]).into_response())
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /oauth/heroku/callback`: the one redirect URI for every integration.
pub async fn callback(
    State(state): State<AppState>,
    query: Result<Query<CallbackQuery>, QueryRejection>,
) -> Response {
    // The browser gets a page, not JSON, whatever went wrong.
    let Ok(Query(query)) = query else {
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            "the callback's query string is malformed",
        );
    };
    if let Some(error) = query.error {
        let detail = query.error_description.unwrap_or_default();
        return page(
            StatusCode::BAD_REQUEST,
            "Heroku did not authorize the integration",
            &format!("{error}: {detail}"),
        );
    }
    let (Some(code), Some(oauth_state)) = (query.code, query.state) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            "the callback is missing its code or state",
        );
    };
    match state.host.connector.complete(&code, &oauth_state).await {
        Ok((integration, Ok(webhooks))) => {
            let mut lines = Vec::new();
            for webhook in &webhooks {
                lines.push(match &webhook.error {
                    None => format!("{}: webhook in place", webhook.app),
                    Some(error) => format!("{}: {error}", webhook.app),
                });
            }
            if lines.is_empty() {
                lines.push("No apps are monitored yet: set the integration's apps.".into());
            }
            page(
                StatusCode::OK,
                &format!("Integration {integration} is connected to Heroku"),
                &lines.join("\n"),
            )
        }
        Ok((integration, Err(err))) => page(
            StatusCode::OK,
            &format!("Integration {integration} is connected to Heroku"),
            &format!("but applying its apps failed: {err}"),
        ),
        Err(err) => {
            let status = match err {
                ConnectError::BadState | ConnectError::Invalid(_) => StatusCode::BAD_REQUEST,
                ConnectError::Identity(_) => StatusCode::BAD_GATEWAY,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            if status.is_server_error() {
                tracing::error!(error = %err, "completing an OAuth connection failed");
            }
            page(status, "Not connected", &err.to_string())
        }
    }
}

/// A minimal HTML page for the person in the browser.
fn page(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>{title}</title>\
         <h1>{title}</h1><pre>{detail}</pre>",
        title = escape(title),
        detail = escape(detail)
    );
    (status, Html(body)).into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
