//! Spark-Ops' EventBridge bus (`{prefix}-bus`): the events it publishes about runs
//! ([`publish_run`]), the one way anything is put on the bus ([`put`], also used for tenants'
//! events by [`crate::usecase::events`]), the rules that match events for event schedules
//! ([`rules`]) and how long a chain of event-started runs may grow ([`chain`]).
//!
//! Every event on the bus carries its project in `detail.project_id`, stamped by the server;
//! rules add a condition on it, so a tenant's rule sees its own project's events only.

pub mod chain;
mod publish;
pub mod rules;

pub use publish::{
    detail_type_of, publish_run, put, run_event, BusEvent, RunEventDetail, PUBLISH_ATTEMPTS,
    PUBLISH_BACKOFF,
};

/// `source` of the events Spark-Ops publishes itself; tenants' sources may not start with it.
pub const SOURCE: &str = "spark-ops";
