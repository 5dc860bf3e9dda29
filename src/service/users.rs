//! User use cases: create, replace, patch, delete, with deactivation and memberships.

use std::collections::HashMap;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::plan::{DirOp, Plan, PlannedResource};
use super::{now, Conditions, Service, ServiceError};
use crate::mapping::{
    diff, parent_dn, rdn, Ident, OnDelete, OnDisableGroups, OnExisting, PasswordHashing, Projection,
};
use crate::scim::patch::PatchRequest;
use crate::scim::validate::validate_resource;
use crate::store::{Kind, StoredResource};

/// A password to set on an entry: from the IdP, or the hashes an entry had before (a repair).
pub(crate) enum NewPassword {
    /// In clear, set by the directory or hashed here (`users.password_hashing`).
    Plain(SecretString),
    /// Stored hashes, written back as they are.
    Hashes(Vec<SecretString>),
}

impl Service {
    /// `POST /Users`.
    pub(crate) async fn create_user(&self, doc: Value) -> Result<StoredResource, ServiceError> {
        let schema = self.discovery.user_schema();
        let mut validated = validate_resource(&doc, schema)?;
        self.note_ignored(&validated.ignored);
        // A new account is enabled unless the IdP says otherwise. The default is stored
        // (RFC 7644 §3.3 lets the service provider assign one) rather than made up when
        // rendering, so that GET, filters and a later PATCH `remove active`, after which the
        // attribute is unassigned (RFC 7644 §3.5.2.2), all see the same thing.
        if let Some(object) = validated.doc.as_object_mut() {
            if !object.contains_key("active") {
                object.insert("active".to_string(), Value::Bool(true));
            }
        }
        let user_name = user_name_of(&validated.doc)?;
        let _name_lock = self
            .claim_name(Kind::User, &StoredResource::none(Kind::User), &user_name)
            .await?;
        let id = crate::new_uuid().to_string();
        let created = now();
        let dns = self.resolve_refs(&validated.doc).await?;
        let posix_range = self
            .config
            .users
            .posix
            .as_ref()
            .map(|posix| (posix.uid_number_min, posix.uid_number_max));
        let (_alloc_lock, posix_id) = self.allocate_posix_id(Kind::User, posix_range).await?;
        let ident = Ident { id: &id, posix_id };
        let projection = self
            .config
            .users
            .project(ident, &validated.doc, schema, &dns);
        let mut plan = Plan::new();
        let adopt = self.config.users.on_existing == OnExisting::Adopt;
        let disabled_dn = Some(self.config.users.dn(&user_name, false))
            .filter(|dn| adopt && *dn != projection.dn);
        plan.ops.push(DirOp::Add {
            dn: projection.dn.clone(),
            attrs: projection.to_add_attrs(),
            adopt,
            clear: projection.unset_attrs(),
            disabled_dn,
        });
        let stored = StoredResource {
            id,
            kind: Kind::User,
            name: user_name,
            external_id: external_id_of(&validated.doc),
            dn: projection.dn.clone(),
            entry_uuid: None,
            posix_id,
            version: 1,
            member_gen: 0,
            created: created.clone(),
            last_modified: created,
            doc: validated.doc,
        };
        plan.upsert = Some(PlannedResource::from(&stored));
        let relock = self
            .config
            .users
            .lock_cleared_by_password_change(&projection);
        let password = validated.password.map(|password| {
            (
                projection.dn.clone(),
                NewPassword::Plain(SecretString::from(password)),
            )
        });
        let entry_uuid = self.execute_with_password(plan, password, relock).await?;
        tracing::debug!(resource_id = %stored.id, "user created");
        Ok(StoredResource {
            entry_uuid,
            ..stored
        })
    }

