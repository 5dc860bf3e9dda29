use std::collections::HashMap;

use serde_json::{json, Value};

use super::config::RawUserMapping;
use super::*;
use crate::config::{Flavor, Problems};
use crate::directory::Mod;

fn schema() -> ResourceSchema {
    crate::scim::discovery::Discovery::load(
        "/scim/v2",
        crate::scim::discovery::Capabilities { max_results: 10 },
    )
    .expect("schemas load")
    .user_schema()
    .clone()
}

fn mapping(flavor: Flavor, edit: impl FnOnce(&mut RawUserMapping)) -> UserMapping {
    let mut raw = RawUserMapping {
        base_dn: Some("ou=people,dc=example,dc=com".to_string()),
        ..RawUserMapping::default()
    };
    edit(&mut raw);
    let mut problems = Problems::default();
    let (schema, _) = crate::scim::discovery::resource_schemas().expect("schemas load");
    let mapping = UserMapping::from_raw(raw, Some(flavor), Some(&schema), &mut problems);
    assert!(problems.0.is_empty(), "{:?}", problems.0);
    mapping.expect("mapping")
}

/// The modify that deactivating `user` produces under `mapping`.
#[track_caller]
fn check_deactivation(mapping: &UserMapping, expected: &[Mod]) {
    let schema = schema();
    let user =
        json!({"userName": "bjensen", "name": {"givenName": "Barbara", "familyName": "Jensen"}});
    let mut disabled = user.clone();
    disabled["active"] = json!(false);
    let before = mapping.project("id-1", &user, &schema, &HashMap::new());
    let after = mapping.project("id-1", &disabled, &schema, &HashMap::new());
    assert_eq!(diff(&before, &after, &mapping.rdn_attribute), expected);
    // Reactivation undoes exactly that.
    let undo = diff(&after, &before, &mapping.rdn_attribute);
    assert_eq!(undo.len(), expected.len());
}

#[test]
fn each_flavor_deactivates_with_its_own_modify() {
    check_deactivation(
        &mapping(Flavor::OpenLdap, |_| {}),
        &[Mod::Replace(
            "pwdAccountLockedTime".into(),
            vec!["000001010000Z".into()],
        )],
    );
    check_deactivation(
        &mapping(Flavor::Ds389, |_| {}),
        &[Mod::Replace("nsAccountLock".into(), vec!["TRUE".into()])],
    );
    check_deactivation(
        &mapping(Flavor::ActiveDirectory, |_| {}),
        &[Mod::Replace(
            "userAccountControl".into(),
            vec!["514".into()],
        )],
    );
    check_deactivation(
        &mapping(Flavor::Generic, |raw| {
            raw.deactivate = Some("attribute".into());
            raw.deactivate_attribute = Some("employeeType".into());
            raw.deactivate_value = Some("disabled".into());
            raw.attributes = Some(
                [(
                    "employeeType".to_string(),
                    config::RawSource::One(String::new()),
                )]
                .into(),
            );
        }),
        &[Mod::Replace("employeeType".into(), vec!["disabled".into()])],
    );
    let moving = mapping(Flavor::OpenLdap, |raw| {
        raw.deactivate = Some("move".into());
        raw.disabled_base_dn = Some("ou=disabled,dc=example,dc=com".into());
    });
    let schema = schema();
    let off = moving.project(
        "id",
        &json!({"userName": "a,b", "active": false}),
        &schema,
        &HashMap::new(),
    );
    assert_eq!(off.dn, r"uid=a\2cb,ou=disabled,dc=example,dc=com");
    assert_eq!(parent_dn(&off.dn), "ou=disabled,dc=example,dc=com");
    assert_eq!(rdn(&off.dn), r"uid=a\2cb");
}

#[track_caller]
fn check_values(resource: Value, attr: &str, expected: &[&str]) {
    let projection =
        mapping(Flavor::OpenLdap, |_| {}).project("id-1", &resource, &schema(), &HashMap::new());
    let values: Vec<&str> = projection
        .attrs
        .get(attr)
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(values, expected, "{attr} of {resource}");
}

