//! Prometheus metrics: one process-wide registry, recorded from the HTTP layer, the directory
//! pool and reconciliation, and rendered by `/metrics` in the OpenMetrics text format (which
//! Prometheus scrapes natively).
//!
//! Counters and histograms are process-wide. Gauges that describe one running daemon (pool,
//! cache sizes, pending intents) are set from a [`Snapshot`] at each scrape, under the same lock
//! as the rendering, so a scrape is consistent.
//!
//! For reconciliation: call [`record_reconcile`] once per finished run, and
//! [`record_reconcile_failure`] when a run stops early.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of the rendered metrics.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of one HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

/// Labels of a request duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    method: &'static str,
}

/// Labels of one directory operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectoryLabels {
    operation: &'static str,
    result: &'static str,
}

/// Labels of a directory operation's duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// Labels of a cache size.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Labels of an audit record count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

fn reconcile_histogram() -> Histogram {
    // 0.1 s to about 27 minutes.
    Histogram::new(exponential_buckets(0.1, 2.0, 15))
}

struct Metrics {
    registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    http_rate_limited: Counter,
    cache_fsyncs: Counter,
    cache_fsync_callers: Counter,
    tls_handshake_failures: Counter,
    directory_operations: Family<DirectoryLabels, Counter>,
    directory_duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pool_size: Gauge,
    pool_connected: Gauge,
    pool_waiters: Gauge,
    cache_resources: Family<KindLabels, Gauge>,
    cache_memberships: Gauge,
    intents_pending: Gauge,
    member_changes_waiting: Gauge,
    audit_records: Family<ResultLabels, Counter>,
    reconcile_runs: Family<ResultLabels, Counter>,
    reconcile_scanned: Counter,
    reconcile_drifted: Counter,
    reconcile_repaired: Counter,
    reconcile_orphans: Gauge,
    reconcile_duration: Histogram,
    reconcile_last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    reconcile_follow_searches: Gauge,
    /// Held while gauges are set from a snapshot and rendered.
    render_lock: Mutex<()>,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("scim2ldap");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            http_requests.clone(),
        );
        let http_duration: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from reading a request to its reply, by route template and method",
            Unit::Seconds,
            http_duration.clone(),
        );
        let cache_fsyncs = Counter::default();
        registry.register(
            "cache_fsyncs",
            "Fsyncs of the cache's WAL (one serves every write waiting at the time)",
            cache_fsyncs.clone(),
        );
        let cache_fsync_callers = Counter::default();
        registry.register(
            "cache_fsync_callers",
            "Writes made durable by those fsyncs",
            cache_fsync_callers.clone(),
        );
        let http_rate_limited = Counter::default();
        registry.register(
            "http_rate_limited",
            "Requests refused with 429 by the rate limit",
            http_rate_limited.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out (old protocol versions, plain HTTP on the TLS port)",
            tls_handshake_failures.clone(),
        );
        let directory_operations = Family::<DirectoryLabels, Counter>::default();
        registry.register(
            "directory_operations",
            "LDAP operations, by kind and result (ok, transient, permanent)",
            directory_operations.clone(),
        );
        let directory_duration: Family<OperationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "directory_operation_duration",
            "Time of LDAP operations, by kind",
            Unit::Seconds,
            directory_duration.clone(),
        );
        let pool_size = Gauge::default();
        registry.register(
            "directory_pool_size",
            "Connection slots in the directory pool (ldap.pool_size)",
            pool_size.clone(),
        );
        let pool_connected = Gauge::default();
        registry.register(
            "directory_pool_connected",
            "Pool slots holding a bound connection",
            pool_connected.clone(),
        );
        let pool_waiters = Gauge::default();
        registry.register(
            "directory_pool_waiters",
            "Operations waiting for a pool slot (one is connecting)",
            pool_waiters.clone(),
        );
        let cache_resources = Family::<KindLabels, Gauge>::default();
        registry.register(
            "cache_resources",
            "Resources in the cache, by kind (user, group)",
            cache_resources.clone(),
        );
        let cache_memberships = Gauge::default();
        registry.register(
            "cache_memberships",
            "Group membership rows in the cache",
            cache_memberships.clone(),
        );
        let intents_pending = Gauge::default();
        registry.register(
            "intents_pending",
            "Writes recorded as intents and not yet committed (in flight, or left for replay)",
            intents_pending.clone(),
        );
        let member_changes_waiting = Gauge::default();
        registry.register(
            "group_member_changes_waiting",
            "Group member changes waiting while another change holds their group (applied together as one modify when it is free)",
            member_changes_waiting.clone(),
        );
        let audit_records = Family::<ResultLabels, Counter>::default();
        registry.register(
            "audit_records",
            "Changes applied to the directory and audited, by result (ok, failed)",
            audit_records.clone(),
        );
        let reconcile_runs = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconcile_runs",
            "Reconciliation runs, by result (ok, failed)",
            reconcile_runs.clone(),
        );
        let reconcile_scanned = Counter::default();
        registry.register(
            "reconcile_entries_scanned",
            "Directory entries compared with the cache by reconciliation",
            reconcile_scanned.clone(),
        );
        let reconcile_drifted = Counter::default();
        registry.register(
            "reconcile_entries_drifted",
            "Entries found differing from the cache",
            reconcile_drifted.clone(),
        );
        let reconcile_repaired = Counter::default();
        registry.register(
            "reconcile_entries_repaired",
            "Drifted entries repaired",
            reconcile_repaired.clone(),
        );
        let reconcile_orphans = Gauge::default();
        registry.register(
            "reconcile_orphans",
            "Entries under the managed bases that the cache does not know, at the last run",
            reconcile_orphans.clone(),
        );
        let reconcile_duration = reconcile_histogram();
        registry.register_with_unit(
            "reconcile_duration",
            "Duration of reconciliation runs",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let reconcile_last_success = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "reconcile_last_success_timestamp_seconds",
            "Unix time at which the last successful reconciliation run finished",
            reconcile_last_success.clone(),
        );
        let reconcile_follow_searches = Gauge::default();
        registry.register(
            "reconcile_follow_searches",
            "Content synchronization searches open, following the directory's changes (reconcile.follow)",
            reconcile_follow_searches.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_duration,
            http_rate_limited,
            cache_fsyncs,
            cache_fsync_callers,
            tls_handshake_failures,
            directory_operations,
            directory_duration,
            pool_size,
            pool_connected,
            pool_waiters,
            cache_resources,
            cache_memberships,
            intents_pending,
            member_changes_waiting,
            audit_records,
            reconcile_runs,
            reconcile_scanned,
            reconcile_drifted,
            reconcile_repaired,
            reconcile_orphans,
            reconcile_duration,
            reconcile_last_success,
            reconcile_follow_searches,
            render_lock: Mutex::new(()),
        }
    }
}

