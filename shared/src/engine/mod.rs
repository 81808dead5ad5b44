//! Step executors of the run engine: calling tools, signing webhooks, talking to LLMs,
//! pricing tokens. The orchestration (runs, workers, Step Functions) builds on these.

pub mod cost;
pub mod llm;
pub mod tool;
pub mod webhook;
