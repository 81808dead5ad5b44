//! Load bench of the API over HTTP: many concurrent clients on a mixed read/write workload.
//!
//! It serves the dev server's app (every router, `RUN_WORKER_LOOPS` run workers, default 4)
//! in this process on a free loopback port, against the local services, or targets a running
//! server given by `--url`. As one user it creates a project, an agent, a tool, a released
//! one-step workflow (a decision: no third party is called) and a run, then `--clients`
//! clients (default 200) loop for `--seconds` (default 30), each request drawn at random:
//!
//! | class         | share | request                                              |
//! |---------------|-------|------------------------------------------------------|
//! | `list`        | 30 %  | `GET /agents`, `/tools` or `/workflows` of the project |
//! | `get`         | 30 %  | `GET` of the agent, a tool or the workflow             |
//! | `get_run`     | 24 %  | `GET /runs/{id}` of a run started so far              |
//! | `create_tool` | 10 %  | `POST /tools`                                         |
//! | `start_run`   |  6 %  | `POST /runs` of the workflow                          |
//!
//! It prints the throughput, p50/p99 latency and errors per class, and exits non-zero if
//! any request failed (a transport error or a status other than the one expected).
//!
//! `make load`, or `cargo bench -p spark-ops-tests --bench load -- --clients 200 --seconds 30
//! [--url http://127.0.0.1:3000]` while the local services run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use spark_ops::clock::SystemClock;
use spark_ops::engine::worker::Worker;
use spark_ops::store::provision::provision;
use spark_ops::{api, AppState, Config};
use spark_ops_tests::{local_clients, local_sdk_config, unique_slug, PASSWORD};

/// What the bench is told on its command line.
struct Args {
    url: Option<String>,
    clients: usize,
    seconds: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        url: None,
        clients: 200,
        seconds: 30,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let mut value = || raw.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = Some(value()?.trim_end_matches('/').to_owned()),
            "--clients" => args.clients = value()?.parse().context("--clients: a number")?,
            "--seconds" => args.seconds = value()?.parse().context("--seconds: a number")?,
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            other => bail!("unknown argument {other:?}; expected --url, --clients, --seconds"),
        }
    }
    if args.clients == 0 || args.seconds == 0 {
        bail!("--clients and --seconds must be at least 1");
    }
    Ok(args)
}

/// The dev server's app and run workers in this process, on a free loopback port.
async fn serve_in_process() -> anyhow::Result<String> {
    let prefix = format!("load{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let mut config =
        Config::from_lookup(|key| (key == "SPARK_OPS_PREFIX").then(|| prefix.clone()))?;
    // Every client comes from 127.0.0.1; the per-address brakes on sign-up are not measured.
    config.register_max_per_address = 10_000;
    config.login_max_failures_per_address = 10_000;
    let sdk = local_sdk_config().await;
    let clients = local_clients(&sdk, |ddb| ddb);
    provision(&clients, &mut config)
        .await
        .context("provisioning against the local services; are they running?")?;
    let state = AppState::load(config, clients, Arc::new(SystemClock)).await?;
    let loops: usize = std::env::var("RUN_WORKER_LOOPS")
        .ok()
        .and_then(|raw| raw.parse().ok())
        .unwrap_or(4);
    let worker = Arc::new(Worker::new(state.clone()).await?);
    for _ in 0..loops {
        let worker = worker.clone();
        // The workers stop with the process.
        tokio::spawn(async move { worker.run(std::future::pending::<()>()).await });
    }
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = api::app(state).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

/// The API as one signed-in user.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if !self.token.is_empty() {
            request = request.bearer_auth(&self.token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = request.send().await?;
        let status = reply.status();
        let body = reply.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Sends a request that must answer `expect`; gives the body.
    async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expect: StatusCode,
    ) -> anyhow::Result<Value> {
        let (status, body) = self.send(method.clone(), path, body).await?;
        if status != expect {
            bail!("{method} {path}: {status} {body}");
        }
        Ok(body)
    }
}

fn id_of(body: &Value) -> anyhow::Result<String> {
    body["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no id in {body}"))
}

