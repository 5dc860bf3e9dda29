//! The reconciliation cache: what the IdP last asked for, in SQLite (WAL), crash-safe.
//!
//! Only this module touches the database file. It holds each resource as the IdP last set it
//! (never a password), its DN and directory id, its version, indexes for the names IdPs filter
//! on, the group membership table (one row per member, never a blob), and the intent log of
//! writes that were started but not yet committed. Writes go through one writer connection:
//! the caller that finds it free commits whatever is queued in one transaction (group commit,
//! without a hand-off to another thread); reads use their own connections, which WAL lets run
//! beside the writer.
//!
//! Durability: transactions run with `synchronous = NORMAL`, so a committed write survives the
//! process being killed (it is in the WAL, in the OS page cache) but not by itself a power loss.
//! Power-loss durability comes from `sync`: a sync thread fsyncs the WAL file, batching every
//! caller that waits at the time, and holding the fsync back while every waiting caller can
//! spare the time (`start_sync_by`), so that one flush serves more writes. The service asks for
//! it after recording an intent, lets it run beside the directory write, and acknowledges only
//! when both are done: after a power loss, an acknowledged write is either committed or its
//! intent is on disk and is replayed. The same thread checkpoints the WAL into the database file.

mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection};

use crate::mapping::dn_key;
use tokio::sync::oneshot;

/// `UPDATE` that counts a membership change made by another resource's write (`member_gen`,
/// and `lastModified` now) on the rows `$tail` selects.
macro_rules! bump_member_gen {
    ($tail:literal) => {
        concat!(
            "UPDATE resources SET member_gen = member_gen + 1, \
             last_modified = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') ",
            $tail
        )
    };
}

/// `SELECT` of the columns `row_to_raw` reads, in its order (`seq`, column 11, is read by
/// those that page), from `resources` and `$tail`.
macro_rules! select_resources {
    ($tail:literal) => {
        concat!(
            "SELECT id, kind, name, external_id, dn, entry_uuid, posix_id, version, created, \
             last_modified, doc, seq, member_gen FROM resources ",
            $tail
        )
    };
}

/// A store failure. Always a server-side fault: the client sees 500 and the log has this text.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused or failed.
    #[error("cache database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored document could not be decoded.
    #[error("cache document of {id} is corrupt: {source}")]
    Corrupt {
        /// The resource id.
        id: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A second resource of the same kind wanted an existing name.
    #[error("{kind} name `{name}` is taken")]
    NameTaken {
        /// `User` or `Group`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The sync thread is gone (shutdown), or a write was dropped unanswered.
    #[error("cache writer stopped")]
    WriterGone,
    /// An fsync of the WAL, or a commit, failed earlier: nothing is trusted until a restart
    /// replays the file.
    #[error("a cache write failed earlier ({0}); every write fails until a restart")]
    WriteFailed(String),
    /// The database file could not be opened or prepared.
    #[error("cache {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Resource kinds the cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A SCIM User.
    User,
    /// A SCIM Group.
    Group,
}

impl Kind {
    /// The SCIM resource type name, also the value in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::User => "User",
            Kind::Group => "Group",
        }
    }
}

/// One cached resource.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    /// SCIM id.
    pub id: String,
    /// User or Group.
    pub kind: Kind,
    /// `userName` or `displayName`.
    pub name: String,
    /// `externalId`, when the IdP sent one.
    pub external_id: Option<String>,
    /// Where the entry is in the directory.
    pub dn: String,
    /// The directory's own id of the entry (`entryUUID`), when known.
    pub entry_uuid: Option<String>,
    /// The allocated `uidNumber` / `gidNumber`, with POSIX attributes on.
    pub posix_id: Option<i64>,
    /// Incremented on every write of the resource; the ETag is derived from it and
    /// `member_gen`.
    pub version: i64,
    /// Incremented when a write of another resource changes this one's memberships (a group
    /// write its members' `groups`, a user's delete its groups' `members`).
    pub member_gen: i64,
    /// RFC 3339 creation time.
    pub created: String,
    /// RFC 3339 time of the last change.
    pub last_modified: String,
    /// The resource as the IdP last set it, without `meta`, `members`, `groups` and `password`.
    pub doc: serde_json::Value,
}

impl StoredResource {
    /// A placeholder owner for a resource not created yet (empty id).
    pub fn none(kind: Kind) -> StoredResource {
        StoredResource {
            id: String::new(),
            kind,
            name: String::new(),
            external_id: None,
            dn: String::new(),
            entry_uuid: None,
            posix_id: None,
            version: 0,
            member_gen: 0,
            created: String::new(),
            last_modified: String::new(),
            doc: serde_json::Value::Null,
        }
    }
}

/// An indexed lookup the cache answers without a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexedField {
    /// `id`.
    Id,
    /// `userName` / `displayName`, ignoring case.
    Name,
    /// `externalId`, exact.
    ExternalId,
    /// The entry's DN, compared as `dn_key` (case and escaping folded).
    Dn,
    /// The directory's own id of the entry.
    EntryUuid,
    /// The `uidNumber` / `gidNumber` (decimal).
    PosixId,
}

/// A write recorded before the directory is touched, so it can be finished after a crash.
#[derive(Debug, Clone)]
pub struct Intent {
    /// Sequence number, assigned by the store.
    pub seq: i64,
    /// The resource being written.
    pub resource_id: String,
    /// Opaque plan, written and read by the service.
    pub plan: String,
}

/// Everything one write changes in the cache, applied in one transaction.
#[derive(Debug, Default)]
pub struct Commit {
    /// The intent this finishes, removed in the same transaction.
    pub intent_seq: Option<i64>,
    /// Insert or replace this resource.
    pub upsert: Option<StoredResource>,
    /// Delete this resource and every membership row naming it.
    pub delete: Option<String>,
    /// (group id, member id) rows to add.
    pub members_add: Vec<(String, String)>,
    /// (group id, member id) rows to remove.
    pub members_remove: Vec<(String, String)>,
    /// Remove every member row of this group first (a full replace of the list).
    pub members_clear: Option<String>,
}

