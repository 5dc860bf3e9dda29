//! Groups: every member PATCH shape the IdPs send, checked in the group's `member` values, the
//! users' `memberOf`, and a legacy application's membership search.

use serde_json::{json, Value};

use crate::support::{patient_directory, signal_slapd, user_body, values, TestServer};

async fn user(server: &TestServer, name: &str) -> String {
    server
        .create("/Users", user_body(name, name, "Member"))
        .await
}

fn members_of(server: &TestServer, cn: &str) -> Vec<String> {
    let entry = server.entry(&server.group_dn(cn)).expect("group entry");
    let mut members: Vec<String> = values(&entry, "member")
        .into_iter()
        .map(str::to_string)
        .collect();
    members.sort();
    members
}

/// What a legacy application asks: is `uid` in the group?
fn in_group(server: &TestServer, uid: &str, cn: &str) -> bool {
    let filter = format!("(&(uid={uid})(memberOf={}))", server.group_dn(cn));
    !server.search(&server.slapd.people_dn(), &filter).is_empty()
}

fn ops(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

#[tokio::test(flavor = "multi_thread")]
async fn every_member_patch_shape_lands_in_the_directory() {
    let server = TestServer::start().await;
    let ann = user(&server, "ann").await;
    let ben = user(&server, "ben").await;
    let cid = user(&server, "cid").await;
    let placeholder = server.slapd.placeholder_dn();

    // Entra creates groups empty.
    let group = server
        .post("/Groups", json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Engineers", "externalId": "ext-1"}))
        .await
        .expect(201);
    let gid = group["id"].as_str().unwrap().to_string();
    assert_eq!(group["members"], json!([]));
    assert_eq!(members_of(&server, "Engineers"), [placeholder.as_str()]);

    // a. add with a value list (Entra: capitalised op, no $ref).
    server
        .patch(&format!("/Groups/{gid}"), ops(json!([{"op": "Add", "path": "members", "value": [{"value": ann}, {"value": ben}]}])))
        .await
        .expect(204);
    assert_eq!(
        members_of(&server, "Engineers"),
        [server.user_dn("ann"), server.user_dn("ben")]
    );
    assert!(in_group(&server, "ann", "Engineers") && in_group(&server, "ben", "Engineers"));

    // b. remove with a filter path (Okta).
    server
        .patch(
            &format!("/Groups/{gid}"),
            ops(json!([{"op": "remove", "path": format!("members[value eq \"{ann}\"]")}])),
        )
        .await
        .expect(204);
    assert_eq!(members_of(&server, "Engineers"), [server.user_dn("ben")]);
    assert!(!in_group(&server, "ann", "Engineers"));

    // c. remove with path "members" and a value list: only those go (Entra's default).
    server
        .patch(
            &format!("/Groups/{gid}"),
            ops(json!([{"op": "Add", "path": "members", "value": [{"value": cid}]}])),
        )
        .await
        .expect(204);
    server
        .patch(
            &format!("/Groups/{gid}"),
            ops(json!([{"op": "Remove", "path": "members", "value": [{"value": ben}]}])),
        )
        .await
        .expect(204);
    assert_eq!(members_of(&server, "Engineers"), [server.user_dn("cid")]);

    // d. replace the whole list (Okta).
    server
        .patch(&format!("/Groups/{gid}"), ops(json!([{"op": "replace", "path": "members", "value": [{"value": ann}, {"value": ben}]}])))
        .await
        .expect(204);
    assert_eq!(
        members_of(&server, "Engineers"),
        [server.user_dn("ann"), server.user_dn("ben")]
    );
    assert!(!in_group(&server, "cid", "Engineers"));

    // Several ops in one request, and a path-less replace with displayName and an id to ignore.
    server
        .patch(
            &format!("/Groups/{gid}"),
            ops(json!([
                {"op": "remove", "path": format!("members[value eq \"{ann}\"]")},
                {"op": "add", "path": "members", "value": [{"value": cid}]},
                {"op": "replace", "value": {"id": gid, "displayName": "Platform Engineers"}},
            ])),
        )
        .await
        .expect(204);
    assert!(server.entry(&server.group_dn("Engineers")).is_none());
    assert_eq!(
        members_of(&server, "Platform Engineers"),
        [server.user_dn("ben"), server.user_dn("cid")]
    );
    assert!(in_group(&server, "ben", "Platform Engineers"));

    // Unknown members: 400 naming them, nothing applied.
    let error = server
        .patch(&format!("/Groups/{gid}"), ops(json!([
            {"op": "add", "path": "members", "value": [{"value": ann}, {"value": "no-such-user"}]},
        ])))
        .await
        .expect(400);
    assert_eq!(error["scimType"], "invalidValue");
    assert!(error["detail"].as_str().unwrap().contains("no-such-user"));
    assert!(!in_group(&server, "ann", "Platform Engineers"));

    // A group is not a member: named as its own member, or two groups naming each other at
    // once, each request gets 400 (it used to wait forever for a lock it held itself) and the
    // groups stay writable.
    let other = server
        .create("/Groups", json!({"displayName": "Other"}))
        .await;
    let named = |member: &str| ops(add(member));
    let answers = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let own = server.patch(&format!("/Groups/{gid}"), named(&gid)).await;
        let put = server
            .put(
                &format!("/Groups/{other}"),
                json!({"displayName": "Other", "members": [{"value": other}]}),
            )
            .await;
        let (to_gid, to_other) = (format!("/Groups/{gid}"), format!("/Groups/{other}"));
        let (there, back) = tokio::join!(
            server.patch(&to_gid, named(&other)),
            server.patch(&to_other, named(&gid)),
        );
        [own, put, there, back]
    })
    .await
    .expect("a group named as a member blocks it");
    for answer in answers {
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_eq!(answer.body["scimType"], "invalidValue");
    }
    server
        .patch(&format!("/Groups/{other}"), named(&ann))
        .await
        .expect(204);
    assert!(in_group(&server, "ann", "Other"));
    server.delete(&format!("/Groups/{other}")).await.expect(204);

    // A filter on a sub-attribute a GET shows besides `value`: every member is a user.
    server
        .patch(
            &format!("/Groups/{gid}"),
            ops(json!([{"op": "remove", "path": "members[type eq \"User\"]"}])),
        )
        .await
        .expect(204);
    assert_eq!(
        members_of(&server, "Platform Engineers"),
        [placeholder.as_str()]
    );
    assert!(!in_group(&server, "ben", "Platform Engineers"));
    server
        .patch(&format!("/Groups/{gid}"), ops(json!([{"op": "add", "path": "members", "value": [{"value": ben}, {"value": cid}]}])))
        .await
        .expect(204);

    // Remove everyone: the placeholder keeps the entry valid and is never shown.
    server
        .patch(
            &format!("/Groups/{gid}"),
            ops(json!([{"op": "remove", "path": "members"}])),
        )
        .await
        .expect(204);
    assert_eq!(
        members_of(&server, "Platform Engineers"),
        [placeholder.as_str()]
    );
    let fetched = server.get(&format!("/Groups/{gid}")).await.expect(200);
    assert_eq!(fetched["members"], json!([]));
    assert_eq!(fetched["displayName"], "Platform Engineers");
    // The placeholder goes when a real member arrives.
    server
        .patch(&format!("/Groups/{gid}"), ops(json!([{"op": "add", "path": "members", "value": "string-form-is-refused-if-unknown"}])))
        .await
        .expect(400);
    server
        .patch(
            &format!("/Groups/{gid}"),
            ops(json!([{"op": "add", "path": "members", "value": ann}])),
        )
        .await
        .expect(204);
    assert_eq!(
        members_of(&server, "Platform Engineers"),
        [server.user_dn("ann")]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn users_show_their_groups_and_leave_them_when_deleted() {
    let server = TestServer::start().await;
    let ann = user(&server, "ann").await;
    let ben = user(&server, "ben").await;
    let group = server
        .post(
            "/Groups",
            json!({"displayName": "Staff", "members": [{"value": ann}, {"value": ben}]}),
        )
        .await
        .expect(201);
    let gid = group["id"].as_str().unwrap();
    assert_eq!(group["members"].as_array().unwrap().len(), 2);
    let solo = server
        .post(
            "/Groups",
            json!({"displayName": "Solo", "members": [{"value": ann}]}),
        )
        .await
        .expect(201);

    let ann_user = server.get(&format!("/Users/{ann}")).await.expect(200);
    let groups: Vec<&str> = ann_user["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["display"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["Solo", "Staff"]);
    // `groups` asked for by its full name, left out, or not asked for.
    let by_urn = server
        .get(&format!(
            "/Users/{ann}?attributes=urn:ietf:params:scim:schemas:core:2.0:User:groups"
        ))
        .await
        .expect(200);
    assert_eq!(by_urn["groups"].as_array().map(Vec::len), Some(2));
    // A filter on the left-out attribute still sees it.
    let found = server
        .get(&format!(
            "/Users?filter=groups.value eq \"{gid}\"&excludedAttributes=groups"
        ))
        .await
        .expect(200);
    let ids: Vec<&str> = found["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{found}");
    assert!(found["Resources"][0].get("groups").is_none());
    let found = server
        .get(&format!(
            "/Groups?filter=members.value eq \"{ann}\"&excludedAttributes=members"
        ))
        .await
        .expect(200);
    assert_eq!(found["totalResults"], 2, "{found}");
    assert!(found["Resources"][0].get("members").is_none());
    for query in ["excludedAttributes=groups", "attributes=userName"] {
        let reply = server
            .get(&format!("/Users/{ann}?{query}"))
            .await
            .expect(200);
        assert!(reply.get("groups").is_none(), "{query}: {reply}");
        assert_eq!(reply["id"].as_str(), Some(ann.as_str()));
    }
    let without = server
        .get(&format!("/Groups/{gid}?excludedAttributes=members"))
        .await
        .expect(200);
    assert!(without.get("members").is_none());

    server.delete(&format!("/Users/{ann}")).await.expect(204);
    assert_eq!(members_of(&server, "Staff"), [server.user_dn("ben")]);
    assert_eq!(members_of(&server, "Solo"), [server.slapd.placeholder_dn()]);
    let solo = server
        .get(&format!("/Groups/{}", solo["id"].as_str().unwrap()))
        .await
        .expect(200);
    assert_eq!(solo["members"], json!([]));

    // Renaming a user keeps its memberships.
    server
        .patch(
            &format!("/Users/{ben}"),
            ops(json!([{"op": "replace", "path": "userName", "value": "benjamin"}])),
        )
        .await
        .expect(200);
    assert_eq!(members_of(&server, "Staff"), [server.user_dn("benjamin")]);
    assert!(in_group(&server, "benjamin", "Staff"));

    // PUT replaces the member list; DELETE removes the entry.
    server
        .put(
            &format!("/Groups/{gid}"),
            json!({"displayName": "Staff", "members": []}),
        )
        .await
        .expect(200);
    assert_eq!(
        members_of(&server, "Staff"),
        [server.slapd.placeholder_dn()]
    );
    server.delete(&format!("/Groups/{gid}")).await.expect(204);
    assert!(server.entry(&server.group_dn("Staff")).is_none());
    server.get(&format!("/Groups/{gid}")).await.expect(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn group_names_are_unique_and_filterable() {
    let server = TestServer::start().await;
    server
        .post("/Groups", json!({"displayName": "Admins"}))
        .await
        .expect(201);
    server
        .post("/Groups", json!({"displayName": "admins"}))
        .await
        .expect(409);
    let found = server
        .get("/Groups?filter=displayName eq \"ADMINS\"&excludedAttributes=members")
        .await
        .expect(200);
    assert_eq!(found["totalResults"], 1);
    let all = server
        .post(
            "/.search",
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]}),
        )
        .await
        .expect(200);
    assert_eq!(all["totalResults"], 1);
    // At the root, an attribute only users have is unassigned in groups (RFC 7644 §3.4.2.1),
    // not an invalid filter.
    let ann = user(&server, "ann").await;
    let search = |filter: &str| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": filter});
    let by_user_name = server
        .post("/.search", search(r#"userName eq "ann""#))
        .await
        .expect(200);
    assert_eq!(by_user_name["totalResults"], 1);
    assert_eq!(by_user_name["Resources"][0]["id"], ann.as_str());
    let not_ann = server
        .post("/.search", search(r#"not (userName eq "ann")"#))
        .await
        .expect(200);
    assert_eq!(not_ann["totalResults"], 1, "the group: {not_ann}");
    let unknown = server
        .post("/.search", search(r#"noSuchAttribute eq "x""#))
        .await
        .expect(400);
    assert_eq!(unknown["scimType"], "invalidFilter");
}

/// A server whose suspended users leave their groups' entries, with users ann and ben in
/// group Ops: (server, ann, ben, Ops).
async fn ops_group_removing_suspended() -> (TestServer, String, String, String) {
    let server = TestServer::start_with(|text| {
        *text = text.replace("[users]\n", "[users]\non_disable_groups = \"remove\"\n")
    })
    .await;
    let ann = user(&server, "ann").await;
    let ben = user(&server, "ben").await;
    let gid = server
        .create(
            "/Groups",
            json!({"displayName": "Ops", "members": [{"value": ann}, {"value": ben}]}),
        )
        .await;
    (server, ann, ben, gid)
}

/// With suspended users out of group entries: a suspended user added to a group is a member
/// in the cache only (its value waits for reactivation), a group whose only members are
/// suspended holds the placeholder alone, and the placeholder never stands beside a real
/// member: it comes in only with the last member in the entry and goes when one is back.
#[tokio::test(flavor = "multi_thread")]
async fn suspended_members_stay_out_of_entries_and_the_placeholder_stands_alone() {
    let (server, ann, ben, ops_id) = ops_group_removing_suspended().await;
    let active = |value: bool| ops(json!([{"op": "replace", "path": "active", "value": value}]));
    let placeholder = [server.slapd.placeholder_dn()];
    let cid = user(&server, "cid").await;
    server
        .patch(&format!("/Users/{cid}"), active(false))
        .await
        .expect(200);
    // Added while suspended: in the cache, not in the entry.
    server
        .patch(&format!("/Groups/{ops_id}"), ops(add(&cid)))
        .await
        .expect(204);
    assert_eq!(
        members_of(&server, "Ops"),
        [server.user_dn("ann"), server.user_dn("ben")]
    );
    let solo = server
        .create(
            "/Groups",
            json!({"displayName": "Solo", "members": [{"value": cid}]}),
        )
        .await;
    assert_eq!(members_of(&server, "Solo"), placeholder);
    let listed = server.get(&format!("/Groups/{solo}")).await.expect(200);
    assert_eq!(listed["members"].as_array().map(Vec::len), Some(1));
    // Suspending one of two members leaves the other alone; suspending the last brings the
    // placeholder; reactivating one takes it away again.
    server
        .patch(&format!("/Users/{ben}"), active(false))
        .await
        .expect(200);
    assert_eq!(members_of(&server, "Ops"), [server.user_dn("ann")]);
    server
        .patch(&format!("/Users/{ann}"), active(false))
        .await
        .expect(200);
    assert_eq!(members_of(&server, "Ops"), placeholder);
    // A rename while suspended touches no entry.
    server
        .patch(
            &format!("/Users/{ann}"),
            ops(json!([{"op": "replace", "path": "userName", "value": "anna"}])),
        )
        .await
        .expect(200);
    assert_eq!(members_of(&server, "Ops"), placeholder);
    server
        .patch(&format!("/Users/{ann}"), active(true))
        .await
        .expect(200);
    assert_eq!(members_of(&server, "Ops"), [server.user_dn("anna")]);
    for id in [&ben, &cid] {
        server
            .patch(&format!("/Users/{id}"), active(true))
            .await
            .expect(200);
    }
    assert_eq!(
        members_of(&server, "Ops"),
        [
            server.user_dn("anna"),
            server.user_dn("ben"),
            server.user_dn("cid")
        ]
    );
    assert_eq!(members_of(&server, "Solo"), [server.user_dn("cid")]);
    let (code, report) = crate::reconcile::reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 0, "{report}");
}

/// A group member removed while another member's delete is between its directory write and
/// its commit: each saw the other still a member, so the entry would be left without one,
/// which `groupOfNames` refuses. The placeholder comes in as the last value goes, and the
/// removal succeeds (it used to get 400).
#[tokio::test(flavor = "multi_thread")]
async fn a_member_removed_beside_a_delete_in_flight_keeps_the_group_valid() {
    let mut server = TestServer::start().await;
    let (ids, gid) = crowd(&server, "duo", 2, "Duo", true).await;
    server.stop_daemon().await;
    let mut daemon = crate::daemon::Daemon::spawn(
        &server.config_path,
        crate::daemon::free_addr(),
        &[("SCIM2LDAP_TEST_COMMIT_DELAY_MS", "2000")],
        std::process::Stdio::null(),
    );
    daemon.wait_ready().await;
    let client = reqwest::Client::new();
    let delete = client
        .delete(format!("{}/Users/{}", daemon.base, ids[1]))
        .bearer_auth(&server.token)
        .send();
    let delete = tokio::spawn(delete);
    // The delete's removal from the entry is in the directory, its commit held.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while members_of(&server, "Duo").len() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the delete never reached the group"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let removal = client
        .patch(format!("{}/Groups/{gid}", daemon.base))
        .bearer_auth(&server.token)
        .json(&ops(remove(&ids[0])))
        .send()
        .await
        .unwrap();
    let status = removal.status().as_u16();
    assert_eq!(status, 204, "{}", removal.text().await.unwrap_or_default());
    assert_eq!(delete.await.unwrap().unwrap().status().as_u16(), 204);
    assert_eq!(members_of(&server, "Duo"), [server.slapd.placeholder_dn()]);
    daemon.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn suspension_can_remove_memberships_and_reactivation_restores_them() {
    let (server, ann, _, _) = ops_group_removing_suspended().await;
    let off = ops(json!([{"op": "replace", "path": "active", "value": false}]));
    let on = ops(json!([{"op": "replace", "path": "active", "value": true}]));
    server
        .patch(&format!("/Users/{ann}"), off)
        .await
        .expect(200);
    assert!(!in_group(&server, "ann", "Ops"));
    assert!(in_group(&server, "ben", "Ops"));
    // The IdP still sees the membership; the directory gets it back on reactivation.
    let group = server
        .get("/Groups?filter=displayName eq \"Ops\"")
        .await
        .expect(200);
    assert_eq!(
        group["Resources"][0]["members"].as_array().unwrap().len(),
        2
    );
    server.patch(&format!("/Users/{ann}"), on).await.expect(200);
    assert!(in_group(&server, "ann", "Ops"));
}

#[tokio::test(flavor = "multi_thread")]
async fn adding_a_member_the_directory_already_has_counts_as_done() {
    let server = TestServer::start().await;
    let ann = user(&server, "ann").await;
    let ben = user(&server, "ben").await;
    let gid = server
        .post("/Groups", json!({"displayName": "Ops"}))
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Someone (or a replayed write) put ann in the group directly.
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {}\nchangetype: modify\nadd: member\nmember: {}\n",
            server.group_dn("Ops"),
            server.user_dn("ann")
        ))
        .unwrap();
    server
        .patch(&format!("/Groups/{gid}"), ops(json!([{"op": "add", "path": "members", "value": [{"value": ann}, {"value": ben}]}])))
        .await
        .expect(204);
    assert_eq!(
        members_of(&server, "Ops"),
        [server.user_dn("ann"), server.user_dn("ben")]
    );
    let group = server.get(&format!("/Groups/{gid}")).await.expect(200);
    assert_eq!(group["members"].as_array().unwrap().len(), 2);
}

/// `groups.object_class = "groupOfUniqueNames"`: members are `uniqueMember` values, kept
/// through adds, removes, a user rename and a user delete, with the placeholder when empty.
#[tokio::test(flavor = "multi_thread")]
async fn groups_of_unique_names_keep_unique_member_values() {
    let server = TestServer::start_with(|text| {
        *text = text.replace(
            "[groups]\n",
            "[groups]\nobject_class = \"groupOfUniqueNames\"\n",
        );
    })
    .await;
    let unique_members = |server: &TestServer| -> Vec<String> {
        let entry = server.entry(&server.group_dn("Uniq")).expect("group entry");
        assert!(values(&entry, "objectClass")
            .iter()
            .any(|class| class.eq_ignore_ascii_case("groupOfUniqueNames")));
        assert!(values(&entry, "member").is_empty());
        let mut members: Vec<String> = values(&entry, "uniqueMember")
            .into_iter()
            .map(str::to_string)
            .collect();
        members.sort();
        members
    };
    let ann = user(&server, "ann").await;
    let ben = user(&server, "ben").await;
    let gid = server
        .create(
            "/Groups",
            json!({"displayName": "Uniq", "members": [{"value": ann}]}),
        )
        .await;
    assert_eq!(unique_members(&server), [server.user_dn("ann")]);
    server
        .patch(&format!("/Groups/{gid}"), ops(add(&ben)))
        .await
        .expect(204);
    server
        .patch(&format!("/Groups/{gid}"), ops(remove(&ann)))
        .await
        .expect(204);
    assert_eq!(unique_members(&server), [server.user_dn("ben")]);
    server
        .patch(
            &format!("/Users/{ben}"),
            ops(json!([{"op": "replace", "path": "userName", "value": "benedict"}])),
        )
        .await
        .expect(200);
    assert_eq!(unique_members(&server), [server.user_dn("benedict")]);
    server.delete(&format!("/Users/{ben}")).await.expect(204);
    assert_eq!(unique_members(&server), [server.slapd.placeholder_dn()]);
    let group = server.get(&format!("/Groups/{gid}")).await.expect(200);
    assert!(
        group
            .get("members")
            .is_none_or(|m| m.as_array().unwrap().is_empty()),
        "{group}"
    );
    server
        .patch(&format!("/Groups/{gid}"), ops(add(&ann)))
        .await
        .expect(204);
    assert_eq!(unique_members(&server), [server.user_dn("ann")]);
    let (code, report) = crate::reconcile::reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 0, "{report}");
}

/// Users with `posixAccount` (uidNumber 20000 up to `uid_max`, gidNumber 5000) and groups
/// as `posixGroup` (gidNumber 7000-7999).
fn posix_accounts_and_groups(text: &mut String, uid_max: u32) {
    *text = text
        .replace("[users]\n", &format!("[users]\nposix = true\nuid_number_min = 20000\nuid_number_max = {uid_max}\ngid_number = 5000\n"))
        .replace("[groups]\n", "[groups]\nobject_class = \"posixGroup\"\ngid_number_min = 7000\ngid_number_max = 7999\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn posix_groups_list_members_by_uid_with_stable_numbers() {
    let server = TestServer::start_with(|text| posix_accounts_and_groups(text, 20001)).await;
    let ann = user(&server, "ann").await;
    let ben = user(&server, "ben").await;
    let ann_entry = server.entry(&server.user_dn("ann")).unwrap();
    assert_eq!(values(&ann_entry, "uidNumber"), ["20000"]);
    assert_eq!(values(&ann_entry, "gidNumber"), ["5000"]);
    assert_eq!(values(&ann_entry, "homeDirectory"), ["/home/ann"]);
    assert_eq!(
        values(&server.entry(&server.user_dn("ben")).unwrap(), "uidNumber"),
        ["20001"]
    );
    // The range is used up: a third user is refused and nothing is written.
    server
        .post("/Users", user_body("cid", "cid", "Member"))
        .await
        .expect(500);
    assert!(server.entry(&server.user_dn("cid")).is_none());

    let group = server
        .post(
            "/Groups",
            json!({"displayName": "devs", "members": [{"value": ann}]}),
        )
        .await
        .expect(201);
    let gid = group["id"].as_str().unwrap();
    let entry = server.entry(&server.group_dn("devs")).unwrap();
    assert_eq!(values(&entry, "gidNumber"), ["7000"]);
    assert_eq!(values(&entry, "memberUid"), ["ann"]);
    server
        .patch(
            &format!("/Groups/{gid}"),
            ops(json!([{"op": "add", "path": "members", "value": [{"value": ben}]}])),
        )
        .await
        .expect(204);
    server
        .patch(
            &format!("/Groups/{gid}"),
            ops(json!([{"op": "remove", "path": format!("members[value eq \"{ann}\"]")}])),
        )
        .await
        .expect(204);
    assert_eq!(
        values(
            &server.entry(&server.group_dn("devs")).unwrap(),
            "memberUid"
        ),
        ["ben"]
    );
    // A rename keeps the number and follows in memberUid.
    server
        .patch(
            &format!("/Users/{ben}"),
            ops(json!([{"op": "replace", "path": "userName", "value": "benny"}])),
        )
        .await
        .expect(200);
    assert_eq!(
        values(
            &server.entry(&server.user_dn("benny")).unwrap(),
            "uidNumber"
        ),
        ["20001"]
    );
    assert_eq!(
        values(
            &server.entry(&server.group_dn("devs")).unwrap(),
            "memberUid"
        ),
        ["benny"]
    );
    assert_eq!(
        values(
            &server.entry(&server.group_dn("devs")).unwrap(),
            "gidNumber"
        ),
        ["7000"]
    );
    // `memberUid` matches exactly: a value changed only in case by hand names nobody for a
    // legacy application, and reconciliation sees the drift.
    let (code, report) = crate::reconcile::reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 0, "{report}");
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {}\nchangetype: modify\nreplace: memberUid\nmemberUid: BENNY\n",
            server.group_dn("devs")
        ))
        .unwrap();
    let (code, report) = crate::reconcile::reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["findings"][0]["kind"], "members", "{report}");
}

/// A POSIX number is handed out once: not one an entry in the directory holds already (an
/// account or group that predates scim2ldap, anywhere in the naming context), not the users'
/// primary `gidNumber` for a group, and not a deleted resource's (its files keep the number).
#[tokio::test(flavor = "multi_thread")]
async fn posix_numbers_skip_the_directorys_and_are_never_reused() {
    let server = TestServer::start_with(|text| {
        posix_accounts_and_groups(text, 20999);
        *text = text.replace("gid_number = 5000", "gid_number = 7000");
    })
    .await;
    let suffix = server.slapd.suffix().to_string();
    server
        .slapd
        .ldapadd(&format!(
            "dn: ou=legacy,{suffix}\nobjectClass: organizationalUnit\nou: legacy\n\n\
             dn: uid=old,ou=legacy,{suffix}\nobjectClass: account\nobjectClass: posixAccount\n\
             uid: old\ncn: Old\nuidNumber: 20000\ngidNumber: 100\nhomeDirectory: /home/old\n\n\
             dn: cn=wheel,ou=legacy,{suffix}\nobjectClass: posixGroup\ncn: wheel\ngidNumber: 7001\n"
        ))
        .unwrap();
    let number = |dn: &str, attr: &str| -> String {
        values(&server.entry(dn).unwrap(), attr)
            .first()
            .map(|value| value.to_string())
            .unwrap_or_default()
    };
    server.create("/Users", user_body("ann", "Ann", "A")).await;
    assert_eq!(number(&server.user_dn("ann"), "uidNumber"), "20001");
    let ben = server.create("/Users", user_body("ben", "Ben", "B")).await;
    assert_eq!(number(&server.user_dn("ben"), "uidNumber"), "20002");
    server.delete(&format!("/Users/{ben}")).await.expect(204);
    assert!(server.entry(&server.user_dn("ben")).is_none());
    server.create("/Users", user_body("cid", "Cid", "C")).await;
    assert_eq!(number(&server.user_dn("cid"), "uidNumber"), "20003");

    // 7000 is every user's primary group, 7001 the legacy group's.
    server
        .create("/Groups", json!({"displayName": "devs"}))
        .await;
    assert_eq!(number(&server.group_dn("devs"), "gidNumber"), "7002");
    for (dn, attr) in [
        (format!("uid=old,ou=legacy,{suffix}"), "uidNumber"),
        (format!("cn=wheel,ou=legacy,{suffix}"), "gidNumber"),
    ] {
        assert_eq!(
            server
                .search(&suffix, &format!("({attr}={})", number(&dn, attr)))
                .len(),
            1,
            "{attr} of {dn} is shared"
        );
    }
}

/// `DELETE /Users/{id}` from its own task.
fn spawn_delete(server: &TestServer, id: &str) -> tokio::task::JoinHandle<(u16, Value)> {
    spawn_call(
        server,
        reqwest::Method::DELETE,
        &format!("/Users/{id}"),
        None,
    )
}

/// Sends a request from its own task (so that several wait at once); the reply's status and
/// body. `body` is a list of PATCH operations for PATCH, nothing for DELETE.
fn spawn_call(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    operations: Option<Value>,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let url = format!("{}{path}", server.base);
    let token = server.token.clone();
    tokio::spawn(async move {
        let mut request = reqwest::Client::new()
            .request(method, url)
            .bearer_auth(token);
        if let Some(operations) = operations {
            request = request
                .header("content-type", "application/scim+json")
                .json(&ops(operations));
        }
        let reply = request.send().await.unwrap();
        let status = reply.status().as_u16();
        let body = reply.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    })
}

/// A member `PATCH` of group `gid`, sent from its own task.
fn spawn_patch(
    server: &TestServer,
    gid: &str,
    operations: Value,
) -> tokio::task::JoinHandle<(u16, Value)> {
    spawn_call(
        server,
        reqwest::Method::PATCH,
        &format!("/Groups/{gid}"),
        Some(operations),
    )
}

/// `n` users named `prefix<k>` and a group `cn` holding the first of them (or all, with
/// `all`): their ids and the group's.
async fn crowd(
    server: &TestServer,
    prefix: &str,
    n: usize,
    cn: &str,
    all: bool,
) -> (Vec<String>, String) {
    let mut ids = Vec::new();
    for k in 0..n {
        ids.push(user(server, &format!("{prefix}{k:02}")).await);
    }
    let members: Vec<Value> = ids
        .iter()
        .take(if all { n } else { 1 })
        .map(|id| json!({"value": id}))
        .collect();
    let group = server
        .post("/Groups", json!({"displayName": cn, "members": members}))
        .await
        .expect(201);
    (ids, group["id"].as_str().unwrap().to_string())
}

fn add(id: &str) -> Value {
    json!([{"op": "add", "path": "members", "value": [{"value": id}]}])
}

/// Removes member `id` by a value filter, as OneLogin and Entra do.
fn remove(id: &str) -> Value {
    json!([{"op": "remove", "path": format!("members[value eq \"{id}\"]")}])
}

/// Member changes that queue behind a slow directory write to the group go to the directory
/// as one modify, and each request still gets its own answer: a request naming an unknown
/// member fails alone, and an add then a remove of one user leave it out.
#[tokio::test(flavor = "multi_thread")]
async fn member_changes_waiting_for_a_group_are_applied_together() {
    let server = TestServer::start_with(patient_directory).await;
    let (ids, gid) = crowd(&server, "crowd", 18, "Crowd", false).await;

    // The first change holds the group while the directory is stopped; the rest wait for it.
    // Each step waits until the daemon shows its requests in place (the first one's intent,
    // then the changes queued), so that order and batch do not depend on the machine's speed.
    signal_slapd(&server, "STOP");
    let first = spawn_patch(&server, &gid, add(&ids[1]));
    server.wait_for_intents(1).await;
    let mut waiting = Vec::new();
    for id in &ids[2..16] {
        waiting.push(spawn_patch(&server, &gid, add(id)));
    }
    let remove_first =
        json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", ids[0])}]);
    waiting.push(spawn_patch(&server, &gid, remove_first));
    let unknown = json!([{"op": "add", "path": "members", "value": [{"value": ids[16]}, {"value": "no-such-user"}]}]);
    let refused = spawn_patch(&server, &gid, unknown);
    server.wait_for_member_changes_waiting(16).await;
    // An add and then a remove of the same user: it ends out of the group.
    waiting.push(spawn_patch(&server, &gid, add(&ids[17])));
    server.wait_for_member_changes_waiting(17).await;
    let remove_last = json!([{"op": "remove", "path": "members", "value": [{"value": ids[17]}]}]);
    waiting.push(spawn_patch(&server, &gid, remove_last));
    server.wait_for_member_changes_waiting(18).await;
    signal_slapd(&server, "CONT");

    assert_eq!(first.await.unwrap().0, 204);
    for request in waiting {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 204, "{body}");
    }
    let (status, body) = refused.await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["scimType"], "invalidValue");
    assert!(
        body["detail"].as_str().unwrap().contains("no-such-user"),
        "{body}"
    );

    // The directory holds exactly the changes of the accepted requests.
    let mut expected: Vec<String> = (1..16)
        .map(|k| server.user_dn(&format!("crowd{k:02}")))
        .collect();
    expected.sort();
    assert_eq!(members_of(&server, "Crowd"), expected);
    assert!(in_group(&server, "crowd15", "Crowd"));
    for gone in ["crowd00", "crowd16", "crowd17"] {
        assert!(!in_group(&server, gone, "Crowd"), "{gone}");
    }
    // The cache agrees; the waiting requests made one version, not sixteen.
    let read = server.get(&format!("/Groups/{gid}")).await.expect(200);
    let mut cached: Vec<&str> = read["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["value"].as_str().unwrap())
        .collect();
    cached.sort_unstable();
    let mut wanted: Vec<&str> = ids[1..16].iter().map(String::as_str).collect();
    wanted.sort_unstable();
    assert_eq!(cached, wanted);
    assert_eq!(read["meta"]["version"], "W/\"3\"");
}

/// When the directory dies under a held group, the first change and every change waiting
/// behind it fail with 503 and none of them is committed, in the directory or the cache.
#[tokio::test(flavor = "multi_thread")]
async fn member_changes_waiting_when_the_directory_dies_all_fail_and_change_nothing() {
    let mut server = TestServer::start_with(patient_directory).await;
    let (ids, gid) = crowd(&server, "fragile", 6, "Fragile", false).await;

    signal_slapd(&server, "STOP");
    let mut requests = vec![spawn_patch(&server, &gid, add(&ids[1]))];
    server.wait_for_intents(1).await;
    for id in &ids[2..] {
        requests.push(spawn_patch(&server, &gid, add(id)));
    }
    server.wait_for_member_changes_waiting(ids.len() - 2).await;
    signal_slapd(&server, "KILL");
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 503, "{body}");
    }

    server.slapd.restart().expect("slapd restarts");
    // Ready again once one connection gets through; from then on every slot reconnects at
    // once instead of answering 503 until its own backoff runs out.
    let ready = format!("{}/readyz", server.root);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while reqwest::get(&ready).await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(std::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        members_of(&server, "Fragile"),
        [server.user_dn("fragile00")]
    );
    let read = server.get(&format!("/Groups/{gid}")).await.expect(200);
    assert_eq!(read["members"].as_array().unwrap().len(), 1, "{read}");
    assert_eq!(read["members"][0]["value"], ids[0].as_str());
    assert_eq!(read["meta"]["version"], "W/\"1\"");
    // The IdP's retries land, each at the first try.
    for id in &ids[1..] {
        server
            .patch(&format!("/Groups/{gid}"), ops(add(id)))
            .await
            .expect(204);
    }
    assert_eq!(members_of(&server, "Fragile").len(), 6);
}

