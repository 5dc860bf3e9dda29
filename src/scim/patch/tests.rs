//! Unit tests of `scim::patch`: table tests through one `check` helper.

use serde_json::{json, Value};

use super::*;
use crate::scim::error::ScimType;
use crate::scim::test_schema;

const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const CORE: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const BABS: &str = "2819c223-7f76-453a-919d-413861904646";
const JAMES: &str = "08e1d05d-121c-4561-8b96-473d93df9210";
const OTHER: &str = "902c246b-6245-4190-8e05-00816be7344a";
const CERT: &str = "MIIDQzCCAqygAwIBAgICEAAwDQYJKoZIhvcNAQEFBQAwTjELMAkGA1UEBhMCVVMx";

/// Parses `body` (a PATCH body, or just its Operations array) and applies it to `before`.
/// `want` is the resulting resource, or the error's `scimType` and part of its detail.
/// Returns the ignored names.
#[track_caller]
fn check(
    schema: &ResourceSchema,
    before: Value,
    body: Value,
    want: Result<Value, (ScimType, &str)>,
) -> Vec<String> {
    let body = match body {
        Value::Array(ops) => json!({"schemas": [PATCH_OP_URN], "Operations": ops}),
        body => body,
    };
    let got = PatchRequest::from_json(&body).and_then(|request| apply(&before, &request, schema));
    match (got, want) {
        (Ok(outcome), Ok(want)) => {
            assert_eq!(outcome.resource, want, "resource after {body}");
            outcome.ignored
        }
        (Err(err), Err((scim_type, part))) => {
            assert_eq!(err.status, 400, "{err}");
            assert_eq!(err.scim_type, Some(scim_type), "{err}");
            assert!(err.detail.contains(part), "{:?} lacks {part:?}", err.detail);
            Vec::new()
        }
        (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
    }
}

fn user() -> ResourceSchema {
    test_schema::user()
}

fn group() -> ResourceSchema {
    test_schema::group()
}

fn babs_member() -> Value {
    json!({"display": "Babs Jensen", "$ref": format!("https://example.com/v2/Users/{BABS}"), "value": BABS})
}

fn james_member() -> Value {
    json!({"display": "James Smith", "$ref": format!("https://example.com/v2/Users/{JAMES}"), "value": JAMES})
}

fn tour_guides(members: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "id": "acbf3ae7", "displayName": "Tour Guides", "members": members})
}

fn bjensen() -> Value {
    json!({
        "schemas": [CORE],
        "id": BABS,
        "userName": "bjensen",
        "name": {"familyName": "Jensen", "givenName": "Barbara"},
        "active": true,
        "emails": [{"value": "bjensen@example.com", "type": "work", "primary": true}],
        "addresses": [
            {"type": "work", "streetAddress": "100 Universal City Plaza", "locality": "Hollywood", "primary": true},
            {"type": "home", "streetAddress": "456 Hollywood Blvd", "locality": "Hollywood"}
        ],
        "x509Certificates": [{"value": CERT}],
        "meta": {"resourceType": "User", "created": "2010-01-23T04:56:22Z"}
    })
}

fn with(mut base: Value, changes: Value) -> Value {
    if let (Value::Object(base), Value::Object(changes)) = (&mut base, changes) {
        for (key, value) in changes {
            if value.is_null() {
                base.remove(&key);
            } else {
                base.insert(key, value);
            }
        }
    }
    base
}

// ---- RFC 7644 §3.5.2 examples ----

#[test]
fn rfc_add_member_to_group() {
    // §3.5.2.1: "how to add a member to a group".
    check(
        &group(),
        tour_guides(json!([{"value": OTHER}])),
        json!([{"op": "add", "path": "members", "value": [babs_member()]}]),
        Ok(tour_guides(json!([{"value": OTHER}, babs_member()]))),
    );
}

#[test]
fn rfc_add_attributes_without_path() {
    // §3.5.2.1: "add one or more attributes to a User resource without using a path".
    check(
        &user(),
        bjensen(),
        json!([{"op": "add", "value": {"emails": [{"value": "babs@jensen.org", "type": "home"}], "nickname": "Babs"}}]),
        Ok(with(
            bjensen(),
            json!({
                "emails": [
                    {"value": "bjensen@example.com", "type": "work", "primary": true},
                    {"value": "babs@jensen.org", "type": "home"}
                ],
                "nickName": "Babs"
            }),
        )),
    );
}

#[test]
fn rfc_remove_single_member() {
    // §3.5.2.2: "Remove a single member from a group".
    check(
        &group(),
        tour_guides(json!([babs_member(), james_member()])),
        json!([{"op": "remove", "path": format!("members[value eq \"{BABS}\"]")}]),
        Ok(tour_guides(json!([james_member()]))),
    );
}

#[test]
fn rfc_remove_all_members() {
    // §3.5.2.2: "Remove all members of a group".
    check(
        &group(),
        tour_guides(json!([babs_member(), james_member()])),
        json!([{"op": "remove", "path": "members"}]),
        Ok(with(tour_guides(json!(null)), json!({"members": null}))),
    );
}

#[test]
fn rfc_remove_value_from_complex_multi_valued_attribute() {
    // §3.5.2.2: "Removal of a value from a complex multi-valued attribute".
    let before = with(
        bjensen(),
        json!({"emails": [
            {"value": "bjensen@example.com", "type": "work"},
            {"value": "babs@jensen.org", "type": "home"},
            {"value": "b@example.org", "type": "work"}
        ]}),
    );
    check(
        &user(),
        before.clone(),
        json!([{"op": "remove", "path": "emails[type eq \"work\" and value ew \"example.com\"]"}]),
        Ok(with(
            before,
            json!({"emails": [
                {"value": "babs@jensen.org", "type": "home"},
                {"value": "b@example.org", "type": "work"}
            ]}),
        )),
    );
}