/// What the clients read and write.
struct World {
    project: String,
    agent: String,
    workflow: String,
    tools: Mutex<Vec<String>>,
    runs: Mutex<Vec<String>>,
}

async fn world(base: &str, http: &reqwest::Client) -> anyhow::Result<(Api, World)> {
    let mut api = Api {
        http: http.clone(),
        base: base.to_owned(),
        token: String::new(),
    };
    let email = format!("{}@example.com", unique_slug("load"));
    api.expect(
        Method::POST,
        "/api/v1/auth/register",
        Some(json!({"email": email, "password": PASSWORD, "name": "Load"})),
        StatusCode::ACCEPTED,
    )
    .await?;
    let login = api
        .expect(
            Method::POST,
            "/api/v1/auth/login",
            Some(json!({"email": email, "password": PASSWORD})),
            StatusCode::OK,
        )
        .await?;
    api.token = login["access_token"]
        .as_str()
        .context("an access token")?
        .to_owned();
    let project = id_of(
        &api.expect(
            Method::POST,
            "/api/v1/projects",
            Some(json!({"name": "Load", "slug": unique_slug("load")})),
            StatusCode::CREATED,
        )
        .await?,
    )?;
    let agent = id_of(
        &api.expect(
            Method::POST,
            "/api/v1/agents",
            Some(
                json!({"project_id": project, "name": "Load agent", "runtime": "python",
                        "model": "gpt-4o-mini", "env": "dev"}),
            ),
            StatusCode::CREATED,
        )
        .await?,
    )?;
    let tool = create_tool(&api, &project).await?;
    let workflow = id_of(
        &api.expect(
            Method::POST,
            "/api/v1/workflows",
            Some(
                json!({"project_id": project, "name": "Check", "definition": {"steps": [
                    {"id": "check", "type": "decision",
                     "config": {"condition": "input.n > 0", "then": []}},
                ]}}),
            ),
            StatusCode::CREATED,
        )
        .await?,
    )?;
    api.expect(
        Method::POST,
        &format!("/api/v1/workflows/{workflow}/versions"),
        Some(json!({})),
        StatusCode::CREATED,
    )
    .await?;
    api.expect(
        Method::PATCH,
        &format!("/api/v1/workflows/{workflow}/versions/1"),
        Some(json!({"status": "released"})),
        StatusCode::OK,
    )
    .await?;
    let world = World {
        project,
        agent,
        workflow,
        tools: Mutex::new(vec![tool]),
        runs: Mutex::new(Vec::new()),
    };
    let run = start_run(&api, &world).await?;
    world.runs.lock().expect("runs").push(run);
    Ok((api, world))
}

async fn create_tool(api: &Api, project: &str) -> anyhow::Result<String> {
    id_of(
        &api.expect(
            Method::POST,
            "/api/v1/tools",
            Some(
                json!({"project_id": project, "name": unique_slug("tool"), "kind": "http",
                        "auth_type": "none", "env": "dev",
                        "config": {"url": "https://api.example.com/lookup", "method": "POST"}}),
            ),
            StatusCode::CREATED,
        )
        .await?,
    )
}

async fn start_run(api: &Api, world: &World) -> anyhow::Result<String> {
    id_of(
        &api.expect(
            Method::POST,
            "/api/v1/runs",
            Some(
                json!({"workflow_id": world.workflow, "agent_id": world.agent, "env": "dev",
                        "input": {"n": 1}}),
            ),
            StatusCode::CREATED,
        )
        .await?,
    )
}

fn pick(list: &Mutex<Vec<String>>) -> String {
    let list = list.lock().expect("a list of ids");
    list[rand::thread_rng().gen_range(0..list.len())].clone()
}

