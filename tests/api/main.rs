//! Router-level tests against the real local services. Each test spawns its own isolated app.

mod agents;
mod api_keys;
mod auth;
mod conventions;
mod credential_binding;
mod egress;
mod engine_tools;
mod health;
mod lambda_events;
mod manifests;
mod members;
mod project_settings;
mod projects;
mod run_governance;
mod run_loops;
mod run_prompt;
mod run_recovery;
mod runs;
mod security;
mod sessions;
mod store_races;
mod template;
mod throttle;
mod tools;
mod workflows;
