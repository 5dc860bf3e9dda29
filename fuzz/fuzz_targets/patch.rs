//! The PATCH engine: an arbitrary body is parsed as a PATCH request and applied to a fixed user
//! and to a fixed group. It never panics, and a successful apply yields a JSON object.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use scim2ldap::scim::discovery::{Capabilities, Discovery};
use scim2ldap::scim::patch::{apply, PatchRequest};
use serde_json::{json, Value};

struct Fixture {
    discovery: Discovery,
    user: Value,
    group: Value,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture {
        discovery: Discovery::load("/scim/v2", Capabilities { max_results: 1000 })
            .expect("compiled-in schemas load"),
        user: json!({
            "schemas": [
                "urn:ietf:params:scim:schemas:core:2.0:User",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
            ],
            "id": "2819c223-7f76-453a-919d-413861904646",
            "externalId": "701984",
            "userName": "bjensen",
            "name": {"givenName": "Barbara", "familyName": "Jensen", "formatted": "Barbara Jensen"},
            "displayName": "Babs",
            "active": true,
            "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "babs@jensen.org", "type": "home"}
            ],
            "phoneNumbers": [{"value": "555-555-8377", "type": "work"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                "employeeNumber": "701984",
                "department": "Tour Operations",
                "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d"}
            }
        }),
        group: json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "id": "e9e30dba-f08f-4109-8486-d5c6a331660a",
            "displayName": "Tour Guides",
            "members": [
                {"value": "2819c223-7f76-453a-919d-413861904646", "type": "User"},
                {"value": "902c246b-6245-4190-8e05-00816be7344a", "type": "User"}
            ]
        }),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(request) = PatchRequest::from_json(&body) else {
        return;
    };
    let fixture = fixture();
    for (resource, schema) in [
        (&fixture.user, fixture.discovery.user_schema()),
        (&fixture.group, fixture.discovery.group_schema()),
    ] {
        if let Ok(outcome) = apply(resource, &request, schema) {
            assert!(outcome.resource.is_object());
        }
    }
});
