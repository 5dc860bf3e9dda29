//! SCIM filters (RFC 7644 §3.4.2.2): the parser, the AST with its canonical `Display`, schema
//! validation and the in-memory evaluator.
//!
//! Tolerances beyond the ABNF, for what identity providers send:
//! - an unquoted bare comparison value (`name.familyName eq Employee`) is a string;
//! - no space is needed between an operator and a quoted value (`value eq"x"`, as printed in
//!   an RFC 7644 §3.5.2.2 example);
//! - `not` may precede a single attribute expression as well as a parenthesised filter.
//!
//! Evaluation semantics that the RFC leaves open:
//! - `ne` matches when no value of the attribute equals the operand, so an unassigned
//!   attribute matches `ne` (the same as `not (attr eq x)`, and as LDAP `(!(attr=x))`);
//! - `eq null` matches an unassigned attribute and `ne null` an assigned one;
//! - booleans compare with `eq`/`ne` only; any other operator on a boolean is false, and
//!   [`Filter::validate`] rejects it as `invalidFilter`;
//! - a comparison on a complex attribute without a sub-attribute compares its `value`
//!   sub-attribute (`emails co "example.com"`);
//! - an attribute the schema does not know is treated as a case-insensitive string.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::ScimError;
use super::path::{get_ci, is_present, resolve, values_of, AttrPath, PatchPath};
use super::schema::{AttrType, Attribute, ResourceSchema};

/// Limits on a filter, checked while parsing; exceeding one is 400 `invalidFilter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterLimits {
    /// Maximum filter length in characters.
    pub max_len: usize,
    /// Maximum nesting of parentheses, `not` and `[...]`.
    pub max_depth: usize,
}

impl Default for FilterLimits {
    fn default() -> FilterLimits {
        FilterLimits {
            max_len: 4096,
            max_depth: 32,
        }
    }
}

/// Attribute operators of RFC 7644 §3.4.2.2, table 3 (`pr` is [`Filter::Present`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// `eq`: equal.
    Eq,
    /// `ne`: not equal.
    Ne,
    /// `co`: contains.
    Co,
    /// `sw`: starts with.
    Sw,
    /// `ew`: ends with.
    Ew,
    /// `gt`: greater than.
    Gt,
    /// `ge`: greater than or equal to.
    Ge,
    /// `lt`: less than.
    Lt,
    /// `le`: less than or equal to.
    Le,
}

impl CompareOp {
    /// All operators, in RFC order.
    pub const ALL: [CompareOp; 9] = [
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Co,
        CompareOp::Sw,
        CompareOp::Ew,
        CompareOp::Gt,
        CompareOp::Ge,
        CompareOp::Lt,
        CompareOp::Le,
    ];

    /// The canonical (lowercase) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }

    /// The operator spelled `word`, ignoring case (RFC 7644 §3.4.2.2: operators are
    /// case-insensitive).
    pub fn from_word(word: &str) -> Option<CompareOp> {
        CompareOp::ALL
            .into_iter()
            .find(|op| op.as_str().eq_ignore_ascii_case(word))
    }

    fn is_ordering(self) -> bool {
        matches!(
            self,
            CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le
        )
    }
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed filter (RFC 7644 §3.4.2.2, Figure 1).
///
/// `And` and `Or` hold two or more operands: a chain `a or b or c` is one node, while a
/// parenthesised group stays a node of its own, so `Display` output parses back to the same
/// tree.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// Every operand matches.
    And(Vec<Filter>),
    /// At least one operand matches.
    Or(Vec<Filter>),
    /// The operand does not match.
    Not(Box<Filter>),
    /// `attrPath compareOp compValue`; `value` is a JSON string, number, boolean or null.
    Compare {
        /// The attribute compared.
        path: AttrPath,
        /// The operator.
        op: CompareOp,
        /// The operand.
        value: Value,
    },
    /// `attrPath pr`.
    Present(AttrPath),
    /// `attrPath "[" valFilter "]"`: some value of the multi-valued complex attribute matches
    /// `filter`, whose paths name sub-attributes.
    ValuePath {
        /// The complex attribute.
        path: AttrPath,
        /// The filter over one value's sub-attributes.
        filter: Box<Filter>,
    },
}

