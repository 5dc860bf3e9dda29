//! scim2ldap's own writes, as a follower of the directory's changes needs to tell them from
//! changes made by hand: each write counts one change message expected for its entry before
//! it is sent (its message may come before its answer), a write that fails takes it back,
//! and the follower takes one off for each message it passes over. Kept only while changes
//! are followed.
//!
//! `modifiersName` alone cannot tell the two apart when people change entries with the same
//! bind DN as the daemon; the tally tells apart all but a hand change made with that DN while
//! a message of the daemon's own is still expected for the same entry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::mapping::dn_key;

/// How long an expected message is waited for; one that never came (the follower was
/// disconnected) stops counting after this.
const EXPECTED_FOR: Duration = Duration::from_secs(60);

/// Entries tracked before the stale ones are dropped.
const PRUNE_FROM: usize = 10_000;

/// Messages expected for the entries the daemon wrote, by DN key.
#[derive(Debug, Default)]
pub struct OwnWrites {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// DN key: (messages expected, last write).
    expected: HashMap<String, (u32, Instant)>,
    /// Size at which stale entries are dropped next.
    prune_at: usize,
}

impl OwnWrites {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes a write about to be sent for the entry at `dn` (its DN after the write).
    pub fn wrote(&self, dn: &str) {
        self.wrote_at(dn, Instant::now());
    }

    /// Notes that a write counted by `wrote` got its answer: its message is waited for from
    /// now on (the write may have queued for a while).
    pub fn answered(&self, dn: &str) {
        let key = dn_key(dn);
        if let Some((_, at)) = self.inner().expected.get_mut(&key) {
            *at = Instant::now();
        }
    }

    /// Takes back `wrote` for a write that failed.
    pub fn failed(&self, dn: &str) {
        let key = dn_key(dn);
        let mut inner = self.inner();
        if let Some((count, _)) = inner.expected.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                inner.expected.remove(&key);
            }
        }
    }

    fn wrote_at(&self, dn: &str, now: Instant) {
        let key = dn_key(dn);
        let mut inner = self.inner();
        let slot = inner.expected.entry(key).or_insert((0, now));
        if now.duration_since(slot.1) > EXPECTED_FOR {
            slot.0 = 0;
        }
        slot.0 = slot.0.saturating_add(1);
        slot.1 = now;
        if inner.expected.len() >= inner.prune_at.max(PRUNE_FROM) {
            inner
                .expected
                .retain(|_, (_, at)| now.duration_since(*at) <= EXPECTED_FOR);
            inner.prune_at = inner.expected.len() * 2;
        }
    }

    /// Whether a change message for `dn` is one of the daemon's own writes; if so, it is
    /// taken off the tally.
    pub fn take(&self, dn: &str) -> bool {
        self.take_at(dn, Instant::now())
    }

    fn take_at(&self, dn: &str, now: Instant) -> bool {
        let key = dn_key(dn);
        let mut inner = self.inner();
        let Some((count, at)) = inner.expected.get_mut(&key) else {
            return false;
        };
        let ours = *count > 0 && now.duration_since(*at) <= EXPECTED_FOR;
        *count = count.saturating_sub(1);
        if !ours || *count == 0 {
            inner.expected.remove(&key);
        }
        ours
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::OwnWrites;

    #[test]
    fn each_write_answers_one_message_for_a_minute() {
        let own = OwnWrites::default();
        let t0 = Instant::now();
        own.wrote_at("uid=a,ou=people,dc=example,dc=com", t0);
        own.wrote_at("UID=A,OU=People,dc=example,dc=com", t0);
        // Two writes, two messages; a third is somebody else's.
        assert!(own.take_at("uid=a,ou=people,dc=example,dc=com", t0));
        assert!(own.take_at("uid=a,ou=people,dc=example,dc=com", t0));
        assert!(!own.take_at("uid=a,ou=people,dc=example,dc=com", t0));
        assert!(!own.take_at("uid=b,ou=people,dc=example,dc=com", t0));
        // A write that failed sends no message.
        own.wrote_at("uid=e,dc=x", t0);
        own.failed("uid=e,dc=x");
        assert!(!own.take_at("uid=e,dc=x", t0));
        // A message that never came stops counting.
        own.wrote_at("uid=c,ou=people,dc=example,dc=com", t0);
        let later = t0 + Duration::from_secs(61);
        assert!(!own.take_at("uid=c,ou=people,dc=example,dc=com", later));
        own.wrote_at("uid=d,ou=people,dc=example,dc=com", t0);
        own.wrote_at("uid=d,ou=people,dc=example,dc=com", later);
        assert!(own.take_at("uid=d,ou=people,dc=example,dc=com", later));
        assert!(!own.take_at("uid=d,ou=people,dc=example,dc=com", later));
    }

    #[test]
    fn stale_entries_are_dropped_as_the_tally_grows() {
        let own = OwnWrites::default();
        let t0 = Instant::now();
        for i in 0..10_000 {
            own.wrote_at(&format!("uid=u{i},dc=x"), t0);
        }
        // None stale yet: all kept, and the next pruning waits for twice as many.
        assert_eq!(own.inner().expected.len(), 10_000);
        let later = t0 + Duration::from_secs(120);
        for i in 0..10_000 {
            own.wrote_at(&format!("uid=v{i},dc=x"), later);
        }
        assert_eq!(own.inner().expected.len(), 10_000);
        assert!(own.take_at("uid=v1,dc=x", later));
        assert!(!own.take_at("uid=u1,dc=x", later));
    }
}
