//! The benchmark: scim2ldap against the directory itself, in one run on one machine.
//!
//! Starts a throwaway `slapd` with fsync on (as in production) and the release daemon as its own
//! process, then measures at concurrency 1, 8 and 32: raw LDAP through ldap3 (add, modify, lock,
//! delete) and the same work through SCIM (POST, PUT, PATCH `active: false`, DELETE), printing
//! ops/s, p50/p99 latency, the SCIM/raw ratio and the daemon's own CPU per operation. After the
//! write phases it times the HTTP exchange alone, and the directory's modify from one ldap3
//! client that pauses before each (no pause up to 1 ms, and as long as a SCIM update spends
//! outside the directory at c=1): the directory's own latency grows with its idle time. Then it
//! onboards BENCH_USERS users (default 100,000), measures cached reads (and a few filters that
//! no index answers, which scan the cache), builds a BENCH_GROUP
//! member group (default 50,000) and compares one member change there with a 10-member group,
//! and reports the daemon's memory.
//!
//! After onboarding, a `reconcile --dry-run` must find every user in the directory undrifted.
//! `cargo test --bench throughput` (in `scripts/test`) runs it all once at tiny sizes as a check.
//!
//! Run with `scripts/bench` (or `cargo bench --bench throughput`). Environment: `BENCH_N` (writes
//! per phase, default 2000), `BENCH_USERS`, `BENCH_GROUP`, `BENCH_READS` (default 20000),
//! `BENCH_SCANS` (requests no index answers: filters on the email, deep pages; default 20 each),
//! `BENCH_WORKERS` (the daemon's `server.worker_threads`), `BENCH_ROUNDS` (default 3: each write
//! phase pair runs that many times and the round with the median ratio is reported, with the
//! spread), `BENCH_CACHE_DIR` (where the daemon's cache goes, default beside the directory's
//! files: point it at another disk to measure the usual deployment, where the two do not share
//! one device's flushes), `BENCH_SLAPD_FSYNC=0` (the directory without fsync, to tell the
//! disk's part in a figure), `BENCH_FOLLOW=1` (syncprov on the directory and
//! `reconcile.follow` on the daemon, to measure what following costs), `BENCH_LEVELS` (the
//! concurrency levels, default `1,8,32`) and
//! `BENCH_BIN` (another build of the daemon, to compare two builds on the same harness: run them
//! in turn, several times each, since single runs on a shared machine vary).

// A benchmark fails loudly; the daemon process is waited for in `Daemon`'s Drop.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::zombie_processes
)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, Mod};
use scim2ldap::demo::slapd::{Slapd, SlapdOptions};
use serde_json::{json, Value};

/// Concurrency of the crowd phase of the group benchmark.
const CROWD_LEVEL: usize = 32;

/// BENCH_FOLLOW=1: the directory runs syncprov and the daemon follows its changes
/// (`reconcile.follow`), to measure what following costs; the raw phases then pay syncprov's
/// part too.
fn follow() -> bool {
    std::env::var("BENCH_FOLLOW").is_ok_and(|value| value == "1")
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Latencies of one phase, its wall time, and the CPU the daemon, the load generator (this
/// process) and slapd spent on it.
struct Phase {
    latencies: Vec<Duration>,
    wall: Duration,
    cpu: Option<Duration>,
    client_cpu: Duration,
    slapd_cpu: Duration,
    /// Each request's time inside the daemon (its access log's `duration_us`), SCIM phases only.
    in_daemon: Vec<Duration>,
    /// Mean time per request the daemon waited on directory operations (from its metrics),
    /// SCIM phases only: the same work as a raw phase's, seen from inside the daemon.
    directory: Option<Duration>,
    /// Directory operations per request, by operation (SCIM phases), from the daemon's metrics.
    directory_ops: Vec<(String, f64)>,
    /// Cache flushes the disk under the working directory completed (when the kernel says).
    disk_flushes: Option<u64>,
    /// Times the daemon's threads were switched out (they blocked or were preempted), when
    /// measured: each costs a sleep and a wake-up, which on a virtual machine is dear.
    daemon_switches: Option<u64>,
}

/// The block device statistics file of the disk holding the benchmark's files.
static DISK_STAT: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// Flush requests the disk has completed (field 16 of /sys/block/*/stat, Linux 5.5 and later).
fn disk_flushes() -> Option<u64> {
    let path = DISK_STAT.get()?.as_ref()?;
    let stat = std::fs::read_to_string(path).ok()?;
    stat.split_whitespace().nth(15)?.parse().ok()
}

/// Finds the whole disk under `dir` for `disk_flushes`.
fn find_disk(dir: &Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    let device = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    // A partition's own counters leave flushes out; its disk is the parent directory.
    let disk = if device.join("partition").exists() {
        device.join("..")
    } else {
        device
    };
    Some(disk.join("stat")).filter(|stat| stat.exists())
}

/// The directory's process, for its CPU time per phase.
static SLAPD_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn slapd_cpu() -> Duration {
    SLAPD_PID
        .get()
        .map(|&pid| process_cpu(pid))
        .unwrap_or_default()
}

impl Phase {
    fn ops_per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
    fn mean(&self) -> Duration {
        self.latencies.iter().sum::<Duration>() / self.latencies.len().max(1) as u32
    }
    /// A phase of sequential single operations, of which only the latencies count.
    fn latencies_only(latencies: Vec<Duration>) -> Phase {
        Phase {
            latencies,
            wall: Duration::from_secs(1),
            cpu: None,
            client_cpu: Duration::ZERO,
            slapd_cpu: Duration::ZERO,
            in_daemon: Vec::new(),
            directory: None,
            directory_ops: Vec::new(),
            disk_flushes: None,
            daemon_switches: None,
        }
    }
    fn flushes_per_op(&self) -> f64 {
        self.disk_flushes.unwrap_or(0) as f64 / self.latencies.len().max(1) as f64
    }
    fn switches_per_op(&self) -> f64 {
        self.daemon_switches.unwrap_or(0) as f64 / self.latencies.len().max(1) as f64
    }
    fn cpu_per_op_us(&self) -> Option<f64> {
        self.cpu.map(|cpu| self.per_op_us(cpu))
    }
    fn per_op_us(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.latencies.len().max(1) as f64
    }
}

/// The `p` quantile of `latencies` (zero when empty).
fn percentile(latencies: &[Duration], p: f64) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `n` operations `op(i)` with `concurrency` workers; times each.
async fn run_phase<F, Fut>(n: usize, concurrency: usize, daemon_pid: Option<u32>, op: F) -> Phase
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = daemon_pid.map(process_cpu);
    let switches_before = daemon_pid.map(process_switches);
    let client_before = process_cpu(std::process::id());
    let slapd_before = slapd_cpu();
    let flushes_before = disk_flushes();
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let op = op.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                op(worker, i).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    let wall = started.elapsed();
    let cpu = match (daemon_pid, cpu_before) {
        (Some(pid), Some(before)) => Some(process_cpu(pid).saturating_sub(before)),
        _ => None,
    };
    let daemon_switches = daemon_pid
        .zip(switches_before)
        .map(|(pid, before)| process_switches(pid).saturating_sub(before));
    Phase {
        latencies,
        wall,
        cpu,
        client_cpu: process_cpu(std::process::id()).saturating_sub(client_before),
        slapd_cpu: slapd_cpu().saturating_sub(slapd_before),
        in_daemon: Vec::new(),
        directory: None,
        directory_ops: Vec::new(),
        disk_flushes: flushes_before
            .zip(disk_flushes())
            .map(|(before, after)| after.saturating_sub(before)),
        daemon_switches,
    }
}

/// `run_phase` against the daemon, with each request's time inside it read from its log.
async fn run_scim_phase<F, Fut>(n: usize, concurrency: usize, daemon: &Daemon, op: F) -> Phase
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let log_start = std::fs::metadata(&daemon.log_path).map_or(0, |m| m.len());
    let (seconds_before, ops_before) = directory_work(daemon).await;
    let mut phase = run_phase(n, concurrency, Some(daemon.child.id()), op).await;
    let (seconds_after, ops_after) = directory_work(daemon).await;
    phase.directory = Some(Duration::from_secs_f64(
        (seconds_after - seconds_before).max(0.0) / n.max(1) as f64,
    ));
    phase.directory_ops = ops_after
        .into_iter()
        .map(|(op, count)| {
            let before = ops_before.get(&op).copied().unwrap_or(0.0);
            (op, (count - before) / n.max(1) as f64)
        })
        .filter(|(_, per_request)| *per_request > 0.0)
        .collect();
    phase.in_daemon = in_daemon_since(daemon, log_start);
    assert_eq!(phase.in_daemon.len(), n, "access lines in the daemon's log");
    phase
}

