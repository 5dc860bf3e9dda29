//! Reliability under load: a directory outage, crashes of the daemon, and concurrent writes to
//! one resource. The directory is searched to check what the daemon acknowledged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

use crate::daemon::{free_addr, Daemon};
use crate::support::{patient_directory, signal_slapd, user_body, values, Attrs, TestServer};

/// Every request of these tests must end within this; a hang fails the test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A thin client of one daemon (in-process or subprocess).
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// The outcome of one request: status (None when the connection failed) and Retry-After.
#[derive(Debug, Clone)]
struct Outcome {
    status: Option<u16>,
    retry_after: Option<String>,
    body: Value,
}

impl Client {
    fn new(base: &str, token: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap(),
            base: base.to_string(),
            token: token.to_string(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Outcome {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/scim+json")
                .body(body.to_string());
        }
        match request.send().await {
            Ok(reply) => {
                let status = reply.status().as_u16();
                let retry_after = reply
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = reply.json().await.unwrap_or(Value::Null);
                Outcome {
                    status: Some(status),
                    retry_after,
                    body,
                }
            }
            Err(err) => {
                assert!(!err.is_timeout(), "a request hung: {err}");
                Outcome {
                    status: None,
                    retry_after: None,
                    body: Value::Null,
                }
            }
        }
    }
}

/// One write of the load.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    /// `POST /Users` with this userName.
    Create(String),
    /// `PATCH` title of this user id to this value.
    Title(String, String),
    /// `PATCH` active of this user id.
    Active(String, bool),
    /// `PATCH` the shared group: add this user id.
    Member(String),
}

/// A change with what the daemon answered and when it was sent and answered.
#[derive(Debug, Clone)]
struct Record {
    change: Change,
    outcome: Outcome,
    sent: Instant,
    answered: Instant,
}

/// Progress of the load, for the test to wait on instead of sleeping.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    acknowledged: usize,
    answered: usize,
}

/// The load: `n_workers` tasks, each writing its own users, its own base user's title and
/// lock, and adding its users to one shared group, until `stop` is set.
struct Load {
    records: Arc<Mutex<Vec<Record>>>,
    progress: tokio::sync::watch::Receiver<Progress>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    workers: tokio::task::JoinSet<()>,
}

impl Load {
    fn start(client: &Client, round: usize, base_users: &[String], group_id: &str) -> Load {
        let records = Arc::new(Mutex::new(Vec::new()));
        let (progress_send, progress) = tokio::sync::watch::channel(Progress::default());
        let progress_send = Arc::new(progress_send);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = tokio::task::JoinSet::new();
        for (worker, base_user) in base_users.iter().enumerate() {
            let client = client.clone();
            let records = records.clone();
            let progress_send = progress_send.clone();
            let stop = stop.clone();
            let base_user = base_user.clone();
            let group_id = group_id.to_string();
            workers.spawn(async move {
                let mut created: Vec<String> = Vec::new();
                let mut n_op = 0usize;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    n_op += 1;
                    let (change, method, path, body) = match n_op % 4 {
                        0 => {
                            let name = format!("r{round}-w{worker}-u{n_op}");
                            let body = user_body(&name, "Load", "User");
                            (Change::Create(name), Method::POST, "/Users".to_string(), body)
                        }
                        1 => {
                            let title = format!("r{round}-w{worker}-t{n_op}");
                            let body = json!({"Operations": [{"op": "replace", "path": "title", "value": title}]});
                            (
                                Change::Title(base_user.clone(), title),
                                Method::PATCH,
                                format!("/Users/{base_user}"),
                                body,
                            )
                        }
                        2 => {
                            let active = n_op % 8 != 2;
                            let body = json!({"Operations": [{"op": "replace", "path": "active", "value": active}]});
                            (
                                Change::Active(base_user.clone(), active),
                                Method::PATCH,
                                format!("/Users/{base_user}"),
                                body,
                            )
                        }
                        _ => match created.pop() {
                            Some(member) => {
                                let body = json!({"Operations": [{"op": "add", "path": "members", "value": [{"value": member}]}]});
                                (
                                    Change::Member(member),
                                    Method::PATCH,
                                    format!("/Groups/{group_id}"),
                                    body,
                                )
                            }
                            None => continue,
                        },
                    };
                    let sent = Instant::now();
                    let outcome = client.call(method, &path, Some(body)).await;
                    let answered = Instant::now();
                    let acknowledged = outcome.status.is_some_and(|s| (200..300).contains(&s));
                    if acknowledged {
                        if let Change::Create(_) = &change {
                            if let Some(id) = outcome.body["id"].as_str() {
                                created.push(id.to_string());
                            }
                        }
                    }
                    let failed_connection = outcome.status.is_none();
                    records.lock().unwrap().push(Record {
                        change,
                        outcome,
                        sent,
                        answered,
                    });
                    progress_send.send_modify(|progress| {
                        progress.answered += 1;
                        progress.acknowledged += usize::from(acknowledged);
                    });
                    if failed_connection {
                        // The daemon is gone (killed); this worker is done.
                        break;
                    }
                }
            });
        }
        Load {
            records,
            progress,
            stop,
            workers,
        }
    }

    /// Waits until `condition` holds for the progress (bounded).
    async fn wait_for(&mut self, what: &str, condition: impl Fn(&Progress) -> bool) {
        tokio::time::timeout(Duration::from_secs(60), self.progress.wait_for(condition))
            .await
            .unwrap_or_else(|_| panic!("load did not reach: {what}"))
            .unwrap();
    }

    fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    async fn finish(mut self) -> Vec<Record> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        while let Some(joined) = self.workers.join_next().await {
            joined.unwrap();
        }
        let records = self.records.lock().unwrap().clone();
        records
    }
}

