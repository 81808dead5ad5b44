//! Lambda function run by an EventBridge rule on a rate: one sweep of stuck runs and deleted
//! projects per invocation (see `spark_ops::engine::sweeper`).

use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;
use spark_ops::engine::sweeper;
use spark_ops::{bootstrap, AppState};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    // Set up once per cold start. The sweeper serves no API requests, so it never reads the
    // JWT signing key.
    bootstrap::init_tracing();
    let state = &AppState::from_env_without_keys().await?;
    lambda_runtime::run(service_fn(move |_: LambdaEvent<Value>| async move {
        let report = sweeper::sweep(state).await?;
        Ok::<Value, lambda_runtime::Error>(serde_json::to_value(report)?)
    }))
    .await
}
