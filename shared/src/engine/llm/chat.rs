//! The chat-completions wire format: messages, tool calls, the functions offered, token
//! counts, and the request and response bodies as an OpenAI-compatible endpoint speaks them.

use std::collections::HashSet;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

/// The longest function name OpenAI accepts.
const MAX_FUNCTION_NAME_CHARS: usize = 64;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    /// Instructions: the agent's system prompt.
    System {
        /// Text.
        content: String,
    },
    /// The step's prompt.
    User {
        /// Text.
        content: String,
    },
    /// What the model said: an answer, tool calls, or both.
    Assistant {
        /// Text, if any.
        content: Option<String>,
        /// Functions the model wants called.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call.
    Tool {
        /// The id of the call it answers.
        tool_call_id: String,
        /// The result, as JSON text.
        content: String,
    },
}

/// A function call requested by the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, echoed by the tool message that answers it.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// Which function, with which arguments.
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".into()
}

/// The function part of a [`ToolCall`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as JSON text, as the model wrote them (which may be invalid JSON).
    #[serde(deserialize_with = "arguments_text")]
    pub arguments: String,
}

/// Reads `arguments` as text; some servers (Ollama) send a JSON object instead of a string.
fn arguments_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(text) => text,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// A tool offered to the model as a function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Function name: `[A-Za-z0-9_-]{1,64}` (see [`function_names`]).
    pub name: String,
    /// What the tool does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of its arguments.
    pub parameters: Value,
}

impl ToolSpec {
    /// A tool with its `inputs_schema`, or any object when it has none.
    pub fn new(
        name: impl Into<String>,
        description: Option<String>,
        inputs_schema: Option<Value>,
    ) -> Self {
        Self {
            name: name.into(),
            description,
            parameters: inputs_schema.unwrap_or_else(|| json!({"type": "object"})),
        }
    }
}

/// Function names for tools with these display names, in order: characters outside
/// `[A-Za-z0-9_-]` become `_`, at most 64 characters, duplicates get `_2`, `_3`, ….
pub fn function_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut taken = HashSet::new();
    names
        .into_iter()
        .map(|name| {
            let mut base: String = name
                .trim()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(MAX_FUNCTION_NAME_CHARS)
                .collect();
            if base.is_empty() {
                base = "tool".into();
            }
            let mut candidate = base.clone();
            let mut n = 1;
            while taken.contains(&candidate) {
                n += 1;
                let suffix = format!("_{n}");
                let keep = MAX_FUNCTION_NAME_CHARS - suffix.len();
                candidate = format!("{}{suffix}", &base[..base.len().min(keep)]);
            }
            taken.insert(candidate.clone());
            candidate
        })
        .collect()
}

/// One chat-completions request.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// Model name.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Completion token limit.
    pub max_tokens: Option<u32>,
    /// Functions offered; `tool_choice` is `auto` when there are any.
    pub tools: Vec<ToolSpec>,
}

/// The request body as the endpoint expects it.
#[derive(Serialize)]
pub(super) struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'static str>,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: &'a ToolSpec,
}

impl<'a> From<&'a ChatRequest> for WireRequest<'a> {
    fn from(request: &'a ChatRequest) -> Self {
        Self {
            model: &request.model,
            messages: &request.messages,
            temperature: request.temperature,
            max_tokens: request.max_tokens,
            tools: request
                .tools
                .iter()
                .map(|function| WireTool {
                    kind: "function",
                    function,
                })
                .collect(),
            tool_choice: (!request.tools.is_empty()).then_some("auto"),
        }
    }
}

/// Token counts of one or more model calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub completion_tokens: u64,
}

/// The first choice of a chat completion.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatResponse {
    /// The model's text, if any.
    pub content: Option<String>,
    /// The functions it wants called; empty when it answered.
    pub tool_calls: Vec<ToolCall>,
    /// Tokens used; zero when the endpoint reports no `usage`.
    pub usage: Usage,
}

#[derive(Deserialize)]
pub(super) struct WireResponse {
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
}

impl WireResponse {
    /// The first choice with the call's token counts; `None` without choices.
    pub(super) fn first_choice(self) -> Option<ChatResponse> {
        let choice = self.choices.into_iter().next()?;
        Some(ChatResponse {
            content: choice.message.content,
            tool_calls: choice.message.tool_calls.unwrap_or_default(),
            usage: self.usage.unwrap_or_default(),
        })
    }
}
