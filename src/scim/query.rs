//! List queries (RFC 7644 §3.4.2, §3.4.3): filter, sort, paging and attribute projection,
//! read from a query string or a `SearchRequest` body, and applied to resources.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::filter::Filter;
use super::path::{get_ci, resolve, resolve_name, values_of, AttrPath, PatchPath};
use super::schema::{Attribute, Mutability, ResourceSchema, Returned};
use super::ScimError;

/// URN of the `SearchRequest` message.
pub const SEARCH_REQUEST_URN: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
/// URN of the `ListResponse` message.
pub const LIST_RESPONSE_URN: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

/// Sort direction (RFC 7644 §3.4.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// Smallest first (the default).
    #[default]
    Ascending,
    /// Largest first.
    Descending,
}

/// A parsed list request.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// `filter`.
    pub filter: Option<Filter>,
    /// `startIndex`, 1-based; values below 1 count as 1.
    pub start_index: usize,
    /// `count`; `None` means the server's maximum.
    pub count: Option<usize>,
    /// `sortBy`.
    pub sort_by: Option<AttrPath>,
    /// `sortOrder`.
    pub sort_order: SortOrder,
    /// `attributes`: return only these (plus those returned always).
    pub attributes: Vec<AttrPath>,
    /// `excludedAttributes`: leave these out (unless returned always).
    pub excluded_attributes: Vec<AttrPath>,
}

impl ListQuery {
    /// Reads a query string such as `filter=userName+eq+%22x%22&startIndex=1&count=10`.
    /// Parameter names ignore case; a stray `&` or `?` (OneLogin) is harmless.
    pub fn from_query_string(query: &str) -> Result<ListQuery, ScimError> {
        let mut list_query = ListQuery {
            start_index: 1,
            ..ListQuery::default()
        };
        for (name, value) in form_urlencoded::parse(query.trim_start_matches('?').as_bytes()) {
            list_query.set(&name, Value::String(value.into_owned()))?;
        }
        Ok(list_query)
    }

    /// Reads a `SearchRequest` body (RFC 7644 §3.4.3).
    pub fn from_search_request(body: &Value) -> Result<ListQuery, ScimError> {
        let mut list_query = ListQuery {
            start_index: 1,
            ..ListQuery::default()
        };
        let Some(object) = body.as_object() else {
            return Err(ScimError::invalid_syntax(
                "a SearchRequest must be a JSON object",
            ));
        };
        for (name, value) in object {
            if name.eq_ignore_ascii_case("schemas") {
                let names_search = values_of(value)
                    .filter_map(Value::as_str)
                    .any(|urn| urn.eq_ignore_ascii_case(SEARCH_REQUEST_URN));
                if !names_search {
                    return Err(ScimError::invalid_syntax(format!(
                        "`schemas` must contain {SEARCH_REQUEST_URN}"
                    )));
                }
                continue;
            }
            list_query.set(name, value.clone())?;
        }
        Ok(list_query)
    }

    fn set(&mut self, name: &str, value: Value) -> Result<(), ScimError> {
        let text = || match &value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let paths = |value: &Value| -> Result<Vec<AttrPath>, ScimError> {
            let items: Vec<String> = match value {
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                Value::String(text) => text.split(',').map(str::to_string).collect(),
                _ => Vec::new(),
            };
            items
                .iter()
                .map(|item| item.trim())
                .filter(|item| !item.is_empty())
                .map(projected_path)
                .collect()
        };
        match name.to_ascii_lowercase().as_str() {
            "filter" => {
                let filter_text = text();
                if !filter_text.trim().is_empty() {
                    self.filter = Some(Filter::parse(&filter_text)?);
                }
            }
            "startindex" => {
                let start = parse_integer("startIndex", &value)?;
                self.start_index = usize::try_from(start.max(1)).unwrap_or(1);
            }
            "count" => {
                // RFC 7644 §3.4.2.4: a negative count is treated as 0.
                let count = parse_integer("count", &value)?;
                self.count = Some(usize::try_from(count.max(0)).unwrap_or(0));
            }
            "sortby" => self.sort_by = Some(AttrPath::parse(text().trim())?),
            "sortorder" => {
                self.sort_order = match text().to_ascii_lowercase().as_str() {
                    "ascending" => SortOrder::Ascending,
                    "descending" => SortOrder::Descending,
                    other => {
                        return Err(ScimError::invalid_value(format!(
                            "sortOrder `{other}` is not ascending or descending"
                        )))
                    }
                }
            }
            "attributes" => self.attributes = paths(&value)?,
            "excludedattributes" => self.excluded_attributes = paths(&value)?,
            // Unknown parameters are ignored, as HTTP servers do.
            _ => {}
        }
        Ok(())
    }

    /// Applies the projection to one rendered resource.
    pub fn project(&self, resource: Value, schema: &ResourceSchema) -> Value {
        project(
            resource,
            schema,
            &self.attributes,
            &self.excluded_attributes,
        )
    }
}