#[test]
fn rfc_remove_and_add_member() {
    // §3.5.2.2: "remove and add a member"; the RFC prints `eq"…"` without a space.
    check(
        &group(),
        tour_guides(json!([babs_member()])),
        json!([
            {"op": "remove", "path": format!("members[value eq\"{BABS}\"]")},
            {"op": "add", "path": "members", "value": [james_member()]}
        ]),
        Ok(tour_guides(json!([james_member()]))),
    );
}

#[test]
fn rfc_replace_all_members_with_remove_then_add() {
    // §3.5.2.2: "replace all of the members of a group with a different members list".
    check(
        &group(),
        tour_guides(json!([{"value": OTHER}])),
        json!([
            {"op": "remove", "path": "members"},
            {"op": "add", "path": "members", "value": [babs_member(), james_member()]}
        ]),
        Ok(tour_guides(json!([babs_member(), james_member()]))),
    );
}

#[test]
fn rfc_replace_members_in_one_operation() {
    // §3.5.2.3: "… with a different members list in a single replace operation".
    check(
        &group(),
        tour_guides(json!([{"value": OTHER}])),
        json!([{"op": "replace", "path": "members", "value": [babs_member(), james_member()]}]),
        Ok(tour_guides(json!([babs_member(), james_member()]))),
    );
}

#[test]
fn rfc_replace_work_address() {
    // §3.5.2.3: "change a User's entire work address, using a valuePath filter".
    let address = json!({
        "type": "work",
        "streetAddress": "911 Universal City Plaza",
        "locality": "Hollywood",
        "region": "CA",
        "postalCode": "91608",
        "country": "US",
        "formatted": "911 Universal City Plaza\nHollywood, CA 91608 US",
        "primary": true
    });
    check(
        &user(),
        bjensen(),
        json!([{"op": "replace", "path": "addresses[type eq \"work\"]", "value": address.clone()}]),
        Ok(with(
            bjensen(),
            json!({"addresses": [
                address,
                {"type": "home", "streetAddress": "456 Hollywood Blvd", "locality": "Hollywood"}
            ]}),
        )),
    );
}

#[test]
fn rfc_replace_street_address_through_filter() {
    // §3.5.2.3: "change a specific sub-attribute streetAddress … selected by a valuePath".
    check(
        &user(),
        bjensen(),
        json!([{"op": "replace", "path": "addresses[type eq \"work\"].streetAddress", "value": "1010 Broadway Ave"}]),
        Ok(with(
            bjensen(),
            json!({"addresses": [
                {"type": "work", "streetAddress": "1010 Broadway Ave", "locality": "Hollywood", "primary": true},
                {"type": "home", "streetAddress": "456 Hollywood Blvd", "locality": "Hollywood"}
            ]}),
        )),
    );
}

#[test]
fn rfc_replace_attributes_without_path() {
    // §3.5.2.3: "replace all values of one or more specific attributes of a User resource".
    let emails = json!([
        {"value": "bjensen@example.com", "type": "work", "primary": true},
        {"value": "babs@jensen.org", "type": "home"}
    ]);
    check(
        &user(),
        with(
            bjensen(),
            json!({"emails": [{"value": "old@example.com", "type": "other"}]}),
        ),
        json!([{"op": "replace", "value": {"emails": emails.clone(), "nickname": "Babs"}}]),
        Ok(with(
            bjensen(),
            json!({"emails": emails, "nickName": "Babs"}),
        )),
    );
}

#[test]
fn rfc_x509_certificates() {
    // RFC 7643 §4.1.2 x509Certificates (binary values), removed and added through PATCH.
    check(
        &user(),
        bjensen(),
        json!([{"op": "remove", "path": format!("x509Certificates[value eq \"{CERT}\"]")}]),
        Ok(with(bjensen(), json!({"x509Certificates": null}))),
    );
    check(
        &user(),
        bjensen(),
        json!([{"op": "add", "path": "x509Certificates", "value": [{"value": "MIIB"}, {"value": CERT}]}]),
        Ok(with(
            bjensen(),
            json!({"x509Certificates": [{"value": CERT}, {"value": "MIIB"}]}),
        )),
    );
}

#[test]
fn rfc_figure_8_paths() {
    // RFC 7644 §3.5.2 Figure 8 names `members[…].displayName`, which the RFC 7643 Group schema
    // does not define (members have `display`): invalidPath.
    check(
        &group(),
        tour_guides(json!([babs_member()])),
        json!([{"op": "replace", "path": format!("members[value eq \"{BABS}\"].displayName"), "value": "B"}]),
        Err((
            ScimType::InvalidPath,
            "members has no sub-attribute displayName",
        )),
    );
    check(
        &group(),
        tour_guides(json!([babs_member()])),
        json!([{"op": "replace", "path": format!("members[value eq \"{BABS}\"].display"), "value": "B"}]),
        Ok(tour_guides(json!([with(
            babs_member(),
            json!({"display": "B"})
        )]))),
    );
    check(
        &user(),
        bjensen(),
        json!([{"op": "replace", "path": "name.familyName", "value": "Jensen-Smith"}]),
        Ok(with(
            bjensen(),
            json!({"name": {"familyName": "Jensen-Smith", "givenName": "Barbara"}}),
        )),
    );
    check(
        &user(),
        bjensen(),
        json!([{"op": "add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber", "value": "701984"}]),
        Ok(with(
            bjensen(),
            json!({"schemas": [CORE, ENT], ENT: {"employeeNumber": "701984"}}),
        )),
    );
}

