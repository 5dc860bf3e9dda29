//! Reconciliation: the directory is changed behind the daemon's back, and a run reports exactly
//! those changes, repairs them under `repair`, leaves them under `report`, and the users' binds
//! follow the IdP's state again.

use serde_json::{json, Value};

use crate::support::{user_body, values, TestServer};

fn with_password(mut body: Value, password: &str) -> Value {
    body["password"] = json!(password);
    body
}

/// Runs `scim2ldap reconcile` on the server's config; returns the exit code and the JSON report.
pub(crate) fn reconcile_cli(
    server: &TestServer,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, Value) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_scim2ldap"))
        .arg("reconcile")
        .arg("--config")
        .arg(&server.config_path)
        .arg("--json")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), report)
}

/// (kind, dn or id, action) of every finding, sorted.
fn findings(report: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_and_orphans_are_reported_then_repaired() {
    let mut server =
        TestServer::start_with(|text| text.push_str("\n[reconcile]\nat_startup = false\n")).await;
    let alice = server
        .post(
            "/Users",
            with_password(user_body("alice", "Alice", "A"), "Alice-Pass-1"),
        )
        .await
        .expect(201);
    let bob = server
        .post(
            "/Users",
            with_password(user_body("bob", "Bob", "B"), "Bob-Pass-1"),
        )
        .await
        .expect(201);
    let carol = server
        .post("/Users", user_body("carol", "Carol", "C"))
        .await
        .expect(201);
    let bob_id = bob["id"].as_str().unwrap();
    let off = json!({"Operations": [{"op": "replace", "path": "active", "value": false}]});
    server
        .patch(&format!("/Users/{bob_id}"), off)
        .await
        .expect(200);
    server
        .post(
            "/Groups",
            json!({"displayName": "staff", "members": [{"value": alice["id"]}, {"value": bob_id}]}),
        )
        .await
        .expect(201);
    let (alice_dn, bob_dn, carol_dn) = (
        server.user_dn("alice"),
        server.user_dn("bob"),
        server.user_dn("carol"),
    );
    let group_dn = server.group_dn("staff");
    let stray_dn = server.user_dn("mallory");
    // Behind the daemon's back: change mail, delete an entry, remove a member, unlock a
    // suspended user, add a stray account.
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {alice_dn}\nchangetype: modify\nreplace: mail\nmail: evil@example.com\n"
        ))
        .unwrap();
    server
        .slapd
        .ldapmodify(&format!("dn: {carol_dn}\nchangetype: delete\n"))
        .unwrap();
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {group_dn}\nchangetype: modify\ndelete: member\nmember: {alice_dn}\n"
        ))
        .unwrap();
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {bob_dn}\nchangetype: modify\ndelete: pwdAccountLockedTime\n"
        ))
        .unwrap();
    server
        .slapd
        .ldapadd(&format!("dn: {stray_dn}\nobjectClass: inetOrgPerson\nuid: mallory\ncn: M\nsn: M\nuserPassword: Stray-Pass-1\n"))
        .unwrap();
    assert!(
        server.can_bind(&bob_dn, "Bob-Pass-1"),
        "the unlock took effect"
    );

    let expected = vec![
        ("attributes".to_string(), "would repair".to_string()),
        ("enabled-state".to_string(), "would repair".to_string()),
        ("members".to_string(), "would repair".to_string()),
        ("missing".to_string(), "would repair".to_string()),
        ("orphan".to_string(), "reported".to_string()),
    ];
    // A dry run may run beside the daemon and changes nothing.
    let (code, report) = reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 2, "{report}");
    assert_eq!(findings(&report), expected);
    let alice_finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "attributes")
        .unwrap();
    assert_eq!(alice_finding["attributes"], json!(["mail"]));
    assert_eq!(
        values(&server.entry(&alice_dn).unwrap(), "mail"),
        ["evil@example.com"]
    );
    // The same, one entry and one cached resource per page: nothing is missed between pages.
    let (code, paged) = reconcile_cli(
        &server,
        &["--dry-run"],
        &[("SCIM2LDAP__RECONCILE__PAGE_SIZE", "1")],
    );
    assert_eq!(code, 2, "{paged}");
    assert_eq!(findings(&paged), expected);

    // A repairing run refuses to run beside the daemon, and repairs nothing.
    let (code, _) = reconcile_cli(&server, &[], &[]);
    assert_eq!(code, 1);
    assert_eq!(
        values(&server.entry(&alice_dn).unwrap(), "mail"),
        ["evil@example.com"]
    );
    assert!(server.entry(&carol_dn).is_none());
    server.stop_daemon().await;

    // Under `report`, the same findings and nothing changes.
    let (code, report) = reconcile_cli(&server, &[], &[("SCIM2LDAP__RECONCILE__DRIFT", "report")]);
    assert_eq!(code, 2);
    assert!(
        findings(&report)
            .iter()
            .all(|(_, action)| action == "reported"),
        "{report}"
    );
    assert!(server.entry(&carol_dn).is_none());

    // Under `repair` (and orphans disabled), everything goes back to what the IdP asked for.
    let (code, report) = reconcile_cli(
        &server,
        &[],
        &[("SCIM2LDAP__RECONCILE__ORPHANS", "disable")],
    );
    assert_eq!(code, 2);
    let repaired: Vec<(String, String)> = findings(&report);
    assert_eq!(
        repaired
            .iter()
            .filter(|(_, action)| action == "repaired")
            .count(),
        4,
        "{report}"
    );
    assert!(repaired.contains(&("orphan".to_string(), "disabled".to_string())));
    assert_eq!(
        values(&server.entry(&alice_dn).unwrap(), "mail"),
        ["alice@example.com"]
    );
    let carol_entry = server.entry(&carol_dn).expect("re-created");
    assert_eq!(
        values(&carol_entry, "scimId"),
        [carol["id"].as_str().unwrap()]
    );
    let group_entry = server.entry(&group_dn).unwrap();
    let mut members: Vec<&str> = values(&group_entry, "member");
    members.sort();
    assert_eq!(members, [alice_dn.as_str(), bob_dn.as_str()]);
    assert!(
        !server.can_bind(&bob_dn, "Bob-Pass-1"),
        "bob is suspended again"
    );
    assert!(server.can_bind(&alice_dn, "Alice-Pass-1"));
    assert!(
        !server.can_bind(&stray_dn, "Stray-Pass-1"),
        "the orphan is disabled"
    );

    // In step now: nothing but the (disabled) orphan, which `ignore` leaves out.
    let (code, report) =
        reconcile_cli(&server, &[], &[("SCIM2LDAP__RECONCILE__ORPHANS", "ignore")]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["drifted"], 0);

    // The IdP's ids keep working.
    server.launch().await;
    let carol_now = server
        .get(&format!("/Users/{}", carol["id"].as_str().unwrap()))
        .await
        .expect(200);
    assert_eq!(carol_now["userName"], "carol");
}

