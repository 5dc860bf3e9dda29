//! Request validation: a client's resource document made canonical against the schema.
//!
//! Attribute names get their schema spelling, values their schema type (tolerating what
//! identity providers send: `"True"` for true, one object where an array belongs, a bare string
//! for a complex reference, `""` for "no value", the legacy URNs OneLogin uses), read-only
//! attributes are dropped, and unknown attributes are collected so the caller can log them.
//! An unknown schema URN or a value of the wrong type is an error.

use serde_json::{Map, Value};

use super::path::get_ci;
use super::schema::{AttrType, Attribute, Mutability, ResourceSchema, Schema, ENTERPRISE_USER_URN};
use super::ScimError;

/// Schema URNs that identity providers send in place of the RFC 7643 ones, with the URN each
/// stands for; `None` means a core alias that carries no attributes of its own.
const LEGACY_URNS: &[(&str, Option<&str>)] = &[
    // OneLogin's templates and older SCIM 1.1 ones:
    // tests/fixtures/idp/onelogin/tolerance-legacy-urns.json.
    ("urn:scim:schemas:core:2.0", None),
    ("urn:scim:schemas:core:1.0", None),
    (
        "urn:scim:schemas:extension:enterprise:2.0",
        Some(ENTERPRISE_USER_URN),
    ),
    (
        "urn:scim:schemas:extension:enterprise:1.0",
        Some(ENTERPRISE_USER_URN),
    ),
    // Entra lists Microsoft's own group schema beside the core one when it creates a group, with
    // no attributes under it: tests/fixtures/idp/entra/04-groups.json.
    (
        "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group",
        None,
    ),
    // Entra's documented create example spells the enterprise URN without its last colon:
    // tests/fixtures/idp/entra/tolerance-old-doc-example.json.
    (
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0User",
        Some(ENTERPRISE_USER_URN),
    ),
];

/// A validated document.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The canonical resource: no `id`, `meta`, `schemas`, read-only or write-only attributes.
    pub doc: Value,
    /// The `password` sent, if any; never stored.
    pub password: Option<String>,
    /// Names of attributes the schema does not know, which were ignored.
    pub ignored: Vec<String>,
}

/// Most values one multi-valued attribute may carry in a request. Identity providers send a
/// handful of emails or phone numbers; a large list is a mistake or an attack, and costs
/// quadratic work in deduplication.
pub const MAX_VALUES: usize = 100;

/// Most `members` of a group in one request (a PUT, or the values of a PATCH). A request body
/// holds about 20,000 at the default `server.max_body_bytes`; larger groups grow by PATCH.
pub const MAX_MEMBERS: usize = 10_000;

fn max_values(name: &str) -> usize {
    if name.eq_ignore_ascii_case("members") {
        MAX_MEMBERS
    } else {
        MAX_VALUES
    }
}

/// Validates a full resource document (POST, PUT) for `schema`.
///
/// Fails with 400 `invalidValue` for an unknown schema URN, a wrong type or a missing required
/// attribute, and `invalidSyntax` when the document is not an object.
pub fn validate_resource(doc: &Value, schema: &ResourceSchema) -> Result<Validated, ScimError> {
    let Some(object) = doc.as_object() else {
        return Err(ScimError::invalid_syntax(
            "the resource must be a JSON object",
        ));
    };
    let mut validated = Validated {
        doc: Value::Object(Map::new()),
        password: None,
        ignored: Vec::new(),
    };
    if let Some(schemas) = get_ci(object, "schemas") {
        check_schema_urns(schemas, schema)?;
    }
    let mut out = Map::new();
    for (key, value) in object {
        if let Some(extension) = extension_for(key, schema) {
            let Value::Object(ext_object) = value else {
                if value.is_null() {
                    continue;
                }
                return Err(ScimError::invalid_value(format!(
                    "`{key}` must be an object of extension attributes"
                )));
            };
            let ext_out =
                validate_attributes(ext_object, extension, &mut validated, Some(&extension.id))?;
            if !ext_out.is_empty() {
                out.insert(extension.id.clone(), Value::Object(ext_out));
            }
            continue;
        }
        if key.to_ascii_lowercase().starts_with("urn:") {
            if is_core_alias(key, schema) {
                continue;
            }
            return Err(unknown_urn(key));
        }
        let single: Map<String, Value> = std::iter::once((key.clone(), value.clone())).collect();
        let core_out = validate_attributes(&single, &schema.core, &mut validated, None)?;
        out.extend(core_out);
    }
    for attr in schema
        .core
        .attributes
        .iter()
        .filter(|attr| attr.required && attr.mutability != Mutability::ReadOnly)
    {
        if !out.contains_key(&attr.name) {
            return Err(ScimError::invalid_value(format!(
                "`{}` is required",
                attr.name
            )));
        }
    }
    validated.doc = Value::Object(out);
    Ok(validated)
}

fn unknown_urn(urn: &str) -> ScimError {
    ScimError::invalid_value(format!(
        "schema `{urn}` is not configured on this server; see /Schemas for the ones it knows"
    ))
}

