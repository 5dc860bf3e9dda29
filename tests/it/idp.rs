//! IdP compatibility: replays every recorded fixture under `tests/fixtures/idp/<idp>/` against
//! the daemon on a fresh `slapd` (one per fixture file), checking each step's status, response
//! headers and fields, and the directory state after it.
//!
//! The fixture format is described in `tests/fixtures/idp/README.md`. Every failure names the
//! fixture file and the step; all fixture files of an IdP run even when one fails, and the test
//! reports every failing file at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::Value;

use crate::support::{values, TestServer};

#[tokio::test(flavor = "multi_thread")]
async fn onelogin_fixtures_replay() {
    replay_idp("onelogin").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn okta_fixtures_replay() {
    replay_idp("okta").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn entra_fixtures_replay() {
    replay_idp("entra").await;
}

fn fixture_dir(idp: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/idp")
        .join(idp)
}

/// Replays every `*.json` file of `idp` in name order and fails with every failure found.
async fn replay_idp(idp: &str) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture_dir(idp))
        .unwrap_or_else(|err| panic!("fixture dir for {idp}: {err}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures for {idp}");
    let mut failures = Vec::new();
    for file in &files {
        let name = file
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(file)
            .display()
            .to_string();
        if let Err(failure) = replay_file(file).await {
            failures.push(format!("{name}: {failure}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {idp} fixture files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// What one file promises: its source and its steps.
fn load(file: &Path) -> Result<(String, Vec<Value>), String> {
    let text = std::fs::read_to_string(file).map_err(|err| format!("read: {err}"))?;
    let doc: Value = serde_json::from_str(&text).map_err(|err| format!("not JSON: {err}"))?;
    let source = doc["source"]
        .as_str()
        .filter(|source| source.contains('S') && source.contains('['))
        .ok_or("the fixture must name its source (S-ids and tags) in \"source\"")?
        .to_string();
    let steps = doc["steps"]
        .as_array()
        .filter(|steps| !steps.is_empty())
        .ok_or("the fixture needs a non-empty \"steps\" list")?
        .clone();
    Ok((source, steps))
}

async fn replay_file(file: &Path) -> Result<(), String> {
    let (_source, steps) = load(file)?;
    let server = TestServer::start().await;
    let mut replay = Replay {
        server: &server,
        client: reqwest::Client::new(),
        vars: BTreeMap::from([
            ("people".to_string(), server.slapd.people_dn()),
            ("groups".to_string(), server.slapd.groups_dn()),
        ]),
    };
    for (index, step) in steps.iter().enumerate() {
        let label = format!(
            "step {} ({})",
            index + 1,
            step["name"].as_str().unwrap_or("unnamed")
        );
        replay
            .step(step)
            .await
            .map_err(|failure| format!("{label}: {failure}"))?;
    }
    Ok(())
}

struct Replay<'s> {
    server: &'s TestServer,
    client: reqwest::Client,
    /// Captured values (`{{name}}`) and the built-ins `people` and `groups` (base DNs).
    vars: BTreeMap<String, String>,
}

impl Replay<'_> {
    async fn step(&mut self, step: &Value) -> Result<(), String> {
        if let Some(ldap) = step.get("ldap") {
            self.ldap_action(&self.fill(ldap))?;
        } else {
            self.request(step).await?;
        }
        if let Some(checks) = step.get("directory") {
            for check in checks.as_array().ok_or("\"directory\" must be a list")? {
                self.check_directory(&self.fill(check))?;
            }
        }
        Ok(())
    }

    /// Sends the step's request and checks the reply; records captures.
    async fn request(&mut self, step: &Value) -> Result<(), String> {
        let method_text = step["method"].as_str().ok_or("a step needs a method")?;
        let method = Method::from_bytes(method_text.as_bytes()).map_err(|err| err.to_string())?;
        let path = self.fill_text(step["path"].as_str().ok_or("a step needs a path")?);
        if path.contains("{{")
            || step
                .get("body")
                .is_some_and(|b| self.fill(b).to_string().contains("{{"))
        {
            return Err(format!("{path}: a {{{{name}}}} was never captured"));
        }
        let url = format!("{}{path}", self.server.base);
        let mut request = self.client.request(method.clone(), &url);
        match step["auth"].as_str().unwrap_or("bearer") {
            "bearer" => request = request.bearer_auth(&self.server.token),
            // Okta's "HTTP Header" mode sends the token as typed, without a scheme.
            "bare" => request = request.header("authorization", &self.server.token),
            "wrong" => request = request.bearer_auth("not-the-configured-token-0123456789"),
            "none" => {}
            other => return Err(format!("unknown auth mode {other:?}")),
        }
        if let Some(headers) = step.get("headers").and_then(Value::as_object) {
            for (name, value) in headers {
                let value = value.as_str().ok_or("header values are strings")?;
                request = request.header(
                    HeaderName::from_bytes(name.as_bytes()).map_err(|err| err.to_string())?,
                    HeaderValue::from_str(value).map_err(|err| err.to_string())?,
                );
            }
        }
        if let Some(body) = step.get("body") {
            request = request.body(self.fill(body).to_string());
        } else if let Some(text) = step.get("body_text").and_then(Value::as_str) {
            request = request.body(self.fill_text(text));
        }
        let response = request
            .send()
            .await
            .map_err(|err| format!("{method_text} {path}: {err}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|err| err.to_string())?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let expect = &step["expect"];
        let want_status = expect["status"]
            .as_u64()
            .ok_or("a request step needs expect.status")?;
        if u64::from(status) != want_status {
            return Err(format!(
                "{method_text} {path}: status {status}, expected {want_status}; body: {text}"
            ));
        }
        if let Some(want_headers) = expect.get("headers").and_then(Value::as_object) {
            for (name, want) in want_headers {
                let got = headers.get(name.as_str()).and_then(|v| v.to_str().ok());
                let want = want.as_str().map(|want| self.fill_text(want));
                if got != want.as_deref() {
                    return Err(format!(
                        "{method_text} {path}: header {name} is {got:?}, expected {want:?}"
                    ));
                }
            }
        }
        if expect.get("empty_body") == Some(&Value::Bool(true)) && !text.is_empty() {
            return Err(format!(
                "{method_text} {path}: expected no body, got {text}"
            ));
        }
        if let Some(fields) = expect.get("body").and_then(Value::as_object) {
            for (pointer, want) in fields {
                let want = self.fill(want);
                let got = body.pointer(pointer);
                let matches = match (&want, got) {
                    // null stands for "absent or null".
                    (Value::Null, None) => true,
                    // {"$nonempty": true}: present, and not null, "", [] or {}.
                    (Value::Object(matcher), got) if matcher.contains_key("$nonempty") => got
                        .is_some_and(|got| {
                            !(got.is_null()
                                || got.as_str() == Some("")
                                || got.as_array().is_some_and(Vec::is_empty)
                                || got.as_object().is_some_and(serde_json::Map::is_empty))
                        }),
                    (want, Some(got)) => want == got,
                    (_, None) => false,
                };
                if !matches {
                    return Err(format!(
                        "{method_text} {path}: {pointer} is {}, expected {want}; body: {text}",
                        got.map_or("absent".to_string(), Value::to_string)
                    ));
                }
            }
        }
        if let Some(captures) = step.get("capture").and_then(Value::as_object) {
            for (name, pointer) in captures {
                let pointer = pointer.as_str().ok_or("capture pointers are strings")?;
                let value = body
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("capture {name}: no string at {pointer} in {text}"))?;
                self.vars.insert(name.clone(), value.to_string());
            }
        }
        Ok(())
    }

    /// A change made in the directory by its administrator, not by the IdP.
    fn ldap_action(&self, ldap: &Value) -> Result<(), String> {
        let action = ldap["set_password"]
            .as_object()
            .ok_or("the only ldap action is set_password")?;
        let user = action["user"].as_str().ok_or("set_password needs user")?;
        let password = action["password"]
            .as_str()
            .ok_or("set_password needs password")?;
        self.server
            .slapd
            .ldapmodify(&format!(
                "dn: {}\nchangetype: modify\nreplace: userPassword\nuserPassword: {password}\n",
                self.server.user_dn(user)
            ))
            .map_err(|err| format!("set password of {user}: {err}"))
    }

    fn check_directory(&self, check: &Value) -> Result<(), String> {
        let server = self.server;
        let (kind, name, dn) = if let Some(user) = check["user"].as_str() {
            ("user", user, server.user_dn(user))
        } else if let Some(group) = check["group"].as_str() {
            ("group", group, server.group_dn(group))
        } else {
            return Err(format!("directory check {check} names no user or group"));
        };
        let entry = server.entry(&dn);
        let want_exists = check["exists"].as_bool().unwrap_or(true);
        let Some(entry) = entry else {
            return if want_exists {
                Err(format!("{kind} {name}: entry {dn} is absent"))
            } else {
                Ok(())
            };
        };
        if !want_exists {
            return Err(format!("{kind} {name}: entry {dn} exists, expected none"));
        }
        if let Some(attributes) = check.get("attributes").and_then(Value::as_object) {
            for (attr, want) in attributes {
                let mut want: Vec<&str> = want
                    .as_array()
                    .ok_or("attribute values are lists")?
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                let mut got = values(&entry, attr);
                want.sort_unstable();
                got.sort_unstable();
                if got != want {
                    return Err(format!(
                        "{kind} {name}: {attr} is {got:?}, expected {want:?}"
                    ));
                }
            }
        }
        let member_of: Vec<String> = values(&entry, "memberOf")
            .iter()
            .map(|dn| dn.to_ascii_lowercase())
            .collect();
        for (key, want_in) in [("member_of", true), ("not_member_of", false)] {
            for group in check[key].as_array().into_iter().flatten() {
                let group = group.as_str().ok_or("group names are strings")?;
                let group_dn = server.group_dn(group).to_ascii_lowercase();
                if member_of.contains(&group_dn) != want_in {
                    return Err(format!(
                        "{kind} {name}: memberOf is {member_of:?}; {key} {group}"
                    ));
                }
            }
        }
        if let Some(members) = check.get("members").and_then(Value::as_array) {
            let placeholder = server.slapd.placeholder_dn().to_ascii_lowercase();
            let mut got: Vec<String> = values(&entry, "member")
                .iter()
                .map(|dn| dn.to_ascii_lowercase())
                .filter(|dn| *dn != placeholder)
                .collect();
            let mut want: Vec<String> = members
                .iter()
                .filter_map(Value::as_str)
                .map(|uid| server.user_dn(uid).to_ascii_lowercase())
                .collect();
            got.sort();
            want.sort();
            if got != want {
                return Err(format!("{kind} {name}: members {got:?}, expected {want:?}"));
            }
        }
        if let Some(bind) = check.get("bind") {
            let password = bind["password"].as_str().ok_or("bind needs password")?;
            let want = bind["succeeds"].as_bool().ok_or("bind needs succeeds")?;
            if server.can_bind(&dn, password) != want {
                return Err(format!(
                    "{kind} {name}: bind with {password:?} {}, expected the opposite",
                    if want { "failed" } else { "succeeded" }
                ));
            }
        }
        Ok(())
    }

    /// `value` with every `{{name}}` in its strings (and keys) replaced by the captured value.
    fn fill(&self, value: &Value) -> Value {
        match value {
            Value::String(text) => Value::String(self.fill_text(text)),
            Value::Array(items) => Value::Array(items.iter().map(|item| self.fill(item)).collect()),
            Value::Object(object) => Value::Object(
                object
                    .iter()
                    .map(|(key, item)| (self.fill_text(key), self.fill(item)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn fill_text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (name, value) in &self.vars {
            out = out.replace(&format!("{{{{{name}}}}}"), value);
        }
        out
    }
}
