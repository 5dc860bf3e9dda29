//! Foundation: auth, discovery, errors, health, the `check` command, and the pool across a
//! directory restart.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::TestServer;

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_valid_token_get_401_with_a_scim_error() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    for auth in [
        None,
        Some("Bearer wrong-token-wrong-token"),
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer "),
    ] {
        let mut request = client.get(format!("{}/Users", server.base));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "auth {auth:?}");
        assert!(response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        assert!(response.headers().contains_key("x-request-id"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["schemas"][0],
            "urn:ietf:params:scim:api:messages:2.0:Error"
        );
        assert_eq!(body["status"], "401");
    }
    // The right token, as a bearer token and bare (Okta's header mode).
    for auth in [
        format!("Bearer {}", server.token),
        format!("bearer {}", server.token),
        server.token.clone(),
    ] {
        let response = client
            .get(format!("{}/Users", server.base))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn several_tokens_are_accepted_for_rotation() {
    let old = scim2ldap::http::new_token();
    let old_hash = old.hash_line.clone();
    let server = TestServer::start_with(move |text| {
        *text = text.replace(
            "bearer_tokens = [\"",
            &format!("bearer_tokens = [\"{old_hash}\", \""),
        );
    })
    .await;
    let client = reqwest::Client::new();
    for token in [&server.token, &old.plaintext] {
        let response = client
            .get(format!("{}/Schemas", server.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_documents_follow_rfc_7643() {
    let server = TestServer::start().await;
    let spc = server.get("/ServiceProviderConfig").await;
    assert_eq!(
        spc.header("content-type").as_deref(),
        Some("application/scim+json")
    );
    let spc = spc.expect(200);
    assert_eq!(
        spc["schemas"][0],
        "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
    );
    for capability in ["patch", "filter", "changePassword", "sort", "etag"] {
        assert_eq!(spc[capability]["supported"], true, "{capability}");
    }
    assert_eq!(spc["bulk"]["supported"], false);
    assert_eq!(spc["authenticationSchemes"][0]["type"], "oauthbearertoken");

    let types = server.get("/ResourceTypes").await.expect(200);
    assert_eq!(types["totalResults"], 2);
    // No filter on discovery (RFC 7644 §4): 403, not the whole list taken for the matches.
    for path in [
        "/ResourceTypes?filter=name%20eq%20%22User%22",
        "/Schemas?filter=id%20eq%20%22x%22",
    ] {
        let refused = server.get(path).await;
        assert_eq!(refused.status.as_u16(), 403, "{path}: {}", refused.body);
        assert_eq!(refused.body["status"], "403", "{path}");
    }
    let user_type = server.get("/ResourceTypes/User").await.expect(200);
    assert_eq!(user_type["endpoint"], "/Users");
    assert_eq!(
        user_type["schemaExtensions"][0]["schema"],
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
    );

    let schemas = server.get("/Schemas").await.expect(200);
    let ids: Vec<&str> = schemas["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    for urn in [
        "urn:ietf:params:scim:schemas:core:2.0:User",
        "urn:ietf:params:scim:schemas:core:2.0:Group",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
    ] {
        assert!(ids.contains(&urn), "{urn} listed");
        let schema = server.get(&format!("/Schemas/{urn}")).await.expect(200);
        assert_eq!(schema["id"], urn);
        check_attributes(schema["attributes"].as_array().unwrap());
    }
    let user = server
        .get("/Schemas/urn:ietf:params:scim:schemas:core:2.0:User")
        .await
        .expect(200);
    let password = user["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "password")
        .unwrap();
    assert_eq!(password["mutability"], "writeOnly");
    assert_eq!(password["returned"], "never");
}

/// Every attribute carries every characteristic of RFC 7643 §7 with a legal value.
fn check_attributes(attributes: &[Value]) {
    for attr in attributes {
        let name = attr["name"].as_str().unwrap();
        let ty = attr["type"].as_str().unwrap();
        assert!(
            [
                "string",
                "boolean",
                "decimal",
                "integer",
                "dateTime",
                "binary",
                "reference",
                "complex"
            ]
            .contains(&ty),
            "{name}: type {ty}"
        );
        assert!(
            attr["multiValued"].is_boolean() && attr["required"].is_boolean(),
            "{name}"
        );
        assert!(["readOnly", "readWrite", "immutable", "writeOnly"]
            .contains(&attr["mutability"].as_str().unwrap()));
        assert!(
            ["always", "never", "default", "request"].contains(&attr["returned"].as_str().unwrap())
        );
        if ty == "complex" {
            check_attributes(attr["subAttributes"].as_array().unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_wrong_methods_and_big_bodies_get_scim_errors() {
    let server = TestServer::start().await;
    let not_found = server.get("/Nope").await.expect(404);
    assert_eq!(
        not_found["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:Error"
    );
    server.get("/Schemas/urn:nope").await.expect(404);
    server.get("/ResourceTypes/Nope").await.expect(404);
    server
        .get("/Users/00000000-0000-0000-0000-000000000000")
        .await
        .expect(404);
    server
        .get("/Users/..%2F..%2Fetc%2Fpasswd")
        .await
        .expect(404);

    let wrong = server
        .call(Method::POST, "/ServiceProviderConfig", Some(json!({})))
        .await;
    assert_eq!(wrong.header("allow").as_deref(), Some("GET, HEAD"));
    wrong.expect(405);
    server
        .call(Method::DELETE, "/Users", None)
        .await
        .expect(405);
    server.get("/Me").await.expect(501);

    // Just over the limit: the client finishes sending before the early 413 arrives.
    let big = json!({"userName": "x".repeat(1024 * 1024 + 100)});
    server.post("/Users", big).await.expect(413);

    // Responses follow Accept: application/json only (OneLogin) gets application/json.
    let reply = server
        .call_with(Method::GET, "/Schemas", None, |r| {
            r.header("accept", "application/json")
        })
        .await;
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(reply
        .header("x-request-id")
        .is_some_and(|id| id.len() == 32));
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_slashes_and_stray_query_marks_are_tolerated() {
    let server = TestServer::start().await;
    server
        .get(&format!("{}/scim/v2//Users?", server.root))
        .await
        .expect(200);
    let list = server
        .get(&format!(
            "{}/scim/v2/Users?filter=userName+eq+%22nobody%22&",
            server.root
        ))
        .await
        .expect(200);
    assert_eq!(list["totalResults"], 0);
    assert_eq!(list["Resources"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_the_directory_and_the_pool_survives_a_restart() {
    let mut server = TestServer::start().await;
    let client = reqwest::Client::new();
    let ready = |client: reqwest::Client, root: String| async move {
        client
            .get(format!("{root}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(
        client
            .get(format!("{}/healthz", server.root))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(ready(client.clone(), server.root.clone()).await, 200);
    server
        .post("/Users", crate::support::user_body("before", "B", "Fore"))
        .await
        .expect(201);

    server.slapd.stop().unwrap();
    // One readiness answer serves the probes of a second.
    let becomes = |wanted: u16| {
        let (client, root) = (client.clone(), server.root.clone());
        async move {
            let mut status = 0;
            // Up to 30 s: the pool's reconnect backoff (up to 5 s) on a loaded machine.
            for _ in 0..300 {
                status = ready(client.clone(), root.clone()).await;
                if status == wanted {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            status
        }
    };
    assert_eq!(becomes(503).await, 503);
    let down = server
        .post("/Users", crate::support::user_body("during", "D", "Uring"))
        .await;
    assert!(down.header("retry-after").is_some());
    down.expect(503);
    assert!(
        server
            .get("/Users?filter=userName eq \"during\"")
            .await
            .expect(200)["totalResults"]
            == 0
    );

    server.slapd.restart().unwrap();
    // The pool reconnects by itself; the backoff is short, so a few tries suffice.
    assert_eq!(becomes(200).await, 200);
    server
        .post("/Users", crate::support::user_body("during", "D", "Uring"))
        .await
        .expect(201);
    assert!(server.entry(&server.user_dn("during")).is_some());
    assert!(server.entry(&server.user_dn("before")).is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_on_a_good_setup_and_names_each_problem() {
    let server = TestServer::start().await;
    let config = scim2ldap::config::load(&server.config_path, Some(Default::default())).unwrap();
    assert_eq!(
        scim2ldap::check::check_directory(&config).await,
        Vec::<String>::new()
    );

    let text = std::fs::read_to_string(&server.config_path).unwrap();
    let load_edited = |from: &str, to: &str| {
        let path = server.config_path.with_extension("edited.toml");
        std::fs::write(&path, text.replace(from, to)).unwrap();
        scim2ldap::config::load(&path, Some(Default::default())).unwrap()
    };
    let wrong_password = load_edited(server.slapd.admin_password(), "not-the-password");
    let problems = scim2ldap::check::check_directory(&wrong_password).await;
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].contains("refused the bind password"),
        "{problems:?}"
    );

    let missing_base = load_edited("base_dn = \"ou=people,", "base_dn = \"ou=nobody,");
    let problems = scim2ldap::check::check_directory(&missing_base).await;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("users.base_dn") && p.contains("does not exist")),
        "{problems:?}"
    );

    let unknown_class = load_edited(
        "[users]\n",
        "[users]\nobject_classes = [\"inetOrgPerson\", \"noSuchClass\"]\n",
    );
    let problems = scim2ldap::check::check_directory(&unknown_class).await;
    assert!(
        problems.iter().any(|p| p.contains("noSuchClass")),
        "{problems:?}"
    );

    let unknown_attr = load_edited(
        "[users]\n",
        "[users]\nattributes = { noSuchAttr = \"title\" }\n",
    );
    let problems = scim2ldap::check::check_directory(&unknown_attr).await;
    assert!(
        problems.iter().any(|p| p.contains("noSuchAttr")),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_drains_and_returns() {
    let mut server = TestServer::start().await;
    server.get("/Users").await.expect(200);
    server.stop_daemon().await;
    assert!(reqwest::get(format!("{}/healthz", server.root))
        .await
        .is_err());
}

/// Turns on StartTLS in the test directory with a fresh self-signed certificate for 127.0.0.1;
/// returns the certificate's PEM path (the CA file a client must trust).
fn enable_directory_tls(server: &TestServer) -> std::path::PathBuf {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert_path = server.slapd.dir().join("tls-cert.pem");
    let key_path = server.slapd.dir().join("tls-key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let ldif = format!(
        "dn: cn=config\nchangetype: modify\nreplace: olcTLSCertificateFile\nolcTLSCertificateFile: {}\n-\nreplace: olcTLSCertificateKeyFile\nolcTLSCertificateKeyFile: {}\n",
        cert_path.display(),
        key_path.display()
    );
    let mut child = std::process::Command::new("ldapmodify")
        .args([
            "-Q",
            "-Y",
            "EXTERNAL",
            "-H",
            &server.slapd.ldapi_url().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ldif.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "slapd accepted the TLS settings"
    );
    cert_path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_directory_is_reached_over_starttls_with_a_configured_ca() {
    let mut server = TestServer::start().await;
    let cert_path = enable_directory_tls(&server);
    server.stop_daemon().await;
    let text = std::fs::read_to_string(&server.config_path).unwrap();
    let with_tls = text.replace(
        "flavor = \"openldap\"\n",
        &format!(
            "flavor = \"openldap\"\nstarttls = true\nca_file = \"{}\"\n",
            cert_path.display()
        ),
    );
    std::fs::write(&server.config_path, &with_tls).unwrap();
    server.launch().await;
    server
        .post("/Users", crate::support::user_body("tls.user", "T", "Ls"))
        .await
        .expect(201);
    assert!(server.entry(&server.user_dn("tls.user")).is_some());
    let config = scim2ldap::config::load(&server.config_path, Some(Default::default())).unwrap();
    assert_eq!(
        scim2ldap::check::check_directory(&config).await,
        Vec::<String>::new()
    );

    // A CA that did not sign the directory's certificate: the connection is refused.
    let stranger = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let stranger_path = server.slapd.dir().join("stranger.pem");
    std::fs::write(&stranger_path, stranger.cert.pem()).unwrap();
    let wrong_ca = server.config_path.with_extension("wrong-ca.toml");
    std::fs::write(
        &wrong_ca,
        with_tls.replace(
            &cert_path.display().to_string(),
            &stranger_path.display().to_string(),
        ),
    )
    .unwrap();
    let config = scim2ldap::config::load(&wrong_ca, Some(Default::default())).unwrap();
    let problems = scim2ldap::check::check_directory(&config).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
}
