//! Single-value changes to one attribute of one entry that wait for each other go to the
//! directory as one modify.
//!
//! Every user write that touches its groups (a delete, a suspension that removes memberships, a
//! rename) changes one `member` value in each group, inside its own plan. When an IdP offboards a
//! crowd, those changes meet on the same large group, and OpenLDAP's back-mdb rewrites the whole
//! member list for each of them; merged, the rewrite is paid once per batch. Each change still
//! completes only when its value is in place (or, for the batch, when the modify succeeded).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::DirectoryError;

/// Most changes merged into one modify (the rest wait for the next).
const MAX_BATCH: usize = 1000;

/// An entry's DN and an attribute name.
pub(super) type Key = (String, String);

/// One value to add or delete, and where its result goes.
pub(super) struct ValueChange {
    pub(super) add: bool,
    pub(super) value: String,
    pub(super) reply: oneshot::Sender<Result<(), DirectoryError>>,
}

/// The changes waiting, by entry and attribute. A key is present while a task applies its
/// changes.
#[derive(Default)]
pub(super) struct ValueQueue {
    waiting: Mutex<HashMap<Key, Vec<ValueChange>>>,
}

impl ValueQueue {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<ValueChange>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a change; true when no task is applying changes to this key (the caller starts
    /// one).
    pub(super) fn push(&self, key: &Key, change: ValueChange) -> bool {
        let mut waiting = self.waiting();
        match waiting.get_mut(key) {
            Some(queue) => {
                queue.push(change);
                false
            }
            None => {
                waiting.insert(key.clone(), vec![change]);
                true
            }
        }
    }

    /// The oldest changes waiting for `key`, at most `MAX_BATCH`; `None` (and the key
    /// forgotten, so that the next change starts a new task) when none wait.
    pub(super) fn take(&self, key: &Key) -> Option<Vec<ValueChange>> {
        let mut waiting = self.waiting();
        let queue = waiting.get_mut(key)?;
        if queue.is_empty() {
            waiting.remove(key);
            return None;
        }
        let n = queue.len().min(MAX_BATCH);
        Some(queue.drain(..n).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::{Key, ValueChange, ValueQueue, MAX_BATCH};

    fn change(value: &str) -> ValueChange {
        ValueChange {
            add: true,
            value: value.to_string(),
            reply: tokio::sync::oneshot::channel().0,
        }
    }

    #[test]
    fn a_key_stays_taken_until_its_queue_is_found_empty() {
        let queue = ValueQueue::default();
        let key: Key = ("cn=g".to_string(), "member".to_string());
        let other: Key = ("cn=h".to_string(), "member".to_string());
        assert!(queue.push(&key, change("a")));
        assert!(queue.push(&other, change("x")));
        assert!(!queue.push(&key, change("b")));
        let batch = queue.take(&key).expect("two waiting");
        assert_eq!(
            batch.iter().map(|c| c.value.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(!queue.push(&key, change("c")), "still being applied");
        assert_eq!(queue.take(&key).expect("one waiting").len(), 1);
        assert!(queue.take(&key).is_none());
        assert!(queue.push(&key, change("d")), "forgotten once empty");
        for k in 0..MAX_BATCH + 5 {
            queue.push(&key, change(&k.to_string()));
        }
        assert_eq!(queue.take(&key).expect("a full batch").len(), MAX_BATCH);
        assert_eq!(queue.take(&key).expect("the rest").len(), 6);
    }
}
