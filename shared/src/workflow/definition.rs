//! The typed workflow definition and its parser.
//!
//! [`parse`] turns the JSON a client sends into a [`Definition`] or reports every problem at
//! once, each at its exact path relative to the definition, e.g. `steps[2].config.then[0]`.
//! A `Definition` therefore always satisfies the rules listed in the [module docs](super).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::condition::Expression;
use super::template::{Root, Template};
use crate::error::FieldError;
use crate::outbound;

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
pub struct TemplateObject(Map<String, Value>);

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

fn default_credentials_header() -> String {
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

/// Parses a definition. `project_tools` are the ids of the tools of the workflow's project
/// (at least those [`referenced_tool_ids`] names); any other tool id is an error.
/// On failure, every problem is reported, with paths relative to the definition.
pub fn parse(raw: &Value, project_tools: &HashSet<Uuid>) -> Result<Definition, Vec<FieldError>> {
    parse_with(raw, project_tools, &HashMap::new())
}

/// [`parse`], where webhook steps may also name `project_credentials` (id → the origin each is
/// bound to; at least those [`referenced_credential_ids`] names).
pub fn parse_with(
    raw: &Value,
    project_tools: &HashSet<Uuid>,
    project_credentials: &HashMap<Uuid, String>,
) -> Result<Definition, Vec<FieldError>> {
    let mut p = Parser {
        errors: Vec::new(),
        tools: project_tools,
        credentials: project_credentials,
        tools_used: HashSet::new(),
        reads: Vec::new(),
        targets: Vec::new(),
    };
    let size = serde_json::to_vec(raw)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_DEFINITION_BYTES {
        p.error(
            "",
            format!("must be at most {MAX_DEFINITION_BYTES} bytes of JSON"),
        );
        return Err(p.errors);
    }
    let Some(root) = p.object(raw, "") else {
        return Err(p.errors);
    };
    p.known_fields(root, "", &["steps"]);
    let Some(raw_steps) = p.required(root, "", "steps") else {
        return Err(p.errors);
    };
    let Some(raw_steps) = p.array(raw_steps, "steps") else {
        return Err(p.errors);
    };
    if raw_steps.len() > MAX_STEPS {
        p.error("steps", format!("must have at most {MAX_STEPS} steps"));
        return Err(p.errors);
    }
    let parsed: Vec<Option<Parsed>> = raw_steps
        .iter()
        .enumerate()
        .map(|(i, raw)| p.step(i, raw))
        .collect();
    if p.tools_used.len() > MAX_DISTINCT_TOOLS {
        p.error(
            "steps",
            format!("may use at most {MAX_DISTINCT_TOOLS} distinct tools"),
        );
    }
    p.check_graph(&parsed);
    if !p.errors.is_empty() {
        return Err(p.errors);
    }
    let steps = parsed
        .into_iter()
        .map(|step| {
            step.and_then(|s| {
                Some(Step {
                    id: s.id?,
                    depends_on: s.depends_on.into_iter().map(|(_, id)| id).collect(),
                    kind: s.kind?,
                })
            })
        })
        .collect::<Option<Vec<Step>>>();
    // Every piece parsed when no error was recorded; this is a guard, not a path.
    steps
        .map(|steps| Definition { steps })
        .ok_or_else(|| vec![FieldError::new("steps", "could not be read")])
}

/// A step as far as it parsed.
struct Parsed {
    id: Option<StepId>,
    /// `(index in depends_on, id)`; entries that are not valid ids are already reported.
    depends_on: Vec<(usize, StepId)>,
    kind: Option<StepKind>,
}

/// Where a string is allowed to read from.
#[derive(Clone, Copy)]
struct Scope {
    step: usize,
    /// Inside a loop's step, where `{{ item }}` exists.
    in_loop: bool,
}

struct Parser<'a> {
    errors: Vec<FieldError>,
    tools: &'a HashSet<Uuid>,
    /// The project's credentials a definition may name, with the origin each is bound to.
    credentials: &'a HashMap<Uuid, String>,
    tools_used: HashSet<Uuid>,
    /// `(path, reading step, step read)`, checked once every step is known.
    reads: Vec<(String, usize, StepId)>,
    /// `(path, decision step, target)` of `then`/`else`.
    targets: Vec<(String, usize, StepId)>,
}

fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", Value::from(key)),
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

const STEP_TYPES: &str = "prompt, tool, decision, loop, webhook or human";

impl Parser<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    fn object<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        let object = value.as_object();
        if object.is_none() {
            self.error(path, "must be an object");
        }
        object
    }

    fn array<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Vec<Value>> {
        let array = value.as_array();
        if array.is_none() {
            self.error(path, "must be an array");
        }
        array
    }

    fn known_fields(&mut self, object: &Map<String, Value>, path: &str, known: &[&str]) {
        for key in object.keys() {
            if !known.contains(&key.as_str()) {
                let expected = known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.error(
                    &join(path, key),
                    format!("is not a known field here; expected {expected}"),
                );
            }
        }
    }

    fn required<'v>(
        &mut self,
        object: &'v Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<&'v Value> {
        let value = object.get(key);
        if value.is_none() {
            self.error(&join(path, key), "is required");
        }
        value
    }

    fn string<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v str> {
        let string = value.as_str();
        if string.is_none() {
            self.error(path, "must be a string");
        }
        string
    }

    fn bounded(&mut self, value: &Value, path: &str, max: u32) -> Option<u32> {
        let n = value
            .as_u64()
            .filter(|n| (1..=u64::from(max)).contains(n))
            .and_then(|n| u32::try_from(n).ok());
        if n.is_none() {
            self.error(path, format!("must be a whole number from 1 to {max}"));
        }
        n
    }

    fn step(&mut self, i: usize, raw: &Value) -> Option<Parsed> {
        let path = index("steps", i);
        let object = self.object(raw, &path)?;
        self.known_fields(object, &path, &["id", "type", "depends_on", "config"]);
        let id = self.required(object, &path, "id").and_then(|v| {
            let at = join(&path, "id");
            let raw = self.string(v, &at)?;
            StepId::parse(raw).map_err(|m| self.error(&at, m)).ok()
        });
        let mut depends_on = Vec::new();
        if let Some(raw) = object.get("depends_on") {
            let at = join(&path, "depends_on");
            for (k, dep) in self.array(raw, &at).into_iter().flatten().enumerate() {
                let at = index(&at, k);
                let Some(dep) = self.string(dep, &at) else {
                    continue;
                };
                match StepId::parse(dep) {
                    Ok(dep) => depends_on.push((k, dep)),
                    Err(_) => self.error(&at, format!("there is no step `{dep}`")),
                }
            }
        }
        let type_name = self.required(object, &path, "type").and_then(|v| {
            let at = join(&path, "type");
            let name = self.string(v, &at)?;
            let known = ["prompt", "tool", "decision", "loop", "webhook", "human"].contains(&name);
            if !known {
                self.error(
                    &at,
                    format!("`{name}` is not a step type; expected {STEP_TYPES}"),
                );
            }
            known.then_some(name)
        });
        let config = self.required(object, &path, "config");
        let kind = match (type_name, config) {
            (Some(type_name), Some(config)) => {
                let at = join(&path, "config");
                let scope = Scope {
                    step: i,
                    in_loop: false,
                };
                self.kind(type_name, config, &at, scope)
            }
            _ => None,
        };
        Some(Parsed {
            id,
            depends_on,
            kind,
        })
    }

    fn kind(&mut self, type_name: &str, raw: &Value, path: &str, scope: Scope) -> Option<StepKind> {
        let config = self.object(raw, path)?;
        match type_name {
            "prompt" => self.prompt(config, path, scope).map(StepKind::Prompt),
            "tool" => self.tool(config, path, scope).map(StepKind::Tool),
            "decision" => self.decision(config, path, scope).map(StepKind::Decision),
            "loop" => self.loop_config(config, path, scope).map(StepKind::Loop),
            "webhook" => self.webhook(config, path, scope).map(StepKind::Webhook),
            _ => self.human(config, path, scope).map(StepKind::Human),
        }
    }

    fn prompt(
        &mut self,
        config: &Map<String, Value>,
        path: &str,
        scope: Scope,
    ) -> Option<PromptConfig> {
        self.known_fields(config, path, &["prompt", "tools", "max_iterations"]);
        let prompt = self
            .required(config, path, "prompt")
            .and_then(|v| self.nonempty_template(v, &join(path, "prompt"), scope));
        let mut tools = Some(Vec::new());
        if let Some(raw) = config.get("tools") {
            let at = join(path, "tools");
            match self.array(raw, &at) {
                Some(list) if list.len() > MAX_PROMPT_TOOLS => {
                    self.error(&at, format!("may list at most {MAX_PROMPT_TOOLS} tools"));
                    tools = None;
                }
                Some(list) => {
                    for (k, item) in list.iter().enumerate() {
                        let at = index(&at, k);
                        match self.tool_id(item, &at) {
                            Some(id) if tools.as_ref().is_some_and(|t| t.contains(&id)) => {
                                self.error(&at, "lists this tool twice");
                            }
                            Some(id) => {
                                if let Some(t) = tools.as_mut() {
                                    t.push(id);
                                }
                            }
                            None => tools = None,
                        }
                    }
                }
                None => tools = None,
            }
        }
        let max_iterations = match config.get("max_iterations") {
            None => Some(None),
            Some(v) => self
                .bounded(v, &join(path, "max_iterations"), MAX_PROMPT_ITERATIONS)
                .map(Some),
        };
        Some(PromptConfig {
            prompt: prompt?,
            tools: tools?,
            max_iterations: max_iterations?,
        })
    }

    fn tool_id(&mut self, value: &Value, path: &str) -> Option<Uuid> {
        let raw = self.string(value, path)?;
        let Ok(id) = Uuid::try_parse(raw) else {
            self.error(path, "must be a tool id (a UUID)");
            return None;
        };
        self.tools_used.insert(id);
        if !self.tools.contains(&id) {
            self.error(path, format!("there is no tool `{id}` in this project"));
            return None;
        }
        Some(id)
    }

    fn tool(
        &mut self,
        config: &Map<String, Value>,
        path: &str,
        scope: Scope,
    ) -> Option<ToolConfig> {
        self.known_fields(config, path, &["tool_id", "input"]);
        let tool_id = self
            .required(config, path, "tool_id")
            .and_then(|v| self.tool_id(v, &join(path, "tool_id")));
        let input = match config.get("input") {
            None => Some(TemplateObject::default()),
            Some(v) => self.template_object(v, &join(path, "input"), scope),
        };
        Some(ToolConfig {
            tool_id: tool_id?,
            input: input?,
        })
    }

    fn decision(
        &mut self,
        config: &Map<String, Value>,
        path: &str,
        scope: Scope,
    ) -> Option<DecisionConfig> {
        self.known_fields(config, path, &["condition", "then", "else"]);
        let condition = self
            .required(config, path, "condition")
            .and_then(|v| self.expression(v, &join(path, "condition"), scope, &[]));
        let then = self
            .required(config, path, "then")
            .and_then(|v| self.targets(v, &join(path, "then"), scope));
        let otherwise = match config.get("else") {
            None => Some(Vec::new()),
            Some(v) => self.targets(v, &join(path, "else"), scope),
        };
        if let (Some(then), Some(otherwise)) = (&then, &otherwise) {
            for (k, target) in otherwise.iter().enumerate() {
                if then.contains(target) {
                    self.error(
                        &index(&join(path, "else"), k),
                        format!(
                            "`{target}` is also in `then`; a branch target belongs to one branch"
                        ),
                    );
                }
            }
        }
        Some(DecisionConfig {
            condition: condition?,
            then: then?,
            otherwise: otherwise?,
        })
    }

    fn targets(&mut self, raw: &Value, path: &str, scope: Scope) -> Option<Vec<StepId>> {
        let list = self.array(raw, path)?;
        let mut targets = Some(Vec::new());
        for (k, item) in list.iter().enumerate() {
            let at = index(path, k);
            let Some(raw) = self.string(item, &at) else {
                targets = None;
                continue;
            };
            match StepId::parse(raw) {
                Ok(id) if targets.as_ref().is_some_and(|t| t.contains(&id)) => {
                    self.error(&at, format!("lists `{id}` twice"));
                }
                Ok(id) => {
                    self.targets.push((at, scope.step, id.clone()));
                    if let Some(t) = targets.as_mut() {
                        t.push(id);
                    }
                }
                Err(_) => {
                    self.error(&at, format!("there is no step `{raw}`"));
                    targets = None;
                }
            }
        }
        targets
    }

    fn loop_config(
        &mut self,
        config: &Map<String, Value>,
        path: &str,
        scope: Scope,
    ) -> Option<LoopConfig> {
        self.known_fields(config, path, &["over", "while", "max_iterations", "step"]);
        let iteration = match (config.get("over"), config.get("while")) {
            (Some(over), None) => self
                .expression(over, &join(path, "over"), scope, &[])
                .map(Iteration::Over),
            (None, Some(cond)) => self
                .expression(cond, &join(path, "while"), scope, &["iteration"])
                .map(Iteration::While),
            (Some(_), Some(_)) => {
                self.error(
                    &join(path, "while"),
                    "give either `over` or `while`, not both",
                );
                None
            }
            (None, None) => {
                self.error(
                    &join(path, "over"),
                    "is required: give `over` (a list expression) or `while` (a condition)",
                );
                None
            }
        };
        let max_iterations = self
            .required(config, path, "max_iterations")
            .and_then(|v| self.bounded(v, &join(path, "max_iterations"), MAX_LOOP_ITERATIONS));
        let step = self
            .required(config, path, "step")
            .and_then(|v| self.loop_step(v, &join(path, "step"), scope));
        Some(LoopConfig {
            iteration: iteration?,
            max_iterations: max_iterations?,
            step: step?,
        })
    }

    fn loop_step(&mut self, raw: &Value, path: &str, scope: Scope) -> Option<LoopStep> {
        let object = self.object(raw, path)?;
        self.known_fields(object, path, &["type", "config"]);
        let type_name = self.required(object, path, "type").and_then(|v| {
            let at = join(path, "type");
            let name = self.string(v, &at)?;
            match name {
                "prompt" | "tool" | "webhook" | "human" => Some(name),
                "decision" | "loop" => {
                    self.error(
                        &at,
                        format!("a loop's step cannot be a `{name}`; use prompt, tool, webhook or human"),
                    );
                    None
                }
                other => {
                    self.error(
                        &at,
                        format!("`{other}` is not a step type; expected prompt, tool, webhook or human"),
                    );
                    None
                }
            }
        });
        let config = self.required(object, path, "config");
        let (type_name, config) = (type_name?, config?);
        let scope = Scope {
            in_loop: true,
            ..scope
        };
        match self.kind(type_name, config, &join(path, "config"), scope)? {
            StepKind::Prompt(c) => Some(LoopStep::Prompt(c)),
            StepKind::Tool(c) => Some(LoopStep::Tool(c)),
            StepKind::Webhook(c) => Some(LoopStep::Webhook(c)),
            StepKind::Human(c) => Some(LoopStep::Human(c)),
            StepKind::Decision(_) | StepKind::Loop(_) => None,
        }
    }

    fn webhook(
        &mut self,
        config: &Map<String, Value>,
        path: &str,
        scope: Scope,
    ) -> Option<WebhookConfig> {
        self.known_fields(config, path, &["url", "body", "headers", "credentials"]);
        let url = self.required(config, path, "url").and_then(|v| {
            let at = join(path, "url");
            let raw = self.string(v, &at)?;
            WebhookUrl::parse(raw).map_err(|m| self.error(&at, m)).ok()
        });
        let body = match config.get("body") {
            None => Some(TemplateObject::default()),
            Some(v) => self.template_object(v, &join(path, "body"), scope),
        };
        let mut headers = Some(BTreeMap::new());
        if let Some(raw) = config.get("headers") {
            let at = join(path, "headers");
            match self.object(raw, &at) {
                Some(map) if map.len() > MAX_WEBHOOK_HEADERS => {
                    self.error(
                        &at,
                        format!("may have at most {MAX_WEBHOOK_HEADERS} headers"),
                    );
                    headers = None;
                }
                Some(map) => {
                    for (name, value) in map {
                        let at = join(&at, name);
                        if let Err(why) = outbound::headers::check_webhook_name(name) {
                            self.error(&at, why);
                            headers = None;
                            continue;
                        }
                        if outbound::headers::is_sensitive(name) {
                            self.error(
                                &at,
                                "carries a secret, which a workflow version (read by every \
                                 viewer) must not hold; send it with `credentials` instead",
                            );
                            headers = None;
                            continue;
                        }
                        match self.template(value, &at, scope) {
                            Some(t) => {
                                if let Some(h) = headers.as_mut() {
                                    h.insert(name.clone(), t);
                                }
                            }
                            None => headers = None,
                        }
                    }
                }
                None => headers = None,
            }
        }
        let credentials = match config.get("credentials") {
            None | Some(Value::Null) => Some(None),
            Some(raw) => self
                .webhook_credentials(
                    raw,
                    &join(path, "credentials"),
                    url.as_ref(),
                    headers.as_ref(),
                )
                .map(Some),
        };
        Some(WebhookConfig {
            url: url?,
            body: body?,
            headers: headers?,
            credentials: credentials?,
        })
    }

    /// A webhook step's `credentials`: a project credential bound to the URL's origin, the
    /// header it goes in (not one of `headers`) and an optional scheme word.
    fn webhook_credentials(
        &mut self,
        raw: &Value,
        path: &str,
        url: Option<&WebhookUrl>,
        headers: Option<&BTreeMap<String, Template>>,
    ) -> Option<WebhookCredentials> {
        let config = self.object(raw, path)?;
        self.known_fields(config, path, &["id", "header", "scheme"]);
        let id = self.required(config, path, "id").and_then(|v| {
            let at = join(path, "id");
            let raw = self.string(v, &at)?;
            let Ok(id) = Uuid::try_parse(raw) else {
                self.error(&at, "must be a credential id (a UUID)");
                return None;
            };
            let Some(origin) = self.credentials.get(&id).cloned() else {
                self.error(
                    &at,
                    format!("there is no credential `{id}` in this project"),
                );
                return None;
            };
            let url_origin = url.and_then(|u| url::Url::parse(u.as_str()).ok());
            let url_origin = url_origin.map(|u| u.origin().ascii_serialization());
            if url_origin.as_ref().is_some_and(|o| *o != origin) {
                self.error(
                    &at,
                    format!(
                        "the credential is bound to {origin}, not to this webhook's {}",
                        url_origin.unwrap_or_default()
                    ),
                );
                return None;
            }
            Some(id)
        });
        let header = match config.get("header") {
            None => Some(default_credentials_header()),
            Some(v) => {
                let at = join(path, "header");
                self.string(v, &at).and_then(|name| {
                    let taken =
                        headers.is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case(name)));
                    let problem = outbound::headers::check_webhook_name(name)
                        .err()
                        .or_else(|| taken.then(|| "is also set in `headers`".to_owned()));
                    match problem {
                        Some(why) => {
                            self.error(&at, why);
                            None
                        }
                        None => Some(name.to_owned()),
                    }
                })
            }
        };
        let scheme = match config.get("scheme") {
            None | Some(Value::Null) => Some(None),
            Some(v) => {
                let at = join(path, "scheme");
                self.string(v, &at).and_then(|word| {
                    let valid = (1..=32).contains(&word.len())
                        && word
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                    if valid {
                        Some(Some(word.to_owned()))
                    } else {
                        self.error(&at, "must be 1-32 letters, digits, `-` or `_`, e.g. Bearer");
                        None
                    }
                })
            }
        };
        Some(WebhookCredentials {
            id: id?,
            header: header?,
            scheme: scheme?,
        })
    }

    fn human(
        &mut self,
        config: &Map<String, Value>,
        path: &str,
        scope: Scope,
    ) -> Option<HumanConfig> {
        self.known_fields(config, path, &["instructions"]);
        let instructions = self
            .required(config, path, "instructions")
            .and_then(|v| self.nonempty_template(v, &join(path, "instructions"), scope));
        Some(HumanConfig {
            instructions: instructions?,
        })
    }

    fn nonempty_template(&mut self, value: &Value, path: &str, scope: Scope) -> Option<Template> {
        if value.as_str().is_some_and(|s| s.trim().is_empty()) {
            self.error(path, "must not be empty");
            return None;
        }
        self.template(value, path, scope)
    }

    fn template(&mut self, value: &Value, path: &str, scope: Scope) -> Option<Template> {
        let raw = self.string(value, path)?;
        let template = Template::parse(raw).map_err(|m| self.error(path, m)).ok()?;
        let mut ok = true;
        for reference in template.references() {
            match &reference.root {
                Root::Input => {}
                Root::Item if scope.in_loop => {}
                Root::Item => {
                    self.error(
                        path,
                        "uses `{{ item }}`, which exists only in a loop's step",
                    );
                    ok = false;
                }
                Root::Step(id) => self.reads.push((path.to_owned(), scope.step, id.clone())),
            }
        }
        ok.then_some(template)
    }

    fn template_object(&mut self, raw: &Value, path: &str, scope: Scope) -> Option<TemplateObject> {
        let map = self.object(raw, path)?;
        let before = self.errors.len();
        for (key, value) in map {
            self.template_value(value, &join(path, key), scope);
        }
        (self.errors.len() == before).then(|| TemplateObject(map.clone()))
    }

    fn template_value(&mut self, value: &Value, path: &str, scope: Scope) {
        match value {
            Value::String(_) => {
                self.template(value, path, scope);
            }
            Value::Array(items) => {
                for (k, item) in items.iter().enumerate() {
                    self.template_value(item, &index(path, k), scope);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    self.template_value(item, &join(path, key), scope);
                }
            }
            _ => {}
        }
    }

    /// Parses a CEL expression that may read `input`, upstream steps and `extra` variables.
    fn expression(
        &mut self,
        value: &Value,
        path: &str,
        scope: Scope,
        extra: &[&str],
    ) -> Option<Expression> {
        let raw = self.string(value, path)?;
        let expression = Expression::parse(raw)
            .map_err(|m| self.error(path, m))
            .ok()?;
        let mut ok = true;
        for variable in expression.variables() {
            if variable != "input" && !extra.contains(&variable.as_str()) {
                let allowed: Vec<String> = ["input", "steps.<id>"]
                    .iter()
                    .chain(extra)
                    .map(|name| format!("`{name}`"))
                    .collect();
                self.error(
                    path,
                    format!(
                        "reads `{variable}`, which does not exist here; use {}",
                        allowed.join(", ")
                    ),
                );
                ok = false;
            }
        }
        for id in expression.steps() {
            self.reads.push((path.to_owned(), scope.step, id.clone()));
        }
        ok.then_some(expression)
    }

    /// Cross-step rules: unique ids, dependencies that exist, no cycles, reads of upstream
    /// steps only, branch targets that depend on their decision.
    fn check_graph(&mut self, steps: &[Option<Parsed>]) {
        let mut by_id: HashMap<&StepId, usize> = HashMap::new();
        for (i, step) in steps.iter().enumerate() {
            let Some(id) = step.as_ref().and_then(|s| s.id.as_ref()) else {
                continue;
            };
            match by_id.get(id) {
                Some(first) => self.error(
                    &join(&index("steps", i), "id"),
                    format!("`{id}` is already the id of steps[{first}]"),
                ),
                None => {
                    by_id.insert(id, i);
                }
            }
        }
        // edges[i]: (index in depends_on, step depended on)
        let mut edges: Vec<Vec<(usize, usize)>> = vec![Vec::new(); steps.len()];
        for (i, step) in steps.iter().enumerate() {
            let Some(step) = step else { continue };
            let mut seen = HashSet::new();
            for (k, dep) in &step.depends_on {
                let at = index(&join(&index("steps", i), "depends_on"), *k);
                if step.id.as_ref() == Some(dep) {
                    self.error(&at, "a step cannot depend on itself");
                } else if !seen.insert(dep) {
                    self.error(&at, format!("lists `{dep}` twice"));
                } else {
                    match by_id.get(dep) {
                        Some(&j) => edges[i].push((*k, j)),
                        None => self.error(&at, format!("there is no step `{dep}`")),
                    }
                }
            }
        }
        self.find_cycles(steps, &edges);
        let upstream: Vec<HashSet<usize>> =
            (0..steps.len()).map(|i| reachable(i, &edges)).collect();
        let own_id = |i: usize| {
            steps[i]
                .as_ref()
                .and_then(|s| s.id.as_ref())
                .map_or_else(|| format!("steps[{i}]"), |id| format!("`{id}`"))
        };
        for (path, i, id) in std::mem::take(&mut self.reads) {
            match by_id.get(&id) {
                None => self.error(
                    &path,
                    format!("reads `steps.{id}`, but there is no step `{id}`"),
                ),
                Some(&j) if j == i => {
                    self.error(&path, format!("reads `steps.{id}`, the step's own output"))
                }
                Some(j) if !upstream[i].contains(j) => self.error(
                    &path,
                    format!(
                        "reads `steps.{id}`, which is not upstream of {}; add `{id}` to its \
                         depends_on (directly or through another step)",
                        own_id(i)
                    ),
                ),
                Some(_) => {}
            }
        }
        for (path, i, target) in std::mem::take(&mut self.targets) {
            let decision = steps[i].as_ref().and_then(|s| s.id.as_ref());
            match by_id.get(&target) {
                None => self.error(&path, format!("there is no step `{target}`")),
                Some(&j) if j == i => self.error(&path, "a decision cannot branch to itself"),
                Some(&j) => {
                    let depends = steps[j]
                        .as_ref()
                        .zip(decision)
                        .is_some_and(|(t, d)| t.depends_on.iter().any(|(_, dep)| dep == d));
                    if !depends {
                        self.error(
                            &path,
                            format!(
                                "`{target}` must depend on the decision {} (list it in `{target}`'s depends_on)",
                                own_id(i)
                            ),
                        );
                    }
                }
            }
        }
    }

    /// Depth-first search in step order; each edge that closes a cycle is reported at its
    /// `depends_on` entry.
    fn find_cycles(&mut self, steps: &[Option<Parsed>], edges: &[Vec<(usize, usize)>]) {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        let name = |i: usize| {
            steps[i]
                .as_ref()
                .and_then(|s| s.id.as_ref())
                .map_or_else(|| format!("steps[{i}]"), ToString::to_string)
        };
        let mut marks = vec![Mark::New; steps.len()];
        for start in 0..steps.len() {
            if marks[start] != Mark::New {
                continue;
            }
            // (step, next edge to follow); `path` mirrors the open steps.
            let mut stack = vec![(start, 0usize)];
            marks[start] = Mark::Open;
            while let Some(&mut (u, ref mut next)) = stack.last_mut() {
                let Some(&(k, v)) = edges[u].get(*next) else {
                    marks[u] = Mark::Done;
                    stack.pop();
                    continue;
                };
                *next += 1;
                match marks[v] {
                    Mark::New => {
                        marks[v] = Mark::Open;
                        stack.push((v, 0));
                    }
                    Mark::Open => {
                        let from = stack.iter().position(|&(s, _)| s == v).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            stack[from..].iter().map(|&(s, _)| name(s)).collect();
                        cycle.push(name(v));
                        self.error(
                            &index(&join(&index("steps", u), "depends_on"), k),
                            format!("closes a dependency cycle: {}", cycle.join(" → ")),
                        );
                    }
                    Mark::Done => {}
                }
            }
        }
    }
}

/// The steps `start` depends on, directly or transitively.
fn reachable(start: usize, edges: &[Vec<(usize, usize)>]) -> HashSet<usize> {
    let mut seen = HashSet::new();
    let mut todo = vec![start];
    while let Some(u) = todo.pop() {
        for &(_, v) in &edges[u] {
            if seen.insert(v) {
                todo.push(v);
            }
        }
    }
    seen
}
