//! Repairs for reconciliation and after failed writes: what an entry should be, and the write
//! that puts it back. They take the same per-resource locks and go through the same
//! intent/commit path as IdP writes.

use std::collections::{BTreeSet, HashSet};

use secrecy::SecretString;
use serde_json::Value;

use super::plan::{DirOp, Plan, PlannedResource};
use super::suspects::{FailedAdd, Suspect};
use super::users::{push_rename, NewPassword};
use super::{Service, ServiceError};
use crate::directory::Entry;
use crate::mapping::{drift, parent_dn, rdn, Deactivate, OnDisableGroups, Projection};
use crate::store::{Kind, StoredResource};

/// A repair's directory operations and what they were planned from.
struct RepairPlan {
    plan: Plan,
    /// The entry the cache says.
    expected: Projection,
    /// The entry is gone and is added again.
    recreate: bool,
    /// Users whose membership values differ (see `Service::users_behind`).
    users_behind: Vec<String>,
}

/// What checking one suspect resource did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspectRepair {
    /// The entry was put back to the cached state.
    Repaired,
    /// The entry that a failed create added was deleted.
    Removed,
    /// The entry already matched the cache (the write did not land, or a later one settled it).
    InStep,
    /// An entry at a failed create's DN was left alone: it was adopted, or cannot be told ours.
    Kept,
}

/// The outcome of one pass over the suspects.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SuspectPass {
    /// Entries checked.
    pub checked: usize,
    /// Put back to the cached state.
    pub repaired: usize,
    /// Added by a failed create, deleted.
    pub removed: usize,
    /// Left alone (see [`SuspectRepair::Kept`]).
    pub kept: usize,
    /// Failed transiently; kept for the next pass.
    pub retry: usize,
    /// Failed otherwise; left to reconciliation.
    pub failed: usize,
    /// Suspects were dropped for lack of room: a full reconciliation run is needed.
    pub overflowed: bool,
}

impl Service {
    /// The validated configuration.
    pub fn config(&self) -> &crate::config::Config {
        &self.config
    }

