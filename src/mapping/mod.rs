//! SCIM resource <-> LDAP entry, driven by config. Pure: no I/O, no clock.
//!
//! A mapping is a list of rules `ldap attribute <- sources`; a source is a SCIM path
//! (`emails[type eq "work"].value`), a template (`{name.givenName} {name.familyName}`) or a
//! reference to another provisioned user (`dn:manager.value`), and the first source that yields a
//! value wins. `project` turns a resource into the entry the directory should hold (DN included,
//! deactivation included), and `diff` gives the smallest modify from one projection to another.

pub mod config;
mod reverse;

pub use reverse::{set_path, Unprojected};

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::config::{Flavor, Problems};
use crate::directory::escape;
use crate::directory::Mod;
use crate::scim::path::{get_ci, resolve, values_of, PatchPath};
use crate::scim::schema::{ResourceSchema, ENTERPRISE_USER_URN};
use config::{RawGroupMapping, RawSource, RawUserMapping};

/// Where a mapped value comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The values at a SCIM path.
    Path(PatchPath),
    /// Literal text with `{path}` placeholders; yields nothing when any placeholder is empty.
    Template(Vec<TemplatePart>),
    /// The DN of the provisioned user whose SCIM id is at this path.
    DnRef(PatchPath),
}

/// A piece of a template.
#[derive(Debug, Clone)]
pub enum TemplatePart {
    /// Text copied as is.
    Literal(String),
    /// The first value at a path.
    Field(PatchPath),
}

/// One LDAP attribute and where its values come from.
#[derive(Debug, Clone)]
pub struct AttrRule {
    /// The LDAP attribute, spelled as configured.
    pub ldap_attr: String,
    /// Sources tried in order.
    pub sources: Vec<Source>,
    /// The resource's top-level members the sources read, lowercased (an extension attribute
    /// is read from the extension's URN); `None` when not known, as if it read everything.
    pub reads: Option<Vec<String>>,
}

impl AttrRule {
    /// Whether the rule's values can differ between two versions of a resource whose
    /// top-level members `changed` (lowercased) differ.
    fn reads_any(&self, changed: &[String]) -> bool {
        self.reads
            .as_ref()
            .is_none_or(|reads| reads.iter().any(|member| changed.contains(member)))
    }
}

/// The top-level members (lowercased) in which `old` and `new` differ, present in only one
/// of them included: all that a change of the resource can change in its projection.
pub fn changed_members(old: &Value, new: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let mut changed = Vec::new();
    for (key, value) in new {
        if get_ci(old, key) != Some(value) {
            changed.push(key.to_ascii_lowercase());
        }
    }
    for key in old.keys() {
        if get_ci(new, key).is_none() {
            changed.push(key.to_ascii_lowercase());
        }
    }
    changed
}

/// What `DELETE /Users/{id}` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// Delete the entry.
    Delete,
    /// Only disable it; the SCIM resource is gone all the same.
    Disable,
}

/// What a create does when the entry exists in the directory but not in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExisting {
    /// Take the entry over and bring it to the requested state.
    Adopt,
    /// Answer 409.
    Conflict,
}

/// What a suspension does to group memberships.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDisableGroups {
    /// Keep them.
    Keep,
    /// Remove the user from every group in the directory (the cache keeps them, to restore).
    Remove,
}

/// How `active: false` is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deactivate {
    /// OpenLDAP ppolicy: `pwdAccountLockedTime: 000001010000Z`, a permanent administrative lock.
    PpolicyLock,
    /// 389-DS / FreeIPA: `nsAccountLock: TRUE`.
    NsAccountLock,
    /// Active Directory: `userAccountControl` 514 (bit 2 set) instead of 512.
    AdUserAccountControl,
    /// Set `attr` to `value` while disabled; remove it when enabled.
    Attribute {
        /// The attribute.
        attr: String,
        /// Its value while disabled.
        value: String,
    },
    /// Move the entry under `disabled_base_dn` while disabled.
    Move {
        /// Where disabled entries live.
        disabled_base_dn: String,
    },
}

/// The validated `[users]` section.
#[derive(Debug, Clone)]
pub struct UserMapping {
    /// Where user entries live.
    pub base_dn: String,
    /// Object classes of a new entry.
    pub object_classes: Vec<String>,
    /// RDN attribute, valued from `userName`.
    pub rdn_attribute: String,
    /// Attribute that receives the SCIM id, if any.
    pub id_attribute: Option<String>,
    /// Mapping rules.
    pub rules: Vec<AttrRule>,
    /// DELETE behaviour.
    pub on_delete: OnDelete,
    /// Behaviour for an existing entry on create.
    pub on_existing: OnExisting,
    /// Suspension and memberships.
    pub on_disable_groups: OnDisableGroups,
    /// Deactivation strategy.
    pub deactivate: Deactivate,
    /// POSIX attributes (`posixAccount`), when enabled.
    pub posix: Option<PosixAccount>,
    /// How passwords are written.
    pub password_hashing: PasswordHashing,
}

/// How a `password` from the IdP reaches the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordHashing {
    /// The Password Modify extended operation (RFC 3062): the directory hashes it.
    Directory,
    /// `userPassword: {SSHA}...`, hashed here.
    Ssha,
}

