//! The local control plane: provisions the resources on the local AWS services, then serves
//! every router on one port (`PORT`, default 3000) with the same code the Lambda functions run.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use spark_ops::clock::SystemClock;
use spark_ops::state::Clients;
use spark_ops::store::provision::Provisioner;
use spark_ops::{api, bootstrap, AppState, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bootstrap::init_tracing();
    let config = Config::from_env()?;
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
    }
    .ensure_all(&config)
    .await
    .context("Failed to provision the local resources; are the local services running?")?;
    let state = AppState::load(config, clients, Arc::new(SystemClock)).await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("Failed to listen on {addr}; set PORT to use another port"))?;
    let base = format!("http://{addr}");
    tracing::info!(%base, "Spark-Ops dev server listening");
    println!("\nSpark-Ops control plane is up:\n  API     {base}/api/v1\n  Docs    {base}/docs\n  OpenAPI {base}/api/v1/openapi.json\n  Health  {base}/health\nPress Ctrl-C to stop.\n");
    axum::serve(listener, api::app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the server failed")
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
