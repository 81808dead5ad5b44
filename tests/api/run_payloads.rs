//! Payloads never break a run: large step payloads are kept whole in S3 and read back by
//! link and by later slices, loops keep one record per iteration, the run counts its steps,
//! and an oversized log line cannot sink its batch.

use std::time::Instant;

use axum::http::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use spark_ops::engine::run::Outcome;
use spark_ops::run::{LogLevel, LogLine, StepStatus, MAX_LOG_MESSAGE_BYTES};
use spark_ops::Config;
use spark_ops_tests::{spawn_app_with, NoHeartbeat, TestApp};
use uuid::Uuid;
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// An app with a project, an agent and a mock tool server.
struct World {
    app: TestApp,
    owner: String,
    project: String,
    agent: String,
    server: MockServer,
}

async fn world() -> World {
    world_with(|_| {}).await
}

async fn world_with(adjust: impl FnOnce(&mut Config)) -> World {
    let app = spawn_app_with(adjust).await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Payloads").await;
    let agent = app.agent(&owner, &project, "gpt-4o-mini").await;
    World {
        app,
        owner,
        project,
        agent,
        server: MockServer::start().await,
    }
}

impl World {
    /// A GET tool on the mock server's `route`, answering `body`; returns its id.
    async fn tool(&self, route: &str, body: &Value) -> Value {
        Mock::given(path(route.to_owned()))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&self.server)
            .await;
        let reply = self
            .app
            .post(
                "/api/v1/tools",
                Some(&self.owner),
                json!({"project_id": self.project, "name": route.trim_start_matches('/'), "kind": "http",
                       "auth_type": "none", "env": "dev",
                       "config": {"url": format!("{}{route}", self.server.uri()), "method": "GET", "retry_attempts": 0}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.body["id"].clone()
    }

    /// Starts a run of a released workflow of `steps`.
    async fn start(&self, steps: Value) -> Uuid {
        self.start_with(steps, json!({})).await
    }

    /// Starts a run of a released workflow of `steps` with `input`.
    async fn start_with(&self, steps: Value, input: Value) -> Uuid {
        let workflow = self
            .app
            .released_workflow(&self.owner, &self.project, json!({ "steps": steps }))
            .await;
        self.app
            .start_run(
                &self.owner,
                json!({"workflow_id": workflow, "agent_id": self.agent, "env": "dev", "input": input}),
            )
            .await
    }

    /// Executes one slice of run `id` in-process.
    async fn execute(&self, id: Uuid) -> Outcome {
        let run = self.app.state.store.get_run(id).await.unwrap().unwrap();
        self.app
            .engine_allowing(&[&self.server.uri()])
            .execute(run, &NoHeartbeat)
            .await
            .expect("the slice runs")
    }

    async fn get(&self, path: &str) -> Value {
        let reply = self.app.get(path, &self.owner).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        reply.body
    }

    async fn steps(&self, id: Uuid) -> Vec<Value> {
        let page = self
            .get(&format!("/api/v1/runs/{id}/steps?limit=200"))
            .await;
        page["items"].as_array().cloned().unwrap_or_default()
    }
}

fn tool_step(id: &str, tool: &Value, depends_on: &[&str], input: Value) -> Value {
    json!({"id": id, "type": "tool", "depends_on": depends_on, "config": {"tool_id": tool, "input": input}})
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// JSON of about `bytes` bytes, ending with a marker a template can pick out.
fn big_json(bytes: usize) -> Value {
    let rows: Vec<Value> = (0..bytes / 48)
        .map(|i| json!({"i": i, "text": "lorem ipsum dolor sit amet consectetur"}))
        .collect();
    json!({"rows": rows, "marker": "end-of-big"})
}

/// Follows a payload link with plain HTTP, as a client would; returns the body.
async fn follow(link: &Value) -> Vec<u8> {
    let url = link["url"].as_str().expect("a link url");
    let reply = reqwest::get(url).await.expect("the link answers");
    assert_eq!(reply.status(), reqwest::StatusCode::OK, "{url}");
    reply.bytes().await.expect("a body").to_vec()
}

#[tokio::test]
async fn a_tool_returning_a_mebibyte_of_json_succeeds_and_its_link_gives_back_every_byte() {
    // GIVEN a tool that answers 1 MiB of JSON
    let w = world().await;
    let answer = big_json(1024 * 1024);
    let tool = w.tool("/big", &answer).await;
    let id = w
        .start(json!([tool_step("big", &tool, &[], json!({}))]))
        .await;

    // WHEN the run executes
    let outcome = w.execute(id).await;

    // THEN it succeeds
    assert_eq!(outcome, Outcome::Succeeded);
    let run = w.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    // AND the step shows its small request inline and its large response as a link
    let steps = w.steps(id).await;
    assert_eq!(steps.len(), 1);
    assert!(steps[0]["request"].is_object(), "{:#}", steps[0]["request"]);
    assert_eq!(steps[0]["request_ref"], Value::Null);
    assert_eq!(steps[0]["response"], Value::Null);
    let link = &steps[0]["response_ref"];
    assert!(link["expires_at"].is_string(), "{link:#}");
    // AND the link, fetched with plain HTTP, gives the exact bytes recorded
    let body = follow(link).await;
    assert_eq!(Some(body.len() as u64), link["size"].as_u64());
    assert_eq!(
        hex_sha256(&body),
        link["sha256"].as_str().unwrap_or_default()
    );
    assert!(body.len() > 1024 * 1024, "{} bytes", body.len());
    let read: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(read, answer);
}

#[tokio::test]
async fn a_later_slice_reads_a_stored_output_back_whole_and_a_large_human_input_is_stored_too() {
    // GIVEN a run whose first step's output is kept in S3, then a human step, then a step
    // whose input reads the end of that output
    let w = world().await;
    let big = w.tool("/big", &big_json(100 * 1024)).await;
    let echo = w.tool("/echo", &json!({"ok": true})).await;
    let id = w
        .start(json!([
            tool_step("big", &big, &[], json!({})),
            {"id": "wait", "type": "human", "depends_on": ["big"], "config": {"instructions": "go on"}},
            tool_step("use", &echo, &["wait"], json!({"seen": "{{ steps.big.output.marker }}"})),
        ]))
        .await;
    assert_eq!(w.execute(id).await, Outcome::AwaitingInput);

    // WHEN a person resumes it with an input too large for a record
    let input = json!({"notes": "n".repeat(64 * 1024)});
    let reply = w
        .app
        .post(
            &format!("/api/v1/runs/{id}/resume"),
            Some(&w.owner),
            json!({ "input": input }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    // AND the next slice runs
    let outcome = w.execute(id).await;

    // THEN the last step saw the stored output's end, read back from S3
    assert_eq!(outcome, Outcome::Succeeded);
    let seen = w
        .server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == "/echo")
        .map(|r| r.url.query().unwrap_or_default().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(seen, ["seen=end-of-big"]);
    // AND the human input is kept whole behind a link
    let steps = w.steps(id).await;
    let wait = steps.iter().find(|s| s["step_id"] == "wait").unwrap();
    assert_eq!(wait["status"], "succeeded");
    assert_eq!(wait["response"], Value::Null);
    let body = follow(&wait["response_ref"]).await;
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), input);
    // AND the run counted every step
    let run = w.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(
        run["steps_summary"],
        json!({"total": 3, "pending": 0, "running": 0, "waiting": 0, "succeeded": 3, "failed": 0, "skipped": 0})
    );
}

#[tokio::test]
async fn a_step_after_more_stored_output_than_the_slice_cap_fails_naming_the_cap() {
    // GIVEN a slice cap of 64 KiB, and a first step answering 100 KiB
    let w = world_with(|config| config.payload_slice_cap = 64 * 1024).await;
    let big = w.tool("/big", &big_json(100 * 1024)).await;
    let echo = w.tool("/echo", &json!({"ok": true})).await;
    let id = w
        .start(json!([
            tool_step("big", &big, &[], json!({})),
            tool_step(
                "use",
                &echo,
                &["big"],
                json!({"seen": "{{ steps.big.output.marker }}"})
            ),
        ]))
        .await;

    // WHEN the run executes
    let outcome = w.execute(id).await;

    // THEN the first step succeeds, kept whole, and the one after it fails naming the cap
    assert_eq!(outcome, Outcome::Failed);
    let steps = w.steps(id).await;
    assert_eq!(steps[0]["status"], "succeeded");
    assert!(steps[0]["response_ref"]["size"].as_u64() > Some(64 * 1024));
    assert_eq!(steps[1]["status"], "failed");
    let error = steps[1]["error_message"].as_str().unwrap_or_default();
    assert!(error.contains("PAYLOAD_SLICE_CAP_BYTES"), "{error}");
    assert!(error.contains("65536 bytes"), "{error}");
    // AND the tool it would have called was never called
    let calls = w.server.received_requests().await.unwrap_or_default();
    assert!(calls.iter().all(|r| r.url.path() != "/echo"));
}

#[tokio::test]
async fn a_loop_record_keeps_its_count_and_a_later_slice_still_sees_every_output() {
    // GIVEN a loop over three items, a human step, then a decision on the loop's outputs
    let w = world().await;
    let echo = w.tool("/echo", &json!({"ok": true})).await;
    let human = |id: &str, after: &str| json!({"id": id, "type": "human", "depends_on": [after], "config": {"instructions": "go on"}});
    let id = w
        .start(json!([
            {"id": "each", "type": "loop", "config": {"over": "['a', 'b', 'c']", "max_iterations": 5,
              "step": {"type": "tool", "config": {"tool_id": echo, "input": {"item": "{{ item }}"}}}}},
            human("wait", "each"),
            {"id": "check", "type": "decision", "depends_on": ["wait"], "config": {
              "condition": "steps.each.output.iterations == 3 && steps.each.output.outputs.size() == 3 && steps.each.output.outputs.all(o, o.ok)",
              "then": ["yes"], "else": ["no"]}},
            human("no", "check"),
            human("yes", "check"),
        ]))
        .await;
    assert_eq!(w.execute(id).await, Outcome::AwaitingInput);

    // THEN the loop's record keeps only its count; its iterations keep their outputs
    let records = w.app.state.store.all_steps(id).await.unwrap();
    let names: Vec<&str> = records.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["each", "each[0]", "each[1]", "each[2]", "wait"]);
    assert_eq!(records[0].response, Some(json!({"iterations": 3})));
    assert_eq!(records[1].response, Some(json!({"ok": true})));

    // WHEN it resumes, in a new slice
    let reply = w
        .app
        .post(
            &format!("/api/v1/runs/{id}/resume"),
            Some(&w.owner),
            json!({"input": {}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(w.execute(id).await, Outcome::AwaitingInput);

    // THEN the decision saw every iteration's output, and took its `then` branch
    let records = w.app.state.store.all_steps(id).await.unwrap();
    let check = records.iter().find(|r| r.step_id == "check").unwrap();
    assert_eq!(check.status, StepStatus::Succeeded, "{check:?}");
    assert_eq!(check.response.as_ref().unwrap()["result"], true);
    let no = records.iter().find(|r| r.step_id == "no").unwrap();
    assert_eq!(no.status, StepStatus::Skipped);
    // AND the run counts the loop, not its iterations, and the skipped branch
    let run = w.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(
        run["steps_summary"],
        json!({"total": 5, "pending": 0, "running": 0, "waiting": 1, "succeeded": 3, "failed": 0, "skipped": 1})
    );
}

/// `GET /runs/{id}`: authentication and authorization cost 2 requests on every project
/// route; the run adds 1, whatever its size.
const GET_RUN_OPERATIONS: [&str; 3] = ["GetItem", "GetItem", "BatchGetItem"];

/// Runs a loop of `n` iterations of a trivial tool step to its end, slice after slice, and
/// checks that reading the run afterwards costs [`GET_RUN_OPERATIONS`]; prints the slices,
/// seconds and DynamoDB requests it took, and returns the seconds.
async fn run_a_long_loop(w: &World, n: usize) -> f64 {
    let echo = w.tool("/echo", &json!({"ok": true})).await;
    let items: Vec<usize> = (0..n).collect();
    let id = w
        .start_with(
            json!([
                {"id": "each", "type": "loop", "config": {"over": "input.items", "max_iterations": 1000,
                  "step": {"type": "tool", "config": {"tool_id": echo, "input": {"item": "{{ item }}"}}}}},
            ]),
            json!({ "items": items }),
        )
        .await;
    w.app.ddb_requests.reset();
    let started = Instant::now();
    let mut slices = 0;
    let outcome = loop {
        slices += 1;
        match w.execute(id).await {
            Outcome::Continue => continue,
            outcome => break outcome,
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let requests = w.app.ddb_requests.count();
    assert_eq!(outcome, Outcome::Succeeded);
    let records = w.app.state.store.all_steps(id).await.unwrap();
    assert_eq!(records.len(), n + 1);
    assert!(records.iter().all(|r| r.status == StepStatus::Succeeded));
    assert_eq!(records[0].response, Some(json!({"iterations": n})));

    w.app.ddb_requests.reset();
    let run = w.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["steps_summary"]["succeeded"], 1);
    assert_eq!(w.app.ddb_requests.operations(), GET_RUN_OPERATIONS);
    eprintln!(
        "{n} iterations: {slices} slice(s), {seconds:.1} s, {requests} DynamoDB requests \
         ({:.1} per iteration)",
        requests as f64 / n as f64
    );
    seconds
}

#[tokio::test]
async fn a_loop_of_200_iterations_succeeds_and_its_run_reads_in_one_request_past_auth() {
    run_a_long_loop(&world().await, 200).await;
}

/// `make test-long-loop` runs it: the figure the reliability bar names.
#[tokio::test]
#[ignore = "about a minute: run by `make test-long-loop`"]
async fn a_loop_of_1000_iterations_succeeds_within_two_minutes() {
    let seconds = run_a_long_loop(&world().await, 1000).await;
    assert!(seconds < 120.0, "{seconds:.1} s");
}

#[tokio::test]
async fn an_oversized_log_line_is_cut_and_cannot_sink_its_batch() {
    // GIVEN 30 log lines, one of them 500 KB
    let w = world().await;
    let run = Uuid::now_v7();
    let at = chrono::Utc::now();
    let line = |message: String| LogLine {
        at,
        level: LogLevel::Info,
        step_id: None,
        message,
    };
    let mut lines: Vec<LogLine> = (0..30).map(|i| line(format!("line {i}"))).collect();
    lines[7] = line("x".repeat(500_000));

    // WHEN they are noted
    w.app.state.store.note(run, &lines).await;

    // THEN every line landed, the long one cut to the bound and saying how long it was
    let page = w.app.state.store.list_logs(run, 100, None).await.unwrap();
    assert_eq!(page.items.len(), 30);
    let long = &page.items[7].message;
    assert!(long.len() <= MAX_LOG_MESSAGE_BYTES, "{}", long.len());
    assert!(
        long.ends_with("[cut: the message had 500000 bytes]"),
        "{}",
        &long[long.len() - 60..]
    );
    assert_eq!(page.items[29].message, "line 29");
}

#[tokio::test]
async fn log_writes_that_dynamodb_leaves_unprocessed_are_written_again() {
    // GIVEN 30 log lines (two batch writes), and DynamoDB answering the first three batch
    // writes with every item unprocessed
    let w = world().await;
    let run = Uuid::now_v7();
    let at = chrono::Utc::now();
    let lines: Vec<LogLine> = (0..30)
        .map(|i| LogLine {
            at,
            level: LogLevel::Info,
            step_id: None,
            message: format!("line {i}"),
        })
        .collect();
    w.app.ddb_requests.reset();
    w.app.ddb_requests.bounce_batch_writes(3);

    // WHEN they are appended
    w.app.state.store.append_logs(run, &lines).await.unwrap();

    // THEN the first batch was sent four times and the second once, and every line is there
    // once
    let writes = w
        .app
        .ddb_requests
        .operations()
        .iter()
        .filter(|op| *op == "BatchWriteItem")
        .count();
    assert_eq!(writes, 5);
    let page = w.app.state.store.list_logs(run, 100, None).await.unwrap();
    let messages: Vec<_> = page.items.iter().map(|l| l.message.as_str()).collect();
    let expected: Vec<_> = (0..30).map(|i| format!("line {i}")).collect();
    assert_eq!(messages, expected);
}