/// Users and a group for the load: one base user per worker, and the shared group.
async fn prepare(client: &Client, n_workers: usize) -> (Vec<String>, String) {
    let mut base_users = Vec::new();
    for worker in 0..n_workers {
        let created = client
            .call(
                Method::POST,
                "/Users",
                Some(user_body(&format!("base{worker}"), "Base", "User")),
            )
            .await;
        assert_eq!(created.status, Some(201), "{}", created.body);
        base_users.push(created.body["id"].as_str().unwrap().to_string());
    }
    let group = client
        .call(
            Method::POST,
            "/Groups",
            Some(json!({"displayName": "load"})),
        )
        .await;
    assert_eq!(group.status, Some(201));
    (base_users, group.body["id"].as_str().unwrap().to_string())
}

/// Every cached user and group as the daemon serves it.
async fn cached(client: &Client) -> (Vec<Value>, Vec<Value>) {
    let users = client.call(Method::GET, "/Users?count=1000", None).await;
    assert_eq!(users.status, Some(200));
    let groups = client.call(Method::GET, "/Groups?count=1000", None).await;
    assert_eq!(groups.status, Some(200));
    let list = |body: &Value| body["Resources"].as_array().cloned().unwrap_or_default();
    (list(&users.body), list(&groups.body))
}

fn first<'a>(attrs: &'a Attrs, attr: &str) -> Option<&'a str> {
    values(attrs, attr).first().copied()
}

/// The cache and the directory agree: every cached user has its entry with the mapped
/// attributes and lock state, every cached group its members, and the directory holds no user
/// or group the cache does not know.
async fn assert_agreement(server: &TestServer, client: &Client) -> (Vec<Value>, Vec<Value>) {
    let (users, groups) = cached(client).await;
    let problems = disagreements(server, &users, &groups);
    assert!(
        problems.is_empty(),
        "cache and directory differ:\n{}",
        problems.join("\n")
    );
    (users, groups)
}