enum Job {
    Intent {
        resource_id: String,
        plan: String,
        reply: oneshot::Sender<Result<i64, StoreError>>,
    },
    Commit {
        commit: Box<Commit>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Cookie {
        base_key: String,
        cookie: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Most jobs one writer transaction takes.
const MAX_BATCH: usize = 512;
/// Read connections kept open.
const N_READERS: usize = 4;

/// The writer connection and the jobs waiting for it. Whoever submits a job while nobody is
/// writing runs every queued job (its own and those submitted meanwhile) in one transaction per
/// round, on its own thread, until the queue is empty (flat combining): an uncontended write
/// costs no hand-off to another thread and back, and under load the jobs still share
/// transactions. A round takes tens of microseconds: SQLite appends to the WAL without syncing
/// it (see `sync`). Checkpoints, which sync, run on the sync thread through `exclusive`.
struct Writer {
    state: Mutex<WriterState>,
    /// Signalled when a writing caller stops, for `exclusive`.
    idle: std::sync::Condvar,
    conn: Mutex<Connection>,
    sync: Arc<SyncQueue>,
}

impl Drop for Writer {
    /// The last `Store` is gone: the sync thread finishes what waits and ends.
    fn drop(&mut self) {
        self.sync.close();
    }
}

#[derive(Default)]
struct WriterState {
    queue: Vec<Job>,
    /// A caller is writing the queue (or `exclusive` holds the connection).
    busy: bool,
    /// `exclusive` waits: the writing caller stops after its round and leaves the queue to it.
    exclusive_waiting: bool,
    /// Jobs written since the sync thread was last asked to checkpoint.
    since_checkpoint: usize,
}

/// Work for the sync thread: callers add to it under the lock and wake the thread only when
/// it would otherwise start too late (it is idle, or sleeps past the new caller's time). Under
/// load most callers join an fsync already planned without a system call, and the thread wakes
/// once per fsync instead of once per caller.
struct SyncQueue {
    state: Mutex<SyncState>,
    wake: std::sync::Condvar,
    /// How long an fsync takes here; starts high, so that nothing is held back before a first
    /// measurement.
    fsync_time: MovingAverage,
    /// Longest an fsync is held back to serve more callers.
    max_delay: Duration,
    /// Why an fsync or a commit failed, once one has: from then on every write fails until a
    /// restart.
    failure: std::sync::OnceLock<String>,
}

#[derive(Default)]
struct SyncState {
    /// Callers waiting for an fsync.
    waiting: Vec<oneshot::Sender<Result<(), StoreError>>>,
    /// When the fsync must start for the earliest waiting caller to have its answer in time.
    start_by: Option<std::time::Instant>,
    /// A checkpoint was asked for.
    checkpoint: bool,
    /// What the sync thread does, for callers deciding whether to wake it.
    thread: SyncThread,
    /// No more callers will come (the last `Store` is gone).
    closed: bool,
}

#[derive(Default, Clone, Copy)]
enum SyncThread {
    /// Working, or woken already: it looks at the queue before it sleeps again.
    #[default]
    Busy,
    /// Asleep with nothing to do.
    Idle,
    /// Asleep until this time.
    Until(std::time::Instant),
}

/// Abandons the queue when the sync thread ends, by returning or by a panic.
struct CloseOnExit<'q>(&'q SyncQueue);

impl Drop for CloseOnExit<'_> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// What the sync thread does next.
struct Gathered {
    /// Callers waiting for an fsync.
    waiting: Vec<oneshot::Sender<Result<(), StoreError>>>,
    /// A checkpoint was asked for.
    checkpoint: bool,
}

impl SyncQueue {
    fn new(max_delay: Duration) -> SyncQueue {
        SyncQueue {
            state: Mutex::new(SyncState::default()),
            wake: std::sync::Condvar::new(),
            fsync_time: MovingAverage::new(Duration::from_millis(10)),
            max_delay,
            failure: std::sync::OnceLock::new(),
        }
    }

    /// Adds a caller that needs its fsync done by `by`.
    fn sync_by(
        &self,
        reply: oneshot::Sender<Result<(), StoreError>>,
        by: std::time::Instant,
    ) -> Result<(), StoreError> {
        let latest_start = by
            .checked_sub(self.fsync_time.get())
            .unwrap_or(by)
            .min(std::time::Instant::now() + self.max_delay);
        let mut state = lock(&self.state);
        if state.closed {
            return Err(StoreError::WriterGone);
        }
        state.waiting.push(reply);
        state.start_by = Some(state.start_by.map_or(latest_start, |t| t.min(latest_start)));
        let wake = match state.thread {
            SyncThread::Busy => false,
            SyncThread::Idle => true,
            SyncThread::Until(t) => latest_start < t,
        };
        self.wake_if(state, wake);
        Ok(())
    }

    /// Asks for a checkpoint, after the fsync planned if there is one.
    fn checkpoint(&self) {
        let mut state = lock(&self.state);
        state.checkpoint = true;
        let idle = matches!(state.thread, SyncThread::Idle);
        self.wake_if(state, idle);
    }

    fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        self.wake_if(state, true);
    }

    /// The sync thread has ended (never expected before `close`, but a panic would): callers
    /// waiting and to come fail with `WriterGone` instead of waiting forever.
    fn abandon(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.waiting.clear();
    }

    /// Wakes the thread when `wake`, after releasing the lock (woken under it, the thread would
    /// find the lock taken and sleep once more).
    fn wake_if(&self, mut state: std::sync::MutexGuard<'_, SyncState>, wake: bool) {
        if wake {
            state.thread = SyncThread::Busy;
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Waits until the fsync must start (or a checkpoint is asked for while nobody waits) and
    /// takes the work; `None` once closed with nothing left.
    fn next(&self) -> Option<Gathered> {
        let mut state = lock(&self.state);
        loop {
            let now = std::time::Instant::now();
            match state.start_by {
                Some(t) if t > now => {
                    state.thread = SyncThread::Until(t);
                    state = self
                        .wake
                        .wait_timeout(state, t - now)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
                Some(_) => break,
                None if state.checkpoint => break,
                None if state.closed => return None,
                None => {
                    state.thread = SyncThread::Idle;
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
        }
        state.thread = SyncThread::Busy;
        state.start_by = None;
        Some(Gathered {
            waiting: std::mem::take(&mut state.waiting),
            checkpoint: std::mem::take(&mut state.checkpoint),
        })
    }
}

/// Most index lookups one `read` may make on the writer's connection (see `read_keys`).
const WRITER_LOOKUP_KEYS: usize = 16;
/// Longest an fsync is held back to serve more callers.
const MAX_SYNC_DELAY: Duration = Duration::from_millis(2);
/// Jobs between two checkpoints: 400 to 1,100 WAL pages of ordinary writes.
const CHECKPOINT_EVERY: usize = 128;
/// The writer's own checkpoint, a backstop for when the sync thread falls behind (pages).
const AUTOCHECKPOINT_PAGES: i64 = 10_000;

impl Writer {
    fn submit(&self, job: Job) {
        {
            let mut state = lock(&self.state);
            state.queue.push(job);
            if state.busy || state.exclusive_waiting {
                return;
            }
            state.busy = true;
        }
        // Only the one that set `busy` takes the connection; at most a point lookup (`read`)
        // holds it meanwhile, so this never waits long.
        self.write_queue(&mut lock(&self.conn));
    }

    /// Writes the queue round by round until it is empty, or until `exclusive` waits.
    fn write_queue(&self, conn: &mut Connection) {
        let _unwinding = ReleaseOnPanic(self);
        loop {
            let batch = {
                let mut state = lock(&self.state);
                if state.queue.is_empty() || state.exclusive_waiting {
                    state.busy = false;
                    // Only `exclusive` waits for an idle writer; a notify costs a system call.
                    if state.exclusive_waiting {
                        self.idle.notify_all();
                    }
                    return;
                }
                let n = state.queue.len().min(MAX_BATCH);
                state.since_checkpoint += n;
                if state.since_checkpoint >= CHECKPOINT_EVERY {
                    state.since_checkpoint = 0;
                    self.sync.checkpoint();
                }
                state.queue.drain(..n).collect::<Vec<_>>()
            };
            run_batch(conn, batch);
        }
    }

    /// Runs `work` on the connection with no write in progress or starting meanwhile (jobs
    /// submitted meanwhile wait in the queue), then writes the queue. For blocking work such as
    /// a checkpoint: a passive checkpoint that writers overtake never completes, and the WAL
    /// restarts from its beginning only after one that did. Only the sync thread calls it, so
    /// one flag tells a writing caller that somebody waits.
    fn exclusive(&self, work: impl FnOnce(&mut Connection)) {
        {
            let mut state = lock(&self.state);
            state.exclusive_waiting = true;
            while state.busy {
                state = self
                    .idle
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            state.exclusive_waiting = false;
            state.busy = true;
        }
        let mut conn = lock(&self.conn);
        work(&mut conn);
        self.write_queue(&mut conn);
    }
}

/// Leaves the writer to the next caller when a round panics (never expected): the jobs of that
/// round fail as dropped (`WriterGone`), the queued ones are written by the next submitter.
struct ReleaseOnPanic<'w>(&'w Writer);

impl Drop for ReleaseOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            lock(&self.0.state).busy = false;
            self.0.idle.notify_all();
        }
    }
}

/// A moving average of durations (each sample weighs 1/8), shared between threads. Racing
/// updates may lose a sample; an average does not mind.
#[derive(Debug)]
pub struct MovingAverage(std::sync::atomic::AtomicU64);

impl MovingAverage {
    /// An average that starts at `initial`.
    pub fn new(initial: Duration) -> MovingAverage {
        MovingAverage(std::sync::atomic::AtomicU64::new(micros(initial)))
    }

    /// Adds one sample.
    pub fn note(&self, sample: Duration) {
        use std::sync::atomic::Ordering;
        let average = self.0.load(Ordering::Relaxed);
        let next = average.saturating_mul(7).saturating_add(micros(sample)) / 8;
        self.0.store(next, Ordering::Relaxed);
    }

    /// The current average.
    pub fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Locks `mutex`, also after a panic elsewhere: the data behind these locks (a queue, a
/// connection whose failed transaction SQLite rolled back) stays consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The cache: the writer connection, a sync thread, a few read connections.
#[derive(Clone)]
pub struct Store {
    writer: Arc<Writer>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: Arc<std::sync::atomic::AtomicUsize>,
}

impl Store {
    /// Opens (creating when needed) the cache at `path` and starts its sync thread.
    ///
    /// Fails when the file cannot be opened, is not a scim2ldap cache, or is from a newer version.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, true)
    }

    /// Opens the existing cache at `path` for a reader that must change nothing (a dry run):
    /// no file is created, and a cache of another schema version is refused, not upgraded.
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, false)
    }

    fn open_with(path: &Path, prepare: bool) -> Result<Store, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        let writer_conn = if prepare {
            create_private(path).map_err(|err| open_err(err.to_string()))?;
            let mut conn = Connection::open(path).map_err(|err| open_err(err.to_string()))?;
            schema::prepare(&mut conn).map_err(|err| open_err(err.to_string()))?;
            conn
        } else {
            let conn = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|err| open_err(format!("{err} (a dry run reads an existing cache)")))?;
            schema::check(&conn).map_err(|err| open_err(err.to_string()))?;
            conn
        };
        // Room for the point lookups' statements beside the writes' (see `read`).
        writer_conn.set_prepared_statement_cache_capacity(64);
        stable_plans(&writer_conn).map_err(|err| open_err(err.to_string()))?;
        // Checkpoints run on the sync thread, off the request threads that write.
        writer_conn
            .pragma_update(None, "wal_autocheckpoint", AUTOCHECKPOINT_PAGES)
            .map_err(|err| open_err(err.to_string()))?;
        let mut readers = Vec::with_capacity(N_READERS);
        for _ in 0..N_READERS {
            let conn = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|err| open_err(err.to_string()))?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            stable_plans(&conn).map_err(|err| open_err(err.to_string()))?;
            readers.push(Mutex::new(conn));
        }
        let sync = Arc::new(SyncQueue::new(MAX_SYNC_DELAY));
        let writer = Arc::new(Writer {
            state: Mutex::new(WriterState::default()),
            idle: std::sync::Condvar::new(),
            conn: Mutex::new(writer_conn),
            sync: sync.clone(),
        });
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        let wal_path = PathBuf::from(wal_path);
        // A weak reference: the thread ends when the last `Store` (and its sender) is gone.
        let weak_writer = Arc::downgrade(&writer);
        std::thread::Builder::new()
            .name("cache-sync".to_string())
            .spawn(move || sync_loop(&wal_path, &weak_writer, &sync))
            .map_err(|err| open_err(err.to_string()))?;
        Ok(Store {
            writer,
            readers: Arc::new(readers),
            next_reader: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    /// Why the cache's fsync or a commit failed, once one has (writes fail from then on, until
    /// a restart replays what the file holds).
    pub fn write_failure(&self) -> Option<String> {
        self.writer.sync.failure.get().cloned()
    }

    /// Records an intent (durable against a process crash) and returns its sequence number.
    /// Refused once a write has failed: nothing new reaches the directory on a cache that
    /// may not hold what was written before.
    pub async fn record_intent(&self, resource_id: &str, plan: String) -> Result<i64, StoreError> {
        if let Some(reason) = self.write_failure() {
            return Err(StoreError::WriteFailed(reason));
        }
        let (reply, receive) = oneshot::channel();
        self.send(Job::Intent {
            resource_id: resource_id.to_string(),
            plan,
            reply,
        })?;
        receive.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Makes everything written before this call durable against power loss: one fsync of the
    /// WAL file, shared by every caller waiting at the time.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.start_sync_by(std::time::Instant::now())?.await
    }

    /// Plans the fsync of `sync` for a caller that will not need the answer before `by` (it
    /// waits for something else meanwhile) and returns the wait for it, to be awaited once the
    /// caller needs it: an fsync done by then wakes nobody. The sync thread may hold the fsync
    /// back until shortly before the earliest such time of the callers waiting, so that one
    /// fsync serves more of them: on a disk the directory shares, every flush of ours is one
    /// the directory waits behind.
    pub fn start_sync_by(
        &self,
        by: std::time::Instant,
    ) -> Result<impl std::future::Future<Output = Result<(), StoreError>> + use<>, StoreError> {
        let (reply, receive) = oneshot::channel();
        self.writer.sync.sync_by(reply, by)?;
        Ok(async move { receive.await.map_err(|_| StoreError::WriterGone)? })
    }

    /// Applies `commit` in one transaction; durable against a process crash when it returns
    /// (see the module documentation for power loss).
    ///
    /// A commit that fails, but for a name taken, fails every later write too: its write may
    /// have reached the directory, and writes planned from the cache without it would build
    /// on a state the directory no longer has. A restart replays its intent.
    pub async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let (reply, receive) = oneshot::channel();
        self.send(Job::Commit {
            commit: Box::new(commit),
            reply,
        })?;
        let result = receive.await.map_err(|_| StoreError::WriterGone)?;
        if let Err(err) = &result {
            if !matches!(err, StoreError::NameTaken { .. })
                && self.writer.sync.failure.set(err.to_string()).is_ok()
            {
                tracing::error!(error = %err, "cache commit failed: every write fails from now on; restart the service (it replays what the cache holds)");
            }
        }
        result
    }

    /// The synchronization cookie kept for the followed base `base` (see
    /// `reconcile::follow`), if any.
    pub async fn sync_cookie(&self, base: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let base_key = dn_key(base);
        self.read(move |conn| {
            use rusqlite::OptionalExtension;
            Ok(conn
                .prepare_cached("SELECT cookie FROM sync_cookies WHERE base_key = ?1")?
                .query_row(params![base_key], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    /// Keeps `cookie` for the followed base `base` (`None` forgets it). Like a commit, it is
    /// durable against a process crash when this returns; losing it to a power cut only
    /// means that changes since an older cookie are checked again.
    pub async fn set_sync_cookie(
        &self,
        base: &str,
        cookie: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        if let Some(reason) = self.write_failure() {
            return Err(StoreError::WriteFailed(reason));
        }
        let (reply, receive) = oneshot::channel();
        self.send(Job::Cookie {
            base_key: dn_key(base),
            cookie,
            reply,
        })?;
        receive.await.map_err(|_| StoreError::WriterGone)?
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.writer.submit(job);
        Ok(())
    }

    /// Runs a point lookup (by a primary or unique index) on a free connection right here: on a
    /// warm page cache it takes microseconds, less than the hop to a blocking thread would. When
    /// every connection is busy (a long list), it goes to the blocking pool instead.
    ///
    /// The writer's connection comes first when nobody uses it: it wrote every page it caches,
    /// so its cache outlives the writes, while SQLite drops a reader's whole cache at its first
    /// read after any write and reads the pages again (5 `pread`s and 1.9% of the daemon's
    /// instructions per `PUT`, which reads the user and its groups). The lookup holds the
    /// writer's connection for microseconds; a write that comes meanwhile waits that long.
    async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.read_keys(1, read).await
    }

    /// `read` for `keys` index lookups in one go (membership checks of a batch): more than
    /// `WRITER_LOOKUP_KEYS` would hold the writer's connection, and every write, for
    /// milliseconds (10,000 ids take tens), so those go to the readers only.
    async fn read_keys<T, F>(&self, keys: usize, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if keys <= WRITER_LOOKUP_KEYS {
            if let Ok(conn) = self.writer.conn.try_lock() {
                // Between transactions, as always outside `write_queue`; checked all the same,
                // so that a transaction a failed rollback left open is never read from.
                if conn.is_autocommit() {
                    return read(&conn);
                }
            }
        }
        for reader in self.readers.iter() {
            if let Ok(conn) = reader.try_lock() {
                return read(&conn);
            }
        }
        self.read_blocking(read).await
    }

    /// Runs `read` on a reader connection off the async threads (scans, long lists).
    async fn read_blocking<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        let idx = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % readers.len();
        tokio::task::spawn_blocking(move || {
            let conn = readers[idx].lock().map_err(|_| StoreError::Open {
                path: PathBuf::new(),
                reason: "reader lock poisoned".to_string(),
            })?;
            read(&conn)
        })
        .await
        .map_err(|_| StoreError::WriterGone)?
    }

    /// Intents left by a run that stopped between recording and committing, oldest first.
    pub async fn pending_intents(&self) -> Result<Vec<Intent>, StoreError> {
        self.read_blocking(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT seq, resource_id, plan FROM intents ORDER BY seq")?;
            let rows = stmt.query_map([], |row| {
                Ok(Intent {
                    seq: row.get(0)?,
                    resource_id: row.get(1)?,
                    plan: row.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The resource `id` of `kind`, if cached.
    pub async fn get(&self, kind: Kind, id: &str) -> Result<Option<StoredResource>, StoreError> {
        let mut found = self.find(kind, IndexedField::Id, id).await?;
        Ok(found.pop())
    }

    /// Resources of `kind` whose `field` equals `value` (names ignore case).
    pub async fn find(
        &self,
        kind: Kind,
        field: IndexedField,
        value: &str,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let value = match field {
            IndexedField::Name => name_key(value),
            IndexedField::Dn => dn_key(value),
            IndexedField::Id
            | IndexedField::ExternalId
            | IndexedField::EntryUuid
            | IndexedField::PosixId => value.to_string(),
        };
        self.read(move |conn| {
            let sql = match field {
                IndexedField::Id => select_resources!("WHERE kind = ?1 AND id = ?2"),
                IndexedField::Name => select_resources!("WHERE kind = ?1 AND name_key = ?2"),
                IndexedField::Dn => select_resources!("WHERE kind = ?1 AND dn_key = ?2"),
                IndexedField::EntryUuid => {
                    select_resources!("WHERE kind = ?1 AND entry_uuid = ?2")
                }
                IndexedField::PosixId => {
                    select_resources!("WHERE kind = ?1 AND posix_id = CAST(?2 AS INTEGER)")
                }
                IndexedField::ExternalId => {
                    select_resources!("WHERE kind = ?1 AND external_id = ?2 ORDER BY seq")
                }
            };
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map(params![kind.as_str(), value], row_to_raw)?;
            rows.map(|row| row?.decode()).collect()
        })
        .await
    }

    /// A page of `kind` in creation order: `offset` rows skipped, at most `limit` returned.
    pub async fn page(
        &self,
        kind: Kind,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<StoredResource>, StoreError> {
        self.read_blocking(move |conn| {
            // `+kind` keeps SQLite off the indexes that start with `kind`: through one it
            // would read every resource of the kind and sort them all for each page; in the
            // table's own order it reads only as far as the page.
            let mut stmt = conn.prepare_cached(select_resources!(
                "WHERE +kind = ?1 ORDER BY seq LIMIT ?2 OFFSET ?3"
            ))?;
            let rows = stmt.query_map(
                params![kind.as_str(), limit as i64, offset as i64],
                row_to_raw,
            )?;
            rows.map(|row| row?.decode()).collect()
        })
        .await
    }

    /// Up to `limit` resources of `kind` cached after position `after` (0: from the first) and
    /// up to position `until` (`i64::MAX`: no end), in creation order, and the position of the
    /// last one: a scan in bounded steps, each a range of the table's key (unlike `page`,
    /// which skips `offset` rows every time).
    pub async fn chunk(
        &self,
        kind: Kind,
        after: i64,
        until: i64,
        limit: usize,
    ) -> Result<(Vec<StoredResource>, Option<i64>), StoreError> {
        self.read_blocking(move |conn| {
            // `+kind`: a range of the key, not a sort of the whole kind (see `page`).
            let mut stmt = conn.prepare_cached(select_resources!(
                "WHERE seq > ?2 AND seq <= ?4 AND +kind = ?1 ORDER BY seq LIMIT ?3"
            ))?;
            let mut last = None;
            let rows =
                stmt.query_map(params![kind.as_str(), after, limit as i64, until], |row| {
                    last = Some(row.get::<_, i64>(11)?);
                    row_to_raw(row)
                })?;
            let resources = rows
                .map(|row| row?.decode())
                .collect::<Result<Vec<_>, _>>()?;
            Ok((resources, last))
        })
        .await
    }

    /// The position of the newest cached resource (0: none): resources created later have a
    /// greater one (`chunk`'s positions).
    pub async fn newest_position(&self) -> Result<i64, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT coalesce(max(seq), 0) FROM resources")?
                .query_row([], |row| row.get(0))?)
        })
        .await
    }

    /// How many resources of `kind` are cached.
    pub async fn count(&self, kind: Kind) -> Result<usize, StoreError> {
        self.read_blocking(move |conn| {
            let n: i64 = conn
                .prepare_cached("SELECT count(*) FROM resources WHERE kind = ?1")?
                .query_row(params![kind.as_str()], |row| row.get(0))?;
            Ok(n as usize)
        })
        .await
    }

    /// The member ids of group `group_id`.
    pub async fn members(&self, group_id: &str) -> Result<Vec<String>, StoreError> {
        let group_id = group_id.to_string();
        self.read_blocking(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT member_id FROM members WHERE group_id = ?1 ORDER BY member_id",
            )?;
            let rows = stmt.query_map(params![group_id], |row| row.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    /// Which of `member_ids` are members of `group_id` now.
    pub async fn members_among(
        &self,
        group_id: &str,
        member_ids: Vec<String>,
    ) -> Result<Vec<String>, StoreError> {
        let group_id = group_id.to_string();
        self.read_keys(member_ids.len(), move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT 1 FROM members WHERE group_id = ?1 AND member_id = ?2")?;
            let mut present = Vec::new();
            for member_id in member_ids {
                if stmt.exists(params![group_id, member_id])? {
                    present.push(member_id);
                }
            }
            Ok(present)
        })
        .await
    }

    /// Those of `ids` that name no resource of `kind`, in one read.
    pub async fn missing(&self, kind: Kind, ids: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.read_keys(ids.len(), move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT 1 FROM resources WHERE kind = ?1 AND id = ?2")?;
            let mut missing = Vec::new();
            for id in ids {
                if !stmt.exists(params![kind.as_str(), id])? {
                    missing.push(id);
                }
            }
            Ok(missing)
        })
        .await
    }

    /// True when group `group_id` has a member other than those in `excluded` (with
    /// `active_only`, an active one: suspended users may be out of the group's entry); reads
    /// at most `excluded.len() + 1` rows when its members are active, whatever its size.
    pub async fn has_members_besides(
        &self,
        group_id: &str,
        excluded: Vec<String>,
        active_only: bool,
    ) -> Result<bool, StoreError> {
        let group_id = group_id.to_string();
        self.read_keys(excluded.len() + 1, move |conn| {
            let mut stmt = if active_only {
                conn.prepare_cached(
                    "SELECT m.member_id FROM members m JOIN resources r ON r.id = m.member_id \
                     WHERE m.group_id = ?1 AND json_extract(r.doc, '$.active') IS NOT 0 LIMIT ?2",
                )?
            } else {
                conn.prepare_cached("SELECT member_id FROM members WHERE group_id = ?1 LIMIT ?2")?
            };
            let rows = stmt.query_map(params![group_id, excluded.len() as i64 + 1], |row| {
                row.get::<_, String>(0)
            })?;
            for row in rows {
                if !excluded.contains(&row?) {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }

    /// How many members group `group_id` has.
    pub async fn member_count(&self, group_id: &str) -> Result<usize, StoreError> {
        let group_id = group_id.to_string();
        self.read_blocking(move |conn| {
            let n: i64 = conn
                .prepare_cached("SELECT count(*) FROM members WHERE group_id = ?1")?
                .query_row(params![group_id], |row| row.get(0))?;
            Ok(n as usize)
        })
        .await
    }

    /// The groups `member_id` belongs to, as (group id, displayName).
    pub async fn groups_of(&self, member_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let member_id = member_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT r.id, r.name FROM members m JOIN resources r ON r.id = m.group_id \
                 WHERE m.member_id = ?1 ORDER BY r.name",
            )?;
            let rows = stmt.query_map(params![member_id], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The first POSIX number of `kind` in `min..=max` above every one handed out, in use or
    /// retired with a deleted resource (a number is never reused: files on disk still carry
    /// it); `None` when the range is used up. The caller serializes allocations of a kind.
    pub async fn next_posix_id(
        &self,
        kind: Kind,
        min: i64,
        max: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.read(move |conn| {
            let highest: Option<i64> = conn
                .prepare_cached(
                    "SELECT max(n) FROM ( \
                     SELECT max(posix_id) AS n FROM resources WHERE kind = ?1 AND posix_id BETWEEN ?2 AND ?3 \
                     UNION ALL \
                     SELECT max(posix_id) FROM posix_retired WHERE kind = ?1 AND posix_id BETWEEN ?2 AND ?3)",
                )?
                .query_row(params![kind.as_str(), min, max], |row| row.get(0))?;
            let next = highest.map_or(min, |n| n + 1);
            Ok((next <= max).then_some(next))
        })
        .await
    }

    /// Rows in the cache, for the metrics: users, groups, memberships and pending intents.
    pub async fn sizes(&self) -> Result<Sizes, StoreError> {
        self.read_blocking(|conn| {
            let count = |sql: &str| -> Result<usize, StoreError> {
                let n: i64 = conn.prepare_cached(sql)?.query_row([], |row| row.get(0))?;
                Ok(usize::try_from(n).unwrap_or(0))
            };
            Ok(Sizes {
                users: count("SELECT count(*) FROM resources WHERE kind = 'User'")?,
                groups: count("SELECT count(*) FROM resources WHERE kind = 'Group'")?,
                memberships: count("SELECT count(*) FROM members")?,
                intents: count("SELECT count(*) FROM intents")?,
            })
        })
        .await
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        if let Some(reason) = self.write_failure() {
            return Err(StoreError::WriteFailed(reason));
        }
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }
}

/// Row counts of the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Cached users.
    pub users: usize,
    /// Cached groups.
    pub groups: usize,
    /// Membership rows.
    pub memberships: usize,
    /// Intents not yet committed.
    pub intents: usize,
}

/// The case-folded form of a name, for the unique name index.
pub fn name_key(name: &str) -> String {
    name.to_lowercase()
}

struct RawRow {
    id: String,
    kind: String,
    name: String,
    external_id: Option<String>,
    dn: String,
    entry_uuid: Option<String>,
    posix_id: Option<i64>,
    version: i64,
    created: String,
    last_modified: String,
    doc: String,
    member_gen: i64,
}

/// A row of `select_resources!`, read by position (a name lookup per column cost more than the
/// rest of a point read).
fn row_to_raw(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: row.get(0)?,
        kind: row.get(1)?,
        name: row.get(2)?,
        external_id: row.get(3)?,
        dn: row.get(4)?,
        entry_uuid: row.get(5)?,
        posix_id: row.get(6)?,
        version: row.get(7)?,
        created: row.get(8)?,
        last_modified: row.get(9)?,
        doc: row.get(10)?,
        member_gen: row.get(12)?,
    })
}

impl RawRow {
    fn decode(self) -> Result<StoredResource, StoreError> {
        let doc = serde_json::from_str(&self.doc).map_err(|source| StoreError::Corrupt {
            id: self.id.clone(),
            source,
        })?;
        Ok(StoredResource {
            kind: if self.kind == "Group" {
                Kind::Group
            } else {
                Kind::User
            },
            id: self.id,
            name: self.name,
            external_id: self.external_id,
            dn: self.dn,
            entry_uuid: self.entry_uuid,
            posix_id: self.posix_id,
            version: self.version,
            member_gen: self.member_gen,
            created: self.created,
            last_modified: self.last_modified,
            doc,
        })
    }
}

/// Fsyncs the WAL for every batch of waiting callers, and checkpoints when the writer asks.
/// fsync flushes the file's data whichever descriptor asks, so this thread's own handle covers
/// what the writer appended; pages already checkpointed into the database file were synced by
/// SQLite itself. A checkpoint runs after the waiting callers are answered; when one fails
/// (never expected), the next one or the writer's own backstop copies the pages.
fn sync_loop(wal_path: &Path, writer: &std::sync::Weak<Writer>, queue: &SyncQueue) {
    let _closing = CloseOnExit(queue);
    let mut wal: Option<std::fs::File> = None;
    // After a failed fsync the kernel may have dropped the pages it could not write and marked
    // them clean, so a later fsync would succeed without them: every later caller fails too,
    // until a restart replays what the cache file really holds. So after a failed commit.
    while let Some(Gathered {
        waiting,
        checkpoint,
    }) = queue.next()
    {
        if !waiting.is_empty() {
            let started = std::time::Instant::now();
            let failure = match queue.failure.get() {
                Some(reason) => Some(reason.clone()),
                None => fsync(&mut wal, wal_path).err(),
            };
            if let Some(reason) = &failure {
                if queue.failure.set(reason.clone()).is_ok() {
                    tracing::error!(reason = %reason, "cache fsync failed: every write fails from now on; restart the service (it replays what the cache holds)");
                }
            }
            queue.fsync_time.note(started.elapsed());
            crate::metrics::record_cache_fsync(waiting.len());
            for reply in waiting {
                let _ = reply.send(match &failure {
                    None => Ok(()),
                    Some(reason) => Err(StoreError::Open {
                        path: wal_path.to_path_buf(),
                        reason: reason.clone(),
                    }),
                });
            }
        }
        // Nor is the WAL copied into the database file on the word of a failed disk.
        if let Some(writer) = writer
            .upgrade()
            .filter(|_| checkpoint && queue.failure.get().is_none())
        {
            writer.exclusive(|conn| {
                if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %err, "cache checkpoint failed");
                }
            });
        }
    }
}

/// Plans a statement once, whatever values are bound to it. Without this, SQLite (built with
/// STAT4, as rusqlite bundles it) marks a cached statement whose plan could depend on a bound
/// value (a `LIMIT ?`, a column a partial index tests) and prepares it again after every new
/// binding: a parse and a plan on each call.
fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(|_| ())
}

/// Creates file `path` readable by its owner alone (0600), and the folders above it that are
/// missing (0700), whatever the umask: the cache holds every user's data. SQLite gives its
/// `-wal` and `-shm` files the database file's mode. An existing file is left as it is.
pub fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

// The test hooks below read the environment in debug builds only, which is what the
// integration tests run (`cargo test`). A release build has constant "no fault" variants, so
// nothing in a deployed daemon's environment can make its cache fail.

/// Test hook: with `SCIM2LDAP_TEST_FSYNC_FAILS_ONCE=1` in the environment the first fsync of the
/// cache fails and later ones succeed, as on a disk that returned EIO once.
#[cfg(debug_assertions)]
fn fsync_fails() -> bool {
    static ONCE: std::sync::OnceLock<std::sync::atomic::AtomicBool> = std::sync::OnceLock::new();
    fails_once(&ONCE, "SCIM2LDAP_TEST_FSYNC_FAILS_ONCE")
}

/// Release builds fail an fsync only when the disk does.
#[cfg(not(debug_assertions))]
fn fsync_fails() -> bool {
    false
}

/// Test hook: with `SCIM2LDAP_TEST_COMMIT_FAILS_ONCE=1` the process's first commit fails, as
/// on a full disk.
#[cfg(debug_assertions)]
fn commit_fails() -> bool {
    static ONCE: std::sync::OnceLock<std::sync::atomic::AtomicBool> = std::sync::OnceLock::new();
    fails_once(&ONCE, "SCIM2LDAP_TEST_COMMIT_FAILS_ONCE")
}

/// Release builds fail a commit only when SQLite does.
#[cfg(not(debug_assertions))]
fn commit_fails() -> bool {
    false
}

/// True the first time a test hook whose variable `var` is `1` is asked; read once per process.
#[cfg(debug_assertions)]
fn fails_once(flag: &std::sync::OnceLock<std::sync::atomic::AtomicBool>, var: &str) -> bool {
    flag.get_or_init(|| {
        std::sync::atomic::AtomicBool::new(std::env::var_os(var).is_some_and(|v| v == "1"))
    })
    .swap(false, std::sync::atomic::Ordering::Relaxed)
}

/// Fsyncs the WAL through `wal`, opening it first when needed.
fn fsync(wal: &mut Option<std::fs::File>, wal_path: &Path) -> Result<(), String> {
    let result = (|| -> std::io::Result<()> {
        if fsync_fails() {
            return Err(std::io::Error::other("test hook: fsync fails"));
        }
        if wal.is_none() {
            *wal = Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(wal_path)?,
            );
        }
        match wal {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    })();
    result.map_err(|err| {
        // A WAL replaced behind our back (never expected) is reopened on the next sync.
        *wal = None;
        format!("fsync {}: {err}", wal_path.display())
    })
}

/// Runs a batch in one transaction. When a job fails (a name taken, say), the transaction is
/// rolled back and each job runs alone, so that one failure fails only its own job; the common
/// case pays for no savepoints.
fn run_batch(conn: &mut Connection, batch: Vec<Job>) {
    let outcome = in_transaction(conn, |conn| {
        let mut done = Vec::with_capacity(batch.len());
        for job in &batch {
            done.push(apply_job(conn, job)?);
        }
        Ok(done)
    });
    match outcome {
        Ok(done) => {
            for (job, seq) in batch.into_iter().zip(done) {
                job.reply(Ok(seq));
            }
        }
        Err(_) if batch.len() > 1 => {
            for job in batch {
                run_batch(conn, vec![job]);
            }
        }
        Err(err) => {
            // A batch of one job: that job gets the error.
            if let Some(job) = batch.into_iter().next() {
                job.reply(Err(err));
            }
        }
    }
}

/// Runs `work` in a transaction, committed when it succeeds and rolled back when it fails.
/// `BEGIN` and `COMMIT` are cached statements: rusqlite's `Transaction` parses both anew each
/// time, and the writer runs two transactions per write.
fn in_transaction<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let run = |sql: &str| conn.prepare_cached(sql)?.execute([]).map(|_| ());
    if !conn.is_autocommit() {
        // Left open by a round that panicked (never expected).
        run("ROLLBACK")?;
    }
    run("BEGIN")?;
    let result = work(conn).and_then(|done| {
        run("COMMIT")?;
        Ok(done)
    });
    if result.is_err() && !conn.is_autocommit() {
        if let Err(err) = run("ROLLBACK") {
            tracing::warn!(error = %err, "cache rollback failed");
        }
    }
    result
}

impl Job {
    fn reply(self, result: Result<Option<i64>, StoreError>) {
        match self {
            Job::Intent { reply, .. } => {
                let _ = reply.send(result.map(|seq| seq.unwrap_or_default()));
            }
            Job::Commit { reply, .. } | Job::Cookie { reply, .. } => {
                let _ = reply.send(result.map(|_| ()));
            }
        }
    }
}

/// Runs one job's statements; an intent yields its sequence number.
fn apply_job(conn: &Connection, job: &Job) -> Result<Option<i64>, StoreError> {
    match job {
        Job::Intent {
            resource_id, plan, ..
        } => {
            conn.prepare_cached("INSERT INTO intents (resource_id, plan) VALUES (?1, ?2)")?
                .execute(params![resource_id, plan])?;
            Ok(Some(conn.last_insert_rowid()))
        }
        Job::Commit { commit, .. } => apply_commit(conn, commit).map(|()| None),
        Job::Cookie {
            base_key, cookie, ..
        } => {
            match cookie {
                Some(cookie) => conn
                    .prepare_cached(
                        "INSERT INTO sync_cookies (base_key, cookie) VALUES (?1, ?2) \
                         ON CONFLICT(base_key) DO UPDATE SET cookie = excluded.cookie",
                    )?
                    .execute(params![base_key, cookie])?,
                None => conn
                    .prepare_cached("DELETE FROM sync_cookies WHERE base_key = ?1")?
                    .execute(params![base_key])?,
            };
            Ok(None)
        }
    }
}

fn apply_commit(conn: &Connection, commit: &Commit) -> Result<(), StoreError> {
    if commit_fails() {
        return Err(StoreError::WriteFailed(
            "test hook: commit fails".to_string(),
        ));
    }
    if let Some(id) = &commit.delete {
        // Its groups lose a member (or its members a group).
        conn.prepare_cached(bump_member_gen!(
            "WHERE id IN (SELECT group_id FROM members WHERE member_id = ?1 \
             UNION SELECT member_id FROM members WHERE group_id = ?1)"
        ))?
        .execute(params![id])?;
        conn.prepare_cached("DELETE FROM members WHERE group_id = ?1 OR member_id = ?1")?
            .execute(params![id])?;
        // Its POSIX number is never handed out again: files on disk still carry it.
        conn.prepare_cached(
            "INSERT OR IGNORE INTO posix_retired (kind, posix_id) \
             SELECT kind, posix_id FROM resources WHERE id = ?1 AND posix_id IS NOT NULL",
        )?
        .execute(params![id])?;
        conn.prepare_cached("DELETE FROM resources WHERE id = ?1")?
            .execute(params![id])?;
    }
    if let Some(resource) = &commit.upsert {
        let doc = crate::scim::json::to_text(&resource.doc);
        // Most writes change neither the name, the DN nor the ids: updating only the document
        // leaves the five indexes' pages alone, and each page not rewritten is a WAL frame (a
        // checksum and two writes) saved. When a keyed column differs, the full upsert below
        // rewrites them.
        let unchanged_keys = conn
            .prepare_cached(
                "UPDATE resources SET version = ?2, last_modified = ?3, doc = ?4 \
                 WHERE id = ?1 AND name = ?5 AND external_id IS ?6 AND dn = ?7 \
                 AND entry_uuid IS ?8 AND posix_id IS ?9",
            )?
            .execute(params![
                resource.id,
                resource.version,
                resource.last_modified,
                doc,
                resource.name,
                resource.external_id,
                resource.dn,
                resource.entry_uuid,
                resource.posix_id
            ])?;
        if unchanged_keys == 1 {
            return finish_commit(conn, commit);
        }
        if resource.kind == Kind::Group {
            // A renamed group changes the `groups[].display` of every member.
            conn.prepare_cached(bump_member_gen!(
                "WHERE id IN (SELECT member_id FROM members WHERE group_id = ?1) \
                 AND EXISTS (SELECT 1 FROM resources WHERE id = ?1 AND name IS NOT ?2)"
            ))?
            .execute(params![resource.id, resource.name])?;
        }
        let result = conn.prepare_cached(
            "INSERT INTO resources (id, kind, name, name_key, external_id, dn, entry_uuid, version, created, last_modified, doc, dn_key, posix_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, name_key = excluded.name_key, \
             external_id = excluded.external_id, dn = excluded.dn, dn_key = excluded.dn_key, entry_uuid = excluded.entry_uuid, \
             version = excluded.version, last_modified = excluded.last_modified, doc = excluded.doc",
        )?.execute(params![
                resource.id,
                resource.kind.as_str(),
                resource.name,
                name_key(&resource.name),
                resource.external_id,
                resource.dn,
                resource.entry_uuid,
                resource.version,
                resource.created,
                resource.last_modified,
                doc,
                dn_key(&resource.dn),
                resource.posix_id
            ]);
        if let Err(rusqlite::Error::SqliteFailure(err, _)) = &result {
            if err.code == rusqlite::ErrorCode::ConstraintViolation {
                return Err(StoreError::NameTaken {
                    kind: resource.kind.as_str(),
                    name: resource.name.clone(),
                });
            }
        }
        result?;
    }
    finish_commit(conn, commit)
}

/// The membership rows and the intent of `commit`, after its resource row. Each member whose
/// membership changed gets its `member_gen` bumped: its `groups` changed.
fn finish_commit(conn: &Connection, commit: &Commit) -> Result<(), StoreError> {
    let mut changed: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut cleared: Vec<String> = Vec::new();
    if let Some(group_id) = &commit.members_clear {
        cleared = conn
            .prepare_cached("SELECT member_id FROM members WHERE group_id = ?1")?
            .query_map(params![group_id], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        conn.prepare_cached("DELETE FROM members WHERE group_id = ?1")?
            .execute(params![group_id])?;
    }
    {
        let mut remove =
            conn.prepare_cached("DELETE FROM members WHERE group_id = ?1 AND member_id = ?2")?;
        for (group_id, member_id) in &commit.members_remove {
            if remove.execute(params![group_id, member_id])? > 0 {
                changed.insert(member_id);
            }
        }
        let mut add = conn.prepare_cached(
            "INSERT OR IGNORE INTO members (group_id, member_id) VALUES (?1, ?2)",
        )?;
        for (group_id, member_id) in &commit.members_add {
            if add.execute(params![group_id, member_id])? > 0 {
                changed.insert(member_id);
            }
        }
    }
    // After a clear, a member added back is no change, and one not added back is.
    if !cleared.is_empty() {
        let kept: std::collections::HashSet<&str> = commit
            .members_add
            .iter()
            .map(|(_, member_id)| member_id.as_str())
            .collect();
        for member_id in &cleared {
            if kept.contains(member_id.as_str()) {
                changed.remove(member_id.as_str());
            } else {
                changed.insert(member_id);
            }
        }
    }
    if !changed.is_empty() {
        let mut bump = conn.prepare_cached(bump_member_gen!("WHERE id = ?1"))?;
        for member_id in changed {
            bump.execute(params![member_id])?;
        }
    }
    if let Some(seq) = commit.intent_seq {
        conn.prepare_cached("DELETE FROM intents WHERE seq = ?1")?
            .execute(params![seq])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
