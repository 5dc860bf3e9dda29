//! The `[users]` and `[groups]` sections as written in the config file.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One mapping source, or a list tried in order until one yields a value.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSource {
    /// A SCIM path (`name.givenName`, `emails[type eq "work"].value`), a template
    /// (`{name.givenName} {name.familyName}`), or `dn:<path>` for a reference to another
    /// provisioned user; `""` removes a default mapping.
    One(String),
    /// Fallbacks: the first that yields a value wins.
    Many(Vec<String>),
}

/// `[users]` keys.
#[derive(Debug, Default, Deserialize)]
pub struct RawUserMapping {
    /// `base_dn` (required): where user entries live. Env `SCIM2LDAP__USERS__BASE_DN`.
    pub base_dn: Option<String>,
    /// `object_classes`, default by flavor (`inetOrgPerson` on OpenLDAP).
    pub object_classes: Option<Vec<String>>,
    /// `rdn_attribute`, default `uid`: the RDN attribute, valued from `userName`.
    pub rdn_attribute: Option<String>,
    /// `id_attribute`: a directory attribute that receives the SCIM id (e.g. `scimId` from
    /// `schema/scim2ldap.ldif`); unset by default.
    pub id_attribute: Option<String>,
    /// `id_object_class`, default `scimResource` when `id_attribute` is set.
    pub id_object_class: Option<String>,
    /// `on_delete`, default `delete`: `delete` or `disable`.
    pub on_delete: Option<String>,
    /// `on_existing`, default `adopt`: `adopt` or `conflict`.
    pub on_existing: Option<String>,
    /// `on_disable_groups`, default `keep`: `keep` or `remove`.
    pub on_disable_groups: Option<String>,
    /// `deactivate`, default `lock`: `lock` (the flavor's own lock), `attribute`, or `move`.
    pub deactivate: Option<String>,
    /// `deactivate_attribute` and `deactivate_value`: for `deactivate = "attribute"`.
    pub deactivate_attribute: Option<String>,
    /// The value set while disabled.
    pub deactivate_value: Option<String>,
    /// `disabled_base_dn`: where `deactivate = "move"` puts disabled entries.
    pub disabled_base_dn: Option<String>,
    /// `password_hashing`, default `directory`: `directory` sets passwords with the Password
    /// Modify extended operation (the directory hashes them under its policy); `ssha` writes
    /// `userPassword` as a salted SHA-1 hash computed here, for directories without the exop.
    pub password_hashing: Option<String>,
    /// `posix`, default false: add `posixAccount` with a stable `uidNumber` from a range.
    pub posix: Option<bool>,
    /// `uid_number_min`/`uid_number_max`, default 10000..59999.
    pub uid_number_min: Option<u32>,
    /// Upper end of the uidNumber range.
    pub uid_number_max: Option<u32>,
    /// `gid_number`, default 10000: every user's primary group.
    pub gid_number: Option<u32>,
    /// `home_directory`, default `/home/{userName}` (a template).
    pub home_directory: Option<String>,
    /// `login_shell`, default `/bin/bash`.
    pub login_shell: Option<String>,
    /// `[users.attributes]`: LDAP attribute = SCIM source; merged over the defaults.
    pub attributes: Option<BTreeMap<String, RawSource>>,
}

/// `[groups]` keys.
#[derive(Debug, Default, Deserialize)]
pub struct RawGroupMapping {
    /// `base_dn` (required): where group entries live. Env `SCIM2LDAP__GROUPS__BASE_DN`.
    pub base_dn: Option<String>,
    /// `object_class`, default `groupOfNames`: `groupOfNames`, `groupOfUniqueNames` or `posixGroup`.
    pub object_class: Option<String>,
    /// `object_classes`: extra object classes added to every group.
    pub object_classes: Option<Vec<String>>,
    /// `rdn_attribute`, default `cn`: the RDN attribute, valued from `displayName`.
    pub rdn_attribute: Option<String>,
    /// `id_attribute`: as for users.
    pub id_attribute: Option<String>,
    /// `id_object_class`, default `scimResource` when `id_attribute` is set.
    pub id_object_class: Option<String>,
    /// `placeholder_member`, default `cn=placeholder,<groups.base_dn>`: the member an empty
    /// `groupOfNames` holds, never shown to the IdP.
    pub placeholder_member: Option<String>,
    /// `gid_number_min`/`gid_number_max`: range for `posixGroup` gidNumber allocation.
    pub gid_number_min: Option<u32>,
    /// Upper end of the gidNumber range.
    pub gid_number_max: Option<u32>,
    /// `[groups.attributes]`: LDAP attribute = SCIM source.
    pub attributes: Option<BTreeMap<String, RawSource>>,
}