// ---- General semantics ----

#[test]
fn sub_attributes_and_extensions() {
    check(
        &user(),
        bjensen(),
        json!([{"op": "remove", "path": "name.familyName"}, {"op": "remove", "path": "NAME.givenName"}]),
        Ok(with(bjensen(), json!({"name": null}))),
    );
    let ext_user = with(
        bjensen(),
        json!({"schemas": [CORE, ENT], ENT: {"department": "Tour"}}),
    );
    check(
        &user(),
        ext_user.clone(),
        json!([{"op": "replace", "path": format!("{ENT}:department"), "value": "Ops"}]),
        Ok(with(ext_user.clone(), json!({ENT: {"department": "Ops"}}))),
    );
    check(
        &user(),
        ext_user,
        json!([{"op": "remove", "path": format!("{ENT}:department")}]),
        Ok(with(bjensen(), json!({"schemas": [CORE]}))),
    );
    check(
        &user(),
        bjensen(),
        json!([{"op": "add", "path": format!("{ENT}:manager.value"), "value": "m1"}]),
        Ok(with(
            bjensen(),
            json!({"schemas": [CORE, ENT], ENT: {"manager": {"value": "m1"}}}),
        )),
    );
    // Keys in the resource are found ignoring case and rewritten in schema spelling.
    check(
        &user(),
        json!({"UserName": "x", "DisplayName": "y"}),
        json!([{"op": "replace", "path": "username", "value": "z"}, {"op": "replace", "value": {"displayname": "w"}}]),
        Ok(json!({"userName": "z", "displayName": "w"})),
    );
    // Null values: replace removes, add does nothing.
    check(
        &user(),
        json!({"userName": "x", "title": "t"}),
        json!([{"op": "replace", "path": "title", "value": null}, {"op": "add", "path": "nickName", "value": null}]),
        Ok(json!({"userName": "x"})),
    );
    // emails.type without a filter sets it on every value.
    check(
        &user(),
        json!({"emails": [{"value": "a"}, {"value": "b"}]}),
        json!([{"op": "replace", "path": "emails.type", "value": "work"}]),
        Ok(json!({"emails": [{"value": "a", "type": "work"}, {"value": "b", "type": "work"}]})),
    );
    // ... and with no values yet, adds one (RFC 7644 §3.5.2.1/3: a missing target is added;
    // noTarget is for a filter that matches nothing).
    for op in ["add", "replace"] {
        check(
            &user(),
            json!({"userName": "x"}),
            json!([{"op": op, "path": "emails.value", "value": "a@example.com"}]),
            Ok(json!({"userName": "x", "emails": [{"value": "a@example.com"}]})),
        );
    }
    check(
        &user(),
        json!({"userName": "x"}),
        json!([{"op": "remove", "path": "emails.value"}]),
        Ok(json!({"userName": "x"})),
    );
    // Remove a sub-attribute of the matching values only.
    check(
        &user(),
        json!({"emails": [{"value": "a", "type": "work", "display": "A"}, {"value": "b", "type": "home", "display": "B"}]}),
        json!([{"op": "remove", "path": "emails[type eq \"work\"].display"}]),
        Ok(
            json!({"emails": [{"value": "a", "type": "work"}, {"value": "b", "type": "home", "display": "B"}]}),
        ),
    );
    check(
        &user(),
        json!({"userName": "x"}),
        json!([{"op": "add", "path": "employeeCode", "value": "12"}, {"op": "add", "path": "weight", "value": "2.5"}, {"op": "add", "path": "hired", "value": "2020-01-01T00:00:00Z"}]),
        Ok(
            json!({"userName": "x", "employeeCode": 12, "weight": 2.5, "hired": "2020-01-01T00:00:00Z"}),
        ),
    );
}

#[test]
fn multi_valued_add_dedups_and_keeps_one_primary() {
    check(
        &user(),
        bjensen(),
        json!([{"op": "add", "path": "emails", "value": [
            {"value": "BJENSEN@example.com", "type": "work"},
            {"value": "babs@jensen.org", "type": "home", "primary": true}
        ]}]),
        Ok(with(
            bjensen(),
            json!({"emails": [
                {"value": "BJENSEN@example.com", "type": "work", "primary": false},
                {"value": "babs@jensen.org", "type": "home", "primary": true}
            ]}),
        )),
    );
    check(
        &user(),
        json!({"emails": [{"value": "a", "type": "work", "primary": true}, {"value": "b", "type": "home"}]}),
        json!([{"op": "replace", "path": "emails[value eq \"b\"].primary", "value": true}]),
        Ok(
            json!({"emails": [{"value": "a", "type": "work", "primary": false}, {"value": "b", "type": "home", "primary": true}]}),
        ),
    );
    check(
        &user(),
        json!({"tags": ["a", "B"]}),
        json!([{"op": "add", "path": "tags", "value": ["b", "c"]}]),
        Ok(json!({"tags": ["a", "B", "c"]})),
    );
}

