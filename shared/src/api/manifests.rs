//! Signed manifests of agents and tools, in the seed registry's YAML format: export with a
//! checksum, the publisher (this deployment's key id, the project, who exported it and when)
//! and an Ed25519 signature over both; import (YAML or JSON) that checks all three, shows the
//! publisher, and honours the project's `settings.trusted_publishers` (see
//! [`crate::governance`]).
//!
//! Imports go through the same use cases as `POST /agents` and `POST /tools`, so an imported
//! asset is validated exactly like one created by hand.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::agents::AgentView;
use super::extract::{parse_json, ApiQuery, MAX_BODY_BYTES};
use super::registry::with_deprecation;
use super::tools::ToolView;
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::ts;
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::governance::{self, TRUSTED_PUBLISHERS_FIELD};
use crate::manifest::{self, ManifestError, Publisher, Verified};
use crate::state::AppState;
use crate::store::agents::Agent;
use crate::store::tools::Tool;
use crate::usecase::{agents, tools};
use crate::validate::required_project_id;
use crate::validate::FieldErrors;

/// Media type of exported manifests.
const YAML: &str = "application/yaml";
/// Agent fields kept at the top of a manifest, outside `metadata`.
const AGENT_METADATA: [&str; 11] = [
    "description",
    "capabilities",
    "max_tokens",
    "temperature",
    "tools",
    "system_prompt",
    "model",
    "runtime",
    "prompt_summary",
    "concurrency",
    "heartbeat_interval_seconds",
];
/// Tool fields that live in `metadata` rather than in the tool's `config`.
const TOOL_FIELDS: [&str; 7] = [
    "description",
    "category",
    "kind",
    "auth_type",
    "provider",
    "scopes",
    "rate_limit_per_min",
];

fn put_opt(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), value);
    }
}

fn envelope(
    name: &str,
    release: &str,
    created_at: &chrono::DateTime<chrono::Utc>,
    owner: &Option<String>,
    changelog: &Option<String>,
    deprecated: bool,
    metadata: Map<String, Value>,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("version".into(), json!(release));
    m.insert(
        manifest::CREATED_AT_FIELD.into(),
        json!(ts::format(created_at)),
    );
    put_opt(&mut m, "owner", owner.clone().map(Value::from));
    put_opt(&mut m, "changelog", changelog.clone().map(Value::from));
    m.insert("deprecated".into(), json!(deprecated));
    m.insert("metadata".into(), Value::Object(metadata));
    m
}

/// The manifest of an agent; its tools are named, since ids differ between projects.
pub fn agent_manifest(agent: &Agent, tool_names: Vec<String>) -> Map<String, Value> {
    let mut meta = Map::new();
    put_opt(
        &mut meta,
        "description",
        agent.description.clone().map(Value::from),
    );
    meta.insert("capabilities".into(), json!(agent.capabilities));
    put_opt(&mut meta, "max_tokens", agent.max_tokens.map(Value::from));
    put_opt(
        &mut meta,
        "temperature",
        agent
            .temperature
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Number>(t).ok())
            .map(Value::Number),
    );
    meta.insert("tools".into(), json!(tool_names));
    put_opt(
        &mut meta,
        "system_prompt",
        agent.system_prompt.clone().map(Value::from),
    );
    meta.insert("model".into(), json!(agent.model));
    meta.insert("runtime".into(), json!(agent.runtime));
    put_opt(
        &mut meta,
        "prompt_summary",
        agent.prompt_summary.clone().map(Value::from),
    );
    meta.insert("concurrency".into(), json!(agent.concurrency));
    meta.insert(
        "heartbeat_interval_seconds".into(),
        json!(agent.heartbeat_interval_seconds),
    );
    envelope(
        &agent.name,
        &agent.release,
        &agent.created_at,
        &agent.owner,
        &agent.changelog,
        agent.deprecated,
        meta,
    )
}

/// The manifest of a tool: its contract and resilience settings (the tool's `config`) sit in
/// `metadata` beside its description. Credentials are never part of it.
pub fn tool_manifest(tool: &Tool) -> Map<String, Value> {
    let mut meta = tool.config.as_map().clone();
    put_opt(
        &mut meta,
        "description",
        tool.description.clone().map(Value::from),
    );
    put_opt(
        &mut meta,
        "category",
        tool.category.clone().map(Value::from),
    );
    meta.insert("kind".into(), json!(tool.kind));
    meta.insert("auth_type".into(), json!(tool.auth_type.as_str()));
    put_opt(
        &mut meta,
        "provider",
        tool.provider.clone().map(Value::from),
    );
    meta.insert("scopes".into(), json!(tool.scopes));
    put_opt(
        &mut meta,
        "rate_limit_per_min",
        tool.rate_limit_per_min.map(Value::from),
    );
    envelope(
        &tool.name,
        &tool.release,
        &tool.created_at,
        &tool.owner,
        &tool.changelog,
        tool.deprecated,
        meta,
    )
}

