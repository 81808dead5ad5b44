//! What a create, a change or a heartbeat of an agent may say, and how it is parsed into
//! [`Changes`] with every field error collected.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{MAX_CAPABILITIES, MAX_TOOLS};
use crate::domain::{Env, Name};
use crate::error::{ApiResult, FieldError};
use crate::outbound;
use crate::state::AppState;
use crate::store::agents::{Agent, JsonObject, LlmEndpoint};
use crate::validate::{self, check_json_object, FieldErrors};

/// An OpenAI-compatible endpoint, as written.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmInput {
    /// Base URL (`http` or `https`), e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// API key; write-only. In a PATCH, leaving it out keeps the stored key and `null`
    /// removes it.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<String>, write_only)]
    pub api_key: Option<Option<SecretString>>,
}

/// `POST /agents`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    /// The project the agent belongs to.
    pub project_id: String,
    /// Name.
    pub name: String,
    /// Runtime identifier: `[a-z][a-z0-9._-]{0,31}`, e.g. `python`, `node`.
    pub runtime: String,
    /// Model name.
    pub model: String,
    /// Ids of tools of the same project (at most 100).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Environment.
    pub env: Env,
    /// Parallel tasks, 1–1000 (default 4).
    pub concurrency: Option<i64>,
    /// Autoscaling settings (an object of at most 32 KiB).
    #[schema(value_type = Option<Object>)]
    pub autoscale_config: Option<JsonObject>,
    /// Short description of its prompt.
    pub prompt_summary: Option<String>,
    /// Free-form metadata (an object of at most 32 KiB).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<JsonObject>,
    /// Capabilities: at most 49 of 1–64 characters of `[a-z0-9_.-]`; duplicates are dropped.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// System prompt (at most 64 KiB).
    pub system_prompt: Option<String>,
    /// Sampling temperature, 0–2.
    #[schema(value_type = Option<f64>)]
    pub temperature: Option<serde_json::Number>,
    /// Completion token limit, 1–1,000,000.
    pub max_tokens: Option<i64>,
    /// Seconds between expected heartbeats, 5–3600 (default 30).
    pub heartbeat_interval_seconds: Option<i64>,
    /// OpenAI-compatible endpoint; its `api_key` is stored in Secrets Manager.
    pub llm: Option<LlmInput>,
    /// Release, a semantic version (default `1.0.0`).
    pub release: Option<String>,
    /// Owning team or person.
    pub owner: Option<String>,
    /// What changed in this release.
    pub changelog: Option<String>,
    /// Whether the agent is deprecated (default false).
    pub deprecated: Option<bool>,
    /// Description.
    pub description: Option<String>,
}

/// `PATCH /agents/{id}`: only the fields given change; `null` clears a nullable field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    /// Name.
    pub name: Option<String>,
    /// Runtime identifier.
    pub runtime: Option<String>,
    /// Model name.
    pub model: Option<String>,
    /// Replaces the tool ids.
    pub tools: Option<Vec<String>>,
    /// Environment.
    pub env: Option<Env>,
    /// Parallel tasks, 1–1000.
    pub concurrency: Option<i64>,
    /// Autoscaling settings; `null` clears them.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<Object>)]
    pub autoscale_config: Option<Option<JsonObject>>,
    /// Short description of its prompt; `null` clears it.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<String>)]
    pub prompt_summary: Option<Option<String>>,
    /// Replaces the metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<JsonObject>,
    /// Replaces the capabilities.
    pub capabilities: Option<Vec<String>>,
    /// System prompt; `null` clears it.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<String>)]
    pub system_prompt: Option<Option<String>>,
    /// Sampling temperature, 0–2; `null` clears it.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<f64>)]
    pub temperature: Option<Option<serde_json::Number>>,
    /// Completion token limit; `null` clears it.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<i64>)]
    pub max_tokens: Option<Option<i64>>,
    /// Seconds between expected heartbeats, 5–3600.
    pub heartbeat_interval_seconds: Option<i64>,
    /// OpenAI-compatible endpoint; `null` removes it and its key.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<LlmInput>)]
    pub llm: Option<Option<LlmInput>>,
    /// Release, a semantic version.
    pub release: Option<String>,
    /// Owning team or person; `null` clears it.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<String>)]
    pub owner: Option<Option<String>>,
    /// What changed in this release; `null` clears it.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<String>)]
    pub changelog: Option<Option<String>>,
    /// Whether the agent is deprecated.
    pub deprecated: Option<bool>,
    /// Description; `null` clears it.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// The version this change is based on; a stale one gets `409`.
    pub version: Option<u64>,
}

