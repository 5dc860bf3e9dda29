//! Member changes to one group that arrive while an earlier change to it holds the group go to
//! the directory together, as one modify.
//!
//! In OpenLDAP's back-mdb a modify of a group entry copies its whole member list and, after a
//! delete, re-indexes it: one member change in a 50,000-member group costs 15 to 40 times one in
//! a small group, whatever the number of values it carries. An IdP that assigns many people to
//! one group sends a `PATCH` per membership, several at a time; merged, they pay that cost once
//! per batch instead of once per request. Each request is still answered only after its change
//! is in the directory and committed to the cache, with its own error when its own members are
//! at fault.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::Instrument;

use super::groups::unknown_members;
use super::{Service, ServiceError};
use crate::audit::AuditContext;
use crate::scim::patch::MembersDelta;
use crate::scim::validate::MAX_MEMBERS;
use crate::scim::ScimError;
use crate::store::{Kind, StoredResource};

/// One request's member change, waiting for its group.
pub(crate) struct Waiting {
    add: Vec<String>,
    remove: Vec<String>,
    audit: Option<AuditContext>,
    reply: oneshot::Sender<Result<StoredResource, ScimError>>,
}

/// The member changes waiting, by group id.
pub(crate) type MemberQueue = crate::queue::KeyedQueue<String, Waiting>;

