//! The SCIM schema model of RFC 7643 §7: schemas, attributes and their characteristics.
//!
//! Loaded from the JSON documents in `schema/` (the same documents `/Schemas` serves). Lookups
//! ignore ASCII case, as attribute names do (RFC 7643 §2.1). Pure: no I/O here; the caller reads
//! the files.

use serde::Deserialize;

/// URN of the core User schema.
pub const USER_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// URN of the core Group schema.
pub const GROUP_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// URN of the Enterprise User extension.
pub const ENTERPRISE_USER_URN: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// Attribute data type (RFC 7643 §2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AttrType {
    String,
    Boolean,
    Decimal,
    Integer,
    DateTime,
    Binary,
    Reference,
    Complex,
}

/// Attribute mutability (RFC 7643 §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Mutability {
    ReadOnly,
    #[default]
    ReadWrite,
    Immutable,
    WriteOnly,
}

/// When an attribute is returned (RFC 7643 §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Returned {
    Always,
    Never,
    #[default]
    Default,
    Request,
}

/// Uniqueness of an attribute's values (RFC 7643 §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Uniqueness {
    #[default]
    None,
    Server,
    Global,
}

/// One attribute definition, with its sub-attributes when complex.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attribute {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: AttrType,
    #[serde(default)]
    pub multi_valued: bool,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub case_exact: bool,
    #[serde(default)]
    pub mutability: Mutability,
    #[serde(default)]
    pub returned: Returned,
    #[serde(default)]
    pub uniqueness: Uniqueness,
    #[serde(default)]
    pub sub_attributes: Vec<Attribute>,
    #[serde(default)]
    pub canonical_values: Vec<String>,
    #[serde(default)]
    pub reference_types: Vec<String>,
    #[serde(default)]
    pub description: String,
}

impl Attribute {
    /// The sub-attribute named `name`, ignoring case.
    pub fn sub_attribute(&self, name: &str) -> Option<&Attribute> {
        find_named(&self.sub_attributes, name)
    }
}

/// The attribute of `attrs` named `name`, ignoring case. Names almost always come spelled as the
/// schema spells them (the mapping's, the documents the daemon stored), so an exact comparison
/// goes first: paths are resolved on every write.
fn find_named<'a>(attrs: &'a [Attribute], name: &str) -> Option<&'a Attribute> {
    attrs.iter().find(|attr| attr.name == name).or_else(|| {
        attrs
            .iter()
            .find(|attr| attr.name.eq_ignore_ascii_case(name))
    })
}

/// One schema document (RFC 7643 §7).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schema {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub attributes: Vec<Attribute>,
}

impl Schema {
    /// The top-level attribute named `name`, ignoring case.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        find_named(&self.attributes, name)
    }
}

/// The schemas that make up one resource type: its core schema and its extensions.
#[derive(Clone, Debug)]
pub struct ResourceSchema {
    /// The core schema (User or Group).
    pub core: Schema,
    /// Extension schemas with whether each is required.
    pub extensions: Vec<(Schema, bool)>,
}

impl ResourceSchema {
    /// The extension schema with URN `urn`, ignoring case.
    pub fn extension(&self, urn: &str) -> Option<&Schema> {
        self.extensions
            .iter()
            .map(|(schema, _)| schema)
            .find(|schema| schema.id.eq_ignore_ascii_case(urn))
    }

    /// The schema with URN `urn` (core or extension), ignoring case.
    pub fn schema(&self, urn: &str) -> Option<&Schema> {
        if self.core.id.eq_ignore_ascii_case(urn) {
            Some(&self.core)
        } else {
            self.extension(urn)
        }
    }

    /// Resolves an attribute: `urn` None means the core schema; `sub` names a sub-attribute.
    pub fn find(&self, urn: Option<&str>, name: &str, sub: Option<&str>) -> Option<&Attribute> {
        let schema = match urn {
            Some(urn) => self.schema(urn)?,
            None => &self.core,
        };
        let attr = schema.attribute(name)?;
        match sub {
            Some(sub) => attr.sub_attribute(sub),
            None => Some(attr),
        }
    }
}
