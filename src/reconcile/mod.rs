//! Reconciliation: compares the managed subtrees of the directory with the cache's projection
//! and repairs or reports what differs (DESIGN.md §5).
//!
//! Entries are read with paged searches, so memory follows the page size, not the directory
//! size (beyond one id per cached resource, to find the entries that are gone). Each entry is
//! matched to its cached resource by the directory's own id, the SCIM id attribute, or its DN.
//! Repairs go through the same write path as IdP requests (intent, directory, commit) under the
//! same per-resource locks, so a repair never races an IdP write to the same resource; a
//! resource changed by the IdP during the scan is simply compared again under its lock.

pub mod config;
mod follow;
mod rebuild;
mod report;
mod suspects;

use std::collections::HashSet;
use std::time::Instant;

use crate::directory::{DirectoryError, Entry, SearchScope};
use crate::mapping::{drift, Deactivate};
use crate::service::{Service, ServiceError};
use crate::store::{IndexedField, Kind, StoreError, StoredResource};

pub use config::{DriftPolicy, OrphanPolicy, ReconcileConfig};
pub use follow::{follow, follow_plan, FollowPlan, FollowedSearch};
pub use rebuild::{rebuild_cache, RebuildReport};
pub use report::{Action, Finding, FindingKind, Report};
pub use suspects::repair_after_failures;

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The directory failed during the scan.
    #[error("directory: {0}")]
    Directory(#[from] DirectoryError),
    /// A repair or a cache read failed.
    #[error("{0}")]
    Service(#[from] ServiceError),
    /// Rebuilding needs the SCIM id in the directory.
    #[error("rebuilding the cache needs users.id_attribute and groups.id_attribute (the SCIM id in the directory)")]
    NoIdAttribute,
}

impl From<crate::store::StoreError> for ReconcileError {
    fn from(err: crate::store::StoreError) -> ReconcileError {
        ReconcileError::Service(ServiceError::Store(err))
    }
}

/// The outcome of one entry's repair: `None` when the directory or the cache refused it (a
/// name taken, the schema), which the log records and the run goes past, so that one bad
/// entry cannot stop every run at the same place. A directory that is unavailable, or a
/// failing cache, ends the run.
fn one_entry<T>(result: Result<T, ServiceError>) -> Result<Option<T>, ReconcileError> {
    match result {
        Ok(done) => Ok(Some(done)),
        Err(ServiceError::Directory(err)) if err.is_transient() => {
            Err(ReconcileError::Directory(err))
        }
        // The cache itself failing is no entry's fault.
        Err(ServiceError::Store(err)) if !matches!(err, StoreError::NameTaken { .. }) => {
            Err(ServiceError::Store(err).into())
        }
        Err(err) => {
            tracing::warn!(error = %err, "reconcile could not repair an entry; the run goes on");
            Ok(None)
        }
    }
}

/// How one run behaves.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Only report what would be done.
    pub dry_run: bool,
    /// Repair drift (`reconcile.drift`).
    pub drift: DriftPolicy,
    /// What to do with orphans (`reconcile.orphans`).
    pub orphans: OrphanPolicy,
    /// Entries per page of the directory scan.
    pub page_size: u32,
}

