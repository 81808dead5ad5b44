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
