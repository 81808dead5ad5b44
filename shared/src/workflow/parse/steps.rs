//! Each step type's `config`: what it requires, its bounds, and the templates and expressions
//! it holds.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::{index, join, Parser, Scope};
use crate::outbound;
use crate::workflow::definition::*;
use crate::workflow::template::Template;

impl Parser<'_> {
    pub(super) fn prompt(
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

    pub(super) fn tool_id(&mut self, value: &Value, path: &str) -> Option<Uuid> {
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

    pub(super) fn tool(
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

    pub(super) fn decision(
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

    pub(super) fn targets(&mut self, raw: &Value, path: &str, scope: Scope) -> Option<Vec<StepId>> {
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

    pub(super) fn loop_config(
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

    pub(super) fn loop_step(&mut self, raw: &Value, path: &str, scope: Scope) -> Option<LoopStep> {
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

    pub(super) fn webhook(
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
    pub(super) fn webhook_credentials(
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

    pub(super) fn human(
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
}
