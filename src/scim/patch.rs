//! The SCIM PATCH engine (RFC 7644 §3.5.2): request parsing, pure all-or-nothing application to
//! a resource in wire form, and the group-membership delta used for large groups.
//!
//! Identity-provider tolerances (each has a test): `op` in any case (Entra sends `Add`,
//! `Replace`, `Remove`); a missing `schemas` member; booleans sent as the strings "True" or
//! "False"; path-less values with dotted keys (`name.givenName`) and URN-qualified keys
//! (`urn:…:User:employeeNumber`); `remove` of `members` with a `value` list removes only the
//! listed members (Entra); a bare string where a complex value with a `value` sub-attribute is
//! expected (`"value": "id1"` for members or `manager`); a single object for a multi-valued
//! attribute; a one-element array for a single-valued attribute (Entra's `manager`); `add`
//! through a value filter that matches nothing creates the value the filter describes
//! (`emails[type eq "work"].value`).

use serde_json::{Map, Value};

use super::error::ScimError;
use super::filter::{as_bool, parse_instant, CompareOp, Filter};
use super::path::{
    get_ci, get_ci_mut, insert_canonical, is_present, key_ci, remove_ci, resolve, AttrPath,
    PatchPath, ResolvedAttr,
};
use super::schema::{AttrType, Attribute, Mutability, ResourceSchema, Schema};

/// The `schemas` URI of a PATCH request body (RFC 7644 §3.5.2).
pub const PATCH_OP_URN: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// Most operations one PATCH request may hold; identity providers send a few.
pub const MAX_OPERATIONS: usize = 1000;

/// Most values (array items, counted one level into a path-less value object) the operations
/// of one PATCH may carry, the same as `members` of a PUT (`validate::MAX_MEMBERS`).
pub const MAX_VALUES: usize = super::validate::MAX_MEMBERS;

/// A PATCH operation's `op` (RFC 7644 §3.5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchOpKind {
    /// `add`.
    Add,
    /// `replace`.
    Replace,
    /// `remove`.
    Remove,
}

impl PatchOpKind {
    /// The canonical (lowercase) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PatchOpKind::Add => "add",
            PatchOpKind::Replace => "replace",
            PatchOpKind::Remove => "remove",
        }
    }
}

/// One PATCH operation.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchOp {
    /// The operation.
    pub op: PatchOpKind,
    /// The target; `None` only for `add` and `replace`, whose value is then an object.
    pub path: Option<PatchPath>,
    /// The value; always present for `add` and `replace`.
    pub value: Option<Value>,
}

/// A parsed PATCH request body.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchRequest {
    /// The operations, applied in order.
    pub operations: Vec<PatchOp>,
}

/// The result of [`apply`].
#[derive(Clone, Debug, PartialEq)]
pub struct PatchOutcome {
    /// The resource after all operations.
    pub resource: Value,
    /// Names in values that were ignored: unknown attributes and sub-attributes (as
    /// `emails.foo`) and read-only attributes other than `id`, `meta` and `schemas`, which are
    /// dropped silently. For the caller's log.
    pub ignored: Vec<String>,
}

impl PatchRequest {
    /// Parses a PATCH body. `schemas`, when present, must contain [`PATCH_OP_URN`] (some
    /// identity providers omit it, so a missing one is accepted); `Operations` must hold at
    /// least one operation. `remove` without a path is `noTarget` (RFC 7644 §3.5.2.2).
    pub fn from_json(body: &Value) -> Result<PatchRequest, ScimError> {
        let obj = body
            .as_object()
            .ok_or_else(|| ScimError::invalid_syntax("the PATCH body must be a JSON object"))?;
        if let Some(schemas) = get_ci(obj, "schemas") {
            let is_patch = |s: &Value| {
                s.as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case(PATCH_OP_URN))
            };
            let ok = match schemas {
                Value::Array(items) => items.iter().any(is_patch),
                other => is_patch(other),
            };
            if !ok {
                return Err(ScimError::invalid_syntax(format!(
                    "schemas must contain {PATCH_OP_URN}"
                )));
            }
        }
        let operations = get_ci(obj, "Operations")
            .and_then(Value::as_array)
            .ok_or_else(|| ScimError::invalid_syntax("the PATCH body needs an Operations array"))?;
        if operations.is_empty() {
            return Err(ScimError::invalid_syntax(
                "Operations is empty; a PATCH needs at least one operation",
            ));
        }
        if operations.len() > MAX_OPERATIONS {
            return Err(ScimError::too_many(format!(
                "{} operations in one PATCH; at most {MAX_OPERATIONS} are accepted",
                operations.len()
            )));
        }
        let n_values: usize = operations
            .iter()
            .filter_map(|op| op.as_object().and_then(|op| get_ci(op, "value")))
            .map(count_values)
            .sum();
        if n_values > MAX_VALUES {
            return Err(ScimError::too_many(format!(
                "the operations carry {n_values} values; at most {MAX_VALUES} are accepted in one PATCH"
            )));
        }
        let operations = operations
            .iter()
            .enumerate()
            .map(|(index, op)| parse_op(index + 1, op))
            .collect::<Result<_, _>>()?;
        Ok(PatchRequest { operations })
    }
}

/// Array items in an operation's value: `[..]` counts its items, `{"members": [..]}` the items
/// of its arrays, anything else one.
fn count_values(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.len(),
        Value::Object(members) => members
            .values()
            .map(|member| match member {
                Value::Array(items) => items.len(),
                _ => 1,
            })
            .sum(),
        _ => 1,
    }
}

fn with_prefix(prefix: &str, err: ScimError) -> ScimError {
    ScimError {
        detail: format!("{prefix}: {}", err.detail),
        ..err
    }
}

