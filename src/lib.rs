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
//!   escaping in one place.
//! - [`store`]: the reconciliation cache (SQLite, WAL): resources as the IdP last set them,
//!   memberships as rows, the intent log; one writer thread with group commit.
//! - [`service`]: the use cases; orders every write as intent -> directory -> commit, and
//!   serializes writes per resource.
//! - [`http`]: warp filter, accept loop with graceful drain, routing, bearer auth (with a
//!   bounded per-client throttle of failed attempts), body limit, request ids. A handler
//!   extracts, calls one service function, replies.
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
//!   bind and password change, and bearer tokens are only ever compared as hashes.

pub mod check;
pub mod config;
pub mod demo;
pub mod directory;
pub mod http;
pub mod mapping;
pub mod scim;
pub mod service;
pub mod store;

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
}

/// Serves SCIM on `listener` until `shutdown` resolves, then drains in-flight requests.
///
/// Before serving, unfinished writes from a previous run are replayed, so that no write is
/// served out of order. `ready` is called once the listener serves (systemd's READY=1).
pub async fn run(
    config: config::Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
    ready: impl FnOnce(),
) -> Result<(), RunError> {
    let config = Arc::new(config);
    let directory = Arc::new(directory::Directory::new(&config.ldap)?);
    let store = store::Store::open(&config.cache.path)?;
    let service = Arc::new(
        service::Service::new(config.clone(), directory, store).map_err(RunError::Startup)?,
    );
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
            () = &mut shutdown => return Ok(()),
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(5));
    }
    let replayed = service::replay_intents(&service)
        .await
        .map_err(|err| RunError::Replay(err.to_string()))?;
    if replayed > 0 {
        tracing::info!(
            n_intents = replayed,
            "finished writes left by the previous run"
        );
    }
    let state = http::HttpState {
        service,
        auth: Arc::new(http::Authenticator::new(&config.auth)),
        base_path: Arc::from(config.server.base_path.as_str()),
        max_body_bytes: config.server.max_body_bytes,
        auth_throttle: Arc::new(http::AuthThrottle::default()),
    };
    let filter = http::filter(state);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(address = %addr, base_path = %config.server.base_path, "serving SCIM");
    }
    ready();
    http::serve(listener, filter, shutdown, config.server.shutdown_timeout).await;
    Ok(())
}
