//! Following changes as they happen (DESIGN.md §5, `reconcile.follow`): a refreshAndPersist
//! search (RFC 4533) on each managed base tells of every change to an entry below it, and the
//! changes scim2ldap did not make itself are checked at once, entry by entry, the way a run
//! checks them: repaired or reported by the same policies, through the same write path and
//! locks. The periodic runs stay the safety net.
//!
//! scim2ldap's own writes are told apart by `modifiersName`, its bind DN, and by the tally
//! of change messages its writes are owed (`Directory::own_change`), so that a change made
//! by hand with the same bind DN is still checked. The provider's cookie is
//! kept in the cache, so that after a restart the changes made meanwhile are checked first.
//! Without a cookie (the first start, or one the provider no longer serves) the first
//! refresh, every entry of the base, is passed over: that is what the runs check.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Action, ReconcileConfig, ReconcileError, Report, Run, RunOptions};
use crate::directory::{DirectoryError, SyncEvent, SYNC_REFRESH_REQUIRED};
use crate::mapping::{dn_key, Deactivate};
use crate::service::Service;
use crate::store::{IndexedField, Kind};

/// How often a changed cookie is written to the cache while changes come (and at the end,
/// and after a refresh). A cookie older than the newest only means that a restart checks
/// some changes again.
const COOKIE_SAVE_EVERY: Duration = Duration::from_secs(5);

/// First and longest wait before following a base again after a failure.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Wait before asking again a directory that ended the search at once (it does not offer
/// content synchronization on that base).
const RETRY_NOT_OFFERED: Duration = Duration::from_secs(600);

/// Follows the managed bases until `shutdown`, when `reconcile.follow` is on.
pub async fn follow(
    service: Arc<Service>,
    config: ReconcileConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if !config.follow {
        return;
    }
    let options = RunOptions {
        dry_run: false,
        drift: config.drift,
        orphans: config.orphans,
        page_size: config.page_size,
    };
    let mut bases = vec![
        (Kind::User, service.config().users.base_dn.clone(), false),
        (Kind::Group, service.config().groups.base_dn.clone(), false),
    ];
    if let Deactivate::Move { disabled_base_dn } = &service.config().users.deactivate {
        bases.push((Kind::User, disabled_base_dn.clone(), true));
    }
    let tasks: Vec<_> = bases
        .into_iter()
        .map(|(kind, base, optional)| {
            let follower = Follower {
                service: service.clone(),
                options,
                kind,
                base,
                optional,
                cookie: None,
                unsaved: false,
                reached: false,
                saved_at: Instant::now(),
            };
            tokio::spawn(follower.follow(shutdown.clone()))
        })
        .collect();
    for task in tasks {
        if let Err(err) = task.await {
            tracing::warn!(error = %err, "following task ended abnormally");
        }
    }
}

/// Why following a base stopped.
enum Stop {
    /// The directory ended the search at once: it does not follow this base.
    NotOffered,
    /// The provider cannot serve the cookie any more.
    RefreshRequired,
    /// The directory failed, or the cache.
    Failed(ReconcileError),
}

impl From<ReconcileError> for Stop {
    fn from(err: ReconcileError) -> Stop {
        Stop::Failed(err)
    }
}

impl From<DirectoryError> for Stop {
    fn from(err: DirectoryError) -> Stop {
        match err {
            DirectoryError::Other { rc, .. } if rc == SYNC_REFRESH_REQUIRED => {
                Stop::RefreshRequired
            }
            // unavailableCriticalExtension: no synchronization provider at all.
            DirectoryError::Other { rc: 12, .. } => Stop::NotOffered,
            err => Stop::Failed(err.into()),
        }
    }
}

/// Follows one base.
struct Follower {
    service: Arc<Service>,
    options: RunOptions,
    kind: Kind,
    base: String,
    /// The disabled OU: it may not exist yet.
    optional: bool,
    /// The provider's cookie for everything checked so far.
    cookie: Option<Vec<u8>>,
    /// `cookie` is newer than what the cache holds.
    unsaved: bool,
    /// The last attempt reached the directory (its search started).
    reached: bool,
    saved_at: Instant,
}