fn parse_op(number: usize, op: &Value) -> Result<PatchOp, ScimError> {
    let at = format!("operation {number}");
    let obj = op
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax(format!("{at} is not a JSON object")))?;
    let word = get_ci(obj, "op")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // Entra sends "Add", "Replace", "Remove": op names are matched ignoring case.
    let kind = [PatchOpKind::Add, PatchOpKind::Replace, PatchOpKind::Remove]
        .into_iter()
        .find(|kind| kind.as_str().eq_ignore_ascii_case(word))
        .ok_or_else(|| {
            ScimError::invalid_syntax(format!(
                "{at}: op {word:?} is not one of add, replace or remove"
            ))
        })?;
    let path = match get_ci(obj, "path") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.trim().is_empty() => None,
        Some(Value::String(text)) => {
            Some(PatchPath::parse(text).map_err(|err| with_prefix(&at, err))?)
        }
        Some(other) => {
            return Err(ScimError::invalid_path(format!(
                "{at}: path must be a string, not {other}"
            )))
        }
    };
    let value = get_ci(obj, "value").cloned();
    match (kind, &path, &value) {
        // RFC 7644 §3.5.2.2: remove without a path is noTarget.
        (PatchOpKind::Remove, None, _) => Err(ScimError::no_target(format!(
            "{at}: remove needs a path naming what to remove"
        ))),
        (PatchOpKind::Add | PatchOpKind::Replace, _, None) => Err(ScimError::invalid_value(
            format!("{at}: {} needs a value", kind.as_str()),
        )),
        // RFC 7644 §3.5.2.1/3: without a path the value is an object of attributes.
        (PatchOpKind::Add | PatchOpKind::Replace, None, Some(value)) if !value.is_object() => {
            Err(ScimError::invalid_value(format!(
                "{at}: {} without a path needs an object of attributes as its value",
                kind.as_str()
            )))
        }
        _ => Ok(PatchOp {
            op: kind,
            path,
            value,
        }),
    }
}

/// Applies `request` to `resource` (SCIM wire form) and returns the new resource.
///
/// Pure and all-or-nothing: the operations apply in order to a copy, and the first failing one
/// fails the whole request (RFC 7644 §3.5.2). Attribute names are written in their schema
/// spelling. Beyond RFC 7644 §3.5.2.1-3:
/// - multi-valued `add` appends values, merging a new value into an existing one that has the
///   same `value` (and `type`, when both have one) instead of duplicating it;
/// - writing a value with `primary: true` sets `primary` of the attribute's other values to
///   false (RFC 7643 §2.4);
/// - `replace` of a single-valued complex attribute merges the given sub-attributes (RFC 7644
///   §3.5.2.3), `replace` of a multi-valued one replaces the whole list;
/// - a null value removes (`replace`) or does nothing (`add`), as null means unassigned
///   (RFC 7643 §2.5);
/// - `remove` through a value filter that matches nothing changes nothing, while `replace`
///   through one is `noTarget`;
/// - a path naming a read-only attribute is `mutability`, as is changing an immutable one that
///   has a value; read-only attributes inside path-less values are ignored;
/// - an unknown attribute in a path is `invalidPath`; in a path-less value it is ignored and
///   listed in [`PatchOutcome::ignored`], except an unknown schema URN key, which is
///   `invalidValue`;
/// - an extension object left empty is dropped, and `schemas` (when the resource has it) lists
///   exactly the extensions present plus required ones.
pub fn apply(
    resource: &Value,
    request: &PatchRequest,
    schema: &ResourceSchema,
) -> Result<PatchOutcome, ScimError> {
    let mut resource = resource.clone();
    if !resource.is_object() {
        return Err(ScimError::invalid_value(
            "the resource to patch is not a JSON object",
        ));
    }
    let mut engine = Engine {
        schema,
        ignored: Vec::new(),
    };
    for (index, op) in request.operations.iter().enumerate() {
        let prefix = match &op.path {
            Some(path) => format!("operation {} ({} {path})", index + 1, op.op.as_str()),
            None => format!("operation {} ({})", index + 1, op.op.as_str()),
        };
        engine
            .apply_op(&mut resource, op)
            .map_err(|err| with_prefix(&prefix, err))?;
    }
    engine.finish(&mut resource);
    Ok(PatchOutcome {
        resource,
        ignored: engine.ignored,
    })
}

struct Engine<'s> {
    schema: &'s ResourceSchema,
    ignored: Vec<String>,
}

impl<'s> Engine<'s> {
    fn apply_op(&mut self, resource: &mut Value, op: &PatchOp) -> Result<(), ScimError> {
        match &op.path {
            None => {
                let Some(Value::Object(members)) = &op.value else {
                    return Err(ScimError::invalid_value("the value must be an object"));
                };
                for (key, value) in members {
                    self.path_less_member(resource, op.op, key, value)?;
                }
                Ok(())
            }
            Some(PatchPath::Attr(path)) if self.whole_extension(path).is_some() => {
                self.at_extension(resource, op, path)
            }
            Some(PatchPath::Attr(path)) => {
                let resolved = self.resolve(path)?;
                self.check_mutability(resource, op.op, &resolved, op.value.as_ref())?;
                self.at_attr(resource, op.op, &resolved, op.value.as_ref())
            }
            Some(PatchPath::ValuePath {
                path,
                filter,
                sub_attr,
            }) => self.at_value_path(resource, op, path, filter, sub_attr.as_deref()),
        }
    }

    /// The extension schema a path names as a whole, with whether the resource type requires
    /// it. The attrPath grammar reads `urn:...:enterprise:2.0:User` as the URN
    /// `urn:...:enterprise:2.0` and the attribute `User`, so the two are joined again here.
    fn whole_extension(&self, path: &AttrPath) -> Option<(&'s Schema, bool)> {
        self.schema
            .extensions
            .iter()
            .find(|(extension, _)| path.is_schema(&extension.id))
            .map(|(extension, required)| (extension, *required))
    }