/// `POST /agents/{id}/heartbeat`; the body may also be empty.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatReport {
    /// A short status word, e.g. `ok` or `busy` (at most 64 characters).
    pub status: Option<String>,
    /// Numbers or strings by name (at most 8 KiB).
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<JsonObject>,
}

/// What happens to the stored LLM API key.
pub(super) enum KeyChange {
    Keep,
    Remove,
    Replace(SecretString),
}

/// What happens to the LLM endpoint.
pub(super) enum LlmChange {
    Remove,
    Set { base_url: String, key: KeyChange },
}

/// Validated values of a create or a change; `None` leaves a field as it is.
pub(super) struct Changes {
    pub(super) name: Option<String>,
    pub(super) runtime: Option<String>,
    pub(super) model: Option<String>,
    pub(super) tools: Option<Vec<Uuid>>,
    pub(super) env: Option<Env>,
    pub(super) concurrency: Option<u32>,
    pub(super) autoscale_config: Option<Option<JsonObject>>,
    pub(super) prompt_summary: Option<Option<String>>,
    pub(super) metadata: Option<JsonObject>,
    pub(super) capabilities: Option<Vec<String>>,
    pub(super) system_prompt: Option<Option<String>>,
    pub(super) temperature: Option<Option<String>>,
    pub(super) max_tokens: Option<Option<u32>>,
    pub(super) heartbeat_interval_seconds: Option<u32>,
    pub(super) llm: Option<LlmChange>,
    pub(super) release: Option<String>,
    pub(super) owner: Option<Option<String>>,
    pub(super) changelog: Option<Option<String>>,
    pub(super) deprecated: Option<bool>,
    pub(super) description: Option<Option<String>>,
}

impl Changes {
    /// The key to write to Secrets Manager, if any.
    pub(super) fn new_api_key(&self) -> Option<&SecretString> {
        match &self.llm {
            Some(LlmChange::Set {
                key: KeyChange::Replace(key),
                ..
            }) => Some(key),
            _ => None,
        }
    }

    /// Applies the changes to `agent`.
    pub(super) fn apply(&self, agent: &mut Agent) {
        fn set<T: Clone>(field: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *field = value.clone();
            }
        }
        set(&mut agent.name, &self.name);
        set(&mut agent.runtime, &self.runtime);
        set(&mut agent.model, &self.model);
        set(&mut agent.tools, &self.tools);
        set(&mut agent.env, &self.env);
        set(&mut agent.concurrency, &self.concurrency);
        set(&mut agent.autoscale_config, &self.autoscale_config);
        set(&mut agent.prompt_summary, &self.prompt_summary);
        set(&mut agent.metadata, &self.metadata);
        set(&mut agent.capabilities, &self.capabilities);
        set(&mut agent.system_prompt, &self.system_prompt);
        set(&mut agent.temperature, &self.temperature);
        set(&mut agent.max_tokens, &self.max_tokens);
        set(
            &mut agent.heartbeat_interval_seconds,
            &self.heartbeat_interval_seconds,
        );
        set(&mut agent.release, &self.release);
        set(&mut agent.owner, &self.owner);
        set(&mut agent.changelog, &self.changelog);
        set(&mut agent.deprecated, &self.deprecated);
        set(&mut agent.description, &self.description);
        match &self.llm {
            None => {}
            Some(LlmChange::Remove) => agent.llm = None,
            Some(LlmChange::Set { base_url, key }) => {
                // A key stays bound to the origin it was given for: another origin drops it
                // unless it is sent again.
                let had_key = agent.llm.as_ref().is_some_and(|llm| {
                    llm.has_api_key && outbound::same_origin(&llm.base_url, base_url)
                });
                agent.llm = Some(LlmEndpoint {
                    base_url: base_url.clone(),
                    has_api_key: match key {
                        KeyChange::Keep => had_key,
                        KeyChange::Remove => false,
                        KeyChange::Replace(_) => true,
                    },
                });
            }
        }
    }
}