/// A repair the directory refuses (here: the mail it would put back is another entry's now,
/// which the unique overlay refuses) is reported as failed, and the run goes on to the other
/// entries instead of stopping there, as it would at every later run.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_repair_does_not_stop_the_run() {
    let mut server =
        TestServer::start_with(|text| text.push_str("\n[reconcile]\nat_startup = false\n")).await;
    let fay = server.create("/Users", user_body("fay", "Fay", "F")).await;
    let gus = server.create("/Users", user_body("gus", "Gus", "G")).await;
    server
        .create(
            "/Groups",
            json!({"displayName": "team", "members": [{"value": fay}, {"value": gus}]}),
        )
        .await;
    let (fay_dn, group_dn) = (server.user_dn("fay"), server.group_dn("team"));
    let stray_dn = server.user_dn("stray");
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {fay_dn}\nchangetype: modify\nreplace: mail\nmail: elsewhere@example.com\n\n\
             dn: {stray_dn}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: stray\ncn: S\nsn: S\nmail: fay@example.com\n\n\
             dn: {group_dn}\nchangetype: modify\ndelete: member\nmember: {fay_dn}\n"
        ))
        .unwrap();
    server.stop_daemon().await;
    let (code, report) = reconcile_cli(&server, &[], &[]);
    assert_eq!(code, 2, "{report}");
    let found = findings(&report);
    assert!(
        found.contains(&("attributes".to_string(), "failed".to_string())),
        "{report}"
    );
    assert!(
        found.contains(&("members".to_string(), "repaired".to_string())),
        "{report}"
    );
    let group = server.entry(&group_dn).unwrap();
    let mut members = values(&group, "member");
    members.sort();
    assert_eq!(members, [fay_dn.as_str(), server.user_dn("gus").as_str()]);
    assert_eq!(
        values(&server.entry(&fay_dn).unwrap(), "mail"),
        ["elsewhere@example.com"]
    );
}