    /// An operation whose path is an extension schema URN: the target is the extension's
    /// object of attributes (RFC 7644 §3.5.2, §3.10). `add` and `replace` write the attributes
    /// given and leave the others, as a complex attribute's sub-attributes are (§3.5.2.1,
    /// §3.5.2.3) and as the same value keyed by the URN in a path-less operation is; `remove`
    /// unassigns every attribute of the extension (§3.5.2.2).
    fn at_extension(
        &mut self,
        resource: &mut Value,
        op: &PatchOp,
        path: &AttrPath,
    ) -> Result<(), ScimError> {
        let Some((extension, required)) = self.whole_extension(path) else {
            return Err(ScimError::invalid_path(format!(
                "unknown attribute {path} for this resource type"
            )));
        };
        let unassign = match (op.op, &op.value) {
            (PatchOpKind::Remove, _) | (PatchOpKind::Replace, Some(Value::Null)) => true,
            (PatchOpKind::Add, Some(Value::Null)) => return Ok(()),
            _ => false,
        };
        if !unassign {
            let value = op.value.as_ref().unwrap_or(&Value::Null);
            return self.path_less_member(resource, op.op, &extension.id, value);
        }
        if required {
            return Err(ScimError::mutability(format!(
                "{} is required by this resource type and cannot be removed",
                extension.id
            )));
        }
        if let Value::Object(root) = resource {
            remove_ci(root, &extension.id);
        }
        Ok(())
    }