/// Signs a manifest of an asset of `project_id`, naming the project and the caller as its
/// publisher.
async fn sealed_yaml(
    state: &AppState,
    principal: &Principal,
    project_id: Uuid,
    mut manifest: Map<String, Value>,
    deprecated: bool,
) -> ApiResult<Response> {
    state.manifest_signer().await?.seal(
        &mut manifest,
        project_id,
        principal.actor_id(),
        state.clock.now(),
    );
    let yaml = manifest::to_yaml(&manifest)?;
    let response = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(YAML))],
        yaml,
    )
        .into_response();
    Ok(with_deprecation(deprecated, response))
}

/// Exports an agent's signed manifest.
#[utoipa::path(
    get, path = "/api/v1/agents/{id}/manifest", tag = "registry",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Agent id")),
    responses(
        (status = 200, description = "The manifest, YAML, with `checksum_sha256`, `publisher` and `signature`", body = Object, content_type = "application/yaml"),
        (status = 404, description = "No such agent visible to the caller", body = Problem),
    )
)]
pub async fn export_agent(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let agent = agents::visible_agent(&state, &principal, &id, Action::ReadRegistry).await?;
    let names: HashMap<Uuid, String> = state
        .store
        .get_tools(&agent.tools)
        .await?
        .into_iter()
        .filter(|t| t.project_id == agent.project_id)
        .map(|t| (t.id, t.name))
        .collect();
    let tool_names = agent
        .tools
        .iter()
        .filter_map(|id| names.get(id).cloned())
        .collect();
    let deprecated = agent.deprecated;
    sealed_yaml(
        &state,
        &principal,
        agent.project_id,
        agent_manifest(&agent, tool_names),
        deprecated,
    )
    .await
}

/// Exports a tool's signed manifest.
#[utoipa::path(
    get, path = "/api/v1/tools/{id}/manifest", tag = "registry",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Tool id")),
    responses(
        (status = 200, description = "The manifest, YAML, with `checksum_sha256`, `publisher` and `signature`", body = Object, content_type = "application/yaml"),
        (status = 404, description = "No such tool visible to the caller", body = Problem),
    )
)]
pub async fn export_tool(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let tool = tools::visible_tool(&state, &principal, &id, Action::ReadRegistry).await?;
    let deprecated = tool.deprecated;
    sealed_yaml(
        &state,
        &principal,
        tool.project_id,
        tool_manifest(&tool),
        deprecated,
    )
    .await
}

/// Where an import goes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// The project to import into (required).
    pub project_id: Option<String>,
    /// Environment of the imported asset (default `dev`).
    pub env: Option<String>,
    /// Model for an agent manifest that names none.
    pub model: Option<String>,
}

/// The outcome of an import.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResult {
    /// The created agent or tool, as `GET` returns it.
    #[schema(value_type = Object)]
    pub record: Value,
    /// The manifest's checksum.
    pub checksum_sha256: String,
    /// Whether the manifest carried a signature (which then verified).
    pub signed: bool,
    /// Who published the manifest, as its signature vouches; `null` when it is unsigned or
    /// was signed before manifests named their publisher.
    pub publisher: Option<Publisher>,
    /// Things worth knowing, e.g. that the asset is deprecated.
    pub warnings: Vec<String>,
}

/// Reads and checks a manifest body, returning it with what its checks established.
async fn checked_manifest(
    state: &AppState,
    body: &Bytes,
) -> ApiResult<(Map<String, Value>, Verified)> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("body", "must be UTF-8 YAML or JSON"))?;
    let manifest =
        manifest::parse(text).map_err(|e| ApiError::bad_request("body", e.to_string()))?;
    let mut trusted = vec![state.manifest_signer().await?.verifying_key()];
    trusted.extend(state.config.registry_trusted_keys.iter().copied());
    match manifest::verify(&manifest, &trusted) {
        Ok(verified) => Ok((manifest, verified)),
        Err(err @ ManifestError::Malformed(_)) => {
            Err(ApiError::bad_request("body", err.to_string()))
        }
        Err(err) => Err(ApiError::invalid(err.field(), err.to_string())),
    }
}