#[test]
fn default_rules_pick_fallbacks_and_skip_empty_values() {
    check_values(
        json!({"userName": "u", "name": {"givenName": "A", "familyName": "B"}}),
        "cn",
        &["A B"],
    );
    check_values(
        json!({"userName": "u", "name": {"formatted": "Dr A B"}}),
        "cn",
        &["Dr A B"],
    );
    check_values(
        json!({"userName": "u", "displayName": "Disp"}),
        "cn",
        &["Disp"],
    );
    check_values(json!({"userName": "u"}), "cn", &["u"]);
    check_values(json!({"userName": "u"}), "sn", &["u"]);
    check_values(json!({"userName": "u", "title": ""}), "title", &[]);
    let emails = json!([
        {"value": "home@x", "type": "home"},
        {"value": "work@x", "type": "work"},
        {"value": "primary@x", "type": "other", "primary": true},
    ]);
    check_values(
        json!({"userName": "u", "emails": emails}),
        "mail",
        &["primary@x"],
    );
    check_values(
        json!({"userName": "u", "emails": [{"value": "home@x", "type": "home"}, {"value": "work@x", "type": "work"}]}),
        "mail",
        &["work@x"],
    );
    check_values(
        json!({"userName": "u", "phoneNumbers": [{"value": "1", "type": "work"}, {"value": "2", "type": "mobile"}]}),
        "mobile",
        &["2"],
    );
    check_values(
        json!({"userName": "u", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "D"}}),
        "departmentNumber",
        &["D"],
    );
    // Values the directory would call equal go once (it refuses a value twice in a change).
    check_values(
        json!({"userName": "u", "emails": [{"value": "Ann@x"}, {"value": "b@x"}, {"value": "ann@X"}]}),
        "mail",
        &["Ann@x", "b@x"],
    );
}

#[test]
fn diff_replaces_only_what_changed_and_never_the_rdn() {
    let m = mapping(Flavor::OpenLdap, |_| {});
    let schema = schema();
    let old = m.project(
        "i",
        &json!({"userName": "u", "title": "A", "displayName": "D"}),
        &schema,
        &HashMap::new(),
    );
    let new = m.project(
        "i",
        &json!({"userName": "v", "title": "B"}),
        &schema,
        &HashMap::new(),
    );
    let mut mods = diff(&old, &new, "uid");
    mods.sort_by(|a, b| a.attr().cmp(b.attr()));
    assert_eq!(
        mods,
        [
            Mod::Replace("cn".into(), vec!["v".into()]),
            Mod::Replace("displayName".into(), vec![]),
            Mod::Replace("sn".into(), vec!["v".into()]),
            Mod::Replace("title".into(), vec!["B".into()]),
        ]
    );
    assert!(diff(&old, &old, "uid").is_empty());
}