impl Filter {
    /// Parses `text` with the default [`FilterLimits`]; errors are 400 `invalidFilter`.
    pub fn parse(text: &str) -> Result<Filter, ScimError> {
        Filter::parse_with_limits(text, &FilterLimits::default())
    }

    /// Parses `text`; errors are 400 `invalidFilter` saying what was wrong and where.
    pub fn parse_with_limits(text: &str, limits: &FilterLimits) -> Result<Filter, ScimError> {
        let len = text.chars().count();
        if len > limits.max_len {
            return Err(ScimError::invalid_filter(format!(
                "the filter is {len} characters long, over the limit of {} characters",
                limits.max_len
            )));
        }
        let mut parser = Parser::new(text, limits);
        parser
            .whole_filter()
            .map_err(|detail| ScimError::invalid_filter(format!("filter: {detail}")))
    }

    /// For indexed lookups: the path and string operand of a bare `attr eq "string"` filter.
    pub fn as_simple_eq(&self) -> Option<(&AttrPath, &str)> {
        match self {
            Filter::Compare {
                path,
                op: CompareOp::Eq,
                value: Value::String(text),
            } => Some((path, text)),
            _ => None,
        }
    }

    /// Checks the filter against `schema`: every attribute is known, value filters apply to
    /// complex attributes, booleans and binaries are not ordered (RFC 7644 §3.4.2.2: "gt", "ge",
    /// "lt" and "le" on boolean or binary attributes fail with invalidFilter), and dateTime
    /// operands are RFC 3339 instants. Errors are 400 `invalidFilter`.
    pub fn validate(&self, schema: &ResourceSchema) -> Result<(), ScimError> {
        self.validate_in(Scope::Resource(schema))
            .map_err(|detail| ScimError::invalid_filter(format!("filter: {detail}")))
    }

    /// [`Filter::validate`] for a value filter over the sub-attributes of `attribute`; the
    /// error is a detail for the caller's `invalidPath` or `invalidFilter`.
    pub(crate) fn validate_value_filter(&self, attribute: &Attribute) -> Result<(), String> {
        self.validate_in(Scope::Element(attribute))
    }

    /// Whether the filter names the top-level attribute `name` (ignoring case, any schema URN),
    /// so that a resource must carry it to be matched.
    pub fn names_attribute(&self, name: &str) -> bool {
        match self {
            Filter::And(operands) | Filter::Or(operands) => {
                operands.iter().any(|operand| operand.names_attribute(name))
            }
            Filter::Not(operand) => operand.names_attribute(name),
            Filter::Compare { path, .. }
            | Filter::Present(path)
            | Filter::ValuePath { path, .. } => path.name.eq_ignore_ascii_case(name),
        }
    }

    /// Whether `resource` (SCIM wire form) matches the filter.
    pub fn matches(&self, resource: &Value, schema: &ResourceSchema) -> bool {
        self.eval(Scope::Resource(schema), resource)
    }

    /// Whether one value of the complex attribute `attribute` matches a value filter (the part
    /// inside `[...]`), whose paths name sub-attributes.
    pub fn matches_value(&self, element: &Value, attribute: &Attribute) -> bool {
        self.eval(Scope::Element(attribute), element)
    }