/// A dry run changes nothing, the cache included: it does not create a missing cache (which
/// would make every entry an orphan), nor upgrade an older one under a running daemon.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_creates_and_upgrades_no_cache() {
    let mut server =
        TestServer::start_with(|text| text.push_str("\n[reconcile]\nat_startup = false\n")).await;
    server.create("/Users", user_body("hal", "Hal", "H")).await;
    server.stop_daemon().await;
    let cache = scim2ldap::config::load(&server.config_path, Some(Default::default()))
        .unwrap()
        .cache
        .path;
    let missing = cache.with_file_name("elsewhere").join("cache.db");
    let env = [("SCIM2LDAP__CACHE__PATH", missing.to_str().unwrap())];
    let (code, report) = reconcile_cli(&server, &["--dry-run"], &env);
    assert_eq!(code, 1, "{report}");
    assert!(!missing.exists() && !missing.parent().unwrap().exists());
    // An older cache is left at its version.
    let set_version = |version: i64| {
        let conn = rusqlite::Connection::open(&cache).unwrap();
        conn.pragma_update(None, "user_version", version).unwrap();
    };
    set_version(3);
    let (code, report) = reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 1, "{report}");
    let conn = rusqlite::Connection::open(&cache).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, 3);
    drop(conn);
    set_version(4);
    let (code, report) = reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 0, "{report}");
}

/// A users base that does not exist (a typo in the config, a replica still loading) is an
/// error that ends the run, not a directory whose every user is gone (which a repairing run
/// would then try to re-create, one refusal at a time).
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_base_ends_the_run_with_an_error() {
    let mut server =
        TestServer::start_with(|text| text.push_str("\n[reconcile]\nat_startup = false\n")).await;
    server.create("/Users", user_body("ida", "Ida", "I")).await;
    server.stop_daemon().await;
    let base = format!("ou=peopel,{}", server.slapd.suffix());
    let env = [("SCIM2LDAP__USERS__BASE_DN", base.as_str())];
    let (code, report) = reconcile_cli(&server, &[], &env);
    assert_eq!(code, 1, "{report}");
    assert!(server.entry(&server.user_dn("ida")).is_some());
    // A disabled base (`deactivate = "move"`) that does not exist yet holds nothing.
    let disabled = format!("ou=gone,{}", server.slapd.suffix());
    let env = [
        ("SCIM2LDAP__USERS__DEACTIVATE", "move"),
        ("SCIM2LDAP__USERS__DISABLED_BASE_DN", disabled.as_str()),
    ];
    let (code, report) = reconcile_cli(&server, &["--dry-run"], &env);
    assert_eq!(code, 0, "{report}");
}

/// An account ppolicy locked after failed binds (a timestamp in `pwdAccountLockedTime`, under
/// the `pwdLockout` policy the README asks for) stays locked: reconciliation takes only its own
/// permanent lock for a suspension, so it neither reports nor removes this one.
#[tokio::test(flavor = "multi_thread")]
async fn a_ppolicy_lockout_is_left_to_the_directory() {
    let mut server =
        TestServer::start_with(|text| text.push_str("\n[reconcile]\nat_startup = false\n")).await;
    server
        .create(
            "/Users",
            with_password(user_body("erin", "Erin", "E"), "Erin-Pass-1"),
        )
        .await;
    let erin_dn = server.user_dn("erin");
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {erin_dn}\nchangetype: modify\nreplace: pwdAccountLockedTime\npwdAccountLockedTime: 20261130010101Z\n"
        ))
        .unwrap();
    server.stop_daemon().await;
    let (code, report) = reconcile_cli(&server, &[], &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        values(&server.entry(&erin_dn).unwrap(), "pwdAccountLockedTime"),
        ["20261130010101Z"]
    );
}

