//! `GET /health`: readiness of each dependency. No authentication.
//!
//! Anyone may ask, so the answer says only `ok` or `degraded` per dependency; why a check
//! failed (AWS error text names tables, queues, accounts) goes to the log. One check of every
//! dependency serves all callers for [`CACHE_FOR`]: concurrent callers wait for the check in
//! progress rather than starting their own, so callers cannot make the API hammer AWS.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use tokio::sync::Mutex;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

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
    fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

/// The last health report and when it was made; one per process, shared by every request.
#[derive(Debug, Default)]
pub struct HealthCache(Mutex<Option<(Instant, Health)>>);

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

/// Reports whether DynamoDB, SQS, Secrets Manager and the run lifecycle state machine are
/// ready, as `ok` or `degraded` each; the report may be up to 5 s old.
#[utoipa::path(
    get,
    path = "/health",
    tag = "platform",
    responses(
        (status = 200, description = "Every dependency is ready", body = Health),
        (status = 503, description = "A dependency is not ready", body = Health),
    )
)]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let health = {
        let mut cached = state.health.0.lock().await;
        match cached.as_ref() {
            Some((at, health)) if at.elapsed() < CACHE_FOR => health.clone(),
            _ => {
                let health = check(&state).await;
                *cached = Some((Instant::now(), health.clone()));
                health
            }
        }
    };
    let status = if health.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health))
}

/// Checks every dependency at once.
async fn check(state: &AppState) -> Health {
    let dynamodb = async {
        for table in state.store.table_names() {
            state
                .clients
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
                })?;
        }
        Ok::<_, String>(())
    };
    let sqs = state
        .clients
        .sqs
        .get_queue_url()
        .queue_name(state.config.run_queue_name())
        .send();
    let secrets = state
        .clients
        .secrets
        .describe_secret()
        .secret_id(state.config.jwt_secret_name())
        .send();
    let stepfunctions = async {
        let arn = state
            .config
            .run_state_machine_arn
            .as_deref()
            .ok_or_else(|| "RUN_STATE_MACHINE_ARN is not set".to_owned())?;
        state
            .clients
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

/// The platform routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}
