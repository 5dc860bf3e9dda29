//! Following changes as they happen (DESIGN.md §5, `reconcile.follow`): one refreshAndPersist
//! search (RFC 4533) on the closest entry above all the managed bases (usually the suffix)
//! tells of every change below it, one message per change, and the changes scim2ldap did not
//! make itself are checked at once, entry by entry, the way a run checks them: repaired or
//! reported by the same policies, through the same write path and locks. An entry directly
//! below a managed base is that base's kind; one elsewhere matters only when it is a managed
//! entry moved out. Bases with no entry above them all (in different naming contexts) are
//! followed one search each. The periodic runs stay the safety net.
//!
//! scim2ldap's own writes are told apart by `modifiersName`, its bind identity, and by the
//! tally of change messages its writes are owed (`Directory::own_change`), so that a change
//! made by hand with the same bind DN is still checked. The provider's cookie is kept in the
//! cache, so that after a restart the changes made meanwhile are checked first. Without a
//! cookie (the first start, or one the provider no longer serves), a search that matches no
//! entry first fetches the provider's current cookie: the entries as they are now are what
//! the runs check, and they are not sent.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Action, ReconcileConfig, ReconcileError, Report, Run, RunOptions};
use crate::config::Config;
use crate::directory::{
    ChangeStream, Directory, DirectoryError, SearchScope, SyncEvent, SYNC_REFRESH_REQUIRED,
    UNAVAILABLE_CRITICAL_EXTENSION,
};
use crate::mapping::{dn_key, Deactivate};
use crate::service::Service;
use crate::store::{IndexedField, Kind};

/// How often a changed cookie is written to the cache while messages come; also after each
/// refresh and at the end. A cookie older than the newest only means that a restart checks
/// some changes again.
const COOKIE_SAVE_EVERY: Duration = Duration::from_secs(5);

/// First and longest wait before following a base again after a failure.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Wait before asking again a directory that does not offer content synchronization on a
/// base.
const RETRY_NOT_OFFERED: Duration = Duration::from_secs(600);

/// The filter of every followed search.
const ALL: &str = "(objectClass=*)";

/// A filter no entry matches, asked of the search's base entry alone: its refresh sends
/// nothing but the provider's cookie.
const NONE: &str = "(!(objectClass=*))";

/// Follows the managed bases until `shutdown`, when `reconcile.follow` is on. A follower that
/// ends abnormally (a malformed message the LDAP library cannot parse) starts again.
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
    let plan = follow_plan(service.directory(), service.config()).await;
    let managed = plan.managed;
    let searches = plan.searches;
    let stopping = shutdown.clone();
    let mut tasks = tokio::task::JoinSet::new();
    let mut by_task = HashMap::new();
    let spawn = |tasks: &mut tokio::task::JoinSet<()>, search: FollowedSearch| {
        let follower = Follower {
            service: service.clone(),
            options,
            search: search.clone(),
            lookup: searches.clone(),
            managed: managed.clone(),
            cookie: None,
            unsaved: false,
            saved_at: Instant::now(),
            reached: false,
            run_owed_after: None,
        };
        let task = tasks.spawn(follower.follow(shutdown.clone()));
        (task.id(), search)
    };
    for search in searches.clone() {
        let (id, search) = spawn(&mut tasks, search);
        by_task.insert(id, search);
    }
    while let Some(ended) = tasks.join_next_with_id().await {
        let (id, err) = match ended {
            Ok((id, ())) => {
                by_task.remove(&id);
                continue;
            }
            Err(err) => (err.id(), err),
        };
        let Some(search) = by_task.remove(&id) else {
            continue;
        };
        if *stopping.borrow() {
            continue;
        }
        tracing::error!(error = %err, base = %search.base, "following changes ended abnormally; starting again");
        let (id, search) = spawn(&mut tasks, search);
        by_task.insert(id, search);
    }
}

/// The searches that follow the managed bases, and which entries they manage.
pub struct FollowPlan {
    /// The managed bases (as `base_key`) and the kind of the entries directly below each.
    pub managed: Vec<(Kind, String)>,
    /// The searches to open.
    pub searches: Vec<FollowedSearch>,
}

/// One followed search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowedSearch {
    /// Where it starts.
    pub base: String,
    /// How deep it goes.
    pub scope: SearchScope,
    /// The disabled OU, which may not exist yet: followed once it does.
    pub optional: bool,
}

