//! HTTP API: one module per resource, each exposing its routes; [`service`] wraps them with
//! the conventions every route shares (request ids, logging, CORS, body limit, `nosniff`,
//! problem errors).

pub mod agents;
pub mod api_keys;
pub mod auth;
pub mod client_addr;
pub mod credentials;
pub mod docs;
pub mod events;
pub mod extract;
pub mod health;
pub mod hooks;
pub mod invitations;
pub mod manifests;
pub mod members;
pub mod projects;
pub mod registry;
pub mod request_id;
pub mod runs;
pub mod schedules;
pub mod sessions;
pub mod tools;
pub mod workflows;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::state::AppState;
use extract::MAX_BODY_BYTES;
use request_id::{ClientRequestId, MakeRequestUuidV7, X_REQUEST_ID};

/// A page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Routes of the `auth` function.
pub fn auth_routes() -> OpenApiRouter<AppState> {
    auth::routes()
}

/// Routes of the `projects` function: projects, members, API keys, and the platform routes
/// (health, OpenAPI, docs).
pub fn projects_routes() -> OpenApiRouter<AppState> {
    projects::routes()
        .merge(members::routes())
        .merge(api_keys::routes())
        .merge(health::routes())
}

/// Routes of the `agents` function: agents, their manifests, and the registry public key.
pub fn agents_routes() -> OpenApiRouter<AppState> {
    agents::routes()
        .merge(manifests::agent_routes())
        .merge(registry::routes())
}

/// Routes of the `tools` function: tools and their manifests, and the project credentials
/// webhook steps send.
pub fn tools_routes() -> OpenApiRouter<AppState> {
    tools::routes()
        .merge(manifests::tool_routes())
        .merge(credentials::routes())
}

/// Routes of the `workflows` function: workflows and their versions.
pub fn workflows_routes() -> OpenApiRouter<AppState> {
    workflows::routes()
}

/// Routes of the `runs` function: runs, their steps and logs, the schedules that start them,
/// tenants' events (which start runs through event schedules) and signed inbound webhooks.
pub fn runs_routes() -> OpenApiRouter<AppState> {
    runs::routes()
        .merge(schedules::routes())
        .merge(events::routes())
        .merge(hooks::routes())
}

/// Every route, i.e. the union of every function's; what the dev server mounts.
pub fn all_routes() -> OpenApiRouter<AppState> {
    auth_routes()
        .merge(projects_routes())
        .merge(agents_routes())
        .merge(tools_routes())
        .merge(workflows_routes())
        .merge(runs_routes())
}

/// The OpenAPI document of every route, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut api) = OpenApiRouter::with_openapi(docs::base())
        .merge(all_routes())
        .split_for_parts();
    docs::apply_conventions(&mut api);
    api
}

/// The router of the `auth` function.
pub fn auth_router(state: AppState) -> Router {
    service(state, auth_routes().split_for_parts().0)
}

/// The router of the `projects` function, which also serves health and docs.
pub fn projects_router(state: AppState) -> Router {
    service(
        state,
        projects_routes().split_for_parts().0.merge(docs::router()),
    )
}

/// The router of the `agents` function.
pub fn agents_router(state: AppState) -> Router {
    service(state, agents_routes().split_for_parts().0)
}

/// The router of the `tools` function.
pub fn tools_router(state: AppState) -> Router {
    service(state, tools_routes().split_for_parts().0)
}

/// The router of the `workflows` function.
pub fn workflows_router(state: AppState) -> Router {
    service(state, workflows_routes().split_for_parts().0)
}

/// The router of the `runs` function.
pub fn runs_router(state: AppState) -> Router {
    service(state, runs_routes().split_for_parts().0)
}

/// The whole API on one router; what the dev server serves.
pub fn app(state: AppState) -> Router {
    service(
        state,
        all_routes().split_for_parts().0.merge(docs::router()),
    )
}

/// Applies the shared conventions to a set of routes.
pub fn service(state: AppState, router: Router<AppState>) -> Router {
    let cors = cors(&state.config.cors_allowed_origins);
    router
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(
            ServiceBuilder::new()
                .map_request(request_id::take_client_request_id)
                .layer(SetRequestIdLayer::new(
                    X_REQUEST_ID.clone(),
                    MakeRequestUuidV7,
                ))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|req: &Request<_>| {
                            let request_id = req
                                .headers()
                                .get(&X_REQUEST_ID)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default();
                            let client_request_id = req
                                .extensions()
                                .get::<ClientRequestId>()
                                .map(|c| c.0.as_str());
                            tracing::info_span!(
                                "request",
                                request_id = %request_id,
                                client_request_id,
                                method = %req.method(),
                                path = %req.uri().path(),
                                principal = tracing::field::Empty,
                            )
                        })
                        .on_response(DefaultOnResponse::new().level(Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
                }))
                .layer(cors),
        )
        .layer(axum::middleware::map_response(no_sniff))
        .with_state(state)
}

/// Tells browsers to trust every response's `Content-Type` rather than guess it.
async fn no_sniff(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            header::ETAG,
            header::RETRY_AFTER,
            header::LOCATION,
            HeaderName::from_static("deprecation"),
        ])
        .max_age(Duration::from_secs(600))
}

/// A `201 Created` with the new record's `Location` and `ETag`.
pub fn created(location: &str, version: u64, body: impl Serialize) -> Response {
    let mut response = with_etag(version, (StatusCode::CREATED, axum::Json(body)));
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Adds an `ETag` carrying a record's version to a response.
pub fn with_etag(version: u64, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}