/// As `assert_agreement`, polling (the daemon repairs after failed writes) for up to `within`.
async fn wait_for_agreement(
    server: &TestServer,
    client: &Client,
    within: Duration,
) -> (Vec<Value>, Vec<Value>) {
    let deadline = Instant::now() + within;
    loop {
        let (users, groups) = cached(client).await;
        let problems = disagreements(server, &users, &groups);
        if problems.is_empty() {
            return (users, groups);
        }
        assert!(
            Instant::now() < deadline,
            "cache and directory still differ after {within:?}:\n{}",
            problems.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where the directory differs from the cached `users` and `groups`.
fn disagreements(server: &TestServer, users: &[Value], groups: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |same: bool, what: String| {
        if !same {
            problems.push(what);
        }
    };
    let people = server.search(&server.slapd.people_dn(), "(objectClass=inetOrgPerson)");
    let entries: HashMap<String, Attrs> = people
        .into_iter()
        .map(|(dn, attrs)| (dn.to_ascii_lowercase(), attrs))
        .collect();
    check(
        entries.len() == users.len(),
        format!(
            "{} directory users vs {} cached users",
            entries.len(),
            users.len()
        ),
    );
    let mut dn_of_id = HashMap::new();
    for user in users {
        let user_name = user["userName"].as_str().unwrap();
        let dn = server.user_dn(user_name);
        dn_of_id.insert(user["id"].as_str().unwrap().to_string(), dn.clone());
        let Some(entry) = entries.get(&dn.to_ascii_lowercase()) else {
            check(false, format!("cached user {user_name} has no entry"));
            continue;
        };
        check(
            first(entry, "uid") == Some(user_name),
            format!("{user_name} uid"),
        );
        for (attr, cached) in [
            ("title", user["title"].as_str()),
            ("givenName", user["name"]["givenName"].as_str()),
            ("sn", user["name"]["familyName"].as_str()),
            ("mail", user["emails"][0]["value"].as_str()),
        ] {
            check(
                first(entry, attr) == cached,
                format!(
                    "{user_name} {attr}: directory {:?}, cache {cached:?}",
                    first(entry, attr)
                ),
            );
        }
        let locked = first(entry, "pwdAccountLockedTime").is_some();
        check(
            locked == (user["active"] == false),
            format!("{user_name} locked {locked} vs active {}", user["active"]),
        );
    }
    let group_entries = server.search(&server.slapd.groups_dn(), "(objectClass=groupOfNames)");
    check(
        group_entries.len() == groups.len(),
        format!(
            "{} directory groups vs {} cached groups",
            group_entries.len(),
            groups.len()
        ),
    );
    let placeholder = server.slapd.placeholder_dn().to_ascii_lowercase();
    for group in groups {
        let name = group["displayName"].as_str().unwrap();
        let dn = server.group_dn(name);
        let Some((_, entry)) = group_entries
            .iter()
            .find(|(entry_dn, _)| entry_dn.eq_ignore_ascii_case(&dn))
        else {
            check(false, format!("cached group {name} has no entry"));
            continue;
        };
        let mut cached_members = BTreeSet::new();
        for member in group["members"].as_array().cloned().unwrap_or_default() {
            let id = member["value"].as_str().unwrap();
            match dn_of_id.get(id) {
                Some(dn) => {
                    cached_members.insert(dn.to_ascii_lowercase());
                }
                None => check(false, format!("member {id} of {name} is no cached user")),
            }
        }
        let directory_members: BTreeSet<String> = values(entry, "member")
            .into_iter()
            .map(str::to_ascii_lowercase)
            .filter(|member| *member != placeholder)
            .collect();
        check(
            cached_members == directory_members,
            format!(
                "members of {name}: only in the cache {:?}, only in the directory {:?}",
                cached_members
                    .difference(&directory_members)
                    .collect::<Vec<_>>(),
                directory_members
                    .difference(&cached_members)
                    .collect::<Vec<_>>()
            ),
        );
    }
    problems
}

/// Changes acknowledged by the daemon are all in the cache (which agrees with the directory).
/// A title or lock state may be a later, unacknowledged write's: one the daemon may have
/// finished (a crash, an outage mid-write), listed in `unsure`.
fn assert_acknowledged_present(
    records: &[Record],
    users: &[Value],
    groups: &[Value],
    unsure: &dyn Fn(&Record) -> bool,
) {
    let by_id: HashMap<&str, &Value> = users
        .iter()
        .map(|user| (user["id"].as_str().unwrap(), user))
        .collect();
    let names: BTreeSet<&str> = users
        .iter()
        .map(|user| user["userName"].as_str().unwrap())
        .collect();
    let members: BTreeSet<String> = groups
        .iter()
        .flat_map(|group| group["members"].as_array().cloned().unwrap_or_default())
        .filter_map(|member| member["value"].as_str().map(str::to_string))
        .collect();
    // Per user, the titles it may have: the last acknowledged one, and any sent after it that
    // may have landed.
    let mut titles: BTreeMap<&str, (Option<&str>, Vec<&str>)> = BTreeMap::new();
    let mut actives: BTreeMap<&str, (Option<bool>, Vec<bool>)> = BTreeMap::new();
    for record in records {
        let acknowledged = record
            .outcome
            .status
            .is_some_and(|s| (200..300).contains(&s));
        match &record.change {
            Change::Create(name) if acknowledged => {
                assert!(
                    names.contains(name.as_str()),
                    "acknowledged create {name} lost"
                )
            }
            Change::Member(id) if acknowledged => {
                assert!(members.contains(id), "acknowledged member {id} lost")
            }
            Change::Title(id, title) => {
                let entry = titles.entry(id).or_default();
                if acknowledged {
                    *entry = (Some(title), Vec::new());
                } else if unsure(record) {
                    entry.1.push(title);
                }
            }
            Change::Active(id, active) => {
                let entry = actives.entry(id).or_default();
                if acknowledged {
                    *entry = (Some(*active), Vec::new());
                } else if unsure(record) {
                    entry.1.push(*active);
                }
            }
            _ => {}
        }
    }
    for (id, (last, later)) in titles {
        let Some(last) = last else { continue };
        let cached = by_id[id]["title"].as_str().unwrap_or("");
        assert!(
            cached == last || later.contains(&cached),
            "user {id}: title {cached}, acknowledged {last}, unsure {later:?}"
        );
    }
    for (id, (last, later)) in actives {
        let Some(last) = last else { continue };
        let cached = by_id[id]["active"].as_bool().unwrap_or(true);
        assert!(
            cached == last || later.contains(&cached),
            "user {id}: active {cached}, acknowledged {last}, unsure {later:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_outage_under_load_answers_503_and_loses_nothing_acknowledged() {
    // Answered 503 at once during the outage, the load's retries can pass the request rate
    // limit, whose 429 this test is not about.
    let mut server = TestServer::start_with(|text| {
        *text = text.replace("[server]\n", "[server]\nrate_limit_per_second = 0\n");
    })
    .await;
    let client = Client::new(&server.base, &server.token);
    let readyz = format!("{}/readyz", server.root);
    let (base_users, group_id) = prepare(&client, 6).await;
    let mut load = Load::start(&client, 0, &base_users, &group_id);
    load.wait_for("30 acknowledged writes", |p| p.acknowledged >= 30)
        .await;

    tokio::task::block_in_place(|| server.slapd.stop()).unwrap();
    let stopped = Instant::now();
    let not_ready = client.http.get(&readyz).send().await.unwrap();
    assert_eq!(not_ready.status(), 503, "/readyz follows the outage");
    let answered_at_stop = load.progress().answered;
    load.wait_for("40 answers during the outage", |p| {
        p.answered >= answered_at_stop + 40
    })
    .await;
    let restarting = Instant::now();
    tokio::task::block_in_place(|| server.slapd.restart()).unwrap();
    // The pool reconnects by itself: poll the daemon (an external process's state) until ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client.http.get(&readyz).send().await.unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready 30 s after the directory came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acknowledged_at_recovery = load.progress().acknowledged;
    load.wait_for("30 acknowledged writes after recovery", |p| {
        p.acknowledged >= acknowledged_at_recovery + 30
    })
    .await;
    let records = load.finish().await;

    // Every answer is a success, or a 503 with Retry-After.
    let mut n_rejected = 0;
    for record in &records {
        match record.outcome.status {
            Some(status) if (200..300).contains(&status) => {}
            Some(503) => {
                n_rejected += 1;
                assert!(
                    record.outcome.retry_after.is_some(),
                    "503 without Retry-After"
                );
                assert_eq!(
                    record.outcome.body["status"], "503",
                    "{}",
                    record.outcome.body
                );
            }
            other => panic!(
                "{:?} answered {other:?}: {}",
                record.change, record.outcome.body
            ),
        }
    }
    assert!(n_rejected >= 40, "{n_rejected} rejected");
    // A 503 commits nothing, so the cache holds exactly the acknowledged writes. A write in
    // flight when the directory stopped may have reached it all the same; the daemon puts such
    // entries back to the cached state once the directory answers, so after that window the
    // directory agrees with the cache and holds no rejected change.
    let repairs_from = Instant::now();
    let (users, groups) = wait_for_agreement(&server, &client, Duration::from_secs(20)).await;
    let repair_window = repairs_from.elapsed();
    assert_acknowledged_present(&records, &users, &groups, &|_| false);
    let directory_names: BTreeSet<String> = server
        .search(&server.slapd.people_dn(), "(objectClass=inetOrgPerson)")
        .iter()
        .map(|(_, attrs)| first(attrs, "uid").unwrap().to_string())
        .collect();
    let group_entry = server.entry(&server.group_dn("load")).unwrap();
    let directory_members: BTreeSet<String> = values(&group_entry, "member")
        .into_iter()
        .map(str::to_ascii_lowercase)
        .collect();
    for record in &records {
        if record.outcome.status != Some(503) {
            continue;
        }
        let landed = match &record.change {
            Change::Create(name) => directory_names.contains(name),
            Change::Member(id) => {
                let user = users.iter().find(|u| u["id"] == id.as_str()).unwrap();
                let dn = server.user_dn(user["userName"].as_str().unwrap());
                directory_members.contains(&dn.to_ascii_lowercase())
            }
            // Titles and lock states: the cache holds the last acknowledged one (above), and
            // the directory agrees with the cache.
            _ => false,
        };
        assert!(
            !landed,
            "{:?} was answered 503, yet is in the directory",
            record.change
        );
    }
    // Those sent after the stop and answered before the restart cannot have reached it.
    let n_in_flight = records
        .iter()
        .filter(|r| r.outcome.status == Some(503))
        .filter(|r| !(r.sent > stopped && r.answered < restarting))
        .count();
    eprintln!(
        "outage: {} requests, {n_rejected} answered 503 ({n_in_flight} in flight at the stop or restart); directory in step {repair_window:?} after the load",
        records.len()
    );

    // The IdP retries what was refused; afterwards the set is complete and both sides agree.
    for record in &records {
        if record.outcome.status != Some(503) {
            continue;
        }
        let retried = match &record.change {
            Change::Create(name) => {
                client
                    .call(Method::POST, "/Users", Some(user_body(name, "Load", "User")))
                    .await
            }
            Change::Member(id) => {
                client
                    .call(
                        Method::PATCH,
                        &format!("/Groups/{group_id}"),
                        Some(json!({"Operations": [{"op": "add", "path": "members", "value": [{"value": id}]}]})),
                    )
                    .await
            }
            // A retry of an old title or lock state would undo a later acknowledged one; an
            // IdP retries only its latest, which the next write supersedes anyway.
            _ => continue,
        };
        assert!(
            matches!(retried.status, Some(200..=299)),
            "retry of {:?}: {:?} {}",
            record.change,
            retried.status,
            retried.body
        );
    }
    let (users, groups) = assert_agreement(&server, &client).await;
    for record in &records {
        match &record.change {
            Change::Create(name) => assert!(
                users.iter().any(|u| u["userName"] == name.as_str()),
                "{name} missing after retries"
            ),
            Change::Member(id) => assert!(
                groups[0]["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["value"] == id.as_str()),
                "member {id} missing after retries"
            ),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_points_under_load_leaves_cache_and_directory_in_agreement() {
    let mut server = TestServer::start().await;
    let setup = Client::new(&server.base, &server.token);
    let (base_users, group_id) = prepare(&setup, 4).await;
    server.stop_daemon().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20_240_531);
    let mut all_records: Vec<Record> = Vec::new();
    let mut n_unacknowledged = 0;
    for round in 0..5 {
        let mut daemon = Daemon::spawn(
            &server.config_path,
            free_addr(),
            &[],
            std::process::Stdio::null(),
        );
        daemon.wait_ready().await;
        let client = Client::new(&daemon.base, &server.token);
        // After each restart: the cache and the directory agree, and nothing acknowledged so
        // far is missing (a request cut off by the kill may or may not have landed).
        let (users, groups) = assert_agreement(&server, &client).await;
        assert_acknowledged_present(&all_records, &users, &groups, &|record| {
            record.outcome.status.is_none()
        });
        let mut load = Load::start(&client, round, &base_users, &group_id);
        let kill_after: usize = rng.gen_range(5..60);
        load.wait_for("writes before the kill", |p| p.answered >= kill_after)
            .await;
        // A random point within the next writes, not a synchronisation.
        tokio::time::sleep(Duration::from_micros(rng.gen_range(0..20_000))).await;
        daemon.kill();
        let records = load.finish().await;
        n_unacknowledged += records
            .iter()
            .filter(|r| r.outcome.status.is_none())
            .count();
        for record in &records {
            assert!(
                record
                    .outcome
                    .status
                    .is_none_or(|s| (200..300).contains(&s)),
                "{:?}: {:?} {}",
                record.change,
                record.outcome.status,
                record.outcome.body
            );
        }
        all_records.extend(records);
    }
    let mut daemon = Daemon::spawn(
        &server.config_path,
        free_addr(),
        &[],
        std::process::Stdio::null(),
    );
    daemon.wait_ready().await;
    let client = Client::new(&daemon.base, &server.token);
    let (users, groups) = assert_agreement(&server, &client).await;
    assert_acknowledged_present(&all_records, &users, &groups, &|record| {
        record.outcome.status.is_none()
    });
    eprintln!(
        "crash: {} writes over 5 kills, {n_unacknowledged} cut off; {} users cached",
        all_records.len(),
        users.len()
    );
    daemon.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_patches_on_one_group_and_one_user_lose_nothing() {
    let server = Arc::new(TestServer::start().await);
    let client = Client::new(&server.base, &server.token);
    let mut member_ids = Vec::new();
    for n in 0..50 {
        let created = client
            .call(
                Method::POST,
                "/Users",
                Some(user_body(&format!("member{n}"), "Mem", "Ber")),
            )
            .await;
        assert_eq!(created.status, Some(201));
        member_ids.push(created.body["id"].as_str().unwrap().to_string());
    }
    let group = client
        .call(
            Method::POST,
            "/Groups",
            Some(json!({"displayName": "crowd"})),
        )
        .await;
    let group_id = group.body["id"].as_str().unwrap().to_string();
    let busy = client
        .call(Method::POST, "/Users", Some(user_body("busy", "Bu", "Sy")))
        .await;
    let busy_id = busy.body["id"].as_str().unwrap().to_string();

    let mut tasks = tokio::task::JoinSet::new();
    for (n, member_id) in member_ids.iter().enumerate() {
        let client1 = client.clone();
        let (group_id, busy_id, member_id) = (group_id.clone(), busy_id.clone(), member_id.clone());
        tasks.spawn(async move {
            let member = client1
                .call(
                    Method::PATCH,
                    &format!("/Groups/{group_id}"),
                    Some(json!({"Operations": [{"op": "add", "path": "members", "value": [{"value": member_id}]}]})),
                )
                .await;
            (member, n, "member")
        });
        let client2 = client.clone();
        let busy2 = busy_id.clone();
        tasks.spawn(async move {
            let email = client2
                .call(
                    Method::PATCH,
                    &format!("/Users/{busy2}"),
                    Some(json!({"Operations": [{"op": "add", "path": "emails", "value": [{"value": format!("alias{n}@example.com"), "type": "other"}]}]})),
                )
                .await;
            (email, n, "email")
        });
        let client3 = client.clone();
        tasks.spawn(async move {
            let title = client3
                .call(
                    Method::PATCH,
                    &format!("/Users/{busy_id}"),
                    Some(json!({"Operations": [{"op": "replace", "path": "title", "value": format!("title{n}")}]})),
                )
                .await;
            (title, n, "title")
        });
    }
    let all_done = async {
        while let Some(joined) = tasks.join_next().await {
            let (outcome, n, what) = joined.unwrap();
            assert!(
                matches!(outcome.status, Some(200..=299)),
                "{what} {n}: {:?} {}",
                outcome.status,
                outcome.body
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all_done)
        .await
        .expect("150 concurrent PATCHes finish (no deadlock)");

    // The group: the union of the 50 additions, in the cache and in the directory.
    let group = client
        .call(Method::GET, &format!("/Groups/{group_id}"), None)
        .await;
    let cached: BTreeSet<String> = group.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(cached, member_ids.iter().cloned().collect());
    let entry = server.entry(&server.group_dn("crowd")).unwrap();
    let directory: BTreeSet<String> = values(&entry, "member")
        .into_iter()
        .map(str::to_ascii_lowercase)
        .collect();
    let expected: BTreeSet<String> = (0..50)
        .map(|n| server.user_dn(&format!("member{n}")).to_ascii_lowercase())
        .collect();
    assert_eq!(directory, expected, "no placeholder, every member");

    // The user: every email added (a union), and the title of one of the requests, which
    // the directory holds too.
    let user = client
        .call(Method::GET, &format!("/Users/{busy_id}"), None)
        .await;
    let emails: BTreeSet<String> = user.body["emails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["value"].as_str().unwrap().to_string())
        .collect();
    for n in 0..50 {
        assert!(
            emails.contains(&format!("alias{n}@example.com")),
            "alias{n}"
        );
    }
    assert!(emails.contains("busy@example.com"));
    assert_eq!(emails.len(), 51);
    let title = user.body["title"].as_str().unwrap();
    assert!((0..50).any(|n| title == format!("title{n}")), "{title}");
    let entry = server.entry(&server.user_dn("busy")).unwrap();
    assert_eq!(values(&entry, "title"), [title]);
    assert_eq!(values(&entry, "mail"), ["busy@example.com"]);
    // Fifty emails and fifty titles: one version per write.
    let version = user.body["meta"]["version"].as_str().unwrap();
    assert_eq!(version, "W/\"101\"", "every write made its own version");
}

/// Polls `condition` (the directory, an external process) until it holds, for at most 20 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "not within 20 s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Log lines of the daemon that contain every one of `parts`.
fn log_lines(log: &std::path::Path, parts: &[&str]) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| parts.iter().all(|part| line.contains(part)))
        .count()
}

/// Member DNs (lowercased, placeholder included) of the group entry `cn`.
fn directory_members(server: &TestServer, cn: &str) -> BTreeSet<String> {
    let entry = server.entry(&server.group_dn(cn)).unwrap();
    values(&entry, "member")
        .into_iter()
        .map(str::to_ascii_lowercase)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_applied_but_answered_503_are_undone_in_the_directory() {
    let mut server =
        TestServer::start_with(|text| text.push_str("\n[reconcile]\nat_startup = false\n")).await;
    let setup = Client::new(&server.base, &server.token);
    let create = |name: &str, password: Option<&str>| {
        let mut body = user_body(name, "Before", "State");
        body["title"] = json!("before");
        if let Some(password) = password {
            body["password"] = json!(password);
        }
        let setup = setup.clone();
        async move {
            let created = setup.call(Method::POST, "/Users", Some(body)).await;
            assert_eq!(created.status, Some(201), "{}", created.body);
            created.body["id"].as_str().unwrap().to_string()
        }
    };
    let mailer = create("mailer", None).await;
    let mover = create("mover", None).await;
    let locker = create("locker", Some("Locker-Pass-1")).await;
    let leaver = create("leaver", Some("Leaver-Pass-1")).await;
    let m1 = create("m1", None).await;
    let m2 = create("m2", None).await;
    let m3 = create("m3", None).await;
    let mut group_ids = HashMap::new();
    for (name, members) in [
        ("movers", vec![&mover, &m1]),
        ("solo", vec![&leaver]),
        ("crowd", vec![&m1, &m2]),
    ] {
        let members: Vec<Value> = members.iter().map(|id| json!({"value": id})).collect();
        let group = setup
            .call(
                Method::POST,
                "/Groups",
                Some(json!({"displayName": name, "members": members})),
            )
            .await;
        assert_eq!(group.status, Some(201), "{}", group.body);
        group_ids.insert(name, group.body["id"].as_str().unwrap().to_string());
    }
    server.stop_daemon().await;
    let dn = |name: &str| server.user_dn(name).to_ascii_lowercase();
    let before_user = |name: &str| server.entry(&server.user_dn(name)).unwrap();
    let mover_entry = before_user("mover");

    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("stderr.log");
    let mut daemon = Daemon::spawn(
        &server.config_path,
        free_addr(),
        &[("SCIM2LDAP_TEST_LOSE_REPLY", "1"), ("RUST_LOG", "info")],
        std::process::Stdio::from(std::fs::File::create(&log_path).unwrap()),
    );
    daemon.wait_ready().await;
    let client = Client::new(&daemon.base, &server.token);
    let lost = |outcome: Outcome| {
        assert_eq!(outcome.status, Some(503), "{}", outcome.body);
        assert!(outcome.retry_after.is_some(), "503 without Retry-After");
    };
    const PUT_BACK: &str = "entry put back to the cached state after a failed write";
    let started = Instant::now();

    // A create: the entry it added goes again.
    lost(
        client
            .call(
                Method::POST,
                "/Users",
                Some(user_body("ghost", "Gh", "Ost")),
            )
            .await,
    );
    eventually("the failed create's entry removed", || {
        server.entry(&server.user_dn("ghost")).is_none()
            && log_lines(&log_path, &["entry of a failed create removed"]) == 1
    })
    .await;
    let listed = client
        .call(
            Method::GET,
            "/Users?filter=userName%20eq%20%22ghost%22",
            None,
        )
        .await;
    assert_eq!(listed.body["totalResults"], 0);

    // A create that took over an existing entry (users.on_existing = "adopt"): never removed.
    let foreign_dn = server.user_dn("foreign");
    server
        .slapd
        .ldapadd(&format!(
            "dn: {foreign_dn}\nobjectClass: inetOrgPerson\nuid: foreign\ncn: F\nsn: F\n"
        ))
        .unwrap();
    lost(
        client
            .call(
                Method::POST,
                "/Users",
                Some(user_body("foreign", "Fo", "Reign")),
            )
            .await,
    );
    eventually("the adopted entry left alone", || {
        log_lines(&log_path, &["took over an existing entry"]) == 1
    })
    .await;
    assert!(server.entry(&foreign_dn).is_some());

    // A PATCH of the mail.
    lost(client
        .call(
            Method::PATCH,
            &format!("/Users/{mailer}"),
            Some(json!({"Operations": [{"op": "replace", "path": "emails", "value": [{"value": "changed@example.com", "type": "work", "primary": true}]}]})),
        )
        .await);
    eventually("mailer's mail back", || {
        let entry = before_user("mailer");
        values(&entry, "mail") == ["mailer@example.com"]
            && log_lines(&log_path, &[PUT_BACK, &mailer]) == 1
    })
    .await;

    // A PUT that renames (modrdn, modify, and the member value in a group).
    let mut renamed = user_body("moved", "After", "Change");
    renamed["title"] = json!("after");
    lost(
        client
            .call(Method::PUT, &format!("/Users/{mover}"), Some(renamed))
            .await,
    );
    eventually("mover renamed back", || {
        server.entry(&server.user_dn("moved")).is_none()
            && log_lines(&log_path, &[PUT_BACK, &mover]) == 1
            && directory_members(&server, "movers") == BTreeSet::from([dn("mover"), dn("m1")])
    })
    .await;
    let entry = before_user("mover");
    for attr in [
        "uid",
        "cn",
        "givenName",
        "sn",
        "mail",
        "title",
        "scimId",
        "entryUUID",
    ] {
        assert_eq!(values(&entry, attr), values(&mover_entry, attr), "{attr}");
    }

    // A deactivation: the lock goes again and the password works.
    lost(
        client
            .call(
                Method::PATCH,
                &format!("/Users/{locker}"),
                Some(json!({"Operations": [{"op": "replace", "path": "active", "value": false}]})),
            )
            .await,
    );
    eventually("locker unlocked", || {
        let entry = before_user("locker");
        values(&entry, "pwdAccountLockedTime").is_empty()
            && log_lines(&log_path, &[PUT_BACK, &locker]) == 1
    })
    .await;
    assert!(server.can_bind(&server.user_dn("locker"), "Locker-Pass-1"));

    // A delete (first out of its group, then the entry): re-created, bindable, in its group.
    lost(
        client
            .call(Method::DELETE, &format!("/Users/{leaver}"), None)
            .await,
    );
    eventually("leaver re-created in its group", || {
        server.entry(&server.user_dn("leaver")).is_some()
            && log_lines(&log_path, &[PUT_BACK, &leaver]) == 1
            && directory_members(&server, "solo") == BTreeSet::from([dn("leaver")])
    })
    .await;
    let entry = before_user("leaver");
    assert_eq!(values(&entry, "scimId"), [leaver.as_str()]);
    assert_eq!(values(&entry, "title"), ["before"]);
    assert!(server.can_bind(&server.user_dn("leaver"), "Leaver-Pass-1"));

    // A member added, then a member removed.
    let crowd = &group_ids["crowd"];
    let crowd_before = BTreeSet::from([dn("m1"), dn("m2")]);
    lost(client
        .call(
            Method::PATCH,
            &format!("/Groups/{crowd}"),
            Some(json!({"Operations": [{"op": "add", "path": "members", "value": [{"value": m3}]}]})),
        )
        .await);
    eventually("the added member gone", || {
        directory_members(&server, "crowd") == crowd_before
            && log_lines(&log_path, &[PUT_BACK, crowd]) == 1
    })
    .await;
    lost(client
        .call(
            Method::PATCH,
            &format!("/Groups/{crowd}"),
            Some(json!({"Operations": [{"op": "remove", "path": "members", "value": [{"value": m1}]}]})),
        )
        .await);
    eventually("the removed member back", || {
        directory_members(&server, "crowd") == crowd_before
            && log_lines(&log_path, &[PUT_BACK, crowd]) == 2
    })
    .await;
    eprintln!("lost replies: six writes undone in {:?}", started.elapsed());
    assert_eq!(log_lines(&log_path, &["could not check an entry"]), 0);

    // The IdP sees the state before each write, and so does a reconciliation run.
    let user = client
        .call(Method::GET, &format!("/Users/{locker}"), None)
        .await;
    assert_eq!(user.body["active"], true);
    let user = client
        .call(Method::GET, &format!("/Users/{mover}"), None)
        .await;
    assert_eq!(user.body["userName"], "mover");
    daemon.kill();
    // Only the adopted entry differs: an orphan now, as reconciliation reports it.
    let (_, report) = crate::reconcile::reconcile_cli(&server, &["--dry-run"], &[]);
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{report}");
    assert_eq!(findings[0]["kind"], "orphan", "{report}");
    assert!(
        findings[0]["dn"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(&foreign_dn),
        "{report}"
    );

    // Without the hook, the IdP's retries all succeed.
    server.launch().await;
    let client = Client::new(&server.base, &server.token);
    let created = client
        .call(
            Method::POST,
            "/Users",
            Some(user_body("ghost", "Gh", "Ost")),
        )
        .await;
    assert_eq!(created.status, Some(201), "{}", created.body);
    let deleted = client
        .call(Method::DELETE, &format!("/Users/{leaver}"), None)
        .await;
    assert_eq!(deleted.status, Some(204));
    assert!(server.entry(&server.user_dn("leaver")).is_none());
    assert_eq!(
        directory_members(&server, "solo"),
        BTreeSet::from([server.slapd.placeholder_dn().to_ascii_lowercase()])
    );
}

/// Waits until `daemon` answers `/readyz` 503 (one probe result serves a second): a load
/// balancer stops sending writes, and the watchdog stops being fed, so systemd restarts it.
async fn wait_until_not_ready(client: &reqwest::Client, daemon: &Daemon) {
    let ready = format!("http://{}/readyz", daemon.listen);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = client.get(&ready).send().await.unwrap().status();
        if status == 503 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz still {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A commit that fails after its write reached the directory (a full disk, say) fails every
/// later write before it touches the directory: planned from a cache without the failed
/// write, they would build on a state the directory no longer has. The restart replays it.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_failed_cache_commit_every_write_fails_until_a_restart() {
    let mut server = TestServer::start().await;
    let id = server.create("/Users", user_body("kept", "Ke", "Pt")).await;
    server.stop_daemon().await;
    let mut daemon = Daemon::spawn(
        &server.config_path,
        free_addr(),
        &[("SCIM2LDAP_TEST_COMMIT_FAILS_ONCE", "1")],
        std::process::Stdio::null(),
    );
    daemon.wait_ready().await;
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Value| {
        client
            .request(method, format!("{}{path}", daemon.base))
            .bearer_auth(&server.token)
            .json(&body)
            .send()
    };
    let title =
        |value: &str| json!({"Operations": [{"op": "replace", "path": "title", "value": value}]});
    let failed = call(
        reqwest::Method::PATCH,
        &format!("/Users/{id}"),
        title("Applied"),
    )
    .await
    .unwrap();
    assert_eq!(failed.status(), 500);
    let kept_dn = server.user_dn("kept");
    assert_eq!(
        values(&server.entry(&kept_dn).unwrap(), "title"),
        ["Applied"]
    );
    // Later writes are refused before the directory: neither the new user nor the title.
    let later = call(
        reqwest::Method::POST,
        "/Users",
        user_body("later", "La", "Ter"),
    )
    .await
    .unwrap();
    assert_eq!(later.status(), 500);
    let overwrite = call(
        reqwest::Method::PATCH,
        &format!("/Users/{id}"),
        title("Later"),
    )
    .await
    .unwrap();
    assert_eq!(overwrite.status(), 500);
    assert!(server.entry(&server.user_dn("later")).is_none());
    assert_eq!(
        values(&server.entry(&kept_dn).unwrap(), "title"),
        ["Applied"]
    );
    wait_until_not_ready(&client, &daemon).await;
    daemon.kill();
    // The restart replays the failed commit's intent: cache and directory agree.
    server.launch().await;
    server.wait_for_intents(0).await;
    let user = server.get(&format!("/Users/{id}")).await.expect(200);
    assert_eq!(user["title"], "Applied");
    let (code, report) = crate::reconcile::reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_failed_cache_fsync_every_write_fails_until_a_restart() {
    let mut server = TestServer::start().await;
    server.stop_daemon().await;
    // The first fsync of the cache fails and later ones would succeed, as after an EIO whose
    // pages the kernel dropped: a later success would not mean the earlier data is on disk.
    let daemon = Daemon::spawn(
        &server.config_path,
        free_addr(),
        &[("SCIM2LDAP_TEST_FSYNC_FAILS_ONCE", "1")],
        std::process::Stdio::null(),
    );
    let mut daemon = daemon;
    daemon.wait_ready().await;
    let client = reqwest::Client::new();
    for name in ["first", "second"] {
        let reply = client
            .post(format!("{}/Users", daemon.base))
            .bearer_auth(&server.token)
            .json(&user_body(name, "Fs", "Ync"))
            .send()
            .await
            .unwrap();
        assert!(
            reply.status().is_server_error(),
            "{name}: {} (no write is acknowledged after a failed fsync)",
            reply.status()
        );
    }
    wait_until_not_ready(&client, &daemon).await;
    daemon.kill();
    // A restart replays what the cache holds: the first write, whose intent the file has,
    // lands in both; the second was refused before its intent and is in neither.
    server.launch().await;
    server.wait_for_intents(0).await;
    for (name, expected) in [("first", true), ("second", false)] {
        let found = server
            .get(&format!("/Users?filter=userName%20eq%20%22{name}%22"))
            .await
            .expect(200);
        let in_directory = server.entry(&server.user_dn(name)).is_some();
        assert_eq!(
            (found["totalResults"] == 1, in_directory),
            (expected, expected),
            "{name}: cache {found}, directory {in_directory}"
        );
    }
}

/// While start-up waits for the directory, the daemon answers: alive, not ready, and 503 with
/// `Retry-After` for SCIM requests (after the token check). Once the directory answers, it
/// serves.
#[tokio::test(flavor = "multi_thread")]
async fn during_start_up_probes_and_requests_are_answered_not_held() {
    let mut server = TestServer::start().await;
    let id = server
        .create("/Users", user_body("alice", "Alice", "A"))
        .await;
    server.stop_daemon().await;
    crate::support::signal_slapd(&server, "STOP");
    let ready = server.launch_unready().await;
    let quick = |req: reqwest::RequestBuilder| req.timeout(Duration::from_secs(2));
    let probe = |path: &str| {
        let url = format!("{}{path}", server.root);
        async move {
            let response = reqwest::Client::new()
                .get(url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .expect("answered, not held");
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    assert_eq!(probe("/healthz").await.0, 200);
    assert_eq!(probe("/readyz").await, (503, "starting".to_string()));
    let path = format!("/Users/{id}");
    let reply = server.call_with(Method::GET, &path, None, quick).await;
    assert_eq!(reply.status.as_u16(), 503, "{}", reply.body);
    assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
    assert!(
        reply.body["detail"].as_str().unwrap().contains("starting"),
        "{}",
        reply.body
    );
    let wrong_token = reqwest::Client::new()
        .get(format!("{}{path}", server.base))
        .bearer_auth("not-the-token")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    assert_eq!(
        wrong_token.status().as_u16(),
        401,
        "the token is checked first"
    );

    crate::support::signal_slapd(&server, "CONT");
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .expect("start-up finishes once the directory answers")
        .unwrap();
    assert_eq!(probe("/readyz").await.0, 200);
    assert_eq!(server.get(&path).await.expect(200)["userName"], "alice");
}

/// SIGTERM lets a write in flight finish: the daemon stops taking connections, waits for the
/// write (here held in a stopped directory) for up to `server.shutdown_timeout`, answers it,
/// and exits cleanly with the change in the directory and nothing left pending.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_write_in_flight_finish() {
    let mut server = TestServer::start_with(patient_directory).await;
    let id = server
        .create("/Users", user_body("drain", "Dr", "Ain"))
        .await;
    server.stop_daemon().await;
    let mut daemon = Daemon::ready(&server.config_path).await;
    signal_slapd(&server, "STOP");
    let patch = reqwest::Client::new()
        .patch(format!("{}/Users/{id}", daemon.base))
        .bearer_auth(&server.token)
        .json(&json!({"Operations": [{"op": "replace", "path": "title", "value": "Drained"}]}))
        .send();
    let patch = tokio::spawn(patch);
    // The write is in the daemon (its intent recorded) when the signal comes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = daemon.metrics(&server.token).await;
        if crate::support::sample(&text, "scim2ldap_intents_pending") >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the write never reached the daemon"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "exited with a write in flight"
    );
    signal_slapd(&server, "CONT");
    let reply = patch.await.unwrap().unwrap();
    assert_eq!(reply.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after the drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exited.success(), "{exited}");
    assert_eq!(
        values(&server.entry(&server.user_dn("drain")).unwrap(), "title"),
        ["Drained"]
    );
    server.launch().await;
    server.wait_for_intents(0).await;
    let user = server.get(&format!("/Users/{id}")).await.expect(200);
    assert_eq!(user["title"], "Drained");
}
