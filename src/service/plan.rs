//! Write plans: the directory operations of one write, recorded as an intent before they run
//! and replayed at start-up if the process stopped before the cache commit.
//!
//! Every operation is idempotent on replay: an add whose entry exists becomes a modify to the
//! planned state, a value add or delete that is already done counts as done, a delete of a
//! missing entry is done, and a rename whose source is gone but whose target exists is done.
//! The plan is a private persistence format of the intent table, hence its serde derives.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

use super::suspects::{FailedAdd, Suspect};
use super::{Service, ServiceError};
use crate::directory::{Directory, DirectoryError, Mod};
use crate::store::{Commit, Kind, StoredResource};

/// One directory operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum DirOp {
    /// Add an entry; if the DN exists, adopt it (replace the planned attributes, and delete
    /// those in `clear`) when `adopt`. With `disabled_dn`, an entry waiting there (a user
    /// deleted with `on_delete = "disable"` under `deactivate = "move"`) is moved back to `dn`
    /// first and adopted, so that a re-granted account is the one it was.
    Add {
        dn: String,
        attrs: Vec<(String, Vec<String>)>,
        adopt: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        clear: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disabled_dn: Option<String>,
    },
    /// Replace attributes (`(attr, values)`, empty values delete) and add object classes.
    Modify {
        dn: String,
        replace: Vec<(String, Vec<String>)>,
        add_classes: Vec<String>,
    },
    /// Rename `dn` to `new_rdn` under `new_parent`.
    Rename {
        dn: String,
        new_rdn: String,
        new_parent: Option<String>,
        new_dn: String,
    },
    /// Delete an entry.
    Delete { dn: String },
    /// Add one value to one attribute.
    AddValue {
        dn: String,
        attr: String,
        value: String,
    },
    /// Delete one value from one attribute. With `keep_valid`, when the schema refuses the
    /// delete (the last member of a group that must have one: another write removed the others
    /// meanwhile), that value comes in as the deleted one goes, in one modify.
    DeleteValue {
        dn: String,
        attr: String,
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep_valid: Option<String>,
    },
    /// Add several values to one attribute in one modify; if one is there already, falls back
    /// to one modify per value (so that the rest still land).
    AddValues {
        dn: String,
        attr: String,
        values: Vec<String>,
    },
    /// Delete several values in one modify, with the same fallback for one already gone, and
    /// `keep_valid` as for `DeleteValue`.
    DeleteValues {
        dn: String,
        attr: String,
        values: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep_valid: Option<String>,
    },
}

/// What a write does: directory operations, then the cache commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// Directory operations, in order.
    pub ops: Vec<DirOp>,
    /// The resource as it will be cached (None for a delete).
    pub upsert: Option<PlannedResource>,
    /// The resource id to forget (a delete).
    pub delete: Option<String>,
    /// Membership rows to add and remove, and a group whose rows are cleared first.
    pub members_add: Vec<(String, String)>,
    pub members_remove: Vec<(String, String)>,
    pub members_clear: Option<String>,
    /// The write also sets a password (never part of the stored plan; for the audit record).
    #[serde(skip)]
    pub sets_password: bool,
    /// Password hashes of an entry the plan deletes, to put back if the delete is applied but
    /// not acknowledged (never part of the stored plan).
    #[serde(skip)]
    pub password_hashes: Vec<SecretString>,
    /// Read `password_hashes` from this entry before the directory operations run (beside
    /// the intent's write, so that it costs no latency of its own).
    #[serde(skip)]
    pub keep_password_of: Option<String>,
}

/// A `StoredResource` in the plan's persistence format.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PlannedResource {
    pub id: String,
    pub group: bool,
    pub name: String,
    pub external_id: Option<String>,
    pub dn: String,
    pub entry_uuid: Option<String>,
    #[serde(default)]
    pub posix_id: Option<i64>,
    pub version: i64,
    pub created: String,
    pub last_modified: String,
    pub doc: serde_json::Value,
}

impl PlannedResource {
    /// User or Group.
    pub(crate) fn kind(&self) -> Kind {
        if self.group {
            Kind::Group
        } else {
            Kind::User
        }
    }
}

impl From<&StoredResource> for PlannedResource {
    fn from(stored: &StoredResource) -> PlannedResource {
        PlannedResource {
            id: stored.id.clone(),
            group: stored.kind == Kind::Group,
            name: stored.name.clone(),
            external_id: stored.external_id.clone(),
            dn: stored.dn.clone(),
            entry_uuid: stored.entry_uuid.clone(),
            posix_id: stored.posix_id,
            version: stored.version,
            created: stored.created.clone(),
            last_modified: stored.last_modified.clone(),
            doc: stored.doc.clone(),
        }
    }
}

impl From<PlannedResource> for StoredResource {
    fn from(planned: PlannedResource) -> StoredResource {
        StoredResource {
            kind: planned.kind(),
            id: planned.id,
            name: planned.name,
            external_id: planned.external_id,
            dn: planned.dn,
            entry_uuid: planned.entry_uuid,
            posix_id: planned.posix_id,
            version: planned.version,
            // Not written by an upsert: the store keeps the row's own.
            member_gen: 0,
            created: planned.created,
            last_modified: planned.last_modified,
            doc: planned.doc,
        }
    }
}

