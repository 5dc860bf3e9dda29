//! Work waiting per key, applied in batches by one task per key at a time: how member changes
//! waiting for one group (`service`) and single-value changes waiting for one entry
//! (`directory`) come to share one directory modify.
//!
//! A key is present from the first push until its task finds the queue empty, so whoever pushes
//! while it is present joins the next batch, and whoever pushes after starts a new task.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

/// Items waiting, by key.
pub(crate) struct KeyedQueue<K, T> {
    waiting: Mutex<HashMap<K, Vec<T>>>,
}

impl<K, T> Default for KeyedQueue<K, T> {
    fn default() -> Self {
        KeyedQueue {
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, T> KeyedQueue<K, T> {
    fn waiting(&self) -> MutexGuard<'_, HashMap<K, Vec<T>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `item`; true when no task serves `key` yet (the caller starts one).
    pub(crate) fn push(&self, key: &K, item: T) -> bool {
        let mut waiting = self.waiting();
        match waiting.get_mut(key) {
            Some(queue) => {
                queue.push(item);
                false
            }
            None => {
                waiting.insert(key.clone(), vec![item]);
                true
            }
        }
    }

    /// The oldest items of `key` whose `weight`s add up to at most `max_weight`, and at least
    /// one; `None`, with the key forgotten, when none wait.
    pub(crate) fn take(
        &self,
        key: &K,
        max_weight: usize,
        weight: impl Fn(&T) -> usize,
    ) -> Option<Vec<T>> {
        let mut waiting = self.waiting();
        let queue = waiting.get_mut(key)?;
        if queue.is_empty() {
            waiting.remove(key);
            return None;
        }
        let mut total = 0;
        let count = queue
            .iter()
            .take_while(|item| {
                total += weight(item);
                total <= max_weight
            })
            .count()
            .max(1);
        Some(queue.drain(..count).collect())
    }

    /// A guard for the task that serves `key`: dropped before `disarm` (the task panicked or
    /// was cancelled mid-batch), it forgets the key and the items waiting, whose waiters then
    /// get an error at once, and the next push starts a new task. Without it, every later push
    /// would join a queue that no task serves, and wait forever.
    pub(crate) fn serving<'q>(&'q self, key: &'q K) -> Serving<'q, K, T> {
        Serving {
            queue: self,
            key,
            armed: true,
        }
    }

    /// Items waiting, all keys together.
    pub(crate) fn len(&self) -> usize {
        self.waiting().values().map(Vec::len).sum()
    }

    /// Whether a task serves `key`.
    pub(crate) fn is_served(&self, key: &K) -> bool {
        self.waiting().contains_key(key)
    }
}

/// See [`KeyedQueue::serving`].
pub(crate) struct Serving<'q, K: Eq + Hash + Clone, T> {
    queue: &'q KeyedQueue<K, T>,
    key: &'q K,
    armed: bool,
}

impl<K: Eq + Hash + Clone, T> Serving<'_, K, T> {
    /// The task found the queue empty (`take` forgot the key): nothing to undo.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl<K: Eq + Hash + Clone, T> Drop for Serving<'_, K, T> {
    fn drop(&mut self) {
        if self.armed {
            self.queue.waiting().remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KeyedQueue;

    #[test]
    fn batches_respect_the_weight_and_a_key_is_served_until_found_empty() {
        let queue: KeyedQueue<&str, usize> = KeyedQueue::default();
        assert!(queue.push(&"g", 3));
        assert!(queue.push(&"h", 1), "another key, another task");
        for weight in [3, 5, 20, 1] {
            assert!(!queue.push(&"g", weight));
        }
        assert_eq!(queue.len(), 6, "every key's items");
        let take = |max| queue.take(&"g", max, |weight: &usize| *weight);
        assert_eq!(take(10), Some(vec![3, 3]));
        assert_eq!(queue.len(), 4);
        assert_eq!(take(10), Some(vec![5]));
        assert_eq!(take(10), Some(vec![20]), "at least one, however heavy");
        assert!(!queue.push(&"g", 2), "still served");
        assert_eq!(take(10), Some(vec![1, 2]));
        assert!(queue.is_served(&"g"));
        assert_eq!(take(10), None);
        assert!(!queue.is_served(&"g"));
        assert!(
            queue.push(&"g", 1),
            "forgotten once found empty: a new task"
        );
    }

    #[test]
    fn a_task_that_dies_mid_batch_leaves_no_key_served_by_nobody() {
        let queue: KeyedQueue<&str, usize> = KeyedQueue::default();
        assert!(queue.push(&"g", 1));
        let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _serving = queue.serving(&"g");
            let _ = queue.take(&"g", 10, |_| 1);
            assert!(!queue.push(&"g", 2), "joins the running task");
            panic!("a batch that panics");
        }));
        assert!(died.is_err());
        assert!(!queue.is_served(&"g"), "the dead task's key is forgotten");
        assert_eq!(queue.len(), 0, "with what waited for it");
        assert!(queue.push(&"g", 3), "the next push starts a new task");

        // A task that ends normally disarms it: a task started after leaves its key alone.
        let serving = queue.serving(&"g");
        assert_eq!(queue.take(&"g", 10, |_| 1), Some(vec![3]));
        assert_eq!(queue.take(&"g", 10, |_| 1), None);
        serving.disarm();
        assert!(queue.push(&"g", 4));
        assert!(queue.is_served(&"g"));
    }
}