    fn eval(&self, scope: Scope<'_>, node: &Value) -> bool {
        match self {
            Filter::And(operands) => operands.iter().all(|f| f.eval(scope, node)),
            Filter::Or(operands) => operands.iter().any(|f| f.eval(scope, node)),
            Filter::Not(operand) => !operand.eval(scope, node),
            Filter::Present(path) => {
                let target = Target::lookup(scope, path, node);
                target.values.iter().any(|value| is_present(value))
            }
            Filter::Compare { path, op, value } => {
                let target = Target::lookup(scope, path, node);
                let def = target.leaf_def;
                match (op, value) {
                    // `eq null` / `ne null`: RFC 7643 §2.5, null means unassigned.
                    (CompareOp::Eq, Value::Null) => !target.values.iter().any(|v| is_present(v)),
                    (CompareOp::Ne, Value::Null) => target.values.iter().any(|v| is_present(v)),
                    (CompareOp::Ne, _) => !target
                        .leaves()
                        .any(|actual| compare(def, actual, CompareOp::Eq, value)),
                    _ => target
                        .leaves()
                        .any(|actual| compare(def, actual, *op, value)),
                }
            }
            Filter::ValuePath { path, filter } => {
                let (attr, top) = match scope {
                    Scope::Resource(schema) => match resolve(schema, path) {
                        Some(resolved) => (Some(resolved.attr.clone()), resolved.value(node)),
                        None => (None, node.as_object().and_then(|o| get_ci(o, &path.name))),
                    },
                    // The parser rejects value filters nested in value filters.
                    Scope::Element(_) => return false,
                };
                let Some(top) = top else { return false };
                let unknown;
                let attr: &Attribute = match &attr {
                    Some(attr) => attr,
                    None => {
                        unknown = unknown_complex(&path.name);
                        &unknown
                    }
                };
                values_of(top).any(|element| filter.eval(Scope::Element(attr), element))
            }
        }
    }

    fn validate_in(&self, scope: Scope<'_>) -> Result<(), String> {
        match self {
            Filter::And(operands) | Filter::Or(operands) => {
                operands.iter().try_for_each(|f| f.validate_in(scope))
            }
            Filter::Not(operand) => operand.validate_in(scope),
            Filter::Present(path) => Target::definition(scope, path).map(|_| ()),
            Filter::Compare { path, op, value } => {
                let (_, leaf) = Target::definition(scope, path)?;
                let Some(leaf) = leaf else {
                    return Err(format!(
                        "{path} is a complex attribute without a \"value\" sub-attribute; name one of its sub-attributes"
                    ));
                };
                check_operand(path, leaf, *op, value)
            }
            Filter::ValuePath { path, filter } => {
                let Scope::Resource(schema) = scope else {
                    return Err(format!("value filter {path}[...] cannot be nested"));
                };
                let resolved =
                    resolve(schema, path).ok_or_else(|| format!("unknown attribute {path}"))?;
                if resolved.attr.ty != AttrType::Complex || path.sub.is_some() {
                    return Err(format!(
                        "{path}[...] needs a complex attribute; {path} is not one"
                    ));
                }
                filter.validate_in(Scope::Element(resolved.attr))
            }
        }
    }
}

fn check_operand(
    path: &AttrPath,
    leaf: &Attribute,
    op: CompareOp,
    value: &Value,
) -> Result<(), String> {
    match leaf.ty {
        AttrType::Boolean if op != CompareOp::Eq && op != CompareOp::Ne => Err(format!(
            "operator {op} cannot be used on the boolean attribute {path}; use eq or ne"
        )),
        // Compared as `compare` reads them: a boolean also from "true"/"false", a number also
        // from its digits in a string. Anything else could never match.
        AttrType::Boolean if !value.is_null() && as_bool(value).is_none() => Err(format!(
            "{path} is a boolean; compare it with true or false, not {value}"
        )),
        AttrType::Integer | AttrType::Decimal if !value.is_null() && as_f64(value).is_none() => {
            Err(format!("{path} is a number; {value} is not one"))
        }
        AttrType::Binary if op.is_ordering() => Err(format!(
            "operator {op} cannot be used on the binary attribute {path}"
        )),
        AttrType::Complex => Err(format!(
            "{path} is a complex attribute; name one of its sub-attributes"
        )),
        AttrType::DateTime if op != CompareOp::Co && op != CompareOp::Sw && op != CompareOp::Ew => {
            match value {
                Value::Null => Ok(()),
                Value::String(text) if parse_instant(text).is_some() => Ok(()),
                _ => Err(format!(
                    "{path} is a dateTime; the value {value} is not an RFC 3339 date-time such as \"2011-05-13T04:42:34Z\""
                )),
            }
        }
        _ => Ok(()),
    }
}