    /// `PUT /Users/{id}`: a full replace of the mapped attributes; `active` absent means
    /// unchanged (OneLogin and Okta templates may omit it).
    pub(crate) async fn replace_user(
        &self,
        id: &str,
        doc: Value,
        conditions: &Conditions,
    ) -> Result<StoredResource, ServiceError> {
        let _lock = self.locks.lock(format!("id:{id}")).await;
        let old = self.load_for_write(Kind::User, id, conditions).await?;
        let validated = validate_resource(&doc, self.discovery.user_schema())?;
        self.note_ignored(&validated.ignored);
        let mut new_doc = validated.doc;
        if new_doc.get("active").is_none() {
            if let (Some(active), Some(object)) =
                (old.doc.get("active").cloned(), new_doc.as_object_mut())
            {
                object.insert("active".to_string(), active);
            }
        }
        self.update_user(old, new_doc, validated.password).await
    }

    /// `PATCH /Users/{id}`.
    pub(crate) async fn patch_user(
        &self,
        id: &str,
        doc: Value,
        conditions: &Conditions,
    ) -> Result<StoredResource, ServiceError> {
        let request = PatchRequest::from_json(&doc)?;
        let _lock = self.locks.lock(format!("id:{id}")).await;
        let old = self.load_for_write(Kind::User, id, conditions).await?;
        let schema = self.discovery.user_schema();
        let outcome = crate::scim::patch::apply(&old.doc, &request, schema)?;
        self.note_ignored(&outcome.ignored);
        let validated = validate_resource(&outcome.resource, schema)?;
        self.update_user(old, validated.doc, validated.password)
            .await
    }

    /// Writes the change from `old` to `new_doc` (rename, attributes, activation, password).
    async fn update_user(
        &self,
        old: StoredResource,
        new_doc: Value,
        password: Option<String>,
    ) -> Result<StoredResource, ServiceError> {
        let schema = self.discovery.user_schema();
        let new_name = user_name_of(&new_doc)?;
        let _name_lock = self.claim_name(Kind::User, &old, &new_name).await?;
        if new_doc == old.doc && password.is_none() {
            return Ok(old);
        }
        let old_dns = self.resolve_refs(&old.doc).await?;
        let new_dns = self.resolve_refs(&new_doc).await?;
        // Only the rules reading a member that changed: the rest project the same on both sides.
        let changed = crate::mapping::changed_members(&old.doc, &new_doc);
        let old_projection =
            self.config
                .users
                .project_changed(ident(&old), &old.doc, schema, &old_dns, &changed);
        let new_projection =
            self.config
                .users
                .project_changed(ident(&old), &new_doc, schema, &new_dns, &changed);
        let mut plan = Plan::new();
        let current_dn = old.dn.clone();
        push_rename(&mut plan, &current_dn, &new_projection.dn);
        push_modify(
            &mut plan,
            &old_projection,
            &new_projection,
            &self.config.users.rdn_attribute,
        );
        let old_active = is_active(&old.doc);
        let new_active = is_active(&new_doc);
        self.plan_membership_moves(
            &mut plan,
            &old,
            &new_name,
            &new_projection.dn,
            old_active,
            new_active,
        )
        .await?;
        let stored = StoredResource {
            name: new_name,
            external_id: external_id_of(&new_doc),
            dn: new_projection.dn.clone(),
            version: old.version + 1,
            last_modified: now(),
            doc: new_doc,
            ..old
        };
        plan.upsert = Some(PlannedResource::from(&stored));
        let relock = self
            .config
            .users
            .lock_cleared_by_password_change(&new_projection);
        let password = password.map(|password| {
            (
                new_projection.dn.clone(),
                NewPassword::Plain(SecretString::from(password)),
            )
        });
        self.execute_with_password(plan, password, relock).await?;
        tracing::debug!(resource_id = %stored.id, version = stored.version, "user updated");
        Ok(stored)
    }

