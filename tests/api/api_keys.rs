use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use spark_ops::clock::Clock;
use spark_ops_tests::{spawn_app, Reply, TestApp};

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

async fn create_key(app: &TestApp, token: &str, project: &str, body: Value) -> Reply {
    app.post(
        &format!("/api/v1/projects/{project}/api-keys"),
        Some(token),
        body,
    )
    .await
}

async fn key_of(app: &TestApp, token: &str, project: &str, role: &str) -> String {
    let created = create_key(app, token, project, json!({"name": "k", "role": role})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    created.body["key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_key_acts_with_no_more_than_its_creators_current_role() {
    // GIVEN an admin's admin key
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let admin = app.user("Admin").await;
    let project = app.project(&owner, "Team").await;
    let admin_id = app.add_member(&owner, &project, &admin, "admin").await;
    let key = key_of(&app, &admin, &project, "admin").await;
    let project_path = format!("/api/v1/projects/{project}");
    let rename = |name: &str| json!({"name": name});
    assert_eq!(
        app.patch(&project_path, &key, rename("By key"))
            .await
            .status,
        StatusCode::OK
    );

    // WHEN the owner demotes the admin to viewer
    let demoted = app
        .patch(
            &format!("{project_path}/members/{admin_id}"),
            &owner,
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(demoted.status, StatusCode::OK, "{}", demoted.text);

    // THEN the key acts as a viewer: it reads, but cannot change the project
    let seen = app.get(&project_path, &key).await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(seen.body["role"], "viewer");
    assert_eq!(
        app.patch(&project_path, &key, rename("Still by key"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get(&format!("{project_path}/api-keys"), &key)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn a_key_stops_working_when_its_creator_leaves_is_removed_or_deletes_their_account() {
    // GIVEN three admins, each with a key
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Team").await;
    let members = format!("/api/v1/projects/{project}/members");
    let mut admins = Vec::new();
    for name in ["Leaver", "Removed", "Deleted"] {
        let (email, password) = app.register(name).await;
        let token = app.login(&email, &password).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let id = app.add_member(&owner, &project, &token, "admin").await;
        let key = key_of(&app, &token, &project, "developer").await;
        assert_eq!(
            app.get(&format!("/api/v1/projects/{project}"), &key)
                .await
                .status,
            StatusCode::OK
        );
        admins.push((token, id, key, password));
    }

    // WHEN the first leaves, the second is removed and the third deletes their account
    let (leaver, leaver_id, _, _) = &admins[0];
    assert_eq!(
        app.delete(&format!("{members}/{leaver_id}"), leaver)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let (_, removed_id, _, _) = &admins[1];
    assert_eq!(
        app.delete(&format!("{members}/{removed_id}"), &owner)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let (deleted, _, _, password) = &admins[2];
    let gone = app
        .call(
            axum::http::Method::DELETE,
            "/api/v1/auth/me",
            Some(deleted),
            Some(json!({"password": password})),
        )
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.text);

    // THEN none of their keys works any more
    for (_, _, key, _) in &admins {
        let reply = app.get(&format!("/api/v1/projects/{project}"), key).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    }
}

#[tokio::test]
async fn api_keys_cannot_create_keys_or_change_members() {
    // GIVEN an owner's admin key and a developer member
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let dev = app.user("Dev").await;
    let project = app.project(&owner, "Team").await;
    let dev_id = app.add_member(&owner, &project, &dev, "developer").await;
    let key = key_of(&app, &owner, &project, "admin").await;
    let keys = format!("/api/v1/projects/{project}/api-keys");
    let members = format!("/api/v1/projects/{project}/members");
    let key_id = app.get(&keys, &owner).await.body["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = (
        app.get(&keys, &owner).await.body,
        app.get(&members, &owner).await.body,
    );

    // WHEN the key tries to mint a key, revoke one, or change members
    let attempts = [
        app.post(&keys, Some(&key), json!({"name": "more", "role": "admin"}))
            .await,
        app.delete(&format!("{keys}/{key_id}"), &key).await,
        app.post(
            &members,
            Some(&key),
            json!({"email": "friend@example.com", "role": "admin"}),
        )
        .await,
        app.patch(
            &format!("{members}/{dev_id}"),
            &key,
            json!({"role": "admin"}),
        )
        .await,
        app.delete(&format!("{members}/{dev_id}"), &key).await,
    ];

    // THEN each is refused with 403, saying that needs a person, and nothing changed
    for reply in &attempts {
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
        assert!(
            reply.body["detail"]
                .as_str()
                .unwrap()
                .starts_with("API keys cannot"),
            "{}",
            reply.text
        );
    }
    assert_eq!(
        (
            app.get(&keys, &owner).await.body,
            app.get(&members, &owner).await.body
        ),
        before
    );
    // AND reading stays allowed
    assert_eq!(app.get(&members, &key).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_agent_runtime_key_reports_heartbeats_for_its_agents_and_nothing_else() {
    // GIVEN two agents and a runtime key naming only the first
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Bots").await;
    let mine = app.agent(&owner, &project, "gpt-4o-mini").await;
    let other = app.agent(&owner, &project, "gpt-4o-mini").await;
    let created = create_key(
        &app,
        &owner,
        &project,
        json!({"name": "runtime", "kind": "agent_runtime", "agent_ids": [mine]}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["kind"], "agent_runtime");
    assert_eq!(created.body["agent_ids"], json!([mine]));
    let key = created.body["key"].as_str().unwrap().to_owned();

    // WHEN it reports a heartbeat for its agent
    let beat = app
        .post(
            &format!("/api/v1/agents/{mine}/heartbeat"),
            Some(&key),
            json!({"status": "ok"}),
        )
        .await;

    // THEN that works
    assert_eq!(beat.status, StatusCode::OK, "{}", beat.text);
    // AND for any other agent it is as if the agent did not exist
    let elsewhere = app
        .post(
            &format!("/api/v1/agents/{other}/heartbeat"),
            Some(&key),
            json!({}),
        )
        .await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    // AND everything else is refused
    let refused = [
        app.get(&format!("/api/v1/agents/{mine}"), &key).await,
        app.get(&format!("/api/v1/agents?project_id={project}"), &key)
            .await,
        app.get("/api/v1/projects", &key).await,
        app.get(&format!("/api/v1/projects/{project}"), &key).await,
        app.patch(
            &format!("/api/v1/agents/{mine}"),
            &key,
            json!({"model": "gpt-4o"}),
        )
        .await,
        app.post(
            "/api/v1/runs",
            Some(&key),
            json!({"project_id": project, "workflow_id": mine}),
        )
        .await,
        app.post(
            &format!("/api/v1/projects/{project}/api-keys"),
            Some(&key),
            json!({"name": "x", "role": "viewer"}),
        )
        .await,
    ];
    for reply in refused {
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    }
}

#[tokio::test]
async fn an_agent_runtime_key_names_only_agents_of_its_project_and_has_no_role() {
    // GIVEN an agent here and one in another project
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Here").await;
    let elsewhere = app.project(&owner, "Elsewhere").await;
    let here = app.agent(&owner, &project, "gpt-4o-mini").await;
    let foreign = app.agent(&owner, &elsewhere, "gpt-4o-mini").await;
    let runtime =
        |agents: Value| json!({"name": "r", "kind": "agent_runtime", "agent_ids": agents});

    // WHEN keys are asked for with bad agents or mixed-up fields
    let cases = [
        (runtime(json!([here, foreign])), vec!["agent_ids[1]"]),
        (runtime(json!(["not-a-uuid"])), vec!["agent_ids[0]"]),
        (runtime(json!([here, here])), vec!["agent_ids[1]"]),
        (runtime(json!([])), vec!["agent_ids"]),
        (
            json!({"name": "r", "kind": "agent_runtime", "agent_ids": [here], "role": "admin"}),
            vec!["role"],
        ),
        (json!({"name": "p"}), vec!["role"]),
        (
            json!({"name": "p", "role": "viewer", "agent_ids": [here]}),
            vec!["agent_ids"],
        ),
    ];

    // THEN each names its fields and stores nothing
    for (body, fields) in cases {
        let reply = create_key(&app, &owner, &project, body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            reply.text
        );
        assert_eq!(reply.error_fields(), fields, "{body}");
    }
    let listed = app
        .get(&format!("/api/v1/projects/{project}/api-keys"), &owner)
        .await;
    assert_eq!(listed.body["items"], json!([]));
}

#[tokio::test]
async fn an_agent_runtime_key_loses_heartbeats_with_its_creators_developer_rights() {
    // GIVEN an admin's runtime key
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let admin = app.user("Admin").await;
    let project = app.project(&owner, "Bots").await;
    let admin_id = app.add_member(&owner, &project, &admin, "admin").await;
    let agent = app.agent(&owner, &project, "gpt-4o-mini").await;
    let key = create_key(
        &app,
        &admin,
        &project,
        json!({"name": "runtime", "kind": "agent_runtime", "agent_ids": [agent]}),
    )
    .await
    .body["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let beat = format!("/api/v1/agents/{agent}/heartbeat");
    assert_eq!(
        app.post(&beat, Some(&key), json!({})).await.status,
        StatusCode::OK
    );

    // WHEN the admin becomes a viewer
    app.patch(
        &format!("/api/v1/projects/{project}/members/{admin_id}"),
        &owner,
        json!({"role": "viewer"}),
    )
    .await;

    // THEN the key can no longer report
    assert_eq!(
        app.post(&beat, Some(&key), json!({})).await.status,
        StatusCode::FORBIDDEN
    );
}