/// A group's last two members deleted at the same time: each delete saw the other still in
/// the group and planned no placeholder, so the second removal would leave the group without a
/// member, which `groupOfNames` refuses. The placeholder comes in as the last member goes, and
/// both deletes succeed (the second used to get 400 and leave its user in the directory).
#[tokio::test(flavor = "multi_thread")]
async fn a_groups_last_members_deleted_together_leave_the_placeholder() {
    let server = TestServer::start_with(|text| {
        *text = text.replace("[users]\n", "[users]\non_delete = \"disable\"\n");
        patient_directory(text);
    })
    .await;
    let (ids, group) = crowd(&server, "pair", 2, "Pair", true).await;
    let delete = |id: &str| spawn_delete(&server, id);
    signal_slapd(&server, "STOP");
    let first = delete(&ids[0]);
    server.wait_for_intents(1).await;
    let second = delete(&ids[1]);
    server.wait_for_intents(2).await;
    signal_slapd(&server, "CONT");
    for request in [first, second] {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 204, "{body}");
    }
    assert_eq!(members_of(&server, "Pair"), [server.slapd.placeholder_dn()]);
    let group = server.get(&format!("/Groups/{group}")).await.expect(200);
    assert!(
        group
            .get("members")
            .is_none_or(|m| m.as_array().unwrap().is_empty()),
        "{group}"
    );
    for id in &ids {
        assert_eq!(server.get(&format!("/Users/{id}")).await.status, 404);
    }
}

