//! Readiness of each dependency, as `/health` reports it.
//!
//! Anyone may ask, so a report says only `ok` or `degraded` per dependency; why a check
//! failed (AWS error text names tables, queues, accounts) goes to the log. One check of every
//! dependency serves all callers for [`CACHE_FOR`] ([`HealthCache`]), so callers cannot make
//! the API hammer AWS.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Mutex;
use utoipa::ToSchema;

use crate::clients::Clients;
use crate::config::Config;
use crate::store::Store;

/// How long one dependency may take to answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a health report is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(5);

/// Readiness of one dependency.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Check {
    /// `ok` or `degraded`.
    pub status: &'static str,
    /// How long the check took.
    pub latency_ms: u64,
}

/// The health report.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` when every dependency is ready, else `degraded`.
    pub status: &'static str,
    /// Each dependency by name: `dynamodb`, `sqs`, `secretsmanager`, `stepfunctions`.
    pub checks: BTreeMap<&'static str, Check>,
}

impl Health {
    /// Whether every dependency is ready.
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

/// The last health report and when it was made; one per process, shared by every request.
#[derive(Debug, Default)]
pub struct HealthCache(Mutex<Option<(Instant, Health)>>);

impl HealthCache {
    /// The report of the last [`CACHE_FOR`], or a fresh one from `check`. Concurrent callers
    /// wait for the check in progress rather than starting their own.
    pub async fn get(&self, check: impl std::future::Future<Output = Health>) -> Health {
        let mut cached = self.0.lock().await;
        match cached.as_ref() {
            Some((at, health)) if at.elapsed() < CACHE_FOR => health.clone(),
            _ => {
                let health = check.await;
                *cached = Some((Instant::now(), health.clone()));
                health
            }
        }
    }
}

async fn timed<F, T, E>(name: &'static str, check: F) -> Check
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, check).await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let error = match outcome {
        Ok(Ok(_)) => None,
        Ok(Err(err)) => Some(err.to_string()),
        Err(_) => Some(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
    };
    if let Some(error) = &error {
        tracing::warn!(dependency = name, %error, latency_ms, "health check failed");
    }
    Check {
        status: if error.is_none() { "ok" } else { "degraded" },
        latency_ms,
    }
}

/// Checks every dependency at once.
pub async fn check(clients: &Clients, store: &Store, config: &Config) -> Health {
    // The tables are described at once, so the check takes one round trip, not four.
    let dynamodb =
        futures_util::future::try_join_all(store.table_names().map(|table| async move {
            clients
                .ddb
                .describe_table()
                .table_name(table)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "table {table}: {}",
                        aws_sdk_dynamodb::error::DisplayErrorContext(e)
                    )
                })
        }));
    let sqs = clients
        .sqs
        .get_queue_url()
        .queue_name(config.run_queue_name())
        .send();
    let secrets = clients
        .secrets
        .describe_secret()
        .secret_id(config.jwt_secret_name())
        .send();
    let stepfunctions = async {
        let arn = config
            .run_state_machine_arn
            .as_deref()
            .ok_or_else(|| "RUN_STATE_MACHINE_ARN is not set".to_owned())?;
        clients
            .sfn
            .describe_state_machine()
            .state_machine_arn(arn)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_sdk_sfn::error::DisplayErrorContext(e).to_string())
    };
    let (dynamodb, sqs, secrets, stepfunctions) = tokio::join!(
        timed("dynamodb", dynamodb),
        timed("sqs", async {
            sqs.await
                .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())
        }),
        timed("secretsmanager", async {
            secrets
                .await
                .map_err(|e| aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string())
        }),
        timed("stepfunctions", stepfunctions),
    );
    let checks = BTreeMap::from([
        ("dynamodb", dynamodb),
        ("sqs", sqs),
        ("secretsmanager", secrets),
        ("stepfunctions", stepfunctions),
    ]);
    let ready = checks.values().all(|c| c.status == "ok");
    Health {
        status: if ready { "ok" } else { "degraded" },
        checks,
    }
}
