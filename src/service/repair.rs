//! Repairs for reconciliation: what an entry should be, and the write that puts it back. They
//! take the same per-resource locks and go through the same intent/commit path as IdP writes.

use serde_json::Value;

use super::plan::{DirOp, Plan, PlannedResource};
use super::users::push_rename;
use super::{Service, ServiceError};
use crate::directory::Entry;
use crate::mapping::{drift, parent_dn, rdn, Deactivate, OnDisableGroups, Projection};
use crate::store::{Kind, StoredResource};

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
        let remove_disabled = self.config.users.on_disable_groups == OnDisableGroups::Remove;
        let mut values = Vec::new();
        for member_id in self.store.members(&group.id).await? {
            if let Some(user) = self.store.get(Kind::User, &member_id).await? {
                let active = user
                    .doc
                    .get("active")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                if active || !remove_disabled {
                    values.push(self.member_value_of(&user.name, &user.dn));
                }
            }
        }
        if values.is_empty() && self.config.groups.class.needs_placeholder() {
            values.push(self.config.groups.placeholder_member.clone());
        }
        Ok(values)
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
        let expected = self.expected_entry(&resource).await?;
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
        match entry {
            None => {
                let mut add_attrs = expected.to_add_attrs();
                if kind == Kind::Group {
                    add_attrs.push((member_attr, self.expected_member_values(&resource).await?));
                }
                plan.ops.push(DirOp::Add {
                    dn: expected.dn.clone(),
                    attrs: add_attrs,
                    adopt: true,
                });
                if kind == Kind::User {
                    self.plan_rejoin_groups(&mut plan, &resource).await?;
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
                    let wanted = self.expected_member_values(&resource).await?;
                    let have = entry.values(&member_attr);
                    let key = |value: &String| crate::mapping::dn_key(value);
                    let missing: Vec<String> = wanted
                        .iter()
                        .filter(|w| !have.iter().any(|h| key(h) == key(w)))
                        .cloned()
                        .collect();
                    let extra: Vec<String> = have
                        .iter()
                        .filter(|h| !wanted.iter().any(|w| key(w) == key(h)))
                        .cloned()
                        .collect();
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
        if plan.ops.is_empty() {
            return Ok(false);
        }
        plan.upsert = Some(PlannedResource::from(&StoredResource {
            dn: expected.dn.clone(),
            ..resource
        }));
        self.execute(plan).await?;
        Ok(true)
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
        let mut plan = Plan::new();
        let set = |attr: &str, value: &str| -> Option<DirOp> {
            if entry
                .values(attr)
                .iter()
                .any(|have| have.eq_ignore_ascii_case(value))
            {
                None
            } else {
                Some(DirOp::Modify {
                    dn: entry.dn.clone(),
                    replace: vec![(attr.to_string(), vec![value.to_string()])],
                    add_classes: Vec::new(),
                })
            }
        };
        let op = match &self.config.users.deactivate {
            Deactivate::PpolicyLock => set("pwdAccountLockedTime", "000001010000Z"),
            Deactivate::NsAccountLock => set("nsAccountLock", "TRUE"),
            Deactivate::AdUserAccountControl => set("userAccountControl", "514"),
            Deactivate::Attribute { attr, value } => set(attr, value),
            Deactivate::Move { disabled_base_dn } => {
                let in_disabled = crate::mapping::dn_key(parent_dn(&entry.dn))
                    == crate::mapping::dn_key(disabled_base_dn);
                (!in_disabled).then(|| DirOp::Rename {
                    dn: entry.dn.clone(),
                    new_rdn: rdn(&entry.dn).to_string(),
                    new_parent: Some(disabled_base_dn.clone()),
                    new_dn: format!("{},{disabled_base_dn}", rdn(&entry.dn)),
                })
            }
        };
        let Some(op) = op else {
            return Ok(false);
        };
        plan.ops.push(op);
        self.execute(plan).await?;
        tracing::info!(dn = %entry.dn, "orphan account disabled");
        Ok(true)
    }
}