fn is_core_alias(urn: &str, schema: &ResourceSchema) -> bool {
    urn.eq_ignore_ascii_case(&schema.core.id)
        || LEGACY_URNS
            .iter()
            .any(|(legacy, target)| target.is_none() && legacy.eq_ignore_ascii_case(urn))
}

/// The extension schema `key` names, directly or through a legacy alias.
pub fn extension_for<'s>(key: &str, schema: &'s ResourceSchema) -> Option<&'s Schema> {
    schema.extension(key).or_else(|| {
        LEGACY_URNS
            .iter()
            .find(|(legacy, _)| legacy.eq_ignore_ascii_case(key))
            .and_then(|(_, target)| target.and_then(|target| schema.extension(target)))
    })
}

fn check_schema_urns(schemas: &Value, schema: &ResourceSchema) -> Result<(), ScimError> {
    let urns: Vec<&Value> = match schemas {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    for urn in urns {
        let Some(urn) = urn.as_str() else {
            return Err(ScimError::invalid_value("`schemas` must be a list of URNs"));
        };
        if !is_core_alias(urn, schema) && extension_for(urn, schema).is_none() {
            return Err(unknown_urn(urn));
        }
    }
    Ok(())
}

fn validate_attributes(
    object: &Map<String, Value>,
    schema: &Schema,
    validated: &mut Validated,
    urn: Option<&str>,
) -> Result<Map<String, Value>, ScimError> {
    let mut out = Map::new();
    for (key, value) in object {
        let lower = key.to_ascii_lowercase();
        // Common attributes (RFC 7643 §3.1): id and meta are the server's, schemas is rebuilt.
        if urn.is_none() && matches!(lower.as_str(), "id" | "meta" | "schemas") {
            continue;
        }
        if urn.is_none() && lower == "externalid" {
            if let Some(text) = scalar_string(value) {
                check_characters(&text, "externalId")?;
                out.insert("externalId".to_string(), Value::String(text));
            } else if !value.is_null() {
                return Err(ScimError::invalid_value("`externalId` must be a string"));
            }
            continue;
        }
        let Some(attr) = schema.attribute(key) else {
            validated.ignored.push(match urn {
                Some(urn) => format!("{urn}:{key}"),
                None => key.clone(),
            });
            continue;
        };
        match attr.mutability {
            Mutability::ReadOnly => continue,
            Mutability::WriteOnly => {
                if attr.name == "password" {
                    match value {
                        Value::String(text) if !text.is_empty() => {
                            validated.password = Some(text.clone())
                        }
                        Value::Null | Value::String(_) => {}
                        _ => return Err(ScimError::invalid_value("`password` must be a string")),
                    }
                }
                continue;
            }
            Mutability::ReadWrite | Mutability::Immutable => {}
        }
        if let Some(value) = coerce(value, attr, &attr.name)? {
            out.insert(attr.name.clone(), value);
        }
    }
    Ok(out)
}

/// Coerces `value` to `attr`'s type; `None` when it carries no value (null, "", [], {}).
pub fn coerce(value: &Value, attr: &Attribute, name: &str) -> Result<Option<Value>, ScimError> {
    if attr.multi_valued {
        let items: Vec<&Value> = match value {
            Value::Null => return Ok(None),
            Value::Array(items) => items.iter().collect(),
            // OneLogin sends `emails` as one object (django-scim2 has the same branch).
            other => vec![other],
        };
        let limit = max_values(name);
        if items.len() > limit {
            return Err(ScimError::invalid_value(format!(
                "`{name}` has {} values; at most {limit} are accepted in one request",
                items.len()
            )));
        }
        let has_value_sub_attribute =
            attr.ty == AttrType::Complex && attr.sub_attribute("value").is_some();
        let mut out = Vec::with_capacity(items.len());
        // Deduplicated by printed form (equal values print equally: object keys are sorted),
        // so that a large member list costs linear time.
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        for item in items {
            if let Some(item) = coerce_single(item, attr, &name)? {
                // An item whose `value` was empty (a OneLogin parameter rendered as "" beside a
                // fixed `type`) holds nothing worth keeping:
                // tests/fixtures/idp/onelogin/03-readme-template.json.
                if has_value_sub_attribute && item.get("value").is_none() {
                    continue;
                }
                if seen.insert(super::json::to_text(&item)) {
                    out.push(item);
                }
            }
        }
        // RFC 7643 §2.4: `primary: true` "MUST appear no more than once"; the first listed
        // keeps it (PATCH, which adds to existing values, lets the newest win instead).
        let mut primary_seen = false;
        for item in &mut out {
            if let Some(primary) = item.get_mut("primary").filter(|p| **p == Value::Bool(true)) {
                if primary_seen {
                    *primary = Value::Bool(false);
                }
                primary_seen = true;
            }
        }
        return Ok((!out.is_empty()).then_some(Value::Array(out)));
    }
    let value = match value {
        // Entra sends an array for `manager` with the Add op; one element is one value.
        Value::Array(items) if items.len() == 1 => &items[0],
        Value::Array(items) if items.is_empty() => return Ok(None),
        other => other,
    };
    coerce_single(value, attr, &name)
}

/// `name` is the attribute's path for error details (`name.givenName`), formatted only when
/// there is an error to report.
fn coerce_single(
    value: &Value,
    attr: &Attribute,
    name: &dyn std::fmt::Display,
) -> Result<Option<Value>, ScimError> {
    if value.is_null() {
        return Ok(None);
    }
    let wrong = |expected: &str| {
        ScimError::invalid_value(format!(
            "`{name}` must be {expected}, not {}",
            kind_of(value)
        ))
    };
    match attr.ty {
        AttrType::Complex => {
            let single;
            let object = match value {
                Value::Object(object) => object,
                // A bare id where a complex reference belongs (`"manager": "123"`, a member
                // given as `"value": "id"` by Microsoft's Postman suite).
                Value::String(text) if attr.sub_attribute("value").is_some() => {
                    if text.is_empty() {
                        return Ok(None);
                    }
                    single = std::iter::once(("value".to_string(), Value::String(text.clone())))
                        .collect::<Map<String, Value>>();
                    &single
                }
                _ => return Err(wrong("an object")),
            };
            let mut out = Map::new();
            for (key, sub_value) in object {
                // OneLogin's enterprise template names the manager's id `managerId`.
                let key = if key.eq_ignore_ascii_case("managerId")
                    && attr.sub_attribute("value").is_some()
                {
                    "value"
                } else {
                    key.as_str()
                };
                let Some(sub) = attr.sub_attribute(key) else {
                    continue;
                };
                if sub.mutability == Mutability::ReadOnly
                    && sub.name != "value"
                    && sub.name != "display"
                {
                    continue;
                }
                if let Some(sub_value) =
                    coerce_single(sub_value, sub, &format_args!("{name}.{}", sub.name))?
                {
                    out.insert(sub.name.clone(), sub_value);
                }
            }
            Ok((!out.is_empty()).then_some(Value::Object(out)))
        }
        AttrType::Boolean => match value {
            Value::Bool(flag) => Ok(Some(Value::Bool(*flag))),
            // Entra sends "False"/"True"; OneLogin templates render `"{$user.active}"`.
            Value::String(text) => match text.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(Some(Value::Bool(true))),
                "false" => Ok(Some(Value::Bool(false))),
                "" => Ok(None),
                _ => Err(wrong("a boolean")),
            },
            _ => Err(wrong("a boolean")),
        },
        AttrType::Integer => match value {
            Value::Number(number) if number.is_i64() || number.is_u64() => Ok(Some(value.clone())),
            Value::String(text) => match text.trim().parse::<i64>() {
                Ok(number) => Ok(Some(Value::from(number))),
                Err(_) if text.is_empty() => Ok(None),
                Err(_) => Err(wrong("an integer")),
            },
            _ => Err(wrong("an integer")),
        },
        AttrType::Decimal => match value {
            Value::Number(_) => Ok(Some(value.clone())),
            Value::String(text) => match text.trim().parse::<f64>() {
                Ok(number) => Ok(serde_json::Number::from_f64(number).map(Value::Number)),
                Err(_) if text.is_empty() => Ok(None),
                Err(_) => Err(wrong("a decimal number")),
            },
            _ => Err(wrong("a decimal number")),
        },
        AttrType::DateTime => match value {
            Value::String(text) if text.is_empty() => Ok(None),
            Value::String(text) => {
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| wrong("an RFC 3339 date-time such as 2024-01-31T12:00:00Z"))?;
                Ok(Some(value.clone()))
            }
            _ => Err(wrong("an RFC 3339 date-time string")),
        },
        AttrType::String | AttrType::Reference | AttrType::Binary => match scalar_string(value) {
            Some(text) if text.is_empty() => Ok(None),
            Some(text) => {
                check_characters(&text, name)?;
                Ok(Some(Value::String(text)))
            }
            None => Err(wrong("a string")),
        },
    }
}

/// Refuses control characters other than tab, line feed and carriage return (NUL, escape,
/// backspace...): they end C strings in legacy applications, corrupt LDIF exports and logs, and
/// no identity provider sends them in a value that means something.
pub(crate) fn check_characters(text: &str, name: impl std::fmt::Display) -> Result<(), ScimError> {
    match text
        .chars()
        .find(|c| (c.is_ascii_control() && !matches!(c, '\t' | '\n' | '\r')) || *c == '\u{7f}')
    {
        Some('\0') => Err(ScimError::invalid_value(format!(
            "`{name}` must not contain a NUL character"
        ))),
        Some(c) => Err(ScimError::invalid_value(format!(
            "`{name}` must not contain the control character U+{:04X}",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

/// A string, or a number or boolean written as one (templates often render numbers bare).
fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