/// A name or a model name: the display-name rule of [`Name`].
fn name(raw: &str) -> Result<String, String> {
    Name::parse(raw).map(Name::into_inner)
}

fn runtime(raw: &str) -> Result<String, String> {
    let mut chars = raw.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if starts_with_letter && rest_ok && raw.len() <= 32 {
        Ok(raw.to_owned())
    } else {
        Err("must be 1-32 characters of [a-z0-9._-] starting with a letter, e.g. `python` or `node`".into())
    }
}

fn temperature(raw: &serde_json::Number) -> Result<String, String> {
    match raw.as_f64() {
        Some(t) if (0.0..=2.0).contains(&t) => Ok(raw.to_string()),
        _ => Err("must be a number from 0 to 2".into()),
    }
}

/// A capability: 1–64 characters of `[a-z0-9_.-]`.
pub fn capability(raw: &str) -> Result<String, String> {
    let valid = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if valid {
        Ok(raw.to_owned())
    } else {
        Err("must be 1-64 characters of [a-z0-9_.-]".into())
    }
}

fn capabilities(raw: &[String], errors: &mut Vec<FieldError>) -> Option<Vec<String>> {
    let mut unique: Vec<String> = Vec::new();
    let mut ok = true;
    for (i, cap) in raw.iter().enumerate() {
        match capability(cap) {
            Ok(cap) if !unique.contains(&cap) => unique.push(cap),
            Ok(_) => {}
            Err(m) => {
                errors.fail(format!("capabilities[{i}]"), m);
                ok = false;
            }
        }
    }
    if unique.len() > MAX_CAPABILITIES {
        errors.fail(
            "capabilities",
            format!("must hold at most {MAX_CAPABILITIES} capabilities"),
        );
        ok = false;
    }
    ok.then_some(unique)
}

/// Parses tool ids; their existence is checked by [`check_tools_exist`].
fn tool_ids(raw: &[String], errors: &mut Vec<FieldError>) -> Option<Vec<Uuid>> {
    if raw.len() > MAX_TOOLS {
        errors.fail("tools", format!("must hold at most {MAX_TOOLS} tools"));
        return None;
    }
    let mut ids = Vec::with_capacity(raw.len());
    let mut ok = true;
    for (i, id) in raw.iter().enumerate() {
        match Uuid::try_parse(id) {
            Ok(id) if ids.contains(&id) => {
                errors.fail(format!("tools[{i}]"), "is listed twice");
                ok = false;
            }
            Ok(id) => ids.push(id),
            Err(_) => {
                errors.fail(format!("tools[{i}]"), "must be a tool id (UUID)");
                ok = false;
            }
        }
    }
    ok.then_some(ids)
}

/// Records an error for every tool that is not in `project_id`; another project's tool is
/// reported exactly like a missing one.
pub(super) async fn check_tools_exist(
    state: &AppState,
    project_id: Uuid,
    ids: &[Uuid],
    errors: &mut Vec<FieldError>,
) -> ApiResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let found = state.store.get_tools(ids).await?;
    for (i, id) in ids.iter().enumerate() {
        if !found
            .iter()
            .any(|tool| tool.id == *id && tool.project_id == project_id)
        {
            errors.fail(format!("tools[{i}]"), "no such tool in this project");
        }
    }
    Ok(())
}

/// A free-form object: at most 32 KiB and storable.
fn object(field: &str, value: JsonObject, errors: &mut Vec<FieldError>) -> Option<JsonObject> {
    let before = errors.len();
    check_json_object(field, &value, errors);
    (errors.len() == before).then_some(value)
}