impl Plan {
    /// An empty plan.
    pub(crate) fn new() -> Plan {
        Plan {
            ops: Vec::new(),
            upsert: None,
            delete: None,
            members_add: Vec::new(),
            members_remove: Vec::new(),
            members_clear: None,
            sets_password: false,
            password_hashes: Vec::new(),
            keep_password_of: None,
        }
    }

    /// What the audit log says about this plan: the resource and the LDAP attribute names it
    /// touches, never their values.
    fn audit_change(&self) -> crate::audit::Change {
        let mut attributes = Vec::new();
        for op in &self.ops {
            match op {
                DirOp::Add { attrs, .. } => {
                    for (attr, _) in attrs {
                        crate::audit::push_name(&mut attributes, attr);
                    }
                }
                DirOp::Modify {
                    replace,
                    add_classes,
                    ..
                } => {
                    for (attr, _) in replace {
                        crate::audit::push_name(&mut attributes, attr);
                    }
                    if !add_classes.is_empty() {
                        crate::audit::push_name(&mut attributes, "objectClass");
                    }
                }
                DirOp::Rename { new_rdn, .. } => {
                    let rdn_attr = new_rdn.split('=').next().unwrap_or(new_rdn);
                    crate::audit::push_name(&mut attributes, rdn_attr);
                }
                DirOp::Delete { .. } => {}
                DirOp::AddValue { attr, .. }
                | DirOp::DeleteValue { attr, .. }
                | DirOp::AddValues { attr, .. }
                | DirOp::DeleteValues { attr, .. } => {
                    crate::audit::push_name(&mut attributes, attr);
                }
            }
        }
        if self.sets_password {
            crate::audit::push_name(&mut attributes, "userPassword");
        }
        let (resource_type, resource_id) = match (&self.upsert, &self.delete) {
            (Some(planned), _) => (Some(planned.kind().as_str()), planned.id.clone()),
            (None, Some(id)) => (None, id.clone()),
            (None, None) => (None, String::new()),
        };
        crate::audit::Change {
            resource_type,
            resource_id,
            attributes,
            n_operations: self.ops.len() + usize::from(self.sets_password),
        }
    }

    fn into_commit(
        self,
        intent_seq: i64,
        entry_uuid: Option<String>,
        trace: &ApplyTrace,
    ) -> Commit {
        Commit {
            intent_seq: Some(intent_seq),
            upsert: self.upsert.map(|planned| {
                let mut stored = StoredResource::from(planned);
                if entry_uuid.is_some() {
                    stored.entry_uuid = entry_uuid;
                }
                if trace.adopted_posix_id.is_some() {
                    stored.posix_id = trace.adopted_posix_id;
                }
                stored
            }),
            delete: self.delete,
            members_add: self.members_add,
            members_remove: self.members_remove,
            members_clear: self.members_clear,
        }
    }
}

// The test hooks below read the environment in debug builds only, which is what the
// integration tests run (`cargo test`). A release build has constant "no fault" variants, so
// nothing in a deployed daemon's environment can crash, delay or fail its writes.

/// Test hook: with `SCIM2LDAP_TEST_CRASH_AFTER_DIRECTORY=1` in the environment the process
/// exits right after the directory write and before the cache commit, as a SIGKILL there would.
/// Integration tests use it to prove that intents are replayed; it is read once per process.
#[cfg(debug_assertions)]
fn crash_after_directory() -> bool {
    static CRASH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CRASH.get_or_init(|| {
        std::env::var_os("SCIM2LDAP_TEST_CRASH_AFTER_DIRECTORY").is_some_and(|v| v == "1")
    })
}

/// Release builds never crash on purpose.
#[cfg(not(debug_assertions))]
fn crash_after_directory() -> bool {
    false
}

/// Test hook: `SCIM2LDAP_TEST_COMMIT_DELAY_MS=<n>` in the environment holds a client's write
/// for n milliseconds between its directory write and its cache commit, so that tests can run
/// something in that window. Read once per process.
#[cfg(debug_assertions)]
fn commit_delay() -> Option<std::time::Duration> {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("SCIM2LDAP_TEST_COMMIT_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(std::time::Duration::from_millis)
    })
}

/// Release builds never hold a write.
#[cfg(not(debug_assertions))]
fn commit_delay() -> Option<std::time::Duration> {
    None
}

/// Test hook: with `SCIM2LDAP_TEST_LOSE_REPLY=1` in the environment, a client's write whose
/// directory operations all succeeded fails as if the connection had dropped before the last
/// reply (a transient error, nothing committed). Replays and repairs are not affected. Read
/// once per process.
#[cfg(debug_assertions)]
fn lose_reply() -> bool {
    static LOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOSE.get_or_init(|| std::env::var_os("SCIM2LDAP_TEST_LOSE_REPLY").is_some_and(|v| v == "1"))
}