#[test]
fn errors() {
    let babs = bjensen();
    check(
        &user(),
        babs.clone(),
        json!([{"op": "replace", "path": "nosuch", "value": 1}]),
        Err((ScimType::InvalidPath, "unknown attribute nosuch")),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "replace", "path": "name.nosuch", "value": 1}]),
        Err((ScimType::InvalidPath, "unknown attribute name.nosuch")),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "replace", "path": "emails[nosuch eq \"x\"]", "value": {}}]),
        Err((ScimType::InvalidPath, "emails has no sub-attribute nosuch")),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "replace", "path": "emails[type eq", "value": 1}]),
        Err((ScimType::InvalidPath, "operation 1: path")),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "replace", "path": "userName[value eq \"x\"]", "value": 1}]),
        Err((ScimType::InvalidPath, "needs a complex attribute")),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "remove"}]),
        Err((ScimType::NoTarget, "remove needs a path")),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "add", "path": "title"}]),
        Err((ScimType::InvalidValue, "add needs a value")),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "add", "value": "x"}]),
        Err((ScimType::InvalidValue, "needs an object of attributes")),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "delete", "path": "title"}]),
        Err((
            ScimType::InvalidSyntax,
            "op \"delete\" is not one of add, replace or remove",
        )),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "add", "path": 5, "value": 1}]),
        Err((ScimType::InvalidPath, "path must be a string")),
    );
    check(
        &user(),
        babs.clone(),
        json!({"Operations": [{"op": "add", "path": "title", "value": "T"}]}),
        Ok(with(babs.clone(), json!({"title": "T"}))),
    );
    check(
        &user(),
        babs.clone(),
        json!({"schemas": ["urn:x"], "Operations": []}),
        Err((
            ScimType::InvalidSyntax,
            "schemas must contain urn:ietf:params:scim:api:messages:2.0:PatchOp",
        )),
    );
    check(
        &user(),
        babs.clone(),
        json!({"schemas": [PATCH_OP_URN]}),
        Err((ScimType::InvalidSyntax, "needs an Operations array")),
    );
    check(
        &user(),
        babs.clone(),
        json!({"schemas": [PATCH_OP_URN], "Operations": []}),
        Err((ScimType::InvalidSyntax, "Operations is empty")),
    );
    check(
        &user(),
        babs.clone(),
        json!("x"),
        Err((ScimType::InvalidSyntax, "must be a JSON object")),
    );
    // Read-only and immutable targets.
    check(
        &user(),
        babs.clone(),
        json!([{"op": "replace", "path": "id", "value": "x"}]),
        Err((ScimType::Mutability, "id is read-only")),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "replace", "path": "meta.created", "value": "2020-01-01T00:00:00Z"}]),
        Err((ScimType::Mutability, "meta.created is read-only")),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "add", "path": "groups", "value": [{"value": "g"}]}]),
        Err((ScimType::Mutability, "groups is read-only")),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "remove", "path": "groups[value eq \"g\"]"}]),
        Err((ScimType::Mutability, "groups is read-only")),
    );
    // Values of the wrong type.
    check(
        &user(),
        babs.clone(),
        json!([{"op": "replace", "path": "active", "value": "yes"}]),
        Err((
            ScimType::InvalidValue,
            "active must be a boolean (true or false), not \"yes\"",
        )),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "replace", "path": "employeeCode", "value": 1.5}]),
        Err((ScimType::InvalidValue, "employeeCode must be an integer")),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "replace", "path": "hired", "value": "yesterday"}]),
        Err((ScimType::InvalidValue, "RFC 3339")),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "replace", "path": "name", "value": 3}]),
        Err((
            ScimType::InvalidValue,
            "name takes an object of sub-attributes",
        )),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "replace", "path": "title", "value": ["a", "b"]}]),
        Err((
            ScimType::InvalidValue,
            "title takes one value, but 2 were given",
        )),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "remove", "path": "userName"}]),
        Err((ScimType::Mutability, "userName is required")),
    );
    check(
        &user(),
        babs.clone(),
        json!([{"op": "replace", "path": "userName", "value": null}]),
        Err((ScimType::Mutability, "userName is required")),
    );
    // RFC 7644 §3.5.2.3: replace through a filter matching nothing is noTarget.
    check(
        &user(),
        babs.clone(),
        json!([{"op": "replace", "path": "emails[type eq \"home\"].value", "value": "x"}]),
        Err((
            ScimType::NoTarget,
            "no value of emails matches [type eq \"home\"]",
        )),
    );
    // All or nothing: the first operation's change is not kept when the second fails, and
    // the detail says which operation failed.
    check(
        &user(),
        babs,
        json!([{"op": "replace", "path": "title", "value": "T"}, {"op": "replace", "path": "nosuch", "value": 1}]),
        Err((ScimType::InvalidPath, "operation 2 (replace nosuch)")),
    );
}

