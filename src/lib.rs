//! scim2ldap: a SCIM 2.0 service provider (RFC 7643, RFC 7644) that keeps an LDAP directory in
//! step with a cloud identity provider.
//!
//! # Codemap
//!
//! ```text
//! http/  ->  service  ->  scim/ (pure)     mapping/ (pure)
//!                     ->  directory/ (ldap3)   store/ (SQLite cache)
//! main.rs: CLI, config, tracing, bind, sd_notify, signals -> lib::run(config, listener, shutdown)
//! ```
//!
//! - [`config`]: the TOML file and `SCIM2LDAP__SECTION__KEY` overrides, validated into
//!   [`config::Config`]; secrets in `secrecy` types.
//! - [`scim`]: the protocol without I/O: schema model and discovery documents, filter parser and
//!   evaluator, PATCH paths and engine, validation of request documents, list/sort/paging and
//!   projection, and [`scim::ScimError`], the only error a client sees.
//! - [`mapping`]: SCIM resource <-> LDAP entry from config: rules, templates, DN rules,
//!   deactivation strategies, and `diff`, the smallest modify between two projections.
//! - [`directory`]: the only code that speaks LDAP: pooled bound connections, timeouts,
//!   reconnect with backoff, result codes classified transient or permanent, DN and filter
//!   escaping in one place; content synchronization searches (RFC 4533) on connections of
//!   their own, and the tally of the daemon's own writes that tells their messages apart.
//! - [`store`]: the reconciliation cache (SQLite, WAL): resources as the IdP last set them,
//!   memberships as rows, the intent log; one writer connection with group commit, a sync
//!   thread for fsyncs and checkpoints.
//! - [`service`]: the use cases; orders every write as intent -> directory -> commit, and
//!   serializes writes per resource (member changes waiting for one group go as one).
//! - [`reconcile`]: compares the managed subtrees with the cache by paged searches and
//!   repairs or reports drift and orphans, at start-up, on an interval and on demand; puts back
//!   the entries of writes that failed transiently once the directory answers (`suspects`);
//!   with `reconcile.follow`, checks each change made in the directory as it happens
//!   (`follow`), through the same checks and repairs as a run.
//! - [`http`]: warp filter, accept loop with graceful drain (plain or TLS), routing, bearer auth,
//!   rate limit, bearer auth with a bounded per-client throttle of failed attempts, body limit,
//!   request ids. A handler extracts, calls one service function, replies.
//! - [`tls`]: PEM files to a rustls server configuration (TLS 1.2+), swapped on reload.
//! - [`control`]: what changes without a restart (tokens, certificate: SIGHUP) and the
//!   daemon's own health (accept loop, cache) that feeds the systemd watchdog; the directory's
//!   state is not part of it.
//! - [`metrics`]: the Prometheus registry behind `/metrics`; `metrics::record_reconcile` is the
//!   entry point for reconciliation results.
//! - [`audit`]: one record per directory change on the tracing target `scim2ldap::audit`: who
//!   (token name), what (resource, operation, attribute names), result; never values.
//! - [`logjson`]: log lines as JSON objects (the journal's format), written straight into a
//!   buffer; a span's fields rendered once.
//! - [`demo`]: a throwaway local OpenLDAP for `scim2ldap demo` and the integration tests.
//!
//! # Invariants
//!
//! - Nothing in `scim/` or `mapping/` does I/O, reads the clock or is `async`.
//! - Only `directory/` imports `ldap3`; only `store/` touches the database file.
//! - A status code is chosen in exactly one function: `From<ServiceError> for ScimError`
//!   (plus the protocol errors that `scim/` constructs with their `scimType`).
//! - No client-facing error text contains directory server messages, DNs of other entries or
//!   secrets: those go to the log under the request id, which every response carries in
//!   `X-Request-Id`.
//! - A password is never stored, logged or returned; `expose_secret()` appears only at the LDAP
//!   bind and password change, and bearer tokens are only ever compared as hashes. The hash of
//!   a user being deleted is held in memory only, to re-create the entry if the delete fails.
//!   Logs name a token by its configured name; attribute values appear at trace level at most.

pub mod audit;
pub mod check;
pub mod config;
pub mod control;
pub mod demo;
pub mod directory;
pub mod http;
pub mod logjson;
pub mod mapping;
pub mod metrics;
mod queue;
pub mod reconcile;
pub mod scim;
pub mod service;
pub mod store;
pub mod tls;

pub use control::Control;

use std::sync::Arc;