/// `{SSHA}` of `password` with `salt` (RFC 2307 style: base64 of SHA-1(password + salt) + salt).
pub fn ssha(password: &str, salt: &[u8; 8]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut hasher = sha1::Sha1::new();
    hasher.update(password.as_bytes());
    hasher.update(salt);
    let mut bytes = hasher.finalize().to_vec();
    bytes.extend_from_slice(salt);
    format!(
        "{{SSHA}}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// `posixAccount` settings: `uidNumber` comes from a range and never changes once allocated.
#[derive(Debug, Clone)]
pub struct PosixAccount {
    /// Lowest `uidNumber` handed out.
    pub uid_number_min: i64,
    /// Highest `uidNumber` handed out.
    pub uid_number_max: i64,
    /// `gidNumber` of every user's primary group.
    pub gid_number: i64,
    /// `homeDirectory`, a template over the resource.
    pub home_directory: Source,
    /// `loginShell`.
    pub login_shell: String,
}

/// Who a projection is for: the SCIM id and, with POSIX attributes, the allocated number.
#[derive(Debug, Clone, Copy)]
pub struct Ident<'a> {
    /// SCIM id.
    pub id: &'a str,
    /// `uidNumber` / `gidNumber`, when allocated.
    pub posix_id: Option<i64>,
}

impl<'a> From<&'a str> for Ident<'a> {
    fn from(id: &'a str) -> Ident<'a> {
        Ident { id, posix_id: None }
    }
}

impl<'a> From<&'a String> for Ident<'a> {
    fn from(id: &'a String) -> Ident<'a> {
        Ident { id, posix_id: None }
    }
}

/// Group object class, which decides the member attribute and its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupClass {
    /// `groupOfNames` / `member` (user DNs).
    GroupOfNames,
    /// `groupOfUniqueNames` / `uniqueMember` (user DNs).
    GroupOfUniqueNames,
    /// `posixGroup` / `memberUid` (user names).
    PosixGroup,
}

impl GroupClass {
    /// The object class name.
    pub fn object_class(self) -> &'static str {
        match self {
            GroupClass::GroupOfNames => "groupOfNames",
            GroupClass::GroupOfUniqueNames => "groupOfUniqueNames",
            GroupClass::PosixGroup => "posixGroup",
        }
    }

    /// The attribute holding members.
    pub fn member_attribute(self) -> &'static str {
        match self {
            GroupClass::GroupOfNames => "member",
            GroupClass::GroupOfUniqueNames => "uniqueMember",
            GroupClass::PosixGroup => "memberUid",
        }
    }

    /// A member value as the directory compares it: a DN folded (`dn_key`), a `memberUid`
    /// as it is (its matching rule is exact).
    pub fn member_key(self, value: &str) -> String {
        match self {
            GroupClass::PosixGroup => value.to_string(),
            _ => dn_key(value),
        }
    }

    /// True when the schema requires at least one member.
    pub fn needs_placeholder(self) -> bool {
        !matches!(self, GroupClass::PosixGroup)
    }
}

/// The validated `[groups]` section.
#[derive(Debug, Clone)]
pub struct GroupMapping {
    /// Where group entries live.
    pub base_dn: String,
    /// The structural class.
    pub class: GroupClass,
    /// Further object classes.
    pub extra_object_classes: Vec<String>,
    /// RDN attribute, valued from `displayName`.
    pub rdn_attribute: String,
    /// Attribute that receives the SCIM id, if any.
    pub id_attribute: Option<String>,
    /// Member DN an empty group holds.
    pub placeholder_member: String,
    /// Mapping rules besides the RDN and members.
    pub rules: Vec<AttrRule>,
    /// `gidNumber` range for `posixGroup`.
    pub gid_number_range: (i64, i64),
}

/// The entry a resource should be: its DN and attribute values (objectClass included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    /// Full DN.
    pub dn: String,
    /// Attribute name (as configured) to values, in a stable order.
    pub attrs: BTreeMap<String, Vec<String>>,
}

impl Projection {
    /// The attributes as a list, for an LDAP add.
    pub fn to_add_attrs(&self) -> Vec<(String, Vec<String>)> {
        self.attrs
            .iter()
            .filter(|(_, values)| !values.is_empty())
            .map(|(attr, values)| (attr.clone(), values.clone()))
            .collect()
    }

    /// The attributes the mapping writes that have no value here: an adopted entry must lose
    /// them (a lock left by a deactivation, a title the IdP no longer sends).
    pub fn unset_attrs(&self) -> Vec<String> {
        self.attrs
            .iter()
            .filter(|(_, values)| values.is_empty())
            .map(|(attr, _)| attr.clone())
            .collect()
    }

    /// The values of `attr`, named ignoring case. Both sides of a diff come from one mapping,
    /// so the exact name almost always finds it without a scan.
    fn values(&self, attr: &str) -> Option<&Vec<String>> {
        self.attrs.get(attr).or_else(|| {
            self.attrs
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(attr))
                .map(|(_, values)| values)
        })
    }
}

/// A DN folded for comparison: lowercase, with RFC 4514 escapes (`\2c`, `\,`) in one
/// spelling, so that the server's spelling of a DN matches the one scim2ldap computed. A
/// character that structures a DN (`,+"\<>;=`, NUL) stays escaped, as `\,`: `uid=a\2cou\3db`
/// is one RDN and must not fold to the DN `uid=a,ou=b`.
pub fn dn_key(dn: &str) -> String {
    let mut out = Vec::with_capacity(dn.len());
    let bytes = dn.as_bytes();
    let mut idx = 0;
    while idx < bytes.len() {
        if bytes[idx] == b'\\' && idx + 1 < bytes.len() {
            let hex = bytes
                .get(idx + 1..idx + 3)
                .and_then(|pair| std::str::from_utf8(pair).ok());
            let byte = match hex.and_then(|pair| u8::from_str_radix(pair, 16).ok()) {
                Some(byte) => {
                    idx += 3;
                    byte
                }
                None => {
                    idx += 2;
                    bytes[idx - 1]
                }
            };
            if b",+\"\\<>;=\0".contains(&byte) {
                out.push(b'\\');
            }
            out.push(byte);
        } else {
            out.push(bytes[idx]);
            idx += 1;
        }
    }
    String::from_utf8_lossy(&out).to_lowercase()
}

