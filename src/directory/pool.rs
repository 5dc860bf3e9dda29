//! A fixed set of bound LDAP connections, each reconnected with backoff when it breaks.
//!
//! ldap3 multiplexes many operations over one connection, so a slot hands out a clone of its
//! handle and never holds a lock across an operation. A broken slot reconnects on next use; while
//! its backoff runs, callers fail fast with `Unavailable` instead of queueing on a dead directory,
//! unless another slot has connected since: then the directory is back and the slot tries at once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings};
use secrecy::ExposeSecret;
use tokio::task::JoinHandle;

use super::DirectoryError;
use crate::config::LdapConfig;

/// Shortest and longest wait between reconnect attempts of one slot.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The pool of bound connections.
pub(crate) struct Pool {
    config: LdapConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    slots: Vec<tokio::sync::Mutex<Slot>>,
    next_slot: AtomicUsize,
    /// Operations waiting for a slot's lock (held while that slot connects).
    waiters: AtomicUsize,
    /// The pool's start, and how long after it a slot last connected (microseconds; 0 before
    /// the first).
    started: Instant,
    last_connected_us: AtomicU64,
}

/// The pool's state for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Slots (`ldap.pool_size`).
    pub size: usize,
    /// Slots holding an open, bound connection.
    pub connected: usize,
    /// Operations waiting for a slot.
    pub waiters: usize,
}

#[derive(Default)]
struct Slot {
    conn: Option<Conn>,
    /// When the last connect failed, and how long to wait before the next try.
    backoff: Option<(Instant, Duration)>,
}

pub(super) struct Conn {
    pub(super) ldap: Ldap,
    driver: JoinHandle<()>,
    health: Arc<Health>,
}

/// When a connection last carried an answer of the directory, to tell an operation that timed
/// out on a working connection (a slow modify of a huge group: others keep answering) from a
/// connection that died without closing.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Microseconds since the pool's start; 0: never.
    last_answer_us: AtomicU64,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The driver task belongs to this connection; it ends with it.
        self.driver.abort();
    }
}

impl Pool {
    /// Builds the pool without connecting; connections open on first use.
    pub(crate) fn new(config: LdapConfig) -> Result<Pool, DirectoryError> {
        let tls = match &config.ca_file {
            Some(ca_file) => Some(Arc::new(tls_config(ca_file)?)),
            None => None,
        };
        let slots = (0..config.pool_size)
            .map(|_| tokio::sync::Mutex::new(Slot::default()))
            .collect();
        Ok(Pool {
            config,
            tls,
            slots,
            next_slot: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            started: Instant::now(),
            last_connected_us: AtomicU64::new(0),
        })
    }

    /// The configured per-operation timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// A bound handle from the next slot, connecting it first when needed.
    pub(crate) async fn get(&self) -> Result<PooledLdap, DirectoryError> {
        let slot_idx = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = match self.slots[slot_idx].try_lock() {
            Ok(slot) => slot,
            Err(_) => {
                let _waiting = crate::Counted::new(&self.waiters);
                self.slots[slot_idx].lock().await
            }
        };
        if let Some(conn) = &mut slot.conn {
            if !conn.ldap.is_closed() {
                return Ok(PooledLdap {
                    ldap: conn.ldap.clone(),
                    slot_idx,
                    health: conn.health.clone(),
                });
            }
            slot.conn = None;
        }
        if let Some((failed_at, wait)) = slot.backoff {
            if failed_at.elapsed() < wait && !self.connected_since(failed_at) {
                return Err(DirectoryError::Unavailable(
                    "reconnect backoff in progress".to_string(),
                ));
            }
        }
        match self.connect().await {
            Ok(conn) => {
                self.last_connected_us
                    .fetch_max(self.now_us(), Ordering::Relaxed);
                let pooled = PooledLdap {
                    ldap: conn.ldap.clone(),
                    slot_idx,
                    health: conn.health.clone(),
                };
                slot.conn = Some(conn);
                slot.backoff = None;
                Ok(pooled)
            }
            Err(err) => {
                let wait = match slot.backoff {
                    Some((_, wait)) => (wait * 2).min(BACKOFF_MAX),
                    None => BACKOFF_MIN,
                };
                slot.backoff = Some((Instant::now(), wait));
                Err(err)
            }
        }
    }

    /// Whether some slot connected after `instant`.
    fn connected_since(&self, instant: Instant) -> bool {
        match self.last_connected_us.load(Ordering::Relaxed) {
            0 => false,
            us => self.started + Duration::from_micros(us) > instant,
        }
    }

