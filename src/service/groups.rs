//! Group use cases. Membership changes are single-value adds and deletes on the group entry,
//! decided from the request and the membership table, never from the whole member list, so a
//! change costs the same in a group of ten and of fifty thousand.

use std::collections::HashSet;

use serde_json::Value;

use super::plan::{DirOp, Plan, PlannedResource};
use super::users::{external_id_of, push_modify, push_rename};
use super::{now, Conditions, Service, ServiceError};
use crate::scim::patch::{members_delta, MembersDelta, PatchRequest};
use crate::scim::validate::validate_resource;
use crate::scim::ScimError;
use crate::store::{Kind, StoredResource};

/// A member to write: SCIM id and the value that stands for it in the group entry.
pub(super) struct Member {
    id: String,
    value: String,
    /// Its value belongs in group entries: not a suspended user under
    /// `users.on_disable_groups = "remove"` (a member in the cache only, until reactivated).
    in_entry: bool,
}

impl Service {
    /// Takes the locks of the users `ids`, in order and once each, before a group write reads
    /// their names and DNs: a rename, suspension or delete of one of them then either finished
    /// before (its new DN is read) or waits for the group write (and sees its membership).
    /// User writes never wait for a group's lock, so the two cannot deadlock.
    pub(super) async fn lock_users<'s>(
        &'s self,
        ids: impl Iterator<Item = &String>,
    ) -> Vec<super::locks::KeyGuard<'s>> {
        let mut ids: Vec<&String> = ids.collect();
        ids.sort();
        ids.dedup();
        let mut guards = Vec::with_capacity(ids.len());
        for id in ids {
            guards.push(self.locks.lock(format!("id:{id}")).await);
        }
        guards
    }

    /// `POST /Groups`.
    pub(crate) async fn create_group(&self, doc: Value) -> Result<StoredResource, ServiceError> {
        let schema = self.discovery.group_schema();
        let validated = validate_resource(&doc, schema)?;
        self.note_ignored(&validated.ignored);
        let (mut group_doc, member_ids) = split_members(validated.doc);
        let display_name = display_name_of(&group_doc)?;
        let _name_lock = self
            .claim_name(
                Kind::Group,
                &StoredResource::none(Kind::Group),
                &display_name,
            )
            .await?;
        self.check_users(&member_ids).await?;
        let _member_locks = self.lock_users(member_ids.iter()).await;
        let members = self.resolve_members(&member_ids).await?;
        let id = crate::new_uuid().to_string();
        let posix_range = (self.config.groups.class == crate::mapping::GroupClass::PosixGroup)
            .then_some(self.config.groups.gid_number_range);
        let (_alloc_lock, posix_id) = self.allocate_posix_id(Kind::Group, posix_range).await?;
        let projection = self.config.groups.project(
            crate::mapping::Ident { id: &id, posix_id },
            &group_doc,
            schema,
        );
        let mut attrs = projection.to_add_attrs();
        let mut clear = projection.unset_attrs();
        let member_attr = self.config.groups.class.member_attribute().to_string();
        let member_values: Vec<String> = members
            .iter()
            .filter(|member| member.in_entry)
            .map(|member| member.value.clone())
            .collect();
        if !member_values.is_empty() {
            attrs.push((member_attr, member_values));
        } else if self.config.groups.class.needs_placeholder() {
            attrs.push((
                member_attr,
                vec![self.config.groups.placeholder_member.clone()],
            ));
        } else {
            // An adopted entry keeps no member the IdP did not name.
            clear.push(member_attr);
        }
        let mut plan = Plan::new();
        plan.ops.push(DirOp::Add {
            dn: projection.dn.clone(),
            attrs,
            adopt: self.config.users.on_existing == crate::mapping::OnExisting::Adopt,
            clear,
            disabled_dn: None,
        });
        let created = now();
        if let Some(object) = group_doc.as_object_mut() {
            object.remove("members");
        }
        let stored = StoredResource {
            id,
            kind: Kind::Group,
            name: display_name,
            external_id: external_id_of(&group_doc),
            dn: projection.dn,
            entry_uuid: None,
            posix_id,
            version: 1,
            member_gen: 0,
            created: created.clone(),
            last_modified: created,
            doc: group_doc,
        };
        plan.upsert = Some(PlannedResource::from(&stored));
        plan.members_add = members
            .iter()
            .map(|member| (stored.id.clone(), member.id.clone()))
            .collect();
        let entry_uuid = self.execute(plan).await?;
        tracing::debug!(resource_id = %stored.id, n_members = members.len(), "group created");
        Ok(StoredResource {
            entry_uuid,
            ..stored
        })
    }

    /// `PUT /Groups/{id}`: replaces `displayName`, `externalId` and the whole member list.
    pub(crate) async fn replace_group(
        &self,
        id: &str,
        doc: Value,
        conditions: &Conditions,
    ) -> Result<StoredResource, ServiceError> {
        let validated = validate_resource(&doc, self.discovery.group_schema())?;
        self.note_ignored(&validated.ignored);
        let (group_doc, member_ids) = split_members(validated.doc);
        let delta = MembersDelta {
            replace: Some(member_ids),
            ..MembersDelta::default()
        };
        let _lock = self.locks.lock(format!("id:{id}")).await;
        let old = self.load_for_write(Kind::Group, id, conditions).await?;
        self.update_group(old, group_doc, delta).await
    }

    /// `PATCH /Groups/{id}`. Requests that touch only `members`, `displayName` and
    /// `externalId` (every shape the IdPs send) never read the member list; those that only add
    /// and remove members are merged with others waiting for the group (see `members.rs`).
    pub(crate) async fn patch_group(
        self: &std::sync::Arc<Self>,
        id: &str,
        doc: Value,
        conditions: &Conditions,
    ) -> Result<StoredResource, ServiceError> {
        let request = PatchRequest::from_json(&doc)?;
        if conditions.if_match.is_none() && conditions.if_none_match.is_none() {
            if let Some(delta) = members_delta(&request).filter(MembersDelta::only_adds_and_removes)
            {
                return self.patch_members(id, delta.add, delta.remove).await;
            }
        }
        let schema = self.discovery.group_schema();
        let _lock = self.locks.lock(format!("id:{id}")).await;
        let old = self.load_for_write(Kind::Group, id, conditions).await?;
        let (new_doc, delta) = match members_delta(&request) {
            Some(delta) => {
                let other = PatchRequest {
                    operations: delta.other_ops.clone(),
                };
                let outcome = crate::scim::patch::apply(&old.doc, &other, schema)?;
                self.note_ignored(&outcome.ignored);
                (outcome.resource, delta)
            }
            None => {
                // A general PATCH (a filter over members, say): apply it to the full resource,
                // with its members as a GET shows them, so that a filter on any of their
                // sub-attributes (`members[type eq "User"]`) finds them.
                let mut full = old.doc.clone();
                if let Some(object) = full.as_object_mut() {
                    self.add_related(Kind::Group, &old.id, object).await?;
                }
                let outcome = crate::scim::patch::apply(&full, &request, schema)?;
                self.note_ignored(&outcome.ignored);
                let (group_doc, member_ids) = split_members(outcome.resource);
                let delta = MembersDelta {
                    replace: Some(member_ids),
                    ..MembersDelta::default()
                };
                (group_doc, delta)
            }
        };
        let validated = validate_resource(&new_doc, schema)?;
        let (group_doc, _) = split_members(validated.doc);
        self.update_group(old, group_doc, delta).await
    }

    /// Writes a group change: rename, attributes, and the member delta.
    pub(super) async fn update_group(
        &self,
        old: StoredResource,
        new_doc: Value,
        delta: MembersDelta,
    ) -> Result<StoredResource, ServiceError> {
        let schema = self.discovery.group_schema();
        let new_name = display_name_of(&new_doc)?;
        let _name_lock = self.claim_name(Kind::Group, &old, &new_name).await?;
        // Work out which ids really change, from the membership table alone. A replace (or a
        // remove of all then an add) names the whole list wanted; otherwise only the ids named
        // are looked up, whatever the group's size.
        let whole_list = match &delta.replace {
            Some(wanted) => Some(wanted),
            None if delta.remove_all => Some(&delta.add),
            None => None,
        };
        let (to_add, to_remove) = match whole_list {
            Some(wanted) => {
                let current = self.store.members(&old.id).await?;
                let to_add = not_among(wanted, &current);
                let to_remove = not_among(&current, wanted);
                (to_add, to_remove)
            }
            None => {
                let present = self.store.members_among(&old.id, delta.add.clone()).await?;
                let to_add = not_among(&delta.add, &present);
                let to_remove = self
                    .store
                    .members_among(&old.id, delta.remove.clone())
                    .await?;
                (to_add, to_remove)
            }
        };
        self.check_users(&to_add).await?;
        let _member_locks = self.lock_users(to_add.iter().chain(&to_remove)).await;
        let adds = self.resolve_members(&to_add).await?;
        if new_doc == old.doc && adds.is_empty() && to_remove.is_empty() {
            return Ok(old);
        }
        let old_projection =
            self.config
                .groups
                .project(super::users::ident(&old), &old.doc, schema);
        let new_projection =
            self.config
                .groups
                .project(super::users::ident(&old), &new_doc, schema);
        let mut plan = Plan::new();
        push_rename(&mut plan, &old.dn, &new_projection.dn);
        push_modify(
            &mut plan,
            &old_projection,
            &new_projection,
            &self.config.groups.rdn_attribute,
        );
        let group_dn = new_projection.dn.clone();
        let member_attr = self.config.groups.class.member_attribute().to_string();
        let needs_placeholder = self.config.groups.class.needs_placeholder();
        // Only values that are in the entry, or go into it, count for the directory.
        let removes: Vec<Member> = self
            .member_values(&to_remove)
            .await?
            .into_iter()
            .filter(|member| member.in_entry)
            .collect();
        let entry_adds: Vec<&Member> = adds.iter().filter(|member| member.in_entry).collect();
        // The entry ends up empty when every member in it goes and none arrives.
        let ends_empty = entry_adds.is_empty()
            && !removes.is_empty()
            && !self
                .has_members_in_entry(&old.id, to_remove.clone())
                .await?;
        let starts_empty =
            !entry_adds.is_empty() && !self.has_members_in_entry(&old.id, Vec::new()).await?;
        if needs_placeholder && ends_empty {
            plan.ops.push(DirOp::AddValue {
                dn: group_dn.clone(),
                attr: member_attr.clone(),
                value: self.config.groups.placeholder_member.clone(),
            });
        }
        // One modify per request, not per member: each directory write costs a disk sync.
        if !entry_adds.is_empty() {
            plan.ops.push(DirOp::AddValues {
                dn: group_dn.clone(),
                attr: member_attr.clone(),
                values: entry_adds
                    .iter()
                    .map(|member| member.value.clone())
                    .collect(),
            });
        }
        if !removes.is_empty() {
            // A user's delete or suspension may take the entry's last other member at the same
            // time (each saw the other): the placeholder then comes in as these values go.
            plan.ops.push(DirOp::DeleteValues {
                dn: group_dn.clone(),
                attr: member_attr.clone(),
                values: removes.iter().map(|member| member.value.clone()).collect(),
                keep_valid: (needs_placeholder && !ends_empty)
                    .then(|| self.config.groups.placeholder_member.clone()),
            });
        }
        if needs_placeholder && starts_empty {
            plan.ops.push(DirOp::DeleteValue {
                dn: group_dn.clone(),
                attr: member_attr.clone(),
                value: self.config.groups.placeholder_member.clone(),
                keep_valid: None,
            });
        }
        let stored = StoredResource {
            name: new_name,
            external_id: external_id_of(&new_doc),
            dn: group_dn,
            version: old.version + 1,
            last_modified: now(),
            doc: new_doc,
            ..old
        };
        plan.upsert = Some(PlannedResource::from(&stored));
        plan.members_add = adds
            .iter()
            .map(|member| (stored.id.clone(), member.id.clone()))
            .collect();
        plan.members_remove = to_remove
            .iter()
            .map(|member_id| (stored.id.clone(), member_id.clone()))
            .collect();
        self.execute(plan).await?;
        tracing::debug!(resource_id = %stored.id, n_added = adds.len(), n_removed = to_remove.len(), "group updated");
        Ok(stored)
    }

    /// `DELETE /Groups/{id}`.
    pub(crate) async fn delete_group(
        &self,
        id: &str,
        conditions: &Conditions,
    ) -> Result<(), ServiceError> {
        let _lock = self.locks.lock(format!("id:{id}")).await;
        let old = self.load_for_write(Kind::Group, id, conditions).await?;
        let mut plan = Plan::new();
        plan.ops.push(DirOp::Delete { dn: old.dn.clone() });
        plan.delete = Some(old.id.clone());
        self.execute(plan).await?;
        tracing::debug!(resource_id = %old.id, "group deleted");
        Ok(())
    }

    /// Whether group `group_id`'s entry holds a member other than `excluded`: with
    /// `on_disable_groups = "remove"`, suspended members are not in it.
    async fn has_members_in_entry(
        &self,
        group_id: &str,
        excluded: Vec<String>,
    ) -> Result<bool, ServiceError> {
        let active_only =
            self.config.users.on_disable_groups == crate::mapping::OnDisableGroups::Remove;
        Ok(self
            .store
            .has_members_besides(group_id, excluded, active_only)
            .await?)
    }

    /// Whether `group`'s entry, where the schema requires a member, has none but `member_id`
    /// (it then holds the placeholder once that member is out).
    async fn stands_alone(
        &self,
        group: &StoredResource,
        member_id: &str,
    ) -> Result<bool, ServiceError> {
        Ok(self.config.groups.class.needs_placeholder()
            && !self
                .has_members_in_entry(&group.id, vec![member_id.to_string()])
                .await?)
    }

    /// Removes user `member_id` (whose value in group entries is `member_value`) from `group`,
    /// keeping a `groupOfNames` valid with the placeholder when it was the last member.
    pub(crate) async fn plan_member_removal(
        &self,
        plan: &mut Plan,
        group: &StoredResource,
        member_id: &str,
        member_value: &str,
    ) -> Result<(), ServiceError> {
        let member_attr = self.config.groups.class.member_attribute().to_string();
        if self.stands_alone(group, member_id).await? {
            plan.ops.push(DirOp::AddValue {
                dn: group.dn.clone(),
                attr: member_attr.clone(),
                value: self.config.groups.placeholder_member.clone(),
            });
        }
        // Another user's delete may take the group's last other member at the same time (each
        // saw the other): the placeholder then comes in as this value goes.
        plan.ops.push(DirOp::DeleteValue {
            dn: group.dn.clone(),
            attr: member_attr,
            value: member_value.to_string(),
            keep_valid: self
                .config
                .groups
                .class
                .needs_placeholder()
                .then(|| self.config.groups.placeholder_member.clone()),
        });
        Ok(())
    }

    /// Adds user `member_id` (whose value in group entries is `member_value`) to `group`,
    /// taking the placeholder out when it stood alone (no other member in the entry).
    pub(crate) async fn plan_member_addition(
        &self,
        plan: &mut Plan,
        group: &StoredResource,
        member_id: &str,
        member_value: &str,
    ) -> Result<(), ServiceError> {
        let member_attr = self.config.groups.class.member_attribute().to_string();
        let placeholder_alone = self.stands_alone(group, member_id).await?;
        plan.ops.push(DirOp::AddValue {
            dn: group.dn.clone(),
            attr: member_attr.clone(),
            value: member_value.to_string(),
        });
        if placeholder_alone {
            plan.ops.push(DirOp::DeleteValue {
                dn: group.dn.clone(),
                attr: member_attr,
                value: self.config.groups.placeholder_member.clone(),
                keep_valid: None,
            });
        }
        Ok(())
    }

    /// Refuses ids that name no provisioned user, before their locks are taken: the id of a
    /// group (this one or another) would otherwise be locked as a user's, and a group waiting
    /// for its own lock, or two groups naming each other, would wait forever.
    async fn check_users(&self, ids: &[String]) -> Result<(), ServiceError> {
        if ids.is_empty() {
            return Ok(());
        }
        let missing = self.store.missing(Kind::User, ids.to_vec()).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
        Err(unknown_members(&missing))
    }

    /// Cached user `user` as a group member.
    fn member_of(&self, user: &StoredResource) -> Member {
        Member {
            id: user.id.clone(),
            value: self.member_value_of(&user.name, &user.dn),
            in_entry: super::users::is_active(&user.doc)
                || self.config.users.on_disable_groups != crate::mapping::OnDisableGroups::Remove,
        }
    }

    /// Looks up users to add; every id must be a provisioned user, or nothing is done.
    pub(super) async fn resolve_members(
        &self,
        ids: &[String],
    ) -> Result<Vec<Member>, ServiceError> {
        let mut members = Vec::with_capacity(ids.len());
        let mut unknown = Vec::new();
        for id in ids {
            match self.store.get(Kind::User, id).await? {
                Some(user) => members.push(self.member_of(&user)),
                None => unknown.push(id.as_str()),
            }
        }
        if !unknown.is_empty() {
            return Err(unknown_members(&unknown));
        }
        Ok(members)
    }

    /// The member values of users being removed (a user gone from the cache is skipped).
    async fn member_values(&self, ids: &[String]) -> Result<Vec<Member>, ServiceError> {
        let mut members = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(user) = self.store.get(Kind::User, id).await? {
                members.push(self.member_of(&user));
            }
        }
        Ok(members)
    }
}

