//! Test fixture: the RFC 7643 §8.7.1 User, Group and Enterprise User schemas (abridged).

use serde_json::json;

use super::schema::{ResourceSchema, Schema};

fn sub(name: &str, ty: &str) -> serde_json::Value {
    json!({"name": name, "type": ty})
}

fn multi_complex(name: &str, value_ty: &str, extra: &[&str]) -> serde_json::Value {
    let mut subs = vec![
        sub("value", value_ty),
        sub("display", "string"),
        json!({"name": "type", "type": "string", "canonicalValues": ["work", "home", "other"]}),
        sub("primary", "boolean"),
    ];
    subs.extend(extra.iter().map(|name| sub(name, "string")));
    json!({"name": name, "type": "complex", "multiValued": true, "subAttributes": subs})
}

/// The core User schema with the attributes the tests use.
pub(crate) fn user_core() -> Schema {
    let doc = json!({
        "id": "urn:ietf:params:scim:schemas:core:2.0:User",
        "name": "User",
        "attributes": [
            {"name": "userName", "type": "string", "required": true, "caseExact": false, "uniqueness": "server"},
            {"name": "name", "type": "complex", "subAttributes": [
                sub("formatted", "string"), sub("familyName", "string"), sub("givenName", "string"),
                sub("middleName", "string"), sub("honorificPrefix", "string"), sub("honorificSuffix", "string")
            ]},
            {"name": "displayName", "type": "string"},
            {"name": "nickName", "type": "string"},
            {"name": "profileUrl", "type": "reference", "referenceTypes": ["external"]},
            {"name": "title", "type": "string"},
            {"name": "userType", "type": "string"},
            {"name": "preferredLanguage", "type": "string"},
            {"name": "locale", "type": "string"},
            {"name": "timezone", "type": "string"},
            {"name": "active", "type": "boolean"},
            {"name": "password", "type": "string", "mutability": "writeOnly", "returned": "never"},
            multi_complex("emails", "string", &[]),
            multi_complex("phoneNumbers", "string", &[]),
            multi_complex("ims", "string", &[]),
            multi_complex("photos", "reference", &[]),
            {"name": "addresses", "type": "complex", "multiValued": true, "subAttributes": [
                sub("formatted", "string"), sub("streetAddress", "string"), sub("locality", "string"),
                sub("region", "string"), sub("postalCode", "string"), sub("country", "string"),
                sub("type", "string"), sub("primary", "boolean")
            ]},
            {"name": "groups", "type": "complex", "multiValued": true, "mutability": "readOnly", "subAttributes": [
                {"name": "value", "type": "string", "mutability": "readOnly"},
                {"name": "$ref", "type": "reference", "mutability": "readOnly"},
                {"name": "display", "type": "string", "mutability": "readOnly"},
                {"name": "type", "type": "string", "mutability": "readOnly"}
            ]},
            multi_complex("entitlements", "string", &[]),
            multi_complex("roles", "string", &[]),
            multi_complex("x509Certificates", "binary", &[]),
            {"name": "employeeCode", "type": "integer"},
            {"name": "badge", "type": "string", "caseExact": true},
            {"name": "hired", "type": "dateTime"},
            {"name": "weight", "type": "decimal"},
            {"name": "tags", "type": "string", "multiValued": true}
        ]
    });
    serde_json::from_value(doc).unwrap()
}

/// The Enterprise User extension (RFC 7643 §4.3).
pub(crate) fn enterprise() -> Schema {
    let doc = json!({
        "id": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
        "name": "EnterpriseUser",
        "attributes": [
            {"name": "employeeNumber", "type": "string"},
            {"name": "costCenter", "type": "string"},
            {"name": "organization", "type": "string"},
            {"name": "division", "type": "string"},
            {"name": "department", "type": "string"},
            {"name": "manager", "type": "complex", "subAttributes": [
                {"name": "value", "type": "string"},
                {"name": "$ref", "type": "reference"},
                {"name": "displayName", "type": "string", "mutability": "readOnly"}
            ]}
        ]
    });
    serde_json::from_value(doc).unwrap()
}

/// User with the Enterprise extension.
pub(crate) fn user() -> ResourceSchema {
    ResourceSchema {
        core: user_core(),
        extensions: vec![(enterprise(), false)],
    }
}

/// The core Group schema (RFC 7643 §4.2).
pub(crate) fn group() -> ResourceSchema {
    let doc = json!({
        "id": "urn:ietf:params:scim:schemas:core:2.0:Group",
        "name": "Group",
        "attributes": [
            {"name": "displayName", "type": "string"},
            {"name": "members", "type": "complex", "multiValued": true, "subAttributes": [
                {"name": "value", "type": "string", "mutability": "immutable"},
                {"name": "$ref", "type": "reference", "mutability": "immutable"},
                {"name": "type", "type": "string", "mutability": "immutable"},
                {"name": "display", "type": "string"}
            ]}
        ]
    });
    ResourceSchema {
        core: serde_json::from_value(doc).unwrap(),
        extensions: Vec::new(),
    }
}