/// One name of `attributes` or `excludedAttributes`: attribute notation (RFC 7644 §3.10). A
/// value path such as `emails[type eq "work"]` (Microsoft's test collection sends it) names its
/// attribute: the filter must parse, and the whole attribute is projected.
fn projected_path(item: &str) -> Result<AttrPath, ScimError> {
    if !item.contains('[') {
        return AttrPath::parse(item);
    }
    match PatchPath::parse(item)? {
        PatchPath::Attr(path) => Ok(path),
        PatchPath::ValuePath { path, sub_attr, .. } => Ok(AttrPath {
            sub: sub_attr,
            ..path
        }),
    }
}

fn parse_integer(name: &str, value: &Value) -> Result<i64, ScimError> {
    let parsed = match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.trim().parse::<i64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| ScimError::invalid_value(format!("{name} must be an integer")))
}

/// Keeps what RFC 7644 §3.9 says to return: with `attributes`, only those (and their parents
/// and sub-attributes); with `excludedAttributes`, all but those; attributes returned `always`
/// stay, and those returned `never` (password) are always dropped.
pub fn project(
    resource: Value,
    schema: &ResourceSchema,
    attributes: &[AttrPath],
    excluded: &[AttrPath],
) -> Value {
    if attributes.is_empty() && excluded.is_empty() {
        project_default(resource, schema)
    } else {
        project_listed(resource, schema, attributes, excluded)
    }
}

/// `project` without `attributes` or `excludedAttributes`, as nearly every reply is: all but
/// what is returned `never` or on `request` and what is write-only, decided per member in
/// place (the general case builds a path per member and a new object).
fn project_default(resource: Value, schema: &ResourceSchema) -> Value {
    let Value::Object(mut object) = resource else {
        return resource;
    };
    object.retain(|key, value| {
        if let Some(extension) = schema.extension(key) {
            let Value::Object(members) = value else {
                return false;
            };
            members.retain(|name, _| {
                returned_by_default(resolve_name(schema, Some(&extension.id), name), name)
            });
            return !members.is_empty();
        }
        returned_by_default(resolve_name(schema, None, key), key)
    });
    Value::Object(object)
}

/// Whether an attribute (`None`: one the schema does not define) is in a reply that names no
/// attributes; the rules of `project_attr` with both lists empty.
fn returned_by_default(attr: Option<(Option<&str>, &Attribute)>, name: &str) -> bool {
    let Some((_, attr)) = attr else {
        return true;
    };
    if never_returned(attr) {
        return false;
    }
    attr.returned != Returned::Request || name.eq_ignore_ascii_case("schemas")
}

/// An attribute no reply carries: returned `never`, or write-only (a password).
fn never_returned(attr: &Attribute) -> bool {
    attr.returned == Returned::Never || attr.mutability == Mutability::WriteOnly
}

fn project_listed(
    resource: Value,
    schema: &ResourceSchema,
    attributes: &[AttrPath],
    excluded: &[AttrPath],
) -> Value {
    let Value::Object(object) = resource else {
        return resource;
    };
    let mut kept = Map::new();
    for (key, value) in object {
        let is_extension = schema.extension(&key).is_some();
        if is_extension {
            let Value::Object(ext_object) = value else {
                continue;
            };
            // The extension's URN alone names all of it (RFC 7644 §3.10).
            if excluded.iter().any(|path| path.is_schema(&key)) {
                continue;
            }
            let whole = attributes.iter().any(|path| path.is_schema(&key));
            let mut ext_kept = Map::new();
            for (name, value) in ext_object {
                let path = AttrPath {
                    urn: Some(key.clone()),
                    name: name.clone(),
                    sub: None,
                };
                let listed = if whole { &[][..] } else { attributes };
                if let Some(value) = project_attr(schema, &path, value, listed, excluded) {
                    ext_kept.insert(name, value);
                }
            }
            if !ext_kept.is_empty() {
                kept.insert(key, Value::Object(ext_kept));
            }
            continue;
        }
        let path = AttrPath::new(key.clone());
        if let Some(value) = project_attr(schema, &path, value, attributes, excluded) {
            kept.insert(key, value);
        }
    }
    Value::Object(kept)
}

fn same_attr(schema: &ResourceSchema, a: &AttrPath, b_urn: Option<&str>, b_name: &str) -> bool {
    let a_urn = a.urn.as_deref().or_else(|| {
        resolve(schema, &AttrPath::new(a.name.clone())).and_then(|resolved| resolved.extension)
    });
    let urn_equal = match (a_urn, b_urn) {
        (None, None) => true,
        (Some(x), Some(y)) => x.eq_ignore_ascii_case(y) || schema.core.id.eq_ignore_ascii_case(x),
        (Some(x), None) => schema.core.id.eq_ignore_ascii_case(x),
        (None, Some(_)) => false,
    };
    urn_equal && a.name.eq_ignore_ascii_case(b_name)
}

