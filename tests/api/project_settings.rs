//! Settings the engine reads are parsed when a project is saved, by the parser the engine
//! uses: a malformed one is a `422` at its path, and nothing is saved.

use axum::http::StatusCode;
use serde_json::json;
use spark_ops_tests::{spawn_app, unique_slug};

#[tokio::test]
async fn a_malformed_price_table_is_refused_at_its_path_on_create_and_nothing_is_saved() {
    // GIVEN a user
    let app = spawn_app().await;
    let owner = app.user("Owner").await;

    // WHEN they create a project whose gpt-4o price is not a number
    let slug = unique_slug("priced");
    let reply = app
        .post(
            "/api/v1/projects",
            Some(&owner),
            json!({"name": "Priced", "slug": slug, "settings": {"model_prices": {
                "gpt-4o": {"input_per_million": "cheap", "output_per_million": "10"},
                "house": {"input_per_million": "1"}}}}),
        )
        .await;

    // THEN the answer is 422 naming each bad field
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    let mut fields = reply.error_fields();
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "settings.model_prices.gpt-4o.input_per_million",
            "settings.model_prices.house.output_per_million",
        ]
    );
    // AND no project was created
    let list = app.get("/api/v1/projects", &owner).await;
    assert_eq!(list.body["items"], json!([]));
}

#[tokio::test]
async fn a_malformed_price_table_is_refused_on_update_and_the_project_keeps_its_settings() {
    // GIVEN a project with a valid price table
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let prices = json!({"house": {"input_per_million": "2", "output_per_million": 8}});
    let created = app
        .post(
            "/api/v1/projects",
            Some(&owner),
            json!({"name": "Priced", "slug": unique_slug("priced"),
                   "settings": {"model_prices": prices}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["id"].as_str().unwrap();

    // WHEN an update replaces it with a list instead of an object, then with a negative price
    let path = format!("/api/v1/projects/{id}");
    let listed = app
        .patch(
            &path,
            &owner,
            json!({"settings": {"model_prices": ["gpt-4o"]}}),
        )
        .await;
    let negative = app
        .patch(
            &path,
            &owner,
            json!({"settings": {"model_prices": {"gpt-4o": {
                "input_per_million": "-1", "output_per_million": "1"}}}}),
        )
        .await;

    // THEN both are 422 at the offending path
    assert_eq!(
        listed.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        listed.text
    );
    assert_eq!(listed.error_fields(), vec!["settings.model_prices"]);
    assert_eq!(
        negative.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        negative.text
    );
    assert_eq!(
        negative.error_fields(),
        vec!["settings.model_prices.gpt-4o.input_per_million"]
    );
    // AND the project still has its first settings, at its first version
    let read = app.get(&path, &owner).await;
    assert_eq!(read.body["settings"]["model_prices"], prices);
    assert_eq!(read.body["version"], 1);
}
