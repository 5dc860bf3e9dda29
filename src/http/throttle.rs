//! Slows down token guessing: after `max_failures` failed authentications from one client
//! within `window`, that client gets 429 with `Retry-After` until the window ends, whatever
//! token it sends (a correct guess must not be told apart from a wrong one).
//!
//! Clients are keyed by IP address, an IPv6 address by its /64 (one host usually owns the whole
//! prefix). Behind a reverse proxy on the same host every request comes from a loopback address,
//! so ten bad tokens from anywhere would lock every IdP out: for a loopback peer the client is
//! the address the proxy appended to `X-Forwarded-For` (`client_address`). The map holds at most `capacity` clients: expired entries go first, then the
//! entry whose window started earliest, so a flood of addresses costs bounded memory and
//! cannot grow the map.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed authentications allowed per client and window before it is throttled.
pub const MAX_FAILURES: u32 = 10;
/// How long failures are counted, and how long a throttled client waits.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most clients tracked at once.
pub const CAPACITY: usize = 10_000;

/// The client a request counts against: `peer`, or for a trusted proxy (`server.trusted_proxies`)
/// the last address in `X-Forwarded-For`, the one the proxy appended (anything before it is
/// what the client claimed).
pub fn client_address(peer: IpAddr, headers: &http::HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

/// Failed authentications per client.
pub struct AuthThrottle {
    max_failures: u32,
    window: Duration,
    capacity: usize,
    clients: Mutex<HashMap<ClientKey, Failures>>,
}

/// A client: an IPv4 address or an IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6Prefix(u64),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    window_start: Instant,
    n_failures: u32,
}

impl Default for AuthThrottle {
    fn default() -> AuthThrottle {
        AuthThrottle::new(MAX_FAILURES, WINDOW, CAPACITY)
    }
}

impl AuthThrottle {
    /// A throttle allowing `max_failures` per `window`, tracking at most `capacity` clients.
    pub fn new(max_failures: u32, window: Duration, capacity: usize) -> AuthThrottle {
        AuthThrottle {
            max_failures,
            window,
            capacity: capacity.max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(seconds to wait)` when `peer` is throttled at `now`.
    pub fn blocked(&self, peer: IpAddr, now: Instant) -> Option<u64> {
        let clients = self.lock();
        let failures = clients.get(&ClientKey::of(peer))?;
        let elapsed = now.saturating_duration_since(failures.window_start);
        if failures.n_failures < self.max_failures || elapsed >= self.window {
            return None;
        }
        // Round up, so that a client retrying on time is not refused again.
        let remaining = self.window - elapsed;
        Some(remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0))
    }

    /// Counts a failed authentication of `peer` at `now`; true when it is the one that blocks
    /// the client (so that the block is logged once, not on every refused request).
    pub fn record_failure(&self, peer: IpAddr, now: Instant) -> bool {
        let key = ClientKey::of(peer);
        let mut clients = self.lock();
        if let Some(failures) = clients.get_mut(&key) {
            if now.saturating_duration_since(failures.window_start) >= self.window {
                *failures = Failures {
                    window_start: now,
                    n_failures: 1,
                };
            } else {
                failures.n_failures = failures.n_failures.saturating_add(1);
            }
            return failures.n_failures == self.max_failures;
        }
        if clients.len() >= self.capacity {
            let window = self.window;
            clients.retain(|_, failures| {
                now.saturating_duration_since(failures.window_start) < window
            });
        }
        if clients.len() >= self.capacity {
            let oldest = clients
                .iter()
                .min_by_key(|(_, failures)| failures.window_start)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                clients.remove(&oldest);
            }
        }
        clients.insert(
            key,
            Failures {
                window_start: now,
                n_failures: 1,
            },
        );
        self.max_failures == 1
    }

    /// Forgets the failures of `peer` after it authenticated.
    pub fn record_success(&self, peer: IpAddr) {
        self.lock().remove(&ClientKey::of(peer));
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Failures>> {
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ClientKey {
    fn of(peer: IpAddr) -> ClientKey {
        match peer {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(u32::from(v4)),
                None => ClientKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[cfg(test)]
mod tests;
