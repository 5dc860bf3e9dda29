//! The PATCH path parser on arbitrary text: it never panics, and a path it accepts prints back
//! to text that parses to the same path, unless printing grew it over the length limit (a
//! value filter's operand is printed as a JSON string, so a control character becomes a
//! six-character escape).
#![no_main]

use libfuzzer_sys::fuzz_target;
use scim2ldap::scim::filter::FilterLimits;
use scim2ldap::scim::path::PatchPath;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(path) = PatchPath::parse(text) {
        let printed = path.to_string();
        if printed.chars().count() > FilterLimits::default().max_len {
            return;
        }
        let reparsed = PatchPath::parse(&printed);
        assert_eq!(
            reparsed.ok(),
            Some(path),
            "{text:?} printed as {printed:?}"
        );
    }
});
