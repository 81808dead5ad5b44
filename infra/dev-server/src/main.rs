//! The local control plane: provisions the resources on the local AWS services, then serves
//! every router on one port (`PORT`, default 3000) with the same code the Lambda functions run,
//! and runs the run worker's queue loop in the same process (`RUN_WORKER_ENABLED=false` turns
//! it off, for a worker run elsewhere).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use spark_ops::clock::SystemClock;
use spark_ops::engine::worker::Worker;
use spark_ops::state::Clients;
use spark_ops::store::provision::Provisioner;
use spark_ops::{api, bootstrap, AppState, Config};

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
    Provisioner {
        ddb: &clients.ddb,
        sqs: &clients.sqs,
        secrets: &clients.secrets,
        sfn: &clients.sfn,
    }
    .ensure_all(&config)
    .await
    .context("Failed to provision the local resources; are the local services running?")?
    .configure(&mut config);
    let worker_enabled = match std::env::var("RUN_WORKER_ENABLED").as_deref() {
        Ok("false" | "0" | "no") => false,
        Ok("true" | "1" | "yes") | Err(_) => true,
        Ok(other) => anyhow::bail!("RUN_WORKER_ENABLED must be true or false, got {other:?}"),
    };
    let state = AppState::load(config, clients, Arc::new(SystemClock)).await?;
    let (stop_worker, worker_stopped) = tokio::sync::watch::channel(false);
    let worker = if worker_enabled {
        let worker = Worker::new(state.clone()).await?;
        let mut stopped = worker_stopped.clone();
        Some(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(error) = worker.run(shutdown).await {
                tracing::error!(error = ?error, "the run worker stopped");
            }
        }))
    } else {
        None
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("Failed to listen on {addr}; set PORT to use another port"))?;
    let base = format!("http://{addr}");
    tracing::info!(%base, "Spark-Ops dev server listening");
    let worker_note = if worker.is_some() {
        "run worker polling the run queue"
    } else {
        "run worker off (RUN_WORKER_ENABLED=false)"
    };
    println!("\nSpark-Ops control plane is up:\n  API     {base}/api/v1\n  Docs    {base}/docs\n  OpenAPI {base}/api/v1/openapi.json\n  Health  {base}/health\n  Worker  {worker_note}\nPress Ctrl-C to stop.\n");
    let served = axum::serve(listener, api::app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the server failed");
    let _ = stop_worker.send(true);
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    served
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, whichever comes first.
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
