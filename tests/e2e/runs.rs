//! Runs end to end, over HTTP against the dev server binary on the real local services
//! (DynamoDB, SQS, Step Functions, Secrets Manager), with fake third parties: an
//! OpenAI-compatible LLM that calls a tool and then answers, tool APIs that count calls, and a
//! webhook receiver that verifies signatures with the project's secret.

mod support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use spark_ops::clock::SystemClock;
use spark_ops::engine::llm::function_names;
use spark_ops::engine::worker::{QueueMessage, Worker};
use spark_ops::store::provision::provision;
use spark_ops::{AppState, Config};
use support::{
    local_clients, project, start_dev_server, start_dev_server_as, step, step_ids, DevServer,
    FakeLlm, Project, Script, ToolApi, WebhookReceiver, RUN_DEADLINE,
};

/// A model no built-in price covers: its price comes from the project's settings alone.
const MODEL: &str = "acme-chat-1";
/// USD per million input tokens of [`MODEL`].
const INPUT_PRICE: &str = "0.37";
/// USD per million output tokens of [`MODEL`].
const OUTPUT_PRICE: &str = "1.13";
/// `usage` of the model's tool-calling turn.
const TOOL_CALL_USAGE: (u64, u64) = (120, 30);
/// `usage` of the model's answer.
const ANSWER_USAGE: (u64, u64) = (200, 45);
/// The model's answer.
const ANSWER: &str = "Ada is a gold customer; escalating.";
/// The display name of the tool the model calls.
const LOOKUP_TOOL: &str = "Customer lookup";

/// A model for workflows without prompt steps: it is never called.
async fn unused_llm() -> FakeLlm {
    FakeLlm::start(Script {
        tool_call: None,
        answer: ("unused".into(), (1, 1)),
    })
    .await
}

fn dec(text: &str) -> Decimal {
    Decimal::from_str_exact(text).unwrap_or_else(|e| panic!("{text:?} is not a decimal: {e}"))
}

/// `tokens × price`, exactly, at the project's prices for [`MODEL`].
fn expected_cost(prompt: u64, completion: u64) -> Decimal {
    (Decimal::from(prompt) * dec(INPUT_PRICE) + Decimal::from(completion) * dec(OUTPUT_PRICE))
        / Decimal::from(1_000_000)
}

/// A cost field: a decimal string, read exactly.
fn cost_of(record: &Value) -> Decimal {
    let text = record["usd_cost"]
        .as_str()
        .unwrap_or_else(|| panic!("usd_cost must be a decimal string: {record:#}"));
    dec(text).normalize()
}

/// Asserts a finished record has its timings.
fn assert_timed(record: &Value) {
    for field in ["started_at", "ended_at", "duration_ms"] {
        assert!(
            !record[field].is_null(),
            "`{field}` is missing from {record:#}"
        );
    }
    let started = chrono::DateTime::parse_from_rfc3339(record["started_at"].as_str().unwrap())
        .expect("started_at is RFC 3339");
    let ended = chrono::DateTime::parse_from_rfc3339(record["ended_at"].as_str().unwrap())
        .expect("ended_at is RFC 3339");
    assert!(ended >= started, "{record:#}");
}

/// Asserts a cancelled or rejected run's execution has ended: `ABORTED` when stopped, or
/// `FAILED` when its waiting task was failed (the local emulator also reports a stop that
/// races a task state's start as `FAILED`, `States.Runtime`).
fn assert_stopped(execution: &str) {
    assert!(
        matches!(execution, "ABORTED" | "FAILED"),
        "the execution should be stopped, it is {execution}"
    );
}

/// A support workflow: `triage` (a prompt whose model calls the lookup tool), `lookup` (a
/// tool step), `route` (a decision on the tier), then the `vip` webhook — or `standard`,
/// skipped for a gold customer.
struct SupportFlow {
    project: Project,
    llm: FakeLlm,
    tools: ToolApi,
    hooks: WebhookReceiver,
    agent: String,
    workflow: String,
}

/// What one run of [`SupportFlow`] causes at the third parties.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Effects {
    llm_calls: usize,
    lookup_calls: usize,
    crm_calls: usize,
    webhooks: usize,
}

impl std::ops::Sub for Effects {
    type Output = Effects;

    fn sub(self, before: Effects) -> Effects {
        Effects {
            llm_calls: self.llm_calls - before.llm_calls,
            lookup_calls: self.lookup_calls - before.lookup_calls,
            crm_calls: self.crm_calls - before.crm_calls,
            webhooks: self.webhooks - before.webhooks,
        }
    }
}

/// The effects of one execution of [`SupportFlow`].
const ONE_EXECUTION: Effects = Effects {
    llm_calls: 2,
    lookup_calls: 1,
    crm_calls: 1,
    webhooks: 1,
};

async fn support_flow(server: &DevServer) -> SupportFlow {
    let project = project(
        server,
        Some(
            json!({MODEL: {"input_per_million": INPUT_PRICE, "output_per_million": OUTPUT_PRICE}}),
        ),
    )
    .await;
    let tools = ToolApi::start().await;
    tools
        .answer(
            "/customers/lookup",
            json!({"customer_id": "c-42", "name": "Ada", "plan": "enterprise"}),
        )
        .await;
    tools
        .answer("/crm/tier", json!({"tier": "gold", "since": 2019}))
        .await;
    let by_customer = json!({
        "type": "object",
        "properties": {"customer_id": {"type": "string"}},
        "required": ["customer_id"]
    });
    let lookup = project
        .tool(
            LOOKUP_TOOL,
            tools.url("/customers/lookup"),
            json!({"inputs_schema": by_customer}),
        )
        .await;
    let crm = project
        .tool(
            "CRM tier",
            tools.url("/crm/tier"),
            json!({
                "inputs_schema": by_customer,
                "outputs_schema": {"type": "object", "required": ["tier"]},
            }),
        )
        .await;
    let function = function_names([LOOKUP_TOOL]).remove(0);
    let llm = FakeLlm::start(Script {
        tool_call: Some((function, json!({"customer_id": "c-42"}), TOOL_CALL_USAGE)),
        answer: (ANSWER.to_owned(), ANSWER_USAGE),
    })
    .await;
    let hooks = WebhookReceiver::start(&project).await;
    let agent = project.agent(MODEL, &llm).await;
    let workflow = project
        .workflow(json!({"steps": [
            {"id": "triage", "type": "prompt", "config": {
                "prompt": "Customer {{ input.customer_id }} writes: {{ input.message }}",
                "tools": [lookup], "max_iterations": 5}},
            {"id": "lookup", "type": "tool", "depends_on": ["triage"], "config": {
                "tool_id": crm, "input": {"customer_id": "{{ input.customer_id }}"}}},
            {"id": "route", "type": "decision", "depends_on": ["lookup"], "config": {
                "condition": "steps.lookup.output.tier == 'gold'",
                "then": ["vip"], "else": ["standard"]}},
            {"id": "vip", "type": "webhook", "depends_on": ["route"], "config": {
                "url": hooks.url("/hooks/vip"),
                "body": {"event": "vip", "customer": "{{ input.customer_id }}",
                         "tier": "{{ steps.lookup.output.tier }}",
                         "summary": "{{ steps.triage.output.text }}"}}},
            {"id": "standard", "type": "webhook", "depends_on": ["route"], "config": {
                "url": hooks.url("/hooks/standard"),
                "body": {"customer": "{{ input.customer_id }}"}}},
        ]}))
        .await;
    SupportFlow {
        project,
        llm,
        tools,
        hooks,
        agent,
        workflow,
    }
}