#[test]
fn a_path_naming_an_extension_targets_its_whole_object() {
    // scim2-tester's PATCH checks: the path is the extension URN itself, the value an object
    // of its attributes (carrying its own `schemas`, which is not an attribute).
    let ext_user = with(
        bjensen(),
        json!({"schemas": [CORE, ENT], ENT: {"department": "Tour", "division": "West"}}),
    );
    check(
        &user(),
        bjensen(),
        json!([{"op": "add", "path": ENT, "value": {"schemas": [ENT], "department": "Tour", "division": "West"}}]),
        Ok(ext_user.clone()),
    );
    // replace merges, as for a complex attribute: division stays.
    check(
        &user(),
        ext_user.clone(),
        json!([{"op": "replace", "path": ENT.to_ascii_lowercase(), "value": {"department": "Ops"}}]),
        Ok(with(
            ext_user.clone(),
            json!({ENT: {"department": "Ops", "division": "West"}}),
        )),
    );
    // remove unassigns every attribute, and the URN leaves `schemas`.
    check(
        &user(),
        ext_user.clone(),
        json!([{"op": "remove", "path": ENT}]),
        Ok(bjensen()),
    );
    check(
        &user(),
        ext_user.clone(),
        json!([{"op": "replace", "path": ENT, "value": null}]),
        Ok(bjensen()),
    );
    check(
        &user(),
        ext_user.clone(),
        json!([{"op": "replace", "path": ENT, "value": "Ops"}]),
        Err((ScimType::InvalidValue, "must be an object")),
    );
    // A required extension cannot be removed.
    let mut required = user();
    required.extensions[0].1 = true;
    check(
        &required,
        ext_user,
        json!([{"op": "remove", "path": ENT}]),
        Err((ScimType::Mutability, "required")),
    );
    // An unknown URN is still an unknown attribute.
    check(
        &user(),
        bjensen(),
        json!([{"op": "remove", "path": "urn:example:params:scim:schemas:extension:Other"}]),
        Err((ScimType::InvalidPath, "unknown attribute")),
    );
}

// ---- Identity-provider tolerances ----

#[test]
fn entra_capitalised_ops_and_string_booleans() {
    for (op, value, want) in [
        ("Replace", "False", false),
        ("replace", "false", false),
        ("REPLACE", "True", true),
        ("Add", "true", true),
    ] {
        check(
            &user(),
            json!({"userName": "x", "active": !want}),
            json!([{"op": op, "path": "active", "value": value}]),
            Ok(json!({"userName": "x", "active": want})),
        );
    }
    check(
        &user(),
        json!({"userName": "x", "emails": [{"value": "a", "primary": true}]}),
        json!([{"op": "Replace", "path": "emails[value eq \"a\"].primary", "value": "False"}]),
        Ok(json!({"userName": "x", "emails": [{"value": "a", "primary": false}]})),
    );
}

#[test]
fn entra_path_less_dotted_and_urn_keys() {
    check(
        &user(),
        bjensen(),
        json!([{"op": "Replace", "value": {
            "name.givenName": "X",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber": "1",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value": "m1",
            "active": "False"
        }}]),
        Ok(with(
            bjensen(),
            json!({
                "schemas": [CORE, ENT],
                "name": {"familyName": "Jensen", "givenName": "X"},
                "active": false,
                ENT: {"employeeNumber": "1", "manager": {"value": "m1"}}
            }),
        )),
    );
    check(
        &user(),
        bjensen(),
        json!([{"op": "add", "value": {ENT: {"department": "D", "nosuch": 1}}}]),
        Ok(with(
            bjensen(),
            json!({"schemas": [CORE, ENT], ENT: {"department": "D"}}),
        )),
    );
}

#[test]
fn okta_path_less_replace() {
    check(
        &user(),
        bjensen(),
        json!([{"op": "replace", "value": {"active": false}}]),
        Ok(with(bjensen(), json!({"active": false}))),
    );
    let ignored = check(
        &group(),
        tour_guides(json!([babs_member()])),
        json!([{"op": "replace", "value": {"id": "acbf3ae7", "displayName": "Guides"}}]),
        Ok(with(
            tour_guides(json!([babs_member()])),
            json!({"displayName": "Guides"}),
        )),
    );
    assert!(ignored.is_empty(), "{ignored:?}");
}

#[test]
fn entra_remove_members_with_value_removes_only_those() {
    let members = json!([{"value": "id1", "type": "User"}, {"value": "id2"}, {"value": "id3"}]);
    check(
        &group(),
        tour_guides(members.clone()),
        json!([{"op": "Remove", "path": "members", "value": [{"value": "id1"}, {"value": "id3"}, {"value": "absent"}]}]),
        Ok(tour_guides(json!([{"value": "id2"}]))),
    );
    check(
        &group(),
        tour_guides(members.clone()),
        json!([{"op": "remove", "path": "members"}]),
        Ok(with(tour_guides(json!(null)), json!({"members": null}))),
    );
    check(
        &group(),
        tour_guides(members.clone()),
        json!([{"op": "replace", "path": "members", "value": [{"value": "id9"}]}]),
        Ok(tour_guides(json!([{"value": "id9"}]))),
    );
    // Removing a member that is not there changes nothing.
    check(
        &group(),
        tour_guides(members.clone()),
        json!([{"op": "remove", "path": "members[value eq \"absent\"]"}]),
        Ok(tour_guides(members.clone())),
    );
    // A plain string, and a single object, for a multi-valued attribute.
    check(
        &group(),
        tour_guides(json!([{"value": "id1"}])),
        json!([{"op": "add", "path": "members", "value": "id2"}, {"op": "add", "path": "members", "value": {"value": "id3"}}, {"op": "add", "path": "members", "value": "id1"}]),
        Ok(tour_guides(
            json!([{"value": "id1"}, {"value": "id2"}, {"value": "id3"}]),
        )),
    );
    check(
        &user(),
        json!({"userName": "x"}),
        json!([{"op": "add", "path": "emails", "value": {"value": "a@x", "type": "work"}}]),
        Ok(json!({"userName": "x", "emails": [{"value": "a@x", "type": "work"}]})),
    );
    // Group without members gains some.
    check(
        &group(),
        json!({"displayName": "G"}),
        json!([{"op": "Add", "path": "members", "value": [{"value": "id1"}]}]),
        Ok(json!({"displayName": "G", "members": [{"value": "id1"}]})),
    );
}

