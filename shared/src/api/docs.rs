//! The OpenAPI document and an offline docs page (Swagger UI, vendored into the binary).
//!
//! The docs page runs scripts in the caller's browser, on the API's origin, so its responses
//! carry a Content-Security-Policy that lets it load only its own files from this origin and
//! call only this origin: nothing remote, no inline scripts, no framing.

use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::Router;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::error::PROBLEM_JSON;
use crate::state::AppState;

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";
/// Where the docs page is served.
pub const DOCS_PATH: &str = "/docs";
/// What the docs page may load: its own scripts, styles, images and fonts, and requests to
/// this origin (the document and "try it out"). Swagger UI sets inline `style` attributes,
/// hence `'unsafe-inline'` for styles only; its icons are `data:` images.
pub const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
     connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Spark-Ops control plane",
        description = "Register agents and tools, run workflows, and govern every run, step, tool call and dollar."
    ),
    modifiers(&Security),
    tags(
        (name = "auth", description = "Users, sessions and tokens"),
        (name = "projects", description = "Projects, the tenant boundary"),
        (name = "members", description = "Who belongs to a project, with which role"),
        (name = "api-keys", description = "Project-scoped keys for programs"),
        (name = "agents", description = "Agents, their heartbeats and health"),
        (name = "tools", description = "Tools, their schemas and write-only credentials"),
        (name = "workflows", description = "Workflow DAGs and their immutable versions"),
        (name = "registry", description = "Signed manifests"),
        (name = "runs", description = "Runs of workflows: lifecycle, steps, logs, cost"),
        (name = "events", description = "The event bus: tenants' events, which event schedules match"),
        (name = "schedules", description = "Cron schedules that start runs, their previews and fires"),
        (name = "platform", description = "Health and documentation"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT access token or API key")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The document's info, tags and security schemes; the paths come from the routers.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The responses every API route shares, whatever its own annotation lists (see
/// [`super::service`] and [`super::extract`]): `400` for a request that cannot be read, `401`
/// where credentials are required, and `413`, `415` and `422` where a JSON body is taken.
/// Problems are served as `application/problem+json`, so every problem response is
/// documented with that content type.
pub fn apply_conventions(openapi: &mut utoipa::openapi::OpenApi) {
    for (path, item) in openapi.paths.paths.iter_mut() {
        if !path.starts_with("/api/") {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            shared_responses(operation);
        }
    }
}

fn shared_responses(operation: &mut Operation) {
    let takes_body = operation.request_body.is_some();
    let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let shared = [
        (true, "400", "The request cannot be read: a malformed path parameter, query string, header or JSON body"),
        (secured, "401", "Missing, expired or revoked credentials"),
        (takes_body, "413", "The body is larger than the API accepts"),
        (takes_body, "415", "The body is not `application/json`"),
        (takes_body, "422", "Invalid values; `errors` names each field"),
    ];
    let responses = &mut operation.responses.responses;
    for (applies, status, description) in shared {
        if applies && !responses.contains_key(status) {
            let problem = ResponseBuilder::new().description(description).build();
            responses.insert(status.to_owned(), RefOr::T(problem));
        }
    }
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        if status.as_str() < "400" {
            continue;
        }
        let json = response.content.shift_remove("application/json");
        let schema = json
            .and_then(|content| content.schema)
            .unwrap_or_else(|| RefOr::Ref(Ref::from_schema_name("Problem")));
        response.content.insert(
            PROBLEM_JSON.to_owned(),
            ContentBuilder::new().schema(Some(schema)).build(),
        );
    }
}

/// Serves the OpenAPI document and the docs page. Swagger UI's online validator is off: it
/// would send the document's address to a third party.
pub fn router() -> Router<AppState> {
    Router::from(
        SwaggerUi::new(DOCS_PATH)
            .url(OPENAPI_PATH, super::openapi())
            .config(Config::default().validator_url("none")),
    )
    .layer(axum::middleware::map_response(content_security_policy))
}

async fn content_security_policy(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CONTENT_SECURITY_POLICY),
    );
    response
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::error::PROBLEM_JSON;

    #[test]
    fn every_operation_documents_the_shared_problems_as_problem_json() {
        let doc = serde_json::to_value(super::super::openapi()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            if !path.starts_with("/api/") {
                continue;
            }
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                let has = |status: &str| responses.contains_key(status);
                assert!(has("400"), "{method} {path}: 400");
                if operation["security"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty())
                {
                    assert!(has("401"), "{method} {path}: 401");
                }
                if operation.get("requestBody").is_some() {
                    for status in ["413", "415", "422"] {
                        assert!(has(status), "{method} {path}: {status}");
                    }
                }
                for (status, response) in responses {
                    if status.as_str() >= "400" {
                        let content = response["content"].as_object().unwrap();
                        let types: Vec<&String> = content.keys().collect();
                        assert_eq!(types, vec![PROBLEM_JSON], "{method} {path} {status}");
                        assert_eq!(
                            content[PROBLEM_JSON]["schema"]["$ref"],
                            Value::from("#/components/schemas/Problem"),
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
    }
}
