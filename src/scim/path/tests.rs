//! Unit tests of `scim::path`: table tests through one `check` helper.

use super::*;
use crate::scim::error::ScimType;
use crate::scim::test_schema;

const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// Parses `text` as an attribute path and checks (urn, name, sub); `None` expects invalidPath.
#[track_caller]
fn check(text: &str, want: Option<(Option<&str>, &str, Option<&str>)>) {
    let got = AttrPath::parse(text);
    match (got, want) {
        (Ok(path), Some((urn, name, sub))) => {
            assert_eq!(path.urn.as_deref(), urn, "urn of {text}");
            assert_eq!(path.name, name, "name of {text}");
            assert_eq!(path.sub.as_deref(), sub, "sub of {text}");
            assert_eq!(path.to_string(), text, "display of {text}");
        }
        (Err(err), None) => assert_eq!(err.scim_type, Some(ScimType::InvalidPath), "{err}"),
        (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn attr_paths() {
    check("userName", Some((None, "userName", None)));
    check("name.familyName", Some((None, "name", Some("familyName"))));
    check("members.$ref", Some((None, "members", Some("$ref"))));
    check(
        "urn:ietf:params:scim:schemas:core:2.0:User:userName",
        Some((
            Some("urn:ietf:params:scim:schemas:core:2.0:User"),
            "userName",
            None,
        )),
    );
    check(
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value",
        Some((Some(ENT), "manager", Some("value"))),
    );
    check(
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
        Some((Some(ENT), "department", None)),
    );
    check("URN:x:y", Some((Some("URN:x"), "y", None)));
    check("", None);
    check("a.b.c", None);
    check("name.", None);
    check(".name", None);
    check("1abc", None);
    check("urn:", None);
    check("urn:x:", None);
    check("emails[type eq \"work\"]", None);
    check("user name", None);
}

/// Parses `text` as a PATCH path; `want` is its canonical display, `None` expects invalidPath.
#[track_caller]
fn check_patch(text: &str, want: Option<&str>) {
    match (PatchPath::parse(text), want) {
        (Ok(path), Some(want)) => {
            assert_eq!(path.to_string(), want, "display of {text}");
            assert_eq!(
                PatchPath::parse(want).unwrap(),
                path,
                "round trip of {text}"
            );
        }
        (Err(err), None) => assert_eq!(err.scim_type, Some(ScimType::InvalidPath), "{err}"),
        (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn patch_paths() {
    // RFC 7644 §3.5.2, Figure 8: example path values.
    check_patch("members", Some("members"));
    check_patch("name.familyName", Some("name.familyName"));
    check_patch(
        "addresses[type eq \"work\"]",
        Some("addresses[type eq \"work\"]"),
    );
    check_patch(
        "members[value eq \"2819c223-7f76-453a-919d-413861904646\"]",
        Some("members[value eq \"2819c223-7f76-453a-919d-413861904646\"]"),
    );
    check_patch(
        "members[value eq \"2819c223-7f76-453a-919d-413861904646\"].displayName",
        Some("members[value eq \"2819c223-7f76-453a-919d-413861904646\"].displayName"),
    );
    check_patch(
        "emails[type eq \"work\" and value ew \"example.com\"]",
        Some("emails[type eq \"work\" and value ew \"example.com\"]"),
    );
    check_patch(
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
        Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber"),
    );
    check_patch(
        "emails[Type EQ \"work\"].value",
        Some("emails[Type eq \"work\"].value"),
    );
    // RFC 7644 §3.5.2.2 prints this path without a space after "eq".
    check_patch(
        "members[value eq\"2819c223\"]",
        Some("members[value eq \"2819c223\"]"),
    );
    check_patch(" members ", Some("members"));
    check_patch(
        "emails[type eq \"a:b\"].value",
        Some("emails[type eq \"a:b\"].value"),
    );
    check_patch("", None);
    check_patch("emails[", None);
    check_patch("emails[type eq \"work\"", None);
    check_patch("emails[type eq \"work\"]x", None);
    check_patch("emails[type eq \"work\"].", None);
    check_patch("emails[type eq \"work\"].a.b", None);
    check_patch("emails.value[type eq \"work\"]", None);
    check_patch("emails[type[value pr]]", None);
    check_patch("emails type", None);
}

#[test]
fn resolution_is_case_insensitive_and_knows_common_attributes() {
    let schema = test_schema::user();
    let resolved = resolve(&schema, &AttrPath::parse("NAME.GIVENNAME").unwrap()).unwrap();
    assert_eq!(resolved.canonical_path().to_string(), "name.givenName");
    let resolved = resolve(&schema, &AttrPath::parse("meta.lastmodified").unwrap()).unwrap();
    assert_eq!(resolved.sub.unwrap().ty, AttrType::DateTime);
    let resolved = resolve(
        &schema,
        &AttrPath::parse(
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user:Manager.Value",
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(resolved.extension, Some(ENT));
    assert_eq!(
        resolved.canonical_path().to_string(),
        format!("{ENT}:manager.value")
    );
    // Tolerance: an extension attribute without its URN, when only one extension has it.
    let resolved = resolve(&schema, &AttrPath::new("department")).unwrap();
    assert_eq!(resolved.extension, Some(ENT));
    assert!(resolve(&schema, &AttrPath::new("nosuch")).is_none());
    assert!(resolve(&schema, &AttrPath::parse("name.nosuch").unwrap()).is_none());
    assert!(resolve(&schema, &AttrPath::parse("urn:x:y:userName").unwrap()).is_none());
    assert!(
        resolve(&schema, &AttrPath::new("id"))
            .unwrap()
            .attr
            .case_exact
    );
}

#[test]
fn json_helpers() {
    let mut obj = serde_json::json!({"UserName": "a", "b": [1, 2], "c": {"d": null}})
        .as_object()
        .cloned()
        .unwrap();
    assert_eq!(get_ci(&obj, "username"), Some(&Value::from("a")));
    assert_eq!(key_ci(&obj, "USERNAME").as_deref(), Some("UserName"));
    insert_canonical(&mut obj, "userName", Value::from("x"));
    assert_eq!(key_ci(&obj, "username").as_deref(), Some("userName"));
    assert_eq!(values_of(&obj["b"]).count(), 2);
    assert!(!is_present(&obj["c"]));
    assert!(is_present(&obj["b"]));
    assert_eq!(remove_ci(&mut obj, "B"), Some(serde_json::json!([1, 2])));
}
