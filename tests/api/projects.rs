use aws_sdk_dynamodb::types::AttributeValue;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;
use spark_ops_tests::{spawn_app, unique_slug};

#[tokio::test]
async fn the_creator_owns_a_new_project_and_can_read_it() {
    let app = spawn_app().await;
    let token = app.user("Ada").await;
    let slug = unique_slug("support");
    let created = app
        .post(
            "/api/v1/projects",
            Some(&token),
            json!({"name": "Support", "slug": slug, "settings": {"tier": "gold"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["role"], "owner");
    assert_eq!(created.body["version"], 1);
    assert_eq!(created.header("etag"), Some("\"1\""));
    let id = created.body["id"].as_str().unwrap();
    let location = format!("/api/v1/projects/{id}");
    assert_eq!(created.header("location"), Some(location.as_str()));
    let read = app.get(&location, &token).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["slug"], slug);
    assert_eq!(read.body["settings"]["tier"], "gold");
}

#[tokio::test]
async fn a_slug_is_derived_from_the_name_when_left_out() {
    let app = spawn_app().await;
    let token = app.user("Ada").await;
    let name = format!("Support Bots {}", uuid::Uuid::now_v7().simple());
    let created = app
        .post("/api/v1/projects", Some(&token), json!({"name": name}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert!(created.body["slug"]
        .as_str()
        .unwrap()
        .starts_with("support-bots-"));
}

#[tokio::test]
async fn a_taken_slug_gets_409_even_when_created_concurrently() {
    let app = spawn_app().await;
    let token = app.user("Ada").await;
    let slug = unique_slug("race");
    let attempts = (0..5).map(|i| {
        let app = &app;
        let token = &token;
        let slug = slug.clone();
        async move {
            app.post(
                "/api/v1/projects",
                Some(token),
                json!({"name": format!("Race {i}"), "slug": slug}),
            )
            .await
        }
    });
    let replies = futures::future::join_all(attempts).await;
    let created = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let conflicts = replies
        .iter()
        .filter(|r| r.status == StatusCode::CONFLICT)
        .count();
    assert_eq!((created, conflicts), (1, 4));
    let list = app.get("/api/v1/projects", &token).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_slug_another_user_holds_is_not_disclosed_to_someone_trying_it() {
    // GIVEN Alice's projects, with their slugs
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let alices = unique_slug("acme");
    let renamed = unique_slug("acme-next");
    let created = app
        .post(
            "/api/v1/projects",
            Some(&alice),
            json!({"name": "Acme", "slug": alices}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let alices_id = created.body["id"].as_str().unwrap().to_owned();
    let other = app.project(&alice, "Acme next").await;
    let reply = app
        .patch(
            &format!("/api/v1/projects/{other}"),
            &alice,
            json!({"slug": renamed}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);

    // WHEN someone who signed up a minute ago tries Alice's slugs and a free one
    let mallory = app.user("Mallory").await;
    let mut answers = Vec::new();
    for slug in [alices.clone(), unique_slug("free")] {
        let reply = app
            .post(
                "/api/v1/projects",
                Some(&mallory),
                json!({"name": "Probe", "slug": slug}),
            )
            .await;
        answers.push((reply.status, reply.body["slug"] == slug.as_str()));
        assert_ne!(reply.body["id"], alices_id.as_str());
    }
    let own = app.project(&mallory, "Mine").await;
    let reply = app
        .patch(
            &format!("/api/v1/projects/{own}"),
            &mallory,
            json!({"slug": renamed}),
        )
        .await;
    answers.push((reply.status, reply.body["slug"] == renamed.as_str()));

    // THEN a taken slug and a free one get the same answer: a project of their own
    assert_eq!(
        answers,
        vec![
            (StatusCode::CREATED, true),
            (StatusCode::CREATED, true),
            (StatusCode::OK, true)
        ],
        "a slug someone else holds answers like a free one"
    );
    // AND Alice's projects are untouched, and her own slugs still guard her
    let read = app
        .get(&format!("/api/v1/projects/{alices_id}"), &alice)
        .await;
    assert_eq!(read.body["slug"], alices.as_str());
    assert_eq!(read.body["version"], 1);
    let again = app
        .post(
            "/api/v1/projects",
            Some(&alice),
            json!({"name": "Acme again", "slug": alices}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
}

#[tokio::test]
async fn a_project_whose_slug_claim_predates_creator_scoped_slugs_still_renames_and_deletes() {
    // GIVEN a project that holds no creator-scoped slug claim, like one created before
    let app = spawn_app().await;
    let token = app.user("Ada").await;
    let id = app.project(&token, "Legacy").await;
    let project = app.get(&format!("/api/v1/projects/{id}"), &token).await;
    let claim = format!(
        "SLUG#{}#{}",
        project.body["owner_user_id"].as_str().unwrap(),
        project.body["slug"].as_str().unwrap()
    );
    let table = app
        .state
        .config
        .table_name(spark_ops::store::schema::PROJECTS.suffix);
    app.state
        .clients
        .ddb
        .delete_item()
        .table_name(table)
        .key("pk", AttributeValue::S(claim))
        .key("sk", AttributeValue::S("SLUG".to_owned()))
        .condition_expression("attribute_exists(pk)")
        .send()
        .await
        .expect("the claim existed");

    // WHEN its slug changes and it is deleted, THEN both work
    let reply = app
        .patch(
            &format!("/api/v1/projects/{id}"),
            &token,
            json!({"slug": unique_slug("renamed")}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let reply = app.delete(&format!("/api/v1/projects/{id}"), &token).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
}

#[tokio::test]
async fn lists_page_with_opaque_cursors_and_refuse_forged_ones() {
    let app = spawn_app().await;
    let token = app.user("Ada").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.project(&token, &format!("P{i}")).await);
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/projects?limit=2".to_owned();
    loop {
        let page = app.get(&path, &token).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|p| p["id"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/projects?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    let first = app.get("/api/v1/projects?limit=2", &token).await;
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let mut forged = cursor.to_owned();
    forged.replace_range(0..1, if cursor.starts_with('A') { "B" } else { "A" });
    for bad in [
        format!("cursor={forged}"),
        "cursor=abc".to_owned(),
        "limit=0".to_owned(),
        "limit=201".to_owned(),
        "limit=ten".to_owned(),
    ] {
        let reply = app.get(&format!("/api/v1/projects?{bad}"), &token).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.error_fields().len(), 1, "{bad}");
    }
    // Another user's cursor for their own list does not open this one.
    let other = app.user("Eve").await;
    let reply = app
        .get(&format!("/api/v1/projects?cursor={cursor}"), &other)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn patch_honours_versions_and_if_match() {
    let app = spawn_app().await;
    let token = app.user("Ada").await;
    let id = app.project(&token, "Versioned").await;
    let path = format!("/api/v1/projects/{id}");
    let changed = app
        .patch(&path, &token, json!({"name": "Renamed", "version": 1}))
        .await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.body["version"], 2);
    assert_eq!(changed.body["name"], "Renamed");

    let stale = app
        .patch(&path, &token, json!({"name": "Stale", "version": 1}))
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);

    let request = Request::builder()
        .method(Method::PATCH)
        .uri(&path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("if-match", "\"1\"")
        .body(Body::from(json!({"description": "x"}).to_string()))
        .unwrap();
    assert_eq!(app.send(request).await.status, StatusCode::CONFLICT);

    let read = app.get(&path, &token).await;
    assert_eq!(read.body["name"], "Renamed");
    assert_eq!(read.body["version"], 2);
}

#[tokio::test]
async fn concurrent_patches_on_one_version_never_lose_an_update() {
    let app = spawn_app().await;
    let token = app.user("Ada").await;
    let id = app.project(&token, "Contended").await;
    let path = format!("/api/v1/projects/{id}");
    let writers = (0..6).map(|i| {
        let (app, token, path) = (&app, &token, &path);
        async move {
            app.patch(
                path,
                token,
                json!({"description": format!("writer {i}"), "version": 1}),
            )
            .await
        }
    });
    let replies = futures::future::join_all(writers).await;
    let winners: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(replies
        .iter()
        .all(|r| r.status == StatusCode::OK || r.status == StatusCode::CONFLICT));
    let read = app.get(&path, &token).await;
    assert_eq!(read.body["description"], winners[0].body["description"]);
    assert_eq!(read.body["version"], 2);
}

#[tokio::test]
async fn changing_a_slug_frees_the_old_one_and_guards_the_new_one() {
    let app = spawn_app().await;
    let token = app.user("Ada").await;
    let a = app.project(&token, "Alpha").await;
    let b = app.project(&token, "Beta").await;
    let b_slug = app.get(&format!("/api/v1/projects/{b}"), &token).await.body["slug"].clone();
    let taken = app
        .patch(
            &format!("/api/v1/projects/{a}"),
            &token,
            json!({"slug": b_slug}),
        )
        .await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    let old_slug = app.get(&format!("/api/v1/projects/{a}"), &token).await.body["slug"].clone();
    let fresh = unique_slug("gamma");
    let moved = app
        .patch(
            &format!("/api/v1/projects/{a}"),
            &token,
            json!({"slug": fresh}),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK);
    let reuse = app
        .post(
            "/api/v1/projects",
            Some(&token),
            json!({"name": "Reuse", "slug": old_slug}),
        )
        .await;
    assert_eq!(reuse.status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_deleted_project_answers_404_is_not_listed_and_frees_its_slug() {
    let app = spawn_app().await;
    let token = app.user("Ada").await;
    let id = app.project(&token, "Doomed").await;
    let slug = app
        .get(&format!("/api/v1/projects/{id}"), &token)
        .await
        .body["slug"]
        .clone();
    assert_eq!(
        app.delete(&format!("/api/v1/projects/{id}"), &token)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&format!("/api/v1/projects/{id}"), &token)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&format!("/api/v1/projects/{id}"), &token)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let list = app.get("/api/v1/projects", &token).await;
    assert!(list.body["items"].as_array().unwrap().is_empty());
    let again = app
        .post(
            "/api/v1/projects",
            Some(&token),
            json!({"name": "Again", "slug": slug}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
}

#[tokio::test]
async fn reading_a_project_with_a_jwt_takes_two_dynamodb_requests() {
    let app = spawn_app().await;
    let token = app.user("Ada").await;
    let id = app.project(&token, "Counted").await;
    app.ddb_requests.reset();
    let reply = app.get(&format!("/api/v1/projects/{id}"), &token).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        app.ddb_requests.operations(),
        vec!["GetItem", "BatchGetItem"]
    );
    assert!(app.ddb_requests.count() <= 2);
}

#[tokio::test]
async fn invalid_project_input_is_named_and_writes_nothing() {
    let app = spawn_app().await;
    let token = app.user("Ada").await;
    let slug = unique_slug("kept");
    let big = "x".repeat(40 * 1024);
    let reply = app
        .post(
            "/api/v1/projects",
            Some(&token),
            json!({"name": "", "slug": slug, "settings": {"blob": big}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), vec!["name", "settings"]);
    let list = app.get("/api/v1/projects", &token).await;
    assert!(list.body["items"].as_array().unwrap().is_empty());
    let ok = app
        .post(
            "/api/v1/projects",
            Some(&token),
            json!({"name": "Kept", "slug": slug}),
        )
        .await;
    assert_eq!(
        ok.status,
        StatusCode::CREATED,
        "the slug was not claimed by the failed request"
    );
    let id = ok.body["id"].as_str().unwrap();
    let bad_patch = app
        .patch(
            &format!("/api/v1/projects/{id}"),
            &token,
            json!({"name": "Fine", "slug": "NO"}),
        )
        .await;
    assert_eq!(bad_patch.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.get(&format!("/api/v1/projects/{id}"), &token)
            .await
            .body["name"],
        "Kept"
    );
}

#[tokio::test]
async fn settings_dynamodb_cannot_store_get_422_not_500() {
    let app = spawn_app().await;
    let token = app.user("Ada").await;
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!({ "x": deep });
    }
    for settings in [deep, json!({"": 1}), json!({"huge": 1e200})] {
        let reply = app
            .post(
                "/api/v1/projects",
                Some(&token),
                json!({"name": "Odd", "settings": settings}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.text
        );
        assert!(
            reply.error_fields()[0].starts_with("settings"),
            "{}",
            reply.text
        );
    }
}
