//! Request validation: an arbitrary body goes through the strict JSON reader and then the
//! resource validation for users and for groups. Neither panics, and a document that validates
//! validates again to the same canonical form (validation is idempotent).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use scim2ldap::scim::discovery::{Capabilities, Discovery};
use scim2ldap::scim::json::parse_object;
use scim2ldap::scim::validate::validate_resource;

fn discovery() -> &'static Discovery {
    static DISCOVERY: OnceLock<Discovery> = OnceLock::new();
    DISCOVERY.get_or_init(|| {
        Discovery::load("/scim/v2", Capabilities { max_results: 1000 })
            .expect("compiled-in schemas load")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = parse_object(data) else {
        return;
    };
    let discovery = discovery();
    for schema in [discovery.user_schema(), discovery.group_schema()] {
        if let Ok(validated) = validate_resource(&doc, schema) {
            let again = validate_resource(&validated.doc, schema);
            assert_eq!(
                again.map(|again| again.doc).ok(),
                Some(validated.doc),
                "canonical form of {doc} does not validate to itself"
            );
        }
    }
});