fn project_attr(
    schema: &ResourceSchema,
    path: &AttrPath,
    value: Value,
    attributes: &[AttrPath],
    excluded: &[AttrPath],
) -> Option<Value> {
    let resolved = resolve(schema, path);
    let returned = resolved
        .as_ref()
        .map(|resolved| resolved.attr.returned)
        .unwrap_or_default();
    let always = returned == Returned::Always || path.name.eq_ignore_ascii_case("schemas");
    if resolved
        .as_ref()
        .is_some_and(|resolved| never_returned(resolved.attr))
    {
        return None;
    }
    if always {
        return Some(value);
    }
    let urn = path.urn.as_deref();
    if !attributes.is_empty() {
        let wanted: Vec<&AttrPath> = attributes
            .iter()
            .filter(|wanted| same_attr(schema, wanted, urn, &path.name))
            .collect();
        if wanted.is_empty() {
            return None;
        }
        if wanted.iter().any(|wanted| wanted.sub.is_none()) {
            return Some(value);
        }
        let subs: Vec<&str> = wanted
            .iter()
            .filter_map(|wanted| wanted.sub.as_deref())
            .collect();
        return keep_subs(value, &subs, true);
    }
    if returned == Returned::Request {
        return None;
    }
    let unwanted: Vec<&AttrPath> = excluded
        .iter()
        .filter(|unwanted| same_attr(schema, unwanted, urn, &path.name))
        .collect();
    if unwanted.iter().any(|unwanted| unwanted.sub.is_none()) {
        return None;
    }
    let subs: Vec<&str> = unwanted
        .iter()
        .filter_map(|unwanted| unwanted.sub.as_deref())
        .collect();
    if subs.is_empty() {
        return Some(value);
    }
    keep_subs(value, &subs, false)
}

/// Keeps (`keep`) or drops (`!keep`) the named sub-attributes of a complex value or array.
fn keep_subs(value: Value, subs: &[&str], keep: bool) -> Option<Value> {
    let filter_object = |object: Map<String, Value>| -> Map<String, Value> {
        object
            .into_iter()
            .filter(|(name, _)| subs.iter().any(|sub| sub.eq_ignore_ascii_case(name)) == keep)
            .collect()
    };
    match value {
        Value::Object(object) => Some(Value::Object(filter_object(object))),
        Value::Array(items) => Some(Value::Array(
            items
                .into_iter()
                .map(|item| match item {
                    Value::Object(object) => Value::Object(filter_object(object)),
                    other => other,
                })
                .collect(),
        )),
        other => Some(other),
    }
}

/// Sorts resources by `sort_by` (RFC 7644 §3.4.2.3): strings ignore case unless `caseExact`,
/// multi-valued attributes sort by their primary (or first) value, and resources without a
/// value sort last if ascending and first if descending. The sort is stable, so equal keys
/// keep creation order.
pub fn sort(
    resources: &mut [Value],
    sort_by: &AttrPath,
    order: SortOrder,
    schema: &ResourceSchema,
) {
    let case_exact = resolve(schema, sort_by)
        .map(|resolved| resolved.sub.unwrap_or(resolved.attr).case_exact)
        .unwrap_or(false);
    let key = |resource: &Value| -> Option<Value> {
        let resolved = resolve(schema, sort_by)?;
        let value = resolved.value(resource)?;
        let value = match value {
            Value::Array(items) => items
                .iter()
                .find(|item| item.get("primary").and_then(Value::as_bool) == Some(true))
                .or_else(|| items.first())?,
            other => other,
        };
        let value = match (&sort_by.sub, value) {
            (Some(sub), Value::Object(object)) => get_ci(object, sub)?,
            (None, Value::Object(object)) => get_ci(object, "value")?,
            (_, other) => other,
        };
        match value {
            Value::String(text) if !case_exact => Some(Value::String(text.to_lowercase())),
            Value::Null => None,
            other => Some(other.clone()),
        }
    };
    let mut keyed: Vec<(Option<Value>, Value)> = resources
        .iter_mut()
        .map(|resource| (key(resource), std::mem::take(resource)))
        .collect();
    keyed.sort_by(|(a, _), (b, _)| {
        let ordering = match (a, b) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(a), Some(b)) => compare_values(a, b),
        };
        match order {
            SortOrder::Ascending => ordering,
            SortOrder::Descending => ordering.reverse(),
        }
    });
    for (slot, (_, resource)) in resources.iter_mut().zip(keyed) {
        *slot = resource;
    }
}

fn compare_values(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a
            .as_f64()
            .partial_cmp(&b.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (a, b) => a.to_string().cmp(&b.to_string()),
    }
}

#[cfg(test)]
mod tests;