/// A member removal from a group entry that is gone (deleted in the directory behind
/// scim2ldap's back, or by a group delete that overtook it) counts as done: the value is not
/// there. The user's delete used to fail on it, and on replay be dropped as refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_leaves_a_group_entry_that_is_gone() {
    let server = TestServer::start_with(|text| {
        text.push_str("\n[reconcile]\nat_startup = false\n");
    })
    .await;
    let (ids, _) = crowd(&server, "gone", 2, "Vanished", true).await;
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {}\nchangetype: delete\n",
            server.group_dn("Vanished")
        ))
        .unwrap();
    server
        .delete(&format!("/Users/{}", ids[0]))
        .await
        .expect(204);
    assert!(server.entry(&server.user_dn("gone00")).is_none());
    server.get(&format!("/Users/{}", ids[0])).await.expect(404);
}

/// Users deleted together leave their group in one modify: their removals wait for the one in
/// the directory and go as one, and each delete still completes. (With `on_delete = "disable"`
/// the group removal is a delete's first directory operation, so that stopping the directory
/// holds exactly that; a real delete first reads the password hashes.)
#[tokio::test(flavor = "multi_thread")]
async fn users_deleted_together_leave_their_group_in_one_modify() {
    let slapd = scim2ldap::demo::slapd::Slapd::start(scim2ldap::demo::slapd::SlapdOptions {
        log_operations: true,
        ..Default::default()
    })
    .expect("slapd starts");
    let server = TestServer::start_on(slapd, |text| {
        *text = text.replace("[users]\n", "[users]\non_delete = \"disable\"\n");
        patient_directory(text);
    })
    .await;
    let (ids, _) = crowd(&server, "leaver", 9, "Leavers", true).await;
    let log_start = server.slapd.log().unwrap().len();

    let delete = |id: &str| spawn_delete(&server, id);
    signal_slapd(&server, "STOP");
    let mut requests = vec![delete(&ids[1])];
    server.wait_for_intents(1).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for id in &ids[2..] {
        requests.push(delete(id));
    }
    // Each delete records its intent, then takes its member value out of the group: the seven
    // queue behind the first, whose modify waits in the stopped directory. Counting the intents
    // (not sleeping a fixed time) keeps a loaded machine from sending one after the batch left.
    server.wait_for_intents(ids.len() - 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    signal_slapd(&server, "CONT");
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 204, "{body}");
    }

    assert_eq!(members_of(&server, "Leavers"), [server.user_dn("leaver00")]);
    for id in &ids[1..] {
        let status = server.get(&format!("/Users/{id}")).await.status;
        assert_eq!(status, 404, "{id}");
    }
    let log = server.slapd.log().unwrap();
    let group_modifies = log[log_start..]
        .lines()
        .filter(|line| {
            line.to_ascii_lowercase().contains(&format!(
                "mod dn=\"{}\"",
                server.group_dn("Leavers").to_ascii_lowercase()
            ))
        })
        .count();
    assert_eq!(
        group_modifies, 2,
        "the first removal, then the seven that waited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_put_back_as_read_with_its_groups_keeps_its_memberships() {
    // Okta updates a user by GET, change, PUT of the whole body, read-only `groups` included.
    let server = TestServer::start().await;
    let ann = user(&server, "ann").await;
    let staff = server
        .post(
            "/Groups",
            json!({"displayName": "Staff", "members": [{"value": ann}]}),
        )
        .await
        .expect(201);
    let mut read = server.get(&format!("/Users/{ann}")).await.expect(200);
    assert_eq!(read["groups"][0]["value"], staff["id"]);
    read["title"] = json!("Lead");
    // An echoed list that no longer matches is ignored as well: groups are changed on groups.
    read["groups"]
        .as_array_mut()
        .unwrap()
        .push(json!({"value": "not-a-group", "display": "Nope"}));
    let put = server.put(&format!("/Users/{ann}"), read).await.expect(200);
    assert_eq!(put["title"], "Lead");
    assert_eq!(put["groups"].as_array().unwrap().len(), 1, "{put}");
    assert_eq!(put["groups"][0]["value"], staff["id"]);
    let dn = server.user_dn("ann");
    assert_eq!(members_of(&server, "Staff"), [dn.as_str()]);
    assert_eq!(values(&server.entry(&dn).unwrap(), "title"), ["Lead"]);
}