    /// Slots, connected slots (a slot busy connecting counts as not connected) and waiters.
    pub(crate) fn stats(&self) -> PoolStats {
        let connected = self
            .slots
            .iter()
            .filter(|slot| {
                slot.try_lock().is_ok_and(|mut slot| {
                    slot.conn
                        .as_mut()
                        .is_some_and(|conn| !conn.ldap.is_closed())
                })
            })
            .count();
        PoolStats {
            size: self.slots.len(),
            connected,
            waiters: self.waiters.load(Ordering::Relaxed),
        }
    }

    /// Microseconds since the pool started, never 0.
    pub(crate) fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// After an operation on `pooled` that began at `began_us` (`now_us`) ended with `result`:
    /// notes an answer of the directory, or drops the connection when it is lost, so that the
    /// next use reconnects. Other operations share the connection, so only a lost connection
    /// is dropped: one the library saw fail, or one on which an operation timed out and
    /// nothing has answered since it began. A server's refusal, busy or unavailable included,
    /// came over a working connection.
    pub(crate) async fn after<T>(
        &self,
        pooled: &PooledLdap,
        began_us: u64,
        result: &Result<T, DirectoryError>,
    ) {
        let lost = match result {
            Err(err) => err.connection_lost(),
            Ok(_) => false,
        };
        let answered = match result {
            Ok(_) => true,
            Err(err) => err.is_answer(),
        };
        if answered {
            pooled
                .health
                .last_answer_us
                .fetch_max(self.now_us(), Ordering::Relaxed);
            return;
        }
        let silent = matches!(result, Err(DirectoryError::Timeout))
            && pooled.health.last_answer_us.load(Ordering::Relaxed) < began_us;
        if lost || silent {
            self.discard(pooled).await;
        }
    }

    /// Drops the connection `pooled` came from, unless the slot holds another by now.
    async fn discard(&self, pooled: &PooledLdap) {
        if let Some(slot) = self.slots.get(pooled.slot_idx) {
            let mut slot = slot.lock().await;
            if slot
                .conn
                .as_ref()
                .is_some_and(|conn| Arc::ptr_eq(&conn.health, &pooled.health))
            {
                slot.conn = None;
            }
        }
    }

    /// Opens and binds one connection, counted in the metrics as a `bind`. The pool's slots
    /// hold such connections; a long-lived search (following changes) gets one of its own, so
    /// that it never holds a slot. Operations on it have no timeout unless the caller sets one.
    pub(super) async fn connect(&self) -> Result<Conn, DirectoryError> {
        let started = Instant::now();
        let result = self.connect_and_bind().await;
        let class = match &result {
            Ok(_) => crate::metrics::OperationResult::Ok,
            Err(err) if err.is_transient() => crate::metrics::OperationResult::Transient,
            Err(_) => crate::metrics::OperationResult::Permanent,
        };
        crate::metrics::record_directory_operation("bind", class, started.elapsed());
        result
    }

    async fn connect_and_bind(&self) -> Result<Conn, DirectoryError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.config.timeout)
            .set_starttls(self.config.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.config.url)
            .await
            .map_err(DirectoryError::from)?;
        let driver = tokio::spawn(async move {
            if let Err(err) = conn.drive().await {
                tracing::debug!(error = %err, "directory connection closed");
            }
        });
        let conn = Conn {
            ldap: ldap.clone(),
            driver,
            health: Arc::new(Health::default()),
        };
        ldap.with_timeout(self.config.timeout);
        ldap.simple_bind(
            &self.config.bind_dn,
            self.config.bind_password.expose_secret(),
        )
        .await
        .map_err(DirectoryError::from)?
        .success()
        .map_err(DirectoryError::from)?;
        tracing::debug!(url = %self.config.url, "directory connection bound");
        Ok(conn)
    }
}

/// A handle borrowed from the pool, with the slot it came from.
pub(crate) struct PooledLdap {
    pub(crate) ldap: Ldap,
    pub(crate) slot_idx: usize,
    health: Arc<Health>,
}

/// A rustls client configuration trusting the certificates in `ca_file`.
fn tls_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, DirectoryError> {
    let pem = std::fs::read(ca_file)
        .map_err(|err| DirectoryError::Client(format!("read {}: {err}", ca_file.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert
            .map_err(|err| DirectoryError::Client(format!("parse {}: {err}", ca_file.display())))?;
        roots
            .add(cert)
            .map_err(|err| DirectoryError::Client(format!("load {}: {err}", ca_file.display())))?;
    }
    if roots.is_empty() {
        return Err(DirectoryError::Client(format!(
            "{} holds no certificate",
            ca_file.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
        .map_err(|err| DirectoryError::Client(format!("tls setup: {err}")))
}