/// Refuses a manifest whose publisher is not among the project's trusted publishers, if it
/// names any.
fn check_publisher(settings: &Map<String, Value>, publisher: Option<&Publisher>) -> ApiResult<()> {
    let trusted = governance::trusted_publishers(settings).map_err(|errors| {
        ApiError::invalid_fields(
            errors
                .into_iter()
                .map(|e| {
                    FieldError::new(
                        e.field,
                        format!("{}; fix the project's settings to import", e.message),
                    )
                })
                .collect(),
        )
    })?;
    if trusted.is_empty() {
        return Ok(());
    }
    match publisher {
        Some(publisher) if trusted.iter().any(|t| t.admits(publisher)) => Ok(()),
        Some(publisher) => Err(ApiError::invalid(
            manifest::PUBLISHER_FIELD,
            format!(
                "the publisher {}/{} is not in the project's {TRUSTED_PUBLISHERS_FIELD}",
                publisher.key_id, publisher.project_id
            ),
        )),
        None => Err(ApiError::invalid(
            manifest::PUBLISHER_FIELD,
            format!(
                "the project imports only manifests signed by one of its \
                 {TRUSTED_PUBLISHERS_FIELD}, and this one names no signed publisher"
            ),
        )),
    }
}

fn text_field(manifest: &Map<String, Value>, key: &str) -> Option<Value> {
    match manifest.get(key)? {
        Value::Number(n) => Some(Value::String(n.to_string())),
        other => Some(other.clone()),
    }
}

fn metadata_of(manifest: &Map<String, Value>) -> ApiResult<Map<String, Value>> {
    match manifest.get("metadata") {
        None => Ok(Map::new()),
        Some(Value::Object(meta)) => Ok(meta.clone()),
        Some(_) => Err(ApiError::invalid("metadata", "must be a mapping")),
    }
}

/// Fields of the create body common to agents and tools.
fn create_body(manifest: &Map<String, Value>, project_id: Uuid, env: &str) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("project_id".into(), json!(project_id));
    body.insert("env".into(), json!(env));
    for (from, to) in [
        ("name", "name"),
        ("version", "release"),
        ("owner", "owner"),
        ("changelog", "changelog"),
        ("deprecated", "deprecated"),
    ] {
        put_opt(&mut body, to, text_field(manifest, from));
    }
    body
}

/// The import result of the created `record`, found at `location`.
fn import_result(record: impl Serialize, location: &str, import: &Import) -> ApiResult<Response> {
    let signed = import.verified.signed_by.is_some();
    let deprecated = import
        .manifest
        .get("deprecated")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let checksum = import.verified.checksum.clone();
    let record = serde_json::to_value(record).map_err(anyhow::Error::from)?;
    let mut warnings = Vec::new();
    if deprecated {
        warnings.push(
            "the imported asset is deprecated; reads and exports of it carry a Deprecation header"
                .to_owned(),
        );
    }
    let names_publisher = import.manifest.contains_key(manifest::PUBLISHER_FIELD);
    match (signed, names_publisher) {
        (false, true) => warnings.push(
            "the manifest names a publisher but is not signed, so the publisher was ignored"
                .to_owned(),
        ),
        (true, false) => warnings.push(
            "the manifest is signed but names no publisher (it was exported before manifests \
             named one)"
                .to_owned(),
        ),
        _ => {}
    }
    let mut response = (
        StatusCode::CREATED,
        Json(ImportResult {
            record,
            checksum_sha256: checksum,
            signed,
            publisher: import.verified.publisher.clone(),
            warnings,
        }),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(with_deprecation(deprecated, response))
}

/// A checked manifest and where it goes.
struct Import {
    project_id: Uuid,
    env: String,
    manifest: Map<String, Value>,
    verified: Verified,
}

/// Authorises an import into the query's project and checks the manifest, and that the
/// project trusts its publisher.
async fn begin_import(
    state: &AppState,
    principal: &Principal,
    query: &ImportQuery,
    body: &Bytes,
) -> ApiResult<Import> {
    let project_id = required_project_id(query.project_id.as_deref())?;
    let access = authorize(state, principal, project_id, Action::WriteRegistry).await?;
    let (manifest, verified) = checked_manifest(state, body).await?;
    check_publisher(&access.project.settings, verified.publisher.as_ref())?;
    if let Some(publisher) = &verified.publisher {
        tracing::info!(
            %project_id,
            publisher_key_id = %publisher.key_id,
            publisher_project_id = %publisher.project_id,
            checksum = %verified.checksum,
            "importing a signed manifest"
        );
    }
    Ok(Import {
        project_id,
        env: query.env.clone().unwrap_or_else(|| "dev".to_owned()),
        manifest,
        verified,
    })
}

/// Parses a create body built from a manifest, so its errors name fields like a `POST` would.
fn create_request<T: serde::de::DeserializeOwned>(create: &Map<String, Value>) -> ApiResult<T> {
    parse_json::<T>(&serde_json::to_vec(create).map_err(anyhow::Error::from)?)
}

/// Imports an agent manifest (YAML or JSON). A present checksum must match and a present
/// signature must verify against a trusted key; a project with `settings.trusted_publishers`
/// takes only manifests signed for one of them. Tools are named and must exist in the project.
#[utoipa::path(
    post, path = "/api/v1/agents/import", tag = "registry",
    security(("bearer" = []), ("api_key" = [])),
    params(ImportQuery),
    request_body(content = String, description = "The manifest, YAML or JSON", content_type = "application/yaml"),
    responses(
        (status = 201, description = "Imported", body = ImportResult),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
        (status = 422, description = "Checksum mismatch, untrusted signature or publisher, or invalid fields", body = Problem),
    )
)]
pub async fn import_agent(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ImportQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    let import = begin_import(&state, &principal, &query, &body).await?;
    let meta = metadata_of(&import.manifest)?;
    if let Some(unknown) = meta.keys().find(|k| !AGENT_METADATA.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            format!("metadata.{unknown}"),
            "is not an agent manifest field",
        ));
    }
    let mut create = create_body(&import.manifest, import.project_id, &import.env);
    for key in AGENT_METADATA.iter().filter(|k| **k != "tools") {
        put_opt(&mut create, key, meta.get(*key).cloned());
    }
    if !create.contains_key("runtime") {
        create.insert("runtime".into(), json!("python"));
    }
    if !create.contains_key("model") {
        let model = query.model.clone().ok_or_else(|| {
            ApiError::invalid(
                "metadata.model",
                "the manifest names no model; pass ?model= to choose one",
            )
        })?;
        create.insert("model".into(), json!(model));
    }
    create.insert(
        "tools".into(),
        json!(resolve_tool_names(&state, import.project_id, meta.get("tools")).await?),
    );
    let request = create_request::<agents::CreateAgent>(&create)?;
    let agent = agents::create(&state, &principal, request).await?;
    let location = format!("/api/v1/agents/{}", agent.id);
    import_result(AgentView::new(agent, state.clock.now()), &location, &import)
}

