//! `pulse-host`: loads integration plugins (WASI 0.2 components) with wasmtime and gives
//! them what they may not do themselves: storage and logging now, HTTP, Slack and the
//! incident timeline later. It serves the webhook endpoint, the management API and the CLI.
//!
//! Embedders start a [`Server`] with a [`ServeConfig`]; the [`sandbox`] module alone runs
//! plugins for hosts with their own HTTP stack.

pub mod admin;
pub mod cli;
pub mod connection;
pub mod data_dir;
pub mod database;
pub mod model;
#[cfg(feature = "native-handler")]
pub mod native;
mod oauth;
mod run_api;
pub mod runs;
pub mod sandbox;
pub mod server;
pub mod slack;
pub mod vault;
mod webhook;

pub use connection::HerokuConfig;
pub use server::{DeliveryHandler, HEROKU_PLUGIN, Host, ServeConfig, Server, StartError, Timeouts};