/// One subtree search from the managed bases' closest common entry when the bound DN can
/// read that entry and every base is in the same naming context (one database, whose
/// synchronization provider then sees all of them); otherwise one search per base, one level
/// deep (a bind DN whose access covers the bases only, bases in several databases).
pub async fn follow_plan(directory: &Directory, config: &Config) -> FollowPlan {
    let mut bases = vec![
        (Kind::User, config.users.base_dn.clone(), false),
        (Kind::Group, config.groups.base_dn.clone(), false),
    ];
    if let Deactivate::Move { disabled_base_dn } = &config.users.deactivate {
        bases.push((Kind::User, disabled_base_dn.clone(), true));
    }
    let managed = bases
        .iter()
        .map(|(kind, base, _)| (*kind, base_key(base)))
        .collect();
    let per_base = || {
        bases
            .iter()
            .map(|(_, base, optional)| FollowedSearch {
                base: base.clone(),
                scope: SearchScope::OneLevel,
                optional: *optional,
            })
            .collect()
    };
    let Some(ancestor) = common_ancestor(bases.iter().map(|(_, base, _)| base.as_str())) else {
        tracing::info!("the managed bases share no entry above them: following each on its own");
        return FollowPlan {
            managed,
            searches: per_base(),
        };
    };
    let mut contexts = HashSet::new();
    for (_, base, _) in &bases {
        match directory.naming_context(base).await {
            Ok(context) => contexts.insert(base_key(&context)),
            Err(err) => {
                tracing::warn!(error = %err, base = %base, "could not read the naming context of a managed base");
                contexts.insert(String::new())
            }
        };
    }
    let readable = match directory.read(&ancestor, &["1.1"]).await {
        Ok(found) => found.is_some(),
        Err(err) => {
            tracing::debug!(error = %err, base = %ancestor, "the entry above the managed bases cannot be read");
            false
        }
    };
    let one_database = contexts.len() == 1 && !contexts.contains("");
    let searches = if readable && one_database {
        vec![FollowedSearch {
            base: ancestor,
            scope: SearchScope::Subtree,
            optional: false,
        }]
    } else {
        tracing::info!(above = %ancestor, readable, one_database, "following each managed base on its own (the bind DN cannot search the entry above them, or they are in different databases)");
        per_base()
    };
    FollowPlan { managed, searches }
}

/// `dn_key` without the spaces after an RDN separator (`ou=Groups, o=Corp`), which the
/// directory drops from the DNs it sends: for telling which managed base holds an entry.
fn base_key(dn: &str) -> String {
    let key = dn_key(dn);
    let mut out = String::with_capacity(key.len());
    let mut escaped = false;
    let mut after_separator = false;
    for c in key.trim().chars() {
        if after_separator && c == ' ' {
            continue;
        }
        after_separator = !escaped && c == ',';
        escaped = !escaped && c == '\\';
        out.push(c);
    }
    out
}

/// The closest entry at or above every one of `bases` (DNs compared as `base_key`), if any.
fn common_ancestor<'a>(mut bases: impl Iterator<Item = &'a str>) -> Option<String> {
    let ancestors = |dn: &'a str| {
        std::iter::successors(Some(dn), |dn| {
            let parent = crate::mapping::parent_dn(dn).trim_start();
            (!parent.is_empty()).then_some(parent)
        })
    };
    let first = bases.next()?;
    let others: Vec<HashSet<String>> = bases
        .map(|base| ancestors(base).map(base_key).collect())
        .collect();
    ancestors(first)
        .find(|candidate| {
            let key = base_key(candidate);
            others.iter().all(|set| set.contains(&key))
        })
        .map(str::to_string)
}

/// Why following a base stopped.
enum Stop {
    /// The directory does not follow this base (no synchronization provider there).
    NotOffered,
    /// The provider cannot serve the cookie any more.
    RefreshRequired,
    /// The directory failed, or the cache.
    Failed(ReconcileError),
}

impl From<ReconcileError> for Stop {
    fn from(err: ReconcileError) -> Stop {
        match err {
            ReconcileError::Directory(err) => err.into(),
            err => Stop::Failed(err),
        }
    }
}

impl From<DirectoryError> for Stop {
    fn from(err: DirectoryError) -> Stop {
        match err {
            DirectoryError::Other { rc, .. } if rc == SYNC_REFRESH_REQUIRED => {
                Stop::RefreshRequired
            }
            DirectoryError::Other { rc, .. } if rc == UNAVAILABLE_CRITICAL_EXTENSION => {
                Stop::NotOffered
            }
            err => Stop::Failed(ReconcileError::Directory(err)),
        }
    }
}