/// A user renamed while a group write removes it: whichever goes first, the group ends
/// without the user in the directory as in the cache (the group write reads the user's DN
/// under the user's lock, after the rename).
#[tokio::test(flavor = "multi_thread")]
async fn a_rename_racing_a_removal_from_a_group_leaves_no_membership_behind() {
    let server = TestServer::start_with(patient_directory).await;
    let (ids, gid) = crowd(&server, "racer", 2, "Racers", true).await;
    let renamed_dn = server.user_dn("racer-renamed");
    // The rename waits in the stopped directory, holding the user; the removal comes then.
    signal_slapd(&server, "STOP");
    let rename = spawn_call(
        &server,
        reqwest::Method::PATCH,
        &format!("/Users/{}", ids[0]),
        Some(json!([{"op": "replace", "path": "userName", "value": "racer-renamed"}])),
    );
    server.wait_for_intents(1).await;
    let remove = spawn_patch(
        &server,
        &gid,
        json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", ids[0])}]),
    );
    // Time for the removal to reach the directory, as it did before it waited for the user.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    signal_slapd(&server, "CONT");
    assert_eq!(rename.await.unwrap().0, 200);
    assert_eq!(remove.await.unwrap().0, 204);
    assert_eq!(members_of(&server, "Racers"), [server.user_dn("racer01")]);
    assert!(server.entry(&renamed_dn).is_some());
    let group = server.get(&format!("/Groups/{gid}")).await.expect(200);
    assert_eq!(group["members"].as_array().unwrap().len(), 1, "{group}");
    assert_eq!(group["members"][0]["value"], ids[1].as_str());
}