/// Another RDN attribute takes the place of its default rule (`cn` for `rdn_attribute =
/// "cn"`), and `uid` still holds the user name; configuring a rule for the RDN attribute is
/// refused, since scim2ldap writes it itself.
#[test]
fn another_rdn_attribute_replaces_its_default_rule() {
    let m = mapping(Flavor::OpenLdap, |raw| {
        raw.rdn_attribute = Some("cn".into())
    });
    let user = json!({"userName": "bjensen", "displayName": "Barbara Jensen"});
    let projection = m.project("i", &user, &schema(), &HashMap::new());
    assert_eq!(projection.dn, "cn=bjensen,ou=people,dc=example,dc=com");
    let attrs: HashMap<String, Vec<String>> = projection.to_add_attrs().into_iter().collect();
    assert_eq!(attrs["cn"], ["bjensen"]);
    assert_eq!(attrs["uid"], ["bjensen"]);
    assert_eq!(attrs["displayName"], ["Barbara Jensen"]);
    // With the default RDN, `uid` is the RDN's and written once.
    let m = mapping(Flavor::OpenLdap, |_| {});
    let projection = m.project("i", &user, &schema(), &HashMap::new());
    let uids: Vec<_> = projection
        .to_add_attrs()
        .into_iter()
        .filter(|(attr, _)| attr.eq_ignore_ascii_case("uid"))
        .collect();
    assert_eq!(uids, [("uid".to_string(), vec!["bjensen".to_string()])]);

    let (schema, _) = crate::scim::discovery::resource_schemas().expect("schemas load");
    let problems_with = |cn_source: &str| {
        let raw = RawUserMapping {
            base_dn: Some("ou=people,dc=example,dc=com".to_string()),
            rdn_attribute: Some("cn".into()),
            attributes: Some(
                [("cn".to_string(), RawSource::One(cn_source.into()))]
                    .into_iter()
                    .collect(),
            ),
            ..RawUserMapping::default()
        };
        let mut problems = Problems::default();
        let _ = UserMapping::from_raw(raw, Some(Flavor::OpenLdap), Some(&schema), &mut problems);
        problems.0
    };
    let problems = problems_with("displayName");
    assert!(
        problems
            .iter()
            .any(|p| p
                .contains("`users.attributes.cn`: this attribute is written by scim2ldap itself")),
        "{problems:?}"
    );
    // `""` (removing a default) is no conflict.
    assert!(problems_with("").is_empty());
}

/// DN keys fold case and the spelling of escapes, but a structural character stays escaped:
/// one RDN holding `a,ou=b` is not the DN `uid=a,ou=b`.
#[test]
fn dn_keys_fold_escapes_without_changing_structure() {
    assert_eq!(
        dn_key("cn=Sales\\2C EMEA,ou=Groups"),
        "cn=sales\\, emea,ou=groups"
    );
    assert_eq!(
        dn_key("cn=Sales\\, EMEA,ou=Groups"),
        "cn=sales\\, emea,ou=groups"
    );
    assert_ne!(dn_key("uid=a\\2cou\\3db,dc=x"), dn_key("uid=a,ou=b,dc=x"));
    assert_eq!(
        dn_key("uid=a\\2cou\\3db,dc=x"),
        dn_key("uid=a\\,ou\\=b,dc=x")
    );
    // Other escapes decode: UTF-8 bytes, a space.
    assert_eq!(dn_key("cn=Ren\\C3\\A9\\20X"), "cn=rené x");
}

#[test]
fn sources_parse_paths_templates_and_references() {
    assert!(matches!(
        parse_source("name.givenName"),
        Ok(Source::Path(_))
    ));
    assert!(matches!(
        parse_source("dn:manager.value"),
        Ok(Source::DnRef(_))
    ));
    assert!(
        matches!(parse_source("{name.givenName}.{name.familyName}@example.com"), Ok(Source::Template(parts)) if parts.len() == 4)
    );
    assert!(parse_source("{name.givenName").is_err());
    assert!(parse_source("name.").is_err());
}

#[test]
fn ssha_matches_rfc_2307_style_hashes() {
    assert_eq!(
        ssha("secret", &[1, 2, 3, 4, 5, 6, 7, 8]),
        "{SSHA}lHFzXul4wnzRItssVcTnvXWRjNgBAgMEBQYHCA=="
    );
}

// ---------------------------------------------------------------------------------------------
// An update projects only the rules that read a changed member: the modify must be the one the
// full projections give, for any two versions of a user.
// ---------------------------------------------------------------------------------------------

mod partial_projection {
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    use super::*;

    const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

