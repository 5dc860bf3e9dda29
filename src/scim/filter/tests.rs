//! Unit tests of `scim::filter`: table tests through one `check` helper.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::scim::error::ScimType;
use crate::scim::test_schema;

const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const CORE: &str = "urn:ietf:params:scim:schemas:core:2.0:User";

fn bjensen() -> Value {
    json!({
        "schemas": [CORE, ENT],
        "id": "2819c223-7f76-453a-919d-413861904646",
        "externalId": "701984",
        "userName": "bjensen",
        "name": {"formatted": "Ms. Barbara J Jensen, III", "familyName": "Jensen", "givenName": "Barbara"},
        "displayName": "Babs \"J\" é",
        "title": "Tour Guide",
        "userType": "Employee",
        "active": true,
        "badge": "AbC",
        "employeeCode": 42,
        "weight": 1.5,
        "hired": "2020-01-01T00:00:00Z",
        "tags": ["blue", "Green"],
        "emails": [
            {"value": "bjensen@example.com", "type": "work", "primary": true},
            {"value": "babs@jensen.org", "type": "home"}
        ],
        "ims": [{"value": "someaimhandle", "type": "aim"}],
        "meta": {
            "resourceType": "User",
            "created": "2010-01-23T04:56:22Z",
            "lastModified": "2011-05-13T04:42:34Z",
            "version": "W/\"3694e05e9dff591\"",
            "location": "https://example.com/v2/Users/2819c223-7f76-453a-919d-413861904646"
        },
        ENT: {
            "employeeNumber": "701984",
            "department": "Tour Operations",
            "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d", "displayName": "John Smith"}
        }
    })
}

fn john() -> Value {
    json!({
        "schemas": [CORE],
        "id": "c3a26dd3-27a0-4dec-a2ac-ce211e105f97",
        "userName": "John",
        "name": {"familyName": "O'Malley", "givenName": "John"},
        "userType": "Intern",
        "active": "False",
        "emails": [{"value": "john@example.org", "type": "work"}],
        "ims": [{"value": "john@foo.com", "type": "xmpp"}],
        "meta": {"resourceType": "User", "created": "2012-01-01T00:00:00Z", "lastModified": "2012-01-01T00:00:00+02:00"}
    })
}

fn carol() -> Value {
    json!({
        "userName": "carol",
        "userType": "Contractor",
        "title": "",
        "emails": [{"value": "carol@other.net", "type": "home"}],
        "ims": [{"value": "carol@foo.com", "type": "aim"}]
    })
}