    /// `DELETE /Users/{id}`: removes the user from its groups in the directory, then deletes
    /// or disables the entry (`users.on_delete`).
    pub(crate) async fn delete_user(
        &self,
        id: &str,
        conditions: &Conditions,
    ) -> Result<(), ServiceError> {
        let _lock = self.locks.lock(format!("id:{id}")).await;
        let old = self.load_for_write(Kind::User, id, conditions).await?;
        let mut plan = Plan::new();
        let member_value = self.member_value_of(&old.name, &old.dn);
        for (group_id, _) in self.store.groups_of(&old.id).await? {
            if let Some(group) = self.store.get(Kind::Group, &group_id).await? {
                self.plan_member_removal(&mut plan, &group, &old.id, &member_value)
                    .await?;
            }
        }
        match self.config.users.on_delete {
            OnDelete::Delete => {
                // Held in memory while the plan runs: if the delete is applied but its reply
                // lost, the entry is re-created with them (see repair_suspects).
                plan.keep_password_of = Some(old.dn.clone());
                plan.ops.push(DirOp::Delete { dn: old.dn.clone() });
            }
            OnDelete::Disable => {
                let schema = self.discovery.user_schema();
                let dns = self.resolve_refs(&old.doc).await?;
                let old_projection = self
                    .config
                    .users
                    .project(ident(&old), &old.doc, schema, &dns);
                let mut disabled_doc = old.doc.clone();
                if let Some(object) = disabled_doc.as_object_mut() {
                    object.insert("active".to_string(), Value::Bool(false));
                }
                let mut new_projection =
                    self.config
                        .users
                        .project(ident(&old), &disabled_doc, schema, &dns);
                // No longer a SCIM resource: the entry gives up its SCIM id (a rebuilt cache
                // does not bring it back, and a later create of the name adopts it afresh).
                if let Some(id_attr) = &self.config.users.id_attribute {
                    new_projection.attrs.insert(id_attr.clone(), Vec::new());
                }
                push_rename(&mut plan, &old.dn, &new_projection.dn);
                push_modify(
                    &mut plan,
                    &old_projection,
                    &new_projection,
                    &self.config.users.rdn_attribute,
                );
            }
        }
        plan.delete = Some(old.id.clone());
        self.execute(plan).await?;
        tracing::debug!(resource_id = %old.id, "user deleted");
        Ok(())
    }

    /// Runs `plan` and sets `password` on entry `dn` after its directory operations and before
    /// its commit, so a failed password change leaves nothing committed. `relock` (attribute,
    /// values) is written again after the password change, which cleared it.
    pub(crate) async fn execute_with_password(
        &self,
        mut plan: Plan,
        password: Option<(String, NewPassword)>,
        relock: Option<(String, Vec<String>)>,
    ) -> Result<Option<String>, ServiceError> {
        match password {
            None => self.execute(plan).await,
            Some((dn, password)) => {
                plan.sets_password = true;
                let directory = self.directory.clone();
                let hashing = self.config.users.password_hashing;
                self.execute_then(plan, move || async move {
                    match (password, hashing) {
                        (NewPassword::Plain(password), PasswordHashing::Directory) => {
                            directory.set_password(&dn, &password).await?
                        }
                        (NewPassword::Plain(password), PasswordHashing::Ssha) => {
                            let salt: [u8; 8] = rand::random();
                            let hash = SecretString::from(crate::mapping::ssha(
                                password.expose_secret(),
                                &salt,
                            ));
                            directory.set_password_hashes(&dn, &[hash]).await?
                        }
                        (NewPassword::Hashes(hashes), _) => {
                            directory.set_password_hashes(&dn, &hashes).await?
                        }
                    }
                    match relock {
                        Some((attr, values)) => {
                            directory
                                .modify(&dn, &[crate::directory::Mod::Replace(attr, values)])
                                .await
                        }
                        None => Ok(()),
                    }
                })
                .await
            }
        }
    }

    /// DNs of the users that `dn:` mapping sources name (a manager), from the cache.
    pub(crate) async fn resolve_refs(
        &self,
        doc: &Value,
    ) -> Result<HashMap<String, String>, ServiceError> {
        let mut dns = HashMap::new();
        for ref_id in self.config.users.dn_refs(doc, self.discovery.user_schema()) {
            match self.store.get(Kind::User, &ref_id).await? {
                Some(user) => {
                    dns.insert(ref_id, user.dn);
                }
                None => {
                    tracing::debug!(ref_id = %ref_id, "referenced user is not provisioned; not mapped")
                }
            }
        }
        Ok(dns)
    }

