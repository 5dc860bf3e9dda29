use serde_json::json;

use super::*;

/// Ends the test process when a test is still at work after far longer than it ever takes: a
/// writer stuck waiting for a wake-up blocks the runtime's threads, so neither a timeout nor a
/// panic could end the test, and it would hang instead of failing.
struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

impl Watchdog {
    fn start(what: &'static str) -> Watchdog {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            use std::io::Write;
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                wait.recv_timeout(std::time::Duration::from_secs(120))
            {
                // Straight to stderr: the test harness's capture would die with the process.
                let _ = writeln!(
                    std::io::stderr(),
                    "{what} stalled for 120 s: the store is stuck, aborting the tests"
                );
                std::process::abort();
            }
        });
        Watchdog(Some(done))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            let _ = done.send(());
        }
    }
}

/// A commit that only writes `resource`.
fn upsert(resource: StoredResource) -> Commit {
    Commit {
        upsert: Some(resource),
        ..Commit::default()
    }
}

fn user(id: &str, name: &str) -> StoredResource {
    StoredResource {
        id: id.to_string(),
        kind: Kind::User,
        name: name.to_string(),
        external_id: Some(format!("ext-{id}")),
        dn: format!("uid={name},ou=people"),
        entry_uuid: None,
        posix_id: None,
        version: 1,
        member_gen: 0,
        created: "2024-01-01T00:00:00Z".to_string(),
        last_modified: "2024-01-01T00:00:00Z".to_string(),
        doc: json!({"userName": name}),
    }
}

#[tokio::test]
async fn commits_are_durable_indexed_and_names_unique_ignoring_case() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cache.db");
    let store = Store::open(&path).expect("opens");
    let seq = store
        .record_intent("u1", "plan".to_string())
        .await
        .expect("intent");
    assert_eq!(store.pending_intents().await.expect("intents").len(), 1);
    store
        .commit(Commit {
            intent_seq: Some(seq),
            upsert: Some(user("u1", "Alice")),
            ..Commit::default()
        })
        .await
        .expect("commit");
    assert!(store.pending_intents().await.expect("intents").is_empty());
    assert_eq!(
        store
            .find(Kind::User, IndexedField::Name, "ALICE")
            .await
            .expect("find")[0]
            .id,
        "u1"
    );
    assert_eq!(
        store
            .find(Kind::User, IndexedField::ExternalId, "ext-u1")
            .await
            .expect("find")
            .len(),
        1
    );
    assert!(store
        .find(Kind::Group, IndexedField::Name, "alice")
        .await
        .expect("find")
        .is_empty());
    let taken = store.commit(upsert(user("u2", "alice"))).await;
    assert!(
        matches!(taken, Err(StoreError::NameTaken { .. })),
        "{taken:?}"
    );
    drop(store);
    let reopened = Store::open(&path).expect("reopens");
    assert_eq!(
        reopened
            .get(Kind::User, "u1")
            .await
            .expect("get")
            .expect("kept")
            .name,
        "Alice"
    );
    assert_eq!(reopened.count(Kind::User).await.expect("count"), 1);
}

#[tokio::test]
async fn memberships_are_rows_and_membership_checks_read_few_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("cache.db")).expect("opens");
    let members: Vec<(String, String)> = (0..100)
        .map(|n| ("g".to_string(), format!("m{n:03}")))
        .collect();
    store
        .commit(Commit {
            members_add: members,
            ..Commit::default()
        })
        .await
        .expect("commit");
    assert_eq!(store.member_count("g").await.expect("count"), 100);
    assert!(store
        .has_members_besides("g", vec!["m000".into()], false)
        .await
        .expect("check"));
    assert_eq!(
        store
            .members_among("g", vec!["m001".into(), "zz".into()])
            .await
            .expect("among"),
        ["m001"]
    );
    let all: Vec<String> = (0..100).map(|n| format!("m{n:03}")).collect();
    store
        .commit(Commit {
            members_remove: all[1..]
                .iter()
                .map(|m| ("g".to_string(), m.clone()))
                .collect(),
            ..Commit::default()
        })
        .await
        .expect("commit");
    assert!(!store
        .has_members_besides("g", vec!["m000".into()], false)
        .await
        .expect("check"));
    store
        .commit(Commit {
            delete: Some("m000".into()),
            ..Commit::default()
        })
        .await
        .expect("commit");
    assert!(store.members("g").await.expect("members").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_are_grouped_and_all_land() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("cache.db")).expect("opens");
    let mut tasks = Vec::new();
    for n in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .commit(upsert(user(&format!("u{n}"), &format!("user{n}"))))
                .await
        }));
    }
    let _watchdog = Watchdog::start("commits");
    for task in tasks {
        task.await.expect("task").expect("commit");
    }
    assert_eq!(store.count(Kind::User).await.expect("count"), 200);
}