    fn resolve(&self, path: &AttrPath) -> Result<ResolvedAttr<'s>, ScimError> {
        resolve(self.schema, path).ok_or_else(|| {
            ScimError::invalid_path(format!("unknown attribute {path} for this resource type"))
        })
    }

    /// One member of a path-less `add`/`replace` value (RFC 7644 §3.5.2.1: each member is an
    /// attribute to add or replace).
    fn path_less_member(
        &mut self,
        resource: &mut Value,
        kind: PatchOpKind,
        key: &str,
        value: &Value,
    ) -> Result<(), ScimError> {
        // Okta sends the group's own `id` back; these are never client-writable.
        if ["id", "meta", "schemas"]
            .iter()
            .any(|name| name.eq_ignore_ascii_case(key))
        {
            return Ok(());
        }
        let schema = self.schema;
        if let Some(target) = schema.schema(key) {
            // An extension (or core) schema URN holding an object of its attributes.
            let Value::Object(members) = value else {
                return Err(ScimError::invalid_value(format!(
                    "{key} must be an object of that schema's attributes"
                )));
            };
            let urn = (target.id != schema.core.id).then(|| target.id.clone());
            for (name, value) in members {
                // Clients that serialize an extension as a resource repeat its URN in
                // `schemas` inside the object; it is not an attribute of the extension.
                if name.eq_ignore_ascii_case("schemas") {
                    continue;
                }
                let path = AttrPath::parse_detail(name).ok().map(|path| AttrPath {
                    urn: urn.clone(),
                    ..path
                });
                self.path_less_attr(resource, kind, name, path, value)?;
            }
            return Ok(());
        }
        if key.contains('[') {
            // Entra's flattened form can carry a value path as a key
            // (`emails[type eq "work"].value`): the same as an operation with that path.
            let path = PatchPath::parse(key).map_err(|err| {
                ScimError::invalid_path(format!("the key {key} of a value: {}", err.detail))
            })?;
            // A replace that no value matches creates one, as `add` does: the flattened form
            // sets `emails[type eq "work"].value` whether the user has a work email yet or not.
            let op = PatchOp {
                op: match kind {
                    PatchOpKind::Replace => PatchOpKind::Add,
                    other => other,
                },
                path: Some(path),
                value: Some(value.clone()),
            };
            return self.apply_op(resource, &op);
        }
        let path = AttrPath::parse_detail(key).ok();
        if let Some(AttrPath { urn: Some(urn), .. }) = &path {
            if schema.schema(urn).is_none() {
                return Err(ScimError::invalid_value(format!(
                    "unknown schema extension {key}; this resource type does not support it"
                )));
            }
        } else if path.is_none() && key.to_ascii_lowercase().starts_with("urn:") {
            return Err(ScimError::invalid_value(format!(
                "unknown schema extension {key}; this resource type does not support it"
            )));
        }
        self.path_less_attr(resource, kind, key, path, value)
    }

    fn path_less_attr(
        &mut self,
        resource: &mut Value,
        kind: PatchOpKind,
        key: &str,
        path: Option<AttrPath>,
        value: &Value,
    ) -> Result<(), ScimError> {
        let Some(resolved) = path.and_then(|path| resolve(self.schema, &path)) else {
            self.ignored.push(key.to_string());
            return Ok(());
        };
        let read_only = resolved.attr.mutability == Mutability::ReadOnly
            || resolved
                .sub
                .as_ref()
                .is_some_and(|sub| sub.mutability == Mutability::ReadOnly);
        if read_only {
            if resolved.extension.is_some()
                || !["id", "meta", "schemas"]
                    .iter()
                    .any(|name| name.eq_ignore_ascii_case(&resolved.attr.name))
            {
                self.ignored.push(key.to_string());
            }
            return Ok(());
        }
        self.check_mutability(resource, kind, &resolved, Some(value))?;
        self.at_attr(resource, kind, &resolved, Some(value))
    }

    /// RFC 7643 §2.2 mutability: readOnly never, immutable only while unassigned.
    fn check_mutability(
        &self,
        resource: &Value,
        kind: PatchOpKind,
        resolved: &ResolvedAttr<'_>,
        value: Option<&Value>,
    ) -> Result<(), ScimError> {
        let path = resolved.canonical_path();
        let read_only = resolved.attr.mutability == Mutability::ReadOnly
            || resolved
                .sub
                .as_ref()
                .is_some_and(|sub| sub.mutability == Mutability::ReadOnly);
        if read_only {
            return Err(ScimError::mutability(format!(
                "{path} is read-only and cannot be changed"
            )));
        }
        if resolved.attr.mutability == Mutability::Immutable {
            let current = resolved.value(resource).filter(|v| is_present(v));
            if let Some(current) = current {
                let same = kind == PatchOpKind::Add && value == Some(current);
                if !same {
                    return Err(ScimError::mutability(format!(
                        "{path} is immutable and already has a value"
                    )));
                }
            }
        }
        Ok(())
    }

    /// An operation whose path is an `attrPath`, or one member of a path-less value.
    fn at_attr(
        &mut self,
        resource: &mut Value,
        kind: PatchOpKind,
        resolved: &ResolvedAttr<'_>,
        value: Option<&Value>,
    ) -> Result<(), ScimError> {
        let attr: &Attribute = resolved.attr;
        let label = resolved.canonical_path().to_string();
        match &resolved.sub {
            None => {
                if kind != PatchOpKind::Remove && attr.ty == AttrType::Complex && !attr.multi_valued
                {
                    if let Some(members) = value.and_then(|value| single_object(attr, value)) {
                        return self.merge_complex(resource, resolved, &members, &label);
                    }
                }
                let new = match (kind, value) {
                    (PatchOpKind::Remove, _) | (_, None) => None,
                    (_, Some(value)) => self.normalize(attr, value, &label)?,
                };
                let Some(container) =
                    container_mut(resource, resolved.extension, kind != PatchOpKind::Remove)
                else {
                    return Ok(());
                };
                match (kind, new) {
                    (PatchOpKind::Remove, _) => {
                        match value.filter(|_| attr.multi_valued) {
                            // Entra: remove with a value list removes only those values.
                            Some(value) => {
                                let listed = self.normalize(attr, value, &label)?;
                                remove_listed(container, attr, listed.as_ref());
                                Ok(())
                            }
                            // RFC 7644 §3.5.2.2: the attribute and all its values go.
                            None => remove_attr(container, attr),
                        }
                    }
                    // Null or an empty list: unassigned (RFC 7643 §2.5).
                    (PatchOpKind::Add, None) => Ok(()),
                    (PatchOpKind::Replace, None) => remove_attr(container, attr),
                    (PatchOpKind::Add, Some(new)) if attr.multi_valued => {
                        let mut items = take_items(container, &attr.name);
                        let written = add_items(attr, &mut items, new);
                        set_items(container, attr, items, &written);
                        Ok(())
                    }
                    (PatchOpKind::Replace, Some(new)) if attr.multi_valued => {
                        let mut items = Vec::new();
                        let written = add_items(attr, &mut items, new);
                        set_items(container, attr, items, &written);
                        Ok(())
                    }
                    (_, Some(new)) => {
                        insert_canonical(container, &attr.name, new);
                        Ok(())
                    }
                }
            }
            Some(sub) => {
                if attr.ty != AttrType::Complex {
                    return Err(ScimError::invalid_path(format!(
                        "{label} is not a sub-attribute"
                    )));
                }
                let new = match (kind, value) {
                    (PatchOpKind::Remove, _) | (_, None) => None,
                    (_, Some(value)) => self.normalize(sub, value, &label)?,
                };
                let create = kind != PatchOpKind::Remove;
                let Some(container) = container_mut(resource, resolved.extension, create) else {
                    return Ok(());
                };
                if attr.multi_valued {
                    // `emails.type` without a filter: every value of the attribute.
                    let mut items = take_items(container, &attr.name);
                    if items.is_empty() {
                        // RFC 7644 §3.5.2.1 and 3: a target that does not exist is added (no
                        // filter here, so not `noTarget`): one value with this sub-attribute.
                        if let Some(new) = new {
                            let mut element = Map::new();
                            insert_canonical(&mut element, &sub.name, new);
                            items.push(Value::Object(element));
                            set_items(container, attr, items, &[0]);
                        }
                        return Ok(());
                    }
                    let all: Vec<usize> = (0..items.len()).collect();
                    set_sub(&mut items, &all, &sub.name, new.as_ref());
                    set_items(container, attr, items, &all);
                    return Ok(());
                }
                let key = canonical_key(container, &attr.name);
                let parent = container
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !parent.is_object() {
                    *parent = Value::Object(Map::new());
                }
                if let Value::Object(parent) = parent {
                    match new {
                        Some(new) => insert_canonical(parent, &sub.name, new),
                        None => {
                            remove_ci(parent, &sub.name);
                        }
                    }
                }
                if container
                    .get(&key)
                    .is_some_and(|parent| !is_present(parent))
                {
                    container.remove(&key);
                }
                Ok(())
            }
        }
    }

    /// An operation whose path is `valuePath [ "." subAttr ]`.
    fn at_value_path(
        &mut self,
        resource: &mut Value,
        op: &PatchOp,
        path: &AttrPath,
        filter: &Filter,
        sub_attr: Option<&str>,
    ) -> Result<(), ScimError> {
        let resolved = self.resolve(path)?;
        let attr: &Attribute = resolved.attr;
        if attr.ty != AttrType::Complex {
            return Err(ScimError::invalid_path(format!(
                "{}[...] needs a complex attribute; {} is not one",
                attr.name, attr.name
            )));
        }
        filter
            .validate_value_filter(attr)
            .map_err(ScimError::invalid_path)?;
        let sub = match sub_attr {
            None => None,
            Some(name) => Some(attr.sub_attribute(name).ok_or_else(|| {
                ScimError::invalid_path(format!("{} has no sub-attribute {name}", attr.name))
            })?),
        };
        let full = ResolvedAttr {
            extension: resolved.extension,
            attr: resolved.attr,
            sub,
        };
        if attr.mutability == Mutability::ReadOnly
            || sub.is_some_and(|s| s.mutability == Mutability::ReadOnly)
        {
            return Err(ScimError::mutability(format!(
                "{} is read-only and cannot be changed",
                full.canonical_path()
            )));
        }
        let label = full.canonical_path().to_string();
        let new = match (op.op, &op.value) {
            (PatchOpKind::Remove, _) | (_, None) => None,
            (_, Some(value)) => match sub {
                Some(sub) => self.normalize(sub, value, &label)?,
                None => self.normalize_one(attr, value, &label)?,
            },
        };
        let create = op.op == PatchOpKind::Add;
        let Some(container) = container_mut(resource, resolved.extension, create) else {
            return Ok(());
        };
        let mut items = take_items(container, &attr.name);
        let matched: Vec<usize> = (0..items.len())
            .filter(|&index| filter.matches_value(&items[index], attr))
            .collect();
        let mut written = matched.clone();
        match op.op {
            // RFC 7644 §3.5.2.2: the values matched by the filter are removed; none is a no-op.
            PatchOpKind::Remove => match sub {
                None => {
                    let mut index = 0;
                    items.retain(|_| {
                        let keep = !matched.contains(&index);
                        index += 1;
                        keep
                    });
                    written.clear();
                }
                Some(sub) => set_sub(&mut items, &matched, &sub.name, None),
            },
            // RFC 7644 §3.5.2.3: a value filter matching nothing is noTarget.
            PatchOpKind::Replace if matched.is_empty() => {
                set_items(container, attr, items, &[]);
                return Err(ScimError::no_target(format!(
                    "no value of {} matches [{filter}]",
                    attr.name
                )));
            }
            PatchOpKind::Replace | PatchOpKind::Add if !matched.is_empty() => match (sub, new) {
                (Some(sub), new) => set_sub(&mut items, &matched, &sub.name, new.as_ref()),
                (None, Some(Value::Object(new))) => {
                    for &index in &matched {
                        if op.op == PatchOpKind::Replace {
                            items[index] = Value::Object(new.clone());
                        } else if let Value::Object(current) = &mut items[index] {
                            for (key, value) in &new {
                                insert_canonical(current, key, value.clone());
                            }
                        }
                    }
                }
                (None, _) => {}
            },
            _ => {
                // Tolerance: add through a filter that matches nothing creates the value the
                // filter describes, e.g. Entra's `emails[type eq "work"].value`.
                let Some(mut element) = element_from_filter(filter, attr) else {
                    set_items(container, attr, items, &[]);
                    return Err(ScimError::no_target(format!(
                        "no value of {} matches [{filter}], and the filter does not describe a new value",
                        attr.name
                    )));
                };
                match (sub, new) {
                    (Some(sub), Some(new)) => {
                        element.insert(sub.name.clone(), new);
                    }
                    (None, Some(Value::Object(new))) => {
                        for (key, value) in new {
                            insert_canonical(&mut element, &key, value);
                        }
                    }
                    _ => {}
                }
                items.push(Value::Object(element));
                written = vec![items.len() - 1];
            }
        }
        set_items(container, attr, items, &written);
        Ok(())
    }

    /// Normalises a value for `attr`: coerces types, wraps single values of multi-valued
    /// attributes into a list, and writes sub-attribute names in schema spelling. `None` means
    /// unassigned (null, or an empty list).
    fn normalize(
        &mut self,
        attr: &Attribute,
        value: &Value,
        label: &str,
    ) -> Result<Option<Value>, ScimError> {
        if attr.multi_valued {
            let items: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                Value::Null => Vec::new(),
                other => vec![other],
            };
            let mut out = Vec::new();
            for item in items {
                if let Some(item) = self.normalize_one(attr, item, label)? {
                    out.push(item);
                }
            }
            return Ok((!out.is_empty()).then_some(Value::Array(out)));
        }
        match value {
            Value::Array(items) if items.is_empty() => Ok(None),
            // Entra sends `manager` as a one-element list.
            Value::Array(items) if items.len() == 1 => self.normalize_one(attr, &items[0], label),
            Value::Array(items) => Err(ScimError::invalid_value(format!(
                "{label} takes one value, but {} were given",
                items.len()
            ))),
            other => self.normalize_one(attr, other, label),
        }
    }

    /// `add` or `replace` of sub-attributes of a single-valued complex attribute (`name`,
    /// `manager`): the ones given are set, a null one is unassigned, and the ones not given
    /// stay as they are (RFC 7644 §3.5.2.1, §3.5.2.3). Unknown and read-only sub-attributes
    /// change nothing, so a value holding only those (`manager.displayName`) leaves the
    /// attribute as it was; the attribute goes when no sub-attribute is left.
    fn merge_complex(
        &mut self,
        resource: &mut Value,
        resolved: &ResolvedAttr<'_>,
        members: &Map<String, Value>,
        label: &str,
    ) -> Result<(), ScimError> {
        let attr = resolved.attr;
        let mut set = Vec::new();
        let mut unset = Vec::new();
        for (name, value) in self.sub_values(attr, members, label)? {
            match value {
                Some(value) => set.push((name, value)),
                None => unset.push(name),
            }
        }
        if set.is_empty() && unset.is_empty() {
            return Ok(());
        }
        let Some(container) = container_mut(resource, resolved.extension, true) else {
            return Ok(());
        };
        let key = canonical_key(container, &attr.name);
        let slot = container
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        let mut now_empty = false;
        if let Value::Object(current) = slot {
            for name in unset {
                remove_ci(current, &name);
            }
            for (name, value) in set {
                insert_canonical(current, &name, value);
            }
            now_empty = current.is_empty();
        }
        if now_empty {
            remove_attr(container, attr)?;
        }
        Ok(())
    }

    /// Normalises one value (one element of a multi-valued attribute).
    fn normalize_one(
        &mut self,
        attr: &Attribute,
        value: &Value,
        label: &str,
    ) -> Result<Option<Value>, ScimError> {
        if attr.ty != AttrType::Complex {
            return normalize_leaf(attr, value, label);
        }
        let members = match value {
            Value::Null => return Ok(None),
            Value::Object(members) => members.clone(),
            // Tolerance: `"value": "id1"` for `members`, a bare id for `manager`.
            Value::String(_) if attr.sub_attribute("value").is_some() => {
                let mut members = Map::new();
                members.insert("value".to_string(), value.clone());
                members
            }
            other => {
                return Err(ScimError::invalid_value(format!(
                    "{label} takes an object of sub-attributes, not {other}"
                )))
            }
        };
        let mut out = Map::new();
        for (name, value) in self.sub_values(attr, &members, label)? {
            if let Some(value) = value {
                out.insert(name, value);
            }
        }
        Ok((!out.is_empty()).then_some(Value::Object(out)))
    }

    /// The writable sub-attributes of a complex value under their schema names, each
    /// normalized (`None`: null, unassigned). Unknown ones are noted as ignored; read-only
    /// ones (`manager.displayName`) are dropped.
    fn sub_values(
        &mut self,
        attr: &Attribute,
        members: &Map<String, Value>,
        label: &str,
    ) -> Result<Vec<(String, Option<Value>)>, ScimError> {
        let mut out = Vec::new();
        for (key, value) in members {
            let Some(sub) = attr.sub_attribute(key) else {
                self.ignored.push(format!("{}.{key}", attr.name));
                continue;
            };
            if sub.mutability == Mutability::ReadOnly {
                continue;
            }
            let value = normalize_leaf(sub, value, &format!("{label}.{}", sub.name))?;
            out.push((sub.name.clone(), value));
        }
        Ok(out)
    }

    /// Drops empty extension objects and keeps `schemas` in step with the extensions present
    /// (RFC 7643 §3: `schemas` lists the schemas the resource uses).
    fn finish(&self, resource: &mut Value) {
        let Some(root) = resource.as_object_mut() else {
            return;
        };
        for (extension, required) in &self.schema.extensions {
            let present = match key_ci(root, &extension.id) {
                Some(key) if root.get(&key).is_some_and(is_present) => true,
                Some(key) => {
                    root.remove(&key);
                    false
                }
                None => false,
            };
            if let Some(Value::Array(schemas)) = get_ci_mut(root, "schemas") {
                let listed = schemas.iter().position(|s| {
                    s.as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case(&extension.id))
                });
                match (present || *required, listed) {
                    (true, None) => schemas.push(Value::String(extension.id.clone())),
                    (false, Some(index)) => {
                        schemas.remove(index);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Coerces a simple value to `def`'s type (RFC 7643 §2.3).
/// A single complex value as an object of sub-attributes, in the shapes IdPs send: an object,
/// a list of one object (Entra's `manager`), or a bare id for an attribute with a `value`
/// sub-attribute. `None` for anything else (null, or a shape `normalize` refuses).
fn single_object(attr: &Attribute, value: &Value) -> Option<Map<String, Value>> {
    match value {
        Value::Object(members) => Some(members.clone()),
        Value::Array(items) if items.len() == 1 => single_object(attr, &items[0]),
        Value::String(_) if attr.sub_attribute("value").is_some() => {
            let mut members = Map::new();
            members.insert("value".to_string(), value.clone());
            Some(members)
        }
        _ => None,
    }
}

fn normalize_leaf(def: &Attribute, value: &Value, label: &str) -> Result<Option<Value>, ScimError> {
    let bad = |what: &str| {
        Err(ScimError::invalid_value(format!(
            "{label} must be {what}, not {value}"
        )))
    };
    Ok(Some(match (def.ty, value) {
        (_, Value::Null) => return Ok(None),
        // Entra sends booleans as the strings "True" and "False".
        (AttrType::Boolean, value) => match as_bool(value) {
            Some(b) => Value::Bool(b),
            None => return bad("a boolean (true or false)"),
        },
        (AttrType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => value.clone(),
        (AttrType::Integer, Value::String(text)) => match text.trim().parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => return bad("an integer"),
        },
        (AttrType::Integer, _) => return bad("an integer"),
        (AttrType::Decimal, Value::Number(_)) => value.clone(),
        (AttrType::Decimal, Value::String(text)) => {
            match text
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                Some(n) => Value::Number(n),
                None => return bad("a decimal number"),
            }
        }
        (AttrType::Decimal, _) => return bad("a decimal number"),
        (AttrType::DateTime, Value::String(text)) if parse_instant(text).is_some() => value.clone(),
        (AttrType::DateTime, _) => {
            return bad("an RFC 3339 date-time such as \"2011-05-13T04:42:34Z\"")
        }
        (AttrType::String | AttrType::Reference | AttrType::Binary, Value::String(text)) => {
            // "" means no value (validation drops it), which a required attribute must have.
            if text.is_empty() && def.required {
                return Err(ScimError::invalid_value(format!(
                    "{label} is required and cannot be empty"
                )));
            }
            super::validate::check_characters(text, label)?;
            value.clone()
        }
        // Tolerance: numbers sent for string attributes such as employeeNumber.
        (AttrType::String | AttrType::Reference | AttrType::Binary, Value::Number(n)) => {
            Value::String(n.to_string())
        }
        (AttrType::String | AttrType::Reference | AttrType::Binary, _) => return bad("a string"),
        (AttrType::Complex, _) => return bad("an object of sub-attributes"),
    }))
}

/// The object holding `extension`'s attributes (or the resource itself), created on demand.
fn container_mut<'v>(
    resource: &'v mut Value,
    extension: Option<&str>,
    create: bool,
) -> Option<&'v mut Map<String, Value>> {
    let root = resource.as_object_mut()?;
    let Some(urn) = extension else {
        return Some(root);
    };
    let key = match key_ci(root, urn) {
        Some(key) => key,
        None if create => {
            root.insert(urn.to_string(), Value::Object(Map::new()));
            urn.to_string()
        }
        None => return None,
    };
    let slot = root.get_mut(&key)?;
    if !slot.is_object() && create {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

/// The key to write `name` under: the canonical spelling, after dropping other spellings.
fn canonical_key(container: &mut Map<String, Value>, name: &str) -> String {
    if let Some(key) = key_ci(container, name) {
        if key != name {
            if let Some(value) = container.remove(&key) {
                container.insert(name.to_string(), value);
            }
        }
    }
    name.to_string()
}

/// Takes the current values of a multi-valued attribute out of `container`.
fn take_items(container: &mut Map<String, Value>, name: &str) -> Vec<Value> {
    match remove_ci(container, name) {
        Some(Value::Array(items)) => items,
        Some(Value::Null) | None => Vec::new(),
        Some(single) => vec![single],
    }
}

/// Puts values back under the canonical name, enforcing one `primary` value: when one of the
/// `written` values is primary, the others stop being primary (RFC 7643 §2.4). An empty list
/// leaves the attribute unassigned.
fn set_items(
    container: &mut Map<String, Value>,
    attr: &Attribute,
    mut items: Vec<Value>,
    written: &[usize],
) {
    let winner = written
        .iter()
        .rev()
        .copied()
        .find(|&index| items.get(index).is_some_and(is_primary));
    if let Some(winner) = winner {
        for (index, item) in items.iter_mut().enumerate() {
            if index != winner && is_primary(item) {
                if let Value::Object(members) = item {
                    insert_canonical(members, "primary", Value::Bool(false));
                }
            }
        }
    }
    if items.is_empty() {
        return;
    }
    let value = if attr.multi_valued {
        Value::Array(items)
    } else {
        items.swap_remove(0)
    };
    container.insert(attr.name.clone(), value);
}

fn is_primary(item: &Value) -> bool {
    item.as_object()
        .and_then(|members| get_ci(members, "primary"))
        .and_then(as_bool)
        .unwrap_or(false)
}

/// Appends `new` (an array) to `items`, merging values equal by [`same_value`]; returns the
/// indices written.
fn add_items(attr: &Attribute, items: &mut Vec<Value>, new: Value) -> Vec<usize> {
    let new = match new {
        Value::Array(new) => new,
        other => vec![other],
    };
    let mut written = Vec::new();
    for value in new {
        match items.iter().position(|item| same_value(attr, item, &value)) {
            Some(index) => {
                if let (Value::Object(current), Value::Object(value)) = (&mut items[index], value) {
                    for (key, value) in value {
                        insert_canonical(current, &key, value);
                    }
                }
                written.push(index);
            }
            None => {
                items.push(value);
                written.push(items.len() - 1);
            }
        }
    }
    written
}

/// Whether two values of `attr` denote the same value: equal `value` sub-attributes (and equal
/// `type` when both have one) for complex attributes with a `value`, JSON equality for other
/// complex values, and string equality honouring `caseExact` for simple values.
fn same_value(attr: &Attribute, a: &Value, b: &Value) -> bool {
    let (Value::Object(a_members), Value::Object(b_members)) = (a, b) else {
        return text_equal(attr.case_exact, a, b);
    };
    let Some(value_def) = attr.sub_attribute("value") else {
        return a == b;
    };
    let (Some(a_value), Some(b_value)) = (get_ci(a_members, "value"), get_ci(b_members, "value"))
    else {
        return a == b;
    };
    let types_agree = match (get_ci(a_members, "type"), get_ci(b_members, "type")) {
        (Some(a_type), Some(b_type)) => text_equal(false, a_type, b_type),
        _ => true,
    };
    types_agree && text_equal(value_def.case_exact, a_value, b_value)
}

fn text_equal(case_exact: bool, a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) if !case_exact => {
            a.eq_ignore_ascii_case(b) || a.to_lowercase() == b.to_lowercase()
        }
        _ => a == b,
    }
}

/// Removes the listed values (Entra's `remove` with a value); absent ones are ignored.
fn remove_listed(container: &mut Map<String, Value>, attr: &Attribute, listed: Option<&Value>) {
    let Some(Value::Array(listed)) = listed else {
        return;
    };
    let mut items = take_items(container, &attr.name);
    items.retain(|item| !listed.iter().any(|gone| same_value(attr, item, gone)));
    set_items(container, attr, items, &[]);
}

/// Removes an attribute; a required one cannot be removed: `mutability` (RFC 7644 §3.5.2.2).
fn remove_attr(container: &mut Map<String, Value>, attr: &Attribute) -> Result<(), ScimError> {
    if attr.required {
        return Err(ScimError::mutability(format!(
            "{} is required and cannot be removed",
            attr.name
        )));
    }
    remove_ci(container, &attr.name);
    Ok(())
}

/// Sets (or with `None` removes) sub-attribute `name` of the values at `indices`.
fn set_sub(items: &mut [Value], indices: &[usize], name: &str, value: Option<&Value>) {
    for &index in indices {
        if let Some(Value::Object(members)) = items.get_mut(index) {
            match value {
                Some(value) => insert_canonical(members, name, value.clone()),
                None => {
                    remove_ci(members, name);
                }
            }
        }
    }
}

/// The value described by a filter made only of `eq` comparisons joined by `and`, e.g.
/// `type eq "work"` → `{"type": "work"}`.
fn element_from_filter(filter: &Filter, attr: &Attribute) -> Option<Map<String, Value>> {
    let mut element = Map::new();
    let mut pending = vec![filter];
    while let Some(filter) = pending.pop() {
        match filter {
            Filter::And(operands) => pending.extend(operands),
            Filter::Compare {
                path,
                op: CompareOp::Eq,
                value,
            } if path.urn.is_none() && path.sub.is_none() && !value.is_null() => {
                let sub = attr.sub_attribute(&path.name)?;
                element.insert(
                    sub.name.clone(),
                    normalize_leaf(sub, value, &sub.name).ok()??,
                );
            }
            _ => return None,
        }
    }
    Some(element)
}

// ---------------------------------------------------------------------------------------------
// Group membership delta.
// ---------------------------------------------------------------------------------------------

/// A PATCH on a group's `members`, expressed without the current member list.
///
/// With `current` the group's members before the request, the members after it are:
/// - `replace: Some(list)` → exactly `list` (then `add` and `remove` are empty and `remove_all`
///   is false);
/// - otherwise `(if remove_all { ∅ } else { current }) − remove ∪ add`, where `add` and
///   `remove` are disjoint, and `remove` is empty when `remove_all` is set.
///
/// Every list keeps the order in which the request named the ids, without duplicates. Ids are
/// compared exactly as sent. Removing an id that is not a member is a no-op.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MembersDelta {
    /// Ids to add.
    pub add: Vec<String>,
    /// Ids to remove.
    pub remove: Vec<String>,
    /// Whether every current member goes first (`remove` of `members` without a value).
    pub remove_all: bool,
    /// The complete new member list, when the request replaces it.
    pub replace: Option<Vec<String>>,
    /// Operations on `displayName` and `externalId` (path-less ones with the `members` member
    /// taken out), in order, for [`apply`] on the group without its members.
    pub other_ops: Vec<PatchOp>,
}