    /// The member attribute value that stands for a user in a group entry.
    pub(crate) fn member_value_of(&self, user_name: &str, user_dn: &str) -> String {
        match self.config.groups.class {
            crate::mapping::GroupClass::PosixGroup => user_name.to_string(),
            _ => user_dn.to_string(),
        }
    }

    /// When the user's member value changes (rename, move) or it is suspended or reactivated
    /// under `on_disable_groups = "remove"`, rewrites its value in each group's entry.
    async fn plan_membership_moves(
        &self,
        plan: &mut Plan,
        old: &StoredResource,
        new_name: &str,
        new_dn: &str,
        old_active: bool,
        new_active: bool,
    ) -> Result<(), ServiceError> {
        let remove_when_disabled = self.config.users.on_disable_groups == OnDisableGroups::Remove;
        let old_value = self.member_value_of(&old.name, &old.dn);
        let new_value = self.member_value_of(new_name, new_dn);
        let was_in_directory = old_active || !remove_when_disabled;
        let is_in_directory = new_active || !remove_when_disabled;
        // A DN that changes only in case is the same member value to the directory (DN
        // matching ignores case): nothing to move. `memberUid` matches exactly.
        let same_value = match self.config.groups.class {
            crate::mapping::GroupClass::PosixGroup => old_value == new_value,
            _ => crate::mapping::dn_key(&old_value) == crate::mapping::dn_key(&new_value),
        };
        if same_value && was_in_directory == is_in_directory {
            return Ok(());
        }
        let member_attr = self.config.groups.class.member_attribute();
        for (group_id, _) in self.store.groups_of(&old.id).await? {
            let Some(group) = self.store.get(Kind::Group, &group_id).await? else {
                continue;
            };
            match (was_in_directory, is_in_directory) {
                // Suspended before and after (a rename): its value is in no entry.
                (false, false) => {}
                // Suspended: out of the entry, the placeholder in if it was the last member.
                (true, false) => {
                    self.plan_member_removal(plan, &group, &old.id, &old_value)
                        .await?
                }
                // Reactivated: back in, the placeholder out if it stood alone.
                (false, true) => {
                    self.plan_member_addition(plan, &group, &old.id, &new_value)
                        .await?
                }
                // Renamed: the new value first, since deleting the old one first would leave
                // a group whose only member this is without any, which its schema refuses.
                (true, true) => {
                    plan.ops.push(DirOp::AddValue {
                        dn: group.dn.clone(),
                        attr: member_attr.to_string(),
                        value: new_value.clone(),
                    });
                    plan.ops.push(DirOp::DeleteValue {
                        dn: group.dn.clone(),
                        attr: member_attr.to_string(),
                        value: old_value.clone(),
                        keep_valid: None,
                    });
                }
            }
        }
        Ok(())
    }

    /// Logs each unknown attribute name once per process, so an admin can map it.
    pub(crate) fn note_ignored(&self, ignored: &[String]) {
        if ignored.is_empty() {
            return;
        }
        let mut seen = self
            .ignored_names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for name in ignored {
            if let Some((name, last)) = seen.see(name) {
                tracing::info!(attribute = %name.escape_debug(), "attribute not in the schema; ignored (map it in the config to keep it)");
                if last {
                    tracing::warn!(
                        MAX_IGNORED_NAMES,
                        "this many unknown attribute names seen; further ones are not logged"
                    );
                }
            }
        }
    }
}

/// Unknown attribute names already logged: the first `MAX_IGNORED_NAMES`, each cut to
/// `MAX_LOGGED_NAME` characters, so that a client sending made-up names can neither grow the
/// set nor flood the log without end.
#[derive(Debug, Default)]
pub(crate) struct IgnoredNames(std::collections::HashSet<String>);