#[test]
fn entra_manager_as_list_or_string() {
    let want = with(
        bjensen(),
        json!({"schemas": [CORE, ENT], ENT: {"manager": {"value": "m1"}}}),
    );
    check(
        &user(),
        bjensen(),
        json!([{"op": "Add", "path": format!("{ENT}:manager"), "value": [{"value": "m1"}]}]),
        Ok(want.clone()),
    );
    check(
        &user(),
        bjensen(),
        json!([{"op": "Replace", "path": format!("{ENT}:manager"), "value": "m1"}]),
        Ok(want.clone()),
    );
    // manager.displayName is read-only: dropped from values.
    check(
        &user(),
        bjensen(),
        json!([{"op": "add", "path": format!("{ENT}:manager"), "value": {"value": "m1", "displayName": "M"}}]),
        Ok(want),
    );
}

#[test]
fn entra_add_through_unmatched_filter_creates_the_value() {
    check(
        &user(),
        json!({"userName": "x", "emails": [{"value": "h@x", "type": "home", "primary": true}]}),
        json!([{"op": "Add", "path": "emails[type eq \"work\"].value", "value": "w@x"}, {"op": "add", "path": "emails[type eq \"work\"].primary", "value": "True"}]),
        Ok(json!({"userName": "x", "emails": [
            {"value": "h@x", "type": "home", "primary": false},
            {"value": "w@x", "type": "work", "primary": true}
        ]})),
    );
    check(
        &user(),
        json!({"userName": "x"}),
        json!([{"op": "add", "path": "phoneNumbers[type eq \"work\" and value pr].value", "value": "1"}]),
        Err((ScimType::NoTarget, "does not describe a new value")),
    );
}

#[test]
fn unknown_names_in_values_are_ignored_but_unknown_urns_are_not() {
    let ignored = check(
        &user(),
        bjensen(),
        json!([{"op": "add", "value": {"nosuch": 1, "title": "T", "emails": [{"value": "e", "bogus": 1}], "groups": [{"value": "g"}], "meta": {"created": "x"}, "id": "y", "schemas": []}}]),
        Ok(with(
            bjensen(),
            json!({"title": "T", "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "e"}
            ]}),
        )),
    );
    assert_eq!(ignored, vec!["emails.bogus", "groups", "nosuch"]);
    check(
        &user(),
        bjensen(),
        json!([{"op": "add", "value": {"urn:example:custom:2.0:User": {"x": 1}}}]),
        Err((
            ScimType::InvalidValue,
            "unknown schema extension urn:example:custom:2.0:User",
        )),
    );
    check(
        &user(),
        bjensen(),
        json!([{"op": "add", "value": {"urn:example:custom:2.0:User:costCenter": "1"}}]),
        Err((
            ScimType::InvalidValue,
            "unknown schema extension urn:example:custom:2.0:User:costCenter",
        )),
    );
    check(
        &user(),
        bjensen(),
        json!([{"op": "add", "value": {ENT: "x"}}]),
        Err((ScimType::InvalidValue, "must be an object")),
    );
}

// ---- members_delta ----

/// Parses the Operations `ops` and checks the members delta; `None` means not expressible.
#[track_caller]
fn check_delta(ops: Value, want: Option<MembersDelta>) {
    let request = PatchRequest::from_json(&json!({"Operations": ops})).unwrap();
    assert_eq!(members_delta(&request), want, "{ops}");
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|id| id.to_string()).collect()
}

#[test]
fn members_delta_forms() {
    check_delta(
        json!([{"op": "Add", "path": "members", "value": [{"value": "a"}, {"value": "b"}]}, {"op": "Remove", "path": "members", "value": [{"value": "c"}]}]),
        Some(MembersDelta {
            add: ids(&["a", "b"]),
            remove: ids(&["c"]),
            ..Default::default()
        }),
    );
    check_delta(
        json!([{"op": "remove", "path": format!("members[value eq \"{BABS}\"]")}, {"op": "add", "path": "members", "value": [james_member()]}]),
        Some(MembersDelta {
            add: ids(&[JAMES]),
            remove: ids(&[BABS]),
            ..Default::default()
        }),
    );
    check_delta(
        json!([{"op": "remove", "path": "members[value eq \"a\" or value eq \"b\"]"}]),
        Some(MembersDelta {
            remove: ids(&["a", "b"]),
            ..Default::default()
        }),
    );
    // add then remove of the same id: removed; remove then add: added.
    check_delta(
        json!([{"op": "add", "path": "members", "value": "x"}, {"op": "remove", "path": "members", "value": "x"}, {"op": "remove", "path": "members", "value": "y"}, {"op": "add", "path": "members", "value": ["y"]}]),
        Some(MembersDelta {
            add: ids(&["y"]),
            remove: ids(&["x"]),
            ..Default::default()
        }),
    );
    check_delta(
        json!([{"op": "add", "path": "members", "value": "x"}, {"op": "remove", "path": "members"}, {"op": "add", "path": "members", "value": [{"value": "b"}]}, {"op": "remove", "path": "members", "value": "z"}]),
        Some(MembersDelta {
            add: ids(&["b"]),
            remove_all: true,
            ..Default::default()
        }),
    );
    check_delta(
        json!([{"op": "replace", "path": "members", "value": [{"value": "a"}, {"value": "a"}]}, {"op": "add", "path": "members", "value": "b"}, {"op": "remove", "path": "members", "value": "a"}]),
        Some(MembersDelta {
            replace: Some(ids(&["b"])),
            ..Default::default()
        }),
    );
    let rename = json!({"op": "replace", "path": "displayName", "value": "G"});
    check_delta(
        json!([rename.clone(), {"op": "replace", "value": {"id": "g1", "displayName": "H", "members": [{"value": "m"}]}}]),
        Some(MembersDelta {
            replace: Some(ids(&["m"])),
            other_ops: vec![
                PatchOp {
                    op: PatchOpKind::Replace,
                    path: Some(PatchPath::parse("displayName").unwrap()),
                    value: Some(json!("G")),
                },
                PatchOp {
                    op: PatchOpKind::Replace,
                    path: None,
                    value: Some(json!({"id": "g1", "displayName": "H"})),
                },
            ],
            ..Default::default()
        }),
    );
    check_delta(
        json!([{"op": "replace", "value": {"id": "g1"}}]),
        Some(MembersDelta::default()),
    );
    // Not expressible: other attributes, sub-attributes, complex filters, ids that are not strings.
    check_delta(
        json!([{"op": "replace", "path": "description", "value": "x"}]),
        None,
    );
    check_delta(
        json!([{"op": "replace", "path": "members[value eq \"a\"].display", "value": "x"}]),
        None,
    );
    check_delta(
        json!([{"op": "remove", "path": "members[display eq \"a\"]"}]),
        None,
    );
    check_delta(
        json!([{"op": "add", "path": "members", "value": [{"display": "no id"}]}]),
        None,
    );
    check_delta(
        json!([{"op": "add", "value": {"members": [{"value": "a"}], "owner": "x"}}]),
        None,
    );
}