fn llm(input: &LlmInput, errors: &mut Vec<FieldError>) -> Option<LlmChange> {
    let base_url = errors.check("llm.base_url", base_url(&input.base_url));
    let key = match &input.api_key {
        None => Some(KeyChange::Keep),
        Some(None) => Some(KeyChange::Remove),
        Some(Some(key)) => errors
            .check("llm.api_key", api_key(key))
            .map(|()| KeyChange::Replace(key.clone())),
    };
    Some(LlmChange::Set {
        base_url: base_url?,
        key: key?,
    })
}

fn base_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let parsed = url::Url::parse(raw).map_err(|_| "must be an absolute http or https URL")?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("must be an absolute http or https URL".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not contain credentials; send the key as `api_key`".into());
    }
    if raw.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    Ok(raw.to_owned())
}

fn api_key(key: &SecretString) -> Result<(), String> {
    let key = key.expose_secret();
    if key.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if key.len() > 4096 {
        return Err("must be at most 4096 bytes".into());
    }
    if key.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

// Text limits, in characters; together with the 32 KiB objects they keep an agent item
// below DynamoDB's 400 KB.
/// Longest `prompt_summary`.
const PROMPT_SUMMARY_CHARS: usize = 4 * 1024;
/// Longest `system_prompt`.
const SYSTEM_PROMPT_CHARS: usize = 64 * 1024;
/// Longest `changelog`.
const CHANGELOG_CHARS: usize = 16 * 1024;
/// Longest `description`.
const DESCRIPTION_CHARS: usize = 4 * 1024;
/// Longest `owner`.
const OWNER_CHARS: usize = 255;

impl CreateAgent {
    /// The create as a change of a blank agent (every field given is set), and its project.
    pub(super) fn into_change(self) -> (String, UpdateAgent) {
        let change = UpdateAgent {
            name: Some(self.name),
            runtime: Some(self.runtime),
            model: Some(self.model),
            tools: Some(self.tools),
            env: Some(self.env),
            concurrency: self.concurrency,
            autoscale_config: self.autoscale_config.map(Some),
            prompt_summary: self.prompt_summary.map(Some),
            metadata: self.metadata,
            capabilities: Some(self.capabilities),
            system_prompt: self.system_prompt.map(Some),
            temperature: self.temperature.map(Some),
            max_tokens: self.max_tokens.map(Some),
            heartbeat_interval_seconds: self.heartbeat_interval_seconds,
            llm: self.llm.map(Some),
            release: self.release,
            owner: self.owner.map(Some),
            changelog: self.changelog.map(Some),
            deprecated: self.deprecated,
            description: self.description.map(Some),
            version: None,
        };
        (self.project_id, change)
    }
}

/// Checks a nullable field: left out stays `None`, `null` becomes `Some(None)`, a value is
/// parsed (and may still turn out empty, which clears the field too).
fn clearable<R, T>(
    c: &mut Vec<FieldError>,
    field: &str,
    raw: Option<Option<R>>,
    parse: impl FnOnce(R, &mut Vec<FieldError>, &str) -> Option<Option<T>>,
) -> Option<Option<T>> {
    match raw {
        None => None,
        Some(None) => Some(None),
        Some(Some(value)) => parse(value, c, field),
    }
}

fn single_line(
    max: usize,
) -> impl FnOnce(String, &mut Vec<FieldError>, &str) -> Option<Option<String>> {
    move |raw, c, field| c.check(field, validate::line(&raw, max))
}

fn multi_line(
    max: usize,
) -> impl FnOnce(String, &mut Vec<FieldError>, &str) -> Option<Option<String>> {
    move |raw, c, field| c.check(field, validate::text(&raw, max))
}

/// Validates a change (or a create, see [`CreateAgent::into_change`]), collecting every
/// field error.
pub(super) fn validate(body: UpdateAgent, c: &mut Vec<FieldError>) -> Changes {
    Changes {
        name: body.name.and_then(|v| c.check("name", name(&v))),
        runtime: body.runtime.and_then(|v| c.check("runtime", runtime(&v))),
        model: body.model.and_then(|v| c.check("model", name(&v))),
        tools: body.tools.and_then(|ids| tool_ids(&ids, c)),
        env: body.env,
        concurrency: body
            .concurrency
            .and_then(|v| c.check("concurrency", validate::in_range(v, 1..=1000))),
        autoscale_config: clearable(c, "autoscale_config", body.autoscale_config, |v, c, f| {
            object(f, v, c).map(Some)
        }),
        prompt_summary: clearable(
            c,
            "prompt_summary",
            body.prompt_summary,
            multi_line(PROMPT_SUMMARY_CHARS),
        ),
        metadata: body.metadata.and_then(|m| object("metadata", m, c)),
        capabilities: body.capabilities.and_then(|caps| capabilities(&caps, c)),
        system_prompt: clearable(
            c,
            "system_prompt",
            body.system_prompt,
            multi_line(SYSTEM_PROMPT_CHARS),
        ),
        temperature: clearable(c, "temperature", body.temperature, |v, c, f| {
            c.check(f, temperature(&v)).map(Some)
        }),
        max_tokens: clearable(c, "max_tokens", body.max_tokens, |v, c, f| {
            c.check(f, validate::in_range(v, 1..=1_000_000)).map(Some)
        }),
        heartbeat_interval_seconds: body.heartbeat_interval_seconds.and_then(|v| {
            c.check(
                "heartbeat_interval_seconds",
                validate::in_range(v, 5..=3600),
            )
        }),
        llm: match body.llm {
            None => None,
            Some(None) => Some(LlmChange::Remove),
            Some(Some(input)) => llm(&input, c),
        },
        release: body
            .release
            .and_then(|r| c.check("release", validate::release(&r))),
        owner: clearable(c, "owner", body.owner, single_line(OWNER_CHARS)),
        changelog: clearable(c, "changelog", body.changelog, multi_line(CHANGELOG_CHARS)),
        deprecated: body.deprecated,
        description: clearable(
            c,
            "description",
            body.description,
            multi_line(DESCRIPTION_CHARS),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_are_short_identifiers() {
        for ok in ["python", "node", "python3.12", "go", "java-21"] {
            assert!(runtime(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Python", "3python", "py thon", &"x".repeat(33)] {
            assert!(runtime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn temperatures_keep_their_decimal_text() {
        let parse = |raw: &str| temperature(&raw.parse::<serde_json::Number>().unwrap());
        assert_eq!(parse("0.7").unwrap(), "0.7");
        assert_eq!(parse("2").unwrap(), "2");
        assert!(parse("2.01").is_err());
        assert!(parse("-0.1").is_err());
    }

    #[test]
    fn capabilities_are_validated_and_deduplicated() {
        let mut errors = Vec::new();
        let caps = capabilities(
            &[
                "faq_handling".into(),
                "faq_handling".into(),
                "order.tracking".into(),
            ],
            &mut errors,
        );
        assert_eq!(
            caps.unwrap(),
            vec!["faq_handling".to_owned(), "order.tracking".to_owned()]
        );
        let bad = capabilities(&["ok".into(), "Not OK".into()], &mut errors);
        assert!(bad.is_none());
        assert_eq!(errors[0].field, "capabilities[1]");
        let too_many: Vec<String> = (0..=MAX_CAPABILITIES).map(|i| format!("c{i}")).collect();
        let mut errors = Vec::new();
        assert!(capabilities(&too_many, &mut errors).is_none());
        assert_eq!(errors[0].field, "capabilities");
    }

    #[test]
    fn base_urls_are_http_without_credentials() {
        assert!(base_url("https://api.openai.com/v1").is_ok());
        assert!(base_url("http://localhost:11434").is_ok());
        assert!(base_url("ftp://example.com").is_err());
        assert!(base_url("not a url").is_err());
        assert!(base_url("https://user:pw@example.com").is_err());
    }
}