/// Each request's time inside the daemon, from the access lines its log got after `log_start`.
fn in_daemon_since(daemon: &Daemon, log_start: u64) -> Vec<Duration> {
    let log = std::fs::read(&daemon.log_path).unwrap();
    let new = String::from_utf8_lossy(&log[log_start as usize..]);
    new.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "scim2ldap::http" && line["message"] == "request")
        .filter(|line| line["span"]["route"] != "/metrics")
        .filter_map(|line| line["duration_us"].as_u64())
        .map(Duration::from_micros)
        .collect()
}

/// Seconds the daemon has spent in directory operations other than binds, and how many of each
/// operation it ran (binds included), from its metrics.
async fn directory_work(daemon: &Daemon) -> (f64, std::collections::BTreeMap<String, f64>) {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", daemon.root))
        .bearer_auth(&daemon.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metric = |line: &str, name: &str| -> Option<(String, f64)> {
        let labels = line.strip_prefix(name)?.strip_prefix('{')?;
        let operation = labels.split("operation=\"").nth(1)?.split('"').next()?;
        let value = line.split_whitespace().last()?.parse::<f64>().ok()?;
        Some((operation.to_string(), value))
    };
    let mut seconds = 0.0;
    let mut counts = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some((op, value)) =
            metric(line, "scim2ldap_directory_operation_duration_seconds_sum")
        {
            if op != "bind" {
                seconds += value;
            }
        } else if let Some((op, value)) =
            metric(line, "scim2ldap_directory_operation_duration_seconds_count")
        {
            *counts.entry(op).or_insert(0.0) += value;
        }
    }
    (seconds, counts)
}

/// The daemon binary: this build's, or `BENCH_BIN` (to compare another build on this harness).
fn daemon_binary() -> std::ffi::OsString {
    std::env::var_os("BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_scim2ldap").into())
}

/// User + system CPU time of a process, from /proc.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted from the state field as 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / 100.0)
}

