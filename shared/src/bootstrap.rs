//! Start-up wiring shared by every binary, so each `main` stays a few lines.

use tracing_subscriber::EnvFilter;

/// Installs JSON logging to stdout, filtered by `RUST_LOG` (default `info`). Span fields such
/// as the request id are carried on every line.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .try_init();
}

/// Serves `router` as a Lambda function behind API Gateway.
pub async fn run_lambda(router: axum::Router) -> Result<(), lambda_http::Error> {
    lambda_http::run(router).await
}

/// The whole `main` of an API function: logging, configuration, AWS clients and keys are set
/// up once per cold start, then every invocation only borrows them through the router
/// `router` builds.
pub async fn serve_api(
    router: fn(crate::AppState) -> axum::Router,
) -> Result<(), lambda_http::Error> {
    init_tracing();
    let state = crate::AppState::from_env().await?;
    run_lambda(router(state)).await
}
