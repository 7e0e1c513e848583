//! The `pulse-host` command line: `serve`, and management commands that work on the data
//! directory directly, so a person needs neither curl nor a running server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::admin::{Admin, PulsePage, PulseQuery};
use crate::connection::HerokuConfig;
use crate::data_dir::{DataDir, TokenSource};
use crate::database::Database;
use crate::model::{AppWebhook, Connection};
use crate::runs::RunRequest;
use crate::server::{Host, ServeConfig, Server};
use crate::slack::SlackConfig;

/// Heroku builds and releases as pulses next to your incidents.
#[derive(Debug, Parser)]
#[command(name = "pulse-host", version)]
pub struct Cli {
    /// Where the database, the admin token and compiled plugins live.
    #[arg(
        long,
        env = "PULSE_DATA_DIR",
        default_value = "./pulse-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// The address `serve` listens on.
    #[arg(
        long,
        env = "PULSE_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// The base URL Heroku reaches this host at (webhook URLs start with it).
    /// Defaults to http://<listen>.
    #[arg(long, env = "PULSE_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    #[command(flatten)]
    pub heroku: HerokuArgs,

    /// The key that seals Heroku tokens at rest: 32 bytes, base64. Generated into the data
    /// directory (mode 0600) when unset.
    #[arg(
        long,
        env = "PULSE_ENCRYPTION_KEY",
        hide_env_values = true,
        global = true
    )]
    pub encryption_key: Option<String>,

    #[command(flatten)]
    pub slack: SlackArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Where Slack is and the bot token that shares run output.
#[derive(Debug, Args)]
pub struct SlackArgs {
    /// Slack's Web API.
    #[arg(
        long = "slack-api-url",
        env = "PULSE_SLACK_API_URL",
        default_value = "https://slack.com/api",
        global = true
    )]
    pub slack_api_url: String,
    /// The Slack bot token (scopes files:write and chat:write) that shares run output.
    #[arg(
        long = "slack-token",
        env = "PULSE_SLACK_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub slack_token: Option<String>,
}

impl SlackArgs {
    fn config(&self) -> SlackConfig {
        SlackConfig {
            token: self.slack_token.clone().filter(|token| !token.is_empty()),
            api_url: self.slack_api_url.trim_end_matches('/').to_string(),
        }
    }
}

/// Where Heroku is and the OAuth client registered with it.
#[derive(Debug, Args)]
pub struct HerokuArgs {
    /// Heroku's Platform API.
    #[arg(
        long = "heroku-api-url",
        env = "PULSE_HEROKU_API_URL",
        default_value = "https://api.heroku.com",
        global = true
    )]
    pub api_url: String,
    /// Heroku's identity service, where OAuth happens.
    #[arg(
        long = "heroku-id-url",
        env = "PULSE_HEROKU_ID_URL",
        default_value = "https://id.heroku.com",
        global = true
    )]
    pub id_url: String,
    /// The OAuth client's id (`heroku clients:create`).
    #[arg(
        long = "heroku-client-id",
        env = "PULSE_HEROKU_CLIENT_ID",
        global = true
    )]
    pub client_id: Option<String>,
    /// The OAuth client's secret.
    #[arg(
        long = "heroku-client-secret",
        env = "PULSE_HEROKU_CLIENT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub client_secret: Option<String>,
}