impl SupportFlow {
    async fn start(&self) -> Value {
        self.project
            .start_run(
                &self.workflow,
                &self.agent,
                json!({"customer_id": "c-42", "message": "My invoice is wrong"}),
                json!({"metadata": {"ticket": "T-1"}}),
            )
            .await
    }

    async fn effects(&self) -> Effects {
        Effects {
            llm_calls: self.llm.requests().await.len(),
            lookup_calls: self.tools.calls("/customers/lookup").await.len(),
            crm_calls: self.tools.calls("/crm/tier").await.len(),
            webhooks: self.hooks.received().len(),
        }
    }

    /// Asserts a finished run of the flow was counted once: tokens, cost, one record per
    /// step.
    async fn assert_counted_once(&self, run: &Value) {
        let id = run["id"].as_str().unwrap();
        let (prompt, completion) = (
            TOOL_CALL_USAGE.0 + ANSWER_USAGE.0,
            TOOL_CALL_USAGE.1 + ANSWER_USAGE.1,
        );
        assert_eq!(
            (
                run["tokens_prompt"].as_u64(),
                run["tokens_completion"].as_u64()
            ),
            (Some(prompt), Some(completion)),
            "{run:#}"
        );
        assert_eq!(cost_of(run), expected_cost(prompt, completion).normalize());
        let steps = self.project.steps(id).await;
        let ids = step_ids(&steps);
        let unique: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(ids.len(), 5, "one record per step: {steps:#?}");
        assert_eq!(unique.len(), 5, "one record per step: {ids:?}");
        let step_costs: Decimal = steps.iter().map(cost_of).sum();
        assert_eq!(step_costs.normalize(), cost_of(run));
    }
}