/// The state of one daemon at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Pool slots.
    pub pool_size: usize,
    /// Slots with a bound connection.
    pub pool_connected: usize,
    /// Operations waiting for a slot.
    pub pool_waiters: usize,
    /// Users in the cache.
    pub users: usize,
    /// Groups in the cache.
    pub groups: usize,
    /// Membership rows in the cache.
    pub memberships: usize,
    /// Intents not yet committed.
    pub intents_pending: usize,
    /// Group member changes waiting for their group.
    pub member_changes_waiting: usize,
}

/// Sets the per-daemon gauges from `snapshot` and renders every metric.
pub fn render(snapshot: &Snapshot) -> String {
    let metrics = metrics();
    let _guard = metrics
        .render_lock
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
    metrics.pool_size.set(gauge(snapshot.pool_size));
    metrics.pool_connected.set(gauge(snapshot.pool_connected));
    metrics.pool_waiters.set(gauge(snapshot.pool_waiters));
    metrics
        .cache_resources
        .get_or_create(&KindLabels { kind: "user" })
        .set(gauge(snapshot.users));
    metrics
        .cache_resources
        .get_or_create(&KindLabels { kind: "group" })
        .set(gauge(snapshot.groups));
    metrics.cache_memberships.set(gauge(snapshot.memberships));
    metrics.intents_pending.set(gauge(snapshot.intents_pending));
    metrics
        .member_changes_waiting
        .set(gauge(snapshot.member_changes_waiting));
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &metrics.registry) {
        tracing::error!(error = %err, "metrics could not be rendered");
    }
    text
}

/// Records one answered HTTP request.
pub fn record_request(route: &'static str, method: &http::Method, status: u16, elapsed: Duration) {
    let metrics = metrics();
    let method = method_label(method);
    metrics
        .http_requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status,
        })
        .inc();
    metrics
        .http_duration
        .get_or_create(&RouteLabels { route, method })
        .observe(elapsed.as_secs_f64());
}

/// Records one fsync of the cache, which served `callers` waiting writes.
pub fn record_cache_fsync(callers: usize) {
    let metrics = metrics();
    metrics.cache_fsyncs.inc();
    metrics
        .cache_fsync_callers
        .inc_by(u64::try_from(callers).unwrap_or(u64::MAX));
}

/// Records a request refused by the rate limit.
pub fn record_rate_limited() {
    metrics().http_rate_limited.inc();
}