/// Parses `text`; `want` is `Ok(canonical display)` or `Err(part of the invalidFilter detail)`.
/// On success the display must parse back to the same tree and `matches` gives, for bjensen,
/// john and carol in that order, `expect` (skipped when empty).
#[track_caller]
fn check(text: &str, want: Result<&str, &str>, expect: &[bool]) {
    let schema = test_schema::user();
    match (Filter::parse(text), want) {
        (Ok(filter), Ok(canonical)) => {
            assert_eq!(filter.to_string(), canonical, "display of {text}");
            assert_eq!(
                Filter::parse(canonical).unwrap(),
                filter,
                "round trip of {text}"
            );
            if !expect.is_empty() {
                let got: Vec<bool> = [bjensen(), john(), carol()]
                    .iter()
                    .map(|resource| filter.matches(resource, &schema))
                    .collect();
                assert_eq!(got, expect, "matches of {text} for [bjensen, john, carol]");
            }
        }
        (Err(err), Err(part)) => {
            assert_eq!(err.status, 400);
            assert_eq!(err.scim_type, Some(ScimType::InvalidFilter), "{err}");
            assert!(
                err.detail.contains(part),
                "{text}: {:?} lacks {part:?}",
                err.detail
            );
        }
        (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn rfc7644_section_3_4_2_2_examples() {
    // The case-insensitivity example.
    check(
        r#"userName Eq "john""#,
        Ok(r#"userName eq "john""#),
        &[false, true, false],
    );
    check(
        r#"Username eq "john""#,
        Ok(r#"Username eq "john""#),
        &[false, true, false],
    );
    // Figure 2: example filters.
    check(
        r#"userName eq "bjensen""#,
        Ok(r#"userName eq "bjensen""#),
        &[true, false, false],
    );
    check(
        r#"name.familyName co "O'Malley""#,
        Ok(r#"name.familyName co "O'Malley""#),
        &[false, true, false],
    );
    check(
        r#"userName sw "J""#,
        Ok(r#"userName sw "J""#),
        &[false, true, false],
    );
    check(
        r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "J""#,
        Ok(r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "J""#),
        &[false, true, false],
    );
    check("title pr", Ok("title pr"), &[true, false, false]);
    check(
        r#"meta.lastModified gt "2011-05-13T04:42:34Z""#,
        Ok(r#"meta.lastModified gt "2011-05-13T04:42:34Z""#),
        &[false, true, false],
    );
    check(
        r#"meta.lastModified ge "2011-05-13T04:42:34Z""#,
        Ok(r#"meta.lastModified ge "2011-05-13T04:42:34Z""#),
        &[true, true, false],
    );
    check(
        r#"meta.lastModified lt "2011-05-13T04:42:34Z""#,
        Ok(r#"meta.lastModified lt "2011-05-13T04:42:34Z""#),
        &[false, false, false],
    );
    check(
        r#"meta.lastModified le "2011-05-13T04:42:34Z""#,
        Ok(r#"meta.lastModified le "2011-05-13T04:42:34Z""#),
        &[true, false, false],
    );
    check(
        r#"title pr and userType eq "Employee""#,
        Ok(r#"title pr and userType eq "Employee""#),
        &[true, false, false],
    );
    check(
        r#"title pr or userType eq "Intern""#,
        Ok(r#"title pr or userType eq "Intern""#),
        &[true, true, false],
    );
    check(
        r#"schemas eq "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User""#,
        Ok(r#"schemas eq "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User""#),
        &[true, false, false],
    );
    check(
        r#"userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")"#,
        Ok(
            r#"userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")"#,
        ),
        &[true, false, false],
    );
    check(
        r#"userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")"#,
        Ok(
            r#"userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")"#,
        ),
        &[false, false, true],
    );
    check(
        r#"userType eq "Employee" and (emails.type eq "work")"#,
        Ok(r#"userType eq "Employee" and emails.type eq "work""#),
        &[true, false, false],
    );
    check(
        r#"userType eq "Employee" and emails[type eq "work" and value co "@example.com"]"#,
        Ok(r#"userType eq "Employee" and emails[type eq "work" and value co "@example.com"]"#),
        &[true, false, false],
    );
    check(
        r#"emails[type eq "work" and value co "@example.com"] or ims[type eq "xmpp" and value co "@foo.com"]"#,
        Ok(
            r#"emails[type eq "work" and value co "@example.com"] or ims[type eq "xmpp" and value co "@foo.com"]"#,
        ),
        &[true, true, false],
    );
    // The value-path example of §3.4.2.2's text and a multi-line form as printed.
    check(
        "emails[type eq \"work\" and\n  value co \"@example.com\"]",
        Ok(r#"emails[type eq "work" and value co "@example.com"]"#),
        &[true, false, false],
    );
    // Entra ID's matching on a typed email: a sub-attribute after the value filter means one
    // value meeting both conditions (babs@jensen.org is bjensen's, but her home address).
    check(
        r#"emails[type eq "work"].value eq "bjensen@example.com""#,
        Ok(r#"emails[type eq "work" and value eq "bjensen@example.com"]"#),
        &[true, false, false],
    );
    check(
        r#"emails[type eq "work"].value eq "babs@jensen.org""#,
        Ok(r#"emails[type eq "work" and value eq "babs@jensen.org"]"#),
        &[false, false, false],
    );
    check(
        r#"emails[type eq "home"].value pr"#,
        Ok(r#"emails[type eq "home" and value pr]"#),
        &[true, false, true],
    );
}

#[test]
fn precedence_and_grouping() {
    check(
        "title pr or userType pr and nickName pr",
        Ok("title pr or userType pr and nickName pr"),
        &[true, false, false],
    );
    check(
        "(title pr or userType pr) and nickName pr",
        Ok("(title pr or userType pr) and nickName pr"),
        &[false, false, false],
    );
    check(
        "title pr and (userType pr and active pr)",
        Ok("title pr and (userType pr and active pr)"),
        &[true, false, false],
    );
    check(
        "not (title pr) and userType pr",
        Ok("not (title pr) and userType pr"),
        &[false, true, true],
    );
    check(
        "NOT (title pr) OR title pr",
        Ok("not (title pr) or title pr"),
        &[true, true, true],
    );
    check("not title pr", Ok("not (title pr)"), &[false, true, true]);
    check("((title pr))", Ok("title pr"), &[true, false, false]);
    check(
        "title pr and userType pr and active pr",
        Ok("title pr and userType pr and active pr"),
        &[true, false, false],
    );
    check(
        "title pr or (userType pr or active pr)",
        Ok("title pr or (userType pr or active pr)"),
        &[true, true, true],
    );
    check(
        "(userName pr)or(title pr)",
        Ok("userName pr or title pr"),
        &[true, true, true],
    );
    let parsed = Filter::parse("a pr or b pr and c pr").unwrap();
    assert!(matches!(&parsed, Filter::Or(operands) if matches!(operands[1], Filter::And(_))));
}

#[test]
fn values_and_types() {
    // Tolerance: unquoted bare values are strings (old Okta and Entra examples).
    check(
        "name.FamilyName eq Employee",
        Ok(r#"name.FamilyName eq "Employee""#),
        &[false, false, false],
    );
    check(
        "name.familyName eq jensen",
        Ok(r#"name.familyName eq "jensen""#),
        &[true, false, false],
    );
    check("userName eq bjensen)", Err("unexpected ')'"), &[]);
    check(
        "(userName eq bjensen)",
        Ok(r#"userName eq "bjensen""#),
        &[true, false, false],
    );
    check(
        "emails[type eq work]",
        Ok(r#"emails[type eq "work"]"#),
        &[true, true, false],
    );
    // JSON literals and escapes.
    check(
        r#"displayName eq "Babs \"J\" \u00e9""#,
        Ok(r#"displayName eq "Babs \"J\" é""#),
        &[true, false, false],
    );
    check(
        "active eq true",
        Ok("active eq true"),
        &[true, false, false],
    );
    check(
        "active eq false",
        Ok("active eq false"),
        &[false, true, false],
    );
    check(
        r#"active eq "False""#,
        Ok(r#"active eq "False""#),
        &[false, true, false],
    );
    check("active ne true", Ok("active ne true"), &[false, true, true]);
    check(
        "active gt false",
        Ok("active gt false"),
        &[false, false, false],
    );
    check("title eq null", Ok("title eq null"), &[false, true, true]);
    check("title ne null", Ok("title ne null"), &[true, false, false]);
    check(
        "employeeCode gt 41",
        Ok("employeeCode gt 41"),
        &[true, false, false],
    );
    check(
        "employeeCode le 42",
        Ok("employeeCode le 42"),
        &[true, false, false],
    );
    check(
        "employeeCode eq 42.0",
        Ok("employeeCode eq 42.0"),
        &[true, false, false],
    );
    check("weight lt 1.6", Ok("weight lt 1.6"), &[true, false, false]);
    check(
        "weight ge -1e3",
        Ok("weight ge -1000.0"),
        &[true, false, false],
    );
    check(
        r#"hired gt "2019-12-31T23:30:00-01:00""#,
        Ok(r#"hired gt "2019-12-31T23:30:00-01:00""#),
        &[false, false, false],
    );
    check(
        r#"hired lt "2019-12-31T23:30:00-01:00""#,
        Ok(r#"hired lt "2019-12-31T23:30:00-01:00""#),
        &[true, false, false],
    );
    check(
        r#"meta.created eq "2010-01-23T05:56:22+01:00""#,
        Ok(r#"meta.created eq "2010-01-23T05:56:22+01:00""#),
        &[true, false, false],
    );
    // caseExact from the schema, also for sub-attributes and common attributes.
    check(
        r#"badge eq "abc""#,
        Ok(r#"badge eq "abc""#),
        &[false, false, false],
    );
    check(
        r#"badge eq "AbC""#,
        Ok(r#"badge eq "AbC""#),
        &[true, false, false],
    );
    check(
        r#"id eq "2819C223-7F76-453A-919D-413861904646""#,
        Ok(r#"id eq "2819C223-7F76-453A-919D-413861904646""#),
        &[false, false, false],
    );
    check(
        r#"id eq "2819c223-7f76-453a-919d-413861904646""#,
        Ok(r#"id eq "2819c223-7f76-453a-919d-413861904646""#),
        &[true, false, false],
    );
    check(
        r#"externalId eq "701984""#,
        Ok(r#"externalId eq "701984""#),
        &[true, false, false],
    );
    check(
        r#"meta.resourceType eq "user""#,
        Ok(r#"meta.resourceType eq "user""#),
        &[false, false, false],
    );
    check(
        r#"META.RESOURCETYPE eq "User""#,
        Ok(r#"META.RESOURCETYPE eq "User""#),
        &[true, true, false],
    );
    check(
        r#"userName gt "c""#,
        Ok(r#"userName gt "c""#),
        &[false, true, true],
    );
    check(
        r#"userName lt "C""#,
        Ok(r#"userName lt "C""#),
        &[true, false, false],
    );
    check(
        r#"emails.value ew "ORG""#,
        Ok(r#"emails.value ew "ORG""#),
        &[true, true, false],
    );
    check(
        r#"emails.type eq "home""#,
        Ok(r#"emails.type eq "home""#),
        &[true, false, true],
    );
    check(
        "emails.primary eq true",
        Ok("emails.primary eq true"),
        &[true, false, false],
    );
    check(
        r#"tags eq "green""#,
        Ok(r#"tags eq "green""#),
        &[true, false, false],
    );
    check(
        r#"emails ne "babs@jensen.org""#,
        Ok(r#"emails ne "babs@jensen.org""#),
        &[false, true, true],
    );
    // Extension attributes, URN-qualified, case-insensitive.
    check(
        r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "tour operations""#,
        Ok(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "tour operations""#,
        ),
        &[true, false, false],
    );
    check(
        r#"URN:IETF:PARAMS:SCIM:SCHEMAS:EXTENSION:ENTERPRISE:2.0:USER:manager.value eq "26118915-6090-4610-87e4-49d8ca9f808d""#,
        Ok(
            r#"URN:IETF:PARAMS:SCIM:SCHEMAS:EXTENSION:ENTERPRISE:2.0:USER:manager.value eq "26118915-6090-4610-87e4-49d8ca9f808d""#,
        ),
        &[true, false, false],
    );
    check(
        r#"employeeNumber eq "701984""#,
        Ok(r#"employeeNumber eq "701984""#),
        &[true, false, false],
    );
    // pr: empty strings, empty arrays and null are absent.
    check("title pr", Ok("title pr"), &[true, false, false]);
    check("emails pr", Ok("emails pr"), &[true, true, true]);
    check("name pr", Ok("name pr"), &[true, true, false]);
    check(
        "meta.version pr",
        Ok("meta.version pr"),
        &[true, false, false],
    );
    // An attribute the schema does not know is compared as a case-insensitive string.
    check(
        r#"nosuch eq "x""#,
        Ok(r#"nosuch eq "x""#),
        &[false, false, false],
    );
    check("nosuch pr", Ok("nosuch pr"), &[false, false, false]);
}

#[test]
fn errors_say_what_and_where() {
    check("", Err("the filter is empty"), &[]);
    check("   ", Err("the filter is empty"), &[]);
    check("userName", Err("expected an operator"), &[]);
    check("userName xx \"a\"", Err("\"xx\" at position 10"), &[]);
    check("userName eq", Err("expected a value"), &[]);
    check(
        "userName eq \"abc",
        Err("unterminated string at position 13"),
        &[],
    );
    check(r#"userName eq "a\qb""#, Err("invalid string"), &[]);
    check(
        "userName eq \"a\" extra",
        Err("unexpected 'e' at position 17; expected \"and\""),
        &[],
    );
    check(
        "userName eq \"a\" and",
        Err("expected an attribute name but found the end of the filter"),
        &[],
    );
    check(
        "(userName pr",
        Err("expected ')' but found the end of the filter"),
        &[],
    );
    check("userName pr)", Err("unexpected ')'"), &[]);
    check("emails[type eq \"work\"", Err("expected ']'"), &[]);
    check(
        "emails[type[value pr]]",
        Err("value filters cannot be nested"),
        &[],
    );
    check(
        "emails[type pr].",
        Err("expected a sub-attribute name"),
        &[],
    );
    check(
        "emails[type pr].value.x pr",
        Err("expected a sub-attribute name"),
        &[],
    );
    check("emails[type pr].value", Err("expected an operator"), &[]);
    check(
        "emails.value[type pr]",
        Err("has a sub-attribute before '['"),
        &[],
    );
    check("a.b.c pr", Err("more than one sub-attribute level"), &[]);
    check("1abc pr", Err("invalid attribute name"), &[]);
    check(
        "urn:foo: pr",
        Err("has an empty attribute name at position 1"),
        &[],
    );
    check("userName eq \"a\" or or", Err("expected an operator"), &[]);
    check("title pr and", Err("expected an attribute name"), &[]);
}

#[test]
fn limits() {
    let limits = FilterLimits {
        max_len: 20,
        max_depth: 3,
    };
    let long = format!("userName eq \"{}\"", "x".repeat(10));
    let err = Filter::parse_with_limits(&long, &limits).unwrap_err();
    assert_eq!(err.scim_type, Some(ScimType::InvalidFilter));
    assert!(
        err.detail.contains("over the limit of 20 characters"),
        "{}",
        err.detail
    );
    assert!(Filter::parse_with_limits("(((a pr)))", &limits).is_ok());
    let err = Filter::parse_with_limits("((((a pr))))", &limits).unwrap_err();
    assert!(
        err.detail.contains("deeper than the limit of 3 levels"),
        "{}",
        err.detail
    );
    let err = Filter::parse_with_limits("not not not not a pr", &limits).unwrap_err();
    assert!(
        err.detail.contains("deeper than the limit"),
        "{}",
        err.detail
    );
    // Defaults: 4096 characters, 32 levels; long flat chains are not deep.
    let chain = vec!["id eq \"x\""; 300].join(" or ");
    assert!(Filter::parse(&chain).is_ok());
    let deep = format!("{}a pr{}", "(".repeat(33), ")".repeat(33));
    assert!(Filter::parse(&deep)
        .unwrap_err()
        .detail
        .contains("32 levels"));
    let too_long = format!("a eq \"{}\"", "x".repeat(4096));
    assert!(Filter::parse(&too_long)
        .unwrap_err()
        .detail
        .contains("4096"));
}

#[test]
fn simple_eq_for_indexed_lookups() {
    let filter = Filter::parse(r#"userName eq "bjensen""#).unwrap();
    let (path, value) = filter.as_simple_eq().unwrap();
    assert_eq!((path.name.as_str(), value), ("userName", "bjensen"));
    let filter = Filter::parse(r#"externalId EQ 701984x"#).unwrap();
    assert_eq!(filter.as_simple_eq().map(|(_, v)| v), Some("701984x"));
    for text in [
        "userName ne \"a\"",
        "employeeCode eq 1",
        "a pr",
        "a eq \"x\" and b eq \"y\"",
        "emails[value eq \"x\"]",
    ] {
        assert!(
            Filter::parse(text).unwrap().as_simple_eq().is_none(),
            "{text}"
        );
    }
}

/// Validates `text` against the User schema; `Err` holds part of the expected detail.
#[track_caller]
fn check_validate(text: &str, want: Result<(), &str>) {
    let schema = test_schema::user();
    let got = Filter::parse(text).unwrap().validate(&schema);
    match (got, want) {
        (Ok(()), Ok(())) => {}
        (Err(err), Err(part)) => {
            assert_eq!(err.scim_type, Some(ScimType::InvalidFilter));
            assert!(
                err.detail.contains(part),
                "{text}: {:?} lacks {part:?}",
                err.detail
            );
        }
        (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn validation_against_the_schema() {
    check_validate(
        r#"userType eq "Employee" and emails[type eq "work" and value co "@example.com"]"#,
        Ok(()),
    );
    check_validate(r#"meta.lastModified gt "2011-05-13T04:42:34Z""#, Ok(()));
    check_validate(r#"emails co "example.com""#, Ok(()));
    check_validate(r#"schemas eq "urn:x""#, Ok(()));
    check_validate("active eq true", Ok(()));
    check_validate(
        "active gt true",
        Err("operator gt cannot be used on the boolean attribute active"),
    );
    check_validate(r#"active co "t""#, Err("boolean"));
    // Values of the wrong type could never match: refused, not answered with nothing. The
    // strings IdPs send for booleans still compare.
    check_validate(r#"active eq "False""#, Ok(()));
    check_validate(r#"active eq "yes""#, Err("compare it with true or false"));
    check_validate("active eq 1", Err("boolean"));
    check_validate("userName eq 5", Ok(()));
    check_validate(r#"employeeCode gt "7""#, Ok(()));
    check_validate(r#"weight lt "heavy""#, Err("is a number"));
    check_validate(r#"x509Certificates.value gt "a""#, Err("binary"));
    check_validate("nosuch pr", Err("unknown attribute nosuch"));
    check_validate("name.nosuch pr", Err("unknown attribute name.nosuch"));
    check_validate(
        r#"name eq "x""#,
        Err("complex attribute without a \"value\" sub-attribute"),
    );
    check_validate(r#"meta.created gt "yesterday""#, Err("RFC 3339"));
    check_validate(
        r#"emails[nosuch eq "x"]"#,
        Err("emails has no sub-attribute nosuch"),
    );
    check_validate(
        r#"userName[value eq "x"]"#,
        Err("needs a complex attribute"),
    );
}

// ---- parse → Display → parse round trip ----

fn arb_name() -> impl Strategy<Value = String> {
    "[a-zA-Z$][a-zA-Z0-9_-]{0,6}".prop_filter("keywords", |name| {
        !["and", "or", "not"]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(name))
    })
}

fn arb_path() -> impl Strategy<Value = AttrPath> {
    (
        prop::option::of(prop_oneof![Just(ENT.to_string()), Just(CORE.to_string())]),
        arb_name(),
        prop::option::of(arb_name()),
    )
        .prop_map(|(urn, name, sub)| AttrPath { urn, name, sub })
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<String>().prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        (-1.0e12f64..1.0e12).prop_map(Value::from),
    ]
}

fn arb_op() -> impl Strategy<Value = CompareOp> {
    prop::sample::select(CompareOp::ALL.to_vec())
}

fn arb_leaf(path: BoxedStrategy<AttrPath>) -> impl Strategy<Value = Filter> {
    prop_oneof![
        (path.clone(), arb_op(), arb_value()).prop_map(|(path, op, value)| Filter::Compare {
            path,
            op,
            value
        }),
        path.prop_map(Filter::Present),
    ]
}

fn arb_tree(leaf: BoxedStrategy<Filter>) -> impl Strategy<Value = Filter> {
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Filter::And),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Filter::Or),
            inner.prop_map(|f| Filter::Not(Box::new(f))),
        ]
    })
}

fn arb_filter() -> impl Strategy<Value = Filter> {
    let plain = arb_name().prop_map(AttrPath::new).boxed();
    let value_path = (
        arb_name(),
        arb_tree(arb_leaf(plain).boxed().boxed()).boxed(),
    )
        .prop_map(|(name, filter)| Filter::ValuePath {
            path: AttrPath::new(name),
            filter: Box::new(filter),
        });
    let leaf = prop_oneof![3 => arb_leaf(arb_path().boxed()), 1 => value_path].boxed();
    arb_tree(leaf)
}

#[test]
fn a_chain_of_nots_prints_to_a_filter_within_the_same_depth_limit() {
    // Found by fuzz/fuzz_targets/filter.rs: `not x` counted one level and its printed form
    // `not (x)` two, so a filter near the limit printed to one over it.
    let limits = FilterLimits::default();
    for bare in [true, false] {
        let mut text = "userName pr".to_string();
        for _ in 0..limits.max_depth {
            text = if bare {
                format!("not {text}")
            } else {
                format!("not ({text})")
            };
        }
        let filter = Filter::parse(&text).expect("at the depth limit");
        let printed = filter.to_string();
        assert_eq!(Filter::parse(&printed).ok(), Some(filter), "{printed}");
        let deeper = format!("not ({text})");
        assert_eq!(
            Filter::parse(&deeper).map_err(|err| err.scim_type),
            Err(Some(ScimType::InvalidFilter))
        );
    }
}

proptest! {
    #[test]
    fn display_round_trips(filter in arb_filter()) {
        let text = filter.to_string();
        let parsed = Filter::parse_with_limits(&text, &FilterLimits { max_len: usize::MAX, max_depth: 64 });
        prop_assert_eq!(parsed.as_ref().ok(), Some(&filter), "{} -> {:?}", text, parsed);
    }

    #[test]
    fn parse_never_panics(text in "[ a-z\"()\\[\\].:!0-9]{0,40}") {
        let _ = Filter::parse(&text);
        let _ = crate::scim::path::PatchPath::parse(&text);
    }
}

#[test]
fn a_filter_tells_which_top_level_attributes_it_names() {
    let filter = Filter::parse(
        r#"userName eq "a" or not (urn:ietf:params:scim:schemas:core:2.0:User:GROUPS pr) and emails[type eq "work"]"#,
    )
    .expect("parses");
    for name in ["userName", "groups", "emails"] {
        assert!(filter.names_attribute(name), "{name}");
    }
    // `type` is a sub-attribute inside the value filter, not a top-level attribute.
    for name in ["type", "members", "displayName"] {
        assert!(!filter.names_attribute(name), "{name}");
    }
}