#[tokio::test]
async fn a_version_1_cache_keeps_its_pending_intents_when_upgraded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cache.db");
    {
        let conn = Connection::open(&path).expect("opens");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE intents (seq INTEGER PRIMARY KEY AUTOINCREMENT, resource_id TEXT NOT NULL, plan TEXT NOT NULL);
             INSERT INTO intents (resource_id, plan) VALUES ('u1', 'first'), ('u2', 'second');
             CREATE TABLE resources (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
                 name TEXT NOT NULL, name_key TEXT NOT NULL, external_id TEXT, dn TEXT NOT NULL,
                 dn_key TEXT NOT NULL, entry_uuid TEXT, posix_id INTEGER,
                 version INTEGER NOT NULL, created TEXT NOT NULL, last_modified TEXT NOT NULL,
                 doc TEXT NOT NULL);
             CREATE UNIQUE INDEX resources_name ON resources (kind, name_key);
             CREATE UNIQUE INDEX resources_posix_id ON resources (kind, posix_id);
             INSERT INTO resources (id, kind, name, name_key, external_id, dn, dn_key, entry_uuid,
                 posix_id, version, created, last_modified, doc)
                 VALUES ('a', 'User', 'Alice', 'alice', NULL, 'uid=Alice,ou=people',
                 'uid=alice,ou=people', NULL, NULL, 3, '2024-01-01T00:00:00Z',
                 '2024-01-02T00:00:00Z', '{\"userName\":\"Alice\"}');
             INSERT INTO resources (id, kind, name, name_key, external_id, dn, dn_key, entry_uuid,
                 posix_id, version, created, last_modified, doc)
                 VALUES ('g', 'Group', 'Sales, EMEA', 'sales, emea', NULL,
                 'cn=Sales\\, EMEA,ou=groups', 'cn=sales, emea,ou=groups', NULL, NULL, 1,
                 '2024-01-01T00:00:00Z', '2024-01-01T00:00:00Z', '{\"displayName\":\"Sales, EMEA\"}');
             PRAGMA user_version = 1;",
        )
        .expect("version 1 cache");
    }
    let store = Store::open(&path).expect("upgrades");
    let pending = store.pending_intents().await.expect("intents");
    let plans: Vec<(i64, &str)> = pending.iter().map(|i| (i.seq, i.plan.as_str())).collect();
    assert_eq!(plans, vec![(1, "first"), (2, "second")]);
    let seq = store
        .record_intent("u3", "third".to_string())
        .await
        .expect("intent");
    assert_eq!(seq, 3);
    let alice = store
        .get(Kind::User, "a")
        .await
        .expect("read")
        .expect("kept");
    assert_eq!((alice.name.as_str(), alice.version), ("Alice", 3));
    assert_eq!(
        store
            .find(Kind::User, IndexedField::Name, "ALICE")
            .await
            .expect("by name")
            .len(),
        1
    );
    // Two users without a POSIX id no longer share an index slot, and a new one sorts last.
    store
        .commit(upsert(user("b", "bob")))
        .await
        .expect("second user");
    let ids: Vec<String> = store
        .chunk(Kind::User, 0, i64::MAX, 10)
        .await
        .expect("list")
        .0
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["a", "b"]);
    drop(store);
    let conn = Connection::open(&path).expect("opens");
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'intents'",
            [],
            |row| row.get(0),
        )
        .expect("intents table");
    assert!(!sql.contains("AUTOINCREMENT"), "{sql}");
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'resources'",
            [],
            |row| row.get(0),
        )
        .expect("resources table");
    assert!(!sql.contains("AUTOINCREMENT"), "{sql}");
    let index: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'resources_posix_id'",
            [],
            |row| row.get(0),
        )
        .expect("posix index");
    assert!(index.contains("WHERE posix_id IS NOT NULL"), "{index}");
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .expect("version");
    assert_eq!(version, 4);
    // The escaped comma's key is computed again: found by its DN in either spelling.
    let key: String = conn
        .query_row("SELECT dn_key FROM resources WHERE id = 'g'", [], |row| {
            row.get(0)
        })
        .expect("group key");
    assert_eq!(key, "cn=sales\\, emea,ou=groups");
    let member_gen: i64 = conn
        .query_row(
            "SELECT member_gen FROM resources WHERE id = 'a'",
            [],
            |row| row.get(0),
        )
        .expect("member_gen column");
    assert_eq!(member_gen, 0);
}

