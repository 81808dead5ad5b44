//! Unit tests of the chat client and the prompt loop, against a fake endpoint.

use std::sync::Mutex;

use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::*;

const KEY: &str = "sk-test-5f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// Tools that remember their calls: `lookup_order` works, anything else fails.
#[derive(Default)]
struct FakeTools {
    calls: Mutex<Vec<(String, Value)>>,
}

impl FakeTools {
    fn calls(&self) -> Vec<(String, Value)> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl ToolCaller for FakeTools {
    async fn call(&self, name: &str, arguments: Value) -> Result<Value, String> {
        self.calls
            .lock()
            .unwrap()
            .push((name.to_owned(), arguments.clone()));
        match name {
            "lookup_order" => Ok(json!({"order_id": arguments["order_id"], "status": "shipped"})),
            _ => Err("the order API answered 503".into()),
        }
    }
}

fn tool_call(id: &str, name: &str, arguments: &str, usage: (u64, u64)) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments}
                }]
            },
            "finish_reason": "tool_calls"
        }],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}
    }))
}

fn answer(text: &str, usage: (u64, u64)) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-2",
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}
    }))
}

/// A fake LLM answering with `replies` in turn, each once.
async fn fake_llm(replies: Vec<ResponseTemplate>) -> MockServer {
    let server = MockServer::start().await;
    for reply in replies {
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .respond_with(reply)
            .up_to_n_times(1)
            .mount(&server)
            .await;
    }
    server
}

fn endpoint(server: &MockServer) -> Endpoint {
    Endpoint {
        base_url: format!("{}/v1/", server.uri()),
        api_key: Some(SecretString::from(KEY)),
    }
}

/// A client that may reach `servers` (local fakes, allowed as `EGRESS_ALLOW` would).
fn client_allowing(servers: &[&str]) -> ChatClient {
    let allow = servers
        .iter()
        .map(|s| crate::outbound::HostPort::of_endpoint(s).unwrap());
    let egress = Egress::new(crate::outbound::EgressPolicy::new(allow, [])).unwrap();
    ChatClient::new(egress).with_retries(0, Duration::from_millis(1))
}

fn client(server: &MockServer) -> ChatClient {
    client_allowing(&[&server.uri()])
}

fn order_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"order_id": {"type": "string"}},
        "required": ["order_id"]
    })
}

fn params(max_iterations: u32) -> PromptParams {
    PromptParams {
        model: "gpt-4o".into(),
        system_prompt: Some("You are a support agent.".into()),
        temperature: Some(0.2),
        max_tokens: Some(512),
        prompt: "Where is order 42?".into(),
        tools: vec![
            ToolSpec::new(
                "lookup_order",
                Some("Finds an order".into()),
                Some(order_schema()),
            ),
            ToolSpec::new("refund", None, None),
        ],
        max_iterations,
        budget: Budget::new(Duration::from_secs(60)),
    }
}

async fn requests(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r: &Request| r.body_json::<Value>().unwrap())
        .collect()
}

#[tokio::test]
async fn a_tool_call_then_an_answer_gives_the_text_the_call_and_the_summed_tokens() {
    // GIVEN a fake LLM that first calls a tool, then answers
    let server = fake_llm(vec![
        tool_call("call_1", "lookup_order", r#"{"order_id":"42"}"#, (120, 30)),
        answer("Order 42 has shipped.", (180, 12)),
    ])
    .await;
    let tools = FakeTools::default();

    // WHEN the prompt step runs
    let outcome = run_prompt(&client(&server), &endpoint(&server), &params(5), &tools)
        .await
        .unwrap();

    // THEN the answer, the tool call with its output and the exact token sums are recorded
    assert_eq!(outcome.text, "Order 42 has shipped.");
    assert_eq!(
        outcome.tool_calls,
        vec![ToolCallRecord {
            id: "call_1".into(),
            name: "lookup_order".into(),
            arguments: json!({"order_id": "42"}),
            output: Some(json!({"order_id": "42", "status": "shipped"})),
            error: None,
        }]
    );
    assert_eq!(outcome.tokens_prompt, 300);
    assert_eq!(outcome.tokens_completion, 42);
    assert_eq!(outcome.model_calls, 2);
    assert_eq!(
        tools.calls(),
        vec![("lookup_order".to_owned(), json!({"order_id": "42"}))]
    );

    // AND the second request carries the assistant's call and the tool's result for it
    let sent = requests(&server).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[1]["messages"],
        json!([
            {"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": "Where is order 42?"},
            {"role": "assistant", "content": null, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "lookup_order", "arguments": "{\"order_id\":\"42\"}"}
            }]},
            {"role": "tool", "tool_call_id": "call_1",
             "content": "{\"order_id\":\"42\",\"status\":\"shipped\"}"}
        ])
    );
}

