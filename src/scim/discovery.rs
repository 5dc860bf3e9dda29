//! Discovery documents (RFC 7643 §5-7, RFC 7644 §4) built from the JSON files in `schema/`,
//! which are compiled into the binary, and the `ResourceSchema`s that validation uses.

use serde_json::{json, Value};

use super::query::LIST_RESPONSE_URN;
use super::schema::{ResourceSchema, Schema, ENTERPRISE_USER_URN, GROUP_URN, USER_URN};
use super::ScimError;

const USER_JSON: &str = include_str!("../../schema/user.json");
const GROUP_JSON: &str = include_str!("../../schema/group.json");
const ENTERPRISE_USER_JSON: &str = include_str!("../../schema/enterprise_user.json");
const META_SCHEMAS_JSON: &str = include_str!("../../schema/meta_schemas.json");
const RESOURCE_TYPES_JSON: &str = include_str!("../../schema/resource_types.json");
const SERVICE_PROVIDER_CONFIG_JSON: &str =
    include_str!("../../schema/service_provider_config.json");

/// Limits the server announces in `/ServiceProviderConfig`.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Largest number of resources one list response returns (`filter.maxResults`).
    pub max_results: usize,
}

/// The discovery documents, with `meta` filled in, and the parsed schemas.
#[derive(Debug)]
pub struct Discovery {
    service_provider_config: Value,
    resource_types: Vec<Value>,
    schemas: Vec<Value>,
    user: ResourceSchema,
    group: ResourceSchema,
}

/// Why the compiled-in schema files could not be read; a build defect, caught by tests.
#[derive(Debug, thiserror::Error)]
#[error("schema file {file}: {source}")]
pub struct DiscoveryError {
    file: &'static str,
    source: serde_json::Error,
}

fn parse(file: &'static str, text: &str) -> Result<Value, DiscoveryError> {
    serde_json::from_str(text).map_err(|source| DiscoveryError { file, source })
}

fn schema_of(file: &'static str, doc: &Value) -> Result<Schema, DiscoveryError> {
    serde_json::from_value(doc.clone()).map_err(|source| DiscoveryError { file, source })
}

/// The schema documents of User, Group and the Enterprise User extension.
fn schema_docs() -> Result<[Value; 3], DiscoveryError> {
    Ok([
        parse("user.json", USER_JSON)?,
        parse("group.json", GROUP_JSON)?,
        parse("enterprise_user.json", ENTERPRISE_USER_JSON)?,
    ])
}

fn resource_schemas_of(
    [user, group, enterprise]: &[Value; 3],
) -> Result<(ResourceSchema, ResourceSchema), DiscoveryError> {
    let user = ResourceSchema {
        core: schema_of("user.json", user)?,
        extensions: vec![(schema_of("enterprise_user.json", enterprise)?, false)],
    };
    let group = ResourceSchema {
        core: schema_of("group.json", group)?,
        extensions: Vec::new(),
    };
    Ok((user, group))
}

/// The User and Group resource schemas, for checks made before a [`Discovery`] exists (the
/// attribute mapping's SCIM paths, when the configuration is read).
pub fn resource_schemas() -> Result<(ResourceSchema, ResourceSchema), DiscoveryError> {
    resource_schemas_of(&schema_docs()?)
}

impl Discovery {
    /// Loads the documents; `base_path` prefixes every `meta.location`.
    pub fn load(base_path: &str, capabilities: Capabilities) -> Result<Discovery, DiscoveryError> {
        let docs = schema_docs()?;
        let (user, group) = resource_schemas_of(&docs)?;
        let mut schemas = Vec::from(docs);
        if let Value::Array(meta_schemas) = parse("meta_schemas.json", META_SCHEMAS_JSON)? {
            schemas.extend(meta_schemas);
        }
        for schema in &mut schemas {
            let id = schema["id"].as_str().unwrap_or_default().to_string();
            schema["meta"] = json!({
                "resourceType": "Schema",
                "location": format!("{base_path}/Schemas/{id}"),
            });
        }
        let mut resource_types = match parse("resource_types.json", RESOURCE_TYPES_JSON)? {
            Value::Array(types) => types,
            other => vec![other],
        };
        for resource_type in &mut resource_types {
            let name = resource_type["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            resource_type["meta"] = json!({
                "resourceType": "ResourceType",
                "location": format!("{base_path}/ResourceTypes/{name}"),
            });
        }
        let mut service_provider_config =
            parse("service_provider_config.json", SERVICE_PROVIDER_CONFIG_JSON)?;
        service_provider_config["filter"]["maxResults"] = json!(capabilities.max_results);
        service_provider_config["meta"] = json!({
            "resourceType": "ServiceProviderConfig",
            "location": format!("{base_path}/ServiceProviderConfig"),
        });
        debug_assert!(user.core.id == USER_URN && group.core.id == GROUP_URN);
        debug_assert!(user.extension(ENTERPRISE_USER_URN).is_some());
        Ok(Discovery {
            service_provider_config,
            resource_types,
            schemas,
            user,
            group,
        })
    }

    /// The User resource schema (core plus Enterprise User).
    pub fn user_schema(&self) -> &ResourceSchema {
        &self.user
    }

    /// The Group resource schema.
    pub fn group_schema(&self) -> &ResourceSchema {
        &self.group
    }

    /// `GET /ServiceProviderConfig`.
    pub fn service_provider_config(&self) -> Value {
        self.service_provider_config.clone()
    }

    /// `GET /ResourceTypes`.
    pub fn resource_types(&self) -> Value {
        list_response(&self.resource_types)
    }

    /// `GET /ResourceTypes/{name}`; 404 for an unknown name.
    pub fn resource_type(&self, name: &str) -> Result<Value, ScimError> {
        self.resource_types
            .iter()
            .find(|doc| {
                doc["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .cloned()
            .ok_or_else(|| ScimError::not_found(format!("no resource type named `{name}`")))
    }

    /// `GET /Schemas`.
    pub fn schemas(&self) -> Value {
        list_response(&self.schemas)
    }

    /// `GET /Schemas/{urn}`; 404 for an unknown URN.
    pub fn schema(&self, urn: &str) -> Result<Value, ScimError> {
        self.schemas
            .iter()
            .find(|doc| {
                doc["id"]
                    .as_str()
                    .is_some_and(|id| id.eq_ignore_ascii_case(urn))
            })
            .cloned()
            .ok_or_else(|| ScimError::not_found(format!("no schema with URN `{urn}`")))
    }
}

/// A complete (unpaged) `ListResponse`.
pub fn list_response(resources: &[Value]) -> Value {
    json!({
        "schemas": [LIST_RESPONSE_URN],
        "totalResults": resources.len(),
        "startIndex": 1,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}
