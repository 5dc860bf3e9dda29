//! SCIM attribute paths: `attrPath` (RFC 7644 §3.4.2.2), the PATCH `path` (RFC 7644 §3.5.2),
//! their resolution against a resource schema, and the case-insensitive JSON attribute access
//! that the filter evaluator and the PATCH engine share.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use super::error::ScimError;
use super::filter::{self, Filter};
use super::schema::{AttrType, Attribute, Mutability, ResourceSchema, Returned, Uniqueness};

/// An attribute path: `[URI ":"] ATTRNAME *1subAttr` (RFC 7644 §3.4.2.2, §3.10).
///
/// Names keep the spelling the client sent; resolution against the schema ignores case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrPath {
    /// Schema URN prefix, e.g. `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User`.
    pub urn: Option<String>,
    /// Top-level attribute name, e.g. `emails`.
    pub name: String,
    /// Sub-attribute name, e.g. `value` in `emails.value`.
    pub sub: Option<String>,
}

impl AttrPath {
    /// Whether this path is a schema URN itself (`urn:…:2.0:User`, parsed as a URN prefix and
    /// a last name), such as an extension's, which names all of it (RFC 7644 §3.10).
    pub fn is_schema(&self, schema_id: &str) -> bool {
        self.sub.is_none()
            && self.urn.as_deref().is_some_and(|urn| {
                schema_id.len() == urn.len() + 1 + self.name.len()
                    && schema_id
                        .get(..urn.len())
                        .is_some_and(|head| head.eq_ignore_ascii_case(urn))
                    && schema_id.as_bytes().get(urn.len()) == Some(&b':')
                    && schema_id
                        .get(urn.len() + 1..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(&self.name))
            })
    }

    /// A path to the core (or common) attribute `name` without a sub-attribute.
    pub fn new(name: impl Into<String>) -> AttrPath {
        AttrPath {
            urn: None,
            name: name.into(),
            sub: None,
        }
    }

    /// Parses an `attrPath`; errors are 400 `invalidPath`.
    pub fn parse(text: &str) -> Result<AttrPath, ScimError> {
        AttrPath::parse_detail(text).map_err(ScimError::invalid_path)
    }

    /// Parses an `attrPath`, returning an admin-readable detail on failure so that callers can
    /// wrap it in the `scimType` of their context (`invalidFilter` or `invalidPath`).
    pub(crate) fn parse_detail(text: &str) -> Result<AttrPath, String> {
        if text.is_empty() {
            return Err("the attribute path is empty".to_string());
        }
        // RFC 7644 §3.10: a URN prefix ends at the last ':' before the attribute name; the
        // attribute part itself never contains ':' (the URN may contain '.', as in "2.0").
        let (urn, rest) = if starts_with_ci(text, "urn:") {
            match text.rfind(':') {
                Some(at) if at > "urn:".len() => (Some(&text[..at]), &text[at + 1..]),
                _ => {
                    return Err(format!(
                        "attribute path {text:?} has no attribute name after the schema urn"
                    ))
                }
            }
        } else {
            (None, text)
        };
        let mut parts = rest.split('.');
        let name = parts.next().unwrap_or_default();
        let sub = parts.next();
        if parts.next().is_some() {
            return Err(format!(
                "attribute path {text:?} has more than one sub-attribute level"
            ));
        }
        check_attr_name(text, name)?;
        if let Some(sub) = sub {
            check_attr_name(text, sub)?;
        }
        Ok(AttrPath {
            urn: urn.map(str::to_string),
            name: name.to_string(),
            sub: sub.map(str::to_string),
        })
    }

    /// The same path without its sub-attribute.
    pub fn parent(&self) -> AttrPath {
        AttrPath {
            urn: self.urn.clone(),
            name: self.name.clone(),
            sub: None,
        }
    }
}

/// RFC 7643 §2.1 `ATTRNAME = ALPHA *(nameChar)`; `$ref` is allowed as well because RFC 7643
/// itself names sub-attributes that way.
fn check_attr_name(path: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '$');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        Ok(())
    } else if name.is_empty() {
        Err(format!(
            "attribute path {path:?} has an empty attribute name"
        ))
    } else {
        Err(format!(
            "attribute path {path:?} has an invalid attribute name {name:?}"
        ))
    }
}

