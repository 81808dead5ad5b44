//! Benchmark of the foundation against the local services. Prints µs/op for:
//! - `GET /api/v1/projects/{id}` with a JWT, through the whole router, store calls included:
//!   process CPU time per request (the handler's own work, not DynamoDB Local's) and wall time;
//! - JWT verification alone.
//!
//! Run with `cargo bench -p spark-ops-tests --bench foundation` while the local services run.

use std::time::Instant;

use cpu_time::ProcessTime;
use spark_ops::clock::Clock;
use spark_ops_tests::spawn_app;

const REQUESTS: u32 = 500;
const VERIFICATIONS: u32 = 20_000;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let app = spawn_app().await;
    let token = app.user("Bench").await;
    let project = app.project(&token, "Bench").await;
    let path = format!("/api/v1/projects/{project}");
    for _ in 0..20 {
        assert_eq!(app.get(&path, &token).await.status, 200);
    }

    app.ddb_requests.reset();
    let (cpu, wall) = (ProcessTime::now(), Instant::now());
    for _ in 0..REQUESTS {
        let reply = app.get(&path, &token).await;
        assert_eq!(reply.status, 200);
    }
    let (cpu, wall) = (cpu.elapsed(), wall.elapsed());
    println!(
        "GET /api/v1/projects/{{id}} (JWT): {:.1} µs/op CPU, {:.1} µs/op wall, {:.2} DynamoDB requests/op, n={REQUESTS}",
        cpu.as_secs_f64() * 1e6 / f64::from(REQUESTS),
        wall.as_secs_f64() * 1e6 / f64::from(REQUESTS),
        app.ddb_requests.count() as f64 / f64::from(REQUESTS),
    );

    let now = app.clock.now();
    let (cpu, wall) = (ProcessTime::now(), Instant::now());
    for _ in 0..VERIFICATIONS {
        let claims = app
            .state
            .keys()
            .unwrap()
            .verify(std::hint::black_box(&token), now)
            .expect("valid token");
        std::hint::black_box(claims);
    }
    let (cpu, wall) = (cpu.elapsed(), wall.elapsed());
    println!(
        "JWT verification: {:.2} µs/op CPU, {:.2} µs/op wall, n={VERIFICATIONS}",
        cpu.as_secs_f64() * 1e6 / f64::from(VERIFICATIONS),
        wall.as_secs_f64() * 1e6 / f64::from(VERIFICATIONS),
    );
}