impl Service {
    /// A `PATCH` of group `id` that only adds and removes members (no `If-Match`). With the
    /// group free and nobody waiting it runs here; otherwise it waits with the others, and the
    /// first of them to get the group applies them all.
    pub(crate) async fn patch_members(
        self: &Arc<Self>,
        id: &str,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<StoredResource, ServiceError> {
        let group_id = id.to_string();
        if !self.member_queue.is_served(&group_id) {
            if let Some(_lock) = self.locks.try_lock(format!("id:{id}")) {
                return self.change_members(id, add, remove).await;
            }
        }
        let (reply, answer) = oneshot::channel();
        let change = Waiting {
            add,
            remove,
            audit: crate::audit::current(),
            reply,
        };
        if self.member_queue.push(&group_id, change) {
            // A task of its own, so that a client that hangs up cannot abandon the others.
            let service = Arc::clone(self);
            tokio::spawn(async move { service.drain_members(group_id).await });
        }
        match answer.await {
            Ok(result) => result.map_err(ServiceError::Scim),
            Err(_) => Err(ScimError::internal().into()),
        }
    }

    /// Loads group `id` and applies one member change to it; the caller holds the group.
    async fn change_members(
        &self,
        id: &str,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<StoredResource, ServiceError> {
        let old = self.load(Kind::Group, id).await?;
        let doc = old.doc.clone();
        let delta = MembersDelta {
            add,
            remove,
            ..MembersDelta::default()
        };
        self.update_group(old, doc, delta).await
    }

    /// Takes group `id` and applies the changes waiting for it, in batches of no more member
    /// ids than one request may carry (so that a merged modify is never larger than one
    /// request's could be).
    async fn drain_members(self: Arc<Self>, id: String) {
        let serving = self.member_queue.serving(&id);
        loop {
            let lock = self.locks.lock(format!("id:{id}")).await;
            let Some(batch) = self.member_queue.take(&id, MAX_MEMBERS, |change| {
                change.add.len() + change.remove.len()
            }) else {
                serving.disarm();
                return;
            };
            let context = batch_context(&batch);
            let span = tracing::info_span!(
                "member_batch",
                resource_id = %id,
                requests = batch.len(),
                request_ids = context.as_ref().and_then(|c| c.request_id.as_deref()).unwrap_or("-"),
            );
            let work = self.apply_batch(&id, batch).instrument(span);
            match context {
                Some(context) => crate::audit::scope(context, work).await,
                None => work.await,
            }
            // Let other writes to the group in before the next batch.
            drop(lock);
        }
    }

    /// Applies a batch of member changes to group `id` as one, or one by one when the
    /// directory refuses the whole (each request then gets its own answer).
    async fn apply_batch(&self, id: &str, batch: Vec<Waiting>) {
        let mut accepted = Vec::with_capacity(batch.len());
        if batch.len() == 1 {
            accepted = batch;
        } else {
            // A request naming members that are not provisioned users fails alone; one look in
            // the cache for the whole batch.
            let named: Vec<String> = batch
                .iter()
                .flat_map(|change| change.add.iter().cloned())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let unknown: HashSet<String> = match self.store.missing(Kind::User, named).await {
                Ok(missing) => missing.into_iter().collect(),
                Err(err) => {
                    let err = ScimError::from(ServiceError::from(err));
                    for change in batch {
                        let _ = change.reply.send(Err(err.clone()));
                    }
                    return;
                }
            };
            for change in batch {
                let theirs: Vec<&str> = change
                    .add
                    .iter()
                    .filter(|id| unknown.contains(*id))
                    .map(String::as_str)
                    .collect();
                if theirs.is_empty() {
                    accepted.push(change);
                } else {
                    let _ = change.reply.send(Err(unknown_members(&theirs).into()));
                }
            }
        }
        if accepted.len() > 1 {
            let (add, remove) = merge(
                accepted
                    .iter()
                    .map(|change| (change.add.as_slice(), change.remove.as_slice())),
            );
            match self.change_members(id, add, remove).await {
                Ok(stored) => {
                    for change in accepted {
                        let _ = change.reply.send(Ok(stored.clone()));
                    }
                    return;
                }
                Err(ServiceError::Directory(err)) if !err.is_transient() => {
                    tracing::info!(error = %err, "the directory refused merged member changes; applying them one by one");
                }
                Err(err) => {
                    // The same for every request: directory unavailable, group gone, cache failed.
                    let err = ScimError::from(err);
                    for change in accepted {
                        let _ = change.reply.send(Err(err.clone()));
                    }
                    return;
                }
            }
        }
        for change in accepted {
            let result = self.change_members(id, change.add, change.remove).await;
            let _ = change.reply.send(result.map_err(ScimError::from));
        }
    }
}

/// The audit context of a batch: every actor and request id it serves.
fn batch_context(batch: &[Waiting]) -> Option<AuditContext> {
    let contexts: Vec<&AuditContext> = batch.iter().filter_map(|w| w.audit.as_ref()).collect();
    let first = contexts.first()?;
    let mut actors: Vec<&str> = Vec::new();
    for context in &contexts {
        if !actors.contains(&&*context.actor) {
            actors.push(&context.actor);
        }
    }
    let request_ids: Vec<&str> = contexts
        .iter()
        .filter_map(|context| context.request_id.as_deref())
        .collect();
    Some(AuditContext {
        actor: Arc::from(actors.join(",")),
        request_id: (!request_ids.is_empty()).then(|| request_ids.join(",")),
        operation: first.operation,
        resource_type: first.resource_type,
    })
}

/// The net effect of member changes applied in order, as ids to add and ids to remove: each id
/// ends as the last change naming it leaves it. Within one change, `add` and `remove` are
/// disjoint.
fn merge<'a>(
    changes: impl IntoIterator<Item = (&'a [String], &'a [String])>,
) -> (Vec<String>, Vec<String>) {
    let mut order: Vec<&'a str> = Vec::new();
    let mut added: HashMap<&'a str, bool> = HashMap::new();
    for (add, remove) in changes {
        let named = remove
            .iter()
            .map(|id| (id, false))
            .chain(add.iter().map(|id| (id, true)));
        for (id, is_added) in named {
            if added.insert(id.as_str(), is_added).is_none() {
                order.push(id);
            }
        }
    }
    let (add, remove): (Vec<&str>, Vec<&str>) = order.into_iter().partition(|id| added[id]);
    (
        add.into_iter().map(str::to_string).collect(),
        remove.into_iter().map(str::to_string).collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{batch_context, merge, AuditContext, Waiting};

    fn waiting(n_add: usize) -> Waiting {
        Waiting {
            add: (0..n_add).map(|k| k.to_string()).collect(),
            remove: Vec::new(),
            audit: None,
            reply: tokio::sync::oneshot::channel().0,
        }
    }

    proptest::proptest! {
        /// Applying the merged change to any membership gives what applying the changes one
        /// after the other gives.
        #[test]
        fn merging_is_the_same_as_applying_in_order(
            initial in proptest::collection::btree_set(0u8..8, 0..8),
            changes in proptest::collection::vec(
                (proptest::collection::btree_set(0u8..8, 0..4), proptest::collection::btree_set(0u8..8, 0..4)),
                0..6,
            ),
        ) {
            use std::collections::BTreeSet;
            let name = |id: &u8| format!("u{id}");
            // As members_delta builds them: within one request, add and remove are disjoint.
            let owned: Vec<(Vec<String>, Vec<String>)> = changes
                .iter()
                .map(|(add, remove)| {
                    (add.iter().map(name).collect(), remove.difference(add).map(name).collect())
                })
                .collect();
            let mut sequential: BTreeSet<String> = initial.iter().map(name).collect();
            for (add, remove) in &owned {
                for id in remove {
                    sequential.remove(id);
                }
                sequential.extend(add.iter().cloned());
            }
            let (add, remove) = merge(owned.iter().map(|(a, r)| (a.as_slice(), r.as_slice())));
            let mut merged: BTreeSet<String> = initial.iter().map(name).collect();
            for id in &remove {
                merged.remove(id);
            }
            merged.extend(add);
            proptest::prop_assert_eq!(merged, sequential);
        }
    }

    #[test]
    fn a_batch_is_audited_for_every_request_and_token_it_serves() {
        let with = |actor: &str, request_id: Option<&str>| Waiting {
            audit: Some(AuditContext {
                actor: Arc::from(actor),
                request_id: request_id.map(str::to_string),
                operation: "patch",
                resource_type: Some("Group"),
            }),
            ..waiting(1)
        };
        let batch = [
            with("okta", Some("r1")),
            waiting(1),
            with("okta", Some("r2")),
            with("entra", None),
        ];
        let context = batch_context(&batch).expect("a context");
        assert_eq!(&*context.actor, "okta,entra");
        assert_eq!(context.request_id.as_deref(), Some("r1,r2"));
        assert_eq!(context.operation, "patch");
        assert_eq!(context.resource_type, Some("Group"));
        assert!(batch_context(&[waiting(1)]).is_none());
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn merged_changes_end_as_the_last_change_of_each_id_leaves_it() {
        let check = |changes: &[(&[&str], &[&str])], add: &[&str], remove: &[&str]| {
            let owned: Vec<(Vec<String>, Vec<String>)> =
                changes.iter().map(|(a, r)| (ids(a), ids(r))).collect();
            let merged = merge(owned.iter().map(|(a, r)| (a.as_slice(), r.as_slice())));
            assert_eq!(merged, (ids(add), ids(remove)), "{changes:?}");
        };
        check(&[(&["a"], &[]), (&["b"], &[])], &["a", "b"], &[]);
        check(&[(&["a"], &[]), (&[], &["a"])], &[], &["a"]);
        check(&[(&[], &["a"]), (&["a"], &[])], &["a"], &[]);
        check(
            &[(&["a", "b"], &["c"]), (&["c"], &["a"])],
            &["c", "b"],
            &["a"],
        );
        check(&[(&["a"], &[]), (&["a"], &[])], &["a"], &[]);
        check(&[], &[], &[]);
    }
}