/// Where a path is evaluated: at a resource's top level, or inside one value of a complex
/// attribute (within `[...]`).
#[derive(Clone, Copy)]
enum Scope<'s> {
    Resource(&'s ResourceSchema),
    Element(&'s Attribute),
}

/// The values a path selects in a node, with the definition of the leaf they belong to.
struct Target<'s, 'v> {
    leaf_def: Option<&'s Attribute>,
    values: Vec<&'v Value>,
}

impl<'s, 'v> Target<'s, 'v> {
    /// The definitions (attribute, leaf compared) a path names; the leaf is `None` for a complex
    /// attribute without a `value` sub-attribute.
    fn definition(
        scope: Scope<'s>,
        path: &AttrPath,
    ) -> Result<(&'s Attribute, Option<&'s Attribute>), String> {
        match scope {
            Scope::Resource(schema) => {
                let resolved =
                    resolve(schema, path).ok_or_else(|| format!("unknown attribute {path}"))?;
                let leaf = match resolved.sub {
                    Some(sub) => Some(sub),
                    None if resolved.attr.ty == AttrType::Complex => {
                        resolved.attr.sub_attribute("value")
                    }
                    None => Some(resolved.attr),
                };
                Ok((resolved.attr, leaf))
            }
            Scope::Element(parent) => {
                if path.urn.is_some() || path.sub.is_some() {
                    return Err(format!(
                        "{path} inside {}[...] must be a plain sub-attribute name",
                        parent.name
                    ));
                }
                let sub = parent
                    .sub_attribute(&path.name)
                    .ok_or_else(|| format!("{} has no sub-attribute {}", parent.name, path.name))?;
                Ok((sub, Some(sub)))
            }
        }
    }

    fn lookup(scope: Scope<'s>, path: &AttrPath, node: &'v Value) -> Target<'s, 'v> {
        let empty = Target {
            leaf_def: None,
            values: Vec::new(),
        };
        match scope {
            Scope::Resource(schema) => {
                let Some(resolved) = resolve(schema, path) else {
                    // Unknown attribute: RFC 7644 §3.4.2.1 treats it as unassigned unless the
                    // resource happens to carry it; compare it as a case-insensitive string.
                    let Some(top) = node.as_object().and_then(|o| get_ci(o, &path.name)) else {
                        return empty;
                    };
                    let values = match &path.sub {
                        Some(sub) => children(top, sub),
                        None => vec![top],
                    };
                    return Target {
                        leaf_def: None,
                        values,
                    };
                };
                let Some(top) = resolved.value(node) else {
                    return empty;
                };
                match resolved.sub {
                    Some(sub) => Target {
                        values: children(top, &sub.name),
                        leaf_def: Some(sub),
                    },
                    None if resolved.attr.ty == AttrType::Complex => {
                        let value_def = resolved.attr.sub_attribute("value");
                        let values = if value_def.is_some() {
                            children(top, "value")
                        } else {
                            vec![top]
                        };
                        Target {
                            leaf_def: value_def,
                            values,
                        }
                    }
                    None => Target {
                        leaf_def: Some(resolved.attr),
                        values: vec![top],
                    },
                }
            }
            Scope::Element(parent) => {
                let Some(value) = node.as_object().and_then(|o| get_ci(o, &path.name)) else {
                    return empty;
                };
                Target {
                    leaf_def: parent.sub_attribute(&path.name),
                    values: vec![value],
                }
            }
        }
    }

    /// The individual values, multi-valued attributes flattened.
    fn leaves(&self) -> impl Iterator<Item = &'v Value> + '_ {
        self.values.iter().flat_map(|value| values_of(value))
    }
}

/// The `sub` member of each value of `top` (each element of an array, or the object itself).
fn children<'v>(top: &'v Value, sub: &str) -> Vec<&'v Value> {
    values_of(top)
        .filter_map(|element| element.as_object().and_then(|o| get_ci(o, sub)))
        .collect()
}

