//! Lambda function serving `/api/v1/runs/*`: runs, their steps and logs.

use spark_ops::{api, bootstrap, AppState};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    // Everything below runs once per cold start; handlers only borrow it.
    bootstrap::init_tracing();
    let state = AppState::from_env().await?;
    bootstrap::run_lambda(api::runs_router(state)).await
}
