//! Redrive: moves the messages of the run dead-letter queue back to the run queue, for an
//! operator who fixed what made the worker fail them. `make redrive` runs it against the
//! local services (`spark-ops-dev redrive`); a deployed stack uses SQS's own
//! `aws sqs start-message-move-task --source-arn <DLQ arn>` (see the README).
//!
//! A moved message is sent to the run queue before it is deleted from the dead-letter
//! queue, so a failure in between duplicates it rather than losing it: the worker treats a
//! duplicate as it treats every redelivery.

use anyhow::Context;

use crate::config::Config;

/// How long a message received from the dead-letter queue stays hidden while it is moved.
const MOVE_VISIBILITY_SECONDS: i32 = 60;

/// Moves every message visible in the run dead-letter queue to the run queue; returns how
/// many moved.
pub async fn redrive(sqs: &aws_sdk_sqs::Client, config: &Config) -> anyhow::Result<usize> {
    let dlq = queue_url(sqs, &config.run_dlq_name()).await?;
    let queue = run_queue_url(sqs, config).await?;
    let mut moved = 0;
    loop {
        let received = sqs
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .visibility_timeout(MOVE_VISIBILITY_SECONDS)
            .wait_time_seconds(1)
            .send()
            .await
            .context("Failed to receive from the run dead-letter queue")?;
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(moved);
        }
        for message in messages {
            let (Some(body), Some(receipt)) = (message.body, message.receipt_handle) else {
                continue;
            };
            sqs.send_message()
                .queue_url(&queue)
                .message_body(body)
                .send()
                .await
                .context("Failed to send a message back to the run queue")?;
            sqs.delete_message()
                .queue_url(&dlq)
                .receipt_handle(receipt)
                .send()
                .await
                .context("Failed to delete a moved message from the run dead-letter queue")?;
            moved += 1;
        }
    }
}

/// The run queue's URL: configured, or looked up by its name.
pub async fn run_queue_url(sqs: &aws_sdk_sqs::Client, config: &Config) -> anyhow::Result<String> {
    match &config.run_queue_url {
        Some(url) => Ok(url.clone()),
        None => queue_url(sqs, &config.run_queue_name()).await,
    }
}

/// The URL of the queue named `name`.
pub(crate) async fn queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> anyhow::Result<String> {
    sqs.get_queue_url()
        .queue_name(name)
        .send()
        .await
        .with_context(|| format!("Failed to find queue {name}"))?
        .queue_url
        .with_context(|| format!("queue {name} has no URL"))
}
