//! Test support: a throwaway `slapd`, the daemon on `127.0.0.1:0` in this process, an HTTP
//! client, and reading the directory back (search, bind) to assert what it holds.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use scim2ldap::demo::slapd::{Slapd, SlapdOptions};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One directory entry: attribute name (lowercased) to values.
pub type Attrs = BTreeMap<String, Vec<String>>;

/// A reply: status, headers, JSON body (Null when empty or not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        self.body
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// The daemon on a fresh directory.
pub struct TestServer {
    pub slapd: Slapd,
    pub base: String,
    pub root: String,
    pub token: String,
    pub config_path: PathBuf,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), scim2ldap::RunError>>>,
    _dir: tempfile::TempDir,
}

/// The config text of a test server; `edit` may change it before it is loaded.
pub fn test_config(slapd: &Slapd, token_hash: &str, cache: &std::path::Path) -> String {
    scim2ldap::demo::config_toml(slapd, "127.0.0.1:0".parse().unwrap(), token_hash, cache)
}

impl TestServer {
    /// A server with the default test configuration.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// A server whose config text `edit` may change (append keys, replace lines).
    pub async fn start_with(edit: impl FnOnce(&mut String)) -> TestServer {
        let slapd = Slapd::start(SlapdOptions::default()).expect("slapd starts");
        TestServer::start_on(slapd, edit).await
    }

    /// A server on `slapd` bound as `service_dn` (see `service_account`) instead of the admin,
    /// its config text then changed by `edit`.
    pub async fn start_as(
        slapd: Slapd,
        service_dn: &str,
        edit: impl FnOnce(&mut String),
    ) -> TestServer {
        let (admin_dn, admin_password) = (slapd.admin_dn(), slapd.admin_password().to_string());
        TestServer::start_on(slapd, |text| {
            *text = text
                .replace(&admin_dn, service_dn)
                .replace(&admin_password, SERVICE_PASSWORD);
            edit(text);
        })
        .await
    }

    /// A server on an existing directory.
    pub async fn start_on(slapd: Slapd, edit: impl FnOnce(&mut String)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = scim2ldap::http::new_token();
        let config_path = dir.path().join("config.toml");
        let mut text = test_config(&slapd, &token.hash_line, &dir.path().join("cache.db"));
        edit(&mut text);
        std::fs::write(&config_path, &text).expect("write config");
        let mut server = TestServer {
            slapd,
            base: String::new(),
            root: String::new(),
            token: token.plaintext,
            config_path,
            client: reqwest::Client::new(),
            shutdown: None,
            handle: None,
            _dir: dir,
        };
        server.launch().await;
        server
    }

    /// Starts the daemon on the current config file (again, after `stop_daemon`).
    pub async fn launch(&mut self) {
        let ready = self.launch_unready().await;
        ready.await.expect("daemon becomes ready");
    }

    /// Starts the daemon on the current config file and returns at once, with what tells when
    /// its start-up is done.
    pub async fn launch_unready(&mut self) -> oneshot::Receiver<()> {
        let config = scim2ldap::config::load(&self.config_path, Some(Default::default()))
            .expect("config loads");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (send, receive) = oneshot::channel::<()>();
        let (ready_send, ready_receive) = oneshot::channel::<()>();
        let handle = tokio::spawn(scim2ldap::run(
            config,
            listener,
            async move {
                let _ = receive.await;
            },
            move || {
                let _ = ready_send.send(());
            },
        ));
        self.root = format!("http://{addr}");
        self.base = format!("http://{addr}/scim/v2");
        self.shutdown = Some(send);
        self.handle = Some(handle);
        ready_receive
    }

