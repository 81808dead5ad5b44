use axum::http::StatusCode;
use serde_json::json;
use spark_ops_tests::{spawn_app, PASSWORD};

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
async fn adding_a_member_twice_or_a_bad_role_is_refused() {
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
    let bad_role = app
        .post(
            &path,
            Some(&owner),
            json!({"email": email, "role": "superuser"}),
        )
        .await;
    assert_eq!(bad_role.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_role.error_fields(), vec!["role"]);
    let bad_email = app
        .post(
            &path,
            Some(&owner),
            json!({"email": "not-an-email", "role": "viewer"}),
        )
        .await;
    assert_eq!(bad_email.error_fields(), vec!["email"]);
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
    assert_eq!(add.status, StatusCode::ACCEPTED);
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

#[tokio::test]
async fn inviting_answers_the_same_whether_or_not_the_email_has_an_account() {
    // GIVEN an owner (who may have signed up a minute ago) and a registered user
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let (known, _) = app.register("Known").await;
    let ghost = format!("ghost-{known}");
    let project = app.project(&owner, "Probe").await;
    let path = format!("/api/v1/projects/{project}/members");

    // WHEN they invite the registered email and one that has no account
    let invite = |email: &str| {
        app.post(
            &path,
            Some(&owner),
            json!({"email": email, "role": "viewer"}),
        )
    };
    let to_known = invite(&known).await;
    let to_ghost = invite(&ghost).await;

    // THEN both answers are the same but for the email itself
    assert_eq!(to_known.status, StatusCode::ACCEPTED, "{}", to_known.text);
    assert_eq!(to_ghost.status, to_known.status);
    assert_eq!(to_known.body["status"], "invited");
    let mut masked = to_ghost.body.clone();
    masked["email"] = to_known.body["email"].clone();
    assert_eq!(masked, to_known.body);
    // AND the project's lists do not tell them apart either: both wait as invitations
    let members = app.get(&path, &owner).await;
    assert_eq!(members.body["items"].as_array().unwrap().len(), 1);
    let invitations = app
        .get(&format!("/api/v1/projects/{project}/invitations"), &owner)
        .await;
    assert_eq!(invitations.status, StatusCode::OK, "{}", invitations.text);
    let mut invited: Vec<_> = invitations.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("{} {}", i["email"].as_str().unwrap(), i["status"]))
        .collect();
    invited.sort();
    let mut expected = vec![
        format!("{known} \"invited\""),
        format!("{ghost} \"invited\""),
    ];
    expected.sort();
    assert_eq!(invited, expected);
}

#[tokio::test]
async fn an_invitation_becomes_a_membership_when_its_email_registers_or_logs_in() {
    // GIVEN invitations for a registered user (logged in already) and for an unknown email
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let (known, password) = app.register("Known").await;
    let known_token = app.login(&known, &password).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let newcomer = format!("new-{known}");
    let project = app.project(&owner, "Team").await;
    let path = format!("/api/v1/projects/{project}/members");
    for (email, role) in [(&known, "developer"), (&newcomer, "viewer")] {
        let reply = app
            .post(&path, Some(&owner), json!({"email": email, "role": role}))
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    }
    let project_path = format!("/api/v1/projects/{project}");
    assert_eq!(
        app.get(&project_path, &known_token).await.status,
        StatusCode::NOT_FOUND,
        "pending until the invitee acts"
    );

    // WHEN the registered user logs in and the newcomer registers
    let known_again = app.login(&known, &password).await;
    let newcomer_token = {
        let reply = app
            .post(
                "/api/v1/auth/register",
                None,
                json!({"email": newcomer, "password": password, "name": "New"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        app.login(&newcomer, &password).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // THEN both are members with the invited roles, and no invitation is left
    let seen = app
        .get(&project_path, known_again["access_token"].as_str().unwrap())
        .await;
    assert_eq!(seen.body["role"], "developer");
    assert_eq!(
        app.get(&project_path, &newcomer_token).await.body["role"],
        "viewer"
    );
    assert_eq!(
        app.get(&project_path, &known_token).await.status,
        StatusCode::OK
    );
    let invitations = app
        .get(&format!("{project_path}/invitations"), &owner)
        .await;
    assert_eq!(invitations.body["items"], json!([]));
    assert_eq!(
        app.get(&path, &owner).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn withdrawn_and_lapsed_invitations_are_never_accepted() {
    // GIVEN two invitations of unknown emails, one of them withdrawn
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let owner_address = app.get("/api/v1/auth/me", &owner).await.body["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let project = app.project(&owner, "Team").await;
    let path = format!("/api/v1/projects/{project}/members");
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let (withdrawn, lapsed) = (
        format!("withdrawn-{unique}@example.com"),
        format!("lapsed-{unique}@example.com"),
    );
    for email in [&withdrawn, &lapsed] {
        app.post(
            &path,
            Some(&owner),
            json!({"email": email, "role": "admin"}),
        )
        .await;
    }
    let invitation = format!("/api/v1/projects/{project}/invitations/{withdrawn}");
    assert_eq!(
        app.delete(&invitation, &owner).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete(&invitation, &owner).await.status,
        StatusCode::NOT_FOUND
    );

    // WHEN 15 days pass and both emails register
    app.clock.advance(chrono::Duration::days(15));
    for email in [&withdrawn, &lapsed] {
        let registered = app
            .post(
                "/api/v1/auth/register",
                None,
                json!({"email": email, "password": PASSWORD, "name": "X"}),
            )
            .await;
        assert_eq!(registered.status, StatusCode::ACCEPTED);
        let token = app.login(email, PASSWORD).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();

        // THEN neither joined
        assert_eq!(
            app.get(&format!("/api/v1/projects/{project}"), &token)
                .await
                .status,
            StatusCode::NOT_FOUND
        );
    }
    let owner = app.login(&owner_address, PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.get(&format!("/api/v1/projects/{project}/invitations"), &owner)
            .await
            .body["items"],
        json!([])
    );
}