/// An entry renamed behind the daemon's back (a modrdn by hand) is found by its SCIM id and
/// renamed back; its group membership and its password go with it.
#[tokio::test(flavor = "multi_thread")]
async fn an_entry_renamed_by_hand_is_renamed_back() {
    let mut server =
        TestServer::start_with(|text| text.push_str("\n[reconcile]\nat_startup = false\n")).await;
    let dave = server
        .create(
            "/Users",
            with_password(user_body("dave", "Dave", "D"), "Dave-Pass-1"),
        )
        .await;
    server
        .create(
            "/Groups",
            json!({"displayName": "crew", "members": [{"value": dave}]}),
        )
        .await;
    let (dave_dn, moved_dn) = (server.user_dn("dave"), server.user_dn("dave.moved"));
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {dave_dn}\nchangetype: modrdn\nnewrdn: uid=dave.moved\ndeleteoldrdn: 1\n"
        ))
        .unwrap();
    assert!(server.entry(&dave_dn).is_none());
    let (code, report) = reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 2, "{report}");
    // The entry moved, and (refint following the rename) the group's member value with it.
    assert_eq!(
        findings(&report),
        [
            ("members".to_string(), "would repair".to_string()),
            ("moved".to_string(), "would repair".to_string())
        ],
        "{report}"
    );
    assert_eq!(
        report["orphans"], 0,
        "taken for its own entry, not an orphan: {report}"
    );
    server.stop_daemon().await;
    let (code, report) = reconcile_cli(&server, &[], &[]);
    assert_eq!(code, 2, "{report}");
    // Renamed back first, the entry takes its member value back with it (refint again).
    assert_eq!(report["repaired"], 1, "{report}");
    assert!(server.entry(&moved_dn).is_none());
    let entry = server.entry(&dave_dn).expect("renamed back");
    assert_eq!(values(&entry, "uid"), ["dave"]);
    assert_eq!(values(&entry, "scimId"), [dave.as_str()]);
    assert!(server.can_bind(&dave_dn, "Dave-Pass-1"));
    let group = server.entry(&server.group_dn("crew")).unwrap();
    assert_eq!(values(&group, "member"), [dave_dn.as_str()]);
    let (code, report) = reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_repairs_drift_at_start_up() {
    let mut server = TestServer::start().await;
    server
        .post("/Users", user_body("dora", "Dora", "D"))
        .await
        .expect(201);
    server.stop_daemon().await;
    let dn = server.user_dn("dora");
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {dn}\nchangetype: modify\nreplace: title\ntitle: Intruder\n"
        ))
        .unwrap();
    server.launch().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !values(&server.entry(&dn).unwrap(), "title").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "start-up reconcile did not repair the title"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_cache_is_rebuilt_from_the_directory_and_ids_keep_working() {
    // `externalId` mapped for users and groups: a rebuilt resource has it back, and finds by it.
    let mut server = TestServer::start_with(|text| {
        text.push_str(
            "\n[reconcile]\nat_startup = false\n[users.attributes]\ncarLicense = \"externalId\"\n\
             [groups.attributes]\nbusinessCategory = \"externalId\"\n",
        )
    })
    .await;
    let mut boss_body = with_password(user_body("boss", "Big", "Boss"), "Boss-Pass-1");
    boss_body["externalId"] = json!("okta-boss");
    let boss = server.post("/Users", boss_body).await.expect(201);
    let mut worker_body = user_body("worker", "Hard", "Worker");
    worker_body["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"] =
        json!({"manager": {"value": boss["id"]}, "department": "Ops"});
    let worker = server.post("/Users", worker_body).await.expect(201);
    let off = json!({"Operations": [{"op": "replace", "path": "active", "value": false}]});
    server
        .patch(&format!("/Users/{}", boss["id"].as_str().unwrap()), off)
        .await
        .expect(200);
    let group = server
        .post("/Groups", json!({"displayName": "crew", "externalId": "okta-crew", "members": [{"value": boss["id"]}, {"value": worker["id"]}]}))
        .await
        .expect(201);
    server.stop_daemon().await;
    let cache = server.config_path.with_file_name("cache.db");
    for suffix in ["", "-wal", "-shm"] {
        let mut path = cache.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(path));
    }

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_scim2ldap"))
        .args(["reconcile", "--rebuild-cache", "--json", "--config"])
        .arg(&server.config_path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rebuilt: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        rebuilt,
        json!({"users": 2, "groups": 1, "memberships": 2, "skipped": 0})
    );

    server.launch().await;
    let worker_now = server
        .get(&format!("/Users/{}", worker["id"].as_str().unwrap()))
        .await
        .expect(200);
    assert_eq!(worker_now["userName"], "worker");
    assert_eq!(worker_now["name"]["givenName"], "Hard");
    let enterprise = &worker_now["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"];
    assert_eq!(enterprise["manager"]["value"], boss["id"]);
    assert_eq!(enterprise["department"], "Ops");
    let boss_now = server
        .get(&format!("/Users/{}", boss["id"].as_str().unwrap()))
        .await
        .expect(200);
    assert_eq!(boss_now["active"], false);
    let crew = server
        .get(&format!("/Groups/{}", group["id"].as_str().unwrap()))
        .await
        .expect(200);
    assert_eq!(crew["members"].as_array().unwrap().len(), 2);
    assert_eq!(crew["externalId"], "okta-crew");
    let by_external = server
        .get("/Users?filter=externalId%20eq%20%22okta-boss%22")
        .await
        .expect(200);
    assert_eq!(by_external["totalResults"], 1, "{by_external}");
    // The IdP carries on with its ids: reactivate the boss.
    let on = json!({"Operations": [{"op": "replace", "path": "active", "value": true}]});
    server
        .patch(&format!("/Users/{}", boss["id"].as_str().unwrap()), on)
        .await
        .expect(200);
    assert!(server.can_bind(&server.user_dn("boss"), "Boss-Pass-1"));
    // And the rebuilt cache agrees with the directory, the groups' mapped attributes included.
    let (code, report) = reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        values(
            &server.entry(&server.group_dn("crew")).unwrap(),
            "businessCategory"
        ),
        ["okta-crew"]
    );
}