use tokio::net::TcpListener;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The directory settings could not be used.
    #[error("directory: {0}")]
    Directory(#[from] directory::DirectoryError),
    /// The cache could not be opened.
    #[error("cache: {0}")]
    Store(#[from] store::StoreError),
    /// Unfinished writes of the previous run could not be replayed.
    #[error("replaying unfinished writes: {0}")]
    Replay(String),
    /// Anything else at start-up.
    #[error("{0}")]
    Startup(String),
    /// Another process holds the cache.
    #[error("another scim2ldap process is using this cache (lock file {0})")]
    CacheBusy(std::path::PathBuf),
}

/// How often the cache's health is checked (for the watchdog) and the directory pinged (for
/// the log and the metrics).
const HEALTH_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves SCIM on `listener` until `shutdown` resolves, then drains in-flight requests.
///
/// Before serving, unfinished writes from a previous run are replayed, so that no write is
/// served out of order; meanwhile `/healthz` answers (alive) and the rest 503 with
/// `Retry-After`. `ready` is called once start-up is done (systemd's READY=1).
pub async fn run(
    config: config::Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
    ready: impl FnOnce(),
) -> Result<(), RunError> {
    let control = Control::new(&config).map_err(|err| RunError::Startup(err.to_string()))?;
    run_with(config, listener, control, shutdown, ready).await
}

/// As [`run`], with a [`Control`] made from `config` by the caller, through which it reloads
/// tokens and certificate (SIGHUP) and reads the health for the systemd watchdog.
pub async fn run_with(
    config: config::Config,
    listener: TcpListener,
    control: Control,
    shutdown: impl std::future::Future<Output = ()> + Send,
    ready: impl FnOnce(),
) -> Result<(), RunError> {
    let config = Arc::new(config);
    let _cache_lock = lock_cache(&config.cache.path)?;
    if config.server.tls.is_none() && !config.server.listen.ip().is_loopback() {
        tracing::warn!(
            address = %config.server.listen,
            "server.listen is not a loopback address and no TLS is configured: bearer tokens and user passwords cross the network in clear; set server.tls_cert_file and server.tls_key_file, or listen on loopback behind a TLS proxy"
        );
    }
    if let Some(host) = config.ldap.plaintext_remote_host() {
        tracing::warn!(
            host,
            "ldap.url is ldap:// to another host without ldap.starttls: the bind password and every password set cross the network in clear; use ldaps:// or starttls = true"
        );
    }
    let service = open_service(config.clone())?;
    let (stop_send, stop_receive) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop_receive = stop_receive.clone();
        async move {
            let _ = stop_receive.wait_for(|stop| *stop).await;
        }
    };
    // Served from the start, so that probes and IdPs get an answer (alive; 503 with
    // Retry-After for the rest) rather than a hang while start-up waits and replays.
    control.set_starting(true);
    let state = http::HttpState {
        service: service.clone(),
        control: control.clone(),
        limiter: config
            .server
            .rate_limit
            .map(|limit| Arc::new(http::RateLimiter::new(limit))),
        base_path: Arc::from(config.server.base_path.as_str()),
        max_body_bytes: config.server.max_body_bytes,
        auth_throttle: Arc::new(http::AuthThrottle::default()),
        trusted_proxies: Arc::from(config.server.trusted_proxies.as_slice()),
    };
    let address = listener.local_addr().ok();
    if let Some(address) = address {
        tracing::info!(%address, "listening; 503 until start-up is done");
    }
    let options = http::ServeOptions {
        tls: control.tls().cloned(),
        heartbeat: Some(control.clone()),
        ..http::ServeOptions::default()
    };
    let server = tokio::spawn(http::serve(
        listener,
        http::filter(state),
        stopped(),
        config.server.shutdown_timeout,
        options,
    ));
    let stop_serving = |server: tokio::task::JoinHandle<()>| {
        control.set_stopping();
        let _ = stop_send.send(true);
        async move {
            if let Err(err) = server.await {
                tracing::warn!(error = %err, "server task ended abnormally");
            }
        }
    };
    // READY means the directory answered: wait for it, or for shutdown.
    let mut shutdown = std::pin::pin!(shutdown);
    let mut wait = std::time::Duration::from_millis(200);
    loop {
        match service.directory().ping().await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(error = %err, retry_ms = wait.as_millis() as u64, "directory not answering yet")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => {
                stop_serving(server).await;
                return Ok(());
            }
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(5));
    }
    let replayed = match service::replay_intents(&service).await {
        Ok(replayed) => replayed,
        Err(err) => {
            stop_serving(server).await;
            return Err(RunError::Replay(err.to_string()));
        }
    };
    if replayed > 0 {
        tracing::info!(
            n_intents = replayed,
            "finished writes left by the previous run"
        );
    }
    let metrics_server = match config.server.metrics_listen {
        Some(address) => {
            let metrics_listener = match http::bind(address).await {
                Ok(listener) => listener,
                Err(err) => {
                    stop_serving(server).await;
                    return Err(RunError::Startup(format!("bind {address}: {err}")));
                }
            };
            if let Ok(bound) = metrics_listener.local_addr() {
                control.set_metrics_address(bound);
                tracing::info!(address = %bound, "serving metrics without authentication");
            }
            Some(tokio::spawn(http::serve(
                metrics_listener,
                http::metrics_filter(service.clone()),
                stopped(),
                config.server.shutdown_timeout,
                http::ServeOptions::default(),
            )))
        }
        None => None,
    };
    let health_checker = tokio::spawn(check_health(service.clone(), control.clone(), stopped()));
    // Puts back the entries of writes that failed transiently, once the directory answers.
    let repairer = tokio::spawn(reconcile::repair_after_failures(
        service.clone(),
        config.reconcile.clone(),
        stopped(),
    ));
    // Changes made in the directory are checked as they happen (`reconcile.follow`).
    let follower = tokio::spawn(reconcile::follow(
        service.clone(),
        config.reconcile.clone(),
        stop_send.subscribe(),
    ));
    // Reconciliation runs beside serving (first right away), under the same resource locks.
    let reconciler = tokio::spawn(reconcile::periodic(
        service,
        config.reconcile.clone(),
        stop_send.subscribe(),
    ));
    control.set_starting(false);
    if let Some(address) = address {
        tracing::info!(
            %address,
            base_path = %config.server.base_path,
            tls = control.tls().is_some(),
            "serving SCIM"
        );
    }
    // The accept loop runs; count it alive from READY on.
    control.beat_loop();
    ready();
    shutdown.await;
    stop_serving(server).await;
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    let _ = health_checker.await;
    if let Err(err) = repairer.await {
        tracing::warn!(error = %err, "repair task ended abnormally");
    }
    if let Err(err) = follower.await {
        tracing::warn!(error = %err, "following task ended abnormally");
    }
    if let Err(err) = reconciler.await {
        tracing::warn!(error = %err, "reconcile task ended abnormally");
    }
    Ok(())
}

