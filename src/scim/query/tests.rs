use serde_json::json;

use super::*;
use crate::scim::test_schema::user as user_schema;

#[track_caller]
fn check_projection(query: &str, resource: serde_json::Value, expected: serde_json::Value) {
    let list_query = ListQuery::from_query_string(query).expect("query parses");
    assert_eq!(list_query.project(resource, &user_schema()), expected);
}

#[test]
fn projection_keeps_always_returned_and_drops_never_returned() {
    let user = json!({"id": "1", "userName": "u", "title": "t", "password": "p", "name": {"givenName": "g", "familyName": "f"}});
    check_projection(
        "attributes=title",
        user.clone(),
        json!({"id": "1", "title": "t"}),
    );
    check_projection(
        "attributes=name.givenName",
        user.clone(),
        json!({"id": "1", "name": {"givenName": "g"}}),
    );
    check_projection(
        "excludedAttributes=title,name",
        user.clone(),
        json!({"id": "1", "userName": "u"}),
    );
    // A value path names its attribute (Microsoft's test collection sends one).
    let with_emails = json!({"id": "1", "userName": "u", "emails": [{"value": "w@x", "type": "work"}, {"value": "h@x", "type": "home"}]});
    check_projection(
        "attributes=emails%5Btype%20eq%20%22work%22%5D",
        with_emails.clone(),
        json!({"id": "1", "emails": [{"value": "w@x", "type": "work"}, {"value": "h@x", "type": "home"}]}),
    );
    check_projection(
        "attributes=emails[type eq \"work\"].value",
        with_emails,
        json!({"id": "1", "emails": [{"value": "w@x"}, {"value": "h@x"}]}),
    );
    assert!(ListQuery::from_query_string("attributes=emails%5Btype%20eq%5D").is_err());
    check_projection(
        "excludedAttributes=id",
        user.clone(),
        json!({"id": "1", "userName": "u", "title": "t", "name": {"givenName": "g", "familyName": "f"}}),
    );
}

#[test]
fn query_parameters_parse_with_tolerance() {
    let query = ListQuery::from_query_string(
        "filter=userName+eq+%22x%22&startIndex=0&count=-5&sortOrder=Descending&",
    )
    .expect("parses");
    assert_eq!(query.start_index, 1);
    assert_eq!(query.count, Some(0));
    assert_eq!(query.sort_order, SortOrder::Descending);
    assert!(query.filter.is_some());
    assert!(ListQuery::from_query_string("count=many").is_err());
    assert!(
        ListQuery::from_search_request(&json!({"schemas": ["urn:x"], "filter": "a pr"})).is_err()
    );
}

#[test]
fn sort_is_stable_and_puts_missing_values_last_ascending_and_first_descending() {
    let mut resources = vec![
        json!({"userName": "b"}),
        json!({"title": "none"}),
        json!({"userName": "A"}),
        json!({"userName": "a", "n": 2}),
    ];
    let mut sorted = |order: SortOrder| -> Vec<String> {
        sort(
            &mut resources,
            &AttrPath::new("userName"),
            order,
            &user_schema(),
        );
        resources
            .iter()
            .map(|r| {
                r["userName"].as_str().unwrap_or("-").to_string() + r.get("n").map_or("", |_| "2")
            })
            .collect()
    };
    assert_eq!(sorted(SortOrder::Ascending), ["A", "a2", "b", "-"]);
    // RFC 7644 §3.4.2.3: "ordered last if ascending and first if descending".
    assert_eq!(sorted(SortOrder::Descending), ["-", "b", "A", "a2"]);
}

#[test]
fn a_reply_naming_no_attributes_keeps_what_the_general_projection_keeps() {
    let attr = |name: &str, returned: &str, mutability: &str| json!({"name": name, "type": "string", "returned": returned, "mutability": mutability});
    let core: crate::scim::schema::Schema = serde_json::from_value(json!({
        "id": "urn:example:core", "name": "Core", "attributes": [
            attr("always", "always", "readOnly"), attr("never", "never", "readWrite"),
            attr("byDefault", "default", "readWrite"), attr("onRequest", "request", "readWrite"),
            attr("secret", "default", "writeOnly"), attr("Shared", "default", "readWrite"),
        ]
    }))
    .unwrap();
    let extension: crate::scim::schema::Schema = serde_json::from_value(json!({
        "id": "urn:example:ext", "name": "Ext", "attributes": [
            attr("extDefault", "default", "readWrite"), attr("extNever", "never", "readWrite"),
            attr("extOnly", "default", "readWrite"), attr("shared", "default", "readWrite"),
        ]
    }))
    .unwrap();
    let schema = ResourceSchema {
        core,
        extensions: vec![(extension, false)],
    };
    let full = json!({"schemas": ["urn:example:core"], "id": "1", "meta": {"version": "W/\"1\""},
           "always": "a", "never": "n", "BYDEFAULT": "d", "onRequest": "r", "secret": "s",
           "shared": "c", "unknown": "u", "extOnly": "top level",
           "URN:EXAMPLE:EXT": {"extDefault": "e", "extNever": "n", "other": "o"}});
    let docs = [
        full.clone(),
        json!({"urn:example:ext": {"extNever": "only hidden members"}, "never": "n"}),
        json!({"urn:example:ext": "not an object", "byDefault": ["x"]}),
        json!(["not", "an", "object"]),
    ];
    for doc in docs {
        assert_eq!(
            project(doc.clone(), &schema, &[], &[]),
            project_listed(doc.clone(), &schema, &[], &[]),
            "{doc}"
        );
    }
    let kept = project(full, &schema, &[], &[]);
    assert_eq!(
        kept,
        json!({"schemas": ["urn:example:core"], "id": "1", "meta": {"version": "W/\"1\""},
               "always": "a", "BYDEFAULT": "d", "shared": "c", "unknown": "u",
               "extOnly": "top level", "URN:EXAMPLE:EXT": {"extDefault": "e", "other": "o"}})
    );
}

#[test]
fn an_extension_urn_names_the_whole_extension() {
    let ext = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    let user = json!({"id": "1", "userName": "u", ext: {"department": "d", "employeeNumber": "7"}});
    check_projection(
        &format!("attributes={ext}"),
        user.clone(),
        json!({"id": "1", ext: {"department": "d", "employeeNumber": "7"}}),
    );
    check_projection(
        &format!("excludedAttributes={ext}"),
        user.clone(),
        json!({"id": "1", "userName": "u"}),
    );
    // One of its attributes still names only that one.
    check_projection(
        &format!("attributes={ext}:department"),
        user,
        json!({"id": "1", ext: {"department": "d"}}),
    );
}
