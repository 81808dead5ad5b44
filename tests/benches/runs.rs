//! Benchmark of the run engine on the local services (DynamoDB, SQS, Step Functions).
//!
//! `BENCH_RUNS` runs (default 30) of a three-step workflow — a prompt (fake LLM), a decision on
//! its answer, a tool call (fake API) — are started through the API, `BENCH_CONCURRENCY` create
//! requests at a time (default 10), and executed by `BENCH_WORKERS` polling run workers
//! (default 4) in this process. It prints:
//!
//! - runs per minute, from the first create request to the last run ended;
//! - p50 and p95 run latency: `created_at → ended_at` of the records, and as observed
//!   (create request sent → terminal status seen, polled every 50 ms); and of the create
//!   request alone;
//! - Step Functions state transitions per run, from each execution's history;
//! - DynamoDB requests per run (API and workers share the counted client), by operation.
//!
//! Run with `cargo bench -p spark-ops-tests --bench runs` while the local services run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use spark_ops::engine::lifecycle::execution_arn;
use spark_ops::engine::worker::Worker;
use spark_ops::run::RunStatus;
use spark_ops::store::Store;
use spark_ops_tests::{dynamodb_url, local_sdk_config, spawn_app, TestApp};
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// The `q`-quantile (nearest rank) of sorted `values`.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One finished run.
struct Finished {
    id: Uuid,
    create: Duration,
    observed: Duration,
    recorded: Duration,
}

