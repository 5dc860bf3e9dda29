//! Suspect resources: writes that failed with a transient directory error may have been applied
//! in whole or in part (the reply was lost), and writes the directory refused after an earlier
//! operation of theirs succeeded were applied in part, while the cache kept the previous state.
//! Each such resource is remembered here until its entry has been put back to the cached state.
//!
//! In memory only: after a restart the start-up reconciliation covers what was left.

use std::collections::HashMap;
use std::sync::Mutex;

use secrecy::SecretString;

use crate::store::Kind;

/// At most this many suspects are kept; beyond it a full reconciliation run takes over.
pub(crate) const MAX_SUSPECTS: usize = 10_000;

/// An entry a failed plan added (a create).
#[derive(Debug, Clone)]
pub(crate) struct FailedAdd {
    /// Where the plan added it.
    pub dn: String,
    /// The resource's name (`userName`, `displayName`), whose lock a create holds.
    pub name: String,
    /// The add found an entry there and took it over; that entry is never removed.
    pub adopted: bool,
}

/// One resource whose entry may not match the cache.
#[derive(Debug, Clone)]
pub(crate) struct Suspect {
    pub kind: Kind,
    pub id: String,
    /// DNs the failed plan may have left the entry at (rename targets).
    pub dns: Vec<String>,
    /// The failed plan added an entry.
    pub added: Option<FailedAdd>,
    /// The failed plan changed group member values (a user's memberships).
    pub touched_groups: bool,
    /// Password hashes of the entry before the failed plan deleted it; memory only.
    pub password_hashes: Vec<SecretString>,
}

impl Suspect {
    /// A suspect with nothing known beyond its kind and id.
    pub(crate) fn new(kind: Kind, id: String) -> Suspect {
        Suspect {
            kind,
            id,
            dns: Vec::new(),
            added: None,
            touched_groups: false,
            password_hashes: Vec::new(),
        }
    }

    /// Folds what an earlier failure of the same resource knew into this one.
    fn absorb(&mut self, older: Suspect) {
        for dn in older.dns {
            if !self.dns.iter().any(|have| have.eq_ignore_ascii_case(&dn)) {
                self.dns.push(dn);
            }
        }
        if self.added.is_none() {
            self.added = older.added;
        }
        self.touched_groups |= older.touched_groups;
        if self.password_hashes.is_empty() {
            self.password_hashes = older.password_hashes;
        }
    }
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<(Kind, String), Suspect>,
    /// A suspect was dropped because the set was full.
    overflowed: bool,
}

/// The suspect set, and a wake-up for whoever repairs it.
#[derive(Default)]
pub(crate) struct Suspects {
    inner: Mutex<Inner>,
    added: tokio::sync::Notify,
}

impl Suspects {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers `suspect` (merged with an earlier one of the same resource) and wakes the
    /// repairer. When the set is full it is dropped and a full run is asked for instead.
    pub(crate) fn insert(&self, mut suspect: Suspect) {
        {
            let mut inner = self.inner();
            let key = (suspect.kind, suspect.id.clone());
            if let Some(older) = inner.by_key.remove(&key) {
                suspect.absorb(older);
                inner.by_key.insert(key, suspect);
            } else if inner.by_key.len() >= MAX_SUSPECTS {
                if !inner.overflowed {
                    tracing::warn!(
                        max = MAX_SUSPECTS,
                        "too many entries to check after failed writes; a full reconciliation run will follow"
                    );
                }
                inner.overflowed = true;
            } else {
                inner.by_key.insert(key, suspect);
            }
        }
        self.added.notify_one();
    }

    /// Takes every suspect, users first, and whether some were dropped (clearing both).
    pub(crate) fn take(&self) -> (Vec<Suspect>, bool) {
        let mut inner = self.inner();
        let mut suspects: Vec<Suspect> = inner.by_key.drain().map(|(_, s)| s).collect();
        suspects.sort_by_key(|s| (s.kind == Kind::Group, s.id.clone()));
        (suspects, std::mem::take(&mut inner.overflowed))
    }

    /// Puts back a suspect whose repair failed transiently, without waking the repairer (the
    /// next tick retries).
    pub(crate) fn put_back(&self, suspect: Suspect) {
        let mut inner = self.inner();
        let key = (suspect.kind, suspect.id.clone());
        match inner.by_key.remove(&key) {
            Some(newer) => {
                let mut newer = newer;
                newer.absorb(suspect);
                inner.by_key.insert(key, newer);
            }
            None if inner.by_key.len() >= MAX_SUSPECTS => inner.overflowed = true,
            None => {
                inner.by_key.insert(key, suspect);
            }
        }
    }

    /// Asks for a full run again (one that could not start).
    pub(crate) fn set_overflowed(&self) {
        self.inner().overflowed = true;
    }

    /// Suspects waiting, and whether a full run is asked for.
    pub(crate) fn pending(&self) -> (usize, bool) {
        let inner = self.inner();
        (inner.by_key.len(), inner.overflowed)
    }

    /// Resolves when a suspect was added since the last call.
    pub(crate) async fn added(&self) {
        self.added.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_failure_of_one_resource_keeps_what_the_first_knew() {
        let suspects = Suspects::default();
        let mut first = Suspect::new(Kind::User, "u1".into());
        first.added = Some(FailedAdd {
            dn: "uid=a,ou=people".into(),
            name: "a".into(),
            adopted: false,
        });
        first.dns.push("uid=b,ou=people".into());
        suspects.insert(first);
        let mut second = Suspect::new(Kind::User, "u1".into());
        second.dns.push("uid=c,ou=people".into());
        suspects.insert(second);
        suspects.insert(Suspect::new(Kind::Group, "g1".into()));
        suspects.insert(Suspect::new(Kind::User, "u2".into()));
        let (taken, overflowed) = suspects.take();
        assert!(!overflowed);
        let order: Vec<(Kind, &str)> = taken.iter().map(|s| (s.kind, s.id.as_str())).collect();
        assert_eq!(
            order,
            [(Kind::User, "u1"), (Kind::User, "u2"), (Kind::Group, "g1")]
        );
        assert_eq!(taken[0].dns, ["uid=c,ou=people", "uid=b,ou=people"]);
        assert_eq!(
            taken[0].added.as_ref().map(|a| a.dn.as_str()),
            Some("uid=a,ou=people")
        );
        assert_eq!(suspects.pending(), (0, false));
    }

    #[test]
    fn a_full_set_drops_new_resources_and_asks_for_a_full_run() {
        let suspects = Suspects::default();
        for n in 0..MAX_SUSPECTS {
            suspects.insert(Suspect::new(Kind::User, format!("u{n}")));
        }
        assert_eq!(suspects.pending(), (MAX_SUSPECTS, false));
        // A known resource still merges.
        suspects.insert(Suspect::new(Kind::User, "u0".into()));
        assert_eq!(suspects.pending(), (MAX_SUSPECTS, false));
        suspects.insert(Suspect::new(Kind::User, "new".into()));
        assert_eq!(suspects.pending(), (MAX_SUSPECTS, true));
        let (taken, overflowed) = suspects.take();
        assert_eq!(taken.len(), MAX_SUSPECTS);
        assert!(overflowed);
        assert_eq!(suspects.pending(), (0, false));
    }
}
