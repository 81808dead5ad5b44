//! Step executors of the run engine: calling tools, signing webhooks, talking to LLMs,
//! pricing tokens. The orchestration (runs, workers, Step Functions) builds on these.

pub mod cost;
pub mod lifecycle;
pub mod llm;
pub mod run;
pub mod tool;
pub mod webhook;
pub mod worker;