impl MembersDelta {
    /// True when the request only adds and removes named members.
    pub fn only_adds_and_removes(&self) -> bool {
        self.replace.is_none() && !self.remove_all && self.other_ops.is_empty()
    }

    fn add_ids(&mut self, ids: Vec<String>) {
        for id in ids {
            if let Some(list) = &mut self.replace {
                push_unique(list, id);
            } else {
                self.remove.retain(|gone| gone != &id);
                push_unique(&mut self.add, id);
            }
        }
    }

    fn remove_ids(&mut self, ids: Vec<String>) {
        for id in ids {
            if let Some(list) = &mut self.replace {
                list.retain(|kept| kept != &id);
            } else {
                self.add.retain(|added| added != &id);
                if !self.remove_all {
                    push_unique(&mut self.remove, id);
                }
            }
        }
    }

    fn replace_with(&mut self, ids: Vec<String>) {
        let mut list = Vec::new();
        for id in ids {
            push_unique(&mut list, id);
        }
        self.replace = Some(list);
        self.add.clear();
        self.remove.clear();
        self.remove_all = false;
    }

    fn clear_all(&mut self) {
        self.replace = None;
        self.add.clear();
        self.remove.clear();
        self.remove_all = true;
    }
}

fn push_unique(list: &mut Vec<String>, id: String) {
    if !list.contains(&id) {
        list.push(id);
    }
}