#[tokio::test]
async fn a_run_calls_a_tool_from_its_prompt_takes_one_branch_and_signs_its_webhook() {
    // GIVEN the support workflow, with exact prices for its model in the project settings
    let server = start_dev_server(&[]).await;
    let flow = support_flow(&server).await;

    // WHEN a run starts
    let created = flow.start().await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["status"], "queued", "{created:#}");
    assert_eq!(created["trigger"], "manual");
    assert_eq!(created["workflow_version"], 1);

    // THEN it succeeds with its timings
    let run = flow.project.wait_for_status(id, "succeeded").await;
    assert_timed(&run);
    assert!(run["error_message"].is_null(), "{run:#}");
    assert_eq!(run["retries"], 0);
    assert_eq!(run["metadata"], json!({"ticket": "T-1"}));
    assert_eq!(
        run["steps_summary"],
        json!({"total": 5, "pending": 0, "running": 0, "waiting": 0,
               "succeeded": 4, "failed": 0, "skipped": 1}),
        "{run:#}"
    );

    // AND its tokens are the sum of the model's usage, and its cost is tokens × price exactly
    flow.assert_counted_once(&run).await;
    assert_eq!(cost_of(&run), dec("0.00020315"));

    // AND every step is recorded in execution order with its timings and output
    let steps = flow.project.steps(id).await;
    assert_eq!(
        &step_ids(&steps)[..3],
        &["triage", "lookup", "route"],
        "{steps:#?}"
    );
    for id in ["triage", "lookup", "route", "vip"] {
        let record = step(&steps, id);
        assert_eq!(record["status"], "succeeded", "{record:#}");
        assert_eq!(record["success"], true, "{record:#}");
        assert_eq!(record["name"], id);
        assert_timed(record);
    }
    let triage = step(&steps, "triage");
    assert_eq!(triage["type"], "prompt");
    assert_eq!(triage["response"]["text"], ANSWER, "{triage:#}");
    let calls = triage["response"]["tool_calls"]
        .as_array()
        .expect("tool calls");
    assert_eq!(calls.len(), 1, "{triage:#}");
    assert_eq!(calls[0]["arguments"], json!({"customer_id": "c-42"}));
    assert_eq!(
        calls[0]["output"],
        json!({"customer_id": "c-42", "name": "Ada", "plan": "enterprise"})
    );
    assert_eq!(
        (
            triage["tokens_prompt"].as_u64(),
            triage["tokens_completion"].as_u64()
        ),
        (Some(320), Some(75))
    );
    assert_eq!(cost_of(triage), cost_of(&run));
    assert_eq!(
        step(&steps, "lookup")["response"],
        json!({"tier": "gold", "since": 2019})
    );
    assert_eq!(
        step(&steps, "route")["response"],
        json!({"result": true, "branch": "then"})
    );
    assert_eq!(step(&steps, "standard")["status"], "skipped");
    let vip = step(&steps, "vip");
    assert_eq!(vip["response"]["status"], 200, "{vip:#}");

    // AND the model was offered the tool as a function, and got its result back
    let requests = flow.llm.requests().await;
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0]["model"], MODEL);
    assert_eq!(
        requests[0]["tools"][0]["function"]["name"],
        function_names([LOOKUP_TOOL])[0]
    );
    assert_eq!(requests[0]["messages"][0]["role"], "system");
    let tool_result = requests[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("the tool result goes back to the model");
    assert!(
        tool_result["content"]
            .as_str()
            .unwrap()
            .contains("enterprise"),
        "{tool_result:#}"
    );

    // AND each tool API was called once, with the rendered input
    assert_eq!(
        flow.tools.calls("/customers/lookup").await,
        vec![json!({"customer_id": "c-42"})]
    );
    assert_eq!(
        flow.tools.calls("/crm/tier").await,
        vec![json!({"customer_id": "c-42"})]
    );

    // AND the webhook receiver got one delivery, on the branch taken, whose signature
    // verifies with the project's secret
    let received = flow.hooks.received();
    assert_eq!(received.len(), 1, "{received:#?}");
    assert_eq!(received[0].path, "/hooks/vip");
    assert!(received[0].verified, "the signature does not verify");
    assert_eq!(
        received[0].body,
        json!({"event": "vip", "customer": "c-42", "tier": "gold", "summary": ANSWER})
    );
    assert_eq!(
        vip["response"]["delivery_id"],
        received[0].delivery_id.as_str()
    );

    // AND its one execution has succeeded
    assert_eq!(flow.project.wait_for_execution_end(id).await, "SUCCEEDED");

    // AND the logs carry lines of each executed step
    let logs = flow.project.logs(id).await;
    let logged: HashSet<&str> = logs.iter().filter_map(|l| l["step_id"].as_str()).collect();
    for id in ["triage", "lookup", "route", "vip"] {
        assert!(logged.contains(id), "no log line of `{id}`: {logs:#?}");
    }
    for line in &logs {
        assert!(line["at"].is_string(), "{line:#}");
        assert!(
            matches!(line["level"].as_str(), Some("info" | "warn" | "error")),
            "{line:#}"
        );
        assert!(
            line["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{line:#}"
        );
    }
}

#[tokio::test]
async fn a_failed_run_is_retried_from_its_failed_step_without_repeating_earlier_steps() {
    // GIVEN a workflow fetch → charge → notify whose payment API is down
    let server = start_dev_server(&[]).await;
    let project = project(&server, None).await;
    let tools = ToolApi::start().await;
    tools
        .answer("/orders/o-7", json!({"order_id": "o-7", "amount": 42}))
        .await;
    let payments_up = tools
        .switchable(
            "/payments",
            json!({"payment_id": "p-1", "status": "paid"}),
            500,
        )
        .await;
    let hooks = WebhookReceiver::start(&project).await;
    let fetch = project
        .tool(
            "Orders",
            tools.url("/orders/{{ input.order_id }}"),
            json!({"method": "GET"}),
        )
        .await;
    let charge = project
        .tool("Payments", tools.url("/payments"), json!({}))
        .await;
    let llm = unused_llm().await;
    let agent = project.agent("gpt-4o-mini", &llm).await;
    let workflow = project
        .workflow(json!({"steps": [
            {"id": "fetch", "type": "tool", "config": {
                "tool_id": fetch, "input": {"order_id": "{{ input.order_id }}"}}},
            {"id": "charge", "type": "tool", "depends_on": ["fetch"], "config": {
                "tool_id": charge, "input": {"order_id": "{{ steps.fetch.output.order_id }}",
                                             "amount": "{{ steps.fetch.output.amount }}"}}},
            {"id": "notify", "type": "webhook", "depends_on": ["charge"], "config": {
                "url": hooks.url("/hooks/paid"),
                "body": {"payment": "{{ steps.charge.output.payment_id }}"}}},
        ]}))
        .await;

    // WHEN a run starts
    let run = project
        .start_run(&workflow, &agent, json!({"order_id": "o-7"}), json!({}))
        .await;
    let id = run["id"].as_str().unwrap();

    // THEN it fails, naming the step and the cause
    let failed = project.wait_for_status(id, "failed").await;
    let message = failed["error_message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("step `charge` failed") && message.contains("500"),
        "error_message should name the step and the HTTP status: {failed:#}"
    );
    assert_timed(&failed);
    let before = project.steps(id).await;
    assert_eq!(step(&before, "fetch")["status"], "succeeded");
    let charge_record = step(&before, "charge");
    assert_eq!(charge_record["status"], "failed", "{charge_record:#}");
    assert_eq!(charge_record["success"], false);
    assert!(
        charge_record["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("500")),
        "{charge_record:#}"
    );
    assert!(
        before
            .iter()
            .all(|s| s["step_id"] != "notify" || s["status"] == "pending"),
        "notify must not have run: {before:#?}"
    );
    assert_eq!(
        project.execution_status(id).await,
        "RUNNING",
        "a failed run's execution waits for a retry"
    );
    let charges_while_down = tools.calls("/payments").await.len();
    assert!(charges_while_down >= 1);
    assert_eq!(tools.calls("/orders/o-7").await.len(), 1);
    assert!(hooks.received().is_empty());

    // WHEN the payment API is fixed and the run is retried
    payments_up.store(true, Ordering::SeqCst);
    let reply = project
        .post(&format!("/api/v1/runs/{id}/retry"), json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "queued", "{:#}", reply.body);
    assert_eq!(reply.body["retries"], 1);

    // THEN it succeeds, having run only the failed step and what follows it
    let done = project.wait_for_status(id, "succeeded").await;
    assert_eq!(done["retries"], 1);
    assert!(done["error_message"].is_null(), "{done:#}");
    assert_timed(&done);
    assert_eq!(
        tools.calls("/orders/o-7").await.len(),
        1,
        "the fetch step ran again"
    );
    assert_eq!(
        tools.calls("/payments").await.len(),
        charges_while_down + 1,
        "the charge step should run exactly once more"
    );
    let after = project.steps(id).await;
    assert_eq!(
        step_ids(&after),
        vec!["fetch", "charge", "notify"],
        "{after:#?}"
    );
    let (fetch_before, fetch_after) = (step(&before, "fetch"), step(&after, "fetch"));
    assert_eq!(
        (&fetch_before["started_at"], &fetch_before["ended_at"]),
        (&fetch_after["started_at"], &fetch_after["ended_at"]),
        "the fetch record was rewritten"
    );
    assert_eq!(
        fetch_after["response"],
        json!({"order_id": "o-7", "amount": 42})
    );
    assert_eq!(step(&after, "charge")["status"], "succeeded");
    assert_eq!(
        tools.calls("/payments").await.last(),
        Some(&json!({"order_id": "o-7", "amount": 42}))
    );
    let received = hooks.received();
    assert_eq!(received.len(), 1, "{received:#?}");
    assert!(received[0].verified);
    assert_eq!(received[0].body, json!({"payment": "p-1"}));

    assert_eq!(
        project.wait_for_execution_end(id).await,
        "SUCCEEDED",
        "the retry ran in the run's one execution"
    );

    // AND a run that did not fail cannot be retried
    let again = project
        .post(&format!("/api/v1/runs/{id}/retry"), json!({}))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
}

#[tokio::test]
async fn cancelling_a_run_mid_step_stops_it_before_the_next_step() {
    // GIVEN a workflow whose first step takes three seconds
    let server = start_dev_server(&[]).await;
    let project = project(&server, None).await;
    let tools = ToolApi::start().await;
    let slowness = Duration::from_secs(3);
    tools
        .answer_after("/slow", json!({"done": true}), slowness)
        .await;
    tools.answer("/after", json!({"done": true})).await;
    let slow = project
        .tool("Slow", tools.url("/slow"), json!({"timeout_ms": 20_000}))
        .await;
    let after = project.tool("After", tools.url("/after"), json!({})).await;
    let llm = unused_llm().await;
    let agent = project.agent("gpt-4o-mini", &llm).await;
    let workflow = project
        .workflow(json!({"steps": [
            {"id": "slow", "type": "tool", "config": {"tool_id": slow}},
            {"id": "after", "type": "tool", "depends_on": ["slow"], "config": {"tool_id": after}},
        ]}))
        .await;
    let run = project
        .start_run(&workflow, &agent, json!({}), json!({}))
        .await;
    let id = run["id"].as_str().unwrap();

    // WHEN it is cancelled while the slow step is in flight
    tools.wait_for_call("/slow").await;
    let called_at = Instant::now();
    assert_eq!(project.run(id).await["status"], "running");
    let reply = project
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/runs/{id}/cancel"),
            None,
        )
        .await;

    // THEN it is cancelled at once, with its end recorded
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "cancelled", "{:#}", reply.body);
    assert!(!reply.body["ended_at"].is_null(), "{:#}", reply.body);
    assert!(!reply.body["duration_ms"].is_null(), "{:#}", reply.body);
    let ended_at = reply.body["ended_at"].clone();

    // AND its execution is stopped
    assert_stopped(&project.wait_for_execution_end(id).await);

    // AND once the slow call has had time to return, the next step has still not run
    let window = called_at + slowness + Duration::from_secs(3);
    while Instant::now() < window {
        let run = project.run(id).await;
        assert_eq!(run["status"], "cancelled", "{run:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        tools.calls("/after").await.is_empty(),
        "a step after the cancellation ran\n{}",
        project.describe(id).await
    );
    let run = project.run(id).await;
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["ended_at"], ended_at, "ended_at moved: {run:#}");
    let steps = project.steps(id).await;
    assert!(
        steps.iter().all(|s| s["step_id"] != "after"
            || matches!(s["status"].as_str(), Some("pending" | "skipped"))),
        "{steps:#?}"
    );
    assert_eq!(tools.calls("/slow").await.len(), 1);

    // AND a cancelled run cannot be cancelled again
    let again = project
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/runs/{id}/cancel"),
            Some(json!({})),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
}