#[tokio::test]
async fn an_update_keeps_every_index_right_whether_or_not_a_key_changed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("cache.db")).expect("opens");
    let commit = |resource: StoredResource| Commit {
        upsert: Some(resource),
        ..Commit::default()
    };
    store
        .commit(commit(user("u1", "alice")))
        .await
        .expect("create");
    // Only the document changes: the indexed columns stay as they were.
    let mut doc_only = user("u1", "alice");
    doc_only.version = 2;
    doc_only.doc = json!({"userName": "alice", "title": "Engineer"});
    store.commit(commit(doc_only)).await.expect("doc update");
    let found = store
        .find(Kind::User, IndexedField::Name, "ALICE")
        .await
        .expect("by name");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].version, 2);
    assert_eq!(found[0].doc["title"], "Engineer");
    // A rename, a new DN, external id and entryUUID: every index follows.
    let mut renamed = user("u1", "alicia");
    renamed.version = 3;
    renamed.external_id = Some("ext-new".to_string());
    renamed.entry_uuid = Some("uuid-1".to_string());
    store.commit(commit(renamed)).await.expect("rename");
    for (field, value) in [
        (IndexedField::Name, "alicia"),
        (IndexedField::Dn, "UID=alicia,ou=people"),
        (IndexedField::ExternalId, "ext-new"),
        (IndexedField::EntryUuid, "uuid-1"),
    ] {
        let found = store.find(Kind::User, field, value).await.expect("find");
        assert_eq!(found.len(), 1, "{field:?} {value}");
        assert_eq!(found[0].version, 3);
    }
    for (field, value) in [
        (IndexedField::Name, "alice"),
        (IndexedField::Dn, "uid=alice,ou=people"),
        (IndexedField::ExternalId, "ext-u1"),
    ] {
        let found = store.find(Kind::User, field, value).await.expect("find");
        assert!(found.is_empty(), "{field:?} {value} still indexed");
    }
    // A second user may now take the old name.
    store
        .commit(commit(user("u2", "alice")))
        .await
        .expect("old name is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkpoints_keep_the_wal_short_under_continuous_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cache.db");
    let store = Store::open(&path).expect("opens");
    let empty = std::fs::metadata(&path).expect("db file").len();
    // Four writers without a pause, far past CHECKPOINT_EVERY jobs: a checkpoint that writers
    // overtake never completes and the WAL would grow to the writer's backstop (40 MB).
    let jobs = 20 * CHECKPOINT_EVERY;
    let mut tasks = Vec::new();
    for task in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in (task..jobs).step_by(4) {
                let mut resource = user(&format!("u{n}"), &format!("user{n}"));
                resource.doc = json!({"userName": format!("user{n}"), "title": "x".repeat(200)});
                let upsert = Commit {
                    upsert: Some(resource),
                    ..Commit::default()
                };
                store.commit(upsert).await.expect("commit");
                store.sync().await.expect("sync");
            }
        }));
    }
    let _watchdog = Watchdog::start("writes under checkpoints");
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(store.count(Kind::User).await.expect("count"), jobs);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::fs::metadata(&wal).expect("wal file").len();
    assert!(wal < 8 << 20, "WAL grew to {wal} bytes");
    // Pages reach the database file only through a checkpoint; they run on the sync thread.
    let size = std::fs::metadata(&path).expect("db file").len();
    assert!(
        size > empty + 256 * 1024,
        "database file {empty} -> {size} bytes: nothing checkpointed"
    );
}