/// Runs one reconciliation; `progress` is called with the number of entries scanned so far.
/// Repairs are audited as made by `reconcile`; the outcome goes to the metrics.
pub async fn run(
    service: &Service,
    options: RunOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Report, ReconcileError> {
    let started = Instant::now();
    let context = crate::audit::AuditContext::system("reconcile", "repair");
    let result = crate::audit::scope(context, run_inner(service, options, progress)).await;
    match &result {
        Ok(report) if !options.dry_run => {
            service.note_run_completed();
            crate::metrics::record_reconcile(
                report.scanned,
                report.drifted,
                report.repaired,
                report.orphans,
                report.duration,
            )
        }
        Ok(report) => crate::metrics::record_reconcile(
            report.scanned,
            report.drifted,
            report.repaired,
            report.orphans,
            report.duration,
        ),
        Err(_) => crate::metrics::record_reconcile_failure(started.elapsed()),
    }
    result
}

#[tracing::instrument(skip_all, fields(run_id = %crate::new_uuid().simple()))]
async fn run_inner(
    service: &Service,
    options: RunOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Report, ReconcileError> {
    let started = Instant::now();
    let mut run = Run {
        service,
        options,
        report: Report::default(),
        seen: HashSet::new(),
        newest: service.store().newest_position().await?,
        progress,
    };
    let users = &service.config().users;
    // The disabled OU may not exist yet; a users or groups base that does not exist is an
    // error (a typo, a replica still loading), not a directory whose every entry is gone.
    let mut user_bases = vec![(users.base_dn.clone(), false)];
    if let Deactivate::Move { disabled_base_dn } = &users.deactivate {
        user_bases.push((disabled_base_dn.clone(), true));
    }
    for (base, optional) in user_bases {
        run.scan(Kind::User, &base, optional).await?;
    }
    let groups_base = service.config().groups.base_dn.clone();
    run.scan(Kind::Group, &groups_base, false).await?;
    run.find_missing(Kind::User).await?;
    run.find_missing(Kind::Group).await?;
    let mut report = run.report;
    report.duration = started.elapsed();
    tracing::info!(
        scanned = report.scanned,
        drifted = report.drifted,
        repaired = report.repaired,
        orphans = report.orphans,
        duration_ms = report.duration.as_millis() as u64,
        dry_run = options.dry_run,
        "reconcile run"
    );
    Ok(report)
}

struct Run<'a> {
    service: &'a Service,
    options: RunOptions,
    report: Report,
    /// Ids of cached resources whose entry was found.
    seen: HashSet<String>,
    /// The newest cache position when the run began: a resource created after it may have
    /// been added behind the scan, so it is not looked for (the next run checks it).
    newest: i64,
    progress: &'a (dyn Fn(u64) + Sync),
}

impl Run<'_> {
    fn attrs_to_read(&self, kind: Kind) -> Vec<String> {
        let (_, mut attrs) = match kind {
            Kind::User => self.service.config().users.ldap_names(),
            Kind::Group => self.service.config().groups.ldap_names(),
        };
        attrs.push("objectClass".to_string());
        attrs.push(
            self.service
                .config()
                .ldap
                .flavor
                .entry_id_attribute()
                .to_string(),
        );
        attrs
    }

    /// Scans the entries directly below `base`.
    async fn scan(&mut self, kind: Kind, base: &str, optional: bool) -> Result<(), ReconcileError> {
        let directory = self.service.directory();
        let mut stream = match directory
            .stream(
                base,
                SearchScope::OneLevel,
                "(objectClass=*)",
                self.attrs_to_read(kind),
                self.options.page_size,
            )
            .await
        {
            Ok(stream) => stream,
            // A disabled OU that does not exist yet holds nothing.
            Err(DirectoryError::NoSuchObject(_)) if optional => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        loop {
            let entry = match stream.next().await {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                // The search's first page says whether the base exists.
                Err(DirectoryError::NoSuchObject(_)) if optional => return Ok(()),
                Err(err) => return Err(err.into()),
            };
            self.report.scanned += 1;
            if self.report.scanned.is_multiple_of(1000) {
                (self.progress)(self.report.scanned);
            }
            self.check_entry(kind, entry).await?;
        }
        (self.progress)(self.report.scanned);
        Ok(())
    }

    /// The cached resource an entry belongs to.
    async fn owner(
        &self,
        kind: Kind,
        entry: &Entry,
    ) -> Result<Option<StoredResource>, ReconcileError> {
        // The directory's own id first: the SCIM id in an entry can be copied or edited by
        // hand, the entry's id cannot.
        let store = self.service.store();
        let entry_id_attr = self.service.config().ldap.flavor.entry_id_attribute();
        if let Some(entry_uuid) = entry.first(entry_id_attr) {
            if let Some(found) = store
                .find(kind, IndexedField::EntryUuid, entry_uuid)
                .await?
                .pop()
            {
                return Ok(Some(found));
            }
        }
        if let Some(id) = self
            .service
            .id_attribute(kind)
            .and_then(|attr| entry.first(attr).map(str::to_string))
        {
            if let Some(found) = store.get(kind, &id).await? {
                return Ok(Some(found));
            }
        }
        Ok(store.find(kind, IndexedField::Dn, &entry.dn).await?.pop())
    }

    async fn check_entry(&mut self, kind: Kind, entry: Entry) -> Result<(), ReconcileError> {
        if crate::mapping::dn_key(&entry.dn)
            == crate::mapping::dn_key(&self.service.config().groups.placeholder_member)
        {
            return Ok(());
        }
        let Some(resource) = self.owner(kind, &entry).await? else {
            // A create (or rename) of this name may be between its directory write and its
            // commit, its entry not yet in the cache: wait for it, then look again. The entry
            // as read may predate the end of that write, so it is left to the next run. The
            // name stays held while an orphan is disabled, so that no create adopts the entry
            // in between.
            let service = self.service;
            let mut _name = None;
            if let Some(name) = entry.first(self.rdn_attribute(kind)) {
                _name = Some(service.hold_name(kind, name).await);
                if let Some(resource) = self.owner(kind, &entry).await? {
                    self.seen.insert(resource.id);
                    return Ok(());
                }
            }
            return self.orphan(kind, entry).await;
        };
        if self.is_copy(&resource, &entry).await? || !self.seen.insert(resource.id.clone()) {
            // A second entry claims the same resource (a copy made by hand, its SCIM id and
            // all): an orphan.
            return self.orphan(kind, entry).await;
        }
        let expected = self.service.expected_entry(&resource).await?;
        let mut differing = drift(&entry.attrs, &expected, self.rdn_attribute(kind));
        if kind == Kind::Group {
            let member_attr = self.service.config().groups.class.member_attribute();
            let wanted = self.service.expected_member_values(&resource).await?;
            let mut have: Vec<String> = entry
                .values(member_attr)
                .iter()
                .map(|v| self.service.config().groups.class.member_key(v))
                .collect();
            let mut wanted_keys: Vec<String> = wanted
                .iter()
                .map(|v| self.service.config().groups.class.member_key(v))
                .collect();
            have.sort();
            wanted_keys.sort();
            if have != wanted_keys {
                differing.push(member_attr.to_string());
            }
        }
        let moved = crate::mapping::dn_key(&entry.dn) != crate::mapping::dn_key(&expected.dn);
        if differing.is_empty() && !moved {
            return Ok(());
        }
        let kind_of_finding = if moved {
            FindingKind::Moved
        } else if differing.iter().any(|attr| is_lock_attribute(attr)) {
            FindingKind::EnabledState
        } else if kind == Kind::Group
            && differing.len() == 1
            && differing[0] == self.service.config().groups.class.member_attribute()
        {
            FindingKind::Members
        } else {
            FindingKind::Attributes
        };
        let action = self.repair(&resource, Some(&entry)).await?;
        self.drift_found(Finding {
            kind: kind_of_finding,
            resource_type: kind.as_str(),
            id: Some(resource.id.clone()),
            dn: entry.dn.clone(),
            attributes: differing,
            action,
        });
        Ok(())
    }

    /// Whether `entry` claims `resource` (by its SCIM id) while another entry, the one the cache
    /// knows by the directory's id, is still at the resource's DN: a copy, whichever of the two
    /// a scan meets first. An entry whose known one is gone is the resource's (re-created).
    async fn is_copy(
        &self,
        resource: &StoredResource,
        entry: &Entry,
    ) -> Result<bool, ReconcileError> {
        let id_attr = self.service.config().ldap.flavor.entry_id_attribute();
        let (Some(known), Some(this)) = (resource.entry_uuid.as_deref(), entry.first(id_attr))
        else {
            return Ok(false);
        };
        if this.eq_ignore_ascii_case(known) {
            return Ok(false);
        }
        let at_dn = self
            .service
            .directory()
            .read(&resource.dn, &[id_attr])
            .await?;
        Ok(at_dn.is_some_and(|original| {
            original
                .values(id_attr)
                .iter()
                .any(|value| value.eq_ignore_ascii_case(known))
        }))
    }

    /// Records a drift finding. One already in step by the time its repair ran (an IdP write
    /// meanwhile settled it) is listed, not counted as drift.
    fn drift_found(&mut self, finding: Finding) {
        if finding.action != Action::AlreadyInStep {
            self.report.drifted += 1;
        }
        self.report.push(finding);
    }

    fn rdn_attribute(&self, kind: Kind) -> &str {
        match kind {
            Kind::User => &self.service.config().users.rdn_attribute,
            Kind::Group => &self.service.config().groups.rdn_attribute,
        }
    }

    /// Brings the entry of `resource` back to the cache's projection (or says it would).
    async fn repair(
        &mut self,
        resource: &StoredResource,
        entry: Option<&Entry>,
    ) -> Result<Action, ReconcileError> {
        if self.options.drift == DriftPolicy::Report {
            return Ok(Action::Reported);
        }
        if self.options.dry_run {
            return Ok(Action::WouldRepair);
        }
        let repaired = self
            .service
            .repair_entry(
                resource.kind,
                &resource.id,
                entry.map(|entry| entry.dn.as_str()),
            )
            .await;
        let repaired = match one_entry(repaired)? {
            Some(repaired) => repaired,
            None => return Ok(Action::Failed),
        };
        if repaired {
            self.report.repaired += 1;
            Ok(Action::Repaired)
        } else {
            // The IdP changed it meanwhile, and the new write put it in step.
            Ok(Action::AlreadyInStep)
        }
    }

    async fn orphan(&mut self, kind: Kind, entry: Entry) -> Result<(), ReconcileError> {
        if self.options.orphans == OrphanPolicy::Ignore {
            return Ok(());
        }
        // With `users.on_delete = "disable"`, a deleted user's entry stays, disabled and out of
        // the cache, by design: not an orphan to report at every run.
        if kind == Kind::User
            && self.service.config().users.on_delete == crate::mapping::OnDelete::Disable
            && self.service.is_disabled_entry(&entry)
        {
            return Ok(());
        }
        self.report.orphans += 1;
        let action = match (self.options.orphans, kind) {
            (OrphanPolicy::Disable, Kind::User) if self.options.dry_run => Action::WouldDisable,
            (OrphanPolicy::Disable, Kind::User) => {
                match one_entry(self.service.disable_orphan(&entry).await)? {
                    Some(true) => Action::Disabled,
                    Some(false) => Action::AlreadyInStep,
                    None => Action::Failed,
                }
            }
            _ => Action::Reported,
        };
        self.report.push(Finding {
            kind: FindingKind::Orphan,
            resource_type: kind.as_str(),
            id: None,
            dn: entry.dn,
            attributes: Vec::new(),
            action,
        });
        Ok(())
    }

    /// Cached resources whose entry the scan did not meet: deleted behind scim2ldap's back.
    async fn find_missing(&mut self, kind: Kind) -> Result<(), ReconcileError> {
        let page_size = self.options.page_size.max(1) as usize;
        // By key range: no page skips rows that earlier pages had (a repair that drops a
        // resource would shift offsets), and none re-reads them.
        let mut after = 0;
        loop {
            let (page, last) = self
                .service
                .store()
                .chunk(kind, after, self.newest, page_size)
                .await?;
            let Some(last) = last else {
                break;
            };
            after = last;
            for resource in page {
                if self.seen.contains(&resource.id) {
                    continue;
                }
                self.missing(&resource).await?;
            }
        }
        Ok(())
    }

    /// A cached resource whose entry is gone: re-created (or reported) and counted.
    async fn missing(&mut self, resource: &StoredResource) -> Result<(), ReconcileError> {
        let action = self.repair(resource, None).await?;
        self.drift_found(Finding {
            kind: FindingKind::Missing,
            resource_type: resource.kind.as_str(),
            id: Some(resource.id.clone()),
            dn: resource.dn.clone(),
            attributes: Vec::new(),
            action,
        });
        Ok(())
    }
}

/// The attributes the deactivation strategies write.
fn is_lock_attribute(attr: &str) -> bool {
    [
        "pwdAccountLockedTime",
        "nsAccountLock",
        "userAccountControl",
    ]
    .iter()
    .any(|lock| lock.eq_ignore_ascii_case(attr))
}

/// Runs reconciliation every `interval` until `shutdown`, the first time right away.
pub async fn periodic(
    service: std::sync::Arc<Service>,
    config: ReconcileConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let options = RunOptions {
        dry_run: false,
        drift: config.drift,
        orphans: config.orphans,
        page_size: config.page_size,
    };
    let mut first = config.at_startup;
    // After a failed run (the directory down, say), the next comes sooner than the interval:
    // a minute, doubling up to the interval while runs keep failing.
    let mut retry: Option<std::time::Duration> = None;
    loop {
        if !first {
            let Some(interval) = config.interval else {
                return;
            };
            let wait = wait_before_run(retry, interval);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
        first = false;
        let Ok(_guard) = service.reconcile_lock().try_lock() else {
            tracing::info!("a reconcile run is in progress; skipping this one");
            continue;
        };
        tokio::select! {
            result = run(&service, options, &|_| {}) => {
                retry = next_retry(retry, result.is_ok());
                if let (Err(err), Some(next)) = (result, retry) {
                    tracing::warn!(error = %err, retry_in_s = next.as_secs(), "reconcile run failed; another one runs sooner than the interval");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// The first wait after a failed periodic run.
const RETRY_AFTER_FAILED_RUN: std::time::Duration = std::time::Duration::from_secs(60);

/// The retry wait after a run: none after a success, a minute after a first failure, twice
/// the last one after another.
fn next_retry(retry: Option<std::time::Duration>, succeeded: bool) -> Option<std::time::Duration> {
    if succeeded {
        return None;
    }
    Some(retry.map_or(RETRY_AFTER_FAILED_RUN, |retry| retry.saturating_mul(2)))
}

/// How long the periodic task waits before its next run: the interval, or the retry wait
/// when that is shorter.
fn wait_before_run(
    retry: Option<std::time::Duration>,
    interval: std::time::Duration,
) -> std::time::Duration {
    retry.map_or(interval, |retry| retry.min(interval))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{next_retry, wait_before_run};

    #[test]
    fn failed_runs_are_retried_sooner_than_the_interval_backing_off() {
        let hour = Duration::from_secs(3600);
        let mut retry = None;
        let mut waits = Vec::new();
        for _ in 0..8 {
            retry = next_retry(retry, false);
            waits.push(wait_before_run(retry, hour).as_secs());
        }
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(next_retry(retry, true), None);
        assert_eq!(wait_before_run(None, hour), hour);
        // Doubling for ever does not overflow.
        let long = (0..200).fold(None, |retry, _| next_retry(retry, false));
        assert_eq!(wait_before_run(long, hour), hour);
    }
}
