//! Rebuilding a lost cache from the directory: every entry under the managed bases that
//! carries a SCIM id (`users.id_attribute`, `groups.id_attribute`) becomes a cached resource
//! again with that id, so the IdP's ids keep working. Resources already cached are left alone.

use serde_json::Value;

use super::ReconcileError;
use crate::directory::SearchScope;
use crate::mapping::Deactivate;
use crate::service::Service;
use crate::store::{Commit, IndexedField, Kind, StoredResource};

/// What a rebuild restored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Users restored.
    pub users: u64,
    /// Groups restored.
    pub groups: u64,
    /// Memberships restored.
    pub memberships: u64,
    /// Entries without a SCIM id (not restorable; reported as orphans by a run).
    pub skipped: u64,
}

/// Restores cached resources from the directory; see the module documentation.
///
/// Fails when no id attribute is configured, since the IdP's ids could not be restored.
pub async fn rebuild_cache(
    service: &Service,
    page_size: u32,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RebuildReport, ReconcileError> {
    let config = service.config();
    let (Some(user_id_attr), Some(group_id_attr)) = (
        config.users.id_attribute.clone(),
        config.groups.id_attribute.clone(),
    ) else {
        return Err(ReconcileError::NoIdAttribute);
    };
    let entry_id_attr = config.ldap.flavor.entry_id_attribute().to_string();
    let store = service.store();
    let now = crate::service::now();
    let mut report = RebuildReport::default();
    let mut scanned = 0u64;

    // Users, from the enabled and (with `move`) the disabled base.
    let mut bases = vec![config.users.base_dn.clone()];
    if let Deactivate::Move { disabled_base_dn } = &config.users.deactivate {
        bases.push(disabled_base_dn.clone());
    }
    let (_, mut user_attrs) = config.users.ldap_names();
    user_attrs.push(entry_id_attr.clone());
    let mut managers = Vec::new();
    for (n, base) in bases.into_iter().enumerate() {
        // The disabled OU (the second base) may not exist yet; the users base must.
        let optional = n > 0;
        let mut stream = match service
            .directory()
            .stream(
                &base,
                SearchScope::OneLevel,
                "(objectClass=*)",
                user_attrs.clone(),
                page_size,
            )
            .await
        {
            Ok(stream) => stream,
            Err(crate::directory::DirectoryError::NoSuchObject(_)) if optional => continue,
            Err(err) => return Err(err.into()),
        };
        loop {
            let entry = match stream.next().await {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(crate::directory::DirectoryError::NoSuchObject(_)) if optional => break,
                Err(err) => return Err(err.into()),
            };
            scanned += 1;
            progress(scanned);
            let Some(id) = entry.first(&user_id_attr).map(str::to_string) else {
                report.skipped += 1;
                continue;
            };
            if store.get(Kind::User, &id).await?.is_some() {
                continue;
            }
            let unprojected =
                config
                    .users
                    .unproject(&entry.dn, &entry.attrs, service.discovery().user_schema());
            let Some(name) = unprojected
                .doc
                .get("userName")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                report.skipped += 1;
                continue;
            };
            if let Some((path, manager_dn)) = unprojected.manager_dn {
                managers.push((id.clone(), path, manager_dn));
            }
            store
                .commit(Commit {
                    upsert: Some(StoredResource {
                        id,
                        kind: Kind::User,
                        name,
                        external_id: external_id_in(&unprojected.doc),
                        dn: entry.dn.clone(),
                        entry_uuid: entry.first(&entry_id_attr).map(str::to_string),
                        posix_id: entry.first("uidNumber").and_then(|n| n.parse().ok()),
                        version: 1,
                        member_gen: 0,
                        created: now.clone(),
                        last_modified: now.clone(),
                        doc: unprojected.doc,
                    }),
                    ..Commit::default()
                })
                .await?;
            report.users += 1;
        }
    }
    // Managers, now that every user is back.
    for (id, path, manager_dn) in managers {
        let Some(manager) = store
            .find(Kind::User, IndexedField::Dn, &manager_dn)
            .await?
            .pop()
        else {
            continue;
        };
        if let Some(mut user) = store.get(Kind::User, &id).await? {
            if let Value::Object(doc) = &mut user.doc {
                crate::mapping::set_path(
                    doc,
                    &path,
                    std::slice::from_ref(&manager.id),
                    service.discovery().user_schema(),
                );
            }
            store
                .commit(Commit {
                    upsert: Some(user),
                    ..Commit::default()
                })
                .await?;
        }
    }

    // Groups and their members.
    let member_attr = config.groups.class.member_attribute().to_string();
    // Every attribute the group mapping writes (its rules' too), and the directory's id.
    let (_, mut attrs) = config.groups.ldap_names();
    attrs.push(entry_id_attr.clone());
    let mut stream = service
        .directory()
        .stream(
            &config.groups.base_dn,
            SearchScope::OneLevel,
            "(objectClass=*)",
            attrs,
            page_size,
        )
        .await?;
    while let Some(entry) = stream.next().await? {
        scanned += 1;
        progress(scanned);
        let Some(id) = entry.first(&group_id_attr).map(str::to_string) else {
            report.skipped += 1;
            continue;
        };
        if store.get(Kind::Group, &id).await?.is_some() {
            continue;
        }
        let Some(name) = entry
            .first(&config.groups.rdn_attribute)
            .map(str::to_string)
        else {
            report.skipped += 1;
            continue;
        };
        let mut members_add = Vec::new();
        for value in entry.values(&member_attr) {
            let user = match config.groups.class {
                crate::mapping::GroupClass::PosixGroup => store
                    .find(Kind::User, IndexedField::Name, value)
                    .await?
                    .pop(),
                _ => store.find(Kind::User, IndexedField::Dn, value).await?.pop(),
            };
            if let Some(user) = user {
                members_add.push((id.clone(), user.id));
            }
        }
        report.memberships += members_add.len() as u64;
        let doc = config
            .groups
            .unproject(&entry.attrs, service.discovery().group_schema());
        store
            .commit(Commit {
                upsert: Some(StoredResource {
                    id,
                    kind: Kind::Group,
                    name: name.clone(),
                    external_id: external_id_in(&doc),
                    dn: entry.dn.clone(),
                    entry_uuid: entry.first(&entry_id_attr).map(str::to_string),
                    posix_id: entry.first("gidNumber").and_then(|n| n.parse().ok()),
                    version: 1,
                    member_gen: 0,
                    created: now.clone(),
                    last_modified: now.clone(),
                    doc,
                }),
                members_add,
                ..Commit::default()
            })
            .await?;
        report.groups += 1;
    }
    tracing::info!(
        users = report.users,
        groups = report.groups,
        memberships = report.memberships,
        skipped = report.skipped,
        "cache rebuilt from the directory"
    );
    Ok(report)
}

/// The `externalId` of a rebuilt document, when a rule maps it (indexed beside the document,
/// as a write does).
fn external_id_in(doc: &Value) -> Option<String> {
    doc.get("externalId")
        .and_then(Value::as_str)
        .map(str::to_string)
}