    /// Stops the daemon (not the directory) and waits for it.
    pub async fn stop_daemon(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("daemon task").expect("daemon ran");
        }
    }

    /// Sends a request with the token; `body` None sends none.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call_with(method, path, body, |req| req).await
    }

    /// As `call`, letting `edit` change the request (headers).
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        edit: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Reply {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{}", self.base, path)
        };
        let mut request = self.client.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/scim+json")
                .body(body.to_string());
        }
        let response = edit(request).send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body read");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }
    /// POSTs `body` to `path`, expects 201, and returns the new resource's id.
    pub async fn create(&self, path: &str, body: Value) -> String {
        let created = self.post(path, body).await.expect(201);
        created["id"].as_str().expect("an id").to_string()
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(body)).await
    }
    /// Suspends (`false`) or reactivates user `id` with a PATCH of `active`, as IdPs do;
    /// expects 200.
    pub async fn set_active(&self, id: &str, active: bool) {
        let patch = serde_json::json!({"Operations": [{"op": "replace", "path": "active", "value": active}]});
        self.patch(&format!("/Users/{id}"), patch).await.expect(200);
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, None).await
    }

    /// The daemon's metrics page, fetched with the token.
    pub async fn metrics(&self) -> String {
        reqwest::Client::new()
            .get(format!("{}/metrics", self.root))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body")
    }

    /// Waits until the daemon's gauge `series` reads `n` (up to a minute, for a loaded
    /// machine): a test that needs requests to have reached a given point waits for that state,
    /// not for a fixed time.
    pub async fn wait_for_gauge(&self, series: &str, n: usize) {
        let started = std::time::Instant::now();
        loop {
            let value = sample(&self.metrics().await, series);
            if value == n as f64 {
                return;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "{series} is {value} after a minute, not {n}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` writes are recorded as intents and not committed: each has passed its
    /// checks and started on the directory.
    pub async fn wait_for_intents(&self, n: usize) {
        self.wait_for_gauge("scim2ldap_intents_pending", n).await;
    }

    /// Waits until `n` group member changes wait for a group another change holds.
    pub async fn wait_for_member_changes_waiting(&self, n: usize) {
        self.wait_for_gauge("scim2ldap_group_member_changes_waiting", n)
            .await;
    }

    /// The entry at `dn` once the directory holds it (up to ten seconds: for repairs the daemon
    /// makes on its own).
    pub async fn wait_for_entry(&self, dn: &str) -> Attrs {
        for _ in 0..200 {
            if let Some(entry) = self.entry(dn) {
                return entry;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("{dn} did not appear within ten seconds");
    }

    /// The entry at `dn` as the directory holds it (user and operational attributes), or None.
    pub fn entry(&self, dn: &str) -> Option<Attrs> {
        match self.slapd.ldapsearch(dn, "(objectClass=*)", &["*", "+"]) {
            Ok(text) => parse_ldif(&text).into_iter().next().map(|(_, attrs)| attrs),
            Err(err) if err.ldap_code() == Some(32) => None,
            Err(err) => panic!("search {dn}: {err}"),
        }
    }

    /// Entries under `base` matching `filter`, by DN.
    pub fn search(&self, base: &str, filter: &str) -> Vec<(String, Attrs)> {
        parse_ldif(
            &self
                .slapd
                .ldapsearch(base, filter, &["*", "+"])
                .expect("search"),
        )
    }

    /// The DN of user `uid` under ou=people.
    pub fn user_dn(&self, uid: &str) -> String {
        format!("uid={uid},{}", self.slapd.people_dn())
    }

    /// The DN of group `cn` under ou=groups.
    pub fn group_dn(&self, cn: &str) -> String {
        format!("cn={cn},{}", self.slapd.groups_dn())
    }

    /// Whether a legacy application could bind as `dn` with `password`.
    pub fn can_bind(&self, dn: &str, password: &str) -> bool {
        self.slapd
            .user_can_bind(dn, password)
            .expect("bind attempt")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// The value of `series` (its name and labels, as printed) in a metrics page; 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Values of `attr` (any case) in `attrs`.
pub fn values<'a>(attrs: &'a Attrs, attr: &str) -> Vec<&'a str> {
    attrs
        .get(&attr.to_ascii_lowercase())
        .map(|values| values.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Parses `-LLL` unwrapped LDIF into (dn, attrs); base64 (`::`) values are decoded.
pub fn parse_ldif(text: &str) -> Vec<(String, Attrs)> {
    let mut entries = Vec::new();
    for block in text.split("\n\n") {
        let mut dn = String::new();
        let mut attrs = Attrs::new();
        for line in block.lines() {
            let (name, value) = if let Some((name, value)) = line.split_once(":: ") {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.trim())
                    .expect("base64");
                (name, String::from_utf8_lossy(&bytes).into_owned())
            } else if let Some((name, value)) = line.split_once(": ") {
                (name, value.to_string())
            } else {
                continue;
            };
            if name.eq_ignore_ascii_case("dn") {
                dn = value;
            } else {
                attrs
                    .entry(name.to_ascii_lowercase())
                    .or_default()
                    .push(value);
            }
        }
        if !dn.is_empty() {
            entries.push((dn, attrs));
        }
    }
    entries
}

/// A user body as OneLogin's default v2 template renders it.
pub fn user_body(user_name: &str, given: &str, family: &str) -> Value {
    serde_json::json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": user_name,
        "name": {"givenName": given, "familyName": family},
        "emails": [{"value": format!("{user_name}@example.com"), "type": "work", "primary": true}],
    })
}

/// Gives directory operations a timeout far beyond the test's own waits: the tests that stop
/// the directory hold one operation in it while others queue, and on a loaded machine queueing
/// them can take longer than the usual five seconds, after which the held operation would fail
/// (or be retried) before the test lets it go.
pub fn patient_directory(text: &mut String) {
    let before = text.clone();
    *text = text.replace("timeout = \"5s\"", "timeout = \"300s\"");
    assert_ne!(*text, before, "the test config sets the directory timeout");
    // Such tests stop the directory right after their first writes: a start-up reconciliation
    // run still at work then would hold a resource the test writes until the directory is back.
    assert!(!text.contains("[reconcile]"));
    text.push_str("\n[reconcile]\nat_startup = false\n");
}

/// Sends `signal` (STOP, CONT) to the test's slapd.
pub fn signal_slapd(server: &TestServer, signal: &str) {
    let pid = server.slapd.pid().expect("slapd runs");
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// The password of the account `service_account` adds.
pub const SERVICE_PASSWORD: &str = "Service-Pass-1";

/// Adds a service account `cn=scim2ldap,<suffix>` (not the rootdn) with `SERVICE_PASSWORD`,
/// for tests that bind the daemon as a production deployment would; returns its DN. Its
/// access and limits are the test's to configure.
pub fn service_account(slapd: &Slapd) -> String {
    let service_dn = format!("cn=scim2ldap,{}", slapd.suffix());
    slapd
        .ldapadd(&format!(
            "dn: {service_dn}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: scim2ldap\nuserPassword: {SERVICE_PASSWORD}\n"
        ))
        .unwrap();
    service_dn
}

/// Waits up to 30 seconds for `check` to hold (the daemon working on its own: following,
/// reconciliation), failing with `what`.
pub async fn until(what: &str, check: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{what}: not within 30 seconds"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