    /// The default rules plus a template reading two members, an extension attribute named
    /// without its URN, and a value filter.
    fn rich_mapping() -> UserMapping {
        mapping(Flavor::OpenLdap, |raw| {
            raw.attributes = Some(
                [
                    (
                        "description",
                        "{title} at {urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:organization}",
                    ),
                    ("employeeNumber", "employeeNumber"),
                    ("homePhone", r#"phoneNumbers[type eq "home"].value"#),
                ]
                .into_iter()
                .map(|(attr, source)| (attr.to_string(), config::RawSource::One(source.into())))
                .collect(),
            );
        })
    }

    fn maybe(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
        proptest::option::of(value)
    }

    fn word() -> impl Strategy<Value = Value> {
        proptest::sample::select(vec!["a", "b", ""]).prop_map(Value::from)
    }

    fn multi(types: &'static [&'static str]) -> impl Strategy<Value = Value> {
        proptest::collection::vec(
            (proptest::sample::select(types.to_vec()), word(), any::<bool>()).prop_map(
                |(kind, value, primary)| json!({"type": kind, "value": value, "primary": primary}),
            ),
            0..3,
        )
        .prop_map(Value::Array)
    }

    /// A user document with any subset of the mapped members, some keys in other cases.
    fn user() -> impl Strategy<Value = Value> {
        (
            proptest::sample::select(vec!["bjensen", "jsmith"]),
            maybe(any::<bool>().prop_map(Value::Bool)),
            maybe(word()),
            maybe((word(), word()).prop_map(|(g, f)| json!({"givenName": g, "familyName": f}))),
            maybe(multi(&["work", "home"])),
            maybe(multi(&["work", "mobile", "home"])),
            maybe(
                (maybe(word()), maybe(word()), maybe(word()), maybe(word())).prop_map(
                    |(department, organization, number, manager)| {
                        let mut ext = Map::new();
                        for (key, value) in [
                            ("department", department),
                            ("organization", organization),
                            ("employeeNumber", number),
                        ] {
                            if let Some(value) = value {
                                ext.insert(key.to_string(), value);
                            }
                        }
                        if let Some(manager) = manager {
                            ext.insert("manager".to_string(), json!({ "value": manager }));
                        }
                        Value::Object(ext)
                    },
                ),
            ),
            maybe(word()),
            any::<bool>(),
        )
            .prop_map(
                |(name, active, title, names, emails, phones, ext, display, upper)| {
                    let mut doc = Map::new();
                    doc.insert("userName".into(), name.into());
                    let title_key = if upper { "Title" } else { "title" };
                    for (key, value) in [
                        ("active", active),
                        (title_key, title),
                        ("name", names),
                        ("emails", emails),
                        ("phoneNumbers", phones),
                        (ENT, ext),
                        ("displayName", display),
                    ] {
                        if let Some(value) = value {
                            doc.insert(key.to_string(), value);
                        }
                    }
                    Value::Object(doc)
                },
            )
    }

    proptest! {
        #[test]
        fn an_update_maps_what_the_full_projections_differ_in(old in user(), new in user()) {
            let mapping = rich_mapping();
            let schema = schema();
            let dns: HashMap<String, String> = [("a", "uid=a,ou=people,dc=example,dc=com")]
                .into_iter()
                .map(|(id, dn)| (id.to_string(), dn.to_string()))
                .collect();
            let full_old = mapping.project("id-1", &old, &schema, &dns);
            let full_new = mapping.project("id-1", &new, &schema, &dns);
            let changed = changed_members(&old, &new);
            let part_old = mapping.project_changed("id-1", &old, &schema, &dns, &changed);
            let part_new = mapping.project_changed("id-1", &new, &schema, &dns, &changed);
            prop_assert_eq!(&part_old.dn, &full_old.dn);
            prop_assert_eq!(&part_new.dn, &full_new.dn);
            prop_assert_eq!(
                diff(&part_old, &part_new, "uid"),
                diff(&full_old, &full_new, "uid")
            );
        }
    }