/// A membership changed by another resource's write changes the ETag (and `lastModified`):
/// a user's `groups` when a group adds or drops it, a group's `members` when a member is
/// deleted. `If-None-Match` with the old tag then reads the new state, and `If-Match` with it
/// is refused.
#[tokio::test(flavor = "multi_thread")]
async fn etags_follow_membership_changes_from_the_other_side() {
    let server = TestServer::start().await;
    let alice = server.create("/Users", user_body("alice", "A", "A")).await;
    let bob = server.create("/Users", user_body("bob", "B", "B")).await;
    let group = server
        .create(
            "/Groups",
            json!({"displayName": "staff", "members": [{"value": bob}]}),
        )
        .await;
    let get = |path: String, if_none_match: Option<String>| {
        let server = &server;
        async move {
            server
                .call_with(
                    reqwest::Method::GET,
                    &path,
                    None,
                    |req| match if_none_match {
                        Some(tag) => req.header("if-none-match", tag),
                        None => req,
                    },
                )
                .await
        }
    };
    let alice_path = format!("/Users/{alice}");
    let group_path = format!("/Groups/{group}");
    let alice_tag = get(alice_path.clone(), None).await.header("etag").unwrap();
    let alice_seen = get(alice_path.clone(), Some(alice_tag.clone())).await;
    assert_eq!(alice_seen.status.as_u16(), 304, "unchanged so far");

    let added = server
        .patch(
            &group_path,
            json!({"Operations": [{"op": "add", "path": "members", "value": [{"value": alice}]}]}),
        )
        .await;
    // A 204 still carries the group's new ETag.
    let added_tag = added.header("etag").expect("ETag on 204");
    added.expect(204);
    assert_eq!(
        get(group_path.clone(), None).await.header("etag").unwrap(),
        added_tag
    );
    let alice_now = get(alice_path.clone(), Some(alice_tag.clone())).await;
    assert_eq!(alice_now.status.as_u16(), 200, "her groups changed");
    assert_ne!(alice_now.header("etag").unwrap(), alice_tag);
    assert_eq!(alice_now.body["groups"][0]["value"], group.as_str());
    assert_eq!(
        alice_now.body["meta"]["version"],
        alice_now.header("etag").unwrap()
    );
    let stale = server
        .call_with(
            reqwest::Method::PATCH,
            &alice_path,
            Some(json!({"Operations": [{"op": "replace", "path": "title", "value": "T"}]})),
            |req| req.header("if-match", alice_tag.clone()),
        )
        .await;
    stale.expect(412);
    assert!(values(&server.entry(&server.user_dn("alice")).unwrap(), "title").is_empty());

    // Renaming the group changes her `groups[].display`.
    let alice_tag = alice_now.header("etag").unwrap();
    server
        .patch(
            &group_path,
            json!({"Operations": [{"op": "replace", "path": "displayName", "value": "crew"}]}),
        )
        .await
        .expect(204);
    let alice_now = get(alice_path.clone(), Some(alice_tag.clone())).await;
    assert_eq!(alice_now.status.as_u16(), 200, "her group was renamed");
    assert_eq!(alice_now.body["groups"][0]["display"], "crew");

    let group_tag = get(group_path.clone(), None).await.header("etag").unwrap();
    server.delete(&format!("/Users/{bob}")).await.expect(204);
    let group_now = get(group_path.clone(), Some(group_tag.clone())).await;
    assert_eq!(group_now.status.as_u16(), 200, "a member was deleted");
    assert_ne!(group_now.header("etag").unwrap(), group_tag);
    let members: Vec<&str> = group_now.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap())
        .collect();
    assert_eq!(members, [alice.as_str()]);
    let entry = server.entry(&server.group_dn("crew")).unwrap();
    assert!(!values(&entry, "member")
        .iter()
        .any(|dn| dn.contains("uid=bob")));
}