#[tokio::test]
async fn the_request_offers_the_tools_as_functions_with_the_agent_settings_and_the_key() {
    // GIVEN a fake LLM that answers at once
    let server = fake_llm(vec![answer("Hello", (5, 1))]).await;

    // WHEN a prompt step with two tools runs
    run_prompt(
        &client(&server),
        &endpoint(&server),
        &params(5),
        &FakeTools::default(),
    )
    .await
    .unwrap();

    // THEN the request went to {base_url}/chat/completions with the bearer key
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].url.path(), "/v1/chat/completions");
    assert_eq!(
        received[0].headers.get("authorization").unwrap(),
        &format!("Bearer {KEY}")
    );
    // AND it names the model, the agent's settings and each tool as a function
    let body = received[0].body_json::<Value>().unwrap();
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["temperature"], json!(0.2));
    assert_eq!(body["max_tokens"], 512);
    assert_eq!(body["tool_choice"], "auto");
    assert_eq!(
        body["tools"],
        json!([
            {"type": "function", "function": {
                "name": "lookup_order", "description": "Finds an order",
                "parameters": order_schema()
            }},
            {"type": "function", "function": {
                "name": "refund", "parameters": {"type": "object"}
            }}
        ])
    );
}

#[tokio::test]
async fn without_tools_a_key_or_a_system_prompt_the_request_has_none_of_them() {
    let server = fake_llm(vec![answer("Hi", (3, 1))]).await;
    let endpoint = Endpoint {
        base_url: format!("{}/v1", server.uri()),
        api_key: None,
    };
    let params = PromptParams {
        system_prompt: None,
        temperature: None,
        max_tokens: None,
        tools: vec![],
        ..params(1)
    };

    let outcome = run_prompt(&client(&server), &endpoint, &params, &FakeTools::default())
        .await
        .unwrap();

    assert_eq!(outcome.text, "Hi");
    assert_eq!(outcome.model_calls, 1);
    let received = server.received_requests().await.unwrap();
    assert!(received[0].headers.get("authorization").is_none());
    assert_eq!(
        received[0].body_json::<Value>().unwrap(),
        json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "Where is order 42?"}]
        })
    );
}

#[tokio::test]
async fn a_model_that_keeps_calling_tools_fails_after_max_iterations() {
    // GIVEN a fake LLM that always asks for a tool
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(tool_call(
            "call_x",
            "lookup_order",
            r#"{"order_id":"1"}"#,
            (10, 5),
        ))
        .mount(&server)
        .await;
    let tools = FakeTools::default();

    // WHEN a step allowing 3 model calls runs
    let err = run_prompt(&client(&server), &endpoint(&server), &params(3), &tools)
        .await
        .unwrap_err();

    // THEN it fails, not retryable, after exactly 3 calls
    assert!(matches!(
        err,
        PromptError::MaxIterations {
            max_iterations: 3,
            ..
        }
    ));
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("max_iterations (3 model calls)"));
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
    // AND the tools asked for by the last call were not run
    assert_eq!(tools.calls().len(), 2);
    // AND what was spent is still known, for the step record and its cost
    let partial = err.partial();
    assert_eq!(partial.model_calls, 3);
    assert_eq!(partial.tool_calls.len(), 2);
    assert_eq!((partial.tokens_prompt, partial.tokens_completion), (30, 15));
}