fn unknown_complex(name: &str) -> Attribute {
    Attribute {
        name: name.to_string(),
        ty: AttrType::Complex,
        multi_valued: true,
        required: false,
        case_exact: false,
        mutability: Default::default(),
        returned: Default::default(),
        uniqueness: Default::default(),
        sub_attributes: Vec::new(),
        canonical_values: Vec::new(),
        reference_types: Vec::new(),
        description: String::new(),
    }
}

/// Compares one attribute value with the operand according to the attribute's type
/// (RFC 7644 §3.4.2.2: string comparisons honour `caseExact`, dateTime compares instants).
fn compare(def: Option<&Attribute>, actual: &Value, op: CompareOp, expected: &Value) -> bool {
    let ty = match def {
        Some(def) => def.ty,
        // Unknown attribute: take the type from the JSON value.
        None => match actual {
            Value::Bool(_) => AttrType::Boolean,
            Value::Number(_) => AttrType::Decimal,
            _ => AttrType::String,
        },
    };
    let case_exact = def.is_some_and(|def| def.case_exact);
    match ty {
        AttrType::Boolean => match (as_bool(actual), as_bool(expected)) {
            (Some(a), Some(e)) => op == CompareOp::Eq && a == e,
            _ => false,
        },
        AttrType::Integer | AttrType::Decimal => match (as_f64(actual), as_f64(expected)) {
            (Some(a), Some(e)) => a
                .partial_cmp(&e)
                .is_some_and(|ordering| ordering_matches(op, ordering)),
            _ => false,
        },
        AttrType::DateTime if op != CompareOp::Co && op != CompareOp::Sw && op != CompareOp::Ew => {
            let instants = as_text(actual)
                .as_deref()
                .and_then(parse_instant)
                .zip(as_text(expected).as_deref().and_then(parse_instant));
            match instants {
                Some((a, e)) => ordering_matches(op, a.cmp(&e)),
                None => compare_text(actual, op, expected, false),
            }
        }
        AttrType::Complex => false,
        _ => compare_text(actual, op, expected, case_exact),
    }
}

fn compare_text(actual: &Value, op: CompareOp, expected: &Value, case_exact: bool) -> bool {
    let (Some(actual), Some(expected)) = (as_text(actual), as_text(expected)) else {
        return false;
    };
    let (actual, expected) = if case_exact {
        (actual, expected)
    } else {
        (
            Cow::Owned(actual.to_lowercase()),
            Cow::Owned(expected.to_lowercase()),
        )
    };
    match op {
        CompareOp::Co => actual.contains(expected.as_ref()),
        CompareOp::Sw => actual.starts_with(expected.as_ref()),
        CompareOp::Ew => actual.ends_with(expected.as_ref()),
        _ => ordering_matches(op, actual.cmp(&expected)),
    }
}

fn ordering_matches(op: CompareOp, ordering: Ordering) -> bool {
    match op {
        CompareOp::Eq => ordering == Ordering::Equal,
        CompareOp::Ne => ordering != Ordering::Equal,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::Ge => ordering != Ordering::Less,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::Le => ordering != Ordering::Greater,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

/// A boolean, also from the strings "true"/"false" in any case (Entra sends "False").
pub(crate) fn as_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(text) if text.eq_ignore_ascii_case("true") => Some(true),
        Value::String(text) if text.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn as_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

fn as_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(text) => Some(Cow::Borrowed(text)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Owned(b.to_string())),
        _ => None,
    }
}

/// An RFC 3339 instant (RFC 7643 §2.3.5 dateTime).
pub(crate) fn parse_instant(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

// ---------------------------------------------------------------------------------------------
// Display: the canonical filter string.
// ---------------------------------------------------------------------------------------------

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::And(operands) => write_chain(f, operands, " and ", |op| {
                matches!(op, Filter::And(_) | Filter::Or(_))
            }),
            // "and" binds tighter than "or", so an And inside an Or needs no parentheses.
            Filter::Or(operands) => {
                write_chain(f, operands, " or ", |op| matches!(op, Filter::Or(_)))
            }
            Filter::Not(operand) => write!(f, "not ({operand})"),
            // serde_json's Display writes the operand as a JSON literal with escapes.
            Filter::Compare { path, op, value } => write!(f, "{path} {op} {value}"),
            Filter::Present(path) => write!(f, "{path} pr"),
            Filter::ValuePath { path, filter } => write!(f, "{path}[{filter}]"),
        }
    }
}