fn starts_with_ci(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.is_char_boundary(prefix.len())
        && text[..prefix.len()].eq_ignore_ascii_case(prefix)
}

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(urn) = &self.urn {
            write!(f, "{urn}:")?;
        }
        f.write_str(&self.name)?;
        if let Some(sub) = &self.sub {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

impl FromStr for AttrPath {
    type Err = ScimError;
    fn from_str(text: &str) -> Result<AttrPath, ScimError> {
        AttrPath::parse(text)
    }
}

/// A PATCH operation's `path`: `attrPath / valuePath [subAttr]` (RFC 7644 §3.5.2, Figure 7).
#[derive(Clone, Debug, PartialEq)]
pub enum PatchPath {
    /// `name.familyName`, `members`, `urn:…:User:department`.
    Attr(AttrPath),
    /// `emails[type eq "work"].value`, `members[value eq "2819c223"]`.
    ValuePath {
        /// The multi-valued attribute; never has a sub-attribute.
        path: AttrPath,
        /// The value filter inside `[...]`, over the attribute's sub-attributes.
        filter: Filter,
        /// The sub-attribute after `].`, if any.
        sub_attr: Option<String>,
    },
}

impl PatchPath {
    /// Parses a PATCH path; errors are 400 `invalidPath`.
    pub fn parse(text: &str) -> Result<PatchPath, ScimError> {
        filter::parse_patch_path(text)
            .map_err(|detail| ScimError::invalid_path(format!("path {text:?}: {detail}")))
    }

    /// The attribute the path operates on, without sub-attribute or filter.
    pub fn attr_path(&self) -> &AttrPath {
        match self {
            PatchPath::Attr(path) | PatchPath::ValuePath { path, .. } => path,
        }
    }
}

impl fmt::Display for PatchPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatchPath::Attr(path) => write!(f, "{path}"),
            PatchPath::ValuePath {
                path,
                filter,
                sub_attr,
            } => {
                write!(f, "{path}[{filter}]")?;
                if let Some(sub) = sub_attr {
                    write!(f, ".{sub}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for PatchPath {
    type Err = ScimError;
    fn from_str(text: &str) -> Result<PatchPath, ScimError> {
        PatchPath::parse(text)
    }
}

// ---------------------------------------------------------------------------------------------
// Case-insensitive JSON attribute access (RFC 7643 §2.1: attribute names ignore case).
// ---------------------------------------------------------------------------------------------

/// The member of `obj` whose key equals `name` ignoring ASCII case.
pub fn get_ci<'v>(obj: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    match obj.get(name) {
        Some(value) => Some(value),
        None => obj
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value),
    }
}

/// The member of `obj` whose key equals `name` ignoring ASCII case, mutably.
pub fn get_ci_mut<'v>(obj: &'v mut Map<String, Value>, name: &str) -> Option<&'v mut Value> {
    let key = key_ci(obj, name)?;
    obj.get_mut(&key)
}

/// The key spelling `obj` uses for `name`, ignoring ASCII case.
pub fn key_ci(obj: &Map<String, Value>, name: &str) -> Option<String> {
    if obj.contains_key(name) {
        return Some(name.to_string());
    }
    obj.keys()
        .find(|key| key.eq_ignore_ascii_case(name))
        .cloned()
}

/// Removes the member whose key equals `name` ignoring ASCII case and returns its value.
pub fn remove_ci(obj: &mut Map<String, Value>, name: &str) -> Option<Value> {
    let key = key_ci(obj, name)?;
    obj.remove(&key)
}

/// Inserts `value` under the canonical spelling `name`, dropping any differently cased key.
pub fn insert_canonical(obj: &mut Map<String, Value>, name: &str, value: Value) {
    if let Some(key) = key_ci(obj, name) {
        if key != name {
            obj.remove(&key);
        }
    }
    obj.insert(name.to_string(), value);
}

/// Iterates the values of an attribute: the elements of an array, or the value itself.
pub fn values_of(value: &Value) -> impl Iterator<Item = &Value> {
    let (slice, single) = match value {
        Value::Array(items) => (items.as_slice(), None),
        other => (&[][..], Some(other)),
    };
    slice.iter().chain(single)
}

/// RFC 7643 §2.5 / RFC 7644 §3.4.2.2 `pr`: null, "", [] and objects without a present member
/// are unassigned.
pub fn is_present(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => items.iter().any(is_present),
        Value::Object(members) => members.values().any(is_present),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Resolution against the schema.
// ---------------------------------------------------------------------------------------------

/// An attribute path resolved to its schema definitions.
#[derive(Clone, Debug)]
pub struct ResolvedAttr<'s> {
    /// Canonical URN of the extension that holds the attribute; `None` for core and common
    /// attributes, which live at the top level of the resource.
    pub extension: Option<&'s str>,
    /// The top-level attribute's definition.
    pub attr: &'s Attribute,
    /// The sub-attribute's definition, when the path names one.
    pub sub: Option<&'s Attribute>,
}