#[test]
fn members_delta_agrees_with_apply() {
    let current = json!([{"value": "a"}, {"value": "b"}, {"value": "c"}]);
    let bodies = [
        json!([{"op": "Add", "path": "members", "value": [{"value": "d"}]}, {"op": "Remove", "path": "members", "value": [{"value": "a"}]}]),
        json!([{"op": "remove", "path": "members[value eq \"b\"]"}, {"op": "add", "path": "members", "value": "b"}]),
        json!([{"op": "remove", "path": "members"}, {"op": "add", "path": "members", "value": ["x", "y"]}, {"op": "remove", "path": "members", "value": "y"}]),
        json!([{"op": "replace", "path": "members", "value": ["c", "z"]}, {"op": "add", "path": "members", "value": "a"}]),
    ];
    for ops in bodies {
        let request = PatchRequest::from_json(&json!({"Operations": ops})).unwrap();
        let delta = members_delta(&request).unwrap();
        let outcome = apply(&tour_guides(current.clone()), &request, &group()).unwrap();
        let mut applied: Vec<String> = outcome.resource["members"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|m| m["value"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let mut derived: Vec<String> = match delta.replace {
            Some(list) => list,
            None => {
                let base: Vec<String> = if delta.remove_all {
                    Vec::new()
                } else {
                    ids(&["a", "b", "c"])
                };
                let mut out: Vec<String> = base
                    .into_iter()
                    .filter(|id| !delta.remove.contains(id))
                    .collect();
                out.extend(
                    delta
                        .add
                        .iter()
                        .filter(|id| !out.contains(id))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
                out
            }
        };
        applied.sort();
        derived.sort();
        assert_eq!(applied, derived, "{ops}");
    }
}

// ---------------------------------------------------------------------------------------------
// Property: PATCH never yields a resource the schema rejects. Random operations over the
// paths identity providers use (and some they should not) are applied to a valid user of the
// published schema; either `apply` refuses, or `validate_resource` accepts the result.
// ---------------------------------------------------------------------------------------------

mod property {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::{PatchRequest, CORE, ENT};
    use crate::scim::discovery::{Capabilities, Discovery};
    use crate::scim::validate::validate_resource;

    fn discovery() -> &'static Discovery {
        static DISCOVERY: std::sync::OnceLock<Discovery> = std::sync::OnceLock::new();
        DISCOVERY.get_or_init(|| {
            Discovery::load("/scim/v2", Capabilities { max_results: 1000 })
                .expect("compiled-in schemas load")
        })
    }

    fn valid_user() -> Value {
        json!({
            "schemas": [CORE, ENT],
            "id": "2819c223-7f76-453a-919d-413861904646",
            "userName": "bjensen",
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "displayName": "Babs",
            "active": true,
            "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "babs@jensen.org", "type": "home"}
            ],
            "phoneNumbers": [{"value": "555-555-8377", "type": "work"}],
            ENT: {"employeeNumber": "701984", "department": "Tours"}
        })
    }

    fn arb_path() -> impl Strategy<Value = Option<String>> {
        let paths = [
            "userName",
            "displayName",
            "title",
            "nickName",
            "active",
            "externalId",
            "password",
            "name",
            "name.givenName",
            "name.familyName",
            "emails",
            "emails.value",
            "emails[type eq \"work\"]",
            "emails[type eq \"work\"].value",
            "emails[primary eq true].value",
            "emails[value co \"@\"].type",
            "phoneNumbers",
            "phoneNumbers[type eq \"mobile\"].value",
            "addresses[type eq \"work\"].locality",
            "roles",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value",
            "urn:ietf:params:scim:schemas:core:2.0:User:userName",
            "id",
            "meta.created",
            "groups",
            "x509Certificates",
        ];
        prop_oneof![
            1 => Just(None),
            8 => proptest::sample::select(paths.to_vec()).prop_map(|p| Some(p.to_string())),
        ]
    }

    fn arb_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            Just(json!("True")),
            Just(json!("")),
            any::<i32>().prop_map(Value::from),
            Just(json!(1.5)),
            "[a-zA-Z0-9@. ]{1,12}".prop_map(Value::String),
            Just(json!("2024-01-31T12:00:00Z")),
            Just(json!("nul\u{0}")),
            Just(json!("esc\u{1b}")),
        ]
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        arb_leaf().prop_recursive(3, 24, 4, |inner| {
            let keys = proptest::sample::select(vec![
                "value",
                "type",
                "primary",
                "display",
                "givenName",
                "familyName",
                "userName",
                "active",
                "title",
                "emails",
                "name.givenName",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
                "unknownThing",
            ]);
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(keys, inner, 0..4).prop_map(|map| {
                    Value::Object(map.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
    }

    fn arb_op() -> impl Strategy<Value = Value> {
        (
            proptest::sample::select(vec!["add", "replace", "remove", "Replace"]),
            arb_path(),
            arb_value(),
        )
            .prop_map(|(op, path, value)| {
                let mut op = json!({"op": op, "value": value});
                if let Some(path) = path {
                    op["path"] = Value::String(path);
                }
                op
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn a_patch_never_yields_a_resource_the_schema_rejects(
            ops in proptest::collection::vec(arb_op(), 1..5)
        ) {
            let schema = discovery().user_schema();
            let body = json!({"Operations": ops});
            let Ok(request) = PatchRequest::from_json(&body) else {
                return Ok(());
            };
            let before = valid_user();
            prop_assume!(validate_resource(&before, schema).is_ok());
            if let Ok(outcome) = super::apply(&before, &request, schema) {
                let validated = validate_resource(&outcome.resource, schema);
                prop_assert!(
                    validated.is_ok(),
                    "{} turned a valid user into {} which is refused: {:?}",
                    body,
                    outcome.resource,
                    validated.err()
                );
            }
        }
    }
}

#[test]
fn sub_attributes_not_given_stay_and_a_value_of_nothing_writable_changes_nothing() {
    let managed = json!({"schemas": [CORE, ENT], "userName": "u", "name": {"givenName": "G", "familyName": "F", "middleName": "M"}, ENT: {"manager": {"value": "m1"}}});
    // Only a read-only sub-attribute: the manager stays.
    check(
        &user(),
        managed.clone(),
        json!([{"op": "replace", "path": format!("{ENT}:manager"), "value": {"displayName": "Barbara Jensen"}}]),
        Ok(managed.clone()),
    );
    // Nothing, or only unknown sub-attributes: the name stays.
    for value in [json!({}), json!({"nickname": "x"})] {
        check(
            &user(),
            managed.clone(),
            json!([{"op": "replace", "path": "name", "value": value}]),
            Ok(managed.clone()),
        );
    }
    // A null sub-attribute is unassigned, beside a value or alone; the others stay.
    check(
        &user(),
        managed.clone(),
        json!([{"op": "replace", "path": "name", "value": {"middleName": null, "givenName": "G2"}}]),
        Ok(with(
            managed.clone(),
            json!({"name": {"givenName": "G2", "familyName": "F"}}),
        )),
    );
    check(
        &user(),
        managed.clone(),
        json!([{"op": "replace", "path": "name", "value": {"middleName": null}}]),
        Ok(with(
            managed.clone(),
            json!({"name": {"givenName": "G", "familyName": "F"}}),
        )),
    );
    // The same in Entra's shape for `manager`, a list of one object.
    check(
        &user(),
        managed.clone(),
        json!([{"op": "Replace", "path": format!("{ENT}:manager"), "value": [{"displayName": "B"}]}]),
        Ok(managed.clone()),
    );
    // The last sub-attribute unassigned takes the attribute with it, in either shape.
    let unmanaged = json!({"schemas": [CORE], "userName": "u", "name": {"givenName": "G", "familyName": "F", "middleName": "M"}});
    check(
        &user(),
        managed.clone(),
        json!([{"op": "replace", "path": format!("{ENT}:manager"), "value": {"value": null}}]),
        Ok(unmanaged.clone()),
    );
    check(
        &user(),
        managed.clone(),
        json!([{"op": "Replace", "path": format!("{ENT}:manager"), "value": [{"value": null}]}]),
        Ok(unmanaged),
    );
}

#[test]
fn a_value_path_as_a_key_of_a_path_less_value_is_applied_as_that_path() {
    let before = bjensen();
    let mut after = bjensen();
    after["emails"][0]["value"] = json!("x@example.com");
    check(
        &user(),
        before.clone(),
        json!([{"op": "Replace", "value": {"emails[type eq \"work\"].value": "x@example.com"}}]),
        Ok(after),
    );
    // One that matches no value yet creates it, as Entra's flattened form expects.
    let mut no_work = bjensen();
    no_work["emails"] = json!([{"value": "h@example.com", "type": "home"}]);
    let mut with_work = no_work.clone();
    with_work["emails"] = json!([
        {"value": "h@example.com", "type": "home"},
        {"value": "w@example.com", "type": "work"}
    ]);
    let ignored = check(
        &user(),
        no_work,
        json!([{"op": "Replace", "value": {"emails[type eq \"work\"].value": "w@example.com"}}]),
        Ok(with_work),
    );
    assert!(ignored.is_empty(), "{ignored:?}");
    // One that does not parse is refused, not passed over.
    check(
        &user(),
        before,
        json!([{"op": "replace", "value": {"emails[type eq].value": "x@example.com"}}]),
        Err((ScimType::InvalidPath, "emails[type eq].value")),
    );
}
