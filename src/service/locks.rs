//! Per-key async locks: writes to one resource (or one name) are serialized, others run freely.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// A lock per key, created on demand and dropped when nobody holds or waits for it.
#[derive(Default)]
pub(crate) struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds the lock of one key; releasing it forgets the key when nobody else wants it.
pub(crate) struct KeyGuard<'a> {
    owner: &'a KeyedLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    /// Waits for and takes the lock of `key`.
    pub(crate) async fn lock(&self, key: String) -> KeyGuard<'_> {
        let guard = self.mutex(&key).lock_owned().await;
        KeyGuard {
            owner: self,
            key,
            guard: Some(guard),
        }
    }

    /// Takes the lock of `key` if nobody holds it.
    pub(crate) fn try_lock(&self, key: String) -> Option<KeyGuard<'_>> {
        let guard = self.mutex(&key).try_lock_owned().ok();
        // Built even on failure: dropping it forgets the key again when nobody else wants it.
        let guard = KeyGuard {
            owner: self,
            key,
            guard,
        };
        guard.guard.is_some().then_some(guard)
    }

    fn mutex(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(key.to_string()).or_default().clone()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self
            .owner
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Two references: the map's and none other (our guard is gone) means nobody waits.
        if locks
            .get(&self.key)
            .is_some_and(|mutex| Arc::strong_count(mutex) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KeyedLocks;

    #[tokio::test]
    async fn try_lock_takes_a_free_key_only_and_forgets_keys_nobody_wants() {
        let locks = KeyedLocks::default();
        let held = locks.try_lock("a".to_string());
        assert!(held.is_some());
        assert!(locks.try_lock("a".to_string()).is_none());
        assert!(locks.try_lock("b".to_string()).is_some());
        drop(held);
        let again = locks.lock("a".to_string()).await;
        drop(again);
        assert!(locks.locks.lock().unwrap().is_empty());
    }
}