#[test]
fn the_sync_thread_waits_for_callers_only_as_long_as_the_earliest_can_spare() {
    let queue = Arc::new(SyncQueue::new(Duration::from_millis(400)));
    queue.fsync_time.note(Duration::ZERO);
    let join = |queue: &Arc<SyncQueue>, delay_ms: u64, by: Option<Duration>| {
        let queue = queue.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay_ms));
            match by {
                Some(by) => queue
                    .sync_by(oneshot::channel().0, std::time::Instant::now() + by)
                    .expect("open"),
                None => queue.checkpoint(),
            }
        })
    };
    // The first caller can spare ten seconds; callers and a checkpoint arriving within the
    // allowed wait share its fsync.
    let started = std::time::Instant::now();
    queue
        .sync_by(oneshot::channel().0, started + Duration::from_secs(10))
        .expect("open");
    let a = join(&queue, 50, Some(Duration::from_secs(10)));
    let b = join(&queue, 100, None);
    let gathered = queue.next().expect("work");
    assert_eq!(gathered.waiting.len(), 2);
    assert!(gathered.checkpoint);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "left before the wait was over"
    );
    a.join().expect("caller");
    b.join().expect("caller");

    // A caller that needs the answer now is not held back: one coming later waits for the next.
    queue
        .sync_by(oneshot::channel().0, std::time::Instant::now())
        .expect("open");
    let c = join(&queue, 200, Some(Duration::ZERO));
    assert_eq!(queue.next().expect("work").waiting.len(), 1);
    c.join().expect("caller");
    assert_eq!(queue.next().expect("work").waiting.len(), 1);

    // A caller in a hurry wakes a thread that sleeps for a patient one.
    let queue = Arc::new(SyncQueue::new(Duration::from_secs(60)));
    queue.fsync_time.note(Duration::ZERO);
    let started = std::time::Instant::now();
    queue
        .sync_by(oneshot::channel().0, started + Duration::from_secs(60))
        .expect("open");
    let d = join(&queue, 100, Some(Duration::ZERO));
    let gathered = queue.next().expect("work");
    assert_eq!(gathered.waiting.len(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "slept past the hurried caller's time"
    );
    d.join().expect("caller");

    // A checkpoint asked for while nobody waits runs at once; closed and empty, the thread ends.
    let e = join(&queue, 100, None);
    let gathered = queue.next().expect("work");
    assert!(gathered.checkpoint && gathered.waiting.is_empty());
    e.join().expect("caller");
    queue.close();
    assert!(queue.next().is_none());
    assert!(queue
        .sync_by(oneshot::channel().0, std::time::Instant::now())
        .is_err());

    // A sync thread that ends for any reason, a panic included, fails the callers waiting and
    // those to come rather than leaving them to wait forever.
    let _watchdog = Watchdog::start("a caller of an abandoned sync queue");
    let queue = SyncQueue::new(Duration::from_secs(60));
    let (reply, waiting) = oneshot::channel();
    queue
        .sync_by(reply, std::time::Instant::now() + Duration::from_secs(60))
        .expect("open");
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            let _closing = CloseOnExit(&queue);
            panic!("the sync thread fails");
        });
        assert!(thread.join().is_err());
    });
    assert!(
        waiting.blocking_recv().is_err(),
        "the waiting caller is answered"
    );
    assert!(queue
        .sync_by(oneshot::channel().0, std::time::Instant::now())
        .is_err());
}

#[test]
fn a_moving_average_weighs_each_sample_an_eighth_and_never_overflows() {
    let average = MovingAverage::new(Duration::ZERO);
    average.note(Duration::from_micros(800));
    assert_eq!(average.get(), Duration::from_micros(100));
    average.note(Duration::MAX);
    assert!(average.get() > Duration::from_secs(3600));
}

