//! Use cases: what the API (and later schedules, webhooks and events) can do, as plain async
//! functions over the state. Each takes typed input and the acting principal and returns a
//! domain record or an [`ApiError`](crate::error::ApiError); none knows about HTTP, and no
//! use case calls a handler.

pub mod access;
pub mod agents;
pub mod credentials;
pub mod projects;
pub mod tools;
pub mod workflows;