    /// Serializes reconcile runs within this process.
    pub fn reconcile_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.reconcile_lock
    }

    /// The entry `resource` should be (without a group's members).
    pub(crate) async fn expected_entry(
        &self,
        resource: &StoredResource,
    ) -> Result<Projection, ServiceError> {
        Ok(match resource.kind {
            Kind::User => {
                let dns = self.resolve_refs(&resource.doc).await?;
                self.config.users.project(
                    super::users::ident(resource),
                    &resource.doc,
                    self.discovery.user_schema(),
                    &dns,
                )
            }
            Kind::Group => self.config.groups.project(
                super::users::ident(resource),
                &resource.doc,
                self.discovery.group_schema(),
            ),
        })
    }

    /// The member attribute values group `group` should hold, the placeholder included when it
    /// has no member in the directory.
    pub(crate) async fn expected_member_values(
        &self,
        group: &StoredResource,
    ) -> Result<Vec<String>, ServiceError> {
        let mut values: Vec<String> = self
            .expected_members(group)
            .await?
            .into_iter()
            .map(|(_, value)| value)
            .collect();
        if values.is_empty() && self.config.groups.class.needs_placeholder() {
            values.push(self.config.groups.placeholder_member.clone());
        }
        Ok(values)
    }

    /// The members whose values group `group` should hold: `(user id, value)`.
    async fn expected_members(
        &self,
        group: &StoredResource,
    ) -> Result<Vec<(String, String)>, ServiceError> {
        let remove_disabled = self.config.users.on_disable_groups == OnDisableGroups::Remove;
        let mut members = Vec::new();
        for member_id in self.store.members(&group.id).await? {
            if let Some(user) = self.store.get(Kind::User, &member_id).await? {
                let active = user
                    .doc
                    .get("active")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                if active || !remove_disabled {
                    let value = self.member_value_of(&user.name, &user.dn);
                    members.push((member_id, value));
                }
            }
        }
        Ok(members)
    }

    /// The users whose membership values in a group entry differ from the cache's: `missing`
    /// values' users, and the users `extra` values name. A write of theirs (a rename, a delete,
    /// a suspension) may stand between the directory and its commit; a repair waits for it
    /// under their locks and looks again, instead of undoing it.
    async fn users_behind(
        &self,
        group: &StoredResource,
        missing: &[String],
        extra: &[String],
    ) -> Result<Vec<String>, ServiceError> {
        let key = |value: &str| self.config.groups.class.member_key(value);
        let missing: HashSet<String> = missing.iter().map(|value| key(value)).collect();
        let mut ids: Vec<String> = self
            .expected_members(group)
            .await?
            .into_iter()
            .filter(|(_, value)| missing.contains(&key(value)))
            .map(|(id, _)| id)
            .collect();
        let field = if self.config.groups.class == crate::mapping::GroupClass::PosixGroup {
            crate::store::IndexedField::Name
        } else {
            crate::store::IndexedField::Dn
        };
        for value in extra {
            for user in self.store.find(Kind::User, field, value).await? {
                ids.push(user.id);
            }
        }
        Ok(ids)
    }

    fn attrs_to_read(&self, kind: Kind) -> Vec<String> {
        let (_, mut attrs) = match kind {
            Kind::User => self.config.users.ldap_names(),
            Kind::Group => self.config.groups.ldap_names(),
        };
        attrs.push("objectClass".to_string());
        attrs
    }

    /// Puts the entry of resource `id` back as the cache says: re-creates it when gone (same
    /// SCIM id), renames it back when moved, and replaces drifted attributes and members.
    /// `found_dn` is where the scan met it. Returns false when there was nothing to do.
    pub async fn repair_entry(
        &self,
        kind: Kind,
        id: &str,
        found_dn: Option<&str>,
    ) -> Result<bool, ServiceError> {
        let _lock = self.locks.lock(format!("id:{id}")).await;
        let Some(resource) = self.store.get(kind, id).await? else {
            return Ok(false);
        };
        self.repair_cached(resource, found_dn, &[]).await
    }

    /// `repair_entry` under the resource's lock; a re-created user entry gets
    /// `password_hashes` (the hashes it had before a delete that was not acknowledged).
    async fn repair_cached(
        &self,
        resource: StoredResource,
        found_dn: Option<&str>,
        password_hashes: &[SecretString],
    ) -> Result<bool, ServiceError> {
        let mut repair = self.plan_repair(&resource, found_dn).await?;
        let _member_locks;
        if !repair.users_behind.is_empty() {
            // Group before users, as a group write takes them.
            _member_locks = self.lock_users(repair.users_behind.iter()).await;
            repair = self.plan_repair(&resource, found_dn).await?;
        }
        let RepairPlan {
            mut plan,
            expected,
            recreate,
            ..
        } = repair;
        let kind = resource.kind;
        if plan.ops.is_empty() {
            return Ok(false);
        }
        plan.upsert = Some(PlannedResource::from(&StoredResource {
            dn: expected.dn.clone(),
            ..resource
        }));
        if recreate && kind == Kind::User && !password_hashes.is_empty() {
            let relock = self.config.users.lock_cleared_by_password_change(&expected);
            let password = (
                expected.dn.clone(),
                NewPassword::Hashes(password_hashes.to_vec()),
            );
            self.execute_with_password(plan, Some(password), relock)
                .await?;
        } else {
            self.execute(plan).await?;
        }
        Ok(true)
    }

    /// The directory operations that put `resource`'s entry back as the cache says, from a
    /// fresh read of both.
    async fn plan_repair(
        &self,
        resource: &StoredResource,
        found_dn: Option<&str>,
    ) -> Result<RepairPlan, ServiceError> {
        let kind = resource.kind;
        let mut users_behind = Vec::new();
        let expected = self.expected_entry(resource).await?;
        let attrs = self.attrs_to_read(kind);
        let attr_refs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let mut entry = match found_dn {
            Some(dn) => self.directory.read(dn, &attr_refs).await?,
            None => None,
        };
        if entry.is_none() {
            entry = self.directory.read(&expected.dn, &attr_refs).await?;
        }
        let mut plan = Plan::new();
        let member_attr = self.config.groups.class.member_attribute().to_string();
        let recreate = entry.is_none();
        match entry {
            None => {
                let mut add_attrs = expected.to_add_attrs();
                if kind == Kind::Group {
                    add_attrs.push((member_attr, self.expected_member_values(resource).await?));
                }
                plan.ops.push(DirOp::Add {
                    dn: expected.dn.clone(),
                    attrs: add_attrs,
                    adopt: true,
                    clear: expected.unset_attrs(),
                    disabled_dn: None,
                });
                if kind == Kind::User {
                    self.plan_rejoin_groups(&mut plan, resource).await?;
                }
            }
            Some(entry) => {
                push_rename(&mut plan, &entry.dn, &expected.dn);
                let rdn_attr = match kind {
                    Kind::User => &self.config.users.rdn_attribute,
                    Kind::Group => &self.config.groups.rdn_attribute,
                };
                let differing = drift(&entry.attrs, &expected, rdn_attr);
                let mut replace = Vec::new();
                let mut add_classes = Vec::new();
                for attr in differing {
                    if attr.eq_ignore_ascii_case("objectClass") {
                        add_classes.extend(expected.attrs.get(&attr).cloned().unwrap_or_default());
                    } else {
                        replace.push((
                            attr.clone(),
                            expected.attrs.get(&attr).cloned().unwrap_or_default(),
                        ));
                    }
                }
                if kind == Kind::Group {
                    let wanted = self.expected_member_values(resource).await?;
                    let have = entry.values(&member_attr);
                    // Each value folded once, compared through sets: a group of 50,000.
                    let key = |value: &String| self.config.groups.class.member_key(value);
                    let have_keys: HashSet<String> = have.iter().map(key).collect();
                    let wanted_keys: HashSet<String> = wanted.iter().map(key).collect();
                    let missing: Vec<String> = wanted
                        .iter()
                        .filter(|w| !have_keys.contains(&key(w)))
                        .cloned()
                        .collect();
                    let extra: Vec<String> = have
                        .iter()
                        .filter(|h| !wanted_keys.contains(&key(h)))
                        .cloned()
                        .collect();
                    users_behind = self.users_behind(resource, &missing, &extra).await?;
                    if !missing.is_empty() {
                        plan.ops.push(DirOp::AddValues {
                            dn: expected.dn.clone(),
                            attr: member_attr.clone(),
                            values: missing,
                        });
                    }
                    if !extra.is_empty() {
                        plan.ops.push(DirOp::DeleteValues {
                            dn: expected.dn.clone(),
                            attr: member_attr.clone(),
                            values: extra,
                            keep_valid: None,
                        });
                    }
                }
                if !replace.is_empty() || !add_classes.is_empty() {
                    plan.ops.push(DirOp::Modify {
                        dn: expected.dn.clone(),
                        replace,
                        add_classes,
                    });
                }
            }
        }
        Ok(RepairPlan {
            plan,
            expected,
            recreate,
            users_behind,
        })
    }

    /// Checks every suspect resource (users first, then groups, then the groups of users whose
    /// failed write touched memberships) and puts its entry back to the cached state. A check
    /// that fails transiently keeps the suspect for the next pass.
    pub async fn repair_suspects(&self) -> SuspectPass {
        let (suspects, overflowed) = self.suspects.take();
        let mut pass = SuspectPass {
            overflowed,
            ..SuspectPass::default()
        };
        let mut checked_groups = HashSet::new();
        let mut member_groups = BTreeSet::new();
        for suspect in suspects {
            match suspect.kind {
                Kind::Group => {
                    checked_groups.insert(suspect.id.clone());
                }
                Kind::User if suspect.touched_groups => {
                    match self.store.groups_of(&suspect.id).await {
                        Ok(groups) => member_groups.extend(groups.into_iter().map(|(id, _)| id)),
                        Err(err) => {
                            tracing::warn!(error = %err, "cache read failed; the user's groups are left to reconciliation")
                        }
                    }
                }
                Kind::User => {}
            }
            self.check_suspect(suspect, &mut pass).await;
        }
        for group_id in member_groups {
            if !checked_groups.contains(&group_id) {
                self.check_suspect(Suspect::new(Kind::Group, group_id), &mut pass)
                    .await;
            }
        }
        pass
    }

    /// Suspects waiting, and whether a full reconciliation run is asked for.
    pub fn pending_suspects(&self) -> (usize, bool) {
        self.suspects.pending()
    }

    /// Counts a full reconciliation run that completed.
    pub fn note_run_completed(&self) {
        self.runs_completed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Full reconciliation runs completed by this process.
    pub fn runs_completed(&self) -> u64 {
        self.runs_completed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks for a full reconciliation run at the next pass (one could not start).
    pub fn request_full_reconcile(&self) {
        self.suspects.set_overflowed();
    }

    /// Resolves when a write has failed transiently since the last call.
    pub async fn suspect_added(&self) {
        self.suspects.added().await
    }

    async fn check_suspect(&self, suspect: Suspect, pass: &mut SuspectPass) {
        pass.checked += 1;
        let resource_type = suspect.kind.as_str();
        match self.repair_suspect(&suspect).await {
            Ok(SuspectRepair::Repaired) => {
                pass.repaired += 1;
                tracing::info!(resource_type, resource_id = %suspect.id, "entry put back to the cached state after a failed write");
            }
            Ok(SuspectRepair::Removed) => {
                pass.removed += 1;
                tracing::info!(resource_type, resource_id = %suspect.id, "entry of a failed create removed");
            }
            Ok(SuspectRepair::InStep) => {
                tracing::debug!(resource_type, resource_id = %suspect.id, "entry in step after a failed write");
            }
            Ok(SuspectRepair::Kept) => pass.kept += 1,
            Err(ServiceError::Directory(err)) if err.is_transient() => {
                pass.retry += 1;
                tracing::debug!(resource_type, resource_id = %suspect.id, error = %err, "directory unavailable; checked again later");
                self.suspects.put_back(suspect);
            }
            Err(err) => {
                pass.failed += 1;
                tracing::warn!(resource_type, resource_id = %suspect.id, error = %err, "could not check an entry after a failed write; reconciliation will");
            }
        }
    }

    /// Puts the entry of a suspect resource back to the cached state, or removes the entry a
    /// failed create left. Under the resource's lock, from the cache as it is now: a write that
    /// succeeded since leaves nothing to do.
    pub(crate) async fn repair_suspect(
        &self,
        suspect: &Suspect,
    ) -> Result<SuspectRepair, ServiceError> {
        let _lock = self.locks.lock(format!("id:{}", suspect.id)).await;
        match self.store.get(suspect.kind, &suspect.id).await? {
            Some(resource) => {
                let found = self.locate_entry(&resource, &suspect.dns).await?;
                let repaired = self
                    .repair_cached(resource, found.as_deref(), &suspect.password_hashes)
                    .await?;
                Ok(if repaired {
                    SuspectRepair::Repaired
                } else {
                    SuspectRepair::InStep
                })
            }
            None => match &suspect.added {
                Some(added) => {
                    self.remove_failed_add(suspect.kind, &suspect.id, added)
                        .await
                }
                // Deleted since by a write that succeeded.
                None => Ok(SuspectRepair::InStep),
            },
        }
    }

    /// The first of `candidates` (where a failed plan may have moved the entry) that holds the
    /// entry of `resource`, told by its SCIM id or the directory's id.
    async fn locate_entry(
        &self,
        resource: &StoredResource,
        candidates: &[String],
    ) -> Result<Option<String>, ServiceError> {
        let id_attr = self.id_attribute(resource.kind);
        let entry_id_attr = self.config.ldap.flavor.entry_id_attribute();
        let mut attrs = vec![entry_id_attr];
        attrs.extend(id_attr);
        for dn in candidates {
            let Some(entry) = self.directory.read(dn, &attrs).await? else {
                continue;
            };
            let by_id = id_attr.is_some_and(|attr| entry.values(attr).contains(&resource.id));
            let by_entry_id = resource.entry_uuid.as_deref().is_some_and(|uuid| {
                entry
                    .values(entry_id_attr)
                    .iter()
                    .any(|have| have.eq_ignore_ascii_case(uuid))
            });
            if by_id || by_entry_id {
                return Ok(Some(entry.dn));
            }
        }
        Ok(None)
    }

    /// The attribute holding the SCIM id in the directory for `kind`, if configured.
    pub(crate) fn id_attribute(&self, kind: Kind) -> Option<&str> {
        match kind {
            Kind::User => self.config.users.id_attribute.as_deref(),
            Kind::Group => self.config.groups.id_attribute.as_deref(),
        }
    }

    /// Deletes the entry a failed create of `id` added, when it carries `id` in the SCIM id
    /// attribute: the IdP was told nothing was created and will create it again. An adopted
    /// entry, or one not provably ours, is left alone.
    async fn remove_failed_add(
        &self,
        kind: Kind,
        id: &str,
        added: &FailedAdd,
    ) -> Result<SuspectRepair, ServiceError> {
        // A create of the same name holds this lock until it is committed.
        let _name_lock = self
            .locks
            .lock(format!(
                "{}-name:{}",
                kind.as_str(),
                crate::store::name_key(&added.name)
            ))
            .await;
        if added.adopted {
            tracing::warn!(resource_type = kind.as_str(), resource_id = %id, "a failed create took over an existing entry; left as it is (reconciliation reports it)");
            tracing::trace!(dn = %added.dn, "adopted entry left");
            return Ok(SuspectRepair::Kept);
        }
        let Some(id_attr) = self.id_attribute(kind) else {
            tracing::warn!(resource_type = kind.as_str(), resource_id = %id, "a failed create may have left its entry; without an id attribute it cannot be told from another (reconciliation reports it)");
            return Ok(SuspectRepair::Kept);
        };
        let Some(entry) = self.directory.read(&added.dn, &[id_attr]).await? else {
            return Ok(SuspectRepair::InStep);
        };
        if !entry.values(id_attr).iter().any(|have| have == id) {
            // Someone else's entry (or a later create's): not ours to remove.
            return Ok(SuspectRepair::InStep);
        }
        let mut plan = Plan::new();
        plan.ops.push(DirOp::Delete { dn: entry.dn });
        plan.delete = Some(id.to_string());
        self.execute(plan).await?;
        Ok(SuspectRepair::Removed)
    }

    /// A re-created user goes back into the groups the cache has it in.
    async fn plan_rejoin_groups(
        &self,
        plan: &mut Plan,
        user: &StoredResource,
    ) -> Result<(), ServiceError> {
        let active = user
            .doc
            .get("active")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if !active && self.config.users.on_disable_groups == OnDisableGroups::Remove {
            return Ok(());
        }
        let member_value =
            self.member_value_of(&user.name, &self.config.users.dn(&user.name, active));
        for (group_id, _) in self.store.groups_of(&user.id).await? {
            if let Some(group) = self.store.get(Kind::Group, &group_id).await? {
                plan.ops.push(DirOp::AddValue {
                    dn: group.dn.clone(),
                    attr: self.config.groups.class.member_attribute().to_string(),
                    value: member_value.clone(),
                });
            }
        }
        Ok(())
    }

    /// Disables an orphan user entry the way a suspension would. Returns false when it was
    /// disabled already.
    pub async fn disable_orphan(&self, entry: &Entry) -> Result<bool, ServiceError> {
        let _lock = self
            .locks
            .lock(format!("orphan:{}", crate::mapping::dn_key(&entry.dn)))
            .await;
        if self.is_disabled_entry(entry) {
            return Ok(false);
        }
        let mut plan = Plan::new();
        // A replace of the lock attribute; for AD's flags, `apply_op` sets the bit in the
        // entry's value and keeps the others.
        let modify = |attr: &str, value: &str| DirOp::Modify {
            dn: entry.dn.clone(),
            replace: vec![(attr.to_string(), vec![value.to_string()])],
            add_classes: Vec::new(),
        };
        let op = match &self.config.users.deactivate {
            Deactivate::PpolicyLock => modify("pwdAccountLockedTime", "000001010000Z"),
            Deactivate::NsAccountLock => modify("nsAccountLock", "TRUE"),
            Deactivate::AdUserAccountControl => modify(crate::mapping::AD_ACCOUNT_CONTROL, "514"),
            Deactivate::Attribute { attr, value } => modify(attr, value),
            Deactivate::Move { disabled_base_dn } => DirOp::Rename {
                dn: entry.dn.clone(),
                new_rdn: rdn(&entry.dn).to_string(),
                new_parent: Some(disabled_base_dn.clone()),
                new_dn: format!("{},{disabled_base_dn}", rdn(&entry.dn)),
            },
        };
        plan.ops.push(op);
        self.execute(plan).await?;
        tracing::info!(dn = %entry.dn, "orphan account disabled");
        Ok(true)
    }

    /// Whether user entry `entry` is disabled the way `users.deactivate` disables accounts
    /// (for a lock, scim2ldap's own permanent value).
    pub fn is_disabled_entry(&self, entry: &Entry) -> bool {
        let has = |attr: &str, value: &str| {
            entry
                .values(attr)
                .iter()
                .any(|have| have.eq_ignore_ascii_case(value))
        };
        match &self.config.users.deactivate {
            Deactivate::PpolicyLock => has("pwdAccountLockedTime", "000001010000Z"),
            Deactivate::NsAccountLock => has("nsAccountLock", "TRUE"),
            Deactivate::AdUserAccountControl => {
                crate::mapping::ad_disabled(entry.values(crate::mapping::AD_ACCOUNT_CONTROL))
            }
            Deactivate::Attribute { attr, value } => has(attr, value),
            Deactivate::Move { disabled_base_dn } => {
                crate::mapping::dn_key(parent_dn(&entry.dn))
                    == crate::mapping::dn_key(disabled_base_dn)
            }
        }
    }
}