impl HerokuArgs {
    fn config(&self) -> HerokuConfig {
        HerokuConfig {
            api_url: self.api_url.trim_end_matches('/').to_string(),
            id_url: self.id_url.trim_end_matches('/').to_string(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive webhook deliveries and serve the management API.
    Serve(ServeArgs),
    /// Create integrations and set the apps they monitor.
    #[command(subcommand)]
    Integration(IntegrationCommand),
    /// Name services and link them to Heroku apps.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// List pulses, newest first.
    Pulses(PulsesArgs),
    /// Run a command on a fresh one-off dyno of a monitored app, printing its output as it
    /// arrives. Exits with the command's exit status (124 when it timed out and was stopped).
    RunCommand(RunCommandArgs),
}

#[derive(Debug, Args)]
pub struct RunCommandArgs {
    /// The integration whose Heroku account runs the command.
    pub integration: String,
    /// The command: a Liquid template rendered with the incident context. Values it
    /// interpolates are shell-quoted (`| raw` opts out); the context is also in the dyno's
    /// environment as INCIDENT_ID, INCIDENT_TITLE, ...
    #[arg(long)]
    pub command: String,
    /// The app to run on: one of the integration's monitored apps.
    #[arg(long = "app")]
    pub app_name: String,
    /// standard-1X (the default) or standard-2X.
    #[arg(long)]
    pub size: Option<String>,
    /// Stop the dyno after this many seconds (default and most: 1800).
    #[arg(long)]
    pub timeout_seconds: Option<i64>,
    /// Record the run on the incident's timeline.
    #[arg(long)]
    pub record_timeline: bool,
    /// A Slack channel id to share the output in; repeat for more.
    #[arg(long = "slack-channel")]
    pub slack_channels: Vec<String>,
    /// The incident context as JSON: `{"incident": {"id": "...", "title": "...", ...}}`.
    #[arg(long, conflicts_with = "context_file")]
    pub context: Option<String>,
    /// A file holding the incident context as JSON.
    #[arg(long)]
    pub context_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Load this component instead of the built-in Heroku plugin.
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// The token the management API requires; generated into the data directory if unset.
    #[arg(long, env = "PULSE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Run deliveries with the Heroku core compiled into the host, without the sandbox (this
    /// build has the `native-handler` feature, for benchmarks).
    #[cfg(feature = "native-handler")]
    #[arg(long)]
    pub native_handler: bool,
}

#[derive(Debug, Subcommand)]
pub enum IntegrationCommand {
    /// Create an integration, or replace the apps it monitors. Prints the webhook URL, and on
    /// creation the webhook secret, which is not shown again. When the integration is
    /// connected to Heroku, its webhooks are made to match the list.
    Set {
        name: String,
        /// Heroku app names or ids; none means the integration ignores every event.
        apps: Vec<String>,
    },
    /// Show an integration (without its secret).
    Show { name: String },
    /// List integrations.
    List,
    /// Print a link that connects the integration to a Heroku account when opened in a
    /// browser, once, within five minutes. `serve` must be running at the public URL.
    ConnectLink { name: String },
    /// Remove the integration's webhooks from Heroku, revoke its authorization and erase its
    /// tokens. Pulses stay; deliveries are refused until it is connected again.
    Disconnect { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create or update a service.
    Set {
        name: String,
        /// The Heroku app whose pulses belong to this service (exact, case-sensitive).
        #[arg(long)]
        heroku_app: String,
    },
    /// List services.
    List,
    /// Delete a service; its pulses stay.
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct PulsesArgs {
    /// Only pulses linked to this service.
    #[arg(long)]
    pub service: Option<String>,
    /// How many to show.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Continue from the cursor a previous page printed.
    #[arg(long)]
    pub cursor: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The `pulse-host` program: logs to stderr as `PULSE_LOG` says (`info` by default), parses
/// the command line and runs it. A binary that embeds the host calls this from its `main`.
#[tokio::main]
pub async fn main() -> ExitCode {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;

    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PULSE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let cli = Cli::parse();
    let mut out = std::io::stdout();
    match run(cli, &mut out).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command, writing what a person should see to `out`; returns the process's exit
/// code.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> anyhow::Result<ExitCode> {
    let public_url = cli
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", cli.listen));
    match cli.command {
        Command::Serve(args) => {
            let mut config = ServeConfig::new(cli.listen, cli.data_dir.clone());
            config.plugin = args.plugin;
            config.public_url = cli.public_url;
            config.admin_token = args.admin_token;
            config.heroku = cli.heroku.config();
            config.encryption_key = cli.encryption_key;
            config.slack = cli.slack.config();
            #[cfg(feature = "native-handler")]
            if args.native_handler {
                config.handler = crate::server::DeliveryHandler::Native;
            }
            serve(config, out).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Integration(command) => {
            let mut config = ServeConfig::new(cli.listen, cli.data_dir.clone());
            config.heroku = cli.heroku.config();
            config.encryption_key = cli.encryption_key;
            integration(&config, &public_url, command, out)
                .await
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Service(command) => {
            service(&admin(&cli.data_dir, &public_url)?, command, out).map(|()| ExitCode::SUCCESS)
        }
        Command::Pulses(args) => {
            pulses(&admin(&cli.data_dir, &public_url)?, args, out).map(|()| ExitCode::SUCCESS)
        }
        Command::RunCommand(args) => {
            let mut config = ServeConfig::new(cli.listen, cli.data_dir.clone());
            config.heroku = cli.heroku.config();
            config.encryption_key = cli.encryption_key;
            config.slack = cli.slack.config();
            run_command(&config, &public_url, args, out).await
        }
    }
}

/// Runs the command in this process, printing its output as the dyno writes it and a summary
/// on stderr.
async fn run_command(
    config: &ServeConfig,
    public_url: &str,
    args: RunCommandArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<ExitCode> {
    let context = match (&args.context, &args.context_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the context file {}", path.display()))?,
        (None, None) => anyhow::bail!(
            "give the incident context with --context '{{\"incident\": {{\"id\": ...}}}}' \
             or --context-file"
        ),
    };
    let context: serde_json::Value =
        serde_json::from_str(&context).context("the incident context is not JSON")?;

    let mut params = serde_json::Map::new();
    params.insert("command".into(), args.command.into());
    params.insert("app_name".into(), args.app_name.into());
    if let Some(size) = args.size {
        params.insert("size".into(), size.into());
    }
    if let Some(timeout) = args.timeout_seconds {
        params.insert("timeout_seconds".into(), timeout.into());
    }
    params.insert("record_timeline".into(), args.record_timeline.into());
    params.insert("slack_channels".into(), args.slack_channels.into());

    let host = host(config, public_url)?;
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let mut run = host
        .runner
        .start(RunRequest {
            integration: args.integration,
            action: "run-command".into(),
            params,
            context,
            actor: format!("cli:{user}"),
        })
        .await?;
    let mut announced = false;
    while let Some(chunk) = run.output.next().await? {
        if !announced {
            announced = true;
            announce(&run.progress.borrow())?;
        }
        out.write_all(&chunk)?;
        out.flush()?;
    }
    let record = run.outcome.await.context("the run's task failed")??;
    if !announced {
        announce(&run.progress.borrow())?;
    }

    let result = record.result.unwrap_or_default();
    let shown = |key: &str| result[key].as_str().unwrap_or_default().to_string();
    let code = if result["timed_out"] == true {
        eprintln!(
            "run {}: {} timed out and was stopped after {} ms",
            record.id,
            shown("dyno"),
            result["duration_ms"]
        );
        ExitCode::from(124)
    } else {
        let status = result["exit_status"].as_i64().unwrap_or(1);
        eprintln!(
            "run {}: {} exited with status {status} after {} ms ({} bytes of output)",
            record.id,
            shown("dyno"),
            result["duration_ms"],
            result["output_bytes"]
        );
        ExitCode::from(u8::try_from(status).unwrap_or(1))
    };
    for share in result["shares"].as_array().into_iter().flatten() {
        match share["error"].as_str() {
            None => eprintln!("  shared in {}", share["channel"].as_str().unwrap_or("?")),
            Some(error) => eprintln!(
                "  not shared in {}: {}",
                share["channel"].as_str().unwrap_or("?"),
                printable(error)
            ),
        }
    }
    if let Some(error) = result["timeline_error"].as_str() {
        eprintln!("  not recorded on the timeline: {}", printable(error));
    }
    Ok(code)
}

/// Says on stderr which dyno runs what, so stdout stays the command's output alone.
fn announce(progress: &crate::sandbox::Progress) -> std::io::Result<()> {
    if let Some((dyno, command)) = &progress.started {
        let mut err = std::io::stderr();
        writeln!(err, "running on {dyno}: {}", printable(command))?;
    }
    Ok(())
}

/// Opens the data directory for a management command. A missing one is created, so an
/// admin can set things up before the first `serve`; the path is printed to stderr then, so
/// a mistyped `--data-dir` does not go unnoticed.
fn admin(data_dir: &std::path::Path, public_url: &str) -> anyhow::Result<Admin> {
    if !data_dir.exists() {
        eprintln!(
            "note: creating a new data directory at {}",
            data_dir.display()
        );
    }
    let dir = DataDir::open(data_dir)
        .with_context(|| format!("cannot use the data directory {}", data_dir.display()))?;
    Ok(Admin::new(Database::open(&dir.database())?, public_url))
}

/// Opens the whole host (database, vault, plugin) for a command that talks to Heroku.
fn host(config: &ServeConfig, public_url: &str) -> anyhow::Result<Host> {
    let dir = DataDir::open(&config.data_dir).with_context(|| {
        format!(
            "cannot use the data directory {}",
            config.data_dir.display()
        )
    })?;
    Ok(Host::open(config, &dir, public_url)?)
}

async fn serve(config: ServeConfig, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let server = Server::start(config).await?;
    if *server.token_source() == TokenSource::Generated {
        writeln!(
            out,
            "Generated an admin token for the API (kept in {}/admin-token):\n\n    {}\n",
            data_dir.display(),
            server.admin_token()
        )?;
    }
    writeln!(out, "Listening on http://{}", server.addr())?;
    out.flush()?;
    server.run_until(shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}

async fn integration(
    config: &ServeConfig,
    public_url: &str,
    command: IntegrationCommand,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let admin = admin(&config.data_dir, public_url)?;
    match command {
        IntegrationCommand::Set { name, apps } => {
            let (view, created) = admin.put_integration(&name, &apps)?;
            let verb = if created { "Created" } else { "Updated" };
            writeln!(out, "{verb} integration {}", view.name)?;
            writeln!(out, "  apps:        {}", shown_apps(&view.apps))?;
            writeln!(out, "  webhook URL: {}", view.webhook_url)?;
            if view.connection == Connection::Connected {
                let host = host(config, public_url)?;
                let webhooks =
                    host.connector.apply(&view.name).await.with_context(|| {
                        format!("saved the apps, but making Heroku match failed")
                    })?;
                write_webhooks(&webhooks, out)?;
            } else if let Some(secret) = &view.webhook_secret {
                writeln!(out, "  secret:      {secret}")?;
                writeln!(
                    out,
                    "\nThe secret is shown only now. Add the webhook to each app with:"
                )?;
                let placeholder = ["<app>".to_string()];
                let apps = if view.apps.is_empty() {
                    &placeholder[..]
                } else {
                    &view.apps[..]
                };
                for app in apps {
                    writeln!(
                        out,
                        "  heroku webhooks:add -i api:build,api:release -l sync -u {} -s {secret} -a {app}",
                        view.webhook_url
                    )?;
                }
            }
        }
        IntegrationCommand::Show { name } => {
            let view = admin.integration(&name)?;
            writeln!(out, "{}", view.name)?;
            writeln!(out, "  apps:        {}", shown_apps(&view.apps))?;
            writeln!(out, "  webhook URL: {}", view.webhook_url)?;
            writeln!(out, "  created:     {}", view.created_at)?;
            writeln!(out, "  updated:     {}", view.updated_at)?;
            writeln!(out, "  Heroku:      {}", shown_connection(&view.connection))?;
            write_webhooks(&view.webhooks, out)?;
        }
        IntegrationCommand::ConnectLink { name } => {
            let host = host(config, public_url)?;
            let (url, expires_at) = host.connector.connect_link(&name)?;
            writeln!(
                out,
                "Open this link in a browser to connect {name} to Heroku (once, until {expires_at}):\n\n    {url}\n"
            )?;
            writeln!(
                out,
                "Heroku sends the browser back to {public_url}/oauth/heroku/callback: that must be the redirect URI of the OAuth client, and `pulse-host serve` must be running there."
            )?;
        }
        IntegrationCommand::Disconnect { name } => {
            let host = host(config, public_url)?;
            let report = host.connector.disconnect(&name).await?;
            writeln!(
                out,
                "Disconnected {name} from Heroku; its tokens are erased."
            )?;
            if !report.revoked {
                writeln!(
                    out,
                    "  The authorization could not be revoked on Heroku: revoke it under Account settings, Applications."
                )?;
            }
            for webhook in &report.failed {
                writeln!(
                    out,
                    "  {}: webhook not removed: {}",
                    webhook.app,
                    printable(webhook.error.as_deref().unwrap_or("unknown error"))
                )?;
            }
        }
        IntegrationCommand::List => {
            let list = admin.integrations()?;
            if list.is_empty() {
                writeln!(
                    out,
                    "No integrations yet: create one with `pulse-host integration set`."
                )?;
            }
            for view in list {
                writeln!(out, "{}  {}", view.name, shown_apps(&view.apps))?;
            }
        }
    }
    Ok(())
}

fn shown_connection(connection: &Connection) -> String {
    match connection {
        Connection::Never => {
            "not connected: `pulse-host integration connect-link` connects it".into()
        }
        Connection::Connected => "connected".into(),
        Connection::Disconnected(reason) => format!("disconnected: {}", printable(reason)),
    }
}

fn write_webhooks(webhooks: &[AppWebhook], out: &mut (dyn Write + Send)) -> std::io::Result<()> {
    for webhook in webhooks {
        match &webhook.error {
            None => writeln!(out, "  {}: webhook in place", webhook.app)?,
            Some(error) => writeln!(out, "  {}: {}", webhook.app, printable(error))?,
        }
    }
    Ok(())
}

fn shown_apps(apps: &[String]) -> String {
    if apps.is_empty() {
        "(none: every event is ignored)".into()
    } else {
        apps.join(", ")
    }
}

fn service(
    admin: &Admin,
    command: ServiceCommand,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Set { name, heroku_app } => {
            let (service, created) = admin.put_service(&name, &heroku_app)?;
            let verb = if created { "Created" } else { "Updated" };
            writeln!(
                out,
                "{verb} service {} (Heroku app {})",
                service.name, service.heroku_app_name
            )?;
        }
        ServiceCommand::List => {
            let services = admin.services()?;
            if services.is_empty() {
                writeln!(
                    out,
                    "No services yet: add one with `pulse-host service set`."
                )?;
                return Ok(());
            }
            let width = services
                .iter()
                .map(|s| s.name.len())
                .max()
                .unwrap_or(0)
                .max(7);
            writeln!(out, "{:<width$}  HEROKU APP", "SERVICE")?;
            for service in services {
                writeln!(out, "{:<width$}  {}", service.name, service.heroku_app_name)?;
            }
        }
        ServiceCommand::Delete { name } => {
            admin.delete_service(&name)?;
            writeln!(out, "Deleted service {name}")?;
        }
    }
    Ok(())
}

fn pulses(admin: &Admin, args: PulsesArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let query = PulseQuery {
        service: args.service,
        limit: Some(args.limit),
        cursor: args.cursor,
    };
    let page = admin.pulses(&query)?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &page)?;
        writeln!(out)?;
    } else {
        write_table(&page, out)?;
    }
    Ok(())
}

fn write_table(page: &PulsePage, out: &mut (dyn Write + Send)) -> std::io::Result<()> {
    if page.pulses.is_empty() {
        return writeln!(out, "No pulses yet.");
    }
    writeln!(
        out,
        "{:>6}  {:<20}  {:<24}  SUMMARY",
        "ID", "STARTED", "SERVICES"
    )?;
    for pulse in &page.pulses {
        let started: String = pulse.started_at.chars().take(19).collect::<String>() + "Z";
        let services = if pulse.services.is_empty() {
            "-".into()
        } else {
            pulse.services.join(",")
        };
        writeln!(
            out,
            "{:>6}  {:<20}  {:<24}  {}",
            pulse.id,
            started,
            printable(&services),
            printable(&pulse.summary)
        )?;
    }
    if let Some(cursor) = &page.next_cursor {
        writeln!(out, "\nMore: pulse-host pulses --cursor {cursor}")?;
    }
    Ok(())
}

/// Text safe to print to a terminal: control characters (escape sequences, carriage
/// returns) from events are shown escaped instead of acted on.
fn printable(text: &str) -> String {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_control_characters_are_shown_escaped() {
        assert_eq!(
            printable("ok\u{1b}]0;PWNED\u{7}\r\nfake"),
            "ok\\u{1b}]0;PWNED\\u{7}\\r\\nfake"
        );
        assert_eq!(printable("Deploy 69eec518 ✓"), "Deploy 69eec518 ✓");
    }
}
