//! Signed manifests: export, import, checksums, signatures, publishers and the projects that
//! trust them, deprecation, and the seed's `customer_support_agent` and `crm_tool` fixtures
//! round-tripping.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Map, Value};
use spark_ops::manifest::{self, ManifestSigner};
use spark_ops_tests::{spawn_app, spawn_app_with, Reply, TestApp};

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/fixtures/manifests/{name}.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fixture as its publisher would first submit it: without the seed's placeholder
/// checksum and signature.
fn unsealed(name: &str) -> String {
    let mut m = manifest::parse(&fixture(name)).unwrap();
    m.remove(manifest::CHECKSUM_FIELD);
    m.remove(manifest::SIGNATURE_FIELD);
    manifest::to_yaml(&m).unwrap()
}

async fn import(app: &TestApp, token: &str, kind: &str, query: &str, yaml: String) -> Reply {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/{kind}/import?{query}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/yaml")
        .body(Body::from(yaml))
        .unwrap();
    app.send(request).await
}

async fn export(app: &TestApp, token: &str, kind: &str, id: &str) -> Map<String, Value> {
    let reply = app
        .get(&format!("/api/v1/{kind}/{id}/manifest"), token)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.header("content-type"), Some("application/yaml"));
    manifest::parse(&reply.text).unwrap()
}

