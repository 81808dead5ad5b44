//! Lambda function consuming the scheduler queue (ticks from the EventBridge rule) and the
//! fire queue (fires to start), with partial batch failures (`ReportBatchItemFailures`);
//! see `spark_ops::scheduler`.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, LambdaEvent};
use spark_ops::{bootstrap, scheduler, AppState};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    // Set up once per cold start. The scheduler serves no API requests, so it never reads
    // the JWT signing key.
    bootstrap::init_tracing();
    let state = &AppState::from_env_without_keys().await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, lambda_runtime::Error>(
            scheduler::handle_event(state, event.payload).await,
        )
    }))
    .await
}