fn write_chain(
    f: &mut fmt::Formatter<'_>,
    operands: &[Filter],
    separator: &str,
    needs_parens: impl Fn(&Filter) -> bool,
) -> fmt::Result {
    for (index, operand) in operands.iter().enumerate() {
        if index > 0 {
            f.write_str(separator)?;
        }
        if needs_parens(operand) {
            write!(f, "({operand})")?;
        } else {
            write!(f, "{operand}")?;
        }
    }
    Ok(())
}

impl FromStr for Filter {
    type Err = ScimError;
    fn from_str(text: &str) -> Result<Filter, ScimError> {
        Filter::parse(text)
    }
}

// ---------------------------------------------------------------------------------------------
// Parser: recursive descent over the RFC 7644 §3.4.2.2 grammar; precedence not > and > or.
// ---------------------------------------------------------------------------------------------

/// Parses a PATCH path (RFC 7644 §3.5.2 `PATH = attrPath / valuePath [subAttr]`); the error
/// is a detail for the caller's `invalidPath`.
pub(crate) fn parse_patch_path(text: &str) -> Result<PatchPath, String> {
    let limits = FilterLimits::default();
    if text.chars().count() > limits.max_len {
        return Err(format!(
            "longer than the limit of {} characters",
            limits.max_len
        ));
    }
    let mut parser = Parser::new(text.trim(), &limits);
    let start = parser.pos;
    let word = parser.path_word();
    let path = AttrPath::parse_detail(word).map_err(|detail| parser.at(start, &detail))?;
    if parser.peek() != Some('[') {
        return match parser.peek() {
            None => Ok(PatchPath::Attr(path)),
            Some(c) => Err(parser.at(parser.pos, &format!("unexpected {c:?}"))),
        };
    }
    if path.sub.is_some() {
        return Err(parser.at(start, &format!("{path} has a sub-attribute before '['")));
    }
    let filter = parser.bracketed()?;
    let sub_attr = match parser.peek() {
        None => None,
        Some('.') => {
            parser.pos += 1;
            let at = parser.pos;
            let word = parser.path_word();
            let sub = AttrPath::parse_detail(word).map_err(|detail| parser.at(at, &detail))?;
            if sub.urn.is_some() || sub.sub.is_some() || parser.peek().is_some() {
                return Err(parser.at(at, "expected one sub-attribute name after ']'"));
            }
            Some(sub.name)
        }
        Some(c) => return Err(parser.at(parser.pos, &format!("unexpected {c:?} after ']'"))),
    };
    Ok(PatchPath::ValuePath {
        path,
        filter,
        sub_attr,
    })
}