/// The parent of `dn` (everything after the first unescaped comma).
pub fn parent_dn(dn: &str) -> &str {
    let bytes = dn.as_bytes();
    let mut idx = 0;
    while idx < bytes.len() {
        match bytes[idx] {
            b'\\' => idx += 2,
            b',' => return &dn[idx + 1..],
            _ => idx += 1,
        }
    }
    ""
}

/// The RDN of `dn` (everything before the first unescaped comma).
pub fn rdn(dn: &str) -> &str {
    let parent = parent_dn(dn);
    if parent.is_empty() {
        dn
    } else {
        &dn[..dn.len() - parent.len() - 1]
    }
}

/// Attributes the deactivation strategies write; never configurable as mapping targets.
const PPOLICY_LOCK_ATTR: &str = "pwdAccountLockedTime";
const PPOLICY_LOCK_VALUE: &str = "000001010000Z";

/// Active Directory's account flags. `Deactivate::AdUserAccountControl` owns one bit of it,
/// ACCOUNTDISABLE; the others (password never expires, smart card required...) are the
/// directory's, and every write keeps them.
pub const AD_ACCOUNT_CONTROL: &str = "userAccountControl";
/// ACCOUNTDISABLE, bit 2 of `userAccountControl`.
const AD_ACCOUNTDISABLE: i64 = 0x2;
/// NORMAL_ACCOUNT, for an entry that has no flags yet.
const AD_NORMAL_ACCOUNT: i64 = 0x200;

/// Whether `userAccountControl` values say the account is disabled (bit 2 set). A value that
/// is not a number says nothing: not disabled.
pub fn ad_disabled(values: &[String]) -> bool {
    values
        .first()
        .and_then(|value| ad_flags(value))
        .is_some_and(|flags| flags & AD_ACCOUNTDISABLE != 0)
}

fn ad_flags(value: &str) -> Option<i64> {
    value.trim().parse().ok()
}

/// The `userAccountControl` value that disables (or enables) an account whose flags are
/// `current`, keeping every other flag; `None` when `current` is in that state already.
pub fn ad_account_control(current: Option<&str>, disabled: bool) -> Option<String> {
    let flags = current.and_then(ad_flags);
    if flags.is_some_and(|flags| (flags & AD_ACCOUNTDISABLE != 0) == disabled) {
        return None;
    }
    let flags = flags.unwrap_or(AD_NORMAL_ACCOUNT);
    let new = if disabled {
        flags | AD_ACCOUNTDISABLE
    } else {
        flags & !AD_ACCOUNTDISABLE
    };
    Some(new.to_string())
}

