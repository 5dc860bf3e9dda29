//! Secrets stay out of the logs, and token guessing is slowed down.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::daemon::{free_addr, Daemon};
use crate::support::{user_body, TestServer};

#[tokio::test(flavor = "multi_thread")]
async fn a_full_lifecycle_at_trace_level_logs_no_token_or_password() {
    let mut server = TestServer::start().await;
    server.stop_daemon().await;
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("stderr.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut daemon = Daemon::spawn(
        &server.config_path,
        free_addr(),
        &[("RUST_LOG", "trace")],
        Stdio::from(log_file),
    );
    daemon.wait_ready().await;
    let client = reqwest::Client::new();
    let token = server.token.clone();
    let base = daemon.base.clone();
    let send = |method: reqwest::Method, path: String, body: Option<Value>, token: String| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let mut request = client.request(method, url).bearer_auth(token);
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/scim+json")
                    .body(body.to_string());
            }
            let reply = request.send().await.unwrap();
            let status = reply.status().as_u16();
            let body: Value = reply.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    use reqwest::Method;
    let passwords = [
        "Pw-Create-7c1e5a",
        "Pw-Put-2b9d44",
        "Pw-Patch-8f03aa",
        "Pw-Pathless-51de0c",
        "Pw-Refused-e6a721",
        "Pw-Filter-0d4b19",
    ];
    let mut body = user_body("secretive", "Se", "Cret");
    body["password"] = json!(passwords[0]);
    let (status, created) = send(Method::POST, "/Users".into(), Some(body), token.clone()).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let dn = server.user_dn("secretive");
    assert!(server.can_bind(&dn, passwords[0]));
    let mut body = user_body("secretive", "Se", "Cret");
    body["password"] = json!(passwords[1]);
    let (status, _) = send(
        Method::PUT,
        format!("/Users/{id}"),
        Some(body),
        token.clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(server.can_bind(&dn, passwords[1]), "the PUT's password");
    assert!(!server.can_bind(&dn, passwords[0]), "the create's password");
    let patch =
        json!({"Operations": [{"op": "replace", "path": "password", "value": passwords[2]}]});
    let (status, _) = send(
        Method::PATCH,
        format!("/Users/{id}"),
        Some(patch),
        token.clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(server.can_bind(&dn, passwords[2]), "the PATCH's password");
    assert!(!server.can_bind(&dn, passwords[1]), "the PUT's password");
    let patch = json!({"Operations": [{"op": "replace", "value": {"password": passwords[3], "active": false}}]});
    let (status, _) = send(
        Method::PATCH,
        format!("/Users/{id}"),
        Some(patch),
        token.clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(!server.can_bind(&dn, passwords[3]), "locked");
    // A refused request carrying a password.
    let refused = json!({"userName": "bad\u{1b}name", "password": passwords[4]});
    let (status, _) = send(Method::POST, "/Users".into(), Some(refused), token.clone()).await;
    assert_eq!(status, 400);
    // A filter naming a password.
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("filter", &format!("password eq \"{}\"", passwords[5]))
        .finish();
    let (status, _) = send(Method::GET, format!("/Users?{query}"), None, token.clone()).await;
    assert!(status == 200 || status == 400, "{status}");
    // Groups, then the end of the lifecycle.
    let group = json!({"displayName": "vault", "members": [{"value": id}]});
    let (status, group) = send(Method::POST, "/Groups".into(), Some(group), token.clone()).await;
    assert_eq!(status, 201);
    let group_id = group["id"].as_str().unwrap().to_string();
    let (status, _) = send(
        Method::DELETE,
        format!("/Groups/{group_id}"),
        None,
        token.clone(),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = send(Method::DELETE, format!("/Users/{id}"), None, token.clone()).await;
    assert_eq!(status, 204);
    // A wrong token, which is a secret of whoever guessed it too.
    let wrong_token = "wrong-token-3f9a0c1d2e";
    let (status, _) = send(Method::GET, "/Users".into(), None, wrong_token.to_string()).await;
    assert_eq!(status, 401);
    daemon.kill();

    let log = std::fs::read_to_string(&log_path).unwrap();
    if std::env::var_os("SHOW_DAEMON_LOG").is_some() {
        eprintln!("{log}");
    }
    assert!(
        log.contains("DEBUG") && log.contains("/Users/{id}"),
        "verbose logging was on"
    );
    let bind_password = server.slapd.admin_password().to_string();
    let mut secrets: Vec<(&str, &str)> = vec![
        ("bearer token", token.as_str()),
        ("wrong bearer token", wrong_token),
        ("bind password", bind_password.as_str()),
    ];
    secrets.extend(
        passwords
            .iter()
            .map(|password| ("user password", *password)),
    );
    for (what, secret) in secrets {
        if let Some(line) = log.lines().find(|line| line.contains(secret)) {
            let shown: String = line.chars().take(300).collect();
            panic!("the log holds the {what}: {shown}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn many_bad_tokens_from_one_client_are_answered_429_until_the_window_ends() {
    let server = TestServer::start().await;
    let client = |source: &str| {
        reqwest::Client::builder()
            .local_address(source.parse::<std::net::IpAddr>().unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let attacker = client("127.0.0.2");
    let users = format!("{}/Users", server.base);
    for n in 0..scim2ldap::http::throttle::MAX_FAILURES {
        let reply = attacker
            .get(&users)
            .bearer_auth(format!("guess-{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 401, "guess {n}");
    }
    let throttled = attacker
        .get(&users)
        .bearer_auth("guess-again")
        .send()
        .await
        .unwrap();
    assert_eq!(throttled.status(), 429);
    let retry_after: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = throttled.json().await.unwrap();
    assert_eq!(body["status"], "429");
    // The right token from that client is refused the same way while the window lasts, so a
    // right guess cannot be told from a wrong one.
    let right = attacker
        .get(&users)
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 429);
    // Health checks need no token and are not throttled; other clients are not affected.
    let health = attacker
        .get(format!("{}/healthz", server.root))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let identity_provider = client("127.0.0.3");
    let reply = identity_provider
        .get(&users)
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    // A client that authenticates starts afresh: a few wrong tokens (a rotation) are not held
    // against it.
    for _ in 0..3 {
        let reply = identity_provider
            .get(&users)
            .bearer_auth("old-token-after-rotation")
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 401);
    }
    let reply = identity_provider
        .get(&users)
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_local_proxy_one_clients_bad_tokens_do_not_lock_out_the_others() {
    let server = TestServer::start().await;
    // Both come through a reverse proxy on this host (peer 127.0.0.1), which appends the
    // address it saw to X-Forwarded-For, as nginx's $proxy_add_x_forwarded_for does.
    let proxy = reqwest::Client::new();
    let users = format!("{}/Users", server.base);
    let via_proxy = |client: &str, claimed: &str, token: &str| {
        proxy
            .get(&users)
            .header("x-forwarded-for", format!("{claimed}, {client}"))
            .bearer_auth(token.to_string())
            .send()
    };
    for n in 0..scim2ldap::http::throttle::MAX_FAILURES {
        // What the attacker claims changes every time; what the proxy appended does not.
        let reply = via_proxy("203.0.113.7", &format!("10.0.0.{n}"), "guess")
            .await
            .unwrap();
        assert_eq!(reply.status(), 401, "guess {n}");
    }
    let throttled = via_proxy("203.0.113.7", "192.0.2.1", "guess")
        .await
        .unwrap();
    assert_eq!(throttled.status(), 429);
    let identity_provider = via_proxy("198.51.100.20", "198.51.100.20", &server.token)
        .await
        .unwrap();
    assert_eq!(identity_provider.status(), 200);
}

/// A client without a valid token cannot make the log grow faster than one access line per
/// request: the path's id is cut in it, and its block after too many failures is logged once,
/// not on every refused request.
#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_token_log_one_short_line_each() {
    let mut server = TestServer::start().await;
    server.stop_daemon().await;
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("stderr.log");
    let mut daemon = Daemon::spawn(
        &server.config_path,
        free_addr(),
        &[],
        Stdio::from(std::fs::File::create(&log_path).unwrap()),
    );
    daemon.wait_ready().await;
    let long_id = "x".repeat(20_000);
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..14 {
        let reply = client
            .get(format!("{}/Users/{long_id}", daemon.base))
            .bearer_auth("not-the-token-at-all")
            .send()
            .await
            .unwrap();
        statuses.push(reply.status().as_u16());
    }
    assert_eq!(statuses[..10], [401; 10]);
    assert_eq!(statuses[10..], [429; 4]);
    daemon.kill();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.lines().all(|line| line.len() < 1_000),
        "a long line:\n{log}"
    );
    assert_eq!(
        log.matches("client blocked after failed authentications")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("client throttled"), "{log}");
    assert_eq!(
        log.lines().filter(|line| line.contains("status=4")).count(),
        14,
        "one access line per request:\n{log}"
    );
}
