//! The SCIM 2.0 protocol without I/O: errors, the schema model and discovery documents,
//! attribute paths, filters, PATCH, validation of request documents, and list queries.

pub mod discovery;
pub mod error;
pub mod filter;
pub mod json;
pub mod patch;
pub mod path;
pub mod query;
pub mod schema;
pub mod validate;

pub use error::{ScimError, ScimType};

#[cfg(test)]
pub(crate) mod test_schema;
