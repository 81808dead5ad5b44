//! The typed workflow definition.
//!
//! [`parse`](super::parse) turns the JSON a client sends into a [`Definition`] or reports every problem at
//! once, each at its exact path relative to the definition, e.g. `steps[2].config.then[0]`.
//! A `Definition` therefore always satisfies the rules listed in the [module docs](super).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::condition::Expression;
use super::template::Template;

/// Most steps a workflow may have.
pub const MAX_STEPS: usize = 200;
/// Most iterations a loop may be bounded to.
pub const MAX_LOOP_ITERATIONS: u32 = 1000;
/// Most tool-calling iterations of a prompt step.
pub const MAX_PROMPT_ITERATIONS: u32 = 50;
/// Most tools one prompt step may offer.
pub const MAX_PROMPT_TOOLS: usize = 50;
/// Most distinct tools one workflow may use.
pub const MAX_DISTINCT_TOOLS: usize = 100;
/// Most headers of a webhook step.
pub const MAX_WEBHOOK_HEADERS: usize = 32;
/// Largest accepted definition, serialised.
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;
/// Longest webhook URL.
pub const MAX_URL_BYTES: usize = 2048;

/// A step id: 1–64 of `[a-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StepId(String);

impl StepId {
    /// Parses a step id.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let valid = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err("must be 1-64 characters of a-z, 0-9, `_` and `-`".to_owned())
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StepId {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        Self::parse(&raw)
    }
}

impl From<StepId> for String {
    fn from(id: StepId) -> Self {
        id.0
    }
}

/// A JSON object in which every string, at any depth, is a [`Template`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Map<String, Value>", into = "Map<String, Value>")]
pub struct TemplateObject(pub(super) Map<String, Value>);

impl TemplateObject {
    /// The object, strings still unrendered.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

impl TryFrom<Map<String, Value>> for TemplateObject {
    type Error = String;

    fn try_from(map: Map<String, Value>) -> Result<Self, String> {
        fn check(value: &Value) -> Result<(), String> {
            match value {
                Value::String(s) => Template::parse(s).map(drop),
                Value::Array(items) => items.iter().try_for_each(check),
                Value::Object(map) => map.values().try_for_each(check),
                _ => Ok(()),
            }
        }
        map.values().try_for_each(check)?;
        Ok(Self(map))
    }
}

impl From<TemplateObject> for Map<String, Value> {
    fn from(object: TemplateObject) -> Self {
        object.0
    }
}

/// An absolute `http` or `https` URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookUrl(String);

impl WebhookUrl {
    /// Parses a URL.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bad = || "must be an absolute http or https URL".to_owned();
        if raw.len() > MAX_URL_BYTES {
            return Err(format!("must be at most {MAX_URL_BYTES} bytes"));
        }
        let uri: http::Uri = raw.parse().map_err(|_| bad())?;
        let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
        let host_ok = uri.host().is_some_and(|h| !h.is_empty());
        if scheme_ok && host_ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(bad())
        }
    }

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WebhookUrl {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        Self::parse(&raw)
    }
}

impl From<WebhookUrl> for String {
    fn from(url: WebhookUrl) -> Self {
        url.0
    }
}

/// A workflow: a DAG of steps. Steps run once everything in their `depends_on` is done.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = WorkflowDefinition)]
pub struct Definition {
    /// The steps, at most 200, in any order.
    pub steps: Vec<Step>,
}

/// One step of a workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = WorkflowStep)]
pub struct Step {
    /// Unique within the workflow: 1-64 of `[a-z0-9_-]`.
    #[schema(value_type = String, pattern = "^[a-z0-9_-]{1,64}$")]
    pub id: StepId,
    /// The steps this one waits for; templates and conditions may read only these and
    /// their own dependencies, transitively.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub depends_on: Vec<StepId>,
    /// What the step does: `type` and its `config`.
    #[serde(flatten)]
    pub kind: StepKind,
}

/// A step's `type` and the `config` that type takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", content = "config", rename_all = "lowercase")]
#[schema(as = WorkflowStepKind)]
pub enum StepKind {
    /// An LLM call with the run's agent, optionally with tools.
    Prompt(PromptConfig),
    /// A call to a registered tool.
    Tool(ToolConfig),
    /// Chooses a branch with a CEL condition.
    Decision(DecisionConfig),
    /// Repeats one step over a list or while a condition holds.
    Loop(LoopConfig),
    /// An outbound HTTP POST, signed.
    Webhook(WebhookConfig),
    /// Pauses until a person resumes the run.
    Human(HumanConfig),
}

impl StepKind {
    /// The `type` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Prompt(_) => "prompt",
            Self::Tool(_) => "tool",
            Self::Decision(_) => "decision",
            Self::Loop(_) => "loop",
            Self::Webhook(_) => "webhook",
            Self::Human(_) => "human",
        }
    }
}

/// The step a loop repeats: any type but `decision` and `loop`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", content = "config", rename_all = "lowercase")]
#[schema(as = WorkflowLoopStep)]
pub enum LoopStep {
    /// An LLM call.
    Prompt(PromptConfig),
    /// A tool call.
    Tool(ToolConfig),
    /// An outbound HTTP POST.
    Webhook(WebhookConfig),
    /// A pause for a person.
    Human(HumanConfig),
}

/// `prompt` step config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = PromptStepConfig)]
pub struct PromptConfig {
    /// The user message, a template, e.g. `Reply to: {{ input.message }}`.
    #[schema(value_type = String)]
    pub prompt: Template,
    /// Tools (ids in the same project) the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Uuid>,
    /// Bound on tool-calling rounds, 1-50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 50)]
    pub max_iterations: Option<u32>,
}

