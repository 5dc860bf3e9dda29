//! Rendering a cached resource for the wire: `id`, `schemas`, `meta`, and for users the
//! read-only `groups`, for groups the `members`, both read from the membership table.

use serde_json::{json, Map, Value};

use super::{Service, ServiceError};
use crate::scim::schema::{GROUP_URN, USER_URN};
use crate::store::{Kind, StoredResource};

/// The ETag of a cached resource: weak, since the rendering is not byte-stable. Both counters
/// only grow, so no two states of a resource share one; `W/"<version>"` until another
/// resource's write first changes its memberships.
pub(crate) fn etag(stored: &StoredResource) -> String {
    match stored.member_gen {
        0 => format!("W/\"{}\"", stored.version),
        member_gen => format!("W/\"{}.{member_gen}\"", stored.version),
    }
}

impl Service {
    /// The resource as a client sees it; `with_related` false leaves a group's `members` or a
    /// user's `groups` out (not read from the membership table).
    pub(crate) async fn render(
        &self,
        stored: StoredResource,
        with_related: bool,
    ) -> Result<Value, ServiceError> {
        let kind = stored.kind;
        let location = self.location(kind, &stored.id);
        let version = etag(&stored);
        let mut object = match stored.doc {
            Value::Object(object) => object,
            _ => Map::new(),
        };
        let mut schemas = vec![Value::from(match kind {
            Kind::User => USER_URN,
            Kind::Group => GROUP_URN,
        })];
        schemas.extend(
            object
                .keys()
                .filter(|key| key.starts_with("urn:"))
                .map(|key| Value::from(key.as_str())),
        );
        object.insert("schemas".to_string(), Value::Array(schemas));
        object.insert("id".to_string(), Value::from(stored.id.as_str()));
        if with_related {
            self.add_related(kind, &stored.id, &mut object).await?;
        }
        object.insert(
            "meta".to_string(),
            json!({
                "resourceType": kind.as_str(),
                "created": stored.created,
                "lastModified": stored.last_modified,
                "location": location,
                "version": version,
            }),
        );
        Ok(Value::Object(object))
    }

    /// Adds what the membership table holds to a rendered resource `id` of `kind`: a user's
    /// `groups` (left out when there are none), a group's `members`.
    pub(crate) async fn add_related(
        &self,
        kind: Kind,
        id: &str,
        object: &mut Map<String, Value>,
    ) -> Result<(), ServiceError> {
        match kind {
            Kind::User => {
                let groups = self.store.groups_of(id).await?;
                if !groups.is_empty() {
                    let groups: Vec<Value> = groups
                        .into_iter()
                        .map(|(group_id, display)| {
                            json!({
                                "value": group_id,
                                "$ref": self.location(Kind::Group, &group_id),
                                "display": display,
                                "type": "direct",
                            })
                        })
                        .collect();
                    object.insert("groups".to_string(), Value::Array(groups));
                }
            }
            Kind::Group => {
                let members = self.store.members(id).await?;
                let members: Vec<Value> = members
                    .into_iter()
                    .map(|member_id| {
                        json!({
                            "value": member_id,
                            "$ref": self.location(Kind::User, &member_id),
                            "type": "User",
                        })
                    })
                    .collect();
                object.insert("members".to_string(), Value::Array(members));
            }
        }
        Ok(())
    }
}