async fn custom_tool(app: &TestApp, token: &str, project: &str, name: &str) {
    let reply = app
        .post(
            "/api/v1/tools",
            Some(token),
            json!({"project_id": project, "name": name, "kind": "custom", "auth_type": "none", "env": "dev"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
}

fn record_id(reply: &Reply) -> String {
    reply.body["record"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_seed_manifests_round_trip_with_the_same_checksum() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let first = app.project(&owner, "First").await;
    let second = app.project(&owner, "Second").await;
    let model = "model=gpt-4o-mini";

    // The seed's placeholder checksum does not match its content.
    let verbatim = import(
        &app,
        &owner,
        "tools",
        &format!("project_id={first}"),
        fixture("crm_tool"),
    )
    .await;
    assert_eq!(verbatim.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(verbatim.error_fields(), vec!["checksum_sha256"]);

    let mut checksums = Vec::new();
    for project in [&first, &second] {
        // GIVEN the tools the agent names
        let tool = import(
            &app,
            &owner,
            "tools",
            &format!("project_id={project}"),
            unsealed("crm_tool"),
        )
        .await;
        assert_eq!(tool.status, StatusCode::CREATED, "{}", tool.text);
        custom_tool(&app, &owner, project, "order_tool").await;
        custom_tool(&app, &owner, project, "knowledge_base_tool").await;
        let agent = import(
            &app,
            &owner,
            "agents",
            &format!("project_id={project}&{model}"),
            unsealed("customer_support_agent"),
        )
        .await;
        assert_eq!(agent.status, StatusCode::CREATED, "{}", agent.text);

        // WHEN both are exported, imported into a third project and exported again
        let tool_manifest = export(&app, &owner, "tools", &record_id(&tool)).await;
        let agent_manifest = export(&app, &owner, "agents", &record_id(&agent)).await;
        let third = app.project(&owner, "Third").await;
        let tool_again = import(
            &app,
            &owner,
            "tools",
            &format!("project_id={third}"),
            manifest::to_yaml(&tool_manifest).unwrap(),
        )
        .await;
        assert_eq!(
            tool_again.status,
            StatusCode::CREATED,
            "{}",
            tool_again.text
        );
        assert!(tool_again.body["signed"].as_bool().unwrap());
        custom_tool(&app, &owner, &third, "order_tool").await;
        custom_tool(&app, &owner, &third, "knowledge_base_tool").await;
        let agent_again = import(
            &app,
            &owner,
            "agents",
            &format!("project_id={third}"),
            manifest::to_yaml(&agent_manifest).unwrap(),
        )
        .await;
        assert_eq!(
            agent_again.status,
            StatusCode::CREATED,
            "{}",
            agent_again.text
        );

        // THEN the checksums are the same
        let tool_after = export(&app, &owner, "tools", &record_id(&tool_again)).await;
        let agent_after = export(&app, &owner, "agents", &record_id(&agent_again)).await;
        assert_eq!(
            tool_after[manifest::CHECKSUM_FIELD],
            tool_manifest[manifest::CHECKSUM_FIELD]
        );
        assert_eq!(
            agent_after[manifest::CHECKSUM_FIELD],
            agent_manifest[manifest::CHECKSUM_FIELD]
        );
        assert_eq!(
            agent_after["metadata"]["tools"],
            json!(["crm_tool", "order_tool", "knowledge_base_tool"])
        );
        checksums.push(agent_manifest[manifest::CHECKSUM_FIELD].clone());
    }
    assert_eq!(
        checksums[0], checksums[1],
        "the same content has the same checksum in any project"
    );
}

#[tokio::test]
async fn exported_manifests_verify_against_the_published_public_key() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Keys").await;
    let tool = import(
        &app,
        &owner,
        "tools",
        &format!("project_id={project}"),
        unsealed("crm_tool"),
    )
    .await;
    let exported = export(&app, &owner, "tools", &record_id(&tool)).await;
    let key = app.get("/api/v1/registry/public-key", &owner).await;
    assert_eq!(key.body["algorithm"], "Ed25519");
    let public = manifest::parse_public_key(key.body["public_key"].as_str().unwrap()).unwrap();
    let verified = manifest::verify(&exported, &[public]).unwrap();
    assert_eq!(verified.checksum, exported[manifest::CHECKSUM_FIELD]);
    assert_eq!(
        verified.signed_by.map(String::from),
        key.body["key_id"].as_str().map(str::to_owned)
    );
    assert!(exported.get("credentials").is_none());
}

#[tokio::test]
async fn tampered_or_untrusted_manifests_are_refused_and_import_nothing() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Guarded").await;
    let tool = import(
        &app,
        &owner,
        "tools",
        &format!("project_id={project}"),
        unsealed("crm_tool"),
    )
    .await;
    let exported = export(&app, &owner, "tools", &record_id(&tool)).await;
    let target = app.project(&owner, "Target").await;
    let query = format!("project_id={target}");

    let mut tampered = exported.clone();
    tampered["metadata"]["timeout_ms"] = json!(1);
    let reply = import(
        &app,
        &owner,
        "tools",
        &query,
        manifest::to_yaml(&tampered).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), vec!["checksum_sha256"]);

    let stranger =
        ManifestSigner::from_secret(&SecretString::from("a-key-this-deployment-does-not-trust"))
            .unwrap();
    let mut resealed = exported.clone();
    resealed["metadata"]["timeout_ms"] = json!(1);
    stranger.sign(&mut resealed);
    let reply = import(
        &app,
        &owner,
        "tools",
        &query,
        manifest::to_yaml(&resealed).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), vec!["signature"]);

    let malformed = import(&app, &owner, "tools", &query, "name: [unclosed".to_owned()).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);

    let listed = app
        .get(&format!("/api/v1/tools?project_id={target}"), &owner)
        .await;
    assert!(listed.body["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_deprecated_asset_imports_with_a_warning_and_announces_itself() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Old").await;
    let mut m = manifest::parse(&unsealed("crm_tool")).unwrap();
    m.insert("deprecated".into(), json!(true));
    let reply = import(
        &app,
        &owner,
        "tools",
        &format!("project_id={project}"),
        manifest::to_yaml(&m).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["warnings"].as_array().unwrap().len(), 1);
    assert_eq!(reply.header("deprecation"), Some("true"));
    let read = app
        .get(&format!("/api/v1/tools/{}", record_id(&reply)), &owner)
        .await;
    assert_eq!(read.header("deprecation"), Some("true"));
    let current = app
        .get(&format!("/api/v1/tools?project_id={project}"), &owner)
        .await;
    assert_eq!(current.header("deprecation"), None);
}

#[tokio::test]
async fn manifests_respect_projects_and_roles() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let viewer = app.user("Viewer").await;
    let outsider = app.user("Outsider").await;
    let project = app.project(&owner, "Private").await;
    app.add_member(&owner, &project, &viewer, "viewer").await;
    let tool = import(
        &app,
        &owner,
        "tools",
        &format!("project_id={project}"),
        unsealed("crm_tool"),
    )
    .await;
    let path = format!("/api/v1/tools/{}/manifest", record_id(&tool));
    assert_eq!(
        app.get(&path, &outsider).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.get(&path, &viewer).await.status, StatusCode::OK);
    let query = format!("project_id={project}");
    assert_eq!(
        import(&app, &viewer, "tools", &query, unsealed("crm_tool"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        import(&app, &outsider, "tools", &query, unsealed("crm_tool"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let unauthenticated = app
        .call(Method::GET, "/api/v1/registry/public-key", None, None)
        .await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
}

/// The caller's user id.
async fn me(app: &TestApp, token: &str) -> String {
    app.get("/api/v1/auth/me", token).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// This deployment's signing key id, as the public-key route shows it.
async fn key_id(app: &TestApp, token: &str) -> String {
    let key = app.get("/api/v1/registry/public-key", token).await;
    key.body["key_id"].as_str().unwrap().to_owned()
}

/// Sets a project's `trusted_publishers`.
async fn trust(app: &TestApp, token: &str, project: &str, publishers: Value) -> Reply {
    app.patch(
        &format!("/api/v1/projects/{project}"),
        token,
        json!({"settings": {"trusted_publishers": publishers}}),
    )
    .await
}

/// Imports the seed tool into `project` and exports it again, signed for that project.
async fn exported_tool(app: &TestApp, token: &str, project: &str) -> Map<String, Value> {
    let tool = import(
        app,
        token,
        "tools",
        &format!("project_id={project}"),
        unsealed("crm_tool"),
    )
    .await;
    assert_eq!(tool.status, StatusCode::CREATED, "{}", tool.text);
    export(app, token, "tools", &record_id(&tool)).await
}

#[tokio::test]
async fn an_exported_manifest_names_its_publisher_and_an_import_shows_it() {
    // GIVEN a tool exported from a project
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let source = app.project(&owner, "Source").await;
    let exported = exported_tool(&app, &owner, &source).await;
    let key_id = key_id(&app, &owner).await;

    // THEN the manifest names the deployment's key, the project and the exporter
    let publisher = &exported[manifest::PUBLISHER_FIELD];
    assert_eq!(publisher["key_id"], key_id.as_str());
    assert_eq!(publisher["project_id"], source.as_str());
    assert_eq!(publisher["exported_by"], me(&app, &owner).await.as_str());
    assert!(publisher["exported_at"].is_string());

    // WHEN it is imported elsewhere, THEN the import shows that publisher, vouched for
    let target = app.project(&owner, "Target").await;
    let reply = import(
        &app,
        &owner,
        "tools",
        &format!("project_id={target}"),
        manifest::to_yaml(&exported).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["signed"], true);
    assert_eq!(&reply.body["publisher"], publisher);
    assert_eq!(reply.body["warnings"], json!([]));

    // AND an unsigned manifest's claimed publisher is not shown as if it were vouched for
    let mut unsigned = exported.clone();
    unsigned.remove(manifest::SIGNATURE_FIELD);
    let reply = import(
        &app,
        &owner,
        "tools",
        &format!("project_id={target}"),
        manifest::to_yaml(&unsigned).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["signed"], false);
    assert_eq!(reply.body["publisher"], Value::Null);
    assert_eq!(reply.body["warnings"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_project_that_trusts_named_publishers_refuses_a_newcomers_signed_manifest() {
    // GIVEN a team project that imports only from its partner project
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let team = app.project(&owner, "Team").await;
    let partner = app.project(&owner, "Partner").await;
    let key_id = key_id(&app, &owner).await;
    let reply = trust(&app, &owner, &team, json!([format!("{key_id}/{partner}")])).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let query = format!("project_id={team}");

    // WHEN someone who signed up a minute ago exports a tool from a project of their own,
    // which this deployment signs like any other
    let mallory = app.user("Mallory").await;
    let malls = app.project(&mallory, "Mall").await;
    let theirs = exported_tool(&app, &mallory, &malls).await;
    let mut forged = theirs.clone();

    // THEN the team's import refuses it, naming the publisher
    let reply = import(
        &app,
        &owner,
        "tools",
        &query,
        manifest::to_yaml(&theirs).unwrap(),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(reply.error_fields(), vec!["publisher"]);

    // AND claiming the partner as publisher breaks the signature
    forged[manifest::PUBLISHER_FIELD]["project_id"] = json!(partner);
    let reply = import(
        &app,
        &owner,
        "tools",
        &query,
        manifest::to_yaml(&forged).unwrap(),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(reply.error_fields(), vec!["signature"]);

    // AND an unsigned copy, or one signed before manifests named publishers, names no
    // publisher the team could trust
    let mut unsigned = theirs.clone();
    unsigned.remove(manifest::SIGNATURE_FIELD);
    unsigned.remove(manifest::CHECKSUM_FIELD);
    let mut anonymous = theirs.clone();
    anonymous.remove(manifest::PUBLISHER_FIELD);
    app.state
        .manifest_signer()
        .await
        .unwrap()
        .sign(&mut anonymous);
    for manifest in [unsigned, anonymous] {
        let reply = import(
            &app,
            &owner,
            "tools",
            &query,
            manifest::to_yaml(&manifest).unwrap(),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.text
        );
        assert_eq!(reply.error_fields(), vec!["publisher"]);
    }
    let listed = app
        .get(&format!("/api/v1/tools?project_id={team}"), &owner)
        .await;
    assert!(listed.body["items"].as_array().unwrap().is_empty());

    // WHEN the partner exports, THEN the team imports it
    let partners = exported_tool(&app, &owner, &partner).await;
    let reply = import(
        &app,
        &owner,
        "tools",
        &query,
        manifest::to_yaml(&partners).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["publisher"]["project_id"], partner.as_str());
}

#[tokio::test]
async fn without_trusted_publishers_a_manifest_signed_before_publishers_still_imports() {
    // GIVEN a manifest this deployment signed without naming a publisher
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Open").await;
    let mut legacy = manifest::parse(&unsealed("crm_tool")).unwrap();
    app.state.manifest_signer().await.unwrap().sign(&mut legacy);

    // WHEN a project that names no trusted publishers imports it
    let reply = import(
        &app,
        &owner,
        "tools",
        &format!("project_id={project}"),
        manifest::to_yaml(&legacy).unwrap(),
    )
    .await;

    // THEN it imports as before, signed, with no publisher and a warning saying so
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["signed"], true);
    assert_eq!(reply.body["publisher"], Value::Null);
    assert!(reply.body["warnings"][0]
        .as_str()
        .unwrap()
        .contains("names no publisher"));
}

#[tokio::test]
async fn a_trusted_foreign_key_cannot_sign_in_the_name_of_this_deployments_projects() {
    // GIVEN a deployment that also trusts another deployment's key, and a project that
    // trusts only one of its own projects
    let foreign =
        ManifestSigner::from_secret(&SecretString::from("the-other-deployments-signing-secret"))
            .unwrap();
    let foreign_key = foreign.verifying_key();
    let app = spawn_app_with(|config| config.registry_trusted_keys = vec![foreign_key]).await;
    let owner = app.user("Owner").await;
    let team = app.project(&owner, "Team").await;
    let partner = app.project(&owner, "Partner").await;
    let key_id = key_id(&app, &owner).await;
    let reply = trust(&app, &owner, &team, json!([format!("{key_id}/{partner}")])).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);

    // WHEN the foreign key signs a manifest claiming this deployment's key and the partner
    let mut claimed = exported_tool(&app, &owner, &partner).await;
    claimed["metadata"]["timeout_ms"] = json!(1);
    foreign.sign(&mut claimed);
    let reply = import(
        &app,
        &owner,
        "tools",
        &format!("project_id={team}"),
        manifest::to_yaml(&claimed).unwrap(),
    )
    .await;

    // THEN the import is refused: the publisher names another key than the signer's
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(reply.error_fields(), vec!["publisher.key_id"]);
}

#[tokio::test]
async fn trusted_publishers_are_checked_when_the_project_is_saved() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Strict").await;
    let key_id = key_id(&app, &owner).await;
    let reply = trust(
        &app,
        &owner,
        &project,
        json!([key_id, "not-a-key", format!("{key_id}/not-a-project")]),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(
        reply.error_fields(),
        vec![
            "settings.trusted_publishers[1]",
            "settings.trusted_publishers[2]"
        ]
    );
    let read = app
        .get(&format!("/api/v1/projects/{project}"), &owner)
        .await;
    assert_eq!(read.body["version"], 1);
    assert_eq!(read.body["settings"], json!({}));
}