/// The member delta of `request`, when every operation touches only `members`, `displayName`
/// or `externalId` of a group and every member is named by a plain id; `None` otherwise (the
/// caller then uses [`apply`]). Recognised forms: `add`/`replace`/`remove` with path `members`
/// (a value of `{"value": id}` objects or bare ids; `remove` without a value removes all),
/// `remove` with path `members[value eq "id"]` (or several such joined by `or`), and path-less
/// `add`/`replace` whose value object has `members`, `displayName`, `externalId` (and the
/// ignored `id`, `schemas`, `meta`).
pub fn members_delta(request: &PatchRequest) -> Option<MembersDelta> {
    let mut delta = MembersDelta::default();
    for op in &request.operations {
        match &op.path {
            Some(PatchPath::Attr(path)) if is_group_attr(path, "members") => {
                match (op.op, &op.value) {
                    (PatchOpKind::Add, Some(value)) => delta.add_ids(member_ids(value)?),
                    (PatchOpKind::Replace, Some(value)) => delta.replace_with(member_ids(value)?),
                    (PatchOpKind::Remove, None | Some(Value::Null)) => delta.clear_all(),
                    (PatchOpKind::Remove, Some(value)) => delta.remove_ids(member_ids(value)?),
                    _ => return None,
                }
            }
            Some(PatchPath::ValuePath {
                path,
                filter,
                sub_attr: None,
            }) if op.op == PatchOpKind::Remove && is_group_attr(path, "members") => {
                delta.remove_ids(filter_ids(filter)?);
            }
            Some(PatchPath::Attr(path))
                if is_group_attr(path, "displayName") || is_group_attr(path, "externalId") =>
            {
                delta.other_ops.push(op.clone());
            }
            None => {
                let Some(Value::Object(members)) = &op.value else {
                    return None;
                };
                let mut rest = Map::new();
                for (key, value) in members {
                    if key.eq_ignore_ascii_case("members") {
                        match op.op {
                            PatchOpKind::Add => delta.add_ids(member_ids(value)?),
                            _ => delta.replace_with(member_ids(value)?),
                        }
                    } else if ["displayName", "externalId", "id", "schemas", "meta"]
                        .iter()
                        .any(|name| name.eq_ignore_ascii_case(key))
                    {
                        rest.insert(key.clone(), value.clone());
                    } else {
                        return None;
                    }
                }
                let has_attrs = rest.keys().any(|key| {
                    key.eq_ignore_ascii_case("displayName")
                        || key.eq_ignore_ascii_case("externalId")
                });
                if has_attrs {
                    delta.other_ops.push(PatchOp {
                        op: op.op,
                        path: None,
                        value: Some(Value::Object(rest)),
                    });
                }
            }
            _ => return None,
        }
    }
    Some(delta)
}

fn is_group_attr(path: &AttrPath, name: &str) -> bool {
    let core = path
        .urn
        .as_deref()
        .is_none_or(|urn| urn.eq_ignore_ascii_case(super::schema::GROUP_URN));
    core && path.sub.is_none() && path.name.eq_ignore_ascii_case(name)
}

/// Ids from a members value: `[{"value": id}, …]`, one such object, bare id strings.
fn member_ids(value: &Value) -> Option<Vec<String>> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::String(id) => Some(id.clone()),
            Value::Object(members) => get_ci(members, "value")?.as_str().map(str::to_string),
            _ => None,
        })
        .collect()
}

/// Ids from `value eq "id"` filters joined by `or`.
fn filter_ids(filter: &Filter) -> Option<Vec<String>> {
    match filter {
        Filter::Or(operands) => {
            let mut ids = Vec::new();
            for operand in operands {
                ids.extend(filter_ids(operand)?);
            }
            Some(ids)
        }
        Filter::Compare {
            path,
            op: CompareOp::Eq,
            value: Value::String(id),
        } if path.urn.is_none()
            && path.sub.is_none()
            && path.name.eq_ignore_ascii_case("value") =>
        {
            Some(vec![id.clone()])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