impl UserMapping {
    /// Validates `[users]` for `flavor`, recording every problem.
    pub(crate) fn from_raw(
        raw: RawUserMapping,
        flavor: Option<Flavor>,
        schema: Option<&ResourceSchema>,
        problems: &mut Problems,
    ) -> Option<UserMapping> {
        let base_dn = problems.require(
            "users.base_dn",
            raw.base_dn.filter(|dn| !dn.trim().is_empty()),
        );
        let flavor = flavor.unwrap_or(Flavor::OpenLdap);
        let object_classes = raw.object_classes.unwrap_or_else(|| match flavor {
            Flavor::ActiveDirectory => vec![
                "top".into(),
                "person".into(),
                "organizationalPerson".into(),
                "user".into(),
            ],
            _ => vec!["inetOrgPerson".into()],
        });
        let rdn_attribute = raw.rdn_attribute.unwrap_or_else(|| match flavor {
            Flavor::ActiveDirectory => "cn".to_string(),
            _ => "uid".to_string(),
        });
        let (id_attribute, object_classes) =
            with_id_class(raw.id_attribute, raw.id_object_class, object_classes);
        let on_delete = choose(
            problems,
            "users.on_delete",
            raw.on_delete.as_deref(),
            &[("delete", OnDelete::Delete), ("disable", OnDelete::Disable)],
        );
        let on_existing = choose(
            problems,
            "users.on_existing",
            raw.on_existing.as_deref(),
            &[
                ("adopt", OnExisting::Adopt),
                ("conflict", OnExisting::Conflict),
            ],
        );
        let on_disable_groups = choose(
            problems,
            "users.on_disable_groups",
            raw.on_disable_groups.as_deref(),
            &[
                ("keep", OnDisableGroups::Keep),
                ("remove", OnDisableGroups::Remove),
            ],
        );
        let deactivate = match raw.deactivate.as_deref().unwrap_or("lock") {
            "lock" => Some(match flavor {
                Flavor::OpenLdap => Deactivate::PpolicyLock,
                Flavor::Ds389 => Deactivate::NsAccountLock,
                Flavor::ActiveDirectory => Deactivate::AdUserAccountControl,
                Flavor::Generic => {
                    problems.push("`users.deactivate`: the generic flavor has no lock; use `attribute` or `move`");
                    Deactivate::PpolicyLock
                }
            }),
            "attribute" => match (raw.deactivate_attribute, raw.deactivate_value) {
                (Some(attr), Some(value)) => Some(Deactivate::Attribute { attr, value }),
                _ => {
                    problems.push("`users.deactivate = \"attribute\"` needs `users.deactivate_attribute` and `users.deactivate_value`");
                    None
                }
            },
            "move" => match raw.disabled_base_dn {
                Some(disabled_base_dn) => Some(Deactivate::Move { disabled_base_dn }),
                None => {
                    problems.push("`users.deactivate = \"move\"` needs `users.disabled_base_dn`");
                    None
                }
            },
            other => {
                problems.push(format!(
                    "`users.deactivate`: `{other}` is not one of lock, attribute, move"
                ));
                None
            }
        };
        let rules = build_rules(
            "users.attributes",
            default_user_rules(flavor),
            raw.attributes,
            &rdn_attribute,
            schema,
            problems,
        );
        let posix = if raw.posix.unwrap_or(false) {
            let (uid_number_min, uid_number_max) = (
                raw.uid_number_min.unwrap_or(10_000),
                raw.uid_number_max.unwrap_or(59_999),
            );
            if uid_number_min > uid_number_max {
                problems.push("`users.uid_number_min` is above `users.uid_number_max`");
            }
            let home = raw
                .home_directory
                .unwrap_or_else(|| "/home/{userName}".to_string());
            let home_directory = match parse_source(&home).and_then(|source| {
                source_reads(&source, schema)?;
                Ok(source)
            }) {
                Ok(source) => Some(source),
                Err(err) => {
                    problems.push(format!("`users.home_directory`: `{home}`: {err}"));
                    None
                }
            };
            home_directory.map(|home_directory| PosixAccount {
                uid_number_min: i64::from(uid_number_min),
                uid_number_max: i64::from(uid_number_max),
                gid_number: i64::from(raw.gid_number.unwrap_or(10_000)),
                home_directory,
                login_shell: raw.login_shell.unwrap_or_else(|| "/bin/bash".to_string()),
            })
        } else {
            None
        };
        let object_classes = match &posix {
            Some(_)
                if !object_classes
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case("posixAccount")) =>
            {
                let mut classes = object_classes;
                classes.push("posixAccount".to_string());
                classes
            }
            _ => object_classes,
        };
        let password_hashing = choose(
            problems,
            "users.password_hashing",
            raw.password_hashing.as_deref(),
            &[
                ("directory", PasswordHashing::Directory),
                ("ssha", PasswordHashing::Ssha),
            ],
        );
        Some(UserMapping {
            password_hashing: password_hashing?,
            posix,
            base_dn: base_dn?,
            object_classes,
            rdn_attribute,
            id_attribute,
            rules,
            on_delete: on_delete?,
            on_existing: on_existing?,
            on_disable_groups: on_disable_groups?,
            deactivate: deactivate?,
        })
    }

    /// Every object class and attribute this mapping writes (for `scim2ldap check`).
    pub fn ldap_names(&self) -> (Vec<String>, Vec<String>) {
        let mut attrs: Vec<String> = self
            .rules
            .iter()
            .map(|rule| rule.ldap_attr.clone())
            .collect();
        attrs.push(self.rdn_attribute.clone());
        attrs.extend(self.id_attribute.clone());
        if self.posix.is_some() {
            attrs.extend(
                ["uidNumber", "gidNumber", "homeDirectory", "loginShell"].map(String::from),
            );
        }
        match &self.deactivate {
            Deactivate::PpolicyLock => attrs.push(PPOLICY_LOCK_ATTR.to_string()),
            Deactivate::NsAccountLock => attrs.push("nsAccountLock".to_string()),
            Deactivate::AdUserAccountControl => attrs.push(AD_ACCOUNT_CONTROL.to_string()),
            Deactivate::Attribute { attr, .. } => attrs.push(attr.clone()),
            Deactivate::Move { .. } => {}
        }
        (self.object_classes.clone(), attrs)
    }

    /// The SCIM ids a projection of `resource` needs DNs for (`dn:` sources).
    pub fn dn_refs(&self, resource: &Value, schema: &ResourceSchema) -> Vec<String> {
        self.rules
            .iter()
            .flat_map(|rule| &rule.sources)
            .filter_map(|source| match source {
                Source::DnRef(path) => Some(values_at(resource, path, schema)),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The lock a password change undoes, to be written again after it: OpenLDAP's ppolicy
    /// deletes `pwdAccountLockedTime` when a password is set, so a request that both sets a
    /// password and deactivates would otherwise leave the account open.
    pub fn lock_cleared_by_password_change(
        &self,
        projection: &Projection,
    ) -> Option<(String, Vec<String>)> {
        if self.deactivate != Deactivate::PpolicyLock {
            return None;
        }
        projection
            .attrs
            .get(PPOLICY_LOCK_ATTR)
            .filter(|values| !values.is_empty())
            .map(|values| (PPOLICY_LOCK_ATTR.to_string(), values.clone()))
    }

    /// The DN of the user `user_name`, enabled or (with `Deactivate::Move`) disabled.
    pub fn dn(&self, user_name: &str, active: bool) -> String {
        let parent = match (&self.deactivate, active) {
            (Deactivate::Move { disabled_base_dn }, false) => disabled_base_dn,
            _ => &self.base_dn,
        };
        escape::child_dn(&self.rdn_attribute, user_name, parent)
    }

    /// The entry `resource` should be. `ident` names the SCIM id (and the allocated
    /// `uidNumber`); `dns` resolves `dn:` references.
    pub fn project<'a>(
        &self,
        ident: impl Into<Ident<'a>>,
        resource: &Value,
        schema: &ResourceSchema,
        dns: &HashMap<String, String>,
    ) -> Projection {
        self.project_rules(ident.into(), resource, schema, dns, None)
    }

    /// [`project`](Self::project) without the mapping rules that read none of the top-level
    /// members `changed` (from [`changed_members`]): both sides of an update projected so
    /// differ exactly where the full projections would, and a change of one attribute maps
    /// one attribute instead of all of them, twice.
    pub fn project_changed<'a>(
        &self,
        ident: impl Into<Ident<'a>>,
        resource: &Value,
        schema: &ResourceSchema,
        dns: &HashMap<String, String>,
        changed: &[String],
    ) -> Projection {
        self.project_rules(ident.into(), resource, schema, dns, Some(changed))
    }

    fn project_rules(
        &self,
        ident: Ident<'_>,
        resource: &Value,
        schema: &ResourceSchema,
        dns: &HashMap<String, String>,
        changed: Option<&[String]>,
    ) -> Projection {
        let id = ident.id;
        let user_name = resource
            .get("userName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let active = resource
            .get("active")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let mut attrs = BTreeMap::new();
        attrs.insert("objectClass".to_string(), self.object_classes.clone());
        apply_rules(&self.rules, resource, schema, dns, changed, &mut attrs);
        attrs.insert(self.rdn_attribute.clone(), vec![user_name.to_string()]);
        if let Some(id_attr) = &self.id_attribute {
            attrs.insert(id_attr.clone(), vec![id.to_string()]);
        }
        if let Some(posix) = &self.posix {
            attrs.insert(
                "uidNumber".to_string(),
                ident.posix_id.map(|n| n.to_string()).into_iter().collect(),
            );
            attrs.insert("gidNumber".to_string(), vec![posix.gid_number.to_string()]);
            attrs.insert(
                "homeDirectory".to_string(),
                source_values(&posix.home_directory, resource, schema, dns),
            );
            attrs.insert("loginShell".to_string(), vec![posix.login_shell.clone()]);
        }
        match &self.deactivate {
            Deactivate::PpolicyLock => {
                attrs.insert(
                    PPOLICY_LOCK_ATTR.to_string(),
                    lock_values(active, PPOLICY_LOCK_VALUE),
                );
            }
            Deactivate::NsAccountLock => {
                attrs.insert("nsAccountLock".to_string(), lock_values(active, "TRUE"));
            }
            Deactivate::AdUserAccountControl => {
                // 512 = NORMAL_ACCOUNT; 514 adds ACCOUNTDISABLE (bit 2). Only a new entry gets
                // the value whole: a modify keeps the entry's other flags (`apply_op`), and
                // `drift` compares bit 2 alone.
                let value = ad_account_control(None, !active).unwrap_or_default();
                attrs.insert(AD_ACCOUNT_CONTROL.to_string(), vec![value]);
            }
            Deactivate::Attribute { attr, value } => {
                attrs.insert(attr.clone(), lock_values(active, value));
            }
            Deactivate::Move { .. } => {}
        }
        Projection {
            dn: self.dn(user_name, active),
            attrs,
        }
    }
}

fn lock_values(active: bool, value: &str) -> Vec<String> {
    if active {
        Vec::new()
    } else {
        vec![value.to_string()]
    }
}

impl GroupMapping {
    /// Validates `[groups]`, recording every problem.
    pub(crate) fn from_raw(
        raw: RawGroupMapping,
        schema: Option<&ResourceSchema>,
        problems: &mut Problems,
    ) -> Option<GroupMapping> {
        let base_dn = problems.require(
            "groups.base_dn",
            raw.base_dn.filter(|dn| !dn.trim().is_empty()),
        );
        let class = choose(
            problems,
            "groups.object_class",
            raw.object_class.as_deref(),
            &[
                ("groupOfNames", GroupClass::GroupOfNames),
                ("groupOfUniqueNames", GroupClass::GroupOfUniqueNames),
                ("posixGroup", GroupClass::PosixGroup),
            ],
        );
        let rdn_attribute = raw.rdn_attribute.unwrap_or_else(|| "cn".to_string());
        let (id_attribute, extra_object_classes) = with_id_class(
            raw.id_attribute,
            raw.id_object_class,
            raw.object_classes.unwrap_or_default(),
        );
        let placeholder_member = raw.placeholder_member.unwrap_or_else(|| {
            format!("cn=placeholder,{}", base_dn.as_deref().unwrap_or_default())
        });
        let rules = build_rules(
            "groups.attributes",
            Vec::new(),
            raw.attributes,
            &rdn_attribute,
            schema,
            problems,
        );
        let gid_number_range = (
            i64::from(raw.gid_number_min.unwrap_or(10_000)),
            i64::from(raw.gid_number_max.unwrap_or(59_999)),
        );
        if gid_number_range.0 > gid_number_range.1 {
            problems.push("`groups.gid_number_min` is above `groups.gid_number_max`");
        }
        Some(GroupMapping {
            gid_number_range,
            base_dn: base_dn?,
            class: class?,
            extra_object_classes,
            rdn_attribute,
            id_attribute,
            placeholder_member,
            rules,
        })
    }

    /// The DN of the group named `display_name`.
    pub fn dn(&self, display_name: &str) -> String {
        escape::child_dn(&self.rdn_attribute, display_name, &self.base_dn)
    }

    /// Object classes of a new group entry.
    pub fn object_classes(&self) -> Vec<String> {
        let mut classes = vec![self.class.object_class().to_string()];
        classes.extend(self.extra_object_classes.iter().cloned());
        classes
    }

    /// The entry `resource` should be, without its members (they are written one by one).
    pub fn project<'a>(
        &self,
        ident: impl Into<Ident<'a>>,
        resource: &Value,
        schema: &ResourceSchema,
    ) -> Projection {
        let ident = ident.into();
        let id = ident.id;
        let display_name = resource
            .get("displayName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut attrs = BTreeMap::new();
        attrs.insert("objectClass".to_string(), self.object_classes());
        apply_rules(
            &self.rules,
            resource,
            schema,
            &HashMap::new(),
            None,
            &mut attrs,
        );
        attrs.insert(self.rdn_attribute.clone(), vec![display_name.to_string()]);
        if let Some(id_attr) = &self.id_attribute {
            attrs.insert(id_attr.clone(), vec![id.to_string()]);
        }
        if self.class == GroupClass::PosixGroup {
            attrs.insert(
                "gidNumber".to_string(),
                ident.posix_id.map(|n| n.to_string()).into_iter().collect(),
            );
        }
        Projection {
            dn: self.dn(display_name),
            attrs,
        }
    }

    /// Every object class and attribute this mapping writes (for `scim2ldap check`).
    pub fn ldap_names(&self) -> (Vec<String>, Vec<String>) {
        let mut attrs: Vec<String> = self
            .rules
            .iter()
            .map(|rule| rule.ldap_attr.clone())
            .collect();
        attrs.push(self.rdn_attribute.clone());
        attrs.push(self.class.member_attribute().to_string());
        attrs.extend(self.id_attribute.clone());
        if self.class == GroupClass::PosixGroup {
            attrs.push("gidNumber".to_string());
        }
        (self.object_classes(), attrs)
    }
}

fn with_id_class(
    id_attribute: Option<String>,
    id_object_class: Option<String>,
    mut object_classes: Vec<String>,
) -> (Option<String>, Vec<String>) {
    if id_attribute.is_some() {
        let class = id_object_class.unwrap_or_else(|| "scimResource".to_string());
        if !object_classes
            .iter()
            .any(|c| c.eq_ignore_ascii_case(&class))
        {
            object_classes.push(class);
        }
    }
    (id_attribute, object_classes)
}

fn choose<T: Copy>(
    problems: &mut Problems,
    key: &str,
    value: Option<&str>,
    options: &[(&str, T)],
) -> Option<T> {
    let Some(value) = value else {
        return options.first().map(|(_, option)| *option);
    };
    match options
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(value))
    {
        Some((_, option)) => Some(*option),
        None => {
            let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
            problems.push(format!(
                "`{key}`: `{value}` is not one of {}",
                names.join(", ")
            ));
            None
        }
    }
}