/// A JSON number (RFC 7159 §6 grammar), kept exact: integers as integers, and decimals through
/// the standard library's correctly rounded parser, so that `Display` round-trips.
fn parse_number(token: &str) -> Option<serde_json::Number> {
    serde_json::from_str::<serde_json::Number>(token).ok()?;
    if let Ok(int) = token.parse::<i64>() {
        return Some(int.into());
    }
    if let Ok(int) = token.parse::<u64>() {
        return Some(int.into());
    }
    serde_json::Number::from_f64(token.parse::<f64>().ok()?)
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
    limits: &'a FilterLimits,
    in_brackets: bool,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, limits: &'a FilterLimits) -> Parser<'a> {
        Parser {
            text,
            pos: 0,
            depth: 0,
            limits,
            in_brackets: false,
        }
    }

    /// `what` at the 1-based character position of byte offset `at`.
    fn at(&self, at: usize, what: &str) -> String {
        let column = self.text.get(..at).map_or(at, |s| s.chars().count()) + 1;
        format!("{what} at position {column}")
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn skip_ws(&mut self) {
        let rest = &self.text[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn describe_here(&self) -> String {
        match self.peek() {
            None => "the end of the filter".to_string(),
            Some(c) => format!("{c:?}"),
        }
    }

    /// A run of characters that may form an `attrPath` or a keyword.
    fn path_word(&mut self) -> &'a str {
        let start = self.pos;
        let rest = &self.text[start..];
        let len = rest
            .find(|c: char| {
                !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '$' | ':' | '.'))
            })
            .unwrap_or(rest.len());
        self.pos += len;
        &self.text[start..start + len]
    }

    /// The next word without consuming it.
    fn peek_word(&mut self) -> &'a str {
        let saved = self.pos;
        let word = self.path_word();
        self.pos = saved;
        word
    }

    fn enter(&mut self, at: usize) -> Result<(), String> {
        self.depth += 1;
        if self.depth > self.limits.max_depth {
            return Err(self.at(
                at,
                &format!(
                    "the filter nests deeper than the limit of {} levels",
                    self.limits.max_depth
                ),
            ));
        }
        Ok(())
    }

    fn expect_char(&mut self, wanted: char) -> Result<(), String> {
        self.skip_ws();
        if self.peek() == Some(wanted) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.at(
                self.pos,
                &format!("expected {wanted:?} but found {}", self.describe_here()),
            ))
        }
    }

    fn whole_filter(&mut self) -> Result<Filter, String> {
        self.skip_ws();
        if self.peek().is_none() {
            return Err("the filter is empty".to_string());
        }
        let filter = self.or()?;
        self.skip_ws();
        match self.peek() {
            None => Ok(filter),
            Some(_) => Err(format!(
                "{}; expected \"and\", \"or\" or the end of the filter",
                self.at(self.pos, &format!("unexpected {}", self.describe_here()))
            )),
        }
    }

    /// `[` valFilter `]` at the current position.
    fn bracketed(&mut self) -> Result<Filter, String> {
        let open = self.pos;
        if self.in_brackets {
            return Err(self.at(open, "value filters cannot be nested"));
        }
        self.pos += 1;
        self.enter(open)?;
        self.in_brackets = true;
        let filter = self.or()?;
        self.expect_char(']')?;
        self.in_brackets = false;
        self.depth -= 1;
        Ok(filter)
    }

    fn keyword(&mut self, keyword: &str) -> bool {
        self.skip_ws();
        let saved = self.pos;
        let word = self.path_word();
        if word.eq_ignore_ascii_case(keyword) {
            true
        } else {
            self.pos = saved;
            false
        }
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut operands = vec![self.and()?];
        while self.keyword("or") {
            operands.push(self.and()?);
        }
        Ok(if operands.len() == 1 {
            operands.swap_remove(0)
        } else {
            Filter::Or(operands)
        })
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut operands = vec![self.unary()?];
        while self.keyword("and") {
            operands.push(self.unary()?);
        }
        Ok(if operands.len() == 1 {
            operands.swap_remove(0)
        } else {
            Filter::And(operands)
        })
    }

    fn unary(&mut self) -> Result<Filter, String> {
        self.skip_ws();
        let start = self.pos;
        if self.peek() == Some('(') {
            self.pos += 1;
            self.enter(start)?;
            let inner = self.or()?;
            self.expect_char(')')?;
            self.depth -= 1;
            return Ok(inner);
        }
        let word = self.peek_word();
        if word.eq_ignore_ascii_case("not") {
            // "not" is the operator unless an attribute operator follows, as in `not pr`.
            let saved = self.pos;
            self.pos += word.len();
            self.skip_ws();
            let next = self.peek_word();
            let is_attribute =
                next.eq_ignore_ascii_case("pr") || CompareOp::from_word(next).is_some();
            if !is_attribute && self.peek() != Some('[') {
                // `not (x)` is one level, counted by its parentheses, and so is the tolerated
                // `not x`: `Display` always writes the first form, which must parse within the
                // same depth limit.
                let counted = self.peek() != Some('(');
                if counted {
                    self.enter(start)?;
                }
                let inner = self.unary()?;
                if counted {
                    self.depth -= 1;
                }
                return Ok(Filter::Not(Box::new(inner)));
            }
            self.pos = saved;
        }
        self.attr_exp()
    }

    fn attr_exp(&mut self) -> Result<Filter, String> {
        let start = self.pos;
        let word = self.path_word();
        if word.is_empty() {
            return Err(self.at(
                start,
                &format!(
                    "expected an attribute name but found {}",
                    self.describe_here()
                ),
            ));
        }
        let path = AttrPath::parse_detail(word).map_err(|detail| self.at(start, &detail))?;
        if self.peek() == Some('[') {
            if path.sub.is_some() {
                return Err(self.at(start, &format!("{path} has a sub-attribute before '['")));
            }
            let mut filter = self.bracketed()?;
            if self.peek() == Some('.') {
                // `emails[type eq "work"].value eq "x"`: RFC 7644's filter grammar has no
                // sub-attribute after a value filter, but Entra ID sends this form when a typed
                // email is its matching attribute. It means `emails[type eq "work" and value eq
                // "x"]`: one value meets both conditions.
                self.pos += 1;
                let sub_at = self.pos;
                let word = self.path_word();
                let sub = AttrPath::parse_detail(word)
                    .ok()
                    .filter(|sub| sub.urn.is_none() && sub.sub.is_none())
                    .ok_or_else(|| {
                        self.at(
                            sub_at,
                            &format!("expected a sub-attribute name of {path} after '].'"),
                        )
                    })?;
                filter = Filter::And(vec![filter, self.comparison(sub)?]);
            }
            return Ok(Filter::ValuePath {
                path,
                filter: Box::new(filter),
            });
        }
        self.comparison(path)
    }

    /// What follows an attribute path in a filter: `pr`, or an operator and a value.
    fn comparison(&mut self, path: AttrPath) -> Result<Filter, String> {
        self.skip_ws();
        let op_at = self.pos;
        let op_word = self.path_word();
        if op_word.eq_ignore_ascii_case("pr") {
            return Ok(Filter::Present(path));
        }
        let Some(op) = CompareOp::from_word(op_word) else {
            let found = if op_word.is_empty() {
                self.describe_here()
            } else {
                format!("{op_word:?}")
            };
            return Err(self.at(
                op_at,
                &format!(
                    "expected an operator (eq, ne, co, sw, ew, gt, ge, lt, le or pr) after {path} but found {found}"
                ),
            ));
        };
        self.skip_ws();
        let value = self.comp_value(&path, op)?;
        Ok(Filter::Compare { path, op, value })
    }

    /// `compValue = false / null / true / number / string`, plus bare words as strings.
    fn comp_value(&mut self, path: &AttrPath, op: CompareOp) -> Result<Value, String> {
        let start = self.pos;
        let rest = &self.text[start..];
        if rest.starts_with('"') {
            let mut escaped = false;
            let mut end = None;
            for (offset, c) in rest.char_indices().skip(1) {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        end = Some(offset);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(end) = end else {
                return Err(self.at(start, "unterminated string"));
            };
            let literal = &rest[..=end];
            let text: String = serde_json::from_str(literal)
                .map_err(|err| self.at(start, &format!("invalid string {literal}: {err}")))?;
            self.pos += end + 1;
            return Ok(Value::String(text));
        }
        let len = rest
            .find(|c: char| c.is_whitespace() || c == ')' || c == ']')
            .unwrap_or(rest.len());
        let token = &rest[..len];
        if token.is_empty() {
            return Err(self.at(
                start,
                &format!(
                    "expected a value after \"{path} {op}\" but found {}",
                    self.describe_here()
                ),
            ));
        }
        self.pos += len;
        Ok(match token {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "null" => Value::Null,
            _ => match parse_number(token) {
                Some(number) => Value::Number(number),
                // Tolerance: old Okta and Entra examples send unquoted strings.
                None => Value::String(token.to_string()),
            },
        })
    }
}

#[cfg(test)]
mod tests;