/// Every few seconds until `stopped`: marks `control` unhealthy for good once the cache has
/// failed a write (so that the watchdog restarts the daemon), then pings the directory, whose
/// failures are logged and counted in the metrics but leave the daemon healthy: it keeps
/// answering 503 with `Retry-After` until the directory is back.
async fn check_health(
    service: Arc<service::Service>,
    control: Control,
    stopped: impl std::future::Future<Output = ()>,
) {
    let mut stopped = std::pin::pin!(stopped);
    let mut interval = tokio::time::interval(HEALTH_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = &mut stopped => return,
        }
        // First, so that a directory ping that runs into its timeout does not delay it.
        if service.store().write_failure().is_some() {
            control.set_cache_failed();
        }
        if let Err(err) = service.directory().ping().await {
            tracing::warn!(error = %err, "directory ping failed");
        }
    }
}

/// Opens the directory pool, the cache and the service for `config` (no connection yet).
pub fn open_service(config: Arc<config::Config>) -> Result<Arc<service::Service>, RunError> {
    open_service_with(config, store::Store::open)
}

/// `open_service` on the existing cache, changing nothing in it (a dry run).
pub fn open_service_existing(
    config: Arc<config::Config>,
) -> Result<Arc<service::Service>, RunError> {
    open_service_with(config, store::Store::open_existing)
}

fn open_service_with(
    config: Arc<config::Config>,
    open: fn(&std::path::Path) -> Result<store::Store, store::StoreError>,
) -> Result<Arc<service::Service>, RunError> {
    let mut directory = directory::Directory::new(&config.ldap)?;
    if config.reconcile.follow {
        directory.track_own_writes();
    }
    let directory = Arc::new(directory);
    let store = open(&config.cache.path)?;
    Ok(Arc::new(
        service::Service::new(config, directory, store).map_err(RunError::Startup)?,
    ))
}

/// Takes the exclusive lock of the cache (`<cache>.lock`) for as long as the returned file
/// lives, so that two processes never write one cache: a second daemon, or a `reconcile` run
/// that would repair while the daemon serves, is refused.
pub fn lock_cache(cache_path: &std::path::Path) -> Result<std::fs::File, RunError> {
    let mut lock_path = cache_path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = std::path::PathBuf::from(lock_path);
    store::create_private(&lock_path)
        .map_err(|err| RunError::Startup(format!("create {}: {err}", lock_path.display())))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|err| RunError::Startup(format!("open {}: {err}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(RunError::CacheBusy(lock_path)),
        Err(std::fs::TryLockError::Error(err)) => Err(RunError::Startup(format!(
            "lock {}: {err}",
            lock_path.display()
        ))),
    }
}

/// A random (version 4) UUID from the thread's CSPRNG (`rand::thread_rng`, seeded from the
/// system): unlike `Uuid::new_v4`, no system call per id, and every request takes one or two.
pub(crate) fn new_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

/// Counts one in `counter` for as long as it lives, even when the future holding it is dropped
/// (a connection's waiters, the writes in flight).
pub(crate) struct Counted<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Counted<'a> {
    pub(crate) fn new(counter: &'a std::sync::atomic::AtomicUsize) -> Counted<'a> {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn new_uuid_is_a_random_version_4_uuid() {
        let (a, b) = (super::new_uuid(), super::new_uuid());
        assert_eq!(a.get_version(), Some(uuid::Version::Random));
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(a, b);
    }
}
