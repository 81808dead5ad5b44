//! The run engine: the worker that consumes the run queue ([`worker`]), the slice loop that
//! claims and records a run's steps ([`run`]) under the invocation's deadline ([`budget`]),
//! one executor per step type (`steps`), the run's Step Functions execution ([`lifecycle`]),
//! and the clients the executors use: tools, webhooks, LLMs and token prices.

pub mod budget;
pub mod cost;
pub mod lifecycle;
pub mod llm;
pub mod run;
mod steps;
pub mod tool;
pub mod webhook;
pub mod worker;
