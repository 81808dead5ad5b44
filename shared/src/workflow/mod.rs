//! Workflow definitions: DAGs of steps, parsed into typed values when saved.
//!
//! The JSON form is `{"steps": [{"id", "type", "depends_on", "config"}, …]}`; see
//! [`Definition`] and the `WorkflowDefinition` OpenAPI schema. [`parse`] accepts a definition
//! only if all of these hold, and otherwise reports every violation at its exact path
//! relative to the definition (`steps[2].config.then[0]`; the API prefixes `definition.`):
//!
//! - at most 200 steps and 256 KiB; no unknown fields at any level;
//! - step ids are unique and match `[a-z0-9_-]{1,64}`;
//! - `type` is one of prompt, tool, decision, loop, webhook, human, with the config that type
//!   requires (each missing or mistyped field is named);
//! - `depends_on` names existing steps, not the step itself, each once, and the
//!   dependencies have no cycle (reported at the `depends_on` entry that closes it);
//! - tool ids (`tool_id`, a prompt's `tools`) are tools of the workflow's project;
//! - a webhook step's `credentials.id` is a credential of the project bound to its URL's
//!   origin, and its `headers` hold no secret-looking or client-owned header;
//! - a decision's `then`/`else` targets exist and list the decision in their `depends_on`;
//! - templates ([`template`]) and CEL expressions ([`condition`]) read only `input`,
//!   upstream steps (transitive dependencies), `item` inside a loop's step, and `iteration`
//!   in a `while`;
//! - a prompt iterates 1-50 times, a loop 1-1000 times; a loop's step is not a decision or
//!   a loop.

mod cel_cost;
mod cel_syntax;
pub mod condition;
pub mod definition;
mod parse;
pub mod scope;
pub mod template;

pub use condition::Expression;
pub use definition::{
    referenced_credential_ids, referenced_tool_ids, DecisionConfig, Definition, HumanConfig,
    Iteration, LoopConfig, LoopStep, PromptConfig, Step, StepId, StepKind, TemplateObject,
    ToolConfig, WebhookConfig, WebhookCredentials, WebhookUrl,
};
pub use parse::{parse, parse_with};
pub use scope::Scope;
pub use template::Template;

use crate::error::FieldError;

/// Moves errors reported relative to a definition under the field that holds it, e.g.
/// `steps[0].id` → `definition.steps[0].id`.
pub fn under(field: &str, errors: Vec<FieldError>) -> Vec<FieldError> {
    errors
        .into_iter()
        .map(|e| FieldError {
            field: match e.field.as_str() {
                "" => field.to_owned(),
                rest if rest.starts_with('[') => format!("{field}{rest}"),
                rest => format!("{field}.{rest}"),
            },
            message: e.message,
        })
        .collect()
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
