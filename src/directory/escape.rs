//! DN and filter escaping (RFC 4514, RFC 4515): the one place where user input meets LDAP syntax.

use std::borrow::Cow;

/// Escapes `value` for use as an attribute value in an RDN (RFC 4514 §2.4): `,+"\<>;=` and NUL
/// anywhere, `#` and space at the start, space at the end.
pub fn rdn_value(value: &str) -> Cow<'_, str> {
    ldap3::dn_escape(value)
}

/// Builds the DN `attr=<escaped value>,parent`.
pub fn child_dn(attr: &str, value: &str, parent: &str) -> String {
    format!("{attr}={},{parent}", rdn_value(value))
}

/// Escapes `value` for an assertion value in a search filter (RFC 4515 §3): `*()\` and NUL.
pub fn filter_value(value: &str) -> Cow<'_, str> {
    ldap3::ldap_escape(value)
}

/// `(attr=value)` with the value escaped.
pub fn eq_filter(attr: &str, value: &str) -> String {
    format!("({attr}={})", filter_value(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_rdn(value: &str, expected: &str) {
        assert_eq!(rdn_value(value), expected);
    }

    #[test]
    fn rdn_values_escape_every_special_character() {
        check_rdn("bjensen", "bjensen");
        check_rdn("a,ou=admins", r"a\2cou\3dadmins");
        check_rdn("#lead", r"\23lead");
        check_rdn(" trailing ", r"\20trailing\20");
        check_rdn("\"q\"", r"\22q\22");
        check_rdn("\\", r"\5c");
        check_rdn("a+b;c<d>e", r"a\2bb\3bc\3cd\3ee");
        check_rdn("nul\0", r"nul\00");
        check_rdn("jürgen", "jürgen");
    }

    #[test]
    fn filter_values_cannot_widen_a_filter() {
        assert_eq!(eq_filter("uid", "x)(uid=*"), r"(uid=x\29\28uid=\2a)");
        assert_eq!(eq_filter("uid", r"a\b"), r"(uid=a\5cb)");
    }
}
