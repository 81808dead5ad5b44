//! Spark-Ops control plane library.
//!
//! Every Lambda function and the local dev server are thin shells around this crate:
//! the domain types, the DynamoDB store, authentication and authorisation, and one
//! axum router per API resource live here, so every deployment shape runs the same code.

pub mod agent_health;
pub mod api;
pub mod auth;
pub mod backoff;
pub mod bootstrap;
pub mod clients;
pub mod clock;
pub mod config;
pub mod domain;
pub mod engine;
pub mod error;
pub mod events;
pub mod governance;
pub mod health;
pub mod manifest;
pub mod outbound;
pub mod payload;
pub mod run;
pub mod schedule;
pub mod scheduler;
pub mod state;
pub mod store;
pub mod tool;
pub mod triggers;
pub mod usecase;
pub mod validate;
pub mod workflow;

#[cfg(test)]
mod properties;

pub use config::Config;
pub use error::ApiError;
pub use state::AppState;
