//! Use cases: what the product does, as plain async functions over the state that take typed
//! input and a principal and return domain records or a typed error. HTTP handlers, and the
//! schedules, webhooks and events that start runs, call these; they never call each other.

pub mod runs;