/// Release builds never drop a reply.
#[cfg(not(debug_assertions))]
fn lose_reply() -> bool {
    false
}

/// What `apply_ops` learned on the way, also when it failed.
#[derive(Debug, Default)]
pub(crate) struct ApplyTrace {
    /// An add found its entry and took it over.
    pub adopted: bool,
    /// At least one directory write of the plan succeeded: a later failure leaves the entry
    /// partly changed.
    pub wrote: bool,
    /// The POSIX number (`uidNumber` of a user, `gidNumber` of a group) of an adopted entry
    /// that had one: kept in the directory, and cached instead of the allocated one.
    pub adopted_posix_id: Option<i64>,
}

impl Service {
    /// Records `plan` as an intent, applies it to the directory, and commits it; on a
    /// directory failure the intent is dropped and nothing is committed.
    pub(crate) async fn execute(&self, plan: Plan) -> Result<Option<String>, ServiceError> {
        self.execute_then(plan, || async { Ok(()) }).await
    }

    /// As `execute`, running `then` after the plan's directory operations and before the
    /// commit (a password change, which is never part of a stored plan).
    pub(crate) async fn execute_then<F, Fut>(
        &self,
        plan: Plan,
        then: F,
    ) -> Result<Option<String>, ServiceError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), DirectoryError>>,
    {
        // Boxed: the directory, fsync and commit futures make this one large, and every
        // caller's future would otherwise embed it and copy it on each move.
        Box::pin(self.execute_plan(plan, then)).await
    }

    async fn execute_plan<F, Fut>(
        &self,
        plan: Plan,
        then: F,
    ) -> Result<Option<String>, ServiceError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), DirectoryError>>,
    {
        let _in_flight = crate::Counted::new(&self.writes_in_flight);
        let resource_id = plan
            .upsert
            .as_ref()
            .map(|planned| planned.id.clone())
            .or_else(|| plan.delete.clone())
            .unwrap_or_default();
        let text = serde_json::to_string(&plan).map_err(|err| {
            ServiceError::Store(crate::store::StoreError::Open {
                path: Default::default(),
                reason: format!("encode plan: {err}"),
            })
        })?;
        let mut plan = plan;
        // The directory futures below are boxed: held inline they made this write's future
        // 12.7 KB (2.2 KB now), all of it copied when the caller boxes it, for a search only
        // deletes make and a directory write that is the same size whatever the plan.
        let keep_password = async {
            match &plan.keep_password_of {
                Some(dn) => Box::pin(self.directory.password_hashes(dn)).await,
                None => Ok(Vec::new()),
            }
        };
        let (seq, hashes) =
            tokio::join!(self.store.record_intent(&resource_id, text), keep_password);
        let seq = seq?;
        match hashes {
            Ok(hashes) => plan.password_hashes = hashes,
            Err(err) => {
                // Nothing was applied yet: drop the intent and answer as for any failure.
                self.drop_intent(seq).await;
                return Err(err.into());
            }
        }
        // The intent is in the WAL now (safe from a process crash); its fsync runs while the
        // directory works, and the reply waits for both (see store/mod.rs on durability).
        let mut trace = ApplyTrace::default();
        let started = std::time::Instant::now();
        let directory_work = async {
            let target = Target::new(self, &resource_id);
            let applied = match Box::pin(apply_ops(&target, &plan.ops, false, &mut trace)).await {
                Ok(entry_uuid) => then().await.map(|()| entry_uuid),
                Err(err) => Err(err),
            };
            if applied.is_ok() {
                self.directory_write_time.note(started.elapsed());
            }
            applied
        };
        // A write alone has nobody to share an fsync with: its fsync starts at once. Others in
        // flight may join it if it waits up to half the directory's usual time, leaving room
        // for a slow flush. The fsync is planned now and runs while the directory works; it is
        // awaited only once the directory has answered, so that its completion, usually the
        // earlier, wakes no request thread (a third fewer thread switches one at a time).
        let by = if self.writes_in_flight.load(Ordering::Relaxed) > 1 {
            started + self.directory_write_time.get() / 2
        } else {
            started
        };
        let synced = self.store.start_sync_by(by);
        let applied = directory_work.await;
        let synced = match synced {
            Ok(synced) => synced.await,
            Err(err) => Err(err),
        };
        let applied = match applied {
            Ok(_) if lose_reply() && crate::audit::in_request() => {
                tracing::warn!("test hook: reporting an applied write as a lost reply");
                Err(DirectoryError::Unavailable(
                    "test hook: reply lost".to_string(),
                ))
            }
            other => other,
        };
        if let Err(sync_err) = synced {
            // The directory may hold the change while the IdP is told it failed; the intent is
            // in the WAL, so the next start replays it and both agree again.
            tracing::error!(error = %sync_err, "cache fsync failed");
            crate::audit::record(&plan.audit_change(), Some("cache"));
            return Err(sync_err.into());
        }
        match applied {
            Ok(entry_uuid) => {
                if crash_after_directory() {
                    tracing::error!("test hook: exiting between directory write and cache commit");
                    std::process::exit(86);
                }
                if let Some(delay) = commit_delay().filter(|_| crate::audit::in_request()) {
                    tracing::warn!(?delay, "test hook: holding the write before its commit");
                    tokio::time::sleep(delay).await;
                }
                let change = plan.audit_change();
                match self
                    .store
                    .commit(plan.into_commit(seq, entry_uuid.clone(), &trace))
                    .await
                {
                    Ok(()) => crate::audit::record(&change, None),
                    Err(err) => {
                        // Applied to the directory; the intent stays and is replayed.
                        crate::audit::record(&change, Some("cache"));
                        return Err(err.into());
                    }
                }
                Ok(entry_uuid)
            }
            Err(err) => {
                let class = if err.is_transient() {
                    "unavailable"
                } else {
                    "refused"
                };
                crate::audit::record(&plan.audit_change(), Some(class));
                // The IdP is told nothing changed, and the cache still holds the previous state.
                // A transient failure may hide an applied or partly applied plan, and a refusal
                // after an earlier write of the plan succeeded (a rename, then a modify the
                // schema refuses; an add, then a password the policy refuses) leaves the entry
                // half changed: either way the entry is put back to the cached state once the
                // directory answers (reconcile/suspects).
                if err.is_transient() || trace.wrote {
                    self.note_suspect(&plan, &trace).await;
                }
                self.drop_intent(seq).await;
                Err(err.into())
            }
        }
    }
}