// Holding connections across the lookup is the point: it must go around them.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_lookups_use_the_writers_connection_when_free_and_never_its_open_transaction() {
    let _watchdog = Watchdog::start("point lookups");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("cache.db")).expect("opens");
    store
        .commit(upsert(user("u1", "Alice")))
        .await
        .expect("commit");
    let name = |found: Option<StoredResource>| found.expect("cached").name;
    let get = || tokio::time::timeout(Duration::from_secs(10), store.get(Kind::User, "u1"));

    // Every reader held (as by long lists): the lookup is answered on the writer's connection.
    {
        let _held: Vec<_> = store.readers.iter().map(|r| lock(r)).collect();
        let found = get()
            .await
            .expect("answered without a reader")
            .expect("get");
        assert_eq!(name(found), "Alice");
    }

    // Every reader held: a few ids in one go are checked on the writer's connection, but more
    // than WRITER_LOOKUP_KEYS would hold it (and every write) too long: they wait for a reader.
    {
        let held: Vec<_> = store.readers.iter().map(|r| lock(r)).collect();
        let few = store.missing(Kind::User, vec!["u1".to_string(), "nope".to_string()]);
        let few = tokio::time::timeout(Duration::from_secs(10), few)
            .await
            .expect("answered without a reader")
            .expect("missing");
        assert_eq!(few, vec!["nope".to_string()]);
        let ids: Vec<String> = (0..=WRITER_LOOKUP_KEYS).map(|i| format!("x{i}")).collect();
        let mut many = Box::pin(store.missing(Kind::User, ids));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut many)
                .await
                .is_err(),
            "a batch of {} ids was answered on the writer's connection",
            WRITER_LOOKUP_KEYS + 1
        );
        drop(held);
        let many = tokio::time::timeout(Duration::from_secs(10), many)
            .await
            .expect("answered by a reader once free")
            .expect("missing");
        assert_eq!(many.len(), WRITER_LOOKUP_KEYS + 1);
    }

    // The writer's connection held: the lookup goes to a reader.
    {
        let _held = lock(&store.writer.conn);
        let found = get().await.expect("answered by a reader").expect("get");
        assert_eq!(name(found), "Alice");
    }

    // A transaction left open on the writer's connection is never read from.
    lock(&store.writer.conn)
        .execute_batch("BEGIN; UPDATE resources SET name = 'Mallory' WHERE id = 'u1';")
        .expect("open a transaction");
    let found = get().await.expect("answered").expect("get");
    assert_eq!(name(found), "Alice", "read an uncommitted change");
    lock(&store.writer.conn)
        .execute_batch("ROLLBACK")
        .expect("rollback");

    // A later commit is seen on whichever connection answers.
    store
        .commit(upsert(user("u1", "Alicia")))
        .await
        .expect("commit");
    assert_eq!(name(get().await.expect("answered").expect("get")), "Alicia");
}

#[tokio::test]
async fn a_scan_reads_one_kind_in_creation_order_chunk_by_chunk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("cache.db")).expect("open");
    for (id, name) in [
        ("u1", "ann"),
        ("u2", "bob"),
        ("u3", "cy"),
        ("u4", "di"),
        ("u5", "ed"),
    ] {
        store.commit(upsert(user(id, name))).await.expect("user");
        if id == "u2" {
            // A group between the users: not part of a scan of users.
            let mut group = user("g1", "staff");
            group.kind = Kind::Group;
            store.commit(upsert(group)).await.expect("group");
        }
    }
    let mut seen = Vec::new();
    let mut after = 0;
    let mut chunks = 0;
    loop {
        let (chunk, last) = store
            .chunk(Kind::User, after, i64::MAX, 2)
            .await
            .expect("chunk");
        if chunk.is_empty() {
            assert_eq!(last, None);
            break;
        }
        assert!(chunk.len() <= 2);
        chunks += 1;
        seen.extend(chunk.into_iter().map(|r| r.id));
        after = last.expect("a position after a non-empty chunk");
    }
    assert_eq!(seen, ["u1", "u2", "u3", "u4", "u5"]);
    assert_eq!(chunks, 3);
    let (groups, _) = store
        .chunk(Kind::Group, 0, i64::MAX, 10)
        .await
        .expect("groups");
    assert_eq!(groups.len(), 1);
    // Bounded by a position, as reconciliation bounds its look for missing entries by the
    // newest position when it began.
    let newest = store.newest_position().await.expect("newest");
    store
        .commit(upsert(user("u6", "late")))
        .await
        .expect("late");
    let (bounded, _) = store
        .chunk(Kind::User, 0, newest, 10)
        .await
        .expect("bounded");
    let ids: Vec<String> = bounded.into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["u1", "u2", "u3", "u4", "u5"]);
}