impl ResolvedAttr<'_> {
    /// The JSON object holding the attribute: the resource itself, or its extension object.
    pub fn container<'v>(&self, resource: &'v Value) -> Option<&'v Map<String, Value>> {
        let root = resource.as_object()?;
        match self.extension {
            None => Some(root),
            Some(urn) => get_ci(root, urn)?.as_object(),
        }
    }

    /// The attribute's current value in `resource`, found ignoring case.
    pub fn value<'v>(&self, resource: &'v Value) -> Option<&'v Value> {
        get_ci(self.container(resource)?, &self.attr.name)
    }

    /// The path with canonical (schema) spelling.
    pub fn canonical_path(&self) -> AttrPath {
        AttrPath {
            urn: self.extension.map(str::to_string),
            name: self.attr.name.clone(),
            sub: self.sub.as_ref().map(|sub| sub.name.clone()),
        }
    }
}

/// Resolves `path` against `schema`, ignoring case.
///
/// Without a URN the common attributes (`id`, `externalId`, `schemas`, `meta`; RFC 7643 §3.1)
/// and then the core schema are searched; as a tolerance for clients that drop the URN, an
/// attribute found in exactly one extension is accepted too. A URN may name the core schema
/// or an extension. `None` when the attribute or sub-attribute is unknown.
pub fn resolve<'s>(schema: &'s ResourceSchema, path: &AttrPath) -> Option<ResolvedAttr<'s>> {
    let (extension, attr) = resolve_name(schema, path.urn.as_deref(), &path.name)?;
    let sub = match &path.sub {
        None => None,
        Some(sub) => Some(attr.sub_attribute(sub)?),
    };
    Some(ResolvedAttr {
        extension,
        attr,
        sub,
    })
}

/// The attribute `name` (top level) of schema `urn`, or of the core schema or the one extension
/// that defines it when `urn` is `None`, with the URN of its extension if it is in one.
pub fn resolve_name<'s>(
    schema: &'s ResourceSchema,
    urn: Option<&str>,
    name: &str,
) -> Option<(Option<&'s str>, &'s Attribute)> {
    match urn {
        Some(urn) if schema.core.id.eq_ignore_ascii_case(urn) => {
            Some((None, find_core(schema, name)?))
        }
        Some(urn) => {
            let ext = schema.extension(urn)?;
            Some((Some(ext.id.as_str()), ext.attribute(name)?))
        }
        None => match find_core(schema, name) {
            Some(attr) => Some((None, attr)),
            None => {
                let mut found = schema
                    .extensions
                    .iter()
                    .filter_map(|(ext, _)| Some((ext.id.as_str(), ext.attribute(name)?)));
                let first = found.next()?;
                if found.next().is_some() {
                    return None;
                }
                Some((Some(first.0), first.1))
            }
        },
    }
}

fn find_core<'s>(schema: &'s ResourceSchema, name: &str) -> Option<&'s Attribute> {
    common_attribute(name).or_else(|| schema.core.attribute(name))
}

/// The definition of a common attribute of RFC 7643 §3.1 (`id`, `externalId`, `schemas`,
/// `meta`), which resource schemas do not list. Built once: paths are resolved on every write.
pub fn common_attribute(name: &str) -> Option<&'static Attribute> {
    static COMMON: std::sync::LazyLock<[Attribute; 4]> = std::sync::LazyLock::new(|| {
        use AttrType::{Complex, DateTime, Reference, String as Str};
        use Mutability::{ReadOnly, ReadWrite};
        [
            // RFC 7643 §3.1: `id` is returned always.
            Attribute {
                returned: Returned::Always,
                ..plain("id", Str, true, ReadOnly)
            },
            plain("externalId", Str, true, ReadWrite),
            Attribute {
                multi_valued: true,
                ..plain("schemas", Reference, false, ReadOnly)
            },
            Attribute {
                sub_attributes: vec![
                    plain("resourceType", Str, true, ReadOnly),
                    plain("created", DateTime, false, ReadOnly),
                    plain("lastModified", DateTime, false, ReadOnly),
                    plain("location", Reference, true, ReadOnly),
                    plain("version", Str, true, ReadOnly),
                ],
                ..plain("meta", Complex, false, ReadOnly)
            },
        ]
    });
    COMMON
        .iter()
        .find(|attr| attr.name.eq_ignore_ascii_case(name))
}

fn plain(name: &str, ty: AttrType, case_exact: bool, mutability: Mutability) -> Attribute {
    Attribute {
        name: name.to_string(),
        ty,
        multi_valued: false,
        required: false,
        case_exact,
        mutability,
        returned: Returned::Default,
        uniqueness: Uniqueness::None,
        sub_attributes: Vec::new(),
        canonical_values: Vec::new(),
        reference_types: Vec::new(),
        description: String::new(),
    }
}

#[cfg(test)]
mod tests;
