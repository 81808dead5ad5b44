//! The OpenAPI document and an offline docs page (Swagger UI, vendored into the binary).
//!
//! The docs page runs scripts in the caller's browser, on the API's origin, so its responses
//! carry a Content-Security-Policy that lets it load only its own files from this origin and
//! call only this origin: nothing remote, no inline scripts, no framing.

use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

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
