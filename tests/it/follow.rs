//! `reconcile.follow`: with the directory's `syncprov` overlay, changes made in the directory
//! are repaired within seconds, with no reconciliation run (none is scheduled here), and the
//! changes made while the daemon was stopped are checked when it starts again.

use std::time::{Duration, Instant};

use scim2ldap::demo::slapd::{Slapd, SlapdOptions};
use serde_json::json;

use crate::daemon::Daemon;
use crate::support::{sample, until, user_body, values, TestServer};

/// No run at start-up, none periodically: only following can repair.
const FOLLOW_ONLY: &str =
    "\n[reconcile]\nat_startup = false\ninterval = \"0s\"\norphans = \"disable\"\nfollow = true\n";

/// Changes the directory by hand, as the operator's own identity (LDAPI), not the daemon's
/// bind DN.
fn hand(server: &TestServer, ldif: String) {
    server.slapd.ldapmodify_as_operator(&ldif).unwrap();
}

/// Moves the server's daemon to a process of its own: metrics are per process, and other
/// tests' daemons run in this one. The returned process serves the server's requests.
async fn own_process(server: &mut TestServer) -> Daemon {
    server.stop_daemon().await;
    start_process(server).await
}

/// Starts the server's daemon as a process of its own, which then serves its requests.
async fn start_process(server: &mut TestServer) -> Daemon {
    let daemon = Daemon::ready(&server.config_path).await;
    server.root = format!("http://{}", daemon.listen);
    server.base.clone_from(&daemon.base);
    daemon
}