impl Service {
    /// Removes intent `seq` of a plan that changed nothing it could commit.
    async fn drop_intent(&self, seq: i64) {
        if let Err(store_err) = self.forget_intent(seq).await {
            tracing::error!(error = %store_err, "could not drop a failed intent");
        }
    }

    /// Removes intent `seq` without committing anything of its plan.
    async fn forget_intent(&self, seq: i64) -> Result<(), crate::store::StoreError> {
        self.store
            .commit(Commit {
                intent_seq: Some(seq),
                ..Commit::default()
            })
            .await
    }

    /// Remembers the resource of `plan`, which failed transiently, as suspect.
    async fn note_suspect(&self, plan: &Plan, trace: &ApplyTrace) {
        let (kind, id) = match (&plan.upsert, &plan.delete) {
            (Some(planned), _) => (planned.kind(), planned.id.clone()),
            (None, Some(id)) => match self.cached_kind(id).await {
                Some(kind) => (kind, id.clone()),
                None => return,
            },
            // An orphan's plan: the next reconciliation run looks at it again.
            (None, None) => return,
        };
        let mut suspect = Suspect::new(kind, id);
        for op in &plan.ops {
            match op {
                DirOp::Add { dn, .. } => {
                    if let Some(planned) = plan
                        .upsert
                        .as_ref()
                        .filter(|planned| planned.dn.eq_ignore_ascii_case(dn))
                    {
                        suspect.added = Some(FailedAdd {
                            dn: dn.clone(),
                            name: planned.name.clone(),
                            adopted: trace.adopted,
                        });
                    }
                }
                DirOp::Rename { new_dn, .. } => suspect.dns.push(new_dn.clone()),
                DirOp::AddValue { .. }
                | DirOp::DeleteValue { .. }
                | DirOp::AddValues { .. }
                | DirOp::DeleteValues { .. } => {
                    suspect.touched_groups |= kind == Kind::User;
                }
                DirOp::Modify { .. } | DirOp::Delete { .. } => {}
            }
        }
        suspect.password_hashes = plan.password_hashes.clone();
        tracing::info!(
            resource_type = kind.as_str(),
            resource_id = %suspect.id,
            "write failed with the directory unavailable or after part of it landed; its entry is checked when the directory answers"
        );
        self.suspects.insert(suspect);
    }

    /// The kind of cached resource `id`, if cached.
    async fn cached_kind(&self, id: &str) -> Option<Kind> {
        for kind in [Kind::User, Kind::Group] {
            match self.store.get(kind, id).await {
                Ok(Some(_)) => return Some(kind),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "cache read failed; a failed write is left to reconciliation");
                    return None;
                }
            }
        }
        None
    }
}

/// Where `apply_ops` writes, and for whom.
struct Target<'a> {
    directory: &'a Directory,
    /// The cache, to tell whose an existing entry is before an add takes it over.
    store: &'a crate::store::Store,
    /// The directory's own id attribute (`entryUUID`, `objectGUID`...).
    id_attr: &'a str,
    /// The resource the plan writes.
    resource_id: &'a str,
    /// Accounts are disabled by bit 2 of `userAccountControl` (Active Directory): a write of
    /// it keeps the entry's other flags.
    account_control: bool,
}

