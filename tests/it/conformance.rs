//! Conformance fixes found by scim2-tester (scripts/conformance), each checked on the wire and
//! in the directory.

use serde_json::{json, Value};

use crate::support::{user_body, values, TestServer};

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

fn ops(operations: Value) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": operations,
    })
}

fn lists_enterprise(user: &Value) -> bool {
    user["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .any(|schema| schema == ENTERPRISE)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patch_path_naming_the_enterprise_extension_writes_its_whole_object() {
    // RFC 7644 §3.5.2 with `path` set to the extension URN: scim2-tester's add, replace and
    // remove checks of `urn:...:enterprise:2.0:User` got invalidPath before.
    let server = TestServer::start().await;
    let dn = server.user_dn("ext.user");
    let id = server
        .post("/Users", user_body("ext.user", "Ext", "User"))
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/Users/{id}");

    let added = server
        .patch(
            &path,
            ops(json!([{"op": "add", "path": ENTERPRISE, "value": {
                "schemas": [ENTERPRISE],
                "employeeNumber": "701984",
                "department": "Tour Operations",
            }}])),
        )
        .await
        .expect(200);
    assert_eq!(added[ENTERPRISE]["employeeNumber"], "701984");
    assert_eq!(added[ENTERPRISE]["department"], "Tour Operations");
    assert!(added[ENTERPRISE].get("schemas").is_none());
    assert!(lists_enterprise(&added));
    let entry = server.entry(&dn).unwrap();
    assert_eq!(values(&entry, "employeeNumber"), ["701984"]);
    assert_eq!(values(&entry, "departmentNumber"), ["Tour Operations"]);

    // replace merges like a complex attribute: employeeNumber stays.
    let replaced = server
        .patch(
            &path,
            ops(json!([{"op": "replace", "path": ENTERPRISE, "value": {"department": "Sales"}}])),
        )
        .await
        .expect(200);
    assert_eq!(replaced[ENTERPRISE]["employeeNumber"], "701984");
    assert_eq!(replaced[ENTERPRISE]["department"], "Sales");
    let entry = server.entry(&dn).unwrap();
    assert_eq!(values(&entry, "employeeNumber"), ["701984"]);
    assert_eq!(values(&entry, "departmentNumber"), ["Sales"]);

    server
        .patch(&path, ops(json!([{"op": "remove", "path": ENTERPRISE}])))
        .await
        .expect(200);
    let got = server.get(&path).await.expect(200);
    assert!(got.get(ENTERPRISE).is_none(), "{got}");
    assert!(!lists_enterprise(&got), "{got}");
    let entry = server.entry(&dn).unwrap();
    assert!(values(&entry, "employeeNumber").is_empty());
    assert!(values(&entry, "departmentNumber").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_active_is_unassigned_and_the_account_stays_enabled() {
    // RFC 7644 §3.5.2.2: after `remove active` the attribute is unassigned. It used to come
    // back as `true`, made up at rendering for every user without it.
    let server = TestServer::start().await;
    let dn = server.user_dn("act.user");
    let mut body = user_body("act.user", "Act", "User");
    body["password"] = json!("Act-Pass-1");
    let created = server.post("/Users", body).await.expect(201);
    let id = created["id"].as_str().unwrap();
    let path = format!("/Users/{id}");
    // A new account is enabled by default, and the default is stored: filters see it.
    assert_eq!(created["active"], true);
    let found = server
        .get("/Users?filter=active%20eq%20true")
        .await
        .expect(200);
    assert_eq!(found["totalResults"], 1, "{found}");

    server
        .patch(
            &path,
            ops(json!([{"op": "replace", "path": "active", "value": false}])),
        )
        .await
        .expect(200);
    assert!(!values(&server.entry(&dn).unwrap(), "pwdAccountLockedTime").is_empty());
    assert!(!server.can_bind(&dn, "Act-Pass-1"));

    let removed = server
        .patch(&path, ops(json!([{"op": "remove", "path": "active"}])))
        .await
        .expect(200);
    assert!(removed.get("active").is_none(), "{removed}");
    assert!(server.get(&path).await.expect(200).get("active").is_none());
    // Unassigned is not suspended: the lock is gone and the user can bind again.
    assert!(values(&server.entry(&dn).unwrap(), "pwdAccountLockedTime").is_empty());
    assert!(server.can_bind(&dn, "Act-Pass-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn member_display_is_read_only_because_only_the_member_id_is_kept() {
    // The Group schema called members.display immutable, so clients expected it back as
    // written; the membership table keeps only ids, and scim2-tester's members checks failed.
    let server = TestServer::start().await;
    let schema = server.get(&format!("/Schemas/{GROUP}")).await.expect(200);
    let members = schema["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|attr| attr["name"] == "members")
        .unwrap();
    let display = members["subAttributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|sub| sub["name"] == "display")
        .unwrap();
    assert_eq!(display["mutability"], "readOnly");

    // A client's display is still accepted, and ignored.
    let user_id = server
        .post("/Users", user_body("disp.user", "Disp", "User"))
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let group = server
        .post(
            "/Groups",
            json!({
                "schemas": [GROUP],
                "displayName": "Display Check",
                "members": [{"value": user_id, "display": "Someone Else"}],
            }),
        )
        .await
        .expect(201);
    assert_eq!(group["members"][0]["value"], user_id.as_str());
    assert!(group["members"][0].get("display").is_none(), "{group}");
    let entry = server.entry(&server.group_dn("Display Check")).unwrap();
    assert_eq!(values(&entry, "member"), [server.user_dn("disp.user")]);
}