    #[test]
    fn rules_know_the_members_they_read() {
        let mapping = rich_mapping();
        let reads = |attr: &str| {
            mapping
                .rules
                .iter()
                .find(|rule| rule.ldap_attr == attr)
                .and_then(|rule| rule.reads.clone())
                .unwrap_or_else(|| panic!("{attr}: no rule, or its reads unknown"))
        };
        let ent = ENT.to_ascii_lowercase();
        assert_eq!(reads("description"), ["title".to_string(), ent.clone()]);
        assert_eq!(reads("employeeNumber"), std::slice::from_ref(&ent));
        assert_eq!(reads("homePhone"), ["phonenumbers"]);
        assert_eq!(reads("cn"), ["name", "displayname", "username"]);
        assert_eq!(reads("manager"), [ent]);
        // A title changed in case only is no change; one removed is.
        let old = json!({"userName": "x", "title": "a"});
        assert!(changed_members(&old, &json!({"userName": "x", "Title": "a"})).is_empty());
        assert_eq!(changed_members(&old, &json!({"userName": "x"})), ["title"]);
    }
}

#[test]
fn ad_account_control_sets_only_the_disable_bit() {
    use super::{ad_account_control, ad_disabled};
    assert_eq!(ad_account_control(None, false).as_deref(), Some("512"));
    assert_eq!(ad_account_control(None, true).as_deref(), Some("514"));
    assert_eq!(
        ad_account_control(Some("66048"), true).as_deref(),
        Some("66050")
    );
    assert_eq!(
        ad_account_control(Some("66050"), false).as_deref(),
        Some("66048")
    );
    assert_eq!(ad_account_control(Some("66050"), true), None);
    assert_eq!(ad_account_control(Some("512"), false), None);
    assert_eq!(
        ad_account_control(Some("junk"), true).as_deref(),
        Some("514")
    );
    assert!(ad_disabled(&["66050".into()]));
    assert!(ad_disabled(&["514".into()]));
    assert!(!ad_disabled(&["66048".into()]));
    assert!(!ad_disabled(&["junk".into()]));
    assert!(!ad_disabled(&[]));
}

/// A ppolicy lockout after failed binds (a timestamp in `pwdAccountLockedTime`) is the
/// directory's own: no drift for an active user, and a rebuilt user holding one is active.
/// Only scim2ldap's permanent value means suspended.
#[test]
fn a_ppolicy_lockout_is_not_a_suspension() {
    let m = mapping(Flavor::OpenLdap, |_| {});
    let schema = schema();
    let user = json!({"userName": "bjensen", "active": true});
    let expected = m.project("id-1", &user, &schema, &HashMap::new());
    let entry = |lock: &[&str]| -> BTreeMap<String, Vec<String>> {
        let mut attrs: BTreeMap<String, Vec<String>> = expected.attrs.clone();
        attrs.insert(
            "pwdAccountLockedTime".to_string(),
            lock.iter().map(|v| v.to_string()).collect(),
        );
        attrs
    };
    let lock_drift = |lock: &[&str], wanted: &Projection| {
        drift(&entry(lock), wanted, "uid").contains(&PPOLICY_LOCK_ATTR.to_string())
    };
    assert!(!lock_drift(&["20261130010101Z"], &expected));
    assert!(lock_drift(&[PPOLICY_LOCK_VALUE], &expected));
    let suspended = m.project(
        "id-1",
        &json!({"userName": "bjensen", "active": false}),
        &schema,
        &HashMap::new(),
    );
    assert!(!lock_drift(&[PPOLICY_LOCK_VALUE], &suspended));
    assert!(lock_drift(&["20261130010101Z"], &suspended));
    assert!(lock_drift(&[], &suspended));

    let dn = "uid=bjensen,ou=people,dc=example,dc=com";
    for (lock, active) in [("20261130010101Z", true), (PPOLICY_LOCK_VALUE, false)] {
        let unprojected = m.unproject(dn, &entry(&[lock]), &schema);
        assert_eq!(unprojected.doc["active"], json!(active), "{lock}");
    }
}