#[tokio::test]
async fn a_failing_tool_is_reported_to_the_model_which_then_answers() {
    // GIVEN a tool that fails
    let server = fake_llm(vec![
        tool_call("call_r", "refund", r#"{"order_id":"42"}"#, (50, 10)),
        answer("I could not refund it.", (70, 8)),
    ])
    .await;
    let tools = FakeTools::default();

    // WHEN the step runs
    let outcome = run_prompt(&client(&server), &endpoint(&server), &params(5), &tools)
        .await
        .unwrap();

    // THEN the error went back to the model as the tool's result
    let sent = requests(&server).await;
    assert_eq!(
        sent[1]["messages"][3],
        json!({"role": "tool", "tool_call_id": "call_r",
               "content": "{\"error\":\"the order API answered 503\"}"})
    );
    // AND the step succeeds with the failed call recorded
    assert_eq!(outcome.text, "I could not refund it.");
    assert_eq!(
        outcome.tool_calls[0].error.as_deref(),
        Some("the order API answered 503")
    );
    assert_eq!(outcome.tool_calls[0].output, None);
}

#[tokio::test]
async fn malformed_tool_arguments_are_reported_to_the_model_not_run() {
    // GIVEN a model that writes broken JSON arguments, then answers
    let server = fake_llm(vec![
        tool_call("call_bad", "lookup_order", r#"{"order_id": 42"#, (40, 9)),
        answer("Sorry.", (60, 2)),
    ])
    .await;
    let tools = FakeTools::default();

    // WHEN the step runs
    let outcome = run_prompt(&client(&server), &endpoint(&server), &params(5), &tools)
        .await
        .unwrap();

    // THEN the tool was not called, and the model was told why
    assert!(tools.calls().is_empty());
    let sent = requests(&server).await;
    let tool_message = &sent[1]["messages"][3];
    assert_eq!(tool_message["tool_call_id"], "call_bad");
    let content: Value = serde_json::from_str(tool_message["content"].as_str().unwrap()).unwrap();
    assert!(content["error"]
        .as_str()
        .unwrap()
        .starts_with("the arguments are not valid JSON"));
    // AND the record keeps the raw arguments and the error
    let record = &outcome.tool_calls[0];
    assert_eq!(record.arguments, json!(r#"{"order_id": 42"#));
    assert!(record.error.is_some());
    assert_eq!(outcome.text, "Sorry.");
    assert_eq!(
        (outcome.tokens_prompt, outcome.tokens_completion),
        (100, 11)
    );
}

#[tokio::test]
async fn a_tool_that_was_not_offered_is_not_run() {
    let server = fake_llm(vec![
        tool_call("call_z", "delete_everything", "{}", (1, 1)),
        answer("OK.", (1, 1)),
    ])
    .await;
    let tools = FakeTools::default();

    let outcome = run_prompt(&client(&server), &endpoint(&server), &params(5), &tools)
        .await
        .unwrap();

    assert!(tools.calls().is_empty());
    assert_eq!(
        outcome.tool_calls[0].error.as_deref(),
        Some("there is no tool named `delete_everything`; the tools are: lookup_order, refund")
    );
}

#[tokio::test]
async fn a_server_error_is_retryable_and_a_bad_request_is_not() {
    // GIVEN a fake LLM that answers 500, then 400
    let server = fake_llm(vec![
        ResponseTemplate::new(500).set_body_string("upstream exploded"),
        ResponseTemplate::new(400).set_body_json(json!({
            "error": {"message": "Invalid value for 'temperature'", "type": "invalid_request_error"}
        })),
    ])
    .await;

    // WHEN a step runs, twice
    let first = run_prompt(
        &client(&server),
        &endpoint(&server),
        &params(5),
        &FakeTools::default(),
    )
    .await
    .unwrap_err();
    let second = run_prompt(
        &client(&server),
        &endpoint(&server),
        &params(5),
        &FakeTools::default(),
    )
    .await
    .unwrap_err();

    // THEN the 500 is retryable, the 400 is not, each with the endpoint's message
    assert!(first.is_retryable());
    assert_eq!(
        first.to_string(),
        "model call 1 failed: the LLM endpoint answered HTTP 500: upstream exploded"
    );
    assert!(!second.is_retryable());
    let PromptError::Llm { error, .. } = &second else {
        panic!("expected an LLM error, got {second:?}");
    };
    assert_eq!(
        error,
        &LlmError::Status {
            status: 400,
            message: "Invalid value for 'temperature'".into(),
            retry_after: None
        }
    );
}

#[tokio::test]
async fn a_retryable_failure_is_retried_by_the_client() {
    // GIVEN a fake LLM that is overloaded once, then answers
    let server = fake_llm(vec![
        ResponseTemplate::new(429).insert_header("retry-after", "0"),
        answer("Done.", (7, 3)),
    ])
    .await;
    let client = client(&server).with_retries(2, Duration::from_millis(1));

    // WHEN the step runs
    let outcome = run_prompt(
        &client,
        &endpoint(&server),
        &params(5),
        &FakeTools::default(),
    )
    .await
    .unwrap();

    // THEN it succeeds, counting one model call and only the answer's tokens
    assert_eq!(outcome.text, "Done.");
    assert_eq!(outcome.model_calls, 1);
    assert_eq!((outcome.tokens_prompt, outcome.tokens_completion), (7, 3));
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn retries_stop_after_the_configured_number() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let client = client(&server).with_retries(2, Duration::from_millis(1));
    let request = ChatRequest {
        model: "gpt-4o".into(),
        messages: vec![Message::User {
            content: "hi".into(),
        }],
        temperature: None,
        max_tokens: None,
        tools: vec![],
    };

    let err = client
        .complete(&endpoint(&server), &request)
        .await
        .unwrap_err();

    assert!(err.is_retryable());
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn timeouts_and_unreachable_endpoints_are_retryable() {
    // A slow endpoint
    let server = fake_llm(vec![
        answer("late", (1, 1)).set_delay(Duration::from_secs(5))
    ])
    .await;
    let slow = client(&server).with_timeout(Duration::from_millis(200));
    let err = run_prompt(&slow, &endpoint(&server), &params(5), &FakeTools::default())
        .await
        .unwrap_err();
    let PromptError::Llm { error, .. } = &err else {
        panic!("expected an LLM error, got {err:?}");
    };
    assert_eq!(error, &LlmError::Timeout(Duration::from_millis(200)));
    assert!(err.is_retryable());

    // A port nobody listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = Endpoint {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        api_key: Some(SecretString::from(KEY)),
    };
    let err = run_prompt(
        &client_allowing(&[&nowhere.base_url]),
        &nowhere,
        &params(5),
        &FakeTools::default(),
    )
    .await
    .unwrap_err();
    let PromptError::Llm { error, .. } = &err else {
        panic!("expected an LLM error, got {err:?}");
    };
    assert!(matches!(error, LlmError::Unreachable(_)), "{error:?}");
    assert!(err.is_retryable());
    assert!(!err.to_string().contains(KEY));
}

#[tokio::test]
async fn a_malformed_response_is_not_retryable() {
    for body in [
        json!({"object": "chat.completion"}),
        json!({"choices": []}),
        json!({"choices": [{"message": {"content": 7}}]}),
    ] {
        let server = fake_llm(vec![ResponseTemplate::new(200).set_body_json(body.clone())]).await;
        let err = run_prompt(
            &client(&server),
            &endpoint(&server),
            &params(5),
            &FakeTools::default(),
        )
        .await
        .unwrap_err();
        let PromptError::Llm { error, .. } = &err else {
            panic!("expected an LLM error, got {err:?}");
        };
        assert!(matches!(error, LlmError::Malformed(_)), "{body}: {error:?}");
        assert!(!err.is_retryable(), "{body}");
    }
}

#[tokio::test]
async fn the_api_key_never_appears_in_an_error() {
    // GIVEN endpoints that echo the key back: in an error message, in a broken body
    let server = fake_llm(vec![
        ResponseTemplate::new(401).set_body_json(json!({
            "error": {"message": format!("Incorrect API key provided: {KEY}.")}
        })),
        ResponseTemplate::new(200).set_body_string(format!("{{\"choices\": \"{KEY}\"}}")),
    ])
    .await;
    let endpoint = endpoint(&server);

    // WHEN steps fail because of them
    let errors = [
        run_prompt(
            &client(&server),
            &endpoint,
            &params(5),
            &FakeTools::default(),
        )
        .await
        .unwrap_err(),
        run_prompt(
            &client(&server),
            &endpoint,
            &params(5),
            &FakeTools::default(),
        )
        .await
        .unwrap_err(),
    ];

    // THEN no Display or Debug shows the key
    for err in &errors {
        assert!(!err.is_retryable());
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(KEY), "{text}");
            assert!(!text.contains("5f1e2d3c4b5a"), "{text}");
        }
    }
    assert!(errors[0].to_string().contains("[REDACTED]"));
    assert!(errors[1].to_string().contains("[REDACTED]"));
    // AND neither does the endpoint's own Debug, nor the client's
    assert!(!format!("{endpoint:?}").contains(KEY));
    assert!(!format!("{:?}", client(&server)).contains(KEY));
}

#[tokio::test]
async fn an_invalid_endpoint_is_refused_before_any_call() {
    for base_url in ["not a url", "ftp://example.com/v1"] {
        let endpoint = Endpoint {
            base_url: base_url.into(),
            api_key: None,
        };
        let err = run_prompt(
            &client_allowing(&[]),
            &endpoint,
            &params(5),
            &FakeTools::default(),
        )
        .await
        .unwrap_err();
        assert!(!err.is_retryable(), "{base_url}");
    }
    let server = MockServer::start().await;
    let bad_key = Endpoint {
        base_url: server.uri(),
        api_key: Some(SecretString::from("sk-line\nbreak")),
    };
    let err = run_prompt(
        &client(&server),
        &bad_key,
        &params(5),
        &FakeTools::default(),
    )
    .await
    .unwrap_err();
    assert!(!err.is_retryable());
    assert!(!format!("{err:?}").contains("sk-line"));
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn arguments_sent_as_an_object_and_missing_usage_are_accepted() {
    // GIVEN an Ollama-style reply: arguments as an object, no usage
    let server = fake_llm(vec![
        ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"role": "assistant", "content": "", "tool_calls": [{
                "id": "call_o",
                "function": {"name": "lookup_order", "arguments": {"order_id": "7"}}
            }]}}]
        })),
        answer("Shipped.", (4, 2)),
    ])
    .await;
    let tools = FakeTools::default();

    let outcome = run_prompt(&client(&server), &endpoint(&server), &params(5), &tools)
        .await
        .unwrap();

    assert_eq!(tools.calls()[0].1, json!({"order_id": "7"}));
    assert_eq!((outcome.tokens_prompt, outcome.tokens_completion), (4, 2));
    // The arguments go back to the model as text, as the API wants them.
    let sent = requests(&server).await;
    assert_eq!(
        sent[1]["messages"][2]["tool_calls"][0]["function"]["arguments"],
        "{\"order_id\":\"7\"}"
    );
}

