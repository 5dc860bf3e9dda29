//! Entry -> resource: the mapped part of a resource read back from its directory entry, for
//! rebuilding a lost cache. Pure.
//!
//! Only rules whose sources are all plain paths can be reversed (the first path gets the
//! values); templates and computed fallbacks cannot be told apart from sent values, so they are
//! left out, as is anything the directory does not hold (`externalId` unless mapped).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{AttrRule, Deactivate, GroupMapping, Source, UserMapping};
use crate::scim::filter::{CompareOp, Filter};
use crate::scim::path::{resolve, PatchPath};
use crate::scim::schema::ResourceSchema;

/// A user resource rebuilt from an entry, with the manager's DN still to be resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Unprojected {
    /// The resource document (without `id`, `meta`, and the manager reference).
    pub doc: Value,
    /// The manager's DN, when a `dn:` rule maps one (the caller turns it into an id).
    pub manager_dn: Option<(PatchPath, String)>,
}

impl UserMapping {
    /// The resource that `entry` (attribute -> values) under `dn` stands for.
    pub fn unproject(
        &self,
        dn: &str,
        entry: &BTreeMap<String, Vec<String>>,
        schema: &ResourceSchema,
    ) -> Unprojected {
        let get = |attr: &str| values_of(entry, attr);
        let mut doc = Map::new();
        if let Some(user_name) = get(&self.rdn_attribute).into_iter().next() {
            doc.insert("userName".to_string(), Value::String(user_name));
        }
        let manager_dn = unproject_rules(&self.rules, entry, schema, &mut doc);
        let locked = |attr: &str, value: &str| {
            get(attr)
                .iter()
                .any(|have| have.eq_ignore_ascii_case(value))
        };
        let active = match &self.deactivate {
            // Only scim2ldap's permanent value: a timestamp is ppolicy's own lockout after
            // failed binds, which ends by itself.
            Deactivate::PpolicyLock => !locked(super::PPOLICY_LOCK_ATTR, super::PPOLICY_LOCK_VALUE),
            Deactivate::NsAccountLock => !locked("nsAccountLock", "TRUE"),
            Deactivate::AdUserAccountControl => {
                !super::ad_disabled(&get(super::AD_ACCOUNT_CONTROL))
            }
            Deactivate::Attribute { attr, value } => !locked(attr, value),
            Deactivate::Move { disabled_base_dn } => {
                super::dn_key(super::parent_dn(dn)) != super::dn_key(disabled_base_dn)
            }
        };
        doc.insert("active".to_string(), Value::Bool(active));
        Unprojected {
            doc: Value::Object(doc),
            manager_dn,
        }
    }
}

impl GroupMapping {
    /// The group document (`displayName` and what the reversible rules map) that `entry`
    /// stands for; members are the caller's.
    pub fn unproject(
        &self,
        entry: &BTreeMap<String, Vec<String>>,
        schema: &ResourceSchema,
    ) -> Value {
        let mut doc = Map::new();
        if let Some(name) = values_of(entry, &self.rdn_attribute).into_iter().next() {
            doc.insert("displayName".to_string(), Value::String(name));
        }
        unproject_rules(&self.rules, entry, schema, &mut doc);
        Value::Object(doc)
    }
}

/// The values of `attr` in `entry`, named ignoring case.
fn values_of(entry: &BTreeMap<String, Vec<String>>, attr: &str) -> Vec<String> {
    entry
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(attr))
        .map(|(_, values)| values.clone())
        .unwrap_or_default()
}

/// Writes the values of every reversible rule into `doc`; the DN a `dn:` rule holds, with its
/// path, for the caller to resolve.
fn unproject_rules(
    rules: &[AttrRule],
    entry: &BTreeMap<String, Vec<String>>,
    schema: &ResourceSchema,
    doc: &mut Map<String, Value>,
) -> Option<(PatchPath, String)> {
    let mut reference = None;
    for rule in rules {
        let values = values_of(entry, &rule.ldap_attr);
        if values.is_empty() {
            continue;
        }
        match reversible(rule) {
            Some(Reverse::Path(path)) => set_path(doc, path, &values, schema),
            Some(Reverse::Dn(path)) => reference = Some((path.clone(), values[0].clone())),
            None => {}
        }
    }
    reference
}

enum Reverse<'a> {
    Path(&'a PatchPath),
    Dn(&'a PatchPath),
}

fn reversible(rule: &AttrRule) -> Option<Reverse<'_>> {
    match rule.sources.as_slice() {
        [Source::DnRef(path)] => Some(Reverse::Dn(path)),
        sources
            if sources
                .iter()
                .all(|source| matches!(source, Source::Path(_))) =>
        {
            match sources.first() {
                Some(Source::Path(path)) => Some(Reverse::Path(path)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Writes `values` at `path` in `doc`: a value filter `sub eq literal` becomes that
/// sub-attribute of each element written.
pub fn set_path(
    doc: &mut Map<String, Value>,
    path: &PatchPath,
    values: &[String],
    schema: &ResourceSchema,
) {
    let Some(resolved) = resolve(schema, path.attr_path()) else {
        return;
    };
    let container = match resolved.extension {
        Some(urn) => match doc.entry(urn.to_string()).or_insert_with(|| json!({})) {
            Value::Object(object) => object,
            _ => return,
        },
        None => doc,
    };
    let attr = resolved.attr;
    let (sub_name, filter) = match path {
        PatchPath::Attr(_) => (resolved.sub.as_ref().map(|sub| sub.name.clone()), None),
        PatchPath::ValuePath {
            filter, sub_attr, ..
        } => (
            sub_attr.clone().or_else(|| Some("value".to_string())),
            Some(filter),
        ),
    };
    let leaf = |value: &str, sub_ty: Option<crate::scim::schema::AttrType>| -> Value {
        match sub_ty {
            Some(crate::scim::schema::AttrType::Boolean) => {
                Value::Bool(value.eq_ignore_ascii_case("TRUE"))
            }
            _ => Value::String(value.to_string()),
        }
    };
    match (&sub_name, attr.multi_valued) {
        (None, false) => {
            container.insert(attr.name.clone(), leaf(&values[0], Some(attr.ty)));
        }
        (None, true) => {
            container.insert(
                attr.name.clone(),
                Value::Array(values.iter().map(|v| leaf(v, Some(attr.ty))).collect()),
            );
        }
        (Some(sub), false) => {
            let sub_ty = attr.sub_attribute(sub).map(|s| s.ty);
            let object = container
                .entry(attr.name.clone())
                .or_insert_with(|| json!({}));
            if let Value::Object(object) = object {
                object.insert(sub.clone(), leaf(&values[0], sub_ty));
            }
        }
        (Some(sub), true) => {
            let sub_ty = attr.sub_attribute(sub).map(|s| s.ty);
            let elements = container
                .entry(attr.name.clone())
                .or_insert_with(|| json!([]));
            if let Value::Array(elements) = elements {
                for value in values {
                    let mut element = Map::new();
                    element.insert(sub.clone(), leaf(value, sub_ty));
                    if let Some(Filter::Compare {
                        path,
                        op: CompareOp::Eq,
                        value: literal,
                    }) = filter
                    {
                        element.insert(path.name.clone(), literal.clone());
                    }
                    elements.push(Value::Object(element));
                }
            }
        }
    }
}
