use axum::http::StatusCode;
use serde_json::json;
use spark_ops_tests::spawn_app;

#[tokio::test]
async fn an_admin_adds_lists_changes_and_removes_members() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let dev = app.user("Dev").await;
    let project = app.project(&owner, "Team").await;
    let dev_id = app.add_member(&owner, &project, &dev, "developer").await;

    let members = app
        .get(&format!("/api/v1/projects/{project}/members"), &owner)
        .await;
    assert_eq!(members.status, StatusCode::OK);
    let roles: Vec<_> = members.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].clone())
        .collect();
    assert_eq!(roles.len(), 2);
    assert!(roles.contains(&json!("owner")) && roles.contains(&json!("developer")));

    // The new member sees the project, listed with their role.
    let theirs = app.get("/api/v1/projects", &dev).await;
    assert_eq!(theirs.body["items"][0]["role"], "developer");

    let path = format!("/api/v1/projects/{project}/members/{dev_id}");
    let promoted = app
        .patch(&path, &owner, json!({"role": "admin", "version": 1}))
        .await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.text);
    assert_eq!(promoted.body["role"], "admin");
    let stale = app
        .patch(&path, &owner, json!({"role": "viewer", "version": 1}))
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);

    assert_eq!(
        app.delete(&path, &owner).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&format!("/api/v1/projects/{project}"), &dev)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn adding_twice_or_an_unknown_email_is_refused() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let dev = app.user("Dev").await;
    let project = app.project(&owner, "Team").await;
    app.add_member(&owner, &project, &dev, "viewer").await;
    let email = app.get("/api/v1/auth/me", &dev).await.body["email"].clone();
    let path = format!("/api/v1/projects/{project}/members");
    let twice = app
        .post(
            &path,
            Some(&owner),
            json!({"email": email, "role": "admin"}),
        )
        .await;
    assert_eq!(twice.status, StatusCode::CONFLICT);
    let unknown = app
        .post(
            &path,
            Some(&owner),
            json!({"email": "ghost@example.com", "role": "viewer"}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown.error_fields(), vec!["email"]);
    let bad_role = app
        .post(
            &path,
            Some(&owner),
            json!({"email": email, "role": "superuser"}),
        )
        .await;
    assert_eq!(bad_role.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_role.error_fields(), vec!["role"]);
}

#[tokio::test]
async fn the_last_owner_can_be_neither_demoted_nor_removed() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Solo").await;
    let owner_id = app.get("/api/v1/auth/me", &owner).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/projects/{project}/members/{owner_id}");
    let demote = app.patch(&path, &owner, json!({"role": "admin"})).await;
    assert_eq!(demote.status, StatusCode::CONFLICT);
    let remove = app.delete(&path, &owner).await;
    assert_eq!(remove.status, StatusCode::CONFLICT);

    // With a second owner, the first may step down.
    let second = app.user("Second").await;
    app.add_member(&owner, &project, &second, "owner").await;
    let demote = app.patch(&path, &owner, json!({"role": "admin"})).await;
    assert_eq!(demote.status, StatusCode::OK, "{}", demote.text);
}

#[tokio::test]
async fn two_owners_demoting_each_other_at_once_leave_one_owner() {
    let app = spawn_app().await;
    let a = app.user("A").await;
    let b = app.user("B").await;
    let project = app.project(&a, "Pair").await;
    let b_id = app.add_member(&a, &project, &b, "owner").await;
    let a_id = app.get("/api/v1/auth/me", &a).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (b_path, a_path) = (
        format!("/api/v1/projects/{project}/members/{b_id}"),
        format!("/api/v1/projects/{project}/members/{a_id}"),
    );
    let (r1, r2) = tokio::join!(
        app.patch(&b_path, &a, json!({"role": "viewer"})),
        app.patch(&a_path, &b, json!({"role": "viewer"})),
    );
    let ok = [r1.status, r2.status]
        .iter()
        .filter(|s| **s == StatusCode::OK)
        .count();
    assert!(
        ok <= 1,
        "{} {} / {} {}",
        r1.status,
        r1.text,
        r2.status,
        r2.text
    );
    let members = app
        .get(&format!("/api/v1/projects/{project}/members"), &a)
        .await;
    let owners = members.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "owner")
        .count();
    assert_eq!(owners, 2 - ok);
    assert!(owners >= 1);
}

#[tokio::test]
async fn an_admin_cannot_grant_or_touch_ownership() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let admin = app.user("Admin").await;
    let other = app.user("Other").await;
    let project = app.project(&owner, "Team").await;
    app.add_member(&owner, &project, &admin, "admin").await;
    let owner_id = app.get("/api/v1/auth/me", &owner).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_email = app.get("/api/v1/auth/me", &other).await.body["email"].clone();

    let grant = app
        .post(
            &format!("/api/v1/projects/{project}/members"),
            Some(&admin),
            json!({"email": other_email, "role": "owner"}),
        )
        .await;
    assert_eq!(grant.status, StatusCode::FORBIDDEN);
    let demote = app
        .patch(
            &format!("/api/v1/projects/{project}/members/{owner_id}"),
            &admin,
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(demote.status, StatusCode::FORBIDDEN);
    let remove = app
        .delete(
            &format!("/api/v1/projects/{project}/members/{owner_id}"),
            &admin,
        )
        .await;
    assert_eq!(remove.status, StatusCode::FORBIDDEN);
    let add = app
        .post(
            &format!("/api/v1/projects/{project}/members"),
            Some(&admin),
            json!({"email": other_email, "role": "developer"}),
        )
        .await;
    assert_eq!(add.status, StatusCode::CREATED);
}

#[tokio::test]
async fn any_member_may_leave() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let viewer = app.user("Viewer").await;
    let project = app.project(&owner, "Team").await;
    let viewer_id = app.add_member(&owner, &project, &viewer, "viewer").await;
    let left = app
        .delete(
            &format!("/api/v1/projects/{project}/members/{viewer_id}"),
            &viewer,
        )
        .await;
    assert_eq!(left.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get(&format!("/api/v1/projects/{project}"), &viewer)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}