#[test]
fn the_outcome_serialises_as_the_step_output_plus_token_counts() {
    let outcome = PromptOutcome {
        text: "Done".into(),
        tool_calls: vec![
            ToolCallRecord {
                id: "c1".into(),
                name: "lookup_order".into(),
                arguments: json!({"order_id": "1"}),
                output: Some(json!({"status": "shipped"})),
                error: None,
            },
            ToolCallRecord {
                id: "c2".into(),
                name: "refund".into(),
                arguments: json!({}),
                output: None,
                error: Some("denied".into()),
            },
        ],
        tokens_prompt: 10,
        tokens_completion: 4,
        model_calls: 3,
    };
    let tool_calls = json!([
        {"id": "c1", "name": "lookup_order", "arguments": {"order_id": "1"}, "output": {"status": "shipped"}},
        {"id": "c2", "name": "refund", "arguments": {}, "error": "denied"}
    ]);
    assert_eq!(
        serde_json::to_value(&outcome).unwrap(),
        json!({"text": "Done", "tool_calls": tool_calls, "tokens_prompt": 10,
               "tokens_completion": 4, "model_calls": 3})
    );
    assert_eq!(
        outcome.output(),
        json!({"text": "Done", "tool_calls": tool_calls})
    );
    let back: PromptOutcome =
        serde_json::from_value(serde_json::to_value(&outcome).unwrap()).unwrap();
    assert_eq!(back, outcome);
}

