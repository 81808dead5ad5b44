//! Benchmark of the scheduler's tick on the local services: `BENCH_SCHEDULES` active cron
//! schedules (default 10,000), all due, are written straight to the store; then one tick is
//! timed until every fire is claimed and sent to the fire queue. It prints the wall time,
//! fires per second, and DynamoDB requests per fire, by operation (the app's counted
//! client).
//!
//! Run with `make bench-scheduler` (or `cargo bench -p spark-ops-tests --bench scheduler`)
//! while the local services run.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{Duration, DurationRound};
use futures::StreamExt;
use serde_json::json;
use spark_ops::domain::Env;
use spark_ops::schedule::{
    OverlapPolicy, Schedule, ScheduleStatus, ScheduleType, DEFAULT_CATCHUP_WINDOW_SECONDS,
};
use spark_ops::scheduler;
use spark_ops_tests::spawn_app;
use uuid::Uuid;

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("BENCH_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(10_000);
    let app = spawn_app().await;
    let now = app.state.clock.now();
    let slot = now.duration_trunc(Duration::minutes(1)).unwrap();
    let (project_id, owner) = (Uuid::now_v7(), Uuid::now_v7());
    let schedule = |_| Schedule {
        id: Uuid::now_v7(),
        project_id,
        name: "bench".into(),
        kind: ScheduleType::Cron,
        expression: "* * * * *".into(),
        timezone: "UTC".into(),
        target_workflow_id: Uuid::now_v7(),
        workflow_version: None,
        agent_id: Uuid::now_v7(),
        env: Env::Dev,
        input: json!({}),
        metadata: json!({}),
        status: ScheduleStatus::Active,
        overlap_policy: OverlapPolicy::Skip,
        catchup_window_seconds: DEFAULT_CATCHUP_WINDOW_SECONDS,
        next_run_at: Some(slot),
        due_at: Some(slot),
        buffered: None,
        in_flight: None,
        claimed_at: None,
        last_run_at: None,
        last_run_id: None,
        owner_user_id: owner,
        created_at: now,
        updated_at: now,
        version: 1,
    };
    let started = Instant::now();
    let writes: Vec<_> = (0..count)
        .map(schedule)
        .map(|s| {
            let store = app.state.store.clone();
            async move { store.create_schedule(&s).await }
        })
        .collect();
    futures::stream::iter(writes)
        .buffer_unordered(64)
        .for_each(|written| async move { written.expect("a schedule is stored") })
        .await;
    println!(
        "stored {count} due schedules in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    app.ddb_requests.reset();
    let started = Instant::now();
    let report = scheduler::tick(&app.state).await.expect("the tick runs");
    let elapsed = started.elapsed();
    let requests = app.ddb_requests.count();
    let mut by_operation: BTreeMap<String, usize> = BTreeMap::new();
    for operation in app.ddb_requests.operations() {
        *by_operation.entry(operation).or_default() += 1;
    }
    assert_eq!(report.enqueued, count, "{report:?}");
    println!(
        "one tick: {} due, {} claimed, {} enqueued in {:.2} s ({:.0} fires/s)",
        report.due,
        report.claimed,
        report.enqueued,
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
    println!(
        "DynamoDB requests: {requests} ({:.3} per fire)",
        requests as f64 / count as f64
    );
    for (operation, n) in by_operation {
        println!(
            "  {operation}: {n} ({:.3} per fire)",
            n as f64 / count as f64
        );
    }
    // The fires are not started here; the queue is emptied so nothing lingers.
    if let Some(queue) = &app.state.config.fire_queue_url {
        let _ = app
            .state
            .clients
            .sqs
            .purge_queue()
            .queue_url(queue)
            .send()
            .await;
    }
}
