use serde_json::json;

use super::*;

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
    let taken = store
        .commit(Commit {
            upsert: Some(user("u2", "alice")),
            ..Commit::default()
        })
        .await;
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
        .has_members_besides("g", vec!["m000".into()])
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
        .has_members_besides("g", vec!["m000".into()])
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

#[tokio::test]
async fn concurrent_commits_are_grouped_and_all_land() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("cache.db")).expect("opens");
    let mut tasks = Vec::new();
    for n in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .commit(Commit {
                    upsert: Some(user(&format!("u{n}"), &format!("user{n}"))),
                    ..Commit::default()
                })
                .await
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("commit");
    }
    assert_eq!(store.count(Kind::User).await.expect("count"), 200);
}
