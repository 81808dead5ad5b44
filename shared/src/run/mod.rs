//! The run domain: what a run and its steps are, where they may go, and how.
//!
//! - [`status`]: run and step statuses, the legal moves between them ([`RunStatus::can_become`]),
//!   and what started a run ([`Trigger`]);
//! - [`record`]: the run, step, log-line and idempotency records;
//! - [`steps`]: the order steps execute in, their record keys, the counts of a run's step
//!   records by status and the summary built from them;
//! - [`usage`]: the tokens and cost a step or run spent;
//! - [`moves`]: every move of a run with the log line that tells it, built here and applied by
//!   [`crate::store::Store::move_run`] for both the API and the worker.
//!
//! The step claim protocol (claim, retake, finish) is described with the engine
//! ([`crate::engine::run`]) and stored by [`crate::store::runs`].

pub mod moves;
pub mod record;
pub mod status;
pub mod steps;
pub mod usage;

pub use moves::{elapsed_ms, Move, RunChange, MAX_TURNS};
pub use record::{
    Approval, IdempotencyRecord, LogLevel, LogLine, Run, StepRecord, IDEMPOTENCY_TTL,
    MAX_LOG_MESSAGE_BYTES,
};
pub use status::{RunStatus, StepStatus, Trigger};
pub use steps::{execution_order, is_iteration_sk, step_sk, StepCounts, StepsSummary};
pub use usage::Usage;