/// The part of Active Directory's schema the AD flavor writes: `userAccountControl` and the
/// `user` class (here under `inetOrgPerson`, so that the default rules' attributes fit).
const AD_LIKE_SCHEMA: &str = "dn: cn=adlike,cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: adlike\n\
olcAttributeTypes: ( 1.2.840.113556.1.4.8 NAME 'userAccountControl' EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )\n\
olcAttributeTypes: ( 1.2.840.113556.1.2.141 NAME 'department' EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )\n\
olcAttributeTypes: ( 1.2.840.113556.1.2.146 NAME 'company' EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )\n\
olcObjectClasses: ( 1.2.840.113556.1.5.9 NAME 'user' SUP inetOrgPerson STRUCTURAL MAY ( userAccountControl $ department $ company ) )\n";

/// 66048: NORMAL_ACCOUNT (512) and DONT_EXPIRE_PASSWORD (65536); 66050 adds ACCOUNTDISABLE.
#[tokio::test(flavor = "multi_thread")]
async fn ad_flavor_owns_only_the_disable_bit_of_user_account_control() {
    let schema_dir = tempfile::tempdir().unwrap();
    let schema = schema_dir.path().join("adlike.ldif");
    std::fs::write(&schema, AD_LIKE_SCHEMA).unwrap();
    let slapd = scim2ldap::demo::slapd::Slapd::start(scim2ldap::demo::slapd::SlapdOptions {
        extra_schema_ldif: vec![schema],
        ..Default::default()
    })
    .unwrap();
    let mut server = TestServer::start_on(slapd, |text| {
        *text = text.replace("flavor = \"openldap\"", "flavor = \"ad\"");
        text.push_str("\n[reconcile]\nat_startup = false\norphans = \"disable\"\n");
    })
    .await;
    let flags = |server: &TestServer, dn: &str| {
        values(&server.entry(dn).unwrap(), "userAccountControl")
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
    };
    let set_flags = |server: &TestServer, dn: &str, value: &str| {
        server
            .slapd
            .ldapmodify(&format!(
                "dn: {dn}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: {value}\n"
            ))
            .unwrap();
    };
    let people = server.slapd.people_dn();
    let alice_dn = format!("cn=alice,{people}");
    let id = server
        .create("/Users", user_body("alice", "Alice", "A"))
        .await;
    assert_eq!(flags(&server, &alice_dn), ["512"], "a new account");
    set_flags(&server, &alice_dn, "66048");

    let deactivate = |active: bool| {
        json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "value": {"active": active}}]
        })
    };
    let path = format!("/Users/{id}");
    server.patch(&path, deactivate(false)).await.expect(200);
    assert_eq!(flags(&server, &alice_dn), ["66050"], "disabled, flags kept");
    assert_eq!(server.get(&path).await.expect(200)["active"], false);
    server.patch(&path, deactivate(true)).await.expect(200);
    assert_eq!(flags(&server, &alice_dn), ["66048"], "enabled, flags kept");
    assert_eq!(server.get(&path).await.expect(200)["active"], true);

    // The other flags are the directory's: no drift. The disable bit is ours.
    let (code, report) = reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 0, "{report}");
    set_flags(&server, &alice_dn, "66050");
    let stray_dn = format!("cn=mallory,{people}");
    server
        .slapd
        .ldapadd(&format!(
            "dn: {stray_dn}\nobjectClass: user\ncn: mallory\nsn: M\nuserAccountControl: 66048\n"
        ))
        .unwrap();
    let (code, report) = reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        findings(&report),
        [
            ("enabled-state".to_string(), "would repair".to_string()),
            ("orphan".to_string(), "would disable".to_string()),
        ]
    );
    server.stop_daemon().await;
    let (code, report) = reconcile_cli(&server, &[], &[]);
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        flags(&server, &alice_dn),
        ["66048"],
        "enabled again, flags kept"
    );
    assert_eq!(
        flags(&server, &stray_dn),
        ["66050"],
        "orphan disabled, flags kept"
    );
}

