//! A prompt step of an agent without its own LLM endpoint uses the deployment's default:
//! `LLM_BASE_URL` and the secret `{prefix}/llm-api-key`.

use axum::http::StatusCode;
use secrecy::SecretString;
use serde_json::json;
use spark_ops::engine::run::{Engine, Outcome};
use spark_ops::run::{RunStatus, StepStatus};
use spark_ops_tests::{spawn_app_with_default_llm, NoHeartbeat};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn a_prompt_without_an_agent_endpoint_uses_the_deployment_default_and_its_key() {
    // GIVEN a deployment whose default model endpoint needs a key kept in Secrets Manager
    let llm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer sk-default-violet"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"role": "assistant", "content": "Hello Ada"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500}
        })))
        .expect(1)
        .mount(&llm)
        .await;
    let app = spawn_app_with_default_llm(&llm.uri()).await;
    app.state
        .secrets
        .put("llm-api-key", &SecretString::from("sk-default-violet"))
        .await
        .unwrap();
    // AND an agent with no `llm` of its own, in a project pricing its model
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Defaults").await;
    let prices = json!({"settings": {"model_prices": {"house-model": {"input_per_million": "2", "output_per_million": "8"}}}});
    let patched = app
        .patch(&format!("/api/v1/projects/{project}"), &owner, prices)
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let agent = app.agent(&owner, &project, "house-model").await;
    let definition = json!({"steps": [
        {"id": "greet", "type": "prompt", "config": {"prompt": "Greet {{ input.name }}"}}
    ]});
    let workflow = app.released_workflow(&owner, &project, definition).await;
    let id = app
        .start_run(
            &owner,
            json!({"workflow_id": workflow, "agent_id": agent, "env": "dev", "input": {"name": "Ada"}}),
        )
        .await;

    // WHEN a worker executes it
    let run = app.state.store.get_run(id).await.unwrap().unwrap();
    let outcome = Engine::new(app.state.clone())
        .unwrap()
        .execute(run, &NoHeartbeat)
        .await
        .unwrap();

    // THEN the default endpoint answered with the key, and the cost is the project's price:
    // 1000 × 2 / 1e6 + 500 × 8 / 1e6 = 0.006
    assert_eq!(outcome, Outcome::Succeeded);
    let run = app.state.store.get_run(id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(
        (run.usage.tokens_prompt, run.usage.tokens_completion),
        (1000, 500)
    );
    assert_eq!(run.usage.usd_cost.normalize().to_string(), "0.006");
    let steps = app.state.store.all_steps(id).await.unwrap();
    assert_eq!(steps[0].status, StepStatus::Succeeded);
    assert_eq!(
        steps[0].response,
        Some(json!({"text": "Hello Ada", "tool_calls": []}))
    );
    assert_eq!(steps[0].request.as_ref().unwrap()["prompt"], "Greet Ada");
    // AND the key appears in no record
    let view = app.get(&format!("/api/v1/runs/{id}/steps"), &owner).await;
    assert!(!view.text.contains("sk-default-violet"));
}