/// Without `refint` in the directory: renaming a group's only member moves its member value
/// (new value first, so the group never goes empty), and a change of case only renames the
/// entry too and leaves the member value alone (DN matching ignores case).
#[tokio::test(flavor = "multi_thread")]
async fn renaming_a_groups_only_member_keeps_the_group_valid() {
    let slapd = scim2ldap::demo::slapd::Slapd::start(scim2ldap::demo::slapd::SlapdOptions {
        refint: false,
        ..Default::default()
    })
    .expect("slapd starts");
    let server = TestServer::start_on(slapd, |_| {}).await;
    let alice = server.create("/Users", user_body("alice", "A", "A")).await;
    server
        .create(
            "/Groups",
            json!({"displayName": "solo", "members": [{"value": alice}]}),
        )
        .await;
    let rename =
        |name: &str| json!({"Operations": [{"op": "replace", "path": "userName", "value": name}]});
    let path = format!("/Users/{alice}");
    server.patch(&path, rename("alicia")).await.expect(200);
    let members = |server: &TestServer| -> Vec<String> {
        values(&server.entry(&server.group_dn("solo")).unwrap(), "member")
            .iter()
            .map(|v| v.to_string())
            .collect()
    };
    assert_eq!(members(&server), [server.user_dn("alicia")]);

    server.patch(&path, rename("Alicia")).await.expect(200);
    let renamed = server.search(&server.slapd.people_dn(), "(uid=alicia)");
    assert_eq!(renamed.len(), 1);
    assert_eq!(
        renamed[0].0,
        server.user_dn("Alicia"),
        "the DN has the new case"
    );
    assert_eq!(values(&renamed[0].1, "uid"), ["Alicia"]);
    let member = members(&server);
    assert_eq!(member.len(), 1);
    assert!(member[0].eq_ignore_ascii_case(&server.user_dn("alicia")));
    let user = server.get(&path).await.expect(200);
    assert_eq!(user["userName"], "Alicia");
}