/// Registers a tool, an agent and a released three-step workflow; returns the token and the
/// body of a create request.
async fn setup(app: &TestApp, llm: &MockServer, api: &MockServer) -> (String, Value) {
    let token = app.user("Bench").await;
    let project = app.project(&token, "Bench runs").await;
    let tool = app
        .post(
            "/api/v1/tools",
            Some(&token),
            json!({"project_id": project, "name": "Refunds", "kind": "http", "auth_type": "none",
                   "env": "dev", "config": {"url": format!("{}/refunds", api.uri()), "method": "POST"}}),
        )
        .await;
    assert_eq!(tool.status, 201, "tool: {}", tool.text);
    let agent = app
        .post(
            "/api/v1/agents",
            Some(&token),
            json!({"project_id": project, "name": "Bench agent", "runtime": "python",
                   "model": "gpt-4o-mini", "env": "dev",
                   "llm": {"base_url": format!("{}/v1", llm.uri()), "api_key": "sk-bench"}}),
        )
        .await;
    assert_eq!(agent.status, 201, "agent: {}", agent.text);
    let workflow = app
        .post(
            "/api/v1/workflows",
            Some(&token),
            json!({"project_id": project, "name": "Refund triage", "definition": {"steps": [
                {"id": "classify", "type": "prompt",
                 "config": {"prompt": "Classify: {{ input.message }}"}},
                {"id": "route", "type": "decision", "depends_on": ["classify"],
                 "config": {"condition": "steps.classify.output.text == 'refund'",
                            "then": ["refund"]}},
                {"id": "refund", "type": "tool", "depends_on": ["route"],
                 "config": {"tool_id": tool.body["id"], "input": {"order": "{{ input.order }}"}}},
            ]}}),
        )
        .await;
    assert_eq!(workflow.status, 201, "workflow: {}", workflow.text);
    let workflow_id = workflow.body["id"]
        .as_str()
        .expect("workflow id")
        .to_owned();
    let version = app
        .post(
            &format!("/api/v1/workflows/{workflow_id}/versions"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(version.status, 201, "version: {}", version.text);
    let released = app
        .patch(
            &format!("/api/v1/workflows/{workflow_id}/versions/1"),
            &token,
            json!({"status": "released"}),
        )
        .await;
    assert_eq!(released.status, 200, "release: {}", released.text);
    let body = json!({"workflow_id": workflow_id, "agent_id": agent.body["id"], "env": "dev",
                      "input": {"message": "I want my money back", "order": "o-1"}});
    (token, body)
}

/// Creates `n` runs, `concurrency` requests at a time, and waits for them all to end.
async fn run_batch(
    app: &TestApp,
    observer: &Store,
    token: &str,
    body: &Value,
    n: usize,
    concurrency: usize,
) -> Vec<Finished> {
    let started: Vec<(Uuid, Instant, Duration)> = futures::stream::iter(0..n)
        .map(|_| async {
            let sent = Instant::now();
            let reply = app.post("/api/v1/runs", Some(token), body.clone()).await;
            assert_eq!(reply.status, 201, "create run: {}", reply.text);
            let id = reply.body["id"]
                .as_str()
                .and_then(|id| Uuid::parse_str(id).ok())
                .expect("run id");
            (id, sent, sent.elapsed())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut pending = started;
    let mut finished = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} runs did not end within 300 s",
            pending.len()
        );
        let mut still = Vec::new();
        for (id, sent, create) in pending {
            let run = observer
                .get_run(id)
                .await
                .expect("read run")
                .expect("run exists");
            if run.status.is_terminal() {
                assert_eq!(
                    run.status,
                    RunStatus::Succeeded,
                    "run {id} ended {:?}: {:?}",
                    run.status,
                    run.error_message
                );
                let ended = run.ended_at.expect("ended_at of a terminal run");
                finished.push(Finished {
                    id,
                    create,
                    observed: sent.elapsed(),
                    recorded: (ended - run.created_at).to_std().unwrap_or_default(),
                });
            } else {
                still.push((id, sent, create));
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    finished
}

/// `(StateEntered events, all events)` of a run's execution.
async fn transitions(sfn: &aws_sdk_sfn::Client, machine: &str, run: Uuid) -> (usize, usize) {
    let arn = execution_arn(machine, run);
    let (mut entered, mut total) = (0, 0);
    let mut next = None;
    loop {
        let page = sfn
            .get_execution_history()
            .execution_arn(&arn)
            .max_results(1000)
            .set_next_token(next)
            .send()
            .await
            .expect("execution history");
        for event in page.events() {
            total += 1;
            if event.r#type().as_str().ends_with("StateEntered") {
                entered += 1;
            }
        }
        next = page.next_token().map(str::to_owned);
        if next.is_none() {
            return (entered, total);
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n = env_usize("BENCH_RUNS", 30);
    let concurrency = env_usize("BENCH_CONCURRENCY", 10);
    let workers = env_usize("BENCH_WORKERS", 4);

    let app = spawn_app().await;
    // Run records take their times from the app's clock: keep it on real time.
    let clock = app.clock.clone();
    let ticker = tokio::spawn(async move {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let now = Instant::now();
            let elapsed = chrono::Duration::from_std(now - last).unwrap_or_default();
            clock.advance(elapsed);
            last = now;
        }
    });

    let llm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"role": "assistant", "content": "refund"}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 5},
        })))
        .mount(&llm)
        .await;
    let api = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/refunds"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"refund_id": "r-1"})))
        .mount(&api)
        .await;
    let (token, body) = setup(&app, &llm, &api).await;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut pollers = Vec::new();
    for _ in 0..workers {
        let worker = Worker::new(app.state.clone()).await.expect("worker");
        let mut stopped = stopped.clone();
        pollers.push(tokio::spawn(async move {
            worker
                .run(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await
        }));
    }

    // Reads run status outside the counted client.
    let sdk = local_sdk_config().await;
    let observer = Store::new(
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk)
                .endpoint_url(dynamodb_url())
                .build(),
        ),
        &app.state.config,
    );

    // Warm-up: connections, caches, the first Step Functions execution.
    run_batch(&app, &observer, &token, &body, 2, 2).await;

    app.ddb_requests.reset();
    let wall = Instant::now();
    let mut finished = run_batch(&app, &observer, &token, &body, n, concurrency).await;
    let wall = wall.elapsed();
    let ddb = app.ddb_requests.count();
    let operations = app.ddb_requests.operations();

    let _ = stop.send(true);
    for poller in pollers {
        let _ = poller.await;
    }
    ticker.abort();

    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let machine = app
        .state
        .config
        .run_state_machine_arn
        .clone()
        .expect("state machine");
    let (mut entered, mut events) = (Vec::new(), Vec::new());
    for run in &finished {
        let (e, t) = transitions(&sfn, &machine, run.id).await;
        entered.push(e);
        events.push(t);
    }

    finished.sort_by_key(|f| f.recorded);
    let recorded: Vec<Duration> = finished.iter().map(|f| f.recorded).collect();
    let mut observed: Vec<Duration> = finished.iter().map(|f| f.observed).collect();
    observed.sort();
    let mut creates: Vec<Duration> = finished.iter().map(|f| f.create).collect();
    creates.sort();
    let per_run = |total: usize| total as f64 / n as f64;
    let mut by_operation: BTreeMap<String, usize> = BTreeMap::new();
    for op in operations {
        *by_operation.entry(op).or_default() += 1;
    }

    println!(
        "runs: {n} of a 3-step workflow (prompt → decision → tool), {concurrency} create requests at a time, {workers} workers"
    );
    println!(
        "throughput: {:.1} runs/minute ({:.2} s for all)",
        n as f64 / wall.as_secs_f64() * 60.0,
        wall.as_secs_f64()
    );
    println!(
        "latency created_at → ended_at: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        ms(quantile(&recorded, 0.50)),
        ms(quantile(&recorded, 0.95)),
        ms(quantile(&recorded, 1.0)),
    );
    println!(
        "latency observed (request → terminal seen): p50 {:.0} ms, p95 {:.0} ms",
        ms(quantile(&observed, 0.50)),
        ms(quantile(&observed, 0.95)),
    );
    println!(
        "POST /api/v1/runs (store + StartExecution): p50 {:.0} ms, p95 {:.0} ms",
        ms(quantile(&creates, 0.50)),
        ms(quantile(&creates, 0.95)),
    );
    println!(
        "Step Functions per run: {:.1} state transitions (StateEntered, min {} max {}), {:.1} history events",
        per_run(entered.iter().sum()),
        entered.iter().min().copied().unwrap_or_default(),
        entered.iter().max().copied().unwrap_or_default(),
        per_run(events.iter().sum()),
    );
    println!(
        "DynamoDB requests per run: {:.1} (API + workers)",
        per_run(ddb)
    );
    for (op, count) in &by_operation {
        println!("  {op}: {:.2}/run", per_run(*count));
    }
}