/// Follows one base.
struct Follower {
    service: Arc<Service>,
    options: RunOptions,
    /// The search this follower keeps open.
    search: FollowedSearch,
    /// Every followed search: where an entry that left this one may be now.
    lookup: Vec<FollowedSearch>,
    /// The managed bases (as `base_key`) and the kind of the entries directly below each.
    managed: Vec<(Kind, String)>,
    /// The provider's cookie for everything checked so far.
    cookie: Option<Vec<u8>>,
    /// `cookie` is newer than what the cache holds.
    unsaved: bool,
    saved_at: Instant,
    /// The last attempt got a message of the directory's synchronization.
    reached: bool,
    /// A full run this follower asked for (deletes it could not see), as the count of runs
    /// completed when it asked: until a later run completes, no newer cookie is kept, so that
    /// a restart meanwhile meets the same refresh and asks again.
    run_owed_after: Option<u64>,
}

impl Follower {
    async fn follow(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        self.cookie = match self.service.store().sync_cookie(&self.search.base).await {
            Ok(cookie) => cookie,
            Err(err) => {
                tracing::warn!(error = %err, base = %self.search.base, "could not read the kept sync cookie; following from now on");
                None
            }
        };
        let mut retry = RETRY_MIN;
        let mut warned = false;
        loop {
            self.reached = false;
            let stop = tokio::select! {
                stop = self.follow_once() => stop,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            if self.reached {
                retry = RETRY_MIN;
                warned = false;
            }
            let wait = match stop {
                Stop::RefreshRequired => {
                    tracing::info!(base = %self.search.base, "the directory no longer serves the kept sync cookie; following from now on (the periodic runs cover what changed meanwhile)");
                    self.cookie = None;
                    self.unsaved = true;
                    RETRY_MIN
                }
                Stop::NotOffered => {
                    tracing::warn!(base = %self.search.base, retry_in_s = RETRY_NOT_OFFERED.as_secs(), "the directory does not offer content synchronization (RFC 4533, OpenLDAP's syncprov) on this base; changes made by hand are found by the periodic runs");
                    RETRY_NOT_OFFERED
                }
                Stop::Failed(ReconcileError::Directory(DirectoryError::NoSuchObject(_)))
                    if self.search.optional =>
                {
                    tracing::debug!(base = %self.search.base, "the disabled OU does not exist yet; followed once it does");
                    RETRY_MAX
                }
                Stop::Failed(err) => {
                    let hint = match &err {
                        ReconcileError::Directory(DirectoryError::SizeLimit(_)) => {
                            " (give the bind DN unlimited search results, on OpenLDAP olcLimits: dn.exact=\"<bind DN>\" size=unlimited)"
                        }
                        _ => "",
                    };
                    if !warned {
                        tracing::warn!(error = %err, base = %self.search.base, retry_in_ms = retry.as_millis() as u64, "following changes stopped; trying again{hint}");
                        warned = true;
                    } else {
                        tracing::debug!(error = %err, base = %self.search.base, "following changes failed again");
                    }
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            };
            self.save_cookie().await;
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        self.save_cookie().await;
    }

    /// Follows the base from the current cookie (fetched first when there is none) until
    /// something stops it.
    async fn follow_once(&mut self) -> Stop {
        if self.cookie.is_none() {
            if let Err(stop) = self.fetch_cookie().await {
                return stop;
            }
        }
        // Without a cookie still (a provider that gave none), the refresh lists every entry;
        // the runs check those.
        let mut blind = self.cookie.is_none();
        let mut stream = match self
            .start(self.search.scope, ALL, self.cookie.clone())
            .await
        {
            Ok(stream) => stream,
            Err(stop) => return stop,
        };
        let mut counted = None;
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
            if counted.is_none() {
                self.reached = true;
                counted = Some(crate::metrics::following_search());
            }
            let mut save_now = false;
            let checked = match message.event {
                SyncEvent::RefreshDone { present } => {
                    if !refreshed {
                        tracing::info!(base = %self.search.base, "following changes as they happen");
                    }
                    if present && !blind && !refreshed {
                        // Deletes since the cookie were told only by leaving the entries out,
                        // which following does not compare: a run finds them.
                        tracing::info!(base = %self.search.base, "the directory could not list the deletes since the kept cookie (its session log does not reach back so far, or it restarted): a full reconciliation runs to find them");
                        self.run_owed_after = Some(self.service.runs_completed());
                        self.service.request_full_reconcile();
                    }
                    refreshed = true;
                    blind = false;
                    save_now = true;
                    Ok(())
                }
                SyncEvent::Unchanged => Ok(()),
                _ if blind => Ok(()),
                SyncEvent::Changed { entry, entry_uuid } => {
                    let modifiers_name = entry.first("modifiersName");
                    self.changed(&entry.dn, &entry_uuid, modifiers_name, stream.identity())
                        .await
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
            // A change that could not be checked (the directory or the cache failing) is not
            // passed: the search starts again from the cookie before it.
            if let Err(err) = checked {
                return err.into();
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

    /// Starts the followed search in `scope` with `filter` from `cookie`.
    async fn start(
        &self,
        scope: SearchScope,
        filter: &str,
        cookie: Option<Vec<u8>>,
    ) -> Result<ChangeStream, Stop> {
        self.service
            .directory()
            .follow(
                &self.search.base,
                scope,
                filter,
                vec!["modifiersName".to_string()],
                cookie,
            )
            .await
            .map_err(Stop::from)
    }

    /// Takes the provider's current cookie from a search that sends no entry, so that the
    /// refresh of the real search sends only what changes from now on (not every entry,
    /// which a size limit would also cut short).
    async fn fetch_cookie(&mut self) -> Result<(), Stop> {
        // The base entry alone (a filter that matches nothing would be evaluated on every
        // entry of a subtree, no index answering it): the cookie is the database's state.
        let mut stream = self.start(SearchScope::Base, NONE, None).await?;
        loop {
            let Some(message) = stream.next().await.map_err(Stop::from)? else {
                return Err(Stop::NotOffered);
            };
            if let SyncEvent::RefreshDone { .. } = message.event {
                if message.cookie.is_some() {
                    self.cookie = message.cookie;
                    self.unsaved = true;
                    self.save_cookie().await;
                }
                return Ok(());
            }
        }
    }

    /// Writes the cookie to the cache when it changed, unless a full run this follower asked
    /// for has not completed yet.
    async fn save_cookie(&mut self) {
        if !self.unsaved {
            return;
        }
        if let Some(asked_at) = self.run_owed_after {
            if self.service.runs_completed() <= asked_at {
                return;
            }
            self.run_owed_after = None;
        }
        match self
            .service
            .store()
            .set_sync_cookie(&self.search.base, self.cookie.clone())
            .await
        {
            Ok(()) => {
                self.unsaved = false;
                self.saved_at = Instant::now();
            }
            Err(err) => {
                tracing::debug!(error = %err, base = %self.search.base, "could not keep the sync cookie")
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

    /// An entry was added, changed or moved in: checked like a run checks it, unless it is
    /// scim2ldap's own write (`identity` is the bind DN as the directory names it).
    async fn changed(
        &self,
        dn: &str,
        entry_uuid: &str,
        modifiers_name: Option<&str>,
        identity: Option<&str>,
    ) -> Result<(), ReconcileError> {
        let ours = dn_key(identity.unwrap_or(&self.service.config().ldap.bind_dn));
        if modifiers_name.is_some_and(|name| dn_key(name) == ours)
            && self.service.directory().own_change(dn)
        {
            return Ok(());
        }
        // The resource the entry is (by its id: it may have moved, even into the other
        // kind's base), else one at its DN, else none: an orphan where a base manages it.
        let store = self.service.store();
        let mut resource = self.owner_by_uuid(entry_uuid).await?;
        if resource.is_none() {
            if let Some(kind) = self.kind_of(dn) {
                resource = store.find(kind, IndexedField::Dn, dn).await?.pop();
            }
        }
        let kind = match (&resource, self.kind_of(dn)) {
            (Some(resource), _) => resource.kind,
            (None, Some(kind)) => kind,
            // Outside the managed bases and nobody's: not ours to check.
            (None, None) => return Ok(()),
        };
        // A write of the resource under way is let finish first, so that the entry is
        // compared with the cache's state after it. Outside the managed bases, an entry
        // whose resource is gone by then is left alone.
        if let Some(resource) = resource {
            let settled = self.service.settled(kind, &resource.id).await?;
            if settled.is_none() && self.kind_of(dn).is_none() {
                return Ok(());
            }
        }
        let mut run = self.one_entry_run();
        let attrs = run.attrs_to_read(kind);
        let attr_refs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let Some(entry) = self.service.directory().read(dn, &attr_refs).await? else {
            // Gone again: its deletion comes next.
            return Ok(());
        };
        tracing::debug!(dn = %dn, "checking an entry changed in the directory");
        run.check_entry(kind, entry).await?;
        self.finish(run.report);
        Ok(())
    }

    /// An entry was deleted or moved out of the search. The resource it held, if any, is
    /// looked for once its writes under way are done: an entry that only moved (to the
    /// disabled OU, or anywhere the followed searches reach) is checked where it is now, the
    /// way a run checks a moved entry; one that is gone is a missing entry, re-created or
    /// reported.
    async fn deleted(&self, dn: Option<&str>, entry_uuid: &str) -> Result<(), ReconcileError> {
        let store = self.service.store();
        let mut resource = self.owner_by_uuid(entry_uuid).await?;
        if resource.is_none() {
            if let Some((dn, kind)) = dn.and_then(|dn| Some((dn, self.kind_of(dn)?))) {
                resource = store.find(kind, IndexedField::Dn, dn).await?.pop();
            }
        }
        let Some(resource) = resource else {
            return Ok(());
        };
        let kind = resource.kind;
        // scim2ldap's own delete or move is done by now, and the resource gone or moved.
        let Some(resource) = self.service.settled(kind, &resource.id).await? else {
            return Ok(());
        };
        let mut run = self.one_entry_run();
        let attrs = run.attrs_to_read(kind);
        let attr_refs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        // Where the followed searches reach (all the bind DN may see, as far as following
        // goes): an entry moved elsewhere in them is moved back, not re-created beside itself.
        let directory = self.service.directory();
        let filter = crate::directory::escape::eq_filter("entryUUID", entry_uuid);
        let mut found = None;
        for search in &self.lookup {
            match directory
                .search(&search.base, search.scope, &filter, &attr_refs)
                .await
            {
                Ok(mut entries) => {
                    found = entries.pop();
                    if found.is_some() {
                        break;
                    }
                }
                Err(DirectoryError::NoSuchObject(_) | DirectoryError::InsufficientAccess(_)) => {}
                Err(err) => return Err(err.into()),
            }
        }
        // Moved (found by its id), or the cached DN holds an entry of another id: checked.
        let entry = match found {
            Some(entry) => Some(entry),
            None => directory.read(&resource.dn, &attr_refs).await?,
        };
        if let Some(entry) = entry {
            run.check_entry(kind, entry).await?;
            self.finish(run.report);
            return Ok(());
        }
        run.missing(&resource).await?;
        self.finish(run.report);
        Ok(())
    }

    /// The kind of the entry at `dn`: that of the managed base it is directly below.
    fn kind_of(&self, dn: &str) -> Option<Kind> {
        let parent = base_key(crate::mapping::parent_dn(dn));
        self.managed
            .iter()
            .find(|(_, base)| *base == parent)
            .map(|(kind, _)| *kind)
    }

    /// The cached resource whose entry has `entry_uuid`, of either kind.
    async fn owner_by_uuid(
        &self,
        entry_uuid: &str,
    ) -> Result<Option<crate::store::StoredResource>, ReconcileError> {
        for kind in [Kind::User, Kind::Group] {
            let found = self
                .service
                .store()
                .find(kind, IndexedField::EntryUuid, entry_uuid)
                .await?
                .pop();
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
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

#[cfg(test)]
mod tests {
    use super::{base_key, common_ancestor};

    #[test]
    fn base_keys_ignore_case_and_spaces_after_separators_only() {
        assert_eq!(base_key("OU=Groups, o=Corp"), "ou=groups,o=corp");
        assert_eq!(
            base_key("cn=Sales\\, EMEA,o=Corp"),
            "cn=sales\\, emea,o=corp"
        );
    }

    #[test]
    fn one_search_covers_the_bases_from_their_closest_common_entry() {
        let common = |bases: &[&str]| common_ancestor(bases.iter().copied());
        assert_eq!(
            common(&["ou=people,dc=example,dc=com", "ou=groups,dc=example,dc=com"]).as_deref(),
            Some("dc=example,dc=com")
        );
        assert_eq!(
            common(&[
                "ou=people,o=Corp",
                "OU=Groups, o=Corp",
                "ou=disabled,ou=people,o=corp"
            ])
            .as_deref(),
            Some("o=Corp")
        );
        // One base below another: the upper one.
        assert_eq!(
            common(&["ou=people,dc=x", "ou=disabled,ou=people,dc=x"]).as_deref(),
            Some("ou=people,dc=x")
        );
        // Different naming contexts: none.
        assert_eq!(common(&["ou=people,dc=x", "ou=groups,dc=y"]), None);
    }
}