/// `tool` step config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = ToolStepConfig)]
pub struct ToolConfig {
    /// The tool, in the same project.
    pub tool_id: Uuid,
    /// The tool's input; every string in it is a template.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: TemplateObject,
}

/// `decision` step config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = DecisionStepConfig)]
pub struct DecisionConfig {
    /// A CEL condition over `input` and `steps.<id>`, e.g. `steps.lookup.output.tier == 'gold'`.
    #[schema(value_type = String)]
    pub condition: Expression,
    /// Steps run when the condition holds; each must depend on this step.
    #[schema(value_type = Vec<String>)]
    pub then: Vec<StepId>,
    /// Steps run otherwise; each must depend on this step.
    #[serde(default, rename = "else")]
    #[schema(value_type = Vec<String>)]
    pub otherwise: Vec<StepId>,
}

/// What a loop repeats over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = WorkflowLoopIteration)]
pub enum Iteration {
    /// A CEL expression giving a list; the step runs once per element (`{{ item }}`).
    #[schema(value_type = String)]
    Over(Expression),
    /// A CEL condition checked before each round; may read `iteration` (rounds done).
    /// `{{ item }}` is the round number, from 0.
    #[schema(value_type = String)]
    While(Expression),
}

/// `loop` step config: exactly one of `over` and `while`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = LoopStepConfig)]
pub struct LoopConfig {
    /// `over` or `while`.
    #[serde(flatten)]
    pub iteration: Iteration,
    /// Hard bound on rounds, 1-1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_iterations: u32,
    /// The step repeated; its templates may use `{{ item }}`.
    pub step: LoopStep,
}

/// `webhook` step config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = WebhookStepConfig)]
pub struct WebhookConfig {
    /// Where to POST: an absolute http or https URL (no templates).
    #[schema(value_type = String, format = "uri")]
    pub url: WebhookUrl,
    /// The JSON body; every string in it is a template.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub body: TemplateObject,
    /// Extra headers; values are templates. A header whose name looks like a secret
    /// (`*auth*`, `*token*`, `*key*`, …) cannot be written here: see `credentials`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub headers: BTreeMap<String, Template>,
    /// A stored secret sent as one header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<WebhookCredentials>,
}

/// The stored secret a webhook step sends: a project credential (`/api/v1/credentials`)
/// bound to the webhook URL's origin. The version holds only this reference, never the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = WebhookCredentials)]
pub struct WebhookCredentials {
    /// The credential's id.
    pub id: Uuid,
    /// The header it is sent in (default `Authorization`).
    #[serde(default = "default_credentials_header")]
    pub header: String,
    /// A word sent before the value, e.g. `Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

pub(super) fn default_credentials_header() -> String {
    "Authorization".to_owned()
}

/// `human` step config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = HumanStepConfig)]
pub struct HumanConfig {
    /// What the person should do, a template.
    #[schema(value_type = String)]
    pub instructions: Template,
}

impl Definition {
    /// The step with `id`.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id.as_str() == id)
    }

    /// Every tool the workflow uses, each once.
    pub fn tool_ids(&self) -> Vec<Uuid> {
        let mut ids = Vec::new();
        let mut add = |id: &Uuid| {
            if !ids.contains(id) {
                ids.push(*id);
            }
        };
        for step in &self.steps {
            match &step.kind {
                StepKind::Prompt(c)
                | StepKind::Loop(LoopConfig {
                    step: LoopStep::Prompt(c),
                    ..
                }) => c.tools.iter().for_each(&mut add),
                StepKind::Tool(c)
                | StepKind::Loop(LoopConfig {
                    step: LoopStep::Tool(c),
                    ..
                }) => add(&c.tool_id),
                _ => {}
            }
        }
        ids
    }
}

/// Every step config of a raw definition, a loop's inner step's too, before any validation
/// (at most [`MAX_STEPS`] steps).
fn raw_step_configs(raw: &Value) -> impl Iterator<Item = &Value> {
    raw.get("steps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .take(MAX_STEPS)
        .flat_map(|step| {
            let config = step.get("config");
            let inner = config
                .and_then(|c| c.get("step"))
                .and_then(|s| s.get("config"));
            [config, inner].into_iter().flatten()
        })
}

/// The tool ids a raw definition mentions (`tool_id`, `tools[]`, also inside loops), each
/// once and at most [`MAX_DISTINCT_TOOLS`] + 1 of them: what [`parse`] must be told about.
pub fn referenced_tool_ids(raw: &Value) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut add = |value: &Value| {
        if let Some(id) = value.as_str().and_then(|s| Uuid::try_parse(s).ok()) {
            if !ids.contains(&id) && ids.len() <= MAX_DISTINCT_TOOLS {
                ids.push(id);
            }
        }
    };
    for config in raw_step_configs(raw) {
        if let Some(id) = config.get("tool_id") {
            add(id);
        }
        if let Some(tools) = config.get("tools").and_then(Value::as_array) {
            tools.iter().take(MAX_PROMPT_TOOLS).for_each(&mut add);
        }
    }
    ids
}

/// The credential ids a raw definition's webhook steps name (also inside loops), each once:
/// what [`parse_with`] must be told about.
pub fn referenced_credential_ids(raw: &Value) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for config in raw_step_configs(raw) {
        let id = config
            .get("credentials")
            .and_then(|c| c.get("id"))
            .and_then(Value::as_str)
            .and_then(|s| Uuid::try_parse(s).ok());
        if let Some(id) = id.filter(|id| !ids.contains(id)) {
            ids.push(id);
        }
    }
    ids
}