#[test]
fn tool_names_become_valid_unique_function_names() {
    let long = "x".repeat(80);
    assert_eq!(
        function_names([
            "Order lookup",
            "order_lookup",
            "Order lookup",
            "Ünïcode!",
            "  ",
            &long,
            &long
        ]),
        vec![
            "Order_lookup".to_owned(),
            "order_lookup".into(),
            "Order_lookup_2".into(),
            "_n_code_".into(),
            "tool".into(),
            "x".repeat(64),
            format!("{}_2", "x".repeat(62)),
        ]
    );
}

#[test]
fn error_messages_are_extracted_and_shortened() {
    assert_eq!(error_message(br#"{"error": {"message": "bad"}}"#), "bad");
    assert_eq!(error_message(br#"{"error": "worse"}"#), "worse");
    assert_eq!(error_message(br#"{"message": "meh"}"#), "meh");
    assert_eq!(error_message(b"  plain text \n"), "plain text");
    assert_eq!(error_message(b""), "no error message");
    let long = error_message("é".repeat(600).as_bytes());
    assert_eq!(long.chars().count(), MAX_ERROR_MESSAGE_CHARS + 1);
    assert!(long.ends_with('…'));
}

#[test]
fn retry_delays_grow_with_jitter_and_honour_retry_after_within_a_cap() {
    let client = client_allowing(&[]).with_retries(3, Duration::from_millis(100));
    for attempt in 0..3 {
        let delay = client.backoff.wait(attempt, None);
        let full = Duration::from_millis(100 * 2_u64.pow(attempt));
        assert!(delay >= full / 2 && delay <= full, "{attempt}: {delay:?}");
    }
    let asked = |secs| Some(Duration::from_secs(secs));
    assert_eq!(client.backoff.wait(0, asked(3)), Duration::from_secs(3));
    assert_eq!(client.backoff.wait(0, asked(3600)), MAX_RETRY_DELAY);
    let huge = client.with_retries(100, Duration::from_secs(u64::MAX / 4));
    assert!(huge.backoff.wait(99, None) <= MAX_RETRY_DELAY);
}

#[test]
fn retryability_follows_the_status() {
    let status = |status| LlmError::Status {
        status,
        message: String::new(),
        retry_after: None,
    };
    for retryable in [408, 429, 500, 502, 503, 504] {
        assert!(status(retryable).is_retryable(), "{retryable}");
    }
    for not in [400, 401, 403, 404, 413, 422] {
        assert!(!status(not).is_retryable(), "{not}");
    }
}
