//! Lambda function consuming the run queue: the lifecycle's tasks, handled by the
//! invocation's deadline and reported back with partial batch failures
//! (`ReportBatchItemFailures`).

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, LambdaEvent};
use spark_ops::engine::budget::Deadline;
use spark_ops::engine::worker::Worker;
use spark_ops::{bootstrap, AppState};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    // Set up once per cold start; invocations only borrow it. The worker serves no API
    // requests, so it never reads the JWT signing key.
    bootstrap::init_tracing();
    let state = AppState::from_env_without_keys().await?;
    let worker = &Worker::new(state).await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline = Deadline::of_lambda(event.context.deadline);
        Ok::<SqsBatchResponse, lambda_runtime::Error>(
            worker.handle_event_until(event.payload, deadline).await,
        )
    }))
    .await
}