/// Adopting existing POSIX accounts and groups keeps their numbers (they own files); the cache
/// records them, so later writes and reconciliation keep them too.
#[tokio::test(flavor = "multi_thread")]
async fn adopted_posix_entries_keep_their_numbers() {
    let mut server = TestServer::start_with(|text| {
        posix_accounts_and_groups(text, 20999);
        text.push_str("\n[reconcile]\nat_startup = false\n");
    })
    .await;
    // A POSIX account made by hand: `cn` and `sn` are its name capitalised.
    let posix_account = |uid: &str, number: u32| {
        let name = format!("{}{}", uid[..1].to_uppercase(), &uid[1..]);
        server
            .slapd
            .ldapadd(&format!(
                "dn: {}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\nuid: {uid}\n\
                 cn: {name}\nsn: {name}\nuidNumber: {number}\ngidNumber: 100\nhomeDirectory: /home/{uid}\n",
                server.user_dn(uid)
            ))
            .unwrap();
    };
    let legacy_dn = server.user_dn("legacy");
    posix_account("legacy", 1234);
    let ops_dn = server.group_dn("ops");
    server
        .slapd
        .ldapadd(&format!(
            "dn: {ops_dn}\nobjectClass: posixGroup\ncn: ops\ngidNumber: 4321\n"
        ))
        .unwrap();
    let id = server
        .create("/Users", user_body("legacy", "Leg", "Acy"))
        .await;
    // The number attribute of an entry.
    let number = |server: &TestServer, dn: &str, attr: &str| -> Vec<String> {
        values(&server.entry(dn).unwrap(), attr)
            .into_iter()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(number(&server, &legacy_dn, "uidNumber"), ["1234"]);
    let group = server
        .create(
            "/Groups",
            json!({"displayName": "ops", "members": [{"value": id}]}),
        )
        .await;
    assert_eq!(number(&server, &ops_dn, "gidNumber"), ["4321"]);
    // A rename re-projects every attribute: the numbers stay.
    for (path, attr, value) in [
        (format!("/Users/{id}"), "userName", "legacy2"),
        (format!("/Groups/{group}"), "displayName", "ops2"),
    ] {
        let reply = server
            .patch(
                &path,
                ops(json!([{"op": "replace", "path": attr, "value": value}])),
            )
            .await;
        assert!(reply.status.is_success(), "{}", reply.body);
    }
    assert_eq!(
        number(&server, &server.user_dn("legacy2"), "uidNumber"),
        ["1234"]
    );
    assert_eq!(
        number(&server, &server.group_dn("ops2"), "gidNumber"),
        ["4321"]
    );
    // An adopted group the IdP pushes empty keeps none of the entry's members.
    let crew_dn = server.group_dn("crew");
    server
        .slapd
        .ldapadd(&format!(
            "dn: {crew_dn}\nobjectClass: posixGroup\ncn: crew\ngidNumber: 4400\nmemberUid: stranger\n"
        ))
        .unwrap();
    server
        .create("/Groups", json!({"displayName": "crew"}))
        .await;
    let crew = server.entry(&crew_dn).unwrap();
    assert!(values(&crew, "memberUid").is_empty(), "{crew:?}");
    assert_eq!(values(&crew, "gidNumber"), ["4400"]);
    let (code, report) = crate::reconcile::reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 0, "{report}");

    // An entry holding a number a provisioned user has already is not adopted: two accounts
    // would own the same files. Nothing of it changes.
    let twin_dn = server.user_dn("twin");
    posix_account("twin", 1234);
    let refused = server
        .post("/Users", user_body("twin", "Tw", "In"))
        .await
        .expect(409);
    assert_eq!(refused["scimType"], "uniqueness");
    let detail = refused["detail"].as_str().unwrap();
    assert!(
        detail.contains("uidNumber 1234") && !detail.contains("legacy2"),
        "{detail}"
    );
    let twin = server.entry(&twin_dn).unwrap();
    assert_eq!(values(&twin, "cn"), ["Twin"]);
    assert!(values(&twin, "scimId").is_empty());
    server.wait_for_intents(0).await;
    server.stop_daemon().await;
}