/// Maps the tool names of an agent manifest to the ids of the project's tools.
async fn resolve_tool_names(
    state: &AppState,
    project_id: Uuid,
    names: Option<&Value>,
) -> ApiResult<Vec<Uuid>> {
    let names = match names {
        None => return Ok(Vec::new()),
        Some(Value::Array(names)) => names,
        Some(_) => {
            return Err(ApiError::invalid(
                "metadata.tools",
                "must be a list of tool names",
            ))
        }
    };
    let mut by_name: HashMap<String, Vec<Uuid>> = HashMap::new();
    let mut start = None;
    loop {
        let page = state
            .store
            .list_tools(project_id, None, None, 200, start)
            .await?;
        for tool in page.items {
            by_name.entry(tool.name).or_default().push(tool.id);
        }
        match page.next {
            Some(next) => start = Some(next),
            None => break,
        }
    }
    let mut errors = Vec::new();
    let mut ids = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let field = format!("metadata.tools[{i}]");
        match name.as_str().map(|n| by_name.get(n).map(Vec::as_slice)) {
            None => errors.fail(field, "must be a tool name"),
            Some(None | Some([])) => errors.fail(field, "no tool of this name in the project"),
            Some(Some([id])) => ids.push(*id),
            Some(Some(_)) => errors.fail(field, "several tools of the project have this name"),
        }
    }
    errors.finish()?;
    Ok(ids)
}

/// Imports a tool manifest (YAML or JSON). A present checksum must match and a present
/// signature must verify against a trusted key; a project with `settings.trusted_publishers`
/// takes only manifests signed for one of them. A manifest without `metadata.kind` becomes a
/// `custom` tool; `metadata` fields other than the tool's own become its `config`.
#[utoipa::path(
    post, path = "/api/v1/tools/import", tag = "registry",
    security(("bearer" = []), ("api_key" = [])),
    params(ImportQuery),
    request_body(content = String, description = "The manifest, YAML or JSON", content_type = "application/yaml"),
    responses(
        (status = 201, description = "Imported", body = ImportResult),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
        (status = 422, description = "Checksum mismatch, untrusted signature or publisher, or invalid fields", body = Problem),
    )
)]
pub async fn import_tool(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ImportQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    let import = begin_import(&state, &principal, &query, &body).await?;
    let mut config = metadata_of(&import.manifest)?;
    let mut create = create_body(&import.manifest, import.project_id, &import.env);
    for key in TOOL_FIELDS {
        put_opt(&mut create, key, config.remove(key));
    }
    create.entry("kind").or_insert_with(|| json!("custom"));
    create.entry("auth_type").or_insert_with(|| json!("none"));
    create.insert("config".into(), Value::Object(config));
    let request = create_request::<tools::CreateTool>(&create)?;
    let tool = tools::create(&state, &principal, request).await?;
    let location = format!("/api/v1/tools/{}", tool.id);
    import_result(ToolView::from(tool), &location, &import)
}

/// Manifest routes served by the agents function.
pub fn agent_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(export_agent))
        .routes(routes!(import_agent))
}

/// Manifest routes served by the tools function.
pub fn tool_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(export_tool))
        .routes(routes!(import_tool))
}
