//! The run engine: the worker that consumes the run queue ([`worker`]), the slice loop that
//! claims and records a run's steps ([`run`]) under the invocation's deadline ([`budget`]),
//! one executor per step type (`steps`), the run's Step Functions execution ([`lifecycle`]),
//! the clients the executors use (tools, webhooks, LLMs and token prices), and the repairs:
//! the [`sweeper`] of stuck runs, a deleted project's [`teardown`] and the dead-letter
//! [`redrive`].

pub mod budget;
pub mod cost;
pub mod lifecycle;
pub mod llm;
mod outputs;
pub mod redrive;
pub mod run;
mod steps;
pub mod sweeper;
pub mod teardown;
pub mod tool;
pub mod webhook;
pub mod worker;