/// Replaces the in-process daemon with one in its own process whose request writes wait 3 s
/// between the directory and their commit, logging to a file: the daemon, the file's folder
/// (kept while the test runs) and the file.
async fn holding_commits(
    server: &mut TestServer,
) -> (crate::daemon::Daemon, tempfile::TempDir, std::path::PathBuf) {
    server.stop_daemon().await;
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("daemon.log");
    let mut daemon = crate::daemon::Daemon::spawn(
        &server.config_path,
        crate::daemon::free_addr(),
        &[("SCIM2LDAP_TEST_COMMIT_DELAY_MS", "3000")],
        std::fs::File::create(&log).unwrap().into(),
    );
    daemon.wait_ready().await;
    (daemon, log_dir, log)
}

/// A user whose create is between its directory write and its commit is not an orphan:
/// reconciliation (every second here, orphans disabled) waits for the write, and the new
/// account stays enabled.
#[tokio::test(flavor = "multi_thread")]
async fn a_create_in_flight_is_not_disabled_as_an_orphan() {
    let mut server = TestServer::start_with(|text| {
        text.push_str(
            "\n[reconcile]\nat_startup = false\ninterval = \"1s\"\norphans = \"disable\"\n",
        )
    })
    .await;
    let (daemon, _log_dir, log) = holding_commits(&mut server).await;
    let post = reqwest::Client::new()
        .post(format!("{}/Users", daemon.base))
        .bearer_auth(&server.token)
        .json(&with_password(
            user_body("newbie", "New", "Bie"),
            "Newbie-Pass-1",
        ))
        .send();
    let reply = post.await.unwrap();
    assert_eq!(reply.status().as_u16(), 201);
    let dn = server.user_dn("newbie");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("holding the write before its commit"),
        "the hook held the create: {log_text}"
    );
    assert!(
        !log_text.contains("orphan account disabled"),
        "the new account was taken for an orphan: {log_text}"
    );
    assert!(
        values(&server.entry(&dn).unwrap(), "pwdAccountLockedTime").is_empty(),
        "not locked"
    );
    assert!(server.can_bind(&dn, "Newbie-Pass-1"));
    // Runs went on during the hold (each waited for the create) and found no orphan: wait
    // (up to 20 s) until two have logged.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let log_text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.matches("reconcile run").count() >= 2 || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let runs: Vec<&str> = log_text
        .lines()
        .filter(|line| line.contains("reconcile run"))
        .collect();
    assert!(runs.len() >= 2, "{log_text}");
    assert!(
        runs.iter().all(|line| line.contains("orphans=0")),
        "{log_text}"
    );
    daemon.kill();
}

