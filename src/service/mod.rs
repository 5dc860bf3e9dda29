//! The use cases: create, get, list, replace, patch and delete for users and groups.
//!
//! With `reconcile`, the only caller of `directory` and `store`, and the place that orders their
//! writes (DESIGN.md §3): validate, project, record the intent, apply it to the directory, commit
//! the new state and clear the intent in one transaction. Writes to one resource are serialized
//! by a per-resource lock; different resources run in parallel.

mod groups;
mod locks;
mod members;
mod plan;
mod render;
mod repair;
mod suspects;
mod users;

use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::Config;
use crate::directory::{Directory, DirectoryError};
use crate::scim::discovery::{Capabilities, Discovery};
use crate::scim::query::{sort, ListQuery, LIST_RESPONSE_URN};
use crate::scim::ScimError;
use crate::store::{self, IndexedField, Kind, Store, StoreError, StoredResource};

pub use plan::replay_intents;
pub use repair::{SuspectPass, SuspectRepair};

/// Seconds an IdP is told to wait after the directory was unavailable.
const RETRY_AFTER_SECS: u64 = 5;

/// Largest page a list returns (`filter.maxResults` in `/ServiceProviderConfig`).
pub const MAX_RESULTS: usize = 1000;

/// A failure of a use case.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Already protocol-shaped (validation, filter, patch errors).
    #[error("{0}")]
    Scim(ScimError),
    /// No resource with this id.
    #[error("{kind} {id} not found")]
    NotFound {
        /// `User` or `Group`.
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A unique attribute value is taken.
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` named another version.
    #[error("version mismatch")]
    PreconditionFailed,
    /// The directory failed.
    #[error("{0}")]
    Directory(#[from] DirectoryError),
    /// The cache failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<ScimError> for ServiceError {
    fn from(err: ScimError) -> ServiceError {
        ServiceError::Scim(err)
    }
}

/// The one place that decides what a client sees for a failure.
/// The attribute and object class names in a directory's schema refusal, each as `` `name` ``:
/// the word before a leading `:` and the words in single quotes, when they are LDAP names.
/// Up to three; never the directory's text itself.
fn schema_names(text: &str) -> Vec<String> {
    let is_name = |word: &str| {
        word.len() <= 64
            && word.starts_with(|c: char| c.is_ascii_alphabetic())
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';')
    };
    let leading = text.split_once(':').map(|(head, _)| head.trim());
    let quoted = text.split('\'').skip(1).step_by(2);
    let mut names: Vec<String> = Vec::new();
    for word in leading.into_iter().chain(quoted) {
        let name = format!("`{word}`");
        if is_name(word) && !names.contains(&name) && names.len() < 3 {
            names.push(name);
        }
    }
    names
}

impl From<ServiceError> for ScimError {
    fn from(err: ServiceError) -> ScimError {
        match err {
            ServiceError::Scim(scim) => scim,
            ServiceError::NotFound { kind, id } => {
                ScimError::not_found(format!("{kind} `{id}` does not exist"))
            }
            ServiceError::Conflict(detail) => ScimError::uniqueness(detail),
            ServiceError::PreconditionFailed => ScimError::precondition_failed(
                "the resource has changed since the version named in If-Match; read it again",
            ),
            ServiceError::Directory(dir_err) if dir_err.is_transient() => {
                tracing::warn!(error = %dir_err, "directory unavailable");
                ScimError::unavailable(RETRY_AFTER_SECS)
            }
            ServiceError::Directory(DirectoryError::NotUnique(text)) => {
                tracing::info!(error = %text, "value not unique in the directory");
                ScimError::uniqueness(
                    "the directory refused the change: a unique attribute value (such as uid or mail) is already used by another entry (the server log has the directory's reason)",
                )
            }
            ServiceError::Directory(DirectoryError::Taken { detail, cause }) => {
                tracing::info!(error = %cause, "name or number taken");
                ScimError::uniqueness(detail)
            }
            ServiceError::Directory(DirectoryError::ConstraintViolation(text)) => {
                tracing::warn!(error = %text, "directory constraint violation");
                ScimError::invalid_value(
                    "the directory refused a value under one of its constraints, such as its password policy (the server log has the directory's reason)",
                )
            }
            ServiceError::Directory(DirectoryError::AlreadyExists(text)) => {
                tracing::info!(error = %text, "entry exists in the directory");
                ScimError::uniqueness(
                    "an entry with this name exists in the directory but was not provisioned through SCIM, and users.on_existing = \"conflict\"",
                )
            }
            ServiceError::Directory(DirectoryError::ValueExists(text)) => {
                // A value given twice, equal under the attribute's matching rule (two emails
                // differing in case); an add of a value already there counts as done before.
                tracing::warn!(error = %text, "directory refused a repeated value");
                ScimError::invalid_value(
                    "the directory refused a value given twice (values equal under its matching rule, such as two emails differing only in case)",
                )
            }
            ServiceError::Directory(DirectoryError::SchemaViolation { rc, text }) => {
                tracing::warn!(rc, error = %text, "directory schema violation");
                // An IdP admin needs the attribute to fix a mapping or a value; the directory's
                // own words stay in the log, and the detail names only the schema names found in
                // them (OpenLDAP: "telephoneNumber: value #0 invalid per syntax", "object class
                // 'groupOfNames' requires attribute 'member'").
                let names = schema_names(&text);
                let named = if names.is_empty() {
                    String::new()
                } else {
                    format!(" at {}", names.join(", "))
                };
                ScimError::invalid_value(format!(
                    "the directory's schema refused the resulting entry{named}; check the attribute mapping and values (the server log has the directory's reason)"
                ))
            }
            ServiceError::Directory(dir_err) => {
                tracing::error!(error = %dir_err, "directory operation failed");
                ScimError::internal()
            }
            ServiceError::Store(StoreError::NameTaken { kind, name }) => ScimError::uniqueness(
                format!("a {kind} named `{name}` exists already (names ignore case)"),
            ),
            ServiceError::Store(store_err) => {
                tracing::error!(error = %store_err, "cache operation failed");
                ScimError::internal()
            }
        }
    }
}

/// `If-Match` / `If-None-Match` of a request.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    /// `If-Match` header value.
    pub if_match: Option<String>,
    /// `If-None-Match` header value.
    pub if_none_match: Option<String>,
}

/// A resource as replied: the rendered body, its ETag and location.
#[derive(Debug, Clone)]
pub struct ResourceReply {
    /// The JSON resource, projected.
    pub body: Value,
    /// `W/"<version>"`.
    pub etag: String,
    /// `meta.location`.
    pub location: String,
}

/// What a `PATCH` answers.
#[derive(Debug, Clone)]
pub enum Patched {
    /// The resource (200).
    Resource(ResourceReply),
    /// No body (204), with the new ETag.
    NoContent {
        /// The resource's ETag after the change.
        etag: String,
    },
}

/// The service: directory, cache, schemas, mapping and locks.
pub struct Service {
    config: Arc<Config>,
    directory: Arc<Directory>,
    store: Store,
    discovery: Discovery,
    locks: locks::KeyedLocks,
    /// Member changes waiting for their group.
    member_queue: members::MemberQueue,
    /// Unknown attribute names already logged.
    ignored_names: std::sync::Mutex<users::IgnoredNames>,
    /// One reconcile run at a time.
    reconcile_lock: tokio::sync::Mutex<()>,
    /// Full reconciliation runs completed by this process.
    runs_completed: std::sync::atomic::AtomicU64,
    /// The last readiness check and when it ran (see `ready`).
    readiness: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
    /// Resources whose last write failed transiently and may be half applied.
    suspects: suspects::Suspects,
    /// How long a write's directory work takes: the cache's fsync, which runs beside it, may
    /// take its time up to about half of that.
    directory_write_time: crate::store::MovingAverage,
    /// Writes being executed (`execute_plan`, intent to commit): a write's fsync is held back
    /// for others to join only while there are others.
    writes_in_flight: std::sync::atomic::AtomicUsize,
    /// The naming contexts holding the users and the groups, where their POSIX numbers must
    /// be unique; read from the root DSE at the first allocation of each kind.
    naming_contexts: [tokio::sync::OnceCell<String>; 2],
}

impl Service {
    /// Wires the service together.
    pub fn new(
        config: Arc<Config>,
        directory: Arc<Directory>,
        store: Store,
    ) -> Result<Service, String> {
        let discovery = Discovery::load(
            &config.server.base_path,
            Capabilities {
                max_results: MAX_RESULTS,
            },
        )
        .map_err(|err| err.to_string())?;
        Ok(Service {
            config,
            directory,
            store,
            discovery,
            locks: locks::KeyedLocks::default(),
            member_queue: members::MemberQueue::default(),
            ignored_names: Default::default(),
            reconcile_lock: tokio::sync::Mutex::new(()),
            runs_completed: std::sync::atomic::AtomicU64::new(0),
            readiness: tokio::sync::Mutex::new(None),
            suspects: suspects::Suspects::default(),
            directory_write_time: crate::store::MovingAverage::new(std::time::Duration::ZERO),
            writes_in_flight: Default::default(),
            naming_contexts: Default::default(),
        })
    }

    /// The discovery documents.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// The cache.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Ready when the directory answers and the cache is open. `/readyz` needs no token, so
    /// an answer serves every caller for a second: a flood of probes costs the directory one
    /// search a second, not one each.
    pub async fn ready(&self) -> Result<(), String> {
        let mut last = self.readiness.lock().await;
        if let Some((at, outcome)) = last.as_ref() {
            if at.elapsed() < READINESS_REUSE {
                return outcome.clone();
            }
        }
        let outcome = self.check_ready().await;
        *last = Some((std::time::Instant::now(), outcome.clone()));
        outcome
    }

    async fn check_ready(&self) -> Result<(), String> {
        self.directory
            .ping()
            .await
            .map_err(|err| format!("directory: {err}"))?;
        self.store
            .ping()
            .await
            .map_err(|err| format!("cache: {err}"))
    }

    /// The daemon's state for the metrics: pool and cache sizes (zeros for a cache that fails
    /// to answer; that failure is logged).
    pub async fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        let pool = self.directory.pool_stats();
        let sizes = match self.store.sizes().await {
            Ok(sizes) => sizes,
            Err(err) => {
                tracing::warn!(error = %err, "cache sizes unavailable for the metrics");
                store::Sizes::default()
            }
        };
        crate::metrics::Snapshot {
            pool_size: pool.size,
            pool_connected: pool.connected,
            pool_waiters: pool.waiters,
            users: sizes.users,
            groups: sizes.groups,
            memberships: sizes.memberships,
            intents_pending: sizes.intents,
            member_changes_waiting: self.member_queue.len(),
        }
    }

    fn schema(&self, kind: Kind) -> &crate::scim::schema::ResourceSchema {
        match kind {
            Kind::User => self.discovery.user_schema(),
            Kind::Group => self.discovery.group_schema(),
        }
    }

    fn location(&self, kind: Kind, id: &str) -> String {
        let collection = match kind {
            Kind::User => "Users",
            Kind::Group => "Groups",
        };
        format!("{}/{collection}/{id}", self.config.server.base_path)
    }

    /// `POST /Users` or `POST /Groups`.
    pub async fn create(
        &self,
        kind: Kind,
        doc: Value,
        projection: &ListQuery,
    ) -> Result<ResourceReply, ScimError> {
        let stored = match kind {
            Kind::User => self.create_user(doc).await,
            Kind::Group => self.create_group(doc).await,
        }?;
        // A user just created is in no group yet; a new group's members came with it.
        Ok(self.reply(stored, projection, kind == Kind::Group).await?)
    }

    /// `GET /Users/{id}` or `GET /Groups/{id}`.
    pub async fn get(
        &self,
        kind: Kind,
        id: &str,
        projection: &ListQuery,
    ) -> Result<ResourceReply, ScimError> {
        let stored = self.load(kind, id).await?;
        let with_related = !excludes_related(kind, projection);
        Ok(self.reply(stored, projection, with_related).await?)
    }

    /// `PUT /Users/{id}` or `PUT /Groups/{id}`.
    pub async fn replace(
        &self,
        kind: Kind,
        id: &str,
        doc: Value,
        conditions: &Conditions,
        projection: &ListQuery,
    ) -> Result<ResourceReply, ScimError> {
        let stored = match kind {
            Kind::User => self.replace_user(id, doc, conditions).await,
            Kind::Group => self.replace_group(id, doc, conditions).await,
        }?;
        Ok(self.reply(stored, projection, true).await?)
    }

    /// `PATCH /Users/{id}` or `PATCH /Groups/{id}`. A user is answered with the resource (200);
    /// a group with no body (204, RFC 7644 §3.5.2), unless `attributes` or
    /// `excludedAttributes` ask for one, so that a member change never costs a read of the
    /// whole member list.
    pub async fn patch(
        self: &Arc<Self>,
        kind: Kind,
        id: &str,
        doc: Value,
        conditions: &Conditions,
        projection: &ListQuery,
    ) -> Result<Patched, ScimError> {
        let stored = match kind {
            Kind::User => self.patch_user(id, doc, conditions).await,
            Kind::Group => self.patch_group(id, doc, conditions).await,
        }?;
        let asked = !projection.attributes.is_empty() || !projection.excluded_attributes.is_empty();
        if kind == Kind::Group && !asked {
            return Ok(Patched::NoContent {
                etag: render::etag(&stored),
            });
        }
        let with_related = !excludes_related(kind, projection);
        Ok(Patched::Resource(
            self.reply(stored, projection, with_related).await?,
        ))
    }

    /// `DELETE /Users/{id}` or `DELETE /Groups/{id}`.
    pub async fn delete(
        &self,
        kind: Kind,
        id: &str,
        conditions: &Conditions,
    ) -> Result<(), ScimError> {
        match kind {
            Kind::User => self.delete_user(id, conditions).await,
            Kind::Group => self.delete_group(id, conditions).await,
        }
        .map_err(ScimError::from)
    }

    /// `GET /Users`, `GET /Groups`, and the `.search` endpoints (`kind` None searches both).
    ///
    /// Indexed filters (`id`, `userName`/`displayName`, `externalId` eq) are answered from the
    /// cache's indexes; any other filter is evaluated over the cached resources.
    pub async fn list(&self, kind: Option<Kind>, query: &ListQuery) -> Result<Value, ScimError> {
        let kinds = match kind {
            Some(kind) => vec![kind],
            None => vec![Kind::User, Kind::Group],
        };
        if let Some(filter) = &query.filter {
            // At the root, an attribute only one resource type has is unassigned in the other
            // (RFC 7644 §3.4.2.1): the filter must make sense for one of them.
            let mut problem = None;
            for &kind in &kinds {
                match filter.validate(self.schema(kind)) {
                    Ok(()) => {
                        problem = None;
                        break;
                    }
                    Err(err) => problem = problem.or(Some(err)),
                }
            }
            if let Some(err) = problem {
                return Err(err);
            }
        }
        let count = query.count.unwrap_or(MAX_RESULTS).min(MAX_RESULTS);
        let start = query.start_index.max(1);
        let mut matched: Vec<Value> = Vec::new();
        let mut total = 0usize;
        for kind in kinds {
            let schema = self.schema(kind);
            let indexed = query
                .filter
                .as_ref()
                .and_then(|filter| indexed_lookup(filter, kind));
            if query.filter.is_none() && query.sort_by.is_none() {
                // Plain paging: read only the page, count the rest.
                let n_kind = self.store.count(kind).await.map_err(ServiceError::from)?;
                let offset = (start - 1).saturating_sub(total);
                let limit = count.saturating_sub(matched.len());
                let page = self
                    .store
                    .page(kind, offset, limit)
                    .await
                    .map_err(ServiceError::from)?;
                total += n_kind;
                let with_related = !excludes_related(kind, query);
                for stored in page {
                    matched.push(self.render(stored, with_related).await?);
                }
                continue;
            }
            // The membership table is read per resource: before the filter and the sort only
            // when they name what it holds, otherwise for the returned page alone (a scan of
            // every user by email would read it 100,000 times).
            let with_related = list_needs_related(kind, query);
            let related_first = with_related && names_related(kind, query);
            let offset = (start - 1).saturating_sub(total);
            let limit = count.saturating_sub(matched.len());
            // A sort decides the page only once every match is known; otherwise only the
            // page's matches are kept, so that a scan holds one chunk of the cache at a time.
            let mut matches = Matches::new(query.sort_by.is_none().then_some((offset, limit)));
            let (mut batch, mut scan_after) = match indexed {
                Some((field, value)) => (
                    self.store
                        .find(kind, field, &value)
                        .await
                        .map_err(ServiceError::from)?,
                    None,
                ),
                None => (Vec::new(), Some(0)),
            };
            loop {
                for stored in batch {
                    let resource = self.render(stored, related_first).await?;
                    if query
                        .filter
                        .as_ref()
                        .is_none_or(|filter| filter.matches(&resource, schema))
                    {
                        matches.offer(resource);
                    }
                }
                let Some(after) = scan_after else { break };
                let (chunk, last) = self
                    .store
                    .chunk(kind, after, i64::MAX, SCAN_CHUNK)
                    .await
                    .map_err(ServiceError::from)?;
                if chunk.is_empty() {
                    break;
                }
                (batch, scan_after) = (chunk, last);
            }
            total += matches.n_matched;
            let mut page = matches.kept;
            if let Some(sort_by) = &query.sort_by {
                sort(&mut page, sort_by, query.sort_order, schema);
                page = page.into_iter().skip(offset).take(limit).collect();
            }
            for mut resource in page {
                if with_related && !related_first {
                    let id = resource["id"].as_str().unwrap_or_default().to_string();
                    if let Some(object) = resource.as_object_mut() {
                        self.add_related(kind, &id, object).await?;
                    }
                }
                matched.push(resource);
            }
        }
        let resources: Vec<Value> = matched
            .into_iter()
            .map(|resource| {
                let kind = if resource["meta"]["resourceType"] == "Group" {
                    Kind::Group
                } else {
                    Kind::User
                };
                query.project(resource, self.schema(kind))
            })
            .collect();
        Ok(json!({
            "schemas": [LIST_RESPONSE_URN],
            "totalResults": total,
            "startIndex": start,
            "itemsPerPage": resources.len(),
            "Resources": resources,
        }))
    }

    /// Holds `name` of `kind` (ignoring case), as a write that creates or renames to it does
    /// from before its directory write until its commit: waits for such a write to finish.
    pub(crate) async fn hold_name(&self, kind: Kind, name: &str) -> locks::KeyGuard<'_> {
        self.locks
            .lock(format!("{}-name:{}", kind.as_str(), store::name_key(name)))
            .await
    }

    /// The resource `id` of `kind` once no write to it is in progress (a write holds its lock
    /// from before its directory write until its commit): the cache's state after the writes
    /// under way, `None` when it is gone.
    pub(crate) async fn settled(
        &self,
        kind: Kind,
        id: &str,
    ) -> Result<Option<StoredResource>, ServiceError> {
        drop(self.locks.lock(format!("id:{id}")).await);
        Ok(self.store.get(kind, id).await?)
    }

    /// Takes the lock of `name` for `kind` and checks that no resource but `owner` holds it
    /// (names ignore case). Returns no lock when `owner` already has that name.
    async fn claim_name(
        &self,
        kind: Kind,
        owner: &StoredResource,
        name: &str,
    ) -> Result<Option<locks::KeyGuard<'_>>, ServiceError> {
        if !owner.id.is_empty() && store::name_key(name) == store::name_key(&owner.name) {
            return Ok(None);
        }
        let guard = self.hold_name(kind, name).await;
        let taken = self.store.find(kind, IndexedField::Name, name).await?;
        if taken.iter().any(|other| other.id != owner.id) {
            let attr = match kind {
                Kind::User => "userName",
                Kind::Group => "displayName",
            };
            return Err(ServiceError::Conflict(format!(
                "a {} with {attr} `{name}` exists already ({attr} ignores case)",
                kind.as_str().to_lowercase()
            )));
        }
        Ok(Some(guard))
    }

    /// Takes the POSIX number lock of `kind` and the next free number in `range`; `(None, None)`
    /// without a range. Hold the lock until the new resource is committed.
    ///
    /// Free means: above every number this cache handed out (deleted resources' included), not
    /// the users' primary `gidNumber` (for groups), and held by no entry in the directory's
    /// naming context, such as an account that predates scim2ldap. Two accounts with one
    /// `uidNumber` would own each other's files.
    async fn allocate_posix_id(
        &self,
        kind: Kind,
        range: Option<(i64, i64)>,
    ) -> Result<(Option<locks::KeyGuard<'_>>, Option<i64>), ServiceError> {
        let Some((min, max)) = range else {
            return Ok((None, None));
        };
        let guard = self.locks.lock(format!("posix:{}", kind.as_str())).await;
        let (attr, base, reserved) = match kind {
            Kind::User => ("uidNumber", &self.config.users.base_dn, None),
            Kind::Group => (
                "gidNumber",
                &self.config.groups.base_dn,
                self.config
                    .users
                    .posix
                    .as_ref()
                    .map(|posix| posix.gid_number),
            ),
        };
        let context = self.naming_contexts[usize::from(kind == Kind::Group)]
            .get_or_try_init(|| self.directory.naming_context(base))
            .await?;
        let mut next = self.store.next_posix_id(kind, min, max).await?;
        while let Some(number) = next {
            let taken = reserved == Some(number)
                || self
                    .directory
                    .holds_value(context, attr, &number.to_string())
                    .await?;
            if !taken {
                return Ok((Some(guard), Some(number)));
            }
            tracing::debug!(attr, number, "POSIX number taken in the directory; skipped");
            next = (number < max).then_some(number + 1);
        }
        tracing::error!(
            kind = kind.as_str(),
            min,
            max,
            "POSIX number range used up; widen it in the config"
        );
        Err(ServiceError::Scim(ScimError::internal()))
    }

    async fn load(&self, kind: Kind, id: &str) -> Result<StoredResource, ServiceError> {
        self.store
            .get(kind, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                kind: kind.as_str(),
                id: id.to_string(),
            })
    }

    /// `load` for a write, with its conditions checked (`check_if_match`). A resource that does
    /// not exist is 404 whatever the conditions say (RFC 9110 §13.2.1: preconditions are
    /// ignored when the answer without them would be neither 2xx nor 412).
    async fn load_for_write(
        &self,
        kind: Kind,
        id: &str,
        conditions: &Conditions,
    ) -> Result<StoredResource, ServiceError> {
        let stored = self.load(kind, id).await?;
        check_if_match(conditions, &stored)?;
        Ok(stored)
    }

    async fn reply(
        &self,
        stored: StoredResource,
        projection: &ListQuery,
        with_related: bool,
    ) -> Result<ResourceReply, ServiceError> {
        let kind = stored.kind;
        let etag = render::etag(&stored);
        let location = self.location(kind, &stored.id);
        let body = self.render(stored, with_related).await?;
        Ok(ResourceReply {
            body: projection.project(body, self.schema(kind)),
            etag,
            location,
        })
    }
}

/// How long one readiness answer serves `/readyz`.
const READINESS_REUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Resources a scan reads from the cache at a time.
const SCAN_CHUNK: usize = 1_000;

/// The matches of a list: counted, and kept when inside `window` (offset, limit among the
/// matches), or all kept without a window.
struct Matches {
    window: Option<(usize, usize)>,
    n_matched: usize,
    kept: Vec<Value>,
}

impl Matches {
    fn new(window: Option<(usize, usize)>) -> Matches {
        Matches {
            window,
            n_matched: 0,
            kept: Vec::new(),
        }
    }

    fn offer(&mut self, resource: Value) {
        let keep = self.window.is_none_or(|(offset, limit)| {
            self.n_matched >= offset && self.n_matched - offset < limit
        });
        if keep {
            self.kept.push(resource);
        }
        self.n_matched += 1;
    }
}

/// The cache index that answers `filter` for `kind` outright, if any.
fn indexed_lookup(
    filter: &crate::scim::filter::Filter,
    kind: Kind,
) -> Option<(IndexedField, String)> {
    let (path, value) = filter.as_simple_eq()?;
    if path.urn.is_some() || path.sub.is_some() {
        return None;
    }
    let name = path.name.as_str();
    let field = if name.eq_ignore_ascii_case("id") {
        IndexedField::Id
    } else if name.eq_ignore_ascii_case("externalId") {
        IndexedField::ExternalId
    } else if (kind == Kind::User && name.eq_ignore_ascii_case("userName"))
        || (kind == Kind::Group && name.eq_ignore_ascii_case("displayName"))
    {
        IndexedField::Name
    } else {
        return None;
    };
    Some((field, value.to_string()))
}

/// True when `query` leaves out the attribute read from the membership table: a group's
/// `members` or a user's `groups` (so the table need not be read).
fn excludes_related(kind: Kind, query: &ListQuery) -> bool {
    let (related, core_urn) = related_attribute(kind);
    let named = |paths: &[crate::scim::path::AttrPath]| {
        paths.iter().any(|path| {
            path.name.eq_ignore_ascii_case(related)
                && path
                    .urn
                    .as_deref()
                    .is_none_or(|urn| urn.eq_ignore_ascii_case(core_urn))
        })
    };
    named(&query.excluded_attributes) || (!query.attributes.is_empty() && !named(&query.attributes))
}

/// The attribute read from the membership table for `kind`, and its core schema URN.
fn related_attribute(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Group => ("members", crate::scim::schema::GROUP_URN),
        Kind::User => ("groups", crate::scim::schema::USER_URN),
    }
}

/// Whether a list must render `members` / `groups`: the reply carries them, or the filter or
/// the sort key, evaluated on the rendered resource, names them.
fn list_needs_related(kind: Kind, query: &ListQuery) -> bool {
    !excludes_related(kind, query) || names_related(kind, query)
}

/// True when `query`'s filter or sort names the attribute read from the membership table.
fn names_related(kind: Kind, query: &ListQuery) -> bool {
    let (related, _) = related_attribute(kind);
    query
        .filter
        .as_ref()
        .is_some_and(|filter| filter.names_attribute(related))
        || query
            .sort_by
            .as_ref()
            .is_some_and(|path| path.name.eq_ignore_ascii_case(related))
}

/// Checks a write's `If-Match` and `If-None-Match` against the stored resource's ETag (RFC
/// 9110 §13.1.1-2: `If-None-Match: *`, or the current tag, refuses a write to a resource that
/// exists).
fn check_if_match(conditions: &Conditions, stored: &StoredResource) -> Result<(), ServiceError> {
    let etag = || render::etag(stored);
    let refused = conditions
        .if_match
        .as_ref()
        .is_some_and(|list| !crate::http::etag_matches(list, &etag()))
        || conditions
            .if_none_match
            .as_ref()
            .is_some_and(|list| crate::http::etag_matches(list, &etag()));
    if refused {
        return Err(ServiceError::PreconditionFailed);
    }
    Ok(())
}

/// Now, as RFC 3339 with seconds precision.
pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|now| {
            now.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::error::ScimType;

    fn answer(text: &str) -> ScimError {
        ScimError::from(ServiceError::Directory(DirectoryError::from_result(
            19,
            text.to_string(),
        )))
    }

    #[test]
    fn a_constraint_violation_is_a_conflict_only_when_the_directory_says_not_unique() {
        // slapo-unique's text.
        let taken = answer("some attributes not unique");
        assert_eq!(
            (taken.status, taken.scim_type),
            (409, Some(ScimType::Uniqueness))
        );
        // ppolicy's quality check and a second value of a single-valued attribute: the
        // request's values are at fault, not another entry.
        for text in [
            "Password fails quality checking policy",
            "attribute 'displayName' cannot have multiple values",
        ] {
            let refused = answer(text);
            assert_eq!(
                (refused.status, refused.scim_type),
                (400, Some(ScimType::InvalidValue)),
                "{text}"
            );
        }
    }

    /// A schema refusal names the attributes and classes the directory named, in scim2ldap's
    /// words: none of the directory's own text, nor anything that is not an LDAP name.
    #[test]
    fn a_schema_refusal_names_the_schema_names_but_not_the_directorys_words() {
        let detail = |text: &str| {
            let err = ScimError::from(ServiceError::Directory(DirectoryError::SchemaViolation {
                rc: 21,
                text: text.to_string(),
            }));
            assert_eq!(
                (err.status, err.scim_type),
                (400, Some(ScimType::InvalidValue))
            );
            err.detail
        };
        let syntax = detail("telephoneNumber: value #0 invalid per syntax");
        assert!(syntax.contains("at `telephoneNumber`;"), "{syntax}");
        assert!(!syntax.contains("invalid per syntax"), "{syntax}");
        let class = detail("object class 'groupOfNames' requires attribute 'member'");
        assert!(class.contains("at `groupOfNames`, `member`;"), "{class}");
        assert!(!class.contains("requires"), "{class}");
        let vague = detail("no structural object class provided");
        assert!(!vague.contains(" at "), "{vague}");
        let hostile = detail("uid=x,ou=people,dc=example,dc=com: 'a b' 'c\nd'");
        assert!(
            !hostile.contains("uid=x") && !hostile.contains("a b"),
            "{hostile}"
        );
    }

    #[test]
    fn a_list_keeps_the_matches_of_its_page_and_counts_them_all() {
        let offer_all = |window| {
            let mut matches = Matches::new(window);
            for n in 0..7 {
                matches.offer(json!(n));
            }
            (matches.n_matched, matches.kept)
        };
        assert_eq!(
            offer_all(Some((2, 3))),
            (7, vec![json!(2), json!(3), json!(4)])
        );
        assert_eq!(offer_all(Some((5, 10))), (7, vec![json!(5), json!(6)]));
        assert_eq!(offer_all(Some((9, 10))), (7, vec![]));
        assert_eq!(offer_all(Some((0, 0))), (7, vec![]));
        assert_eq!(offer_all(None).1.len(), 7);
    }
}
