//! Use cases: what the product does, as plain async functions over the state. Each takes typed
//! input and the acting principal and returns a domain record or an
//! [`ApiError`](crate::error::ApiError); none knows about HTTP. HTTP handlers, and the
//! schedules, webhooks and events that start runs, call these; no use case calls a handler.

pub mod access;
pub mod agents;
pub mod credentials;
pub mod events;
pub mod hooks;
pub mod projects;
pub mod runs;
pub mod schedules;
pub mod tools;
pub mod workflows;
