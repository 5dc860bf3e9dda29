use serde_json::{json, Value};

use super::*;
use crate::scim::test_schema::{group, user};
use crate::scim::ScimType;

#[track_caller]
fn check(input: Value, expected_doc: Value) {
    let validated = validate_resource(&input, &user()).expect("valid");
    assert_eq!(validated.doc, expected_doc);
}

#[track_caller]
fn check_refused(input: Value, scim_type: ScimType, detail_part: &str) {
    let err = validate_resource(&input, &user()).expect_err("refused");
    assert_eq!(err.scim_type, Some(scim_type));
    assert!(err.detail.contains(detail_part), "{}", err.detail);
}

#[test]
fn identity_provider_shapes_become_canonical() {
    // OneLogin: legacy URNs, emails as one object, `managerId`, attribute names in any case.
    check(
        json!({
            "schemas": ["urn:scim:schemas:core:2.0", "urn:scim:schemas:extension:enterprise:2.0"],
            "USERNAME": "u", "Emails": {"value": "a@x", "type": "work"},
            "urn:scim:schemas:extension:enterprise:2.0": {"manager": {"managerId": "m1"}, "department": ""},
        }),
        json!({
            "userName": "u", "emails": [{"value": "a@x", "type": "work"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"manager": {"value": "m1"}},
        }),
    );
    // Entra / Microsoft's Postman suite: string booleans; read-only attributes are dropped.
    check(
        json!({"userName": "u", "active": "True", "id": "x", "meta": {}, "groups": [{"value": "g"}]}),
        json!({"userName": "u", "active": true}),
    );
    // Numbers where strings belong; null and "" mean no value.
    check(
        json!({"userName": "u", "title": null, "nickName": "", "externalId": 12}),
        json!({"userName": "u", "externalId": "12"}),
    );
    // OneLogin: a parameter rendered as "" beside a fixed `type` leaves no value behind.
    check(
        json!({"userName": "u", "phoneNumbers": [{"value": "", "type": "work"}, {"value": "1", "type": "mobile"}]}),
        json!({"userName": "u", "phoneNumbers": [{"value": "1", "type": "mobile"}]}),
    );
    // Entra: Microsoft's group schema and the documented typo of the enterprise URN.
    check(
        json!({"userName": "u", "schemas": [
            "urn:ietf:params:scim:schemas:core:2.0:User",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0User",
        ]}),
        json!({"userName": "u"}),
    );
    let validated = validate_resource(
        &json!({"displayName": "g", "schemas": [
            "urn:ietf:params:scim:schemas:core:2.0:Group",
            "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group",
        ]}),
        &group(),
    )
    .expect("valid");
    assert_eq!(validated.doc, json!({"displayName": "g"}));
}

#[test]
fn wrong_types_and_unknown_schemas_are_refused() {
    check_refused(
        json!({"title": "no user name"}),
        ScimType::InvalidValue,
        "userName",
    );
    check_refused(
        json!({"userName": "u", "active": "perhaps"}),
        ScimType::InvalidValue,
        "boolean",
    );
    check_refused(
        json!({"userName": ["u", "v"]}),
        ScimType::InvalidValue,
        "string",
    );
    check_refused(
        json!({"userName": "u", "name": 3}),
        ScimType::InvalidValue,
        "object",
    );
    check_refused(
        json!({"schemas": ["urn:acme:custom"], "userName": "u"}),
        ScimType::InvalidValue,
        "urn:acme:custom",
    );
    check_refused(
        json!({"userName": "u", "urn:acme:custom": {}}),
        ScimType::InvalidValue,
        "urn:acme:custom",
    );
    // A sub-attribute's error names its full path.
    check_refused(
        json!({"userName": "u", "name": {"givenName": {"first": "g"}}}),
        ScimType::InvalidValue,
        "`name.givenName` must be a string, not an object",
    );
    check_refused(
        json!({"userName": "u", "emails": [{"value": "a\u{1b}@example.com"}]}),
        ScimType::InvalidValue,
        "`emails.value` must not contain the control character U+001B",
    );
    assert_eq!(
        validate_resource(&json!([]), &user())
            .expect_err("array")
            .scim_type,
        Some(ScimType::InvalidSyntax)
    );
}

#[test]
fn passwords_are_taken_out_and_unknown_names_listed() {
    let validated = validate_resource(
        &json!({"userName": "u", "password": "s3cret", "favouriteColour": "blue"}),
        &user(),
    )
    .expect("valid");
    assert_eq!(validated.password.as_deref(), Some("s3cret"));
    assert_eq!(validated.doc, json!({"userName": "u"}));
    assert_eq!(validated.ignored, ["favouriteColour"]);
}

#[test]
fn group_members_accept_bare_ids() {
    let validated = validate_resource(
        &json!({"displayName": "g", "members": ["id-1", {"value": "id-2"}]}),
        &group(),
    )
    .expect("valid");
    assert_eq!(
        validated.doc["members"],
        json!([{"value": "id-1"}, {"value": "id-2"}])
    );
}

#[test]
fn only_the_first_primary_value_stays_primary() {
    check(
        json!({
            "userName": "u",
            "emails": [
                {"value": "a@x", "primary": true},
                {"value": "b@x", "primary": "True"},
                {"value": "c@x", "primary": false}
            ]
        }),
        json!({
            "userName": "u",
            "emails": [
                {"value": "a@x", "primary": true},
                {"value": "b@x", "primary": false},
                {"value": "c@x", "primary": false}
            ]
        }),
    );
}