#[tokio::test]
async fn a_human_step_pauses_the_run_until_it_is_resumed_with_its_output() {
    // GIVEN a workflow draft → review (human) → send
    let server = start_dev_server(&[]).await;
    let project = project(&server, None).await;
    let tools = ToolApi::start().await;
    tools
        .answer("/drafts", json!({"draft": "Refund 42 EUR"}))
        .await;
    tools.answer("/send", json!({"sent": true})).await;
    let draft = project
        .tool("Drafts", tools.url("/drafts"), json!({}))
        .await;
    let send = project.tool("Send", tools.url("/send"), json!({})).await;
    let llm = unused_llm().await;
    let agent = project.agent("gpt-4o-mini", &llm).await;
    let workflow = project
        .workflow(json!({"steps": [
            {"id": "draft", "type": "tool", "config": {"tool_id": draft}},
            {"id": "review", "type": "human", "depends_on": ["draft"], "config": {
                "instructions": "Check: {{ steps.draft.output.draft }}"}},
            {"id": "send", "type": "tool", "depends_on": ["review"], "config": {
                "tool_id": send, "input": {"approved": "{{ steps.review.output.approved }}",
                                           "note": "{{ steps.review.output.note }}"}}},
        ]}))
        .await;

    // WHEN a run starts
    let run = project
        .start_run(&workflow, &agent, json!({}), json!({}))
        .await;
    let id = run["id"].as_str().unwrap();

    // THEN it waits for input at the human step, having run nothing after it
    let waiting = project.wait_for_status(id, "awaiting_input").await;
    assert_eq!(waiting["has_human_in_loop"], true, "{waiting:#}");
    let steps = project.steps(id).await;
    assert_eq!(step(&steps, "draft")["status"], "succeeded");
    assert_eq!(step(&steps, "review")["status"], "waiting", "{steps:#?}");
    assert!(tools.calls("/send").await.is_empty());

    // WHEN someone resumes it
    let input = json!({"approved": true, "note": "ok by Ada"});
    let reply = project
        .post(
            &format!("/api/v1/runs/{id}/resume"),
            json!({"input": input}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "running", "{:#}", reply.body);

    // THEN it succeeds, the input being the human step's output
    let done = project.wait_for_status(id, "succeeded").await;
    assert_timed(&done);
    let steps = project.steps(id).await;
    let review = step(&steps, "review");
    assert_eq!(review["status"], "succeeded", "{review:#}");
    assert_eq!(review["response"], input);
    assert_timed(review);
    assert_eq!(tools.calls("/send").await, vec![input.clone()]);
    assert_eq!(tools.calls("/drafts").await.len(), 1);

    // AND a run that is not waiting cannot be resumed
    let again = project
        .post(
            &format!("/api/v1/runs/{id}/resume"),
            json!({"input": input}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
}

#[tokio::test]
async fn a_run_needing_approval_runs_once_approved_and_never_once_rejected() {
    // GIVEN a one-step workflow
    let server = start_dev_server(&[]).await;
    let project = project(&server, None).await;
    let tools = ToolApi::start().await;
    tools.answer("/act", json!({"ok": true})).await;
    let act = project.tool("Act", tools.url("/act"), json!({})).await;
    let llm = unused_llm().await;
    let agent = project.agent("gpt-4o-mini", &llm).await;
    let workflow = project
        .workflow(json!({"steps": [{"id": "act", "type": "tool", "config": {"tool_id": act}}]}))
        .await;

    // WHEN a run asks for approval
    let first = project
        .start_run(
            &workflow,
            &agent,
            json!({}),
            json!({"require_approval": true}),
        )
        .await;
    let first_id = first["id"].as_str().unwrap();

    // THEN it waits for it, running nothing
    assert_eq!(first["status"], "awaiting_approval", "{first:#}");
    assert_eq!(first["require_approval"], true);
    let waiting = project.wait_for_status(first_id, "awaiting_approval").await;
    assert!(waiting["started_at"].is_null(), "{waiting:#}");
    assert!(project.steps(first_id).await.is_empty());
    assert!(tools.calls("/act").await.is_empty());

    // WHEN an admin approves it (here the owner who started it: this test follows the
    // lifecycle, so the project lets whoever starts a run decide it; who may decide is
    // tested in tests/api/run_governance.rs)
    let reply = project
        .patch(
            &format!("/api/v1/projects/{}", project.id),
            json!({"settings": {"approvals": {"allow_self_approval": true}}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = project
        .post(
            &format!("/api/v1/runs/{first_id}/approve"),
            json!({"comment": "fine"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "queued", "{:#}", reply.body);

    // THEN it runs to success
    let done = project.wait_for_status(first_id, "succeeded").await;
    assert_timed(&done);
    assert_eq!(tools.calls("/act").await.len(), 1);

    // WHEN another run asking for approval is rejected
    let second = project
        .start_run(
            &workflow,
            &agent,
            json!({}),
            json!({"require_approval": true}),
        )
        .await;
    let second_id = second["id"].as_str().unwrap();
    assert_eq!(second["status"], "awaiting_approval", "{second:#}");
    project.wait_until_parked(second_id, "AwaitApproval").await;
    let reply = project
        .post(
            &format!("/api/v1/runs/{second_id}/reject"),
            json!({"reason": "too expensive"}),
        )
        .await;

    // THEN it is cancelled with the reason, and no step ever runs
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "cancelled", "{:#}", reply.body);
    assert_eq!(reply.body["error_message"], "rejected: too expensive");
    assert!(!reply.body["ended_at"].is_null(), "{:#}", reply.body);
    let rejected = project.run(second_id).await;
    assert_eq!(rejected["status"], "cancelled", "{rejected:#}");
    assert!(project.steps(second_id).await.is_empty());
    assert_eq!(
        tools.calls("/act").await.len(),
        1,
        "the rejected run ran its step"
    );

    // AND its execution ends without ever executing
    assert_stopped(&project.wait_for_execution_end(second_id).await);
    let entered: Vec<Option<String>> = project
        .execution_events(second_id)
        .await
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    assert!(
        !entered.contains(&Some("Execute".to_owned())),
        "the rejected run's execution entered Execute: {entered:?}"
    );

    // AND a decided run cannot be decided again
    for (run, verb, body) in [
        (first_id, "approve", json!({"comment": "again"})),
        (second_id, "approve", json!({"comment": "again"})),
        (second_id, "reject", json!({"reason": "again"})),
    ] {
        let again = project
            .post(&format!("/api/v1/runs/{run}/{verb}"), body)
            .await;
        assert_eq!(
            again.status,
            StatusCode::CONFLICT,
            "{verb} {run}: {}",
            again.body
        );
    }
}

#[tokio::test]
async fn cancelling_a_run_waiting_for_input_ends_it_and_its_execution() {
    // GIVEN a run waiting at a human step, its task token parked
    let server = start_dev_server(&[]).await;
    let project = project(&server, None).await;
    let tools = ToolApi::start().await;
    tools.answer("/send", json!({"sent": true})).await;
    let send = project.tool("Send", tools.url("/send"), json!({})).await;
    let llm = unused_llm().await;
    let agent = project.agent("gpt-4o-mini", &llm).await;
    let workflow = project
        .workflow(json!({"steps": [
            {"id": "review", "type": "human", "config": {"instructions": "Approve?"}},
            {"id": "send", "type": "tool", "depends_on": ["review"], "config": {"tool_id": send}},
        ]}))
        .await;
    let run = project
        .start_run(&workflow, &agent, json!({}), json!({}))
        .await;
    let id = run["id"].as_str().unwrap();
    project.wait_for_status(id, "awaiting_input").await;
    project.wait_until_parked(id, "AwaitHuman").await;

    // WHEN it is cancelled
    let reply = project
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/runs/{id}/cancel"),
            None,
        )
        .await;

    // THEN it ends cancelled, can no longer be resumed, and its execution ends
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "cancelled", "{:#}", reply.body);
    assert!(!reply.body["ended_at"].is_null(), "{:#}", reply.body);
    let resumed = project
        .post(
            &format!("/api/v1/runs/{id}/resume"),
            json!({"input": {"ok": true}}),
        )
        .await;
    assert_eq!(resumed.status, StatusCode::CONFLICT, "{}", resumed.body);
    assert_stopped(&project.wait_for_execution_end(id).await);
    assert!(tools.calls("/send").await.is_empty());
    assert_eq!(project.run(id).await["status"], "cancelled");
}

// ---------------------------------------------------------------------------------------
// Delivery: the tests below drive a worker of their own, on the dev server's deployment.

/// How a message is handed to the worker.
#[derive(Clone, Copy, Debug)]
enum Delivery {
    /// Both deliveries of a message in one batch.
    TwiceInOneBatch,
    /// Each delivery in its own batch, the two batches at once.
    TwiceConcurrently,
    /// One delivery, in a batch with a poison message first.
    OnceAfterPoison,
}

/// A run worker of our own, fed from the dev server's run queue by hand, the way the
/// Lambda event source would: it deletes what the worker handled and releases what failed.
struct Driver {
    worker: Worker,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    /// Ids the worker reported as failed, with the delivery mode.
    failures: Vec<(String, Delivery)>,
}

impl Driver {
    async fn new(prefix: &str) -> Self {
        let clients = local_clients().await;
        // The dev server's settings, fakes allowed out as its EGRESS_ALLOW allows them.
        let allow = support::fake_allow_list();
        let mut config = Config::from_lookup(|key| match key {
            "SPARK_OPS_PREFIX" => Some(prefix.to_owned()),
            "EGRESS_ALLOW" => Some(allow.clone()),
            _ => None,
        })
        .expect("configuration");
        provision(&clients, &mut config)
            .await
            .expect("the dev server's resources");
        let queue_url = config.run_queue_url.clone().expect("the run queue");
        let sqs = clients.sqs.clone();
        let state = AppState::load(config, clients, Arc::new(SystemClock))
            .await
            .expect("state");
        Self {
            worker: Worker::new(state).await.expect("a worker"),
            sqs,
            queue_url,
            failures: Vec::new(),
        }
    }

    async fn receive(&self, wait: i32) -> Vec<aws_sdk_sqs::types::Message> {
        self.sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait)
            .visibility_timeout(120)
            .send()
            .await
            .expect("receive")
            .messages
            .unwrap_or_default()
    }

    async fn release(&self, message: &aws_sdk_sqs::types::Message) {
        if let Some(handle) = message.receipt_handle() {
            let _ = self
                .sqs
                .change_message_visibility()
                .queue_url(&self.queue_url)
                .receipt_handle(handle)
                .visibility_timeout(0)
                .send()
                .await;
        }
    }

    async fn delete(&self, message: &aws_sdk_sqs::types::Message) {
        if let Some(handle) = message.receipt_handle() {
            let _ = self
                .sqs
                .delete_message()
                .queue_url(&self.queue_url)
                .receipt_handle(handle)
                .send()
                .await;
        }
    }

    /// The next message, delivered twice: two receipts with different handles.
    async fn next_twice(
        &self,
    ) -> Option<(aws_sdk_sqs::types::Message, aws_sdk_sqs::types::Message)> {
        let mut received = self.receive(2).await.into_iter();
        let first = received.next()?;
        // It goes back to be received again, and so does anything received with it.
        for other in received {
            self.release(&other).await;
        }
        self.release(&first).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let mut second = None;
            for message in self.receive(1).await {
                if message.message_id() == first.message_id() && second.is_none() {
                    second = Some(message);
                } else {
                    self.release(&message).await;
                }
            }
            if let Some(second) = second {
                assert_ne!(first.receipt_handle(), second.receipt_handle());
                return Some((first, second));
            }
        }
        panic!("message {:?} did not come back", first.message_id());
    }

    fn as_queued(message: &aws_sdk_sqs::types::Message) -> QueueMessage {
        QueueMessage {
            message_id: message.message_id().unwrap_or_default().to_owned(),
            receipt_handle: None,
            body: message.body().unwrap_or_default().to_owned(),
        }
    }

    /// Hands every message left on the queue to the worker once, as the queue would
    /// redeliver it; asserts each is acknowledged.
    async fn drain(&self) {
        let mut quiet = 0;
        while quiet < 2 {
            let received = self.receive(1).await;
            if received.is_empty() {
                quiet += 1;
                continue;
            }
            for message in received {
                let failed = self
                    .worker
                    .handle_batch(vec![Self::as_queued(&message)])
                    .await;
                assert!(
                    failed.is_empty(),
                    "a redelivered message of an ended run failed again: {:?}",
                    message.body()
                );
                self.delete(&message).await;
            }
        }
    }

    /// Feeds the run queue to the worker in `mode` until run `id` ends.
    async fn drive(&mut self, project: &Project, id: &str, mode: Delivery) -> Value {
        let deadline = Instant::now() + RUN_DEADLINE;
        loop {
            let run = project.run(id).await;
            if matches!(
                run["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not end\n{}",
                project.describe(id).await
            );
            let (handled, failed) = match mode {
                Delivery::TwiceInOneBatch => {
                    let Some((a, b)) = self.next_twice().await else {
                        continue;
                    };
                    let batch = vec![Self::as_queued(&a), Self::as_queued(&b)];
                    (vec![a, b], self.worker.handle_batch(batch).await)
                }
                Delivery::TwiceConcurrently => {
                    let Some((a, b)) = self.next_twice().await else {
                        continue;
                    };
                    let (x, y) = tokio::join!(
                        self.worker.handle_batch(vec![Self::as_queued(&a)]),
                        self.worker.handle_batch(vec![Self::as_queued(&b)]),
                    );
                    (vec![a, b], x.into_iter().chain(y).collect())
                }
                Delivery::OnceAfterPoison => {
                    let received = self.receive(2).await;
                    if received.is_empty() {
                        continue;
                    }
                    let poison_id = format!("poison-{}", uuid::Uuid::now_v7().simple());
                    let mut batch = vec![QueueMessage {
                        message_id: poison_id,
                        receipt_handle: None,
                        body: "not json".to_owned(),
                    }];
                    batch.extend(received.iter().map(Self::as_queued));
                    let failed = self.worker.handle_batch(batch).await;
                    assert!(
                        failed.is_empty(),
                        "the poison message goes to the dead-letter queue and fails nothing: \
                         {failed:?}"
                    );
                    (received, Vec::new())
                }
            };
            for message in &handled {
                let id = message.message_id().unwrap_or_default();
                if failed.iter().any(|f| f == id) {
                    self.failures.push((id.to_owned(), mode));
                    self.release(message).await;
                } else {
                    self.delete(message).await;
                }
            }
        }
    }
}

#[tokio::test]
async fn every_message_delivered_twice_has_its_effects_once() {
    // GIVEN the support workflow on a dev server running no worker, and a worker of our own
    let server = start_dev_server(&[("RUN_WORKER_ENABLED", "false")]).await;
    let flow = support_flow(&server).await;
    let mut driver = Driver::new(&server.prefix).await;

    for mode in [Delivery::TwiceInOneBatch, Delivery::TwiceConcurrently] {
        // WHEN a run's every queue message reaches the worker twice
        let before = flow.effects().await;
        let created = flow.start().await;
        let id = created["id"].as_str().unwrap();
        let run = driver.drive(&flow.project, id, mode).await;

        // THEN the run succeeds with the effects, tokens, cost and records of one execution
        assert_eq!(
            run["status"],
            "succeeded",
            "{mode:?}\n{}",
            flow.project.describe(id).await
        );
        assert_eq!(flow.effects().await - before, ONE_EXECUTION, "{mode:?}");
        flow.assert_counted_once(&run).await;
        let received = flow.hooks.received();
        let deliveries: HashSet<&str> = received.iter().map(|r| r.delivery_id.as_str()).collect();
        assert_eq!(deliveries.len(), received.len(), "{received:#?}");

        // AND whatever the worker asked to see again is acknowledged, without effect, when
        // it comes back
        driver.drain().await;
        assert_eq!(flow.effects().await - before, ONE_EXECUTION, "{mode:?}");
        flow.assert_counted_once(&flow.project.run(id).await).await;
    }

    // AND a duplicate handled after its twin, in the same batch, is simply acknowledged; one
    // racing its twin may only be put off until the twin is done
    assert!(
        driver
            .failures
            .iter()
            .all(|(_, mode)| matches!(mode, Delivery::TwiceConcurrently)),
        "the worker failed duplicates: {:?}",
        driver.failures
    );
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_alone_and_its_batch_mates_are_handled() {
    // GIVEN the support workflow on a dev server running no worker, and a worker of our own
    let server = start_dev_server(&[("RUN_WORKER_ENABLED", "false")]).await;
    let flow = support_flow(&server).await;
    let mut driver = Driver::new(&server.prefix).await;

    // WHEN every message of a run is handed over in a batch behind a malformed one
    let created = flow.start().await;
    let id = created["id"].as_str().unwrap();
    let run = driver
        .drive(&flow.project, id, Delivery::OnceAfterPoison)
        .await;

    // THEN the poison message is dead-lettered and nothing is reported failed (asserted per
    // batch), and the run succeeds once
    assert_eq!(
        run["status"],
        "succeeded",
        "{}",
        flow.project.describe(id).await
    );
    assert_eq!(flow.effects().await, ONE_EXECUTION);
    flow.assert_counted_once(&run).await;
}

#[tokio::test]
async fn a_poison_message_lands_in_the_dead_letter_queue_while_runs_complete() {
    // GIVEN the dev server's worker, retrying failed messages after one second
    let server = start_dev_server(&[("RUN_WORKER_RETRY_DELAY_SECONDS", "1")]).await;
    let flow = support_flow(&server).await;
    let sqs = aws_sdk_sqs::Client::new(&support::local_sdk().await);
    let queue_url = |name: String| {
        let sqs = sqs.clone();
        async move {
            sqs.get_queue_url()
                .queue_name(name)
                .send()
                .await
                .expect("queue exists")
                .queue_url()
                .expect("queue url")
                .to_owned()
        }
    };
    let runs_queue = queue_url(format!("{}-runs", server.prefix)).await;
    let dlq = queue_url(format!("{}-runs-dlq", server.prefix)).await;

    // WHEN a malformed message is queued and a run starts alongside it
    let poison = format!("not json {}", uuid::Uuid::now_v7().simple());
    sqs.send_message()
        .queue_url(&runs_queue)
        .message_body(&poison)
        .send()
        .await
        .expect("sent");
    let created = flow.start().await;
    let id = created["id"].as_str().unwrap();

    // THEN the run completes
    let run = flow.project.wait_for_status(id, "succeeded").await;
    flow.assert_counted_once(&run).await;

    // AND the poison message reaches the dead-letter queue within 30 s
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut dead = Vec::new();
    while Instant::now() < deadline && !dead.contains(&poison) {
        let received = sqs
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .wait_time_seconds(2)
            .send()
            .await
            .expect("receive from the DLQ");
        dead.extend(
            received
                .messages()
                .iter()
                .filter_map(|m| m.body().map(str::to_owned)),
        );
    }
    assert!(
        dead.contains(&poison),
        "the poison message is not in the DLQ after 30 s (found {dead:?}); dev server log: {}",
        server.log.display()
    );
    assert_eq!(dead.len(), 1, "only the poison message is dead: {dead:?}");
    // AND the worker said why once, in one line, instead of failing it five times
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert_eq!(
        log.matches("the message is not a run task").count(),
        1,
        "dev server log: {}",
        server.log.display()
    );
}

#[tokio::test]
async fn a_tool_aimed_at_the_local_secrets_manager_is_refused_and_reads_no_secret() {
    // GIVEN the dev server as `make dev` runs it, with an empty EGRESS_ALLOW
    let server = start_dev_server(&[("EGRESS_ALLOW", "")]).await;
    let project = project(&server, None).await;
    // AND a new tenant's tool aimed at the local Secrets Manager, asking for the JWT key
    let steal = project
        .tool(
            "Steal",
            format!("{}/", support::localstack_url()),
            json!({"headers": {"X-Amz-Target": "secretsmanager.GetSecretValue"}}),
        )
        .await;
    let llm = unused_llm().await;
    let agent = project.agent("gpt-4o-mini", &llm).await;
    let secret_id = format!("{}/jwt-signing-key", server.prefix);
    let workflow = project
        .workflow(json!({"steps": [
            {"id": "steal", "type": "tool", "config": {"tool_id": steal, "input": {"SecretId": secret_id}}},
        ]}))
        .await;

    // WHEN a run executes the step
    let run = project
        .start_run(&workflow, &agent, json!({}), json!({}))
        .await;
    let id = run["id"].as_str().unwrap();
    let run = project.wait_for_status(id, "failed").await;

    // THEN the step failed with the refusal, and nothing the run shows holds the key
    let steps = project.steps(id).await;
    let error = step(&steps, "steal")["error_message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("egress refused: 127.0.0.1"), "{error}");
    let key = support::read_secret(&secret_id)
        .await
        .expect("the dev server's JWT key exists");
    let shown = format!("{run}{steps:?}{:?}", project.logs(id).await);
    assert!(!shown.contains(&key), "the JWT signing key leaked: {shown}");
}

#[tokio::test]
async fn a_run_whose_worker_dies_mid_step_is_finished_by_another_and_counted_once() {
    // GIVEN a dev server with short leases, slices and sweeps, and a run whose first step
    // (a prompt) costs money and whose second (an idempotent GET tool) takes 4 s
    let knobs = [
        ("RUN_STEP_LEASE_SECONDS", "3"),
        ("RUN_WORKER_INVOCATION_SECONDS", "12"),
        ("SWEEPER_QUIET_SECONDS", "1"),
        ("SWEEPER_INTERVAL_SECONDS", "1"),
    ];
    let first = start_dev_server(&knobs).await;
    let owner = project(
        &first,
        Some(
            json!({MODEL: {"input_per_million": INPUT_PRICE, "output_per_million": OUTPUT_PRICE}}),
        ),
    )
    .await;
    let tools = ToolApi::start().await;
    tools
        .answer_after("/slow", json!({"ok": true}), Duration::from_secs(4))
        .await;
    let slow = owner
        .tool("Slow report", tools.url("/slow"), json!({"method": "GET"}))
        .await;
    let llm = FakeLlm::start(Script {
        tool_call: None,
        answer: (ANSWER.to_owned(), ANSWER_USAGE),
    })
    .await;
    let agent = owner.agent(MODEL, &llm).await;
    let workflow = owner
        .workflow(json!({"steps": [
            {"id": "triage", "type": "prompt", "config": {"prompt": "Customer {{ input.customer_id }}"}},
            {"id": "report", "type": "tool", "depends_on": ["triage"],
             "config": {"tool_id": slow, "input": {}}},
        ]}))
        .await;
    let created = owner
        .start_run(&workflow, &agent, json!({"customer_id": "c-42"}), json!({}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();

    // WHEN its worker is killed while the tool answers
    tools.wait_for_call("/slow").await;
    let prefix = first.prefix.clone();
    drop(first);
    // AND another dev server of the same deployment comes up
    let second = start_dev_server_as(&prefix, &knobs).await;
    let owner = owner.on(&second);

    // THEN the sweeper finds the execute task nobody answers, the new worker takes the step
    // over (its lease expired, and a GET is safe to repeat) and the run succeeds
    let deadline = Instant::now() + Duration::from_secs(90);
    let run = loop {
        let run = owner.run(&id).await;
        if run["status"] != "running" && run["status"] != "queued" {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} still `{}` after 90 s\n{}",
            run["status"],
            owner.describe(&id).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(run["status"], "succeeded", "{}", owner.describe(&id).await);
    // AND the model was asked once, the tool twice (the killed call, then the retake), and
    // the prompt's tokens and cost were counted exactly once
    assert_eq!(llm.requests().await.len(), 1);
    assert_eq!(tools.calls("/slow").await.len(), 2);
    assert_eq!(
        (
            run["tokens_prompt"].as_u64(),
            run["tokens_completion"].as_u64()
        ),
        (Some(ANSWER_USAGE.0), Some(ANSWER_USAGE.1)),
        "{run:#}"
    );
    assert_eq!(
        cost_of(&run),
        expected_cost(ANSWER_USAGE.0, ANSWER_USAGE.1).normalize()
    );
    let steps = owner.steps(&id).await;
    let report = steps.iter().find(|s| s["step_id"] == "report").unwrap();
    assert_eq!(report["attempts"], 2, "{report:#}");
}

/// A LocalStack of the test's own, on its own port, started and stopped with the project's
/// `services.sh`; stopped when dropped.
struct OwnLocalStack {
    port: u16,
    record: std::path::PathBuf,
}

impl OwnLocalStack {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free local port")
            .port();
        let record = std::env::temp_dir().join(format!("spark-ops-localstack-{port}.record"));
        let own = Self { port, record };
        own.services("start").await;
        own
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn services(&self, action: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/local/services.sh");
        let mut command = std::process::Command::new("bash");
        command
            .args([script, action, "--record"])
            .arg(&self.record)
            .env("LOCALSTACK_PORT", self.port.to_string());
        if action == "start" {
            command.arg("localstack");
        }
        let status = tokio::task::spawn_blocking(move || command.status())
            .await
            .expect("services.sh finishes")
            .expect("services.sh runs");
        assert!(
            status.success(),
            "services.sh {action} LocalStack on {}",
            self.port
        );
    }
}

impl Drop for OwnLocalStack {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/local/services.sh");
        let _ = std::process::Command::new("bash")
            .arg(script)
            .args(["stop", "--record"])
            .arg(&self.record)
            .env("LOCALSTACK_PORT", self.port.to_string())
            .status();
        let _ = std::fs::remove_file(&self.record);
    }
}

#[tokio::test]
async fn an_unfinished_run_recovers_when_localstack_restarts_under_the_dev_server() {
    // GIVEN a dev server on a LocalStack of its own, with quick sweeps, and a run whose tool
    // step is answering when LocalStack goes away
    let localstack = OwnLocalStack::start().await;
    let url = localstack.url();
    let server = start_dev_server(&[
        ("AWS_ENDPOINT_URL", url.as_str()),
        ("RUN_STEP_LEASE_SECONDS", "3"),
        ("RUN_WORKER_INVOCATION_SECONDS", "12"),
        ("SWEEPER_QUIET_SECONDS", "1"),
        ("SWEEPER_INTERVAL_SECONDS", "1"),
    ])
    .await;
    let project = project(&server, None).await;
    let tools = ToolApi::start().await;
    tools
        .answer_after("/draft", json!({"draft": "Hello"}), Duration::from_secs(3))
        .await;
    let draft = project
        .tool("Draft", tools.url("/draft"), json!({"method": "GET"}))
        .await;
    let llm = unused_llm().await;
    let agent = project.agent("gpt-4o-mini", &llm).await;
    let workflow = project
        .workflow(json!({"steps": [
            {"id": "draft", "type": "tool", "config": {"tool_id": draft}},
            {"id": "review", "type": "human", "depends_on": ["draft"],
             "config": {"instructions": "Check: {{ steps.draft.output.draft }}"}},
        ]}))
        .await;
    let created = project
        .start_run(&workflow, &agent, json!({}), json!({}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    tools.wait_for_call("/draft").await;

    // WHEN LocalStack restarts, forgetting every queue, execution and secret
    localstack.services("stop").await;
    localstack.services("start").await;

    // THEN the dev server provisions its resources again, the sweeper gives the run a new
    // execution, and the run waits for its human step
    let waiting = project.wait_for_status(&id, "awaiting_input").await;
    assert_eq!(waiting["status"], "awaiting_input");
    // AND a resume finishes it on the new lifecycle
    let reply = project
        .post(
            &format!("/api/v1/runs/{id}/resume"),
            json!({"input": {"approved": true}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    project.wait_for_status(&id, "succeeded").await;
    assert!(tools.calls("/draft").await.len() <= 2);
}
