//! Users: every lifecycle the IdPs drive, checked in the directory after each step (search the
//! entry, bind as the user).

use serde_json::{json, Value};

use crate::support::{patient_directory, signal_slapd, user_body, values, TestServer};

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

fn with_password(mut body: Value, password: &str) -> Value {
    body["password"] = json!(password);
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn onelogin_lifecycle_create_put_suspend_reactivate_delete() {
    let server = TestServer::start().await;
    let dn = server.user_dn("jdoe");
    // Lookup before create.
    let found = server
        .get("/Users?filter=userName%20eq%20%22jdoe%22&")
        .await
        .expect(200);
    assert_eq!(found["totalResults"], 0);
    // OneLogin's legacy URNs, emails as one object, enterprise attributes under the short URN.
    let body = json!({
        "schemas": ["urn:scim:schemas:core:2.0", "urn:scim:schemas:extension:enterprise:2.0"],
        "userName": "jdoe",
        "name": {"givenName": "John", "familyName": " Doe"},
        "emails": {"value": "jdoe@example.com", "type": "work", "primary": true},
        "title": "Engineer",
        "password": "Initial-Pass-1",
        "urn:scim:schemas:extension:enterprise:2.0": {"department": "R&D", "employeeNumber": "42", "manager": {"managerId": ""}},
    });
    let created = server.post("/Users", body.clone()).await.expect(201);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["meta"]["resourceType"], "User");
    assert!(created.get("password").is_none());
    let entry = server.entry(&dn).expect("entry created");
    assert_eq!(values(&entry, "givenName"), ["John"]);
    assert_eq!(values(&entry, "sn"), [" Doe"]);
    assert_eq!(values(&entry, "cn"), ["John  Doe"]);
    assert_eq!(values(&entry, "mail"), ["jdoe@example.com"]);
    assert_eq!(values(&entry, "title"), ["Engineer"]);
    assert_eq!(values(&entry, "departmentNumber"), ["R&D"]);
    assert_eq!(values(&entry, "employeeNumber"), ["42"]);
    assert_eq!(values(&entry, "scimId"), [id.as_str()]);
    assert!(server.can_bind(&dn, "Initial-Pass-1"));

    // Full PUT with a changed title: visible in the directory; password untouched.
    let mut update = body.clone();
    update["title"] = json!("Staff Engineer");
    update.as_object_mut().unwrap().remove("password");
    let updated = server
        .put(&format!("/Users/{id}?"), update.clone())
        .await
        .expect(200);
    assert_eq!(updated["title"], "Staff Engineer");
    assert_eq!(
        values(&server.entry(&dn).unwrap(), "title"),
        ["Staff Engineer"]
    );
    assert!(server.can_bind(&dn, "Initial-Pass-1"));

    // Suspend: PUT with active false (and as the string some templates render).
    for inactive in [json!(false), json!("false")] {
        let mut suspend = update.clone();
        suspend["active"] = inactive;
        let suspended = server
            .put(&format!("/Users/{id}"), suspend)
            .await
            .expect(200);
        assert_eq!(suspended["active"], false);
        assert!(
            !server.can_bind(&dn, "Initial-Pass-1"),
            "a suspended user cannot bind"
        );
        assert_eq!(
            values(&server.entry(&dn).unwrap(), "pwdAccountLockedTime"),
            ["000001010000Z"]
        );
        // Still readable and listable.
        let listed = server
            .get("/Users?filter=active eq false")
            .await
            .expect(200);
        assert_eq!(listed["totalResults"], 1);
    }

    // A PUT without `active` leaves it as it is.
    server
        .put(&format!("/Users/{id}"), update.clone())
        .await
        .expect(200);
    assert!(!server.can_bind(&dn, "Initial-Pass-1"));

    // Reactivate.
    let mut reactivate = update.clone();
    reactivate["active"] = json!(true);
    server
        .put(&format!("/Users/{id}"), reactivate)
        .await
        .expect(200);
    assert!(server.can_bind(&dn, "Initial-Pass-1"));
    assert!(values(&server.entry(&dn).unwrap(), "pwdAccountLockedTime").is_empty());

    // Delete.
    server.delete(&format!("/Users/{id}")).await.expect(204);
    assert!(server.entry(&dn).is_none());
    server.get(&format!("/Users/{id}")).await.expect(404);
    server.delete(&format!("/Users/{id}")).await.expect(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn okta_create_with_password_and_pathless_deactivate() {
    let server = TestServer::start().await;
    let dn = server.user_dn("okta.user@example.com");
    let created = server
        .post(
            "/Users",
            with_password(
                user_body("okta.user@example.com", "Okta", "User"),
                "Okta-Pass-1",
            ),
        )
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap();
    assert!(server.can_bind(&dn, "Okta-Pass-1"));
    let patch = |active: bool| {
        json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "value": {"active": active}}],
        })
    };
    let patched = server
        .patch(&format!("/Users/{id}"), patch(false))
        .await
        .expect(200);
    assert_eq!(patched["active"], false);
    assert!(!server.can_bind(&dn, "Okta-Pass-1"));
    server
        .patch(&format!("/Users/{id}"), patch(true))
        .await
        .expect(200);
    assert!(server.can_bind(&dn, "Okta-Pass-1"));
    // Okta changes a password with PATCH.
    let password = json!({"Operations": [{"op": "replace", "value": {"password": "Okta-Pass-2"}}]});
    let reply = server
        .patch(&format!("/Users/{id}"), password)
        .await
        .expect(200);
    assert!(reply.get("password").is_none());
    assert!(server.can_bind(&dn, "Okta-Pass-2"));
    assert!(!server.can_bind(&dn, "Okta-Pass-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn entra_patch_with_capitalised_ops_string_booleans_and_value_paths() {
    let server = TestServer::start().await;
    let dn = server.user_dn("entra.user");
    let created = server
        .post(
            "/Users",
            with_password(user_body("entra.user", "Entra", "User"), "Entra-Pass-1"),
        )
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap();
    let patch = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [
            {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "new.mail@example.com"},
            {"op": "Replace", "path": "name.familyName", "value": "Userson"},
            {"op": "Add", "path": format!("{ENTERPRISE}:department"), "value": "Sales"},
            {"op": "Add", "path": "phoneNumbers[type eq \"mobile\"].value", "value": "+1 555 0100"},
        ],
    });
    let patched = server
        .patch(&format!("/Users/{id}"), patch)
        .await
        .expect(200);
    assert_eq!(patched["emails"][0]["value"], "new.mail@example.com");
    let entry = server.entry(&dn).unwrap();
    assert_eq!(values(&entry, "mail"), ["new.mail@example.com"]);
    assert_eq!(values(&entry, "sn"), ["Userson"]);
    assert_eq!(values(&entry, "departmentNumber"), ["Sales"]);
    assert_eq!(values(&entry, "mobile"), ["+1 555 0100"]);

    let disable = json!({"Operations": [{"op": "Replace", "path": "active", "value": "False"}]});
    let patched = server
        .patch(&format!("/Users/{id}"), disable)
        .await
        .expect(200);
    assert_eq!(patched["active"], false);
    assert!(!server.can_bind(&dn, "Entra-Pass-1"));
    // The flag's form: one path-less replace with dotted and URN keys.
    let flagged = json!({"Operations": [{"op": "replace", "value": {
        "active": true,
        "name.givenName": "Entrada",
        format!("{ENTERPRISE}:employeeNumber"): "7",
    }}]});
    server
        .patch(&format!("/Users/{id}"), flagged)
        .await
        .expect(200);
    let entry = server.entry(&dn).unwrap();
    assert_eq!(values(&entry, "givenName"), ["Entrada"]);
    assert_eq!(values(&entry, "employeeNumber"), ["7"]);
    assert!(server.can_bind(&dn, "Entra-Pass-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn usernames_are_unique_ignoring_case_and_filters_ignore_case() {
    let server = TestServer::start().await;
    server
        .post("/Users", user_body("Alice", "Alice", "A"))
        .await
        .expect(201);
    let conflict = server
        .post("/Users", user_body("alice", "Alice", "B"))
        .await
        .expect(409);
    assert_eq!(conflict["scimType"], "uniqueness");
    let found = server
        .get("/Users?filter=userName eq \"ALICE\"")
        .await
        .expect(200);
    assert_eq!(found["totalResults"], 1);
    assert_eq!(
        server
            .search(&server.slapd.people_dn(), "(uid=alice)")
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_requests_are_refused_and_write_nothing() {
    let server = TestServer::start().await;
    let cases = [
        (json!({"name": {"givenName": "No"}}), "invalidValue"),
        (json!({"userName": 42.5, "active": "maybe"}), "invalidValue"),
        (
            json!({"userName": "typed", "active": "maybe"}),
            "invalidValue",
        ),
        (json!({"userName": "typed", "emails": [42]}), "invalidValue"),
        (
            json!({"userName": "typed", "name": "not an object"}),
            "invalidValue",
        ),
        (
            json!({"schemas": ["urn:example:custom:1.0"], "userName": "urn"}),
            "invalidValue",
        ),
        (
            json!({"userName": "ext", "urn:example:custom:1.0": {"x": 1}}),
            "invalidValue",
        ),
        (json!({"userName": "nul\u{0}byte"}), "invalidValue"),
    ];
    for (body, scim_type) in cases {
        let error = server.post("/Users", body.clone()).await.expect(400);
        assert_eq!(error["scimType"], scim_type, "{body}");
    }
    let raw = server
        .call_with(reqwest::Method::POST, "/Users", None, |r| {
            r.header("content-type", "application/json")
                .body("{not json")
        })
        .await
        .expect(400);
    assert_eq!(raw["scimType"], "invalidSyntax");
    assert_eq!(server.get("/Users").await.expect(200)["totalResults"], 0);
    assert!(server
        .search(&server.slapd.people_dn(), "(objectClass=inetOrgPerson)")
        .is_empty());

    // Unknown attributes inside a known schema are ignored (OneLogin sends extras).
    let created = server
        .post("/Users", json!({"userName": "extra", "nickName2": "x", "urn:scim:schemas:extension:enterprise:2.0": {"manager": {"managerId": "m-1"}}}))
        .await
        .expect(201);
    assert!(created.get("nickName2").is_none());
    // A manager id that names no provisioned user writes no `manager`.
    let extra = server.entry(&server.user_dn("extra")).expect("created");
    assert!(values(&extra, "manager").is_empty(), "{extra:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dn_and_filter_metacharacters_in_usernames_stay_values() {
    let server = TestServer::start().await;
    let names = [
        "a,ou=admins",
        "x)(uid=*",
        "#lead",
        " trailing ",
        "\"q\"",
        "back\\slash",
        "jürgen",
        "semi;colon+plus<>",
    ];
    for name in names {
        // No mail here: `mail` is IA5String, and a non-ASCII address is the directory's to refuse.
        let created = server
            .post(
                "/Users",
                json!({"userName": name, "name": {"familyName": "Char"}}),
            )
            .await;
        let created = created.expect(201);
        assert_eq!(created["userName"], name);
        let found = server
            .get(&format!(
                "/Users?filter={}",
                urlencode(&format!("userName eq {}", json!(name)))
            ))
            .await
            .expect(200);
        assert_eq!(found["totalResults"], 1, "{name}");
    }
    let entries = server.search(&server.slapd.people_dn(), "(objectClass=inetOrgPerson)");
    assert_eq!(entries.len(), names.len());
    for (dn, attrs) in &entries {
        assert!(
            dn.ends_with(&format!(",{}", server.slapd.people_dn())),
            "{dn}"
        );
        assert_eq!(
            dn.matches("ou=").count(),
            1,
            "one level below ou=people: {dn}"
        );
        assert!(names.contains(&values(attrs, "uid")[0]), "{dn}");
    }
    assert!(server
        .search(server.slapd.suffix(), "(ou=admins)")
        .is_empty());
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_username_change_renames_the_entry() {
    let server = TestServer::start().await;
    let created = server
        .post(
            "/Users",
            with_password(user_body("old.name", "Re", "Name"), "Rename-1"),
        )
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap();
    let patch = json!({"Operations": [{"op": "replace", "path": "userName", "value": "new.name"}]});
    server
        .patch(&format!("/Users/{id}"), patch)
        .await
        .expect(200);
    assert!(server.entry(&server.user_dn("old.name")).is_none());
    let entry = server.entry(&server.user_dn("new.name")).expect("renamed");
    assert_eq!(values(&entry, "uid"), ["new.name"]);
    assert_eq!(values(&entry, "scimId"), [id]);
    assert!(server.can_bind(&server.user_dn("new.name"), "Rename-1"));
}

/// A rename whose entry is gone (deleted behind scim2ldap's back, or by an earlier try) is
/// done only if the entry at the new name is this user's: a foreign entry there is not taken
/// over (it used to get the user's attributes and SCIM id).
#[tokio::test(flavor = "multi_thread")]
async fn a_rename_never_takes_over_a_foreign_entry_at_the_new_name() {
    // Without the uniqueness overlay, which would refuse the rename before slapd finds the
    // entry gone.
    let slapd = scim2ldap::demo::slapd::Slapd::start(scim2ldap::demo::slapd::SlapdOptions {
        unique: false,
        ..Default::default()
    })
    .expect("slapd starts");
    let server = TestServer::start_on(slapd, |text| {
        text.push_str("\n[reconcile]\nat_startup = false\n");
    })
    .await;
    let id = server
        .create("/Users", user_body("ren.old", "Re", "Old"))
        .await;
    let foreign_dn = server.user_dn("ren.new");
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {}\nchangetype: delete\n\ndn: {foreign_dn}\nchangetype: add\n\
             objectClass: inetOrgPerson\nuid: ren.new\ncn: Foreign\nsn: Foreign\n",
            server.user_dn("ren.old")
        ))
        .unwrap();
    let patch = json!({"Operations": [{"op": "replace", "path": "userName", "value": "ren.new"}]});
    let refused = server.patch(&format!("/Users/{id}"), patch).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("taken in the directory by another entry than this resource's"),
        "{detail}"
    );
    let foreign = server.entry(&foreign_dn).unwrap();
    assert_eq!(values(&foreign, "cn"), ["Foreign"]);
    assert!(values(&foreign, "scimId").is_empty());
    let user = server.get(&format!("/Users/{id}")).await.expect(200);
    assert_eq!(user["userName"], "ren.old");
}

/// With `rdn_attribute = "cn"` the entry is named by the user name in `cn`, `uid` still holds
/// it for applications that look accounts up by `uid`, and a user name change renames it.
#[tokio::test(flavor = "multi_thread")]
async fn entries_named_by_cn_keep_uid_and_follow_renames() {
    let server = TestServer::start_with(|text| {
        *text = text.replace("[users]\n", "[users]\nrdn_attribute = \"cn\"\n");
    })
    .await;
    let dn = |name: &str| format!("cn={name},{}", server.slapd.people_dn());
    let created = server
        .post(
            "/Users",
            with_password(user_body("c.name", "Cee", "Name"), "Named-by-cn-1"),
        )
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap();
    let entry = server.entry(&dn("c.name")).expect("entry named by cn");
    assert_eq!(values(&entry, "cn"), ["c.name"]);
    assert_eq!(values(&entry, "uid"), ["c.name"]);
    assert!(server.can_bind(&dn("c.name"), "Named-by-cn-1"));
    let patch = json!({"Operations": [{"op": "replace", "path": "userName", "value": "d.name"}]});
    server
        .patch(&format!("/Users/{id}"), patch)
        .await
        .expect(200);
    assert!(server.entry(&dn("c.name")).is_none());
    let entry = server.entry(&dn("d.name")).expect("renamed");
    assert_eq!(values(&entry, "cn"), ["d.name"]);
    assert_eq!(values(&entry, "uid"), ["d.name"]);
    assert!(server.can_bind(&dn("d.name"), "Named-by-cn-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn etags_guard_writes_and_reads() {
    let server = TestServer::start().await;
    let created = server.post("/Users", user_body("etag", "E", "Tag")).await;
    let etag = created.header("etag").unwrap();
    let id = created.expect(201)["id"].as_str().unwrap().to_string();
    let not_modified = server
        .call_with(reqwest::Method::GET, &format!("/Users/{id}"), None, |r| {
            r.header("if-none-match", etag.clone())
        })
        .await;
    assert_eq!(not_modified.status.as_u16(), 304);
    // HEAD: the headers of a GET, no body.
    let head = server
        .call_with(reqwest::Method::HEAD, &format!("/Users/{id}"), None, |r| r)
        .await;
    assert_eq!(head.status.as_u16(), 200);
    assert_eq!(head.header("etag").as_deref(), Some(etag.as_str()));
    assert_eq!(head.body, Value::Null);
    let patch = json!({"Operations": [{"op": "replace", "path": "title", "value": "T"}]});
    let stale = server
        .call_with(
            reqwest::Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch.clone()),
            |r| r.header("if-match", "W/\"999\""),
        )
        .await;
    stale.expect(412);
    // `If-None-Match: *` writes only what does not exist yet (RFC 9110 §13.1.2).
    let none_match = server
        .call_with(
            reqwest::Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch.clone()),
            |r| r.header("if-none-match", "*"),
        )
        .await;
    none_match.expect(412);
    // A resource that does not exist is 404 whatever the conditions (RFC 9110 §13.2.1): a
    // retried DELETE whose first try landed is not told its precondition failed.
    let missing = server
        .call_with(
            reqwest::Method::DELETE,
            "/Users/00000000-0000-4000-8000-000000000000",
            None,
            |r| r.header("if-match", "*"),
        )
        .await;
    missing.expect(404);
    assert!(values(&server.entry(&server.user_dn("etag")).unwrap(), "title").is_empty());
    let fresh = server
        .call_with(
            reqwest::Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch),
            |r| r.header("if-match", etag.clone()),
        )
        .await;
    assert_eq!(fresh.header("etag").as_deref(), Some("W/\"2\""));
    fresh.expect(200);
    assert_eq!(
        values(&server.entry(&server.user_dn("etag")).unwrap(), "title"),
        ["T"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_page_sort_and_project() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for (name, title) in [("carol", "b"), ("alice", "c"), ("bob", "a")] {
        let mut body = user_body(name, name, "X");
        body["title"] = json!(title);
        ids.push(server.create("/Users", body).await);
    }
    let user_names = |list: &Value| -> Vec<String> {
        list["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["userName"].as_str().unwrap().to_string())
            .collect()
    };
    let page = server.get("/Users?startIndex=1&count=2").await.expect(200);
    assert_eq!(page["totalResults"], 3);
    assert_eq!(page["itemsPerPage"], 2);
    // Pages follow creation order, so an import walking them sees everyone once.
    let second = server.get("/Users?startIndex=2&count=2").await.expect(200);
    assert_eq!(user_names(&second), ["alice", "bob"]);
    assert_eq!(second["startIndex"], 2);
    let sorted = server
        .get("/Users?sortBy=userName&sortOrder=descending&attributes=userName")
        .await
        .expect(200);
    assert_eq!(user_names(&sorted), ["carol", "bob", "alice"]);
    let first = &sorted["Resources"][0];
    assert!(first.get("title").is_none() && first.get("id").is_some());
    let filtered = server
        .get("/Users?filter=title%20eq%20%22a%22%20or%20(userName%20sw%20%22al%22%20and%20not%20(title%20eq%20%22z%22))")
        .await
        .expect(200);
    assert_eq!(filtered["totalResults"], 2);
    // A filter no index answers, paged: every match counts, the page holds the second in
    // creation order, and it carries the user's groups (read for the page only).
    let alice = &ids[1];
    let group = server
        .post(
            "/Groups",
            json!({"displayName": "Readers", "members": [{"value": alice}]}),
        )
        .await
        .expect(201);
    let page = server
        .get("/Users?filter=title%20pr&startIndex=2&count=1")
        .await
        .expect(200);
    assert_eq!(page["totalResults"], 3, "{page}");
    assert_eq!(page["itemsPerPage"], 1, "{page}");
    assert_eq!(page["Resources"][0]["userName"], "alice", "{page}");
    assert_eq!(
        page["Resources"][0]["groups"][0]["value"], group["id"],
        "{page}"
    );
    let past_the_end = server
        .get("/Users?filter=title%20pr&startIndex=4&count=2")
        .await
        .expect(200);
    assert_eq!(past_the_end["totalResults"], 3);
    assert_eq!(past_the_end["Resources"], json!([]));
    let search = server
        .post("/Users/.search", json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": "userName eq \"bob\"", "excludedAttributes": ["emails"]}))
        .await
        .expect(200);
    assert_eq!(search["totalResults"], 1);
    assert!(search["Resources"][0].get("emails").is_none());
    let excluded = server
        .get("/Users?excludedAttributes=name,emails&count=1")
        .await
        .expect(200);
    assert!(excluded["Resources"][0].get("name").is_none());
    server
        .get("/Users?filter=userName%20zz%20%22x%22")
        .await
        .expect(400);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_existing_entry_is_adopted_or_refused() {
    let server = TestServer::start().await;
    let dn = server.user_dn("legacy");
    server
        .slapd
        .ldapadd(&format!("dn: {dn}\nobjectClass: inetOrgPerson\nuid: legacy\ncn: Old Legacy\nsn: Legacy\ntitle: Old\n"))
        .unwrap();
    let mut body = user_body("legacy", "New", "Legacy");
    body["title"] = json!("Adopted");
    let created = server.post("/Users", body).await.expect(201);
    let entry = server.entry(&dn).unwrap();
    assert_eq!(values(&entry, "title"), ["Adopted"]);
    assert_eq!(values(&entry, "scimId"), [created["id"].as_str().unwrap()]);

    let strict = TestServer::start_with(|text| {
        *text = text.replace("[users]\n", "[users]\non_existing = \"conflict\"\n")
    })
    .await;
    let dn = strict.user_dn("legacy");
    strict
        .slapd
        .ldapadd(&format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: legacy\ncn: L\nsn: L\n"
        ))
        .unwrap();
    strict
        .post("/Users", user_body("legacy", "New", "Legacy"))
        .await
        .expect(409);
    assert_eq!(strict.get("/Users").await.expect(200)["totalResults"], 0);
    // The existing entry is left as it was.
    let kept = strict.entry(&dn).expect("kept");
    assert_eq!(values(&kept, "cn"), ["L"]);
    assert!(values(&kept, "scimId").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn deactivation_by_attribute_and_by_move() {
    let by_attr = TestServer::start_with(|text| {
        *text = text.replace(
            "[users]\n",
            "[users]\ndeactivate = \"attribute\"\ndeactivate_attribute = \"description\"\ndeactivate_value = \"disabled by scim2ldap\"\n",
        )
    })
    .await;
    let id = by_attr
        .post("/Users", user_body("attr.user", "A", "U"))
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let off = json!({"Operations": [{"op": "replace", "path": "active", "value": false}]});
    let on = json!({"Operations": [{"op": "replace", "path": "active", "value": true}]});
    by_attr
        .patch(&format!("/Users/{id}"), off.clone())
        .await
        .expect(200);
    let entry = by_attr.entry(&by_attr.user_dn("attr.user")).unwrap();
    assert_eq!(values(&entry, "description"), ["disabled by scim2ldap"]);
    assert!(values(&entry, "pwdAccountLockedTime").is_empty());
    by_attr
        .patch(&format!("/Users/{id}"), on.clone())
        .await
        .expect(200);
    assert!(values(
        &by_attr.entry(&by_attr.user_dn("attr.user")).unwrap(),
        "description"
    )
    .is_empty());

    let by_move = TestServer::start_with(|text| {
        *text = text.replace("[users]\n", "[users]\ndeactivate = \"move\"\n")
    })
    .await;
    let created = by_move
        .post(
            "/Users",
            with_password(user_body("moved", "M", "V"), "Move-Pass-1"),
        )
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap();
    let enabled_dn = by_move.user_dn("moved");
    let disabled_dn = format!("uid=moved,{}", by_move.slapd.disabled_dn());
    by_move
        .patch(&format!("/Users/{id}"), off)
        .await
        .expect(200);
    assert!(by_move.entry(&enabled_dn).is_none());
    assert!(by_move.entry(&disabled_dn).is_some());
    // An application that finds accounts under the users' base no longer finds it.
    assert!(by_move
        .search(&by_move.slapd.people_dn(), "(uid=moved)")
        .is_empty());
    by_move.patch(&format!("/Users/{id}"), on).await.expect(200);
    assert!(by_move.entry(&disabled_dn).is_none());
    assert!(by_move.can_bind(&enabled_dn, "Move-Pass-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_can_disable_instead() {
    let server = TestServer::start_with(|text| {
        *text = text.replace("[users]\n", "[users]\non_delete = \"disable\"\n")
    })
    .await;
    let id = server
        .post(
            "/Users",
            with_password(user_body("leaver", "L", "Eaver"), "Leaver-Pass-1"),
        )
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.delete(&format!("/Users/{id}")).await.expect(204);
    server.get(&format!("/Users/{id}")).await.expect(404);
    let dn = server.user_dn("leaver");
    let kept = server.entry(&dn).expect("kept");
    assert_eq!(values(&kept, "pwdAccountLockedTime"), ["000001010000Z"]);
    // No longer a SCIM resource: no SCIM id, and not an orphan to report at every run.
    assert!(values(&kept, "scimId").is_empty(), "{kept:?}");
    assert!(!server.can_bind(&dn, "Leaver-Pass-1"));
    let (code, report) = crate::reconcile::reconcile_cli(&server, &["--dry-run"], &[]);
    assert_eq!(code, 0, "{report}");
}

/// A user deleted with `on_delete = "disable"` and granted again (a OneLogin re-grant, an Entra
/// re-assignment: GET by filter finds nothing, then POST) gets its old account back, enabled:
/// the lock goes, a disabled entry moved aside comes back, and attributes the new resource
/// leaves out do not stay from the old one.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_deleted_as_disabled_comes_back_enabled_when_granted_again() {
    for deactivate in ["lock", "move"] {
        let server = TestServer::start_with(|text| {
            *text = text.replace(
                "[users]\n",
                &format!("[users]\non_delete = \"disable\"\ndeactivate = \"{deactivate}\"\n"),
            )
        })
        .await;
        let dn = server.user_dn("regrant");
        let mut body = with_password(user_body("regrant", "Re", "Grant"), "Regrant-Pass-1");
        body["title"] = json!("Old title");
        let id = server.create("/Users", body).await;
        let uuid = values(&server.entry(&dn).unwrap(), "entryUUID")[0].to_string();
        server.delete(&format!("/Users/{id}")).await.expect(204);
        assert!(!server.can_bind(&dn, "Regrant-Pass-1"), "{deactivate}");

        let again = with_password(user_body("regrant", "Re", "Grant"), "Regrant-Pass-2");
        let new_id = server.create("/Users", again).await;
        let entry = server
            .entry(&dn)
            .unwrap_or_else(|| panic!("{deactivate}: no entry at {dn}"));
        assert_eq!(
            values(&entry, "entryUUID"),
            [uuid.as_str()],
            "{deactivate}: not the old account"
        );
        assert!(
            values(&entry, "pwdAccountLockedTime").is_empty(),
            "{deactivate}"
        );
        assert!(values(&entry, "title").is_empty(), "{deactivate}");
        assert!(server.can_bind(&dn, "Regrant-Pass-2"), "{deactivate}");
        assert_eq!(
            server.search(server.slapd.suffix(), "(uid=regrant)").len(),
            1
        );
        let user = server.get(&format!("/Users/{new_id}")).await.expect(200);
        assert_eq!(user["active"], true);
        let (code, report) = crate::reconcile::reconcile_cli(&server, &["--dry-run"], &[]);
        assert_eq!(code, 0, "{deactivate}: {report}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn manager_is_written_as_the_managers_dn() {
    let server = TestServer::start().await;
    let boss = server
        .post("/Users", user_body("boss", "B", "Oss"))
        .await
        .expect(201);
    let mut body = user_body("report", "R", "Eport");
    body[ENTERPRISE] = json!({"manager": {"value": boss["id"]}});
    server.post("/Users", body).await.expect(201);
    assert_eq!(
        values(&server.entry(&server.user_dn("report")).unwrap(), "manager"),
        [server.user_dn("boss")]
    );
}

/// Stops the in-process daemon and runs one in its own process with the test hook that ends it
/// between the directory write and the cache commit; sends `patch` to user `id` there and
/// checks that it was not acknowledged and that the process ended at the hook. The directory
/// then holds the change and the cache only its intent.
async fn crash_after_directory_write(server: &mut TestServer, id: &str, patch: Value) {
    server.stop_daemon().await;
    let mut crashing = crate::daemon::Daemon::spawn(
        &server.config_path,
        crate::daemon::free_addr(),
        &[("SCIM2LDAP_TEST_CRASH_AFTER_DIRECTORY", "1")],
        std::process::Stdio::null(),
    );
    crashing.wait_ready().await;
    let reply = reqwest::Client::new()
        .patch(format!("{}/Users/{id}", crashing.base))
        .bearer_auth(&server.token)
        .json(&patch)
        .send()
        .await;
    assert!(
        reply.is_err() || reply.unwrap().status().is_server_error(),
        "no reply was acknowledged"
    );
    assert_eq!(crashing.child.wait().unwrap().code(), Some(86));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_directory_write_and_commit_is_replayed() {
    let mut server = TestServer::start().await;
    let created = server
        .post(
            "/Users",
            with_password(user_body("crash", "C", "Rash"), "Crash-Pass-1"),
        )
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap().to_string();
    let dn = server.user_dn("crash");
    let deactivate = json!({"Operations": [{"op": "replace", "path": "active", "value": false}]});
    crash_after_directory_write(&mut server, &id, deactivate.clone()).await;
    // The directory has the change; the cache does not have it committed yet.
    assert!(!server.can_bind(&dn, "Crash-Pass-1"));

    server.launch().await;
    let user = server.get(&format!("/Users/{id}")).await.expect(200);
    assert_eq!(
        user["active"], false,
        "the intent was replayed into the cache"
    );
    // The IdP retries the same request: it succeeds.
    server
        .patch(&format!("/Users/{id}"), deactivate)
        .await
        .expect(200);
    assert!(!server.can_bind(&dn, "Crash-Pass-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unfinished_write_the_directory_now_refuses_does_not_stop_the_start() {
    let mut server = TestServer::start().await;
    let created = server
        .post("/Users", user_body("gone", "G", "One"))
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap().to_string();
    let dn = server.user_dn("gone");
    let retitle = json!({"Operations": [{"op": "replace", "path": "title", "value": "Left"}]});
    crash_after_directory_write(&mut server, &id, retitle).await;
    assert_eq!(
        values(&server.entry(&dn).unwrap(), "title"),
        ["Left"],
        "the directory has the change"
    );
    // While the daemon is down, an administrator deletes the entry: replaying the modify now
    // fails with noSuchObject, for good.
    server
        .slapd
        .ldapmodify(&format!("dn: {dn}\nchangetype: delete\n"))
        .unwrap();

    // The daemon starts all the same (it used to refuse to, on every restart): the refused
    // write is dropped, so the cache keeps what the IdP was last told, and nothing is pending.
    server.launch().await;
    server.wait_for_intents(0).await;
    let user = server.get(&format!("/Users/{id}")).await.expect(200);
    assert_eq!(user["userName"], "gone");
    assert!(
        user.get("title").is_none(),
        "the dropped write is not cached: {user}"
    );
    // The start-up reconciliation puts the entry back as the cache has it, and the IdP's next
    // write lands on it.
    let found = server.wait_for_entry(&dn).await;
    assert!(values(&found, "title").is_empty(), "{found:?}");
    let mut body = user_body("gone", "G", "One");
    body["title"] = json!("Back");
    server.put(&format!("/Users/{id}"), body).await.expect(200);
    assert_eq!(values(&server.entry(&dn).unwrap(), "title"), ["Back"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn passwords_can_be_hashed_locally() {
    let server = TestServer::start_with(|text| {
        *text = text.replace("[users]\n", "[users]\npassword_hashing = \"ssha\"\n")
    })
    .await;
    let created = server
        .post(
            "/Users",
            with_password(user_body("hashed", "H", "Ashed"), "Hashed-Pass-1"),
        )
        .await
        .expect(201);
    let dn = server.user_dn("hashed");
    let stored = server.entry(&dn).unwrap();
    assert!(
        values(&stored, "userPassword")[0].starts_with("{SSHA}"),
        "{stored:?}"
    );
    assert!(server.can_bind(&dn, "Hashed-Pass-1"));
    let change =
        json!({"Operations": [{"op": "replace", "path": "password", "value": "Hashed-Pass-2"}]});
    server
        .patch(
            &format!("/Users/{}", created["id"].as_str().unwrap()),
            change,
        )
        .await
        .expect(200);
    assert!(server.can_bind(&dn, "Hashed-Pass-2"));
    assert!(!server.can_bind(&dn, "Hashed-Pass-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_after_a_rename_puts_the_entry_back() {
    let server = TestServer::start().await;
    let mut body = user_body("mover", "M", "Over");
    body["phoneNumbers"] = json!([{"value": "+1 555 0100", "type": "work"}]);
    let created = server.post("/Users", body).await.expect(201);
    let id = created["id"].as_str().unwrap().to_string();
    let old_dn = server.user_dn("mover");
    let new_dn = server.user_dn("moved");
    // A new userName (a rename, which the directory makes first) with a phone number its
    // Telephone Number syntax refuses ('#' is not printable): the modify after the rename fails.
    let mut body = user_body("moved", "M", "Over");
    body["phoneNumbers"] = json!([{"value": "+1 555 0100 #2", "type": "work"}]);
    let refused = server.put(&format!("/Users/{id}"), body).await.expect(400);
    assert_eq!(refused["scimType"], "invalidValue", "{refused}");
    // The detail names the attribute the directory refused, for the IdP's admin.
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("telephoneNumber"),
        "{refused}"
    );
    // The IdP was told nothing changed: the cache kept the old state, and the entry is put back
    // where it was, as it was, shortly after.
    let user = server.get(&format!("/Users/{id}")).await.expect(200);
    assert_eq!(user["userName"], "mover");
    let back = server.wait_for_entry(&old_dn).await;
    assert_eq!(values(&back, "telephoneNumber"), ["+1 555 0100"]);
    assert!(server.entry(&new_dn).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmapped_attribute_is_cached_and_a_rule_writes_it() {
    // Without a rule, the work address is kept and returned but written nowhere.
    let server = TestServer::start().await;
    let mut body = user_body("addr.user", "Ad", "Dress");
    body["addresses"] =
        json!([{"type": "work", "streetAddress": "1 Main St", "locality": "Springfield"}]);
    body["timezone"] = json!("Europe/Paris");
    let created = server.post("/Users", body.clone()).await.expect(201);
    assert_eq!(created["addresses"][0]["locality"], "Springfield");
    assert_eq!(created["timezone"], "Europe/Paris");
    let entry = server.entry(&server.user_dn("addr.user")).unwrap();
    assert!(values(&entry, "l").is_empty() && values(&entry, "street").is_empty());

    // The README's example rules, beside the defaults.
    let mapped = TestServer::start_with(|text| {
        text.push_str(
            "\n[users.attributes]\nl = 'addresses[type eq \"work\"].locality'\nstreet = 'addresses[type eq \"work\"].streetAddress'\n",
        )
    })
    .await;
    mapped.post("/Users", body).await.expect(201);
    let entry = mapped.entry(&mapped.user_dn("addr.user")).unwrap();
    assert_eq!(values(&entry, "l"), ["Springfield"]);
    assert_eq!(values(&entry, "street"), ["1 Main St"]);
    assert_eq!(
        values(&entry, "sn"),
        ["Dress"],
        "the default rules still apply"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn onelogin_managerid_and_a_plain_string_manager_become_the_managers_dn() {
    let server = TestServer::start().await;
    let boss = server
        .create("/Users", user_body("big.boss", "Big", "Boss"))
        .await;
    // OneLogin's template: the old enterprise URN, the id under `managerId`.
    let mut body = user_body("report.one", "Re", "Port");
    body["urn:scim:schemas:extension:enterprise:2.0"] =
        json!({"department": "QA", "manager": {"managerId": boss, "displayName": "Big Boss"}});
    server.post("/Users", body).await.expect(201);
    // A bare string where the schema has a complex attribute (seen from Entra).
    let mut body = user_body("report.two", "Re", "Port");
    body[ENTERPRISE] = json!({"manager": boss});
    server.post("/Users", body).await.expect(201);
    for report in ["report.one", "report.two"] {
        assert_eq!(
            values(&server.entry(&server.user_dn(report)).unwrap(), "manager"),
            [server.user_dn("big.boss")],
            "{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_whose_client_hangs_up_is_finished_all_the_same() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(patient_directory).await;
    let id = server
        .create("/Users", user_body("quitter", "Qu", "Itter"))
        .await;
    // The directory stops, so the write waits in it; the client then gives up and closes the
    // connection, as an IdP does when its timeout passes.
    signal_slapd(&server, "STOP");
    let body = json!({"Operations": [{"op": "replace", "path": "title", "value": "Gone Away"}]})
        .to_string();
    let authority = server.root.trim_start_matches("http://").to_string();
    let path = format!(
        "{}/Users/{id}",
        server.base.trim_start_matches(&server.root)
    );
    let mut client = tokio::net::TcpStream::connect(&authority).await.unwrap();
    client
        .write_all(
            format!(
                "PATCH {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/scim+json\r\nContent-Length: {}\r\n\r\n{body}",
                server.token,
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    server.wait_for_intents(1).await;
    drop(client);
    // Time for the server to see the connection close before the directory answers.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    signal_slapd(&server, "CONT");
    // The write is committed as well as applied: no intent is left to be replayed over later
    // writes, and the cache and the directory agree.
    server.wait_for_intents(0).await;
    let user = server.get(&format!("/Users/{id}")).await.expect(200);
    assert_eq!(user["title"], "Gone Away");
    assert_eq!(
        values(&server.entry(&server.user_dn("quitter")).unwrap(), "title"),
        ["Gone Away"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unfinished_write_that_later_writes_overtook_is_not_replayed_over_them() {
    let mut server = TestServer::start().await;
    let mut body = user_body("stale", "St", "Ale");
    body["title"] = json!("One");
    let id = server.create("/Users", body).await;
    let dn = server.user_dn("stale");
    let two = json!({"Operations": [{"op": "replace", "path": "title", "value": "Two"}]});
    crash_after_directory_write(&mut server, &id, two).await;
    // What a later write of the same user leaves when this one's commit was lost while the
    // daemon went on: the directory and the cache at a newer version.
    server
        .slapd
        .ldapmodify(&format!(
            "dn: {dn}\nchangetype: modify\nreplace: title\ntitle: Three\n"
        ))
        .unwrap();
    let cache = rusqlite::Connection::open(server.config_path.with_file_name("cache.db")).unwrap();
    let changed = cache
        .execute(
            "UPDATE resources SET version = 3, last_modified = '2030-01-01T00:00:00Z', \
             doc = json_set(doc, '$.title', 'Three') WHERE id = ?1",
            [&id],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(cache);

    server.launch().await;
    server.wait_for_intents(0).await;
    let user = server.get(&format!("/Users/{id}")).await.expect(200);
    assert_eq!(
        user["title"], "Three",
        "the later write stands in the cache"
    );
    assert_eq!(
        values(&server.entry(&dn).unwrap(), "title"),
        ["Three"],
        "and in the directory"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_the_directory_takes_for_another_users_never_takes_over_its_entry() {
    let server = TestServer::start().await;
    let alice = server
        .post(
            "/Users",
            with_password(user_body("alice", "Alice", "Original"), "Alice-Pass-1"),
        )
        .await
        .expect(201);
    let dn = server.user_dn("alice");
    // `alice ` differs from `alice` for the cache, but LDAP ignores the trailing space of a
    // uid: its add meets alice's entry, which users.on_existing = "adopt" would take over.
    let refused = server
        .post(
            "/Users",
            with_password(user_body("alice ", "Mallory", "Impostor"), "Mallory-Pass-1"),
        )
        .await;
    let body = refused.expect(409);
    assert_eq!(body["scimType"], "uniqueness", "{body}");
    let entry = server.entry(&dn).unwrap();
    assert_eq!(values(&entry, "sn"), ["Original"]);
    assert!(server.can_bind(&dn, "Alice-Pass-1"));
    assert!(!server.can_bind(&dn, "Mallory-Pass-1"));
    let list = server.get("/Users").await.expect(200);
    assert_eq!(list["totalResults"], 1, "{list}");
    assert_eq!(list["Resources"][0]["id"], alice["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mail_another_entry_has_is_a_uniqueness_conflict_from_the_directory() {
    // The cache knows no mail index: the directory's unique overlay refuses (result 19).
    let server = TestServer::start().await;
    server
        .create("/Users", user_body("first.mail", "F", "M"))
        .await;
    let mut body = user_body("second.mail", "S", "M");
    body["emails"] = json!([{"value": "first.mail@example.com", "type": "work", "primary": true}]);
    let refused = server.post("/Users", body).await.expect(409);
    assert_eq!(refused["scimType"], "uniqueness", "{refused}");
    assert!(server.entry(&server.user_dn("second.mail")).is_none());
    let list = server.get("/Users").await.expect(200);
    assert_eq!(list["totalResults"], 1);
}

/// `attributes` on a single resource: a value path names its attribute (as Microsoft's test
/// collection sends it), and a malformed one is refused, as on a list, before anything is
/// written.
#[tokio::test(flavor = "multi_thread")]
async fn projections_on_one_resource_are_checked() {
    let server = TestServer::start().await;
    let mut body = user_body("proj", "Pro", "Jection");
    body["emails"] = json!([{"value": "p@example.com", "type": "work"}]);
    let id = server.create("/Users", body).await;
    let work = server
        .get(&format!(
            "/Users/{id}?attributes=emails%5Btype%20eq%20%22work%22%5D"
        ))
        .await
        .expect(200);
    assert_eq!(work["emails"][0]["value"], "p@example.com");
    assert!(work.get("name").is_none(), "{work}");
    let bad = server
        .get(&format!("/Users/{id}?attributes=emails%5Btype%20eq%5D"))
        .await
        .expect(400);
    assert_eq!(bad["scimType"], "invalidPath");
    let refused = server
        .post(
            "/Users?excludedAttributes=%5B",
            user_body("other", "Ot", "Her"),
        )
        .await
        .expect(400);
    assert_eq!(refused["scimType"], "invalidPath");
    assert!(server.entry(&server.user_dn("other")).is_none());
}

/// Values equal under the directory's matching rule: those equal ignoring case go once; two
/// phone numbers the directory calls equal (telephoneNumberMatch ignores hyphens and spaces)
/// are refused with 400, not a server error, and nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn values_the_directory_calls_equal_are_sent_once_or_refused() {
    let server = TestServer::start().await;
    let mut body = user_body("twice", "Tw", "Ice");
    body["emails"] = json!([{"value": "Twice@example.com"}, {"value": "twice@EXAMPLE.com"}]);
    server.create("/Users", body).await;
    let entry = server.entry(&server.user_dn("twice")).unwrap();
    assert_eq!(values(&entry, "mail"), ["Twice@example.com"]);

    let mut body = user_body("phones", "Pho", "Nes");
    body["phoneNumbers"] = json!([
        {"value": "+1 555 0100", "type": "mobile"},
        {"value": "+1-555-0100", "type": "mobile"}
    ]);
    let refused = server.post("/Users", body).await.expect(400);
    assert_eq!(refused["scimType"], "invalidValue", "{refused}");
    assert!(server.entry(&server.user_dn("phones")).is_none());
}