/// The default rules for `inetOrgPerson` (and the AD `user` class).
fn default_user_rules(flavor: Flavor) -> Vec<(String, RawSource)> {
    let enterprise = |attr: &str| format!("{ENTERPRISE_USER_URN}:{attr}");
    let many = |sources: &[&str]| RawSource::Many(sources.iter().map(|s| s.to_string()).collect());
    let one = |source: &str| RawSource::One(source.to_string());
    let mut rules = vec![
        ("givenName".to_string(), one("name.givenName")),
        ("sn".to_string(), many(&["name.familyName", "userName"])),
        ("displayName".to_string(), one("displayName")),
        (
            "mail".to_string(),
            many(&[
                "emails[primary eq true].value",
                "emails[type eq \"work\"].value",
                "emails.value",
            ]),
        ),
        (
            "telephoneNumber".to_string(),
            one("phoneNumbers[type eq \"work\"].value"),
        ),
        (
            "mobile".to_string(),
            one("phoneNumbers[type eq \"mobile\"].value"),
        ),
        ("title".to_string(), one("title")),
        (
            "employeeNumber".to_string(),
            one(&enterprise("employeeNumber")),
        ),
        (
            "manager".to_string(),
            one(&format!("dn:{}", enterprise("manager.value"))),
        ),
    ];
    if flavor != Flavor::ActiveDirectory {
        // Legacy applications find accounts by `uid`; with another RDN attribute it still
        // holds the user name (with `uid` as the RDN this rule gives way to it).
        rules.push(("uid".to_string(), one("userName")));
        rules.push((
            "cn".to_string(),
            many(&[
                "name.formatted",
                "{name.givenName} {name.familyName}",
                "displayName",
                "userName",
            ]),
        ));
        rules.push(("preferredLanguage".to_string(), one("preferredLanguage")));
        rules.push((
            "departmentNumber".to_string(),
            one(&enterprise("department")),
        ));
        rules.push(("o".to_string(), one(&enterprise("organization"))));
        rules.push(("employeeType".to_string(), one("userType")));
    } else {
        rules.push(("department".to_string(), one(&enterprise("department"))));
        rules.push(("company".to_string(), one(&enterprise("organization"))));
    }
    rules
}