/// Records a failed TLS handshake.
pub fn record_tls_handshake_failure() {
    metrics().tls_handshake_failures.inc();
}

/// The outcome class of a directory operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationResult {
    /// It succeeded.
    Ok,
    /// It failed in a way a retry may fix (unreachable, busy, timeout).
    Transient,
    /// The directory refused it.
    Permanent,
}

/// Records one LDAP operation of kind `operation` (add, modify, search, ...).
pub fn record_directory_operation(
    operation: &'static str,
    result: OperationResult,
    elapsed: Duration,
) {
    let metrics = metrics();
    let result = match result {
        OperationResult::Ok => "ok",
        OperationResult::Transient => "transient",
        OperationResult::Permanent => "permanent",
    };
    metrics
        .directory_operations
        .get_or_create(&DirectoryLabels { operation, result })
        .inc();
    metrics
        .directory_duration
        .get_or_create(&OperationLabels { operation })
        .observe(elapsed.as_secs_f64());
}

/// Records one audited change.
pub fn record_audit(ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    metrics()
        .audit_records
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// Records a finished reconciliation run: entries compared (`scanned`), found differing
/// (`drifted`), repaired (`repaired`), unknown to the cache (`orphans`), and its duration.
pub fn record_reconcile(
    scanned: u64,
    drifted: u64,
    repaired: u64,
    orphans: u64,
    duration: Duration,
) {
    let metrics = metrics();
    metrics
        .reconcile_runs
        .get_or_create(&ResultLabels { result: "ok" })
        .inc();
    metrics.reconcile_scanned.inc_by(scanned);
    metrics.reconcile_drifted.inc_by(drifted);
    metrics.reconcile_repaired.inc_by(repaired);
    metrics
        .reconcile_orphans
        .set(i64::try_from(orphans).unwrap_or(i64::MAX));
    metrics.reconcile_duration.observe(duration.as_secs_f64());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs_f64())
        .unwrap_or(0.0);
    metrics.reconcile_last_success.set(now);
}

/// Records entries put back after failed writes (outside a reconciliation run), counted as
/// drifted and repaired.
pub fn record_suspect_repairs(repaired: usize) {
    let repaired = u64::try_from(repaired).unwrap_or(u64::MAX);
    let metrics = metrics();
    metrics.reconcile_drifted.inc_by(repaired);
    metrics.reconcile_repaired.inc_by(repaired);
}

/// Records the findings of a followed change (`reconcile.follow`), outside any run.
pub fn record_followed_change(drifted: u64, repaired: u64) {
    let metrics = metrics();
    metrics.reconcile_drifted.inc_by(drifted);
    metrics.reconcile_repaired.inc_by(repaired);
}

/// Counts a search following the directory's changes for as long as the returned guard lives.
pub fn following_search() -> FollowingSearch {
    metrics().reconcile_follow_searches.inc();
    FollowingSearch(())
}

/// See [`following_search`].
pub struct FollowingSearch(());

impl Drop for FollowingSearch {
    fn drop(&mut self) {
        metrics().reconcile_follow_searches.dec();
    }
}

/// Records a reconciliation run that stopped with an error.
pub fn record_reconcile_failure(duration: Duration) {
    let metrics = metrics();
    metrics
        .reconcile_runs
        .get_or_create(&ResultLabels { result: "failed" })
        .inc();
    metrics.reconcile_duration.observe(duration.as_secs_f64());
}

/// Methods as a bounded label set.
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_results_and_requests_render_in_the_text_format() {
        record_reconcile(10, 2, 1, 3, Duration::from_millis(1500));
        record_request("/Users", &http::Method::POST, 201, Duration::from_millis(3));
        record_cache_fsync(3);
        record_request(
            "/Users",
            &http::Method::from_bytes(b"BREW").expect("method"),
            405,
            Duration::ZERO,
        );
        let text = render(&Snapshot {
            users: 4,
            ..Snapshot::default()
        });
        for line in [
            "scim2ldap_reconcile_entries_scanned_total ",
            "scim2ldap_reconcile_orphans 3",
            "scim2ldap_http_requests_total{route=\"/Users\",method=\"POST\",status=\"201\"} ",
            "scim2ldap_http_requests_total{route=\"/Users\",method=\"other\",status=\"405\"} ",
            "scim2ldap_http_request_duration_seconds_bucket{",
            "scim2ldap_cache_resources{kind=\"user\"} 4",
            "scim2ldap_cache_fsyncs_total ",
            "scim2ldap_cache_fsync_callers_total ",
            "# EOF",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