/// One request of the mix; gives its class.
async fn one(api: &Api, world: &World) -> (&'static str, anyhow::Result<()>) {
    let roll = rand::thread_rng().gen_range(0..100);
    let project = &world.project;
    match roll {
        0..30 => {
            let resource = ["agents", "tools", "workflows"][roll % 3];
            let path = format!("/api/v1/{resource}?project_id={project}");
            (
                "list",
                api.expect(Method::GET, &path, None, StatusCode::OK)
                    .await
                    .map(drop),
            )
        }
        30..60 => {
            let path = match roll % 3 {
                0 => format!("/api/v1/agents/{}", world.agent),
                1 => format!("/api/v1/tools/{}", pick(&world.tools)),
                _ => format!("/api/v1/workflows/{}", world.workflow),
            };
            (
                "get",
                api.expect(Method::GET, &path, None, StatusCode::OK)
                    .await
                    .map(drop),
            )
        }
        60..84 => {
            let path = format!("/api/v1/runs/{}", pick(&world.runs));
            (
                "get_run",
                api.expect(Method::GET, &path, None, StatusCode::OK)
                    .await
                    .map(drop),
            )
        }
        84..94 => {
            let created = create_tool(api, project).await;
            (
                "create_tool",
                created.map(|id| world.tools.lock().expect("tools").push(id)),
            )
        }
        _ => {
            let started = start_run(api, world).await;
            (
                "start_run",
                started.map(|id| world.runs.lock().expect("runs").push(id)),
            )
        }
    }
}

/// Latencies and errors of one class.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let base = match &args.url {
        Some(url) => url.clone(),
        None => serve_in_process().await?,
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.clients)
        .timeout(Duration::from_secs(30))
        .build()?;
    let (api, world) = world(&base, &http).await?;
    let world = Arc::new(world);
    println!(
        "load: {} clients for {} s against {base} (project {})",
        args.clients, args.seconds, world.project
    );

    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let clients: Vec<_> = (0..args.clients)
        .map(|_| {
            let (api, world) = (api.clone(), world.clone());
            tokio::spawn(async move {
                let mut tallies: BTreeMap<&'static str, Tally> = BTreeMap::new();
                while Instant::now() < until {
                    let sent = Instant::now();
                    let (class, outcome) = one(&api, &world).await;
                    let tally = tallies.entry(class).or_default();
                    tally.latencies.push(sent.elapsed());
                    if let Err(error) = outcome {
                        tally.errors.push(format!("{error:#}"));
                    }
                }
                tallies
            })
        })
        .collect();
    let mut totals: BTreeMap<&'static str, Tally> = BTreeMap::new();
    for client in clients {
        for (class, tally) in client.await? {
            let total = totals.entry(class).or_default();
            total.latencies.extend(tally.latencies);
            total.errors.extend(tally.errors);
        }
    }
    let wall = started.elapsed();

    let requests: usize = totals.values().map(|t| t.latencies.len()).sum();
    let errors: usize = totals.values().map(|t| t.errors.len()).sum();
    println!(
        "throughput: {:.0} requests/s ({requests} requests in {:.1} s), errors: {errors}",
        requests as f64 / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
    println!(
        "{:<12} {:>8} {:>10} {:>10} {:>10} {:>7}",
        "class", "requests", "p50 ms", "p99 ms", "max ms", "errors"
    );
    for (class, tally) in &mut totals {
        tally.latencies.sort();
        println!(
            "{class:<12} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>7}",
            tally.latencies.len(),
            ms(quantile(&tally.latencies, 0.50)),
            ms(quantile(&tally.latencies, 0.99)),
            ms(quantile(&tally.latencies, 1.0)),
            tally.errors.len(),
        );
    }
    if errors > 0 {
        for (class, tally) in &totals {
            for error in tally.errors.iter().take(3) {
                eprintln!("{class}: {error}");
            }
        }
        bail!("{errors} of {requests} requests failed");
    }
    Ok(())
}
