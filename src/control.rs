//! What a running daemon changes without a restart, and the health it reports to systemd.
//!
//! [`Control`] holds the accepted bearer tokens and the listener's TLS acceptor; [`Control::reload`]
//! swaps both from a new configuration at once, or neither (SIGHUP: token rotation and
//! certificate renewal). It also holds the daemon's own health for the systemd watchdog: the
//! accept loop's heartbeat and whether the cache can still make writes durable. The directory
//! is not part of it: while the directory is down the daemon keeps answering (503 with
//! `Retry-After`, `/readyz` not ready), and a restart would not bring the directory back.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::http::Authenticator;
use crate::tls;

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file did not load or validate.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The new certificate or key could not be used.
    #[error("server.tls: {0}")]
    Tls(#[from] tls::TlsError),
    /// HTTPS was turned on or off: the listener keeps its mode until a restart.
    #[error("HTTPS cannot be turned on or off by a reload; restart the service")]
    TlsMode,
}

/// Shared handle on the reloadable parts and heartbeats of one daemon.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    authenticator: RwLock<Arc<Authenticator>>,
    tls: Option<tls::Acceptor>,
    /// Milliseconds since `epoch` of the last accept-loop beat; 0: never.
    epoch: Instant,
    loop_beat: AtomicU64,
    stopping: AtomicBool,
    /// Start-up runs: waiting for the directory and replaying unfinished writes.
    starting: AtomicBool,
    /// The cache can no longer make writes durable (a failed fsync): only a restart helps.
    cache_failed: AtomicBool,
    metrics_address: OnceLock<std::net::SocketAddr>,
}

impl Control {
    /// The tokens and TLS certificate of `config`.
    pub fn new(config: &Config) -> Result<Control, tls::TlsError> {
        let tls = match &config.server.tls {
            Some(files) => Some(tls::Acceptor::new(files)?),
            None => None,
        };
        Ok(Control {
            inner: Arc::new(Inner {
                authenticator: RwLock::new(Arc::new(Authenticator::new(&config.auth))),
                tls,
                epoch: Instant::now(),
                loop_beat: AtomicU64::new(0),
                stopping: AtomicBool::new(false),
                starting: AtomicBool::new(false),
                cache_failed: AtomicBool::new(false),
                metrics_address: OnceLock::new(),
            }),
        })
    }

    /// The token check in force.
    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.inner
            .authenticator
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The TLS acceptor, when the listener speaks HTTPS.
    pub fn tls(&self) -> Option<&tls::Acceptor> {
        self.inner.tls.as_ref()
    }

    /// Takes the tokens and the TLS certificate of `config`; other settings need a restart.
    /// Either everything is taken or nothing: on error the running configuration stays.
    pub fn reload(&self, config: &Config) -> Result<(), ReloadError> {
        let tls_config = match (&self.inner.tls, &config.server.tls) {
            (Some(_), Some(files)) => Some(tls::server_config(files)?),
            (None, None) => None,
            _ => return Err(ReloadError::TlsMode),
        };
        let authenticator = Arc::new(Authenticator::new(&config.auth));
        if let (Some(acceptor), Some(tls_config)) = (&self.inner.tls, tls_config) {
            acceptor.replace(tls_config);
        }
        *self
            .inner
            .authenticator
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = authenticator;
        Ok(())
    }

    /// Reads `path` (and the environment and credentials) again and reloads from it; logs the
    /// outcome. A bad file leaves the running configuration in force.
    pub fn reload_file(&self, path: &Path) -> Result<(), ReloadError> {
        let result = crate::config::load(path, None)
            .map_err(ReloadError::from)
            .and_then(|config| {
                self.reload(&config)?;
                Ok(config)
            });
        match result {
            Ok(config) => {
                let names: Vec<&str> = config.auth.tokens.iter().map(|t| &*t.name).collect();
                tracing::info!(
                    tokens = %names.join(","),
                    tls = config.server.tls.is_some(),
                    "configuration reloaded: bearer tokens and TLS certificate in force; other settings take effect on restart"
                );
                Ok(())
            }
            Err(err) => {
                tracing::error!(error = %err, "reload refused; the previous configuration stays in force");
                Err(err)
            }
        }
    }

    /// The accept loop is alive.
    pub fn beat_loop(&self) {
        self.inner.loop_beat.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Shutdown began: draining counts as healthy.
    pub fn set_stopping(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    /// The cache's fsync failed: the daemon is unhealthy for good, so that the watchdog
    /// restarts it and the restart replays what the cache holds.
    pub fn set_cache_failed(&self) {
        self.inner.cache_failed.store(true, Ordering::Relaxed);
    }

    /// Start-up began (`true`) or is done (`false`). While it runs, requests are answered but
    /// not served: `/healthz` says alive, the rest 503.
    pub fn set_starting(&self, starting: bool) {
        self.inner.starting.store(starting, Ordering::Relaxed);
    }

    /// Whether start-up is still running.
    pub fn is_starting(&self) -> bool {
        self.inner.starting.load(Ordering::Relaxed)
    }

    /// Ok when the accept loop gave a sign of life within `max_age` and the cache has not
    /// failed (or the daemon is draining); otherwise what is wrong. Whether the directory
    /// answers plays no part: that is `/readyz`'s and the metrics' business.
    pub fn health(&self, max_age: Duration) -> Result<(), &'static str> {
        if self.inner.stopping.load(Ordering::Relaxed) {
            return Ok(());
        }
        if self.inner.cache_failed.load(Ordering::Relaxed) {
            return Err("the cache's fsync failed; a restart replays what it holds");
        }
        let now = self.now_ms();
        let max_age = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let at = self.inner.loop_beat.load(Ordering::Relaxed);
        if at == 0 || now.saturating_sub(at) > max_age {
            return Err("the accept loop is not running");
        }
        Ok(())
    }

    /// The address of the metrics listener, once bound.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.inner.metrics_address.get().copied()
    }

    pub(crate) fn set_metrics_address(&self, address: std::net::SocketAddr) {
        let _ = self.inner.metrics_address.set(address);
    }

    fn now_ms(&self) -> u64 {
        // +1 so that a beat in the first millisecond is not taken for "never".
        u64::try_from(self.inner.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_failed_cache_makes_the_daemon_unhealthy_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "[auth]\nbearer_tokens = [\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"]\n\
             [ldap]\nurl = \"ldap://127.0.0.1:389\"\nbind_dn = \"cn=admin,dc=example,dc=com\"\n\
             bind_password = \"secret\"\n[users]\nbase_dn = \"ou=people,dc=example,dc=com\"\n\
             [groups]\nbase_dn = \"ou=groups,dc=example,dc=com\"\n[cache]\npath = \"/tmp/c.db\"\n",
        )
        .unwrap();
        let config = crate::config::load(&path, Some(Default::default())).unwrap();
        let control = super::Control::new(&config).unwrap();
        assert_eq!(
            control.health(Duration::from_secs(60)),
            Err("the accept loop is not running")
        );
        control.beat_loop();
        assert_eq!(control.health(Duration::from_secs(60)), Ok(()));
        control.set_cache_failed();
        assert!(control.health(Duration::from_secs(60)).is_err());
        control.beat_loop();
        assert!(control.health(Duration::from_secs(60)).is_err());
    }
}