/// The top-level members of a resource (lowercased) that `source` reads (an extension's
/// attributes through its URN); `None` without a schema. Every path must name an attribute of
/// `schema` (and, after a value filter, one of its sub-attributes): a misspelt one would
/// otherwise map nothing, silently, on every write.
fn source_reads(
    source: &Source,
    schema: Option<&ResourceSchema>,
) -> Result<Option<Vec<String>>, String> {
    let Some(schema) = schema else {
        return Ok(None);
    };
    let paths: Vec<&PatchPath> = match source {
        Source::Path(path) | Source::DnRef(path) => vec![path],
        Source::Template(parts) => parts
            .iter()
            .filter_map(|part| match part {
                TemplatePart::Field(path) => Some(path),
                TemplatePart::Literal(_) => None,
            })
            .collect(),
    };
    let mut reads = Vec::new();
    for path in paths {
        let resolved = resolve(schema, path.attr_path()).filter(|resolved| match path {
            PatchPath::ValuePath {
                sub_attr: Some(sub),
                ..
            } => resolved.attr.sub_attribute(sub).is_some(),
            _ => true,
        });
        let Some(resolved) = resolved else {
            return Err(format!(
                "the {} schema has no such attribute (GET /Schemas lists them)",
                schema.core.name
            ));
        };
        reads.push(
            resolved
                .extension
                .unwrap_or(&resolved.attr.name)
                .to_ascii_lowercase(),
        );
    }
    Ok(Some(reads))
}