/// A user delete between its directory write and its commit has taken the user out of its
/// group's entry while the cache still lists it there: reconciliation (every second here)
/// sees the group drift, waits for the user's write instead of putting the member back, and
/// then finds nothing to repair. (It used to add the deleted user's DN back to the group.)
#[tokio::test(flavor = "multi_thread")]
async fn a_member_change_in_flight_is_not_undone_by_a_group_repair() {
    let mut server = TestServer::start_with(|text| {
        text.push_str("\n[reconcile]\nat_startup = false\ninterval = \"1s\"\n")
    })
    .await;
    let mut ids = Vec::new();
    for name in ["stayer", "leaver"] {
        ids.push(server.create("/Users", user_body(name, "Gr", "Oup")).await);
    }
    let members: Vec<Value> = ids.iter().map(|id| json!({"value": id})).collect();
    server
        .create(
            "/Groups",
            json!({"displayName": "Team", "members": members}),
        )
        .await;
    let (daemon, _log_dir, log) = holding_commits(&mut server).await;
    let reply = reqwest::Client::new()
        .delete(format!("{}/Users/{}", daemon.base, ids[1]))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 204);
    let group = server.entry(&server.group_dn("Team")).unwrap();
    assert_eq!(values(&group, "member"), [server.user_dn("stayer")]);
    // The run that met the drift during the hold ends after the delete's commit; its line
    // may come a moment after the reply.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let log_text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("reconcile run") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        log_text.contains("holding the write before its commit"),
        "the hook held the delete: {log_text}"
    );
    let runs: Vec<&str> = log_text
        .lines()
        .filter(|line| line.contains("reconcile run"))
        .collect();
    assert!(!runs.is_empty(), "a run during the hold: {log_text}");
    assert!(
        runs.iter().all(|line| line.contains("repaired=0")),
        "{log_text}"
    );
    daemon.kill();
}

/// Bound as a service account (not the rootdn), reconciliation meets OpenLDAP's size limit on
/// paged searches. The run fails saying what to configure; with that limit lifted, it runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_size_limited_bind_dn_gets_a_run_error_that_says_what_to_configure() {
    let slapd = scim2ldap::demo::slapd::Slapd::start(Default::default()).unwrap();
    let service_dn = crate::support::service_account(&slapd);
    slapd
        .configure(&format!(
            "dn: olcDatabase={{1}}mdb,cn=config\nchangetype: modify\n\
             add: olcAccess\nolcAccess: {{0}}to * by dn.exact=\"{service_dn}\" write by * break\n-\n\
             replace: olcSizeLimit\nolcSizeLimit: 3\n"
        ))
        .unwrap();
    let mut server = TestServer::start_as(slapd, &service_dn, |text| {
        text.push_str("\n[reconcile]\nat_startup = false\n");
    })
    .await;
    for k in 0..5 {
        server
            .create("/Users", user_body(&format!("svc{k}"), "S", "Vc"))
            .await;
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_scim2ldap"))
        .args(["reconcile", "--dry-run", "--config"])
        .arg(&server.config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("size limit"), "{stderr}");
    assert!(stderr.contains("size.prtotal=unlimited"), "{stderr}");

    server
        .slapd
        .configure(&format!(
            "dn: olcDatabase={{1}}mdb,cn=config\nchangetype: modify\n\
             add: olcLimits\nolcLimits: dn.exact=\"{service_dn}\" size.prtotal=unlimited\n"
        ))
        .unwrap();
    let (code, report) = reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["scanned"], 5, "{report}");
    server.stop_daemon().await;
}