#[tokio::test]
async fn membership_changes_count_on_the_other_side() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("cache.db")).expect("opens");
    for id in ["u1", "u2", "u3"] {
        store.commit(upsert(user(id, id))).await.expect("user");
    }
    let group = StoredResource {
        kind: Kind::Group,
        dn: "cn=g,ou=groups".to_string(),
        ..user("g", "g")
    };
    let pair = |member: &str| ("g".to_string(), member.to_string());
    store
        .commit(Commit {
            upsert: Some(group.clone()),
            members_add: vec![pair("u1"), pair("u2")],
            ..Commit::default()
        })
        .await
        .expect("group");
    let gens = || async {
        let mut out = Vec::new();
        for id in ["u1", "u2", "u3"] {
            let user = store.get(Kind::User, id).await.unwrap();
            out.push(user.map_or(-1, |user| user.member_gen));
        }
        out.push(
            store
                .get(Kind::Group, "g")
                .await
                .unwrap()
                .unwrap()
                .member_gen,
        );
        out
    };
    assert_eq!(
        gens().await,
        [1, 1, 0, 0],
        "added members; the group's own write"
    );
    // A full replace: u2 stays (no change), u1 goes, u3 comes; removing one never there and
    // adding one there already change nothing.
    store
        .commit(Commit {
            upsert: Some(StoredResource {
                version: 2,
                ..group.clone()
            }),
            members_clear: Some("g".to_string()),
            members_add: vec![pair("u2"), pair("u3")],
            ..Commit::default()
        })
        .await
        .expect("replace");
    assert_eq!(gens().await, [2, 1, 1, 0]);
    store
        .commit(Commit {
            members_remove: vec![pair("u1")],
            members_add: vec![pair("u3")],
            ..Commit::default()
        })
        .await
        .expect("no-op");
    assert_eq!(gens().await, [2, 1, 1, 0]);
    let group_before = store.get(Kind::Group, "g").await.unwrap().unwrap();
    // Deleting a member changes its group; the group's own version stays.
    store
        .commit(Commit {
            delete: Some("u2".to_string()),
            ..Commit::default()
        })
        .await
        .expect("delete");
    let group_after = store.get(Kind::Group, "g").await.unwrap().unwrap();
    assert_eq!(
        (group_after.version, group_after.member_gen),
        (group_before.version, 1)
    );
    assert_ne!(group_after.last_modified, group_before.last_modified);
    // A group write keeps the count (an upsert does not write it).
    store
        .commit(upsert(StoredResource {
            version: 3,
            ..group
        }))
        .await
        .expect("group update");
    let group = store.get(Kind::Group, "g").await.unwrap().unwrap();
    assert_eq!((group.version, group.member_gen), (3, 1));
    // A rename changes every member's `groups[].display`; other key changes do not.
    store
        .commit(upsert(StoredResource {
            version: 4,
            dn: "cn=g,ou=elsewhere".to_string(),
            ..group.clone()
        }))
        .await
        .expect("move");
    assert_eq!(gens().await, [2, -1, 1, 1]);
    store
        .commit(upsert(StoredResource {
            version: 5,
            name: "G2".to_string(),
            ..group
        }))
        .await
        .expect("rename");
    assert_eq!(gens().await, [2, -1, 2, 1]);
}

/// The cache holds every user's data: its folder and files are its owner's alone, whatever
/// the umask (the unit sets 0077; a hand-started daemon often runs with 022).
#[tokio::test]
async fn the_cache_folder_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state").join("cache.db");
    let store = Store::open(&path).expect("opens");
    store
        .commit(upsert(user("a", "alice")))
        .await
        .expect("write");
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&path), 0o600);
    let wal = path.with_extension("db-wal");
    assert_eq!(mode(&wal), 0o600);
}