impl IgnoredNames {
    /// The name to log (cut) when `name` is new and within the bound, and whether it is the
    /// last one logged; `None` when it was seen before or the bound is reached.
    fn see(&mut self, name: &str) -> Option<(String, bool)> {
        if self.0.len() >= MAX_IGNORED_NAMES {
            return None;
        }
        let name: String = name.chars().take(MAX_LOGGED_NAME).collect();
        let new = self.0.insert(name.to_ascii_lowercase());
        let last = self.0.len() == MAX_IGNORED_NAMES;
        new.then_some((name, last))
    }
}

/// Most unknown attribute names logged in a process.
const MAX_IGNORED_NAMES: usize = 1000;

/// Longest part of an unknown attribute name that is logged.
const MAX_LOGGED_NAME: usize = 128;

/// Who a cached resource's projection is for.
pub(crate) fn ident(resource: &StoredResource) -> Ident<'_> {
    Ident {
        id: &resource.id,
        posix_id: resource.posix_id,
    }
}

/// Adds a rename to `plan` when the DN changes, in letter case too: the directory keeps the
/// RDN value as written, and a legacy application shows it.
pub(crate) fn push_rename(plan: &mut Plan, old_dn: &str, new_dn: &str) {
    if old_dn == new_dn {
        return;
    }
    let old_parent = parent_dn(old_dn);
    let new_parent = parent_dn(new_dn);
    plan.ops.push(DirOp::Rename {
        dn: old_dn.to_string(),
        new_rdn: rdn(new_dn).to_string(),
        new_parent: (!old_parent.eq_ignore_ascii_case(new_parent)).then(|| new_parent.to_string()),
        new_dn: new_dn.to_string(),
    });
}

/// Adds the attribute changes from `old` to `new` (on `new`'s DN) to `plan`.
pub(crate) fn push_modify(
    plan: &mut Plan,
    old: &Projection,
    new: &Projection,
    rdn_attribute: &str,
) {
    let mods = diff(old, new, rdn_attribute);
    if mods.is_empty() {
        return;
    }
    let mut replace = Vec::new();
    let mut add_classes = Vec::new();
    for change in mods {
        match change {
            crate::directory::Mod::Add(attr, values)
                if attr.eq_ignore_ascii_case("objectClass") =>
            {
                add_classes.extend(values)
            }
            crate::directory::Mod::Replace(attr, values) => replace.push((attr, values)),
            crate::directory::Mod::Add(attr, values)
            | crate::directory::Mod::Delete(attr, values) => {
                replace.push((attr, values));
            }
        }
    }
    plan.ops.push(DirOp::Modify {
        dn: new.dn.clone(),
        replace,
        add_classes,
    });
}

fn user_name_of(doc: &Value) -> Result<String, ServiceError> {
    match doc.get("userName").and_then(Value::as_str) {
        Some(name) if !name.trim().is_empty() => Ok(name.to_string()),
        _ => Err(crate::scim::ScimError::invalid_value("`userName` is required").into()),
    }
}

pub(crate) fn external_id_of(doc: &Value) -> Option<String> {
    doc.get("externalId")
        .and_then(Value::as_str)
        .map(str::to_string)
}

pub(super) fn is_active(doc: &Value) -> bool {
    doc.get("active").and_then(Value::as_bool).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_attribute_names_are_logged_once_each_up_to_a_bound() {
        let mut names = IgnoredNames::default();
        assert_eq!(names.see("nickname"), Some(("nickname".to_string(), false)));
        assert_eq!(names.see("NickName"), None);
        let long = "x".repeat(1000);
        assert_eq!(names.see(&long), Some(("x".repeat(MAX_LOGGED_NAME), false)));
        for n in names.0.len()..MAX_IGNORED_NAMES - 1 {
            assert!(matches!(
                names.see(&format!("made-up-{n}")),
                Some((_, false))
            ));
        }
        assert!(matches!(names.see("the-last"), Some((_, true))));
        assert_eq!(names.see("one-more"), None);
        assert_eq!(names.0.len(), MAX_IGNORED_NAMES);
    }
}