impl Target<'_> {
    /// Whether `dn` is the entry of the resource the plan writes, as the cache knows it.
    async fn owns(&self, dn: &str) -> Result<bool, DirectoryError> {
        for kind in [crate::store::Kind::User, crate::store::Kind::Group] {
            let found = self
                .store
                .find(kind, crate::store::IndexedField::Dn, dn)
                .await
                .map_err(cache_error)?;
            if found.iter().any(|resource| resource.id == self.resource_id) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A cache failure met while applying directory operations (where only `DirectoryError` is
/// returned); it ends the write like any other failure.
fn cache_error(err: crate::store::StoreError) -> DirectoryError {
    DirectoryError::Client(format!("cache: {err}"))
}

impl<'a> Target<'a> {
    /// The cached resource of `kind`, other than the one written, whose `field` is `value`.
    async fn other_owner(
        &self,
        kind: Kind,
        field: crate::store::IndexedField,
        value: &str,
    ) -> Result<Option<StoredResource>, DirectoryError> {
        let owners = self
            .store
            .find(kind, field, value)
            .await
            .map_err(cache_error)?;
        Ok(owners
            .into_iter()
            .find(|owner| owner.id != self.resource_id))
    }

    fn new(service: &'a Service, resource_id: &'a str) -> Target<'a> {
        Target {
            directory: &service.directory,
            store: &service.store,
            id_attr: service.config.ldap.flavor.entry_id_attribute(),
            resource_id,
            account_control: service.config.users.deactivate
                == crate::mapping::Deactivate::AdUserAccountControl,
        }
    }
}

/// Applies `ops` in order; returns the directory id of an added entry when the server told it.
async fn apply_ops(
    target: &Target<'_>,
    ops: &[DirOp],
    replay: bool,
    trace: &mut ApplyTrace,
) -> Result<Option<String>, DirectoryError> {
    let mut entry_uuid = None;
    for op in ops {
        apply_op(target, op, replay, trace, &mut entry_uuid).await?;
        trace.wrote = true;
    }
    Ok(entry_uuid)
}

/// Refuses to take over an entry the cache gives to another resource. The directory may call
/// two names one where the cache does not (`alice` and `alice ` are one `uid` under LDAP's
/// insignificant-space rule): adopting would hand one user's entry, and its password, to
/// another resource, whose delete would then remove it.
async fn check_adoptable(target: &Target<'_>, dn: &str) -> Result<(), DirectoryError> {
    let existing = target.directory.read(dn, &[target.id_attr]).await?;
    let Some(uuid) = existing
        .as_ref()
        .and_then(|entry| entry.first(target.id_attr))
    else {
        return Ok(());
    };
    for kind in [Kind::User, Kind::Group] {
        let owner = target
            .other_owner(kind, crate::store::IndexedField::EntryUuid, uuid)
            .await?;
        if let Some(owner) = owner {
            return Err(DirectoryError::Taken {
                detail: format!(
                    "the directory takes this name for another provisioned {}'s (it compares the two as equal)",
                    kind.as_str().to_lowercase()
                ),
                cause: format!(
                    "{dn} is the entry of {} {}: the directory takes the two names for one",
                    kind.as_str(),
                    owner.id
                ),
            });
        }
    }
    Ok(())
}

/// Whether the entry at `new_dn` is the resource's own, renamed by an earlier try: it exists,
/// no other resource has it, and its directory id is the one cached for the resource (when
/// one is). Another entry there is never taken for it (refused as not unique).
async fn renamed_already(target: &Target<'_>, new_dn: &str) -> Result<bool, DirectoryError> {
    let Some(entry) = target.directory.read(new_dn, &[target.id_attr]).await? else {
        return Ok(false);
    };
    check_adoptable(target, new_dn).await?;
    let mut cached = None;
    for kind in [Kind::User, Kind::Group] {
        if let Some(own) = target
            .store
            .get(kind, target.resource_id)
            .await
            .map_err(cache_error)?
        {
            cached = own.entry_uuid;
        }
    }
    match (cached, entry.first(target.id_attr)) {
        (Some(cached), Some(found)) if !cached.eq_ignore_ascii_case(found) => {
            Err(DirectoryError::Taken {
                detail:
                    "the new name is taken in the directory by another entry than this resource's"
                        .to_string(),
                cause: format!("{new_dn} is another entry than the one this resource had"),
            })
        }
        _ => Ok(true),
    }
}

/// Refuses to adopt an entry whose POSIX number another cached resource has: two accounts
/// would own the same files. Checked before the entry is changed.
async fn check_number_free(
    target: &Target<'_>,
    number_attr: &str,
    number: i64,
    dn: &str,
) -> Result<(), DirectoryError> {
    let kind = if number_attr == "uidNumber" {
        Kind::User
    } else {
        Kind::Group
    };
    let owner = target
        .other_owner(
            kind,
            crate::store::IndexedField::PosixId,
            &number.to_string(),
        )
        .await?;
    match owner {
        Some(owner) => Err(DirectoryError::Taken {
            detail: format!(
                "the existing entry of this name has {number_attr} {number}, which another provisioned {} has already: give one of them another number in the directory",
                kind.as_str().to_lowercase()
            ),
            cause: format!(
                "{dn} has {number_attr} {number}, which {} {} has already",
                kind.as_str(),
                owner.id
            ),
        }),
        None => Ok(()),
    }
}

/// Deletes `value`, the entry's last value of `attr` (its schema refused the plain delete), by
/// adding `placeholder` in the same modify.
async fn delete_keeping_valid(
    directory: &Directory,
    dn: &str,
    attr: &str,
    value: &str,
    placeholder: &str,
) -> Result<(), DirectoryError> {
    let mods = [
        Mod::Add(attr.to_string(), vec![placeholder.to_string()]),
        Mod::Delete(attr.to_string(), vec![value.to_string()]),
    ];
    match directory.modify(dn, &mods).await {
        // Gone meanwhile after all: done.
        Ok(()) | Err(DirectoryError::NoSuchAttribute(_)) => Ok(()),
        // The placeholder came in meanwhile: a plain delete leaves the entry valid.
        Err(DirectoryError::ValueExists(_)) => directory.delete_value(dn, attr, value).await,
        Err(err) => Err(err),
    }
}

/// Moves the entry at `from`, if there is one, to `to` (where an add then finds and adopts
/// it); one already at `to`, or none at all, is no error.
async fn move_back(directory: &Directory, from: &str, to: &str) -> Result<(), DirectoryError> {
    let parent = crate::mapping::parent_dn(to);
    let rdn = crate::mapping::rdn(to);
    match directory.rename(from, rdn, Some(parent)).await {
        Ok(()) => {
            tracing::info!("a disabled entry of this name moved back to be adopted");
            Ok(())
        }
        Err(DirectoryError::NoSuchObject(_) | DirectoryError::AlreadyExists(_)) => Ok(()),
        Err(err) => Err(err),
    }
}

/// Applies one operation of `apply_ops`; an add sets `entry_uuid`.
async fn apply_op(
    target: &Target<'_>,
    op: &DirOp,
    replay: bool,
    trace: &mut ApplyTrace,
    entry_uuid: &mut Option<String>,
) -> Result<(), DirectoryError> {
    let (directory, id_attr) = (target.directory, target.id_attr);
    match op {
        DirOp::Add {
            dn,
            attrs,
            adopt,
            clear,
            disabled_dn,
        } => {
            if let Some(disabled_dn) = disabled_dn.as_deref().filter(|_| *adopt || replay) {
                move_back(directory, disabled_dn, dn).await?;
            }
            match directory.add_returning(dn, attrs, id_attr).await {
                Ok(id) => *entry_uuid = id,
                Err(DirectoryError::AlreadyExists(_)) if *adopt || replay => {
                    check_adoptable(target, dn).await?;
                    trace.adopted = true;
                    tracing::info!("entry exists; adopting it");
                    tracing::trace!(dn = %dn, "adopted entry");
                    // An account's POSIX number owns its files: an entry that has one keeps it.
                    let number_attr = ["uidNumber", "gidNumber"].into_iter().find(|number| {
                        attrs
                            .iter()
                            .any(|(attr, _)| attr.eq_ignore_ascii_case(number))
                    });
                    let mut kept = None;
                    if let Some(number_attr) = number_attr {
                        let existing = directory.read(dn, &[number_attr]).await?;
                        kept = existing
                            .as_ref()
                            .and_then(|entry| entry.first(number_attr))
                            .and_then(|value| value.trim().parse::<i64>().ok())
                            .map(|number| (number_attr, number));
                        if let Some((number_attr, number)) = kept {
                            check_number_free(target, number_attr, number, dn).await?;
                        }
                        trace.adopted_posix_id = kept.map(|(_, number)| number);
                    }
                    let mods: Vec<Mod> = attrs
                        .iter()
                        .filter(|(attr, _)| {
                            !kept.is_some_and(|(number_attr, _)| {
                                attr.eq_ignore_ascii_case(number_attr)
                            })
                        })
                        .map(|(attr, values)| {
                            if attr.eq_ignore_ascii_case("objectClass") {
                                Mod::Add(attr.clone(), Vec::new())
                            } else {
                                Mod::Replace(attr.clone(), values.clone())
                            }
                        })
                        .filter(|m| !matches!(m, Mod::Add(_, values) if values.is_empty()))
                        .chain(
                            clear
                                .iter()
                                .map(|attr| Mod::Replace(attr.clone(), Vec::new())),
                        )
                        .collect();
                    let classes: Vec<String> = attrs
                        .iter()
                        .filter(|(attr, _)| attr.eq_ignore_ascii_case("objectClass"))
                        .flat_map(|(_, values)| values.clone())
                        .collect();
                    add_missing_classes(directory, dn, &classes).await?;
                    modify(target, dn, mods).await?;
                    trace.wrote = true;
                    *entry_uuid = directory
                        .read(dn, &[id_attr])
                        .await?
                        .and_then(|entry| entry.first(id_attr).map(str::to_string));
                }
                Err(err) => return Err(err),
            }
        }
        DirOp::Modify {
            dn,
            replace,
            add_classes,
        } => {
            add_missing_classes(directory, dn, add_classes).await?;
            let mods: Vec<Mod> = replace
                .iter()
                .map(|(attr, values)| Mod::Replace(attr.clone(), values.clone()))
                .collect();
            modify(target, dn, mods).await?;
        }
        DirOp::Rename {
            dn,
            new_rdn,
            new_parent,
            new_dn,
        } => match directory.rename(dn, new_rdn, new_parent.as_deref()).await {
            Ok(()) => {}
            // Moved by an earlier try of this plan (a replay), if the entry there is this one.
            Err(DirectoryError::NoSuchObject(text)) => {
                if !renamed_already(target, new_dn).await? {
                    return Err(DirectoryError::NoSuchObject(text));
                }
            }
            Err(err) => return Err(err),
        },
        DirOp::Delete { dn } => directory.delete(dn).await?,
        DirOp::AddValue { dn, attr, value } => match directory.add_value(dn, attr, value).await {
            // Another resource's entry (a group of this user) gone meanwhile: deleted with
            // its group, or by hand, when reconciliation re-creates it with the cached members.
            Err(DirectoryError::NoSuchObject(_)) if !target.owns(dn).await? => {}
            result => result?,
        },
        DirOp::DeleteValue {
            dn,
            attr,
            value,
            keep_valid,
        } => match directory.delete_value(dn, attr, value).await {
            Err(DirectoryError::SchemaViolation { .. }) if keep_valid.is_some() => {
                let placeholder = keep_valid.as_deref().unwrap_or_default();
                delete_keeping_valid(directory, dn, attr, value, placeholder).await?
            }
            result => result?,
        },
        DirOp::AddValues { dn, attr, values } => {
            change_values(directory, dn, attr, values, true, trace).await?
        }
        DirOp::DeleteValues {
            dn,
            attr,
            values,
            keep_valid,
        } => match change_values(directory, dn, attr, values, false, trace).await {
            Err(DirectoryError::SchemaViolation { .. }) if keep_valid.is_some() => {
                // One by one (the last one is what the schema refused): the others are gone.
                let placeholder = keep_valid.as_deref().unwrap_or_default();
                for value in values {
                    match directory.delete_value(dn, attr, value).await {
                        Err(DirectoryError::SchemaViolation { .. }) => {
                            delete_keeping_valid(directory, dn, attr, value, placeholder).await?
                        }
                        result => result?,
                    }
                }
            }
            result => result?,
        },
    }
    Ok(())
}

/// Applies `mods` to `dn`. Where accounts are disabled by a bit of `userAccountControl`, a
/// replace of it sets or clears that bit in the entry's current flags instead, by deleting the
/// value read and adding the new one in the same modify: if the value changed meanwhile, the
/// delete fails and the flags are read again.
async fn modify(target: &Target<'_>, dn: &str, mods: Vec<Mod>) -> Result<(), DirectoryError> {
    use crate::mapping::{ad_account_control, ad_disabled, AD_ACCOUNT_CONTROL};
    let is_flags = |m: &Mod| matches!(m, Mod::Replace(attr, _) if attr.eq_ignore_ascii_case(AD_ACCOUNT_CONTROL));
    let disabled = match mods.iter().find(|m| is_flags(m)) {
        Some(Mod::Replace(_, values)) if target.account_control => ad_disabled(values),
        _ => return target.directory.modify(dn, &mods).await,
    };
    let mut attempts = 0;
    loop {
        let mut merged: Vec<Mod> = mods.iter().filter(|m| !is_flags(m)).cloned().collect();
        let current = target.directory.read(dn, &[AD_ACCOUNT_CONTROL]).await?;
        let current = current
            .as_ref()
            .and_then(|entry| entry.first(AD_ACCOUNT_CONTROL));
        if let Some(new) = ad_account_control(current, disabled) {
            let attr = AD_ACCOUNT_CONTROL.to_string();
            match current {
                Some(old) => {
                    merged.push(Mod::Delete(attr.clone(), vec![old.to_string()]));
                    merged.push(Mod::Add(attr, vec![new]));
                }
                None => merged.push(Mod::Replace(attr, vec![new])),
            }
        }
        if merged.is_empty() {
            return Ok(());
        }
        match target.directory.modify(dn, &merged).await {
            Err(DirectoryError::NoSuchAttribute(_)) if attempts < 3 => attempts += 1,
            other => return other,
        }
    }
}

/// Adds (or deletes) several values of one attribute in one modify; when one is there already
/// (or gone already), which fails the whole modify, falls back to one modify per value so that
/// the rest still land.
async fn change_values(
    directory: &Directory,
    dn: &str,
    attr: &str,
    values: &[String],
    add: bool,
    trace: &mut ApplyTrace,
) -> Result<(), DirectoryError> {
    let change = if add {
        Mod::Add(attr.to_string(), values.to_vec())
    } else {
        Mod::Delete(attr.to_string(), values.to_vec())
    };
    match directory.modify(dn, &[change]).await {
        Err(DirectoryError::ValueExists(_)) if add => {}
        Err(DirectoryError::NoSuchAttribute(_)) if !add => {}
        // The entry is gone: none of the values is there.
        Err(DirectoryError::NoSuchObject(_)) if !add => return Ok(()),
        other => return other,
    }
    for value in values {
        if add {
            directory.add_value(dn, attr, value).await?;
        } else {
            directory.delete_value(dn, attr, value).await?;
        }
        trace.wrote = true;
    }
    Ok(())
}

/// Adds the object classes an entry lacks (adding one it has would fail the whole modify).
async fn add_missing_classes(
    directory: &Directory,
    dn: &str,
    classes: &[String],
) -> Result<(), DirectoryError> {
    if classes.is_empty() {
        return Ok(());
    }
    let entry = directory.read(dn, &["objectClass"]).await?;
    let have = entry
        .map(|entry| entry.values("objectClass").to_vec())
        .unwrap_or_default();
    let missing: Vec<String> = classes
        .iter()
        .filter(|class| !have.iter().any(|have| have.eq_ignore_ascii_case(class)))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    directory
        .modify(dn, &[Mod::Add("objectClass".to_string(), missing)])
        .await
}

/// Finishes the intents a previous run left behind, oldest first; run before serving.
///
/// Fails when the directory is unreachable: serving before the replay could reorder writes. A
/// write the directory refuses now is dropped (reconciliation repairs what part of it landed).
pub async fn replay_intents(service: &Service) -> Result<usize, ServiceError> {
    let intents = service.store.pending_intents().await?;
    let n_intents = intents.len();
    for intent in intents {
        let plan: Plan = match serde_json::from_str(&intent.plan) {
            Ok(plan) => plan,
            Err(err) => {
                tracing::error!(seq = intent.seq, error = %err, "unreadable intent dropped; reconciliation will repair");
                service.forget_intent(intent.seq).await?;
                continue;
            }
        };
        let change = plan.audit_change();
        if service.superseded(&plan).await? {
            // Left behind while later writes of the same resource went on (its commit failed,
            // say): replaying it would undo what they did and the IdP was told.
            tracing::warn!(seq = intent.seq, resource_id = %intent.resource_id, "unfinished write superseded by a later one; dropped, reconciliation will repair");
            service.forget_intent(intent.seq).await?;
            audit_replay(&change, Some("superseded")).await;
            continue;
        }
        tracing::info!(seq = intent.seq, resource_id = %intent.resource_id, "replaying an unfinished write");
        let target = Target::new(service, &intent.resource_id);
        let mut trace = ApplyTrace::default();
        let applied = apply_ops(&target, &plan.ops, true, &mut trace).await;
        let refused = match applied {
            Ok(entry_uuid) => match service
                .store
                .commit(plan.into_commit(intent.seq, entry_uuid, &trace))
                .await
            {
                Ok(()) => None,
                // Its name is another resource's now: that one stays, this one goes.
                Err(err @ crate::store::StoreError::NameTaken { .. }) => {
                    tracing::error!(seq = intent.seq, resource_id = %intent.resource_id, error = %err, "unfinished write conflicts with the cache; dropped, reconciliation will repair");
                    service.forget_intent(intent.seq).await?;
                    Some("refused")
                }
                Err(err) => return Err(err.into()),
            },
            // Unreachable again: stop, so that no later write overtakes this one.
            Err(err) if err.is_transient() => return Err(err.into()),
            // The directory refuses it now (its entry was deleted meanwhile, say). The IdP was
            // never told it succeeded (replies follow commits), so it is dropped like a write
            // refused while serving; a daemon that stopped on it would never start again.
            // Whatever part of it landed before the stop is drift, which reconciliation finds.
            Err(err) => {
                tracing::error!(seq = intent.seq, resource_id = %intent.resource_id, error = %err, "unfinished write refused by the directory; dropped, reconciliation will repair");
                service.forget_intent(intent.seq).await?;
                Some("refused")
            }
        };
        audit_replay(&change, refused).await;
    }
    Ok(n_intents)
}

/// Audits a replayed write, or why it was not.
async fn audit_replay(change: &crate::audit::Change, error: Option<&str>) {
    crate::audit::scope(
        crate::audit::AuditContext::system("replay", "replay"),
        async { crate::audit::record(change, error) },
    )
    .await;
}

impl Service {
    /// True when a later write of the plan's resource was committed after the plan was left
    /// unfinished: the cache holds a newer version than the plan's, or the same version
    /// written by another write; or the resource the plan deletes is gone already.
    async fn superseded(&self, plan: &Plan) -> Result<bool, ServiceError> {
        if let Some(planned) = &plan.upsert {
            let current = self.store.get(planned.kind(), &planned.id).await?;
            return Ok(current.is_some_and(|current| {
                current.version > planned.version
                    || (current.version == planned.version
                        && current.last_modified != planned.last_modified)
            }));
        }
        if let Some(id) = &plan.delete {
            for kind in [Kind::User, Kind::Group] {
                if self.store.get(kind, id).await?.is_some() {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        Ok(false)
    }
}