/// Context switches of all of a process's threads (voluntary and not), from /proc.
fn process_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|line| line.contains("ctxt_switches:"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// (VmRSS, VmHWM) of a process in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Daemon {
    child: std::process::Child,
    base: String,
    root: String,
    token: String,
    config_path: std::path::PathBuf,
    log_path: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the daemon with its files in `dir` and its cache in `cache_dir`.
async fn start_daemon(slapd: &Slapd, dir: &Path, cache_dir: &Path) -> Daemon {
    let token = scim2ldap::http::new_token();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config =
        scim2ldap::demo::config_toml(slapd, listen, &token.hash_line, &cache_dir.join("cache.db"));
    // Production-like settings: 8 connections, and a timeout long enough for a 1000-member
    // modify on a busy two-core machine.
    let config = config
        .replace("pool_size = 4", "pool_size = 8")
        .replace("timeout = \"5s\"", "timeout = \"30s\"");
    // The benchmark measures the daemon, not the rate limit.
    let mut server_extra = "rate_limit_per_second = 0\n".to_string();
    // BENCH_WORKERS sets `server.worker_threads` (default: the daemon's own default).
    if let Ok(workers) = std::env::var("BENCH_WORKERS") {
        server_extra.push_str(&format!("worker_threads = {workers}\n"));
    }
    let config = config.replace(
        "base_path = \"/scim/v2\"\n",
        &format!("base_path = \"/scim/v2\"\n{server_extra}"),
    );
    // JSON logs, as under systemd (stderr is the journal), whose format is the dearer one.
    let mut config = format!("{config}\n[log]\nformat = \"json\"\n");
    if follow() {
        config.push_str("\n[reconcile]\nfollow = true\n");
    }
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = std::process::Command::new(daemon_binary())
        .args(["serve", "--config"])
        .arg(&config_path)
        .stderr(log)
        .spawn()
        .unwrap();
    let root = format!("http://{listen}");
    let client = reqwest::Client::new();
    // Up to 30 s (the smoke run starts the debug build on a machine busy with tests).
    for _ in 0..1200 {
        if client
            .get(format!("{root}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return Daemon {
                child,
                base: format!("{root}/scim/v2"),
                root,
                token: token.plaintext,
                config_path,
                log_path,
            };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("daemon did not become ready");
}

async fn ldap_pool(slapd: &Slapd, n: usize) -> Vec<ldap3::Ldap> {
    let mut pool = Vec::new();
    for _ in 0..n {
        let (conn, mut ldap) = LdapConnAsync::new(&slapd.url()).await.unwrap();
        ldap3::drive!(conn);
        ldap.simple_bind(&slapd.admin_dn(), slapd.admin_password())
            .await
            .unwrap()
            .success()
            .unwrap();
        pool.push(ldap);
    }
    pool
}

/// Fails the benchmark unless `expected` entries under `base` match `filter`: a phase's
/// figures count only when its work is in the directory, not only answered.
async fn expect_entries(ldap: &ldap3::Ldap, base: &str, filter: &str, expected: usize, what: &str) {
    let mut ldap = ldap.clone();
    let (entries, _) = ldap
        .search(base, ldap3::Scope::Subtree, filter, vec!["1.1"])
        .await
        .unwrap()
        .success()
        .unwrap();
    assert_eq!(entries.len(), expected, "{what}: {filter} under {base}");
}

/// Adds the entry the raw phases work on: an inetOrgPerson like the ones the daemon writes.
async fn add_person(ldap: &mut ldap3::Ldap, dn: &str, name: &str, id: &str) {
    let mail = format!("{name}@example.com");
    let attrs = vec![
        (
            "objectClass",
            HashSet::from(["inetOrgPerson", "scimResource"]),
        ),
        ("uid", HashSet::from([name])),
        ("cn", HashSet::from(["Bench User"])),
        ("sn", HashSet::from([name])),
        ("givenName", HashSet::from(["Bench"])),
        ("mail", HashSet::from([mail.as_str()])),
        ("title", HashSet::from(["Engineer"])),
        ("scimId", HashSet::from([id])),
    ];
    ldap.add(dn, attrs).await.unwrap().success().unwrap();
}

/// Mean latency of a modify from one ldap3 client that sleeps `pause` before each (`2n` modifies
/// per pause), for no pause, 0.25, 0.5 and 1 ms, and `extra` (the SCIM update's time outside the
/// directory) if given.
async fn paced_modifies(
    slapd: &Slapd,
    n: usize,
    extra: Option<Duration>,
) -> Vec<(Duration, Duration)> {
    let mut ldap = ldap_pool(slapd, 1).await.remove(0);
    let people = slapd.people_dn();
    let dn = |i: usize| format!("uid=paced-{i},{people}");
    for i in 0..n {
        let id = format!("00000000-0000-4000-9000-{i:012}");
        add_person(&mut ldap, &dn(i), &format!("paced-{i}"), &id).await;
    }
    let mut pauses: Vec<Duration> = [0, 250, 500, 1000]
        .into_iter()
        .map(Duration::from_micros)
        .chain(extra)
        .collect();
    pauses.sort();
    // An uncounted first pass, so that no pause meets the directory fresh from the adds; then
    // each pause twice, in rising then falling order, so that the directory's drift over the
    // minute this takes weighs on every pause alike.
    let order: Vec<Option<usize>> = std::iter::once(None)
        .chain((0..pauses.len()).chain((0..pauses.len()).rev()).map(Some))
        .collect();
    let mut totals = vec![Duration::ZERO; pauses.len()];
    for (pass, &k) in order.iter().enumerate() {
        let pause = k.map_or(Duration::ZERO, |k| pauses[k]);
        let title = if pass % 2 == 0 {
            "Engineer II"
        } else {
            "Engineer"
        };
        for i in 0..n {
            if !pause.is_zero() {
                tokio::task::block_in_place(|| std::thread::sleep(pause));
            }
            let started = Instant::now();
            let mods = vec![Mod::Replace("title", HashSet::from([title]))];
            ldap.modify(&dn(i), mods).await.unwrap().success().unwrap();
            if let Some(k) = k {
                totals[k] += started.elapsed();
            }
        }
    }
    let results = pauses
        .into_iter()
        .zip(totals)
        .map(|(pause, total)| (pause, total / (2 * n.max(1)) as u32))
        .collect();
    for i in 0..n {
        ldap.delete(&dn(i)).await.unwrap().success().unwrap();
    }
    results
}

fn user_doc(name: &str, title: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": name,
        "name": {"givenName": "Bench", "familyName": name},
        "emails": [{"value": format!("{name}@example.com"), "type": "work", "primary": true}],
        "title": title,
    })
}

/// Sends one SCIM request; panics on a status other than `expected`. Returns the body.
async fn scim(
    client: &reqwest::Client,
    daemon: &Daemon,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
    expected: u16,
) -> Value {
    let mut request = client
        .request(method, format!("{}{}", daemon.base, path))
        .bearer_auth(&daemon.token);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/scim+json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, expected, "{path}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

struct Row {
    op: &'static str,
    concurrency: usize,
    raw: Phase,
    scim: Phase,
    /// Lowest and highest ratio over the rounds.
    spread: (f64, f64),
}

/// SCIM throughput over raw throughput.
fn ratio(raw: &Phase, scim: &Phase) -> f64 {
    scim.ops_per_sec() / raw.ops_per_sec()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line. Without it
    // (`cargo test --bench throughput`, which the test suite runs) every phase runs once at a
    // tiny size on the test build: a check that the benchmark still works end to end, whose
    // figures measure nothing. BENCH_* variables still apply.
    let smoke = !std::env::args().any(|arg| arg == "--bench");
    let size = |full: usize, tiny: usize| if smoke { tiny } else { full };
    if smoke {
        println!("smoke run (no --bench): tiny sizes on the test build; the figures are not measurements\n");
    }
    let n = env_usize("BENCH_N", size(2000, 64));
    let n_users = env_usize("BENCH_USERS", size(100_000, 300));
    let n_group = env_usize("BENCH_GROUP", size(50_000, 100)).min(n_users);
    let n_reads = env_usize("BENCH_READS", size(20_000, 200));
    let n_scans = env_usize("BENCH_SCANS", size(20, 4));
    let rounds = env_usize("BENCH_ROUNDS", size(3, 1)).max(1);
    let crowd_size = env_usize("BENCH_CROWD", size(960, 64));
    let levels: Vec<usize> = match std::env::var("BENCH_LEVELS") {
        Ok(levels) => levels
            .split(',')
            .map(|level| {
                level
                    .trim()
                    .parse()
                    .expect("BENCH_LEVELS: numbers, such as 1,8")
            })
            .collect(),
        Err(_) => vec![1, 8, 32],
    };

    // BENCH_SLAPD_FSYNC=0 runs the directory without syncing its writes: not a production
    // setting, but it tells the disk's part in a figure from the rest.
    let slapd = Slapd::start(SlapdOptions {
        fsync: std::env::var("BENCH_SLAPD_FSYNC").map_or(true, |value| value != "0"),
        syncprov: follow(),
        ..SlapdOptions::default()
    })
    .unwrap();
    if let Some(pid) = slapd.pid() {
        let _ = SLAPD_PID.set(pid);
    }
    let dir = tempfile::tempdir().unwrap();
    let _ = DISK_STAT.set(find_disk(dir.path()));
    // A fresh cache on every run, under BENCH_CACHE_DIR when set (removed at the end).
    let cache_dir = match std::env::var_os("BENCH_CACHE_DIR") {
        Some(base) => tempfile::Builder::new()
            .prefix("scim2ldap-bench-")
            .tempdir_in(base)
            .unwrap(),
        None => tempfile::tempdir_in(dir.path()).unwrap(),
    };
    let daemon = Arc::new(start_daemon(&slapd, dir.path(), cache_dir.path()).await);
    let pid = daemon.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle_rss, _) = memory_mib(pid);
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model()
    );
    // A virtual machine's idle vCPUs may poll before they halt (cpuidle-haltpoll); wake-ups,
    // which every request has several of, cost far more on one that halts at once.
    if let Ok(ns) = std::fs::read_to_string("/sys/module/haltpoll/parameters/guest_halt_poll_ns") {
        println!("guest halt polling: {} ns", ns.trim());
    }
    println!("daemon idle RSS: {idle_rss:.1} MiB\n");

    let mut rows = Vec::new();
    // Following, raw entries under the managed bases would be the follower's orphans (and its
    // work): they go to an OU of their own, in the same database.
    let people = slapd.people_dn();
    let raw_base = if follow() {
        let raw_ou = format!("ou=raw,{}", slapd.suffix());
        slapd
            .ldapadd(&format!(
                "dn: {raw_ou}\nobjectClass: organizationalUnit\nou: raw\n"
            ))
            .unwrap();
        raw_ou
    } else {
        slapd.people_dn()
    };
    for &c in &levels {
        let mut by_round: Vec<Vec<(&'static str, Phase, Phase)>> = Vec::new();
        for round in 0..rounds {
            // Raw LDAP.
            let pool = Arc::new(ldap_pool(&slapd, c).await);
            let dn = {
                let raw_base = raw_base.clone();
                move |i: usize| format!("uid=raw-{c}-{round}-{i},{raw_base}")
            };
            let phase = |op: &'static str| {
                let pool = pool.clone();
                let dn = dn.clone();
                move |worker: usize, i: usize| {
                    let mut ldap = pool[worker].clone();
                    let dn = dn(i);
                    async move {
                        let name = format!("raw-{c}-{round}-{i}");
                        match op {
                            "add" => {
                                let id = format!("00000000-0000-4000-8000-{:012}", round * n + i);
                                add_person(&mut ldap, &dn, &name, &id).await;
                            }
                            "modify" => {
                                let mods =
                                    vec![Mod::Replace("title", HashSet::from(["Senior Engineer"]))];
                                ldap.modify(&dn, mods).await.unwrap().success().unwrap();
                            }
                            "lock" => {
                                let mods = vec![Mod::Replace(
                                    "pwdAccountLockedTime",
                                    HashSet::from(["000001010000Z"]),
                                )];
                                ldap.modify(&dn, mods).await.unwrap().success().unwrap();
                            }
                            _ => {
                                ldap.delete(&dn).await.unwrap().success().unwrap();
                            }
                        }
                    }
                }
            };
            let raw_add = run_phase(n, c, None, phase("add")).await;
            let raw_modify = run_phase(n, c, None, phase("modify")).await;
            let raw_lock = run_phase(n, c, None, phase("lock")).await;
            let raw_delete = run_phase(n, c, None, phase("delete")).await;

            // The same through SCIM.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap();
            let ids: Arc<Vec<std::sync::OnceLock<String>>> =
                Arc::new((0..n).map(|_| std::sync::OnceLock::new()).collect());
            let scim_phase = |op: &'static str| {
                let client = client.clone();
                let daemon = daemon.clone();
                let ids = ids.clone();
                move |_worker: usize, i: usize| {
                    let client = client.clone();
                    let daemon = daemon.clone();
                    let ids = ids.clone();
                    async move {
                        let name = format!("scim-{c}-{round}-{i}");
                        match op {
                            "add" => {
                                let created = scim(
                                    &client,
                                    &daemon,
                                    reqwest::Method::POST,
                                    "/Users",
                                    Some(&user_doc(&name, "Engineer")),
                                    201,
                                )
                                .await;
                                let _ = ids[i].set(created["id"].as_str().unwrap().to_string());
                            }
                            "modify" => {
                                let id = ids[i].get().unwrap();
                                scim(
                                    &client,
                                    &daemon,
                                    reqwest::Method::PUT,
                                    &format!("/Users/{id}"),
                                    Some(&user_doc(&name, "Senior Engineer")),
                                    200,
                                )
                                .await;
                            }
                            "lock" => {
                                let id = ids[i].get().unwrap();
                                let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "value": {"active": false}}]});
                                scim(
                                    &client,
                                    &daemon,
                                    reqwest::Method::PATCH,
                                    &format!("/Users/{id}"),
                                    Some(&body),
                                    200,
                                )
                                .await;
                            }
                            _ => {
                                let id = ids[i].get().unwrap();
                                scim(
                                    &client,
                                    &daemon,
                                    reqwest::Method::DELETE,
                                    &format!("/Users/{id}"),
                                    None,
                                    204,
                                )
                                .await;
                            }
                        }
                    }
                }
            };
            // Each SCIM phase's work is checked in the directory after the phase (one search,
            // outside the timings).
            let mine = format!("(uid=scim-{c}-{round}-*)");
            let check = |filter: String, expected: usize, what: &'static str| {
                let (ldap, people) = (pool[0].clone(), people.clone());
                async move { expect_entries(&ldap, &people, &filter, expected, what).await }
            };
            let scim_add = run_scim_phase(n, c, &daemon, scim_phase("add")).await;
            check(format!("(&{mine}(scimId=*))"), n, "created").await;
            let scim_modify = run_scim_phase(n, c, &daemon, scim_phase("modify")).await;
            check(format!("(&{mine}(title=Senior Engineer))"), n, "updated").await;
            let scim_lock = run_scim_phase(n, c, &daemon, scim_phase("lock")).await;
            check(
                format!("(&{mine}(pwdAccountLockedTime=000001010000Z))"),
                n,
                "deactivated",
            )
            .await;
            let scim_delete = run_scim_phase(n, c, &daemon, scim_phase("delete")).await;
            check(mine.clone(), 0, "deleted").await;
            let mut this_round = Vec::new();
            for (op, raw, scim) in [
                ("create (POST / add)", raw_add, scim_add),
                ("update (PUT / modify)", raw_modify, scim_modify),
                ("deactivate (PATCH / lock)", raw_lock, scim_lock),
                ("delete (DELETE / delete)", raw_delete, scim_delete),
            ] {
                println!(
                "c={c:<2} round {round} {op:<26} raw {:>7.0}/s p50 {} p99 {} | scim {:>7.0}/s p50 {} p99 {} (in daemon p50 {}) | ratio {:.2} | daemon CPU {:.0} us/op\n     directory mean ms: raw {}, inside the daemon {}",
                raw.ops_per_sec(), ms(raw.percentile(0.5)), ms(raw.percentile(0.99)),
                scim.ops_per_sec(), ms(scim.percentile(0.5)), ms(scim.percentile(0.99)), ms(percentile(&scim.in_daemon, 0.5)),
                scim.ops_per_sec() / raw.ops_per_sec(), scim.cpu_per_op_us().unwrap_or(0.0),
                ms(raw.mean()), ms(scim.directory.unwrap_or_default()),
            );
                println!(
                "     CPU us/op: raw phase: slapd {:.0}, load generator {:.0} | SCIM phase: slapd {:.0}, daemon {:.0} ({:.1} thread switches), load generator {:.0} | disk flushes/op: raw {:.2}, SCIM {:.2}",
                raw.per_op_us(raw.slapd_cpu), raw.per_op_us(raw.client_cpu),
                scim.per_op_us(scim.slapd_cpu), scim.cpu_per_op_us().unwrap_or(0.0),
                scim.switches_per_op(), scim.per_op_us(scim.client_cpu),
                raw.flushes_per_op(), scim.flushes_per_op(),
            );
                let ops: Vec<String> = scim
                    .directory_ops
                    .iter()
                    .map(|(op, per)| format!("{op} {per:.2}"))
                    .collect();
                println!(
                    "     directory operations per SCIM request: {}",
                    ops.join(", ")
                );
                this_round.push((op, raw, scim));
            }
            by_round.push(this_round);
        }
        // Per operation, the round with the median ratio, and the spread of all rounds.
        for _ in 0..4 {
            let mut runs: Vec<(&'static str, Phase, Phase)> =
                by_round.iter_mut().map(|round| round.remove(0)).collect();
            runs.sort_by(|a, b| ratio(&a.1, &a.2).total_cmp(&ratio(&b.1, &b.2)));
            let spread = (ratio(&runs[0].1, &runs[0].2), {
                let last = &runs[runs.len() - 1];
                ratio(&last.1, &last.2)
            });
            let (op, raw, scim) = runs.swap_remove(runs.len() / 2);
            rows.push(Row {
                op,
                concurrency: c,
                raw,
                scim,
                spread,
            });
        }
    }

    // The HTTP exchange alone: the same load generator and daemon, `GET /healthz` (no cache, no
    // directory), one request at a time. A SCIM write at c=1 takes at least this plus the
    // directory's own operation, which bounds the c=1 ratio of any HTTP front that answers after
    // the directory has.
    let floor = {
        let client = reqwest::Client::new();
        let url = format!("{}/healthz", daemon.root);
        run_scim_phase(n, 1, &daemon, move |_worker: usize, _i: usize| {
            let request = client.get(&url);
            async move {
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
            }
        })
        .await
    };
    println!(
        "HTTP exchange alone, c=1 (GET /healthz, same load generator): {:.0}/s p50 {} p99 {} ms (in daemon p50 {}), daemon CPU {:.0} us/op ({:.1} thread switches)",
        floor.ops_per_sec(),
        ms(floor.percentile(0.5)),
        ms(floor.percentile(0.99)),
        ms(percentile(&floor.in_daemon, 0.5)),
        floor.cpu_per_op_us().unwrap_or(0.0),
        floor.switches_per_op()
    );
    let ceilings: Vec<String> = rows
        .iter()
        .filter(|row| row.concurrency == 1)
        .map(|row| {
            let raw = row.raw.mean().as_secs_f64();
            let ceiling = raw / (raw + floor.mean().as_secs_f64());
            format!("{} {ceiling:.2}", row.op)
        })
        .collect();
    if !ceilings.is_empty() {
        println!(
            "c=1 ratio with nothing but that exchange added to the raw operation: {}\n",
            ceilings.join(", ")
        );
    }

    if follow() {
        // The later phases change managed entries with ldap3 behind the daemon's back (the
        // large group's raw comparison), which following would repair: only the write phases
        // are measured.
        println!("BENCH_FOLLOW: the write phases only\n");
        print_write_table(&rows);
        return;
    }

    // The directory alone, one ldap3 client pausing between its modifies. At c=1 the directory
    // idles between the daemon's operations while the HTTP exchange and the daemon's own steps
    // run; this shows what such idle time alone does to the directory's own operation.
    let c1_update = rows
        .iter()
        .find(|row| row.concurrency == 1 && row.op.starts_with("update"));
    let scim_pause = c1_update.map(|row| {
        row.scim
            .mean()
            .saturating_sub(row.scim.directory.unwrap_or_default())
    });
    let paced = paced_modifies(&slapd, n, scim_pause).await;
    println!(
        "directory alone, one ldap3 client pausing between modifies (pause: mean modify): {}",
        paced
            .iter()
            .map(|(pause, mean)| format!("{} ms: {} ms", ms(*pause), ms(*mean)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let (Some(pause), Some(row)) = (scim_pause, c1_update) {
        println!(
            "c=1 update: {} ms per request outside the directory; the directory's modify {} ms inside the daemon, {} ms back to back from ldap3\n",
            ms(pause),
            ms(row.scim.directory.unwrap_or_default()),
            ms(row.raw.mean()),
        );
    }

    // Onboarding: BENCH_USERS users through SCIM at concurrency 32.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let ids: Arc<Vec<std::sync::OnceLock<String>>> =
        Arc::new((0..n_users).map(|_| std::sync::OnceLock::new()).collect());
    let onboard = {
        let client = client.clone();
        let daemon = daemon.clone();
        let ids = ids.clone();
        run_phase(n_users, 32, Some(pid), move |_w, i| {
            let client = client.clone();
            let daemon = daemon.clone();
            let ids = ids.clone();
            async move {
                let created = scim(
                    &client,
                    &daemon,
                    reqwest::Method::POST,
                    "/Users",
                    Some(&user_doc(&format!("user{i:06}"), "Staff")),
                    201,
                )
                .await;
                let _ = ids[i].set(created["id"].as_str().unwrap().to_string());
            }
        })
        .await
    };
    let (rss_loaded, _) = memory_mib(pid);
    println!(
        "\nonboarding {n_users} users at c=32: {:.0}/s ({:.0} s), daemon CPU {:.0} us/op; RSS after: {rss_loaded:.1} MiB",
        onboard.ops_per_sec(), onboard.wall.as_secs_f64(), onboard.cpu_per_op_us().unwrap_or(0.0)
    );

    // Reads from the cache.
    let read_phase = |by_id: bool| {
        let client = client.clone();
        let daemon = daemon.clone();
        let ids = ids.clone();
        move |_w: usize, i: usize| {
            let client = client.clone();
            let daemon = daemon.clone();
            let ids = ids.clone();
            async move {
                let k = (i.wrapping_mul(7919)) % n_users;
                let path = if by_id {
                    format!("/Users/{}", ids[k].get().unwrap())
                } else {
                    format!("/Users?filter=userName%20eq%20%22user{k:06}%22")
                };
                scim(&client, &daemon, reqwest::Method::GET, &path, None, 200).await;
            }
        }
    };
    let reads_filter = run_phase(n_reads, 8, Some(pid), read_phase(false)).await;
    let reads_id = run_phase(n_reads, 8, Some(pid), read_phase(true)).await;
    for (name, phase) in [
        ("GET /Users?filter=userName eq", &reads_filter),
        ("GET /Users/{id}", &reads_id),
    ] {
        println!(
            "reads c=8 {name:<32} {:>7.0}/s p50 {} p99 {} ms, daemon CPU {:.0} us/op ({:.1} thread switches)",
            phase.ops_per_sec(),
            ms(phase.percentile(0.5)),
            ms(phase.percentile(0.99)),
            phase.cpu_per_op_us().unwrap_or(0.0),
            phase.switches_per_op()
        );
    }
    // What no index answers, a few requests one at a time: a filter on the work email (Entra
    // matching on it), a scan of every cached user; and pages deep into the list (an import
    // walking all users with startIndex).
    type PathOf = fn(usize, usize) -> (String, usize);
    let unindexed: [(&str, PathOf); 2] = [
        ("GET /Users?filter=emails[…].value eq", |k, _| {
            (
                format!(
                    "/Users?filter=emails%5Btype%20eq%20%22work%22%5D.value%20eq%20%22user{k:06}%40example.com%22"
                ),
                1,
            )
        }),
        ("GET /Users?startIndex=…&count=100", |k, n_users| {
            (format!("/Users?startIndex={}&count=100", k + 1), n_users)
        }),
    ];
    for (name, path_of) in unindexed {
        let phase = run_phase(n_scans, 1, Some(pid), {
            let client = client.clone();
            let daemon = daemon.clone();
            move |_w: usize, i: usize| {
                let client = client.clone();
                let daemon = daemon.clone();
                async move {
                    let k = (i.wrapping_mul(7919)) % n_users;
                    let (path, total) = path_of(k, n_users);
                    let found =
                        scim(&client, &daemon, reqwest::Method::GET, &path, None, 200).await;
                    assert_eq!(found["totalResults"], total, "{path}");
                }
            }
        })
        .await;
        println!(
            "unindexed c=1 {name:<36} {:>7.1}/s p50 {} p99 {} ms, daemon CPU {:.0} us/op",
            phase.ops_per_sec(),
            ms(phase.percentile(0.5)),
            ms(phase.percentile(0.99)),
            phase.cpu_per_op_us().unwrap_or(0.0),
        );
    }

    // Reconcile every entry (a dry run, which may run beside the daemon).
    let reconcile_started = Instant::now();
    let mut reconciler = std::process::Command::new(daemon_binary())
        .args(["reconcile", "--dry-run", "--json", "--config"])
        .arg(&daemon.config_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let reconciler_pid = reconciler.id();
    let mut reconcile_peak = 0.0f64;
    while reconciler.try_wait().unwrap().is_none() {
        if std::fs::metadata(format!("/proc/{reconciler_pid}/status")).is_ok() {
            let (_, hwm) = memory_mib(reconciler_pid);
            reconcile_peak = reconcile_peak.max(hwm);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reconcile_time = reconcile_started.elapsed();
    let output = reconciler.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    // Every user onboarded through SCIM is in the directory as the cache says: nothing drifted,
    // nothing missing, no stray entries (the write phases removed theirs).
    assert!(
        output.status.success()
            && report["scanned"] == n_users
            && report["drifted"] == 0
            && report["orphans"] == 0,
        "reconcile after onboarding {n_users} users: {} {report}",
        output.status
    );
    println!(
        "reconcile (dry run) of {} entries: {:.1} s, peak RSS {reconcile_peak:.1} MiB, drifted {}",
        report["scanned"],
        reconcile_time.as_secs_f64(),
        report["drifted"]
    );

    // Large group against small group.
    let patch_members = |op: &str, members: Vec<Value>| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": op, "path": "members", "value": members}]});
    let big = scim(
        &client,
        &daemon,
        reqwest::Method::POST,
        "/Groups",
        Some(&json!({"displayName": "big"})),
        201,
    )
    .await;
    let big_id = big["id"].as_str().unwrap().to_string();
    let fill_started = Instant::now();
    for chunk in (0..n_group).collect::<Vec<_>>().chunks(1000) {
        let members: Vec<Value> = chunk
            .iter()
            .map(|k| json!({"value": ids[*k].get().unwrap()}))
            .collect();
        scim(
            &client,
            &daemon,
            reqwest::Method::PATCH,
            &format!("/Groups/{big_id}"),
            Some(&patch_members("add", members)),
            204,
        )
        .await;
    }
    println!(
        "\nbuilt a {n_group}-member group in {:.1} s (PATCH of 1000 members each)",
        fill_started.elapsed().as_secs_f64()
    );
    let small_members: Vec<Value> = (n_group..n_group + 10)
        .map(|k| json!({"value": ids[k % n_users].get().unwrap()}))
        .collect();
    let small = scim(
        &client,
        &daemon,
        reqwest::Method::POST,
        "/Groups",
        Some(&json!({"displayName": "small", "members": small_members})),
        201,
    )
    .await;
    let small_id = small["id"].as_str().unwrap().to_string();
    // Members come from the users outside the big group, two per round (SCIM, then raw), so
    // that none is in a group already, and then the crowd's; a small BENCH_USERS gets fewer
    // rounds and a smaller crowd, never none (the smoke run runs every phase).
    let outside = n_users.saturating_sub(n_group + 10);
    let crowd_n = crowd_size.min(outside / 3).max(1);
    let rounds = 300.min(outside.saturating_sub(crowd_n) / 2).max(1);
    assert!(
        n_group + 10 + 2 * rounds + crowd_n <= n_users,
        "BENCH_USERS {n_users} leaves no users for the crowd phases; raise it"
    );
    let mut group_results = Vec::new();
    let mut crowd_results: Vec<(Phase, Phase)> = Vec::new();
    let big_label = format!("{n_group}-member group");
    for (label, cn, gid) in [
        (big_label.as_str(), "big", big_id.clone()),
        ("10-member group", "small", small_id.clone()),
    ] {
        let mut adds = Vec::new();
        let mut removes = Vec::new();
        let cpu_before = process_cpu(pid);
        let log_start = std::fs::metadata(&daemon.log_path).map_or(0, |m| m.len());
        let (directory_before, ops_before) = directory_work(&daemon).await;
        for r in 0..rounds {
            // A user not in either group.
            let member = ids[(n_group + 10 + r) % n_users].get().unwrap();
            let t = Instant::now();
            scim(
                &client,
                &daemon,
                reqwest::Method::PATCH,
                &format!("/Groups/{gid}"),
                Some(&patch_members("add", vec![json!({"value": member})])),
                204,
            )
            .await;
            adds.push(t.elapsed());
            let t = Instant::now();
            let body = json!({"Operations": [{"op": "remove", "path": format!("members[value eq \"{member}\"]")}]});
            scim(
                &client,
                &daemon,
                reqwest::Method::PATCH,
                &format!("/Groups/{gid}"),
                Some(&body),
                204,
            )
            .await;
            removes.push(t.elapsed());
        }
        // The daemon's CPU per member change, adds and removes together, and its own time:
        // inside the daemon less its directory operations (both from the daemon).
        let changes = (2 * rounds) as f64;
        let change_cpu_us = (process_cpu(pid) - cpu_before).as_secs_f64() * 1e6 / changes;
        let (directory_after, ops_after) = directory_work(&daemon).await;
        let inside: f64 = in_daemon_since(&daemon, log_start)
            .iter()
            .map(Duration::as_secs_f64)
            .sum();
        let change_own_ms = (inside - (directory_after - directory_before)) * 1000.0 / changes;
        let change_ops: Vec<String> = ops_after
            .iter()
            .map(|(op, count)| {
                (
                    op,
                    (count - ops_before.get(op).copied().unwrap_or(0.0)) / changes,
                )
            })
            .filter(|(_, per_change)| *per_change > 0.0)
            .map(|(op, per_change)| format!("{op} {per_change:.2}"))
            .collect();
        let add = Phase::latencies_only(adds);
        let remove = Phase::latencies_only(removes);
        println!(
            "{label:<18} add one member p50 {} p99 {} ms | remove one p50 {} p99 {} ms",
            ms(add.percentile(0.5)),
            ms(add.percentile(0.99)),
            ms(remove.percentile(0.5)),
            ms(remove.percentile(0.99))
        );
        // The same change straight through ldap3, for the directory's own share of the cost.
        let group_dn = format!("cn={cn},{}", slapd.groups_dn());
        let mut ldap = ldap_pool(&slapd, 1).await.remove(0);
        let mut raw_adds = Vec::new();
        let mut raw_removes = Vec::new();
        for r in 0..rounds {
            let member_dn = format!(
                "uid=user{:06},{}",
                (n_group + 10 + rounds + r) % n_users,
                people
            );
            let t = Instant::now();
            let add_mod = vec![Mod::Add("member", HashSet::from([member_dn.as_str()]))];
            ldap.modify(&group_dn, add_mod)
                .await
                .unwrap()
                .success()
                .unwrap();
            raw_adds.push(t.elapsed());
            let t = Instant::now();
            let delete_mod = vec![Mod::Delete("member", HashSet::from([member_dn.as_str()]))];
            ldap.modify(&group_dn, delete_mod)
                .await
                .unwrap()
                .success()
                .unwrap();
            raw_removes.push(t.elapsed());
        }
        let raw_add = Phase::latencies_only(raw_adds);
        let raw_remove = Phase::latencies_only(raw_removes);
        println!(
            "{label:<18} raw ldap3: add p50 {} ms | remove p50 {} ms",
            ms(raw_add.percentile(0.5)),
            ms(raw_remove.percentile(0.5))
        );
        // What the daemon adds to the directory's own cost, the part that is the daemon's to
        // keep flat as the group grows.
        println!(
            "{label:<18} the daemon's own share per change: {change_own_ms:.2} ms inside it besides the directory, {change_cpu_us:.0} µs of its CPU; directory operations per change: {}",
            change_ops.join(", ")
        );
        group_results.push((label, add, remove, change_own_ms, change_cpu_us));

        // A crowd assigned at once, as an IdP sends it: one PATCH per member, CROWD_LEVEL at a
        // time (the daemon merges those waiting for the group), against the same one-member
        // modifies straight through ldap3 on as many connections.
        let crowd_start = n_group + 10 + 2 * rounds;
        let crowd: Arc<Vec<(String, String)>> = Arc::new(
            (crowd_start..crowd_start + crowd_n)
                .map(|k| {
                    let id = ids[k].get().unwrap().clone();
                    (id, format!("uid=user{k:06},{people}"))
                })
                .collect(),
        );
        let scim_members = |remove: bool| {
            let client = client.clone();
            let daemon = daemon.clone();
            let crowd = crowd.clone();
            let gid = gid.clone();
            move |_worker: usize, i: usize| {
                let client = client.clone();
                let daemon = daemon.clone();
                let member = crowd[i].0.clone();
                let path = format!("/Groups/{gid}");
                async move {
                    let body = if remove {
                        json!({"Operations": [{"op": "remove", "path": format!("members[value eq \"{member}\"]")}]})
                    } else {
                        patch_members("add", vec![json!({"value": member})])
                    };
                    scim(
                        &client,
                        &daemon,
                        reqwest::Method::PATCH,
                        &path,
                        Some(&body),
                        204,
                    )
                    .await;
                }
            }
        };
        let pool = Arc::new(ldap_pool(&slapd, CROWD_LEVEL).await);
        // The crowd's members are in the group's entry after the adds, and gone after the
        // removes (one search each, outside the timings).
        let members: String = crowd
            .iter()
            .map(|(_, dn)| format!("(member={dn})"))
            .collect();
        let groups_base = slapd.groups_dn();
        let scim_add = run_phase(crowd_n, CROWD_LEVEL, Some(pid), scim_members(false)).await;
        let all_in = format!("(&(cn={cn}){members})");
        expect_entries(&pool[0], &groups_base, &all_in, 1, "crowd added").await;
        let scim_remove = run_phase(crowd_n, CROWD_LEVEL, Some(pid), scim_members(true)).await;
        let any_in = format!("(&(cn={cn})(|{members}))");
        expect_entries(&pool[0], &groups_base, &any_in, 0, "crowd removed").await;
        let raw_members = |remove: bool| {
            let pool = pool.clone();
            let crowd = crowd.clone();
            let group_dn = group_dn.clone();
            move |worker: usize, i: usize| {
                let mut ldap = pool[worker].clone();
                let member_dn = crowd[i].1.clone();
                let group_dn = group_dn.clone();
                async move {
                    let values = HashSet::from([member_dn.as_str()]);
                    let change = if remove {
                        Mod::Delete("member", values)
                    } else {
                        Mod::Add("member", values)
                    };
                    ldap.modify(&group_dn, vec![change])
                        .await
                        .unwrap()
                        .success()
                        .unwrap();
                }
            }
        };
        let raw_add = run_phase(crowd_n, CROWD_LEVEL, None, raw_members(false)).await;
        let raw_remove = run_phase(crowd_n, CROWD_LEVEL, None, raw_members(true)).await;
        println!(
            "{label:<18} {crowd_n} members, {CROWD_LEVEL} at a time: SCIM add {:.0}/s, remove {:.0}/s (p50 {} / {} ms) | ldap3 add {:.0}/s, remove {:.0}/s",
            scim_add.ops_per_sec(),
            scim_remove.ops_per_sec(),
            ms(scim_add.percentile(0.5)),
            ms(scim_remove.percentile(0.5)),
            raw_add.ops_per_sec(),
            raw_remove.ops_per_sec()
        );
        crowd_results.push((scim_add, scim_remove));
    }

    // Offboarding a crowd: members of the large group deleted 32 at a time. Each delete takes
    // the user out of the group first (one `member` value), then deletes the entry; the daemon
    // merges the removals waiting for the group. ldap3 alone does the same two operations.
    let leavers = (crowd_size / 2).min(n_group / 2);
    if leavers > 0 {
        let big_dn = format!("cn=big,{}", slapd.groups_dn());
        let gone: Arc<Vec<String>> = Arc::new(
            (0..leavers)
                .map(|k| ids[k].get().unwrap().clone())
                .collect(),
        );
        let scim_delete = {
            let client = client.clone();
            let daemon = daemon.clone();
            move |_worker: usize, i: usize| {
                let client = client.clone();
                let daemon = daemon.clone();
                let path = format!("/Users/{}", gone[i]);
                async move {
                    scim(&client, &daemon, reqwest::Method::DELETE, &path, None, 204).await;
                }
            }
        };
        let scim_phase = run_phase(leavers, CROWD_LEVEL, Some(pid), scim_delete).await;
        let pool = Arc::new(ldap_pool(&slapd, CROWD_LEVEL).await);
        let raw_delete = {
            let people = people.clone();
            move |worker: usize, i: usize| {
                let mut ldap = pool[worker].clone();
                let member_dn = format!("uid=user{:06},{people}", leavers + i);
                let big_dn = big_dn.clone();
                async move {
                    let values = HashSet::from([member_dn.as_str()]);
                    ldap.modify(&big_dn, vec![Mod::Delete("member", values)])
                        .await
                        .unwrap()
                        .success()
                        .unwrap();
                    ldap.delete(&member_dn).await.unwrap().success().unwrap();
                }
            }
        };
        let raw_phase = run_phase(leavers, CROWD_LEVEL, None, raw_delete).await;
        println!(
            "offboarding {leavers} members of the {n_group}-member group, {CROWD_LEVEL} at a time: SCIM {:.0}/s (p50 {} ms, daemon CPU {:.0} µs/op) | ldap3 {:.0}/s (p50 {} ms)",
            scim_phase.ops_per_sec(),
            ms(scim_phase.percentile(0.5)),
            scim_phase.cpu_per_op_us().unwrap_or(0.0),
            raw_phase.ops_per_sec(),
            ms(raw_phase.percentile(0.5))
        );
    }
    let (rss_end, peak) = memory_mib(pid);
    println!("\nmemory: idle {idle_rss:.1} MiB, after {n_users} users {rss_loaded:.1} MiB, end {rss_end:.1} MiB, peak {peak:.1} MiB");

    // Start-up to ready on the warm cache.
    let config_path = daemon.config_path.clone();
    let root = daemon.root.clone();
    drop(daemon);
    let restart_started = Instant::now();
    let log = std::fs::File::create(dir.path().join("daemon2.log")).unwrap();
    let mut restarted = std::process::Command::new(daemon_binary())
        .args(["serve", "--config"])
        .arg(&config_path)
        .stderr(log)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    while !client
        .get(format!("{root}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            restart_started.elapsed() < Duration::from_secs(60),
            "restart did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "start-up to ready with {n_users} users cached: {:.0} ms",
        restart_started.elapsed().as_secs_f64() * 1000.0
    );
    let _ = restarted.kill();
    let _ = restarted.wait();

    // The README table.
    print_write_table(&rows);
    let (_, big_add, big_remove, big_own, big_cpu) = &group_results[0];
    let (_, small_add, small_remove, small_own, small_cpu) = &group_results[1];
    println!(
        "\nlarge group: add {:.2}x, remove {:.2}x the 10-member cost (p50)",
        big_add.percentile(0.5).as_secs_f64() / small_add.percentile(0.5).as_secs_f64(),
        big_remove.percentile(0.5).as_secs_f64() / small_remove.percentile(0.5).as_secs_f64()
    );
    println!(
        "large group, the daemon's own share: time {:.2}x, CPU {:.2}x the 10-member group's",
        big_own / small_own,
        big_cpu / small_cpu
    );
    if let [(big_add, big_remove), (small_add, small_remove)] = crowd_results.as_slice() {
        println!(
            "large group, {CROWD_LEVEL} at a time: add {:.2}x, remove {:.2}x the 10-member cost per member",
            small_add.ops_per_sec() / big_add.ops_per_sec(),
            small_remove.ops_per_sec() / big_remove.ops_per_sec()
        );
    }
}

/// The README's table of the write phases.
fn print_write_table(rows: &[Row]) {
    println!("\n| op | c | raw ops/s | SCIM ops/s | ratio (all rounds) | raw p50/p99 ms | SCIM p50/p99 ms | of which in daemon, p50 | directory, mean ms: raw / in daemon | daemon CPU/op (thread switches) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} ({:.2}-{:.2}) | {}/{} | {}/{} | {} | {} / {} | {:.0} µs ({:.1}) |",
            row.op,
            row.concurrency,
            row.raw.ops_per_sec(),
            row.scim.ops_per_sec(),
            ratio(&row.raw, &row.scim),
            row.spread.0,
            row.spread.1,
            ms(row.raw.percentile(0.5)),
            ms(row.raw.percentile(0.99)),
            ms(row.scim.percentile(0.5)),
            ms(row.scim.percentile(0.99)),
            ms(percentile(&row.scim.in_daemon, 0.5)),
            ms(row.raw.mean()),
            ms(row.scim.directory.unwrap_or_default()),
            row.scim.cpu_per_op_us().unwrap_or(0.0),
            row.scim.switches_per_op()
        );
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}