impl Follower {
    async fn follow(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        self.cookie = match self.service.store().sync_cookie(&self.base).await {
            Ok(cookie) => cookie,
            Err(err) => {
                tracing::warn!(error = %err, base = %self.base, "could not read the kept sync cookie; following from now on");
                None
            }
        };
        let mut retry = RETRY_MIN;
        let mut warned = false;
        loop {
            self.reached = false;
            let stop = tokio::select! {
                stop = self.follow_once() => stop,
                _ = shutdown.changed() => break,
            };
            if self.reached {
                retry = RETRY_MIN;
                warned = false;
            }
            let wait = match stop {
                Stop::RefreshRequired => {
                    tracing::info!(base = %self.base, "the directory no longer serves the kept sync cookie; following from now on (the periodic runs cover what changed meanwhile)");
                    self.cookie = None;
                    self.unsaved = true;
                    Duration::ZERO
                }
                Stop::NotOffered => {
                    tracing::warn!(base = %self.base, "the directory does not offer content synchronization (RFC 4533, OpenLDAP's syncprov) on this base; changes made by hand are found by the periodic runs");
                    RETRY_NOT_OFFERED
                }
                Stop::Failed(err) => {
                    let missing_ou = self.optional
                        && matches!(
                            &err,
                            ReconcileError::Directory(DirectoryError::NoSuchObject(_))
                        );
                    if missing_ou {
                        tracing::debug!(base = %self.base, "the disabled OU does not exist yet; followed once it does");
                    } else if !warned {
                        tracing::warn!(error = %err, base = %self.base, retry_in_ms = retry.as_millis() as u64, "following changes stopped; trying again");
                        warned = true;
                    } else {
                        tracing::debug!(error = %err, base = %self.base, "following changes failed again");
                    }
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            };
            self.save_cookie().await;
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
        }
        self.save_cookie().await;
    }

    /// Follows the base from the current cookie until something stops it.
    async fn follow_once(&mut self) -> Stop {
        let service = self.service.clone();
        let blind = self.cookie.is_none();
        let mut stream = match service
            .directory()
            .follow(
                &self.base,
                false,
                vec!["modifiersName".to_string()],
                self.cookie.clone(),
            )
            .await
        {
            Ok(stream) => stream,
            Err(err) => return err.into(),
        };
        self.reached = true;
        let _counted = crate::metrics::following_base();
        // Without a cookie the refresh lists every entry; the runs check those.
        let mut blind = blind;
        let mut refreshed = false;
        loop {
            let message = match stream.next().await {
                Ok(Some(message)) => message,
                Ok(None) if refreshed => {
                    return Stop::Failed(ReconcileError::Directory(DirectoryError::Unavailable(
                        "the directory ended the followed search".to_string(),
                    )))
                }
                Ok(None) => return Stop::NotOffered,
                Err(err) => return err.into(),
            };
            let mut save_now = false;
            let checked = match message.event {
                SyncEvent::RefreshDone => {
                    if !refreshed {
                        tracing::info!(base = %self.base, "following changes as they happen");
                    }
                    refreshed = true;
                    blind = false;
                    // Kept at once: without a cookie, a restart would pass over a refresh.
                    save_now = true;
                    Ok(())
                }
                SyncEvent::Unchanged => Ok(()),
                _ if blind => Ok(()),
                SyncEvent::Changed { entry, entry_uuid } => {
                    let modifiers_name = entry.first("modifiersName");
                    self.changed(&entry.dn, modifiers_name, &entry_uuid).await
                }
                SyncEvent::Deleted { dn, entry_uuid } => self.deleted(Some(&dn), &entry_uuid).await,
                SyncEvent::DeletedIds(ids) => {
                    let mut result = Ok(());
                    for entry_uuid in ids {
                        result = self.deleted(None, &entry_uuid).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    result
                }
            };
            // A change that could not be checked is not passed: the search starts again from
            // the cookie before it.
            if let Err(err) = checked {
                return Stop::Failed(err);
            }
            if let Some(cookie) = message.cookie {
                self.cookie = Some(cookie);
                self.unsaved = true;
            }
            if save_now || self.saved_at.elapsed() >= COOKIE_SAVE_EVERY {
                self.save_cookie().await;
            }
        }
    }

    /// Writes the cookie to the cache when it changed.
    async fn save_cookie(&mut self) {
        if !self.unsaved {
            return;
        }
        match self
            .service
            .store()
            .set_sync_cookie(&self.base, self.cookie.clone())
            .await
        {
            Ok(()) => {
                self.unsaved = false;
                self.saved_at = Instant::now();
            }
            Err(err) => {
                tracing::debug!(error = %err, base = %self.base, "could not keep the sync cookie")
            }
        }
    }

    /// A run over nothing, to check single entries with.
    fn one_entry_run(&self) -> Run<'_> {
        Run {
            service: &self.service,
            options: self.options,
            report: Report::default(),
            seen: HashSet::new(),
            newest: 0,
            progress: &|_| {},
        }
    }

    /// An entry was added, changed or moved in: checked like a run checks it, unless
    /// scim2ldap changed it.
    async fn changed(
        &self,
        dn: &str,
        modifiers_name: Option<&str>,
        entry_uuid: &str,
    ) -> Result<(), ReconcileError> {
        let ours = dn_key(&self.service.config().ldap.bind_dn);
        if modifiers_name.is_some_and(|name| dn_key(name) == ours)
            && self.service.directory().own_change(dn)
        {
            return Ok(());
        }
        let mut run = self.one_entry_run();
        let attrs = run.attrs_to_read(self.kind);
        let attr_refs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let Some(entry) = self.service.directory().read(dn, &attr_refs).await? else {
            // Gone again: its deletion comes next.
            return Ok(());
        };
        tracing::debug!(dn = %dn, entry_uuid, "checking an entry changed in the directory");
        run.check_entry(self.kind, entry).await?;
        self.finish(run.report);
        Ok(())
    }

    /// An entry was deleted or moved out: the resource it held, if any, is checked like a
    /// run checks a missing entry (scim2ldap's own deletes and moves are in step by then).
    async fn deleted(&self, dn: Option<&str>, entry_uuid: &str) -> Result<(), ReconcileError> {
        let store = self.service.store();
        let mut resource = None;
        if let Some(dn) = dn {
            resource = store.find(self.kind, IndexedField::Dn, dn).await?.pop();
        }
        if resource.is_none() {
            resource = store
                .find(self.kind, IndexedField::EntryUuid, entry_uuid)
                .await?
                .pop();
        }
        let Some(resource) = resource else {
            return Ok(());
        };
        let mut run = self.one_entry_run();
        let action = run.repair(&resource, None).await?;
        run.drift_found(super::Finding {
            kind: super::FindingKind::Missing,
            resource_type: self.kind.as_str(),
            id: Some(resource.id.clone()),
            dn: resource.dn.clone(),
            attributes: Vec::new(),
            action,
        });
        self.finish(run.report);
        Ok(())
    }

    /// Logs and counts what checking one change found.
    fn finish(&self, report: Report) {
        for finding in &report.findings {
            if finding.action == Action::AlreadyInStep {
                continue;
            }
            tracing::info!(
                kind = finding.kind.as_str(),
                resource_type = finding.resource_type,
                resource_id = finding.id.as_deref().unwrap_or(""),
                dn = %finding.dn,
                attributes = %finding.attributes.join(","),
                action = finding.action.as_str(),
                "change made in the directory found"
            );
        }
        crate::metrics::record_followed_change(report.drifted, report.repaired);
    }
}
