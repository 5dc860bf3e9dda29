//! The filter parser on arbitrary text: it never panics, never recurses without bound, and a
//! filter it accepts prints back to text that parses to the same filter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scim2ldap::scim::filter::{Filter, FilterLimits};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(filter) = Filter::parse(text) {
        let printed = filter.to_string();
        // Printing may add quotes and spaces, so the reparse gets the same depth but more room.
        let limits = FilterLimits {
            max_len: usize::MAX,
            ..FilterLimits::default()
        };
        let reparsed = Filter::parse_with_limits(&printed, &limits);
        assert_eq!(
            reparsed.ok(),
            Some(filter),
            "{text:?} printed as {printed:?}"
        );
    }
});
