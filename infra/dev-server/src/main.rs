//! The local control plane: provisions the resources on the local AWS services, then serves
//! every router on one port (`PORT`, default 3000) with the same code the Lambda functions run,
//! and runs the run worker's queue loops in the same process (`RUN_WORKER_LOOPS`, default 4;
//! `RUN_WORKER_ENABLED=false` turns them off, for a worker run elsewhere) and the sweeper
//! every `SWEEPER_INTERVAL_SECONDS` (default 60; `0` turns it off). It also runs the
//! scheduler as deployed (`SCHEDULER_ENABLED=false` turns it off): the EventBridge rule
//! `{prefix}-scheduler-tick` sends a tick to the scheduler queue every minute, and the
//! process consumes the scheduler, fire and trigger queues.
//!
//! `spark-ops-dev redrive` instead moves the run dead-letter queue's messages back to the run
//! queue and exits (`make redrive`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use spark_ops::clock::SystemClock;
use spark_ops::engine::worker::Worker;
use spark_ops::engine::{redrive, sweeper};
use spark_ops::state::Clients;
use spark_ops::store::provision::{provision, Provisioner};
use spark_ops::store::schema;
use spark_ops::{api, bootstrap, scheduler, AppState, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bootstrap::init_tracing();
    let mut config = Config::from_env()?;
    let port: u16 = match std::env::var("PORT") {
        Ok(raw) => raw
            .parse()
            .with_context(|| format!("PORT must be a port number, got {raw:?}"))?,
        Err(_) => 3000,
    };
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let clients = Clients::new(&sdk);
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("redrive") => {
            let moved = redrive::redrive(&clients.sqs, &config).await?;
            println!("moved {moved} message(s) from the run dead-letter queue to the run queue");
            return Ok(());
        }
        Some(other) => anyhow::bail!("unknown command {other:?}; the only one is `redrive`"),
    }
    let sweep_every: u64 = match std::env::var("SWEEPER_INTERVAL_SECONDS") {
        Ok(raw) => raw.parse().with_context(|| {
            format!("SWEEPER_INTERVAL_SECONDS must be a number of seconds, got {raw:?}")
        })?,
        Err(_) => 60,
    };
    provision(&clients, &mut config)
        .await
        .context("Failed to provision the local resources; are the local services running?")?;
    refuse_stuck_indexes(&clients, &config).await?;
    let worker_loops: usize = match std::env::var("RUN_WORKER_LOOPS") {
        Ok(raw) => raw
            .parse()
            .ok()
            .filter(|n| (0..=64).contains(n))
            .with_context(|| {
                format!("RUN_WORKER_LOOPS must be a number from 0 to 64, got {raw:?}")
            })?,
        Err(_) => 4,
    };
    let worker_loops = match std::env::var("RUN_WORKER_ENABLED").as_deref() {
        Ok("false" | "0" | "no") => 0,
        Ok("true" | "1" | "yes") | Err(_) => worker_loops,
        Ok(other) => anyhow::bail!("RUN_WORKER_ENABLED must be true or false, got {other:?}"),
    };
    let scheduler_on = match std::env::var("SCHEDULER_ENABLED").as_deref() {
        Ok("false" | "0" | "no") => false,
        Ok("true" | "1" | "yes") | Err(_) => true,
        Ok(other) => anyhow::bail!("SCHEDULER_ENABLED must be true or false, got {other:?}"),
    };
    let mut scheduler_queues = match (&config.scheduler_queue_url, &config.fire_queue_url) {
        (Some(ticks), Some(fires)) if scheduler_on => {
            Provisioner::of(&clients)
                .ensure_tick_rule(&config, ticks)
                .await
                .context("Failed to create the scheduler's tick rule")?;
            vec![ticks.clone(), fires.clone()]
        }
        _ => Vec::new(),
    };
    let state = AppState::load(config, clients, Arc::new(SystemClock)).await?;
    if !scheduler_queues.is_empty() {
        // Event schedules' rules deliver here; its messages are the scheduler's too.
        scheduler_queues.push(scheduler::trigger_queue_url(&state).await?);
    }
    let (stop_worker, worker_stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    if worker_loops > 0 {
        let worker = Arc::new(Worker::new(state.clone()).await?);
        for _ in 0..worker_loops {
            let worker = worker.clone();
            let mut stopped = worker_stopped.clone();
            workers.push(tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                if let Err(error) = worker.run(shutdown).await {
                    tracing::error!(error = ?error, "a run worker loop stopped");
                }
            }));
        }
    }
    let scheduler_runs = !scheduler_queues.is_empty();
    for queue in scheduler_queues {
        let state = state.clone();
        let mut stopped = worker_stopped.clone();
        workers.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            scheduler::consume(&state, &queue, shutdown).await;
        }));
    }
    if sweep_every > 0 {
        let state = state.clone();
        let mut stopped = worker_stopped.clone();
        workers.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(sweep_every));
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|stop| *stop) => return,
                    _ = ticks.tick() => {}
                }
                // LocalStack keeps no state across a restart: when the run queue is gone,
                // put back the queues, state machine, bucket and secrets it forgot (names
                // and ARNs are unchanged), so this sweep can give the unfinished runs new
                // executions.
                let queue = state
                    .clients
                    .sqs
                    .get_queue_url()
                    .queue_name(state.config.run_queue_name())
                    .send()
                    .await;
                if queue.is_err() {
                    let mut config = (*state.config).clone();
                    match provision(&state.clients, &mut config).await {
                        Ok(()) => tracing::info!("provisioned the local resources again"),
                        Err(error) => {
                            tracing::warn!(error = ?error, "the local resources cannot be provisioned yet");
                            continue;
                        }
                    }
                }
                if let Err(error) = sweeper::sweep(&state).await {
                    tracing::warn!(error = ?error, "a sweep failed");
                }
            }
        }));
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("Failed to listen on {addr}; set PORT to use another port"))?;
    let base = format!("http://{addr}");
    tracing::info!(%base, "Spark-Ops dev server listening");
    let worker_note = if worker_loops == 0 {
        "off (RUN_WORKER_ENABLED=false)".to_owned()
    } else {
        format!("{worker_loops} loop(s) polling the run queue")
    };
    let sweeper_note = if sweep_every == 0 {
        "off (SWEEPER_INTERVAL_SECONDS=0)".to_owned()
    } else {
        format!("every {sweep_every} s")
    };
    let scheduler_note = if !scheduler_runs {
        "off (SCHEDULER_ENABLED=false)".to_owned()
    } else {
        format!(
            "ticked every minute by the rule {}",
            state.config.tick_rule_name()
        )
    };
    let egress = &state.config.egress.allow;
    let egress_note = if egress.is_empty() {
        "public internet only (EGRESS_ALLOW is empty)".to_owned()
    } else {
        let allowed: Vec<String> = egress.iter().map(ToString::to_string).collect();
        format!("public internet, and {} (EGRESS_ALLOW)", allowed.join(", "))
    };
    println!("\nSpark-Ops control plane is up:\n  API     {base}/api/v1\n  Docs    {base}/docs\n  OpenAPI {base}/api/v1/openapi.json\n  Health  {base}/health\n  Worker  {worker_note}\n  Sweeper {sweeper_note}\n  Scheduler {scheduler_note}\n  Egress  {egress_note}\nPress Ctrl-C to stop.\n");
    // The peer address feeds the per-address login and registration throttles.
    let app = api::app(state).into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the server failed");
    let _ = stop_worker.send(true);
    for worker in workers {
        let _ = worker.await;
    }
    served
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, whichever comes first.
/// Stops with what to do when an index provisioning added is not usable. DynamoDB Local cannot
/// add an index to a table that already holds items (a database kept in `.local/dynamodb-data`
/// from an older version): the index stays `CREATING` and every write to the table fails.
async fn refuse_stuck_indexes(clients: &Clients, config: &Config) -> anyhow::Result<()> {
    const TRIES: u32 = 10;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut stuck = Vec::new();
        for table in schema::TABLES {
            let name = config.table_name(table.suffix);
            let described = clients
                .ddb
                .describe_table()
                .table_name(&name)
                .send()
                .await
                .with_context(|| format!("Failed to describe the table {name}"))?;
            let indexes = described
                .table()
                .map(|t| t.global_secondary_indexes())
                .unwrap_or_default();
            stuck.extend(
                indexes
                    .iter()
                    .filter(|index| index.index_status().map(|s| s.as_str()) != Some("ACTIVE"))
                    .map(|index| format!("{name}.{}", index.index_name().unwrap_or("?"))),
            );
        }
        if stuck.is_empty() {
            return Ok(());
        }
        if attempt == TRIES {
            anyhow::bail!(
                "the index(es) {} are still being created: DynamoDB Local cannot add an index \
                 to a table that already holds items, and writes to those tables fail. Start \
                 from fresh tables: `make clean-local` (deletes all local data) or another \
                 SPARK_OPS_PREFIX",
                stuck.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