async fn drifted(server: &TestServer) -> f64 {
    sample(
        &server.metrics().await,
        "scim2ldap_reconcile_entries_drifted_total",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_made_in_the_directory_are_repaired_as_they_happen() {
    let (mut server, daemon) = following(|_| {}).await;
    let config = scim2ldap::config::load(&server.config_path, Some(Default::default())).unwrap();
    assert_eq!(
        scim2ldap::check::check_directory(&config).await,
        Vec::<String>::new()
    );
    let mut alice = user_body("alice", "Alice", "A");
    alice["password"] = json!("Alice-Pass-1");
    let alice_id = server.create("/Users", alice).await;
    let carol_id = server
        .create("/Users", user_body("carol", "Carol", "C"))
        .await;
    let group_id = server
        .create(
            "/Groups",
            json!({"displayName": "staff", "members": [{"value": alice_id}]}),
        )
        .await;
    let alice_dn = server.user_dn("alice");
    let carol_dn = server.user_dn("carol");
    let group_dn = server.group_dn("staff");

    // The daemon's own writes, a rename and a delete included, are no drift.
    server
        .patch(
            &format!("/Users/{carol_id}"),
            json!({"Operations": [{"op": "replace", "path": "userName", "value": "caroline"}]}),
        )
        .await
        .expect(200);
    let dave_id = server
        .create("/Users", user_body("dave", "Dave", "D"))
        .await;
    server
        .delete(&format!("/Users/{dave_id}"))
        .await
        .expect(204);
    let carol_dn_before = carol_dn;
    let carol_dn = server.user_dn("caroline");
    assert!(server.entry(&carol_dn).is_some() && server.entry(&carol_dn_before).is_none());

    // The messages of the daemon's own writes are passed over without reading the entry:
    // 20 updates, then a change by hand whose repair shows that every earlier message was
    // handled, cost only that repair's searches.
    let searches = r#"scim2ldap_directory_operations_total{operation="search",result="ok"}"#;
    let before = sample(&server.metrics().await, searches);
    for i in 0..20 {
        server
            .patch(
                &format!("/Users/{alice_id}"),
                json!({"Operations": [{"op": "replace", "path": "title", "value": format!("t{i}")}]}),
            )
            .await
            .expect(200);
    }
    hand(
        &server,
        format!("dn: {alice_dn}\nchangetype: modify\nreplace: title\ntitle: by hand\n"),
    );
    until("alice's title put back", || {
        server
            .entry(&alice_dn)
            .is_some_and(|e| values(&e, "title") == ["t19"])
    })
    .await;
    let spent = sample(&server.metrics().await, searches) - before;
    assert!(
        spent < 5.0,
        "{spent} searches for 20 own writes and one repair"
    );

    // With the daemon's own bind DN, as an administrator sharing it would.
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {alice_dn}\nchangetype: modify\nreplace: mail\nmail: evil@example.com\n"
        ))
        .unwrap();
    until("alice's mail put back", || {
        server
            .entry(&alice_dn)
            .is_some_and(|e| values(&e, "mail") == ["alice@example.com"])
    })
    .await;
    hand(
        &server,
        format!("dn: {group_dn}\nchangetype: modify\nadd: member\nmember: {carol_dn}\n"),
    );
    until("the member added by hand taken out", || {
        server
            .entry(&group_dn)
            .is_some_and(|e| values(&e, "member") == [alice_dn.as_str()])
    })
    .await;
    hand(&server, format!("dn: {carol_dn}\nchangetype: delete\n"));
    until("caroline's entry put back", || {
        server
            .entry(&carol_dn)
            .is_some_and(|e| values(&e, "uid") == ["caroline"])
    })
    .await;
    let stray_dn = server.user_dn("mallory");
    hand(&server, format!(
        "dn: {stray_dn}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: mallory\ncn: M\nsn: M\nuserPassword: Stray-Pass-1\n"
    ));
    until("the stray account disabled", || {
        !server.can_bind(&stray_dn, "Stray-Pass-1")
    })
    .await;
    assert!(server.can_bind(&alice_dn, "Alice-Pass-1"));
    // Four drifted resources (the orphan is logged, not counted as drift), none of them the
    // daemon's writes.
    assert_eq!(drifted(&server).await, 4.0);
    server.get(&format!("/Groups/{group_id}")).await.expect(200);

    daemon.kill();
    // Stopped: a change and a delete made meanwhile are checked from the kept cookie on the
    // next start (the delete through the provider's session log), still with no run.
    hand(
        &server,
        format!("dn: {alice_dn}\nchangetype: modify\nreplace: sn\nsn: Changed\n"),
    );
    hand(&server, format!("dn: {carol_dn}\nchangetype: delete\n"));
    server.launch().await;
    until("caroline's entry put back after the restart", || {
        server.entry(&carol_dn).is_some()
    })
    .await;
    until("alice's sn put back after the restart", || {
        server
            .entry(&alice_dn)
            .is_some_and(|e| values(&e, "sn") == ["A"])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_without_syncprov_is_not_followed_and_check_says_so() {
    let mut server = TestServer::start_with(|text| text.push_str(FOLLOW_ONLY)).await;
    let _daemon = own_process(&mut server).await;
    // `check` says why.
    let config = scim2ldap::config::load(&server.config_path, Some(Default::default())).unwrap();
    let problems = scim2ldap::check::check_directory(&config).await;
    assert!(!problems.is_empty(), "{problems:?}");
    assert!(
        problems
            .iter()
            .all(|p| p.contains("reconcile.follow") && p.contains("syncprov")),
        "{problems:?}"
    );
    // Writes go on.
    server
        .create("/Users", user_body("erin", "Erin", "E"))
        .await;
    assert!(server.entry(&server.user_dn("erin")).is_some());
}

/// A daemon in its own process following a directory with syncprov, with no run scheduled (its
/// config text then changed by `edit`, which may add `[reconcile]` keys); once its one search
/// is open.
async fn following(edit: impl FnOnce(&mut String)) -> (TestServer, Daemon) {
    let slapd = Slapd::start(SlapdOptions {
        syncprov: true,
        ..SlapdOptions::default()
    })
    .expect("slapd starts");
    let mut server = TestServer::start_on(slapd, |text| {
        text.push_str(FOLLOW_ONLY);
        edit(text);
    })
    .await;
    let daemon = own_process(&mut server).await;
    // One search over the users and groups bases (and the disabled OU).
    server
        .wait_for_gauge("scim2ldap_reconcile_follow_searches", 1)
        .await;
    (server, daemon)
}

/// `following`, users deactivated by a move to the disabled OU, and `extra` reconcile keys.
async fn following_with_move(extra: &str) -> (TestServer, Daemon) {
    following(|text| {
        *text = text.replace("[users]\n", "[users]\ndeactivate = \"move\"\n");
        text.push_str(extra);
    })
    .await
}

/// Entries with `uid` anywhere in the directory.
fn entries_with_uid(server: &TestServer, uid: &str) -> Vec<String> {
    server
        .search(server.slapd.suffix(), &format!("(uid={uid})"))
        .into_iter()
        .map(|(dn, _)| dn)
        .collect()
}

/// Through SCIM: alice created, bob created and suspended (moved to the disabled OU), carol
/// created and deleted. Returns alice's id.
async fn alice_active_bob_suspended_carol_deleted(server: &TestServer) -> String {
    let alice_id = server
        .create("/Users", user_body("alice", "Alice", "A"))
        .await;
    let bob_id = server.create("/Users", user_body("bob", "Bob", "B")).await;
    let carol_id = server
        .create("/Users", user_body("carol", "Carol", "C"))
        .await;
    server.set_active(&bob_id, false).await;
    server
        .delete(&format!("/Users/{carol_id}"))
        .await
        .expect(204);
    alice_id
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_moved_by_hand_is_moved_back_not_created_twice() {
    let (server, _daemon) = following_with_move("").await;
    let alice_id = alice_active_bob_suspended_carol_deleted(&server).await;
    // By hand, alice into the disabled OU.
    let disabled = server.slapd.disabled_dn();
    hand(
        &server,
        format!(
            "dn: {}\nchangetype: modrdn\nnewrdn: uid=alice\ndeleteoldrdn: 1\nnewsuperior: {disabled}\n",
            server.user_dn("alice")
        ),
    );
    // And dave out of the managed bases altogether.
    let dave_id = server
        .create("/Users", user_body("dave", "Dave", "D"))
        .await;
    let elsewhere = format!("ou=elsewhere,{}", server.slapd.suffix());
    hand(
        &server,
        format!(
            "dn: {elsewhere}\nchangetype: add\nobjectClass: organizationalUnit\nou: elsewhere\n"
        ),
    );
    hand(
        &server,
        format!(
            "dn: {}\nchangetype: modrdn\nnewrdn: uid=dave\ndeleteoldrdn: 1\nnewsuperior: {elsewhere}\n",
            server.user_dn("dave")
        ),
    );
    // And eve into the groups base, where only a group would be managed.
    let eve_id = server.create("/Users", user_body("eve", "Eve", "E")).await;
    hand(
        &server,
        format!(
            "dn: {}\nchangetype: modrdn\nnewrdn: uid=eve\ndeleteoldrdn: 1\nnewsuperior: {}\n",
            server.user_dn("eve"),
            server.slapd.groups_dn()
        ),
    );
    until("alice, dave and eve moved back", || {
        ["alice", "dave", "eve"]
            .iter()
            .all(|uid| entries_with_uid(&server, uid) == [server.user_dn(uid)])
    })
    .await;
    // One entry each, where the IdP put them: bob disabled, carol gone.
    assert_eq!(
        entries_with_uid(&server, "bob"),
        [format!("uid=bob,{disabled}")]
    );
    assert!(entries_with_uid(&server, "carol").is_empty());
    assert_eq!(drifted(&server).await, 3.0);
    for id in [alice_id, dave_id, eve_id] {
        server.get(&format!("/Users/{id}")).await.expect(200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn under_report_only_changes_made_by_hand_are_reported() {
    let (server, _daemon) = following_with_move("drift = \"report\"\n").await;
    let alice_id = alice_active_bob_suspended_carol_deleted(&server).await;
    server
        .patch(
            &format!("/Users/{alice_id}"),
            json!({"Operations": [{"op": "replace", "path": "userName", "value": "alicia"}]}),
        )
        .await
        .expect(200);
    let alicia_dn = server.user_dn("alicia");
    hand(
        &server,
        format!("dn: {alicia_dn}\nchangetype: modify\nreplace: mail\nmail: evil@example.com\n"),
    );
    // Messages come in order: once the change by hand is counted, the daemon's own writes
    // before it have been handled, and were not taken for drift.
    let started = Instant::now();
    while drifted(&server).await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(30), "not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(drifted(&server).await, 1.0);
    // Reported, not repaired.
    assert_eq!(
        values(&server.entry(&alicia_dn).unwrap(), "mail"),
        ["evil@example.com"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bind_dn_with_access_to_the_bases_only_follows_each_base() {
    let slapd = Slapd::start(SlapdOptions {
        syncprov: true,
        ..SlapdOptions::default()
    })
    .expect("slapd starts");
    // A service account that may manage the users and groups bases and nothing above them.
    let service_dn = crate::support::service_account(&slapd);
    let (people, groups) = (slapd.people_dn(), slapd.groups_dn());
    slapd
        .configure(&format!(
            "dn: olcDatabase={{1}}mdb,cn=config\nchangetype: modify\n\
             add: olcAccess\n\
             olcAccess: {{0}}to dn.subtree=\"{people}\" by dn.exact=\"{service_dn}\" manage by * break\n\
             olcAccess: {{1}}to dn.subtree=\"{groups}\" by dn.exact=\"{service_dn}\" manage by * break\n-\n\
             add: olcLimits\nolcLimits: dn.exact=\"{service_dn}\" size=unlimited size.prtotal=unlimited\n"
        ))
        .unwrap();
    let mut server = TestServer::start_as(slapd, &service_dn, |text| {
        text.push_str(FOLLOW_ONLY);
    })
    .await;
    let _daemon = own_process(&mut server).await;
    // The suffix is out of its reach: one search per base.
    server
        .wait_for_gauge("scim2ldap_reconcile_follow_searches", 2)
        .await;
    let config = scim2ldap::config::load(&server.config_path, Some(Default::default())).unwrap();
    assert_eq!(
        scim2ldap::check::check_directory(&config).await,
        Vec::<String>::new()
    );
    server.create("/Users", user_body("fay", "Fay", "F")).await;
    let fay_dn = server.user_dn("fay");
    // By hand, as the admin (not the daemon's bind DN).
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {fay_dn}\nchangetype: modify\nreplace: sn\nsn: Changed\n"
        ))
        .unwrap();
    until("fay's sn put back", || {
        server
            .entry(&fay_dn)
            .is_some_and(|e| values(&e, "sn") == ["F"])
    })
    .await;
    // A delete is looked for where the bind DN can search (not from the suffix, which it
    // cannot read), and following goes on after it.
    server
        .slapd
        .ldapmodify(&format!("dn: {fay_dn}\nchangetype: delete\n"))
        .unwrap();
    until("fay's entry put back", || server.entry(&fay_dn).is_some()).await;
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {fay_dn}\nchangetype: modify\nreplace: sn\nsn: Again\n"
        ))
        .unwrap();
    until("fay's sn put back again", || {
        server
            .entry(&fay_dn)
            .is_some_and(|e| values(&e, "sn") == ["F"])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_of_an_entry_made_by_hand_is_an_orphan_and_the_original_stays() {
    let (server, _daemon) = following(|_| {}).await;
    let mut gia = user_body("gia", "Gia", "G");
    gia["password"] = json!("Gia-Pass-1");
    let id = server.create("/Users", gia).await;
    // An LDAP browser's "copy entry": every attribute, the SCIM id included, under another name.
    let copy_dn = server.user_dn("gia2");
    hand(
        &server,
        format!(
            "dn: {copy_dn}\nchangetype: add\nobjectClass: inetOrgPerson\nobjectClass: scimResource\n\
             uid: gia2\ncn: Gia\nsn: G\nmail: gia2@example.com\nscimId: {id}\nuserPassword: Copy-Pass-1\n"
        ),
    );
    until("the copy disabled", || {
        !server.can_bind(&copy_dn, "Copy-Pass-1")
    })
    .await;
    assert!(server.can_bind(&server.user_dn("gia"), "Gia-Pass-1"));
    let gia = server.get(&format!("/Users/{id}")).await.expect(200);
    assert_eq!(gia["userName"], "gia");
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_the_provider_cannot_list_after_a_restart_are_found_by_a_full_run() {
    let (mut server, daemon) = following(|_| {}).await;
    server.create("/Users", user_body("hal", "Hal", "H")).await;
    let hal_dn = server.user_dn("hal");
    daemon.kill();
    // slapd restarted: its session log, which lists deletes by id, starts empty.
    server.slapd.restart().unwrap();
    hand(&server, format!("dn: {hal_dn}\nchangetype: delete\n"));
    // Still no run scheduled: only following can tell that a full run must find the delete.
    let _daemon = start_process(&mut server).await;
    until("hal's entry put back", || server.entry(&hal_dn).is_some()).await;
    // By a full run, which following asked for.
    let runs = r#"scim2ldap_reconcile_runs_total{result="ok"}"#;
    assert!(sample(&server.metrics().await, runs) >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scim_id_written_over_another_entry_by_hand_is_put_back_not_taken_for_a_copy() {
    let (server, _daemon) = following(|_| {}).await;
    let mut ida = user_body("ida", "Ida", "I");
    ida["password"] = json!("Ida-Pass-1");
    let ida_id = server.create("/Users", ida).await;
    let mut jon = user_body("jon", "Jon", "J");
    jon["password"] = json!("Jon-Pass-1");
    let jon_id = server.create("/Users", jon).await;
    let jon_dn = server.user_dn("jon");
    // Jon's entry given Ida's SCIM id by hand: still Jon's entry (its entryUUID says so).
    hand(
        &server,
        format!("dn: {jon_dn}\nchangetype: modify\nreplace: scimId\nscimId: {ida_id}\n"),
    );
    until("jon's SCIM id put back", || {
        server
            .entry(&jon_dn)
            .is_some_and(|e| values(&e, "scimId") == [jon_id.as_str()])
    })
    .await;
    assert!(server.can_bind(&jon_dn, "Jon-Pass-1"));
    assert!(server.can_bind(&server.user_dn("ida"), "Ida-Pass-1"));
}
