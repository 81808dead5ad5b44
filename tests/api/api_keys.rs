use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;
use spark_ops::clock::Clock;
use spark_ops_tests::spawn_app;

#[tokio::test]
async fn a_key_is_shown_once_listed_without_its_secret_and_works_with_both_headers() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Keys").await;
    let path = format!("/api/v1/projects/{project}/api-keys");
    let created = app
        .post(
            &path,
            Some(&owner),
            json!({"name": "ci", "role": "developer"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let key = created.body["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sok_"));

    let listed = app.get(&path, &owner).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert!(listed.body["items"][0].get("key").is_none());
    assert!(!listed.text.contains(&key[key.len() - 20..]));

    let bearer = app.get(&format!("/api/v1/projects/{project}"), &key).await;
    assert_eq!(bearer.status, StatusCode::OK);
    assert_eq!(bearer.body["role"], "developer");
    let request = Request::builder()
        .uri(format!("/api/v1/projects/{project}"))
        .header("x-api-key", &key)
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(request).await.status, StatusCode::OK);
    let listed_by_key = app.get("/api/v1/projects", &key).await;
    assert_eq!(listed_by_key.body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_key_acts_only_inside_its_project_with_its_role() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Mine").await;
    let elsewhere = app.project(&owner, "Elsewhere").await;
    let created = app
        .post(
            &format!("/api/v1/projects/{project}/api-keys"),
            Some(&owner),
            json!({"name": "ro", "role": "viewer"}),
        )
        .await;
    let key = created.body["key"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get(&format!("/api/v1/projects/{elsewhere}"), &key)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let patch = app
        .patch(
            &format!("/api/v1/projects/{project}"),
            &key,
            json!({"name": "Nope"}),
        )
        .await;
    assert_eq!(patch.status, StatusCode::FORBIDDEN);
    let create = app
        .post("/api/v1/projects", Some(&key), json!({"name": "New"}))
        .await;
    assert_eq!(create.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/api/v1/auth/me", &key).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn revoked_expired_and_forged_keys_get_401() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Keys").await;
    let path = format!("/api/v1/projects/{project}/api-keys");
    let soon = (app.clock.now() + chrono::Duration::hours(1)).to_rfc3339();
    let expiring = app
        .post(
            &path,
            Some(&owner),
            json!({"name": "short", "role": "viewer", "expires_at": soon}),
        )
        .await;
    let expiring_key = expiring.body["key"].as_str().unwrap().to_owned();
    let revoked = app
        .post(
            &path,
            Some(&owner),
            json!({"name": "gone", "role": "viewer"}),
        )
        .await;
    let revoked_key = revoked.body["key"].as_str().unwrap().to_owned();
    let revoked_id = revoked.body["id"].as_str().unwrap();

    assert_eq!(
        app.delete(&format!("{path}/{revoked_id}"), &owner)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete(&format!("{path}/{revoked_id}"), &owner)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let project_path = format!("/api/v1/projects/{project}");
    assert_eq!(
        app.get(&project_path, &revoked_key).await.status,
        StatusCode::UNAUTHORIZED
    );

    assert_eq!(
        app.get(&project_path, &expiring_key).await.status,
        StatusCode::OK
    );
    app.clock.advance(chrono::Duration::hours(2));
    assert_eq!(
        app.get(&project_path, &expiring_key).await.status,
        StatusCode::UNAUTHORIZED
    );

    let mut forged = expiring_key.clone();
    forged.push('x');
    assert_eq!(
        app.get(&project_path, &forged).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn key_roles_are_capped_and_validated() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let admin = app.user("Admin").await;
    let project = app.project(&owner, "Keys").await;
    app.add_member(&owner, &project, &admin, "admin").await;
    let path = format!("/api/v1/projects/{project}/api-keys");
    let owner_key = app
        .post(
            &path,
            Some(&owner),
            json!({"name": "root", "role": "owner"}),
        )
        .await;
    assert_eq!(owner_key.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(owner_key.error_fields(), vec!["role"]);
    let past = app
        .post(
            &path,
            Some(&admin),
            json!({"name": "old", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(past.error_fields(), vec!["expires_at"]);
    let ok = app
        .post(&path, Some(&admin), json!({"name": "ci", "role": "admin"}))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    let listed = app.get(&path, &owner).await;
    assert_eq!(
        listed.body["items"].as_array().unwrap().len(),
        1,
        "failed requests stored no key"
    );
}
