//! The cache's SQL schema and its version; opening prepares or checks it.

use rusqlite::Connection;

/// Bumped on every incompatible change of the tables below or of what their columns hold. A new
/// table that older builds can ignore (`posix_retired`, `sync_cookies`) is not one: they still open the file.
const SCHEMA_VERSION: i64 = 4;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS resources (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    external_id TEXT,
    dn TEXT NOT NULL,
    dn_key TEXT NOT NULL,
    entry_uuid TEXT,
    posix_id INTEGER,
    version INTEGER NOT NULL,
    created TEXT NOT NULL,
    last_modified TEXT NOT NULL,
    doc TEXT NOT NULL,
    member_gen INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS resources_name ON resources (kind, name_key);
CREATE INDEX IF NOT EXISTS resources_external_id ON resources (kind, external_id);
CREATE INDEX IF NOT EXISTS resources_dn ON resources (dn_key);
CREATE INDEX IF NOT EXISTS resources_entry_uuid ON resources (entry_uuid);
CREATE UNIQUE INDEX IF NOT EXISTS resources_posix_id ON resources (kind, posix_id)
    WHERE posix_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    PRIMARY KEY (group_id, member_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_member ON members (member_id, group_id);
CREATE TABLE IF NOT EXISTS posix_retired (
    kind TEXT NOT NULL,
    posix_id INTEGER NOT NULL,
    PRIMARY KEY (kind, posix_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sync_cookies (
    base_key TEXT PRIMARY KEY,
    cookie BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS intents (
    seq INTEGER PRIMARY KEY,
    resource_id TEXT NOT NULL,
    plan TEXT NOT NULL
);
";

/// Checks, changing nothing, that an existing cache has this build's schema version.
pub(super) fn check(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version != SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "cache schema version {version}, this scim2ldap's is {SCHEMA_VERSION}: a dry run does not change it (the daemon or a repairing run upgrades an older cache)"
        )));
    }
    Ok(())
}

/// Sets WAL mode and creates the tables, or checks that an existing file has our version.
pub(super) fn prepare(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Durable against a process crash; power-loss durability is `Store::sync` (see store/mod.rs).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "cache schema version {version} is newer than this scim2ldap ({SCHEMA_VERSION})"
        )));
    }
    let tx = conn.transaction()?;
    if version == 1 {
        // Version 2 writes fewer pages per write. AUTOINCREMENT goes: a new row's `seq` is
        // still above every existing one (creation order for paging), intents only need it
        // unique among pending ones, and it cost a sqlite_sequence page in every create and
        // intent. The POSIX id index leaves out rows without one (an index entry per create
        // when POSIX attributes are off). The tables are copied; TABLES recreates the indexes.
        tx.execute_batch(
            "CREATE TABLE intents_v2 (seq INTEGER PRIMARY KEY, resource_id TEXT NOT NULL, plan TEXT NOT NULL);
             INSERT INTO intents_v2 (seq, resource_id, plan) SELECT seq, resource_id, plan FROM intents;
             DROP TABLE intents;
             ALTER TABLE intents_v2 RENAME TO intents;
             CREATE TABLE resources_v2 (
                 seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
                 name TEXT NOT NULL, name_key TEXT NOT NULL, external_id TEXT, dn TEXT NOT NULL,
                 dn_key TEXT NOT NULL, entry_uuid TEXT, posix_id INTEGER,
                 version INTEGER NOT NULL, created TEXT NOT NULL, last_modified TEXT NOT NULL,
                 doc TEXT NOT NULL);
             INSERT INTO resources_v2 SELECT seq, id, kind, name, name_key, external_id, dn,
                 dn_key, entry_uuid, posix_id, version, created, last_modified, doc FROM resources;
             DROP TABLE resources;
             ALTER TABLE resources_v2 RENAME TO resources;",
        )?;
    }
    if version == 1 || version == 2 {
        // Version 3 counts membership changes made from the other side (`member_gen`).
        tx.execute_batch(
            "ALTER TABLE resources ADD COLUMN member_gen INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    tx.execute_batch(TABLES)?;
    if (1..=3).contains(&version) {
        // Version 4 keeps structural characters escaped in `dn_key` (`cn=Sales\, EMEA`):
        // the keys of DNs with escapes are computed again.
        let rows: Vec<(i64, String)> = tx
            .prepare("SELECT seq, dn FROM resources WHERE instr(dn, '\\') > 0")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut update = tx.prepare("UPDATE resources SET dn_key = ?2 WHERE seq = ?1")?;
        for (seq, dn) in rows {
            update.execute(rusqlite::params![seq, crate::mapping::dn_key(&dn)])?;
        }
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}