/// With suspended users out of their groups' entries, a group whose only remaining member in
/// the entry leaves gets the placeholder (the suspended member does not count), and a member
/// added to a group holding only suspended members replaces it.
#[tokio::test(flavor = "multi_thread")]
async fn suspended_members_do_not_keep_a_group_entry_valid() {
    let (server, ann, ben, gid) = ops_group_removing_suspended().await;
    let off = ops(json!([{"op": "replace", "path": "active", "value": false}]));
    server
        .patch(&format!("/Users/{ben}"), off)
        .await
        .expect(200);
    // Ann is still in the entry: no placeholder beside her (it used to come in with every
    // suspension and stay).
    assert_eq!(members_of(&server, "Ops"), [server.user_dn("ann")]);
    server
        .patch(
            &format!("/Groups/{gid}"),
            ops(json!([{"op": "remove", "path": format!("members[value eq \"{ann}\"]")}])),
        )
        .await
        .expect(204);
    assert_eq!(members_of(&server, "Ops"), [server.slapd.placeholder_dn()]);
    let cid = user(&server, "cid").await;
    server
        .patch(
            &format!("/Groups/{gid}"),
            ops(json!([{"op": "add", "path": "members", "value": [{"value": cid}]}])),
        )
        .await
        .expect(204);
    assert_eq!(members_of(&server, "Ops"), [server.user_dn("cid")]);
    server.delete(&format!("/Users/{cid}")).await.expect(204);
    assert_eq!(members_of(&server, "Ops"), [server.slapd.placeholder_dn()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_renamed_while_its_group_entry_is_gone_is_renamed_and_the_group_comes_back() {
    let server = TestServer::start_with(|text| {
        text.push_str("\n[reconcile]\nat_startup = false\ninterval = \"1s\"\n")
    })
    .await;
    let id = user(&server, "rhea").await;
    server
        .create(
            "/Groups",
            json!({"displayName": "crew", "members": [{"value": id}]}),
        )
        .await;
    let group_dn = server.group_dn("crew");
    // The group's entry deleted behind the daemon's back (or by a group delete under way).
    server
        .slapd
        .ldapmodify(&format!("dn: {group_dn}\nchangetype: delete\n"))
        .unwrap();
    server
        .patch(
            &format!("/Users/{id}"),
            json!({"Operations": [{"op": "replace", "path": "userName", "value": "rhea2"}]}),
        )
        .await
        .expect(200);
    assert!(server.entry(&server.user_dn("rhea2")).is_some());
    // Reconciliation puts the group back with the member as it is now.
    let new_dn = server.user_dn("rhea2");
    crate::support::until("the group back with its renamed member", || {
        server
            .entry(&group_dn)
            .is_some_and(|e| values(&e, "member") == [new_dn.as_str()])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_patch_with_if_none_match_is_refused_on_an_existing_group() {
    let server = TestServer::start().await;
    let id = user(&server, "nell").await;
    let group = server
        .create("/Groups", json!({"displayName": "Night"}))
        .await;
    let add = ops(json!([{"op": "add", "path": "members", "value": [{"value": id}]}]));
    for tag in ["*".to_string(), "W/\"1\"".to_string()] {
        let refused = server
            .call_with(
                reqwest::Method::PATCH,
                &format!("/Groups/{group}"),
                Some(add.clone()),
                |req| req.header("if-none-match", tag.clone()),
            )
            .await;
        assert_eq!(refused.status.as_u16(), 412, "{tag}: {}", refused.body);
    }
    assert!(!in_group(&server, "nell", "Night"));
}