/// Those of `ids` that `others` does not hold, in order; through a set, so that a list of
/// 10,000 against a group of 50,000 compares each id once.
fn not_among(ids: &[String], others: &[String]) -> Vec<String> {
    let others: HashSet<&String> = others.iter().collect();
    ids.iter()
        .filter(|id| !others.contains(id))
        .cloned()
        .collect()
}

/// The answer to a request naming `unknown` ids as members: up to ten of them are named.
pub(super) fn unknown_members(unknown: &[&str]) -> ServiceError {
    let shown: Vec<&str> = unknown.iter().take(10).copied().collect();
    ScimError::invalid_value(format!(
        "members are not provisioned users: {}{}",
        shown.join(", "),
        if unknown.len() > shown.len() {
            ", ..."
        } else {
            ""
        }
    ))
    .into()
}

/// Takes `members` out of a validated group document, returning the document and member ids.
fn split_members(mut doc: Value) -> (Value, Vec<String>) {
    let members = doc
        .as_object_mut()
        .and_then(|object| object.remove("members"))
        .unwrap_or(Value::Null);
    let mut seen = std::collections::HashSet::new();
    let mut ids = Vec::new();
    for member in crate::scim::path::values_of(&members) {
        if let Some(id) = member.get("value").and_then(Value::as_str) {
            if seen.insert(id) {
                ids.push(id.to_string());
            }
        }
    }
    (doc, ids)
}

fn display_name_of(doc: &Value) -> Result<String, ServiceError> {
    match doc.get("displayName").and_then(Value::as_str) {
        Some(name) if !name.trim().is_empty() => Ok(name.to_string()),
        _ => Err(ScimError::invalid_value("`displayName` is required").into()),
    }
}