/// Merges configured rules over defaults (`""` removes one) and parses every source.
fn build_rules(
    key: &str,
    defaults: Vec<(String, RawSource)>,
    configured: Option<BTreeMap<String, RawSource>>,
    rdn_attribute: &str,
    schema: Option<&ResourceSchema>,
    problems: &mut Problems,
) -> Vec<AttrRule> {
    // A default rule for the RDN attribute (`cn` when `rdn_attribute = "cn"`) gives way:
    // scim2ldap writes that attribute itself.
    let mut merged: Vec<(String, RawSource, bool)> = defaults
        .into_iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case(rdn_attribute))
        .map(|(name, source)| (name, source, false))
        .collect();
    for (ldap_attr, source) in configured.unwrap_or_default() {
        merged.retain(|(name, _, _)| !name.eq_ignore_ascii_case(&ldap_attr));
        merged.push((ldap_attr, source, true));
    }
    let mut rules = Vec::new();
    for (ldap_attr, raw_source, configured) in merged {
        let texts = match raw_source {
            RawSource::One(text) => vec![text],
            RawSource::Many(texts) => texts,
        };
        let texts: Vec<String> = texts
            .into_iter()
            .filter(|text| !text.trim().is_empty())
            .collect();
        if texts.is_empty() {
            continue; // "" removes a default mapping.
        }
        if configured
            && (ldap_attr.eq_ignore_ascii_case(rdn_attribute)
                || ldap_attr.eq_ignore_ascii_case("objectClass"))
        {
            problems.push(format!(
                "`{key}.{ldap_attr}`: this attribute is written by scim2ldap itself"
            ));
            continue;
        }
        let mut sources = Vec::new();
        let mut reads = Some(Vec::new());
        for text in texts {
            match parse_source(&text).and_then(|source| {
                let source_reads = source_reads(&source, schema)?;
                Ok((source, source_reads))
            }) {
                Ok((source, source_reads)) => {
                    sources.push(source);
                    reads = reads.zip(source_reads).map(|(mut all, more)| {
                        for member in more {
                            if !all.contains(&member) {
                                all.push(member);
                            }
                        }
                        all
                    });
                }
                Err(err) => problems.push(format!("`{key}.{ldap_attr}`: `{text}`: {err}")),
            }
        }
        rules.push(AttrRule {
            ldap_attr,
            sources,
            reads,
        });
    }
    rules
}

/// Parses one source text.
pub fn parse_source(text: &str) -> Result<Source, String> {
    let text = text.trim();
    if let Some(path) = text.strip_prefix("dn:") {
        return PatchPath::parse(path.trim())
            .map(Source::DnRef)
            .map_err(|err| err.detail);
    }
    if !text.contains('{') {
        return PatchPath::parse(text)
            .map(Source::Path)
            .map_err(|err| err.detail);
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Literal(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or("a `{` in the template is not closed")?;
        let path = PatchPath::parse(after[..close].trim()).map_err(|err| err.detail)?;
        parts.push(TemplatePart::Field(path));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err("a `}` in the template has no `{`".to_string());
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest.to_string()));
    }
    Ok(Source::Template(parts))
}

/// Applies `rules` (only those reading a member in `changed`, when given) to `resource`.
fn apply_rules(
    rules: &[AttrRule],
    resource: &Value,
    schema: &ResourceSchema,
    dns: &HashMap<String, String>,
    changed: Option<&[String]>,
    attrs: &mut BTreeMap<String, Vec<String>>,
) {
    for rule in rules {
        if changed.is_some_and(|changed| !rule.reads_any(changed)) {
            continue;
        }
        let values = rule
            .sources
            .iter()
            .map(|source| source_values(source, resource, schema, dns))
            .find(|values| !values.is_empty())
            .unwrap_or_default();
        attrs.insert(rule.ldap_attr.clone(), values);
    }
}

fn source_values(
    source: &Source,
    resource: &Value,
    schema: &ResourceSchema,
    dns: &HashMap<String, String>,
) -> Vec<String> {
    match source {
        Source::Path(path) => values_at(resource, path, schema),
        Source::DnRef(path) => values_at(resource, path, schema)
            .into_iter()
            .filter_map(|id| dns.get(&id).cloned())
            .collect(),
        Source::Template(parts) => {
            let mut text = String::new();
            for part in parts {
                match part {
                    TemplatePart::Literal(literal) => text.push_str(literal),
                    TemplatePart::Field(path) => {
                        match values_at(resource, path, schema).into_iter().next() {
                            Some(value) => text.push_str(&value),
                            None => return Vec::new(),
                        }
                    }
                }
            }
            let text = text.trim().to_string();
            if text.is_empty() {
                Vec::new()
            } else {
                vec![text]
            }
        }
    }
}

/// The values at `path` as LDAP strings: strings as they are (empty ones skipped, since
/// OneLogin renders an empty parameter as `""`), booleans as `TRUE`/`FALSE`, numbers in decimal.
pub fn values_at(resource: &Value, path: &PatchPath, schema: &ResourceSchema) -> Vec<String> {
    let Some(resolved) = resolve(schema, path.attr_path()) else {
        return Vec::new();
    };
    let Some(value) = resolved.value(resource) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let (selected, sub): (Vec<&Value>, Option<&str>) = match path {
        PatchPath::Attr(attr_path) => (values_of(value).collect(), attr_path.sub.as_deref()),
        PatchPath::ValuePath {
            filter, sub_attr, ..
        } => (
            values_of(value)
                .filter(|element| filter.matches_value(element, resolved.attr))
                .collect(),
            sub_attr.as_deref(),
        ),
    };
    for element in selected {
        let leaf = match (sub, element) {
            (Some(sub), Value::Object(object)) => get_ci(object, sub),
            (None, Value::Object(object)) => get_ci(object, "value"),
            (Some(_), _) => None,
            (None, other) => Some(other),
        };
        for leaf in leaf.into_iter().flat_map(values_of) {
            match leaf {
                Value::String(text) if !text.trim().is_empty() => out.push(text.clone()),
                Value::Bool(flag) => out.push(if *flag { "TRUE" } else { "FALSE" }.to_string()),
                Value::Number(number) => out.push(number.to_string()),
                _ => {}
            }
        }
    }
    dedup_folded(&mut out);
    out
}

/// Drops values equal to an earlier one under LDAP's usual matching (caseIgnoreMatch: case and
/// runs of spaces do not count). The directory refuses a value twice in one change (result 20),
/// and a projection holding more values than the entry can would look like drift forever.
fn dedup_folded(values: &mut Vec<String>) {
    if values.len() < 2 {
        return;
    }
    let fold = |value: &str| -> String {
        value
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    };
    let mut seen = std::collections::HashSet::with_capacity(values.len());
    values.retain(|value| seen.insert(fold(value)));
}

/// The modify that takes the entry from `old` to `new` (same DN assumed; renames are separate).
///
/// Each changed attribute becomes one `Replace` with its full new value set (empty deletes it):
/// replace is idempotent, so a replayed or retried write does no harm. `objectClass` only ever
/// gains classes, and the RDN attribute is left to the rename.
pub fn diff(old: &Projection, new: &Projection, rdn_attribute: &str) -> Vec<Mod> {
    let mut mods = Vec::new();
    for (attr, new_values) in &new.attrs {
        if attr.eq_ignore_ascii_case(rdn_attribute) {
            continue;
        }
        let old_values = old.values(attr).map_or(&[][..], Vec::as_slice);
        if attr.eq_ignore_ascii_case("objectClass") {
            let added: Vec<String> = new_values
                .iter()
                .filter(|class| !old_values.iter().any(|old| old.eq_ignore_ascii_case(class)))
                .cloned()
                .collect();
            if !added.is_empty() {
                mods.push(Mod::Add(attr.clone(), added));
            }
            continue;
        }
        if !same_set(old_values, new_values) {
            mods.push(Mod::Replace(attr.clone(), new_values.clone()));
        }
    }
    for (attr, old_values) in &old.attrs {
        if new.values(attr).is_none()
            && !old_values.is_empty()
            && !attr.eq_ignore_ascii_case("objectClass")
        {
            mods.push(Mod::Replace(attr.clone(), Vec::new()));
        }
    }
    mods
}

/// Attributes whose values are DNs: compared ignoring case and escaping, since the directory
/// may spell a DN differently from how scim2ldap wrote it.
const DN_VALUED: &[&str] = &["manager", "member", "uniqueMember", "secretary", "seeAlso"];

/// The attributes where `entry` (as read from the directory) differs from `expected`, ignoring
/// the RDN attribute (the DN is compared by the caller) and attributes the mapping does not
/// write. `objectClass` differs only when an expected class is missing.
pub fn drift(
    entry: &BTreeMap<String, Vec<String>>,
    expected: &Projection,
    rdn_attribute: &str,
) -> Vec<String> {
    let actual = |attr: &str| -> Vec<String> {
        entry
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(attr))
            .map(|(_, values)| values.clone())
            .unwrap_or_default()
    };
    let mut differing = Vec::new();
    for (attr, wanted) in &expected.attrs {
        if attr.eq_ignore_ascii_case(rdn_attribute) {
            continue;
        }
        let have = actual(attr);
        let same = if attr.eq_ignore_ascii_case("objectClass") {
            wanted
                .iter()
                .all(|class| have.iter().any(|h| h.eq_ignore_ascii_case(class)))
        } else if DN_VALUED
            .iter()
            .any(|dn_attr| dn_attr.eq_ignore_ascii_case(attr))
        {
            let fold = |values: &[String]| {
                let mut keys: Vec<String> = values.iter().map(|v| dn_key(v)).collect();
                keys.sort();
                keys
            };
            fold(wanted) == fold(&have)
        } else if attr.eq_ignore_ascii_case(AD_ACCOUNT_CONTROL) {
            // Only the disable bit is ours; the directory keeps the other flags.
            !have.is_empty() && ad_disabled(wanted) == ad_disabled(&have)
        } else if attr.eq_ignore_ascii_case(PPOLICY_LOCK_ATTR) {
            // Only the permanent lock is ours: a timestamp is ppolicy locking an account after
            // failed binds (`pwdLockout`), which must stay until it ends by itself.
            let permanent = |values: &[String]| values.iter().any(|v| v == PPOLICY_LOCK_VALUE);
            permanent(wanted) == permanent(&have)
        } else {
            same_set(wanted, &have)
        };
        if !same {
            differing.push(attr.clone());
        }
    }
    differing
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|value| b.contains(value))
}

#[cfg(test)]
mod tests;
