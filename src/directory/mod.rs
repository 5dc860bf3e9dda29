//! The only code that speaks LDAP: pooled bound connections, timeouts, operations, result-code
//! classification and escaping. Callers see `Entry`, `Mod` and `DirectoryError`, never ldap3.

mod error;
pub mod escape;
mod follow;
mod own;
mod pool;
mod values;

use std::collections::{BTreeMap, HashSet};

use ldap3::{Scope, SearchEntry};
use secrecy::{ExposeSecret, SecretString};

pub use error::DirectoryError;
pub use follow::{
    ChangeStream, SyncEvent, SyncMessage, SYNC_REFRESH_REQUIRED, UNAVAILABLE_CRITICAL_EXTENSION,
};
pub use pool::PoolStats;

use crate::config::LdapConfig;

/// An entry as read: its DN and attribute values (attribute names as the server spelled them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Distinguished name.
    pub dn: String,
    /// Attribute values.
    pub attrs: BTreeMap<String, Vec<String>>,
}

impl Entry {
    /// The values of `attr`, matched ignoring case; empty when absent.
    pub fn values(&self, attr: &str) -> &[String] {
        self.attrs
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(attr))
            .map(|(_, values)| values.as_slice())
            .unwrap_or(&[])
    }

    /// The first value of `attr`, if any.
    pub fn first(&self, attr: &str) -> Option<&str> {
        self.values(attr).first().map(String::as_str)
    }
}

/// One change of a modify operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mod {
    /// Add these values.
    Add(String, Vec<String>),
    /// Delete these values; an empty list deletes the attribute.
    Delete(String, Vec<String>),
    /// Set exactly these values; an empty list deletes the attribute (and is a no-op when it is
    /// absent, which makes replace idempotent).
    Replace(String, Vec<String>),
}

/// Adds (`add`) or deletes one value of `attr`.
fn value_mod(attr: &str, value: &str, add: bool) -> Mod {
    let values = vec![value.to_string()];
    if add {
        Mod::Add(attr.to_string(), values)
    } else {
        Mod::Delete(attr.to_string(), values)
    }
}

impl Mod {
    /// The attribute this change touches.
    pub fn attr(&self) -> &str {
        match self {
            Mod::Add(attr, _) | Mod::Delete(attr, _) | Mod::Replace(attr, _) => attr,
        }
    }

    fn to_ldap(&self) -> ldap3::Mod<&str> {
        fn set(values: &[String]) -> HashSet<&str> {
            values.iter().map(String::as_str).collect()
        }
        match self {
            Mod::Add(attr, values) => ldap3::Mod::Add(attr.as_str(), set(values)),
            Mod::Delete(attr, values) => ldap3::Mod::Delete(attr.as_str(), set(values)),
            Mod::Replace(attr, values) => ldap3::Mod::Replace(attr.as_str(), set(values)),
        }
    }
}

/// Whether a search looks at the base entry only or the whole subtree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchScope {
    /// The base entry only.
    Base,
    /// The base's direct children.
    OneLevel,
    /// The base and everything below it.
    Subtree,
}

/// Entries of a paged search, one at a time.
pub struct EntryStream {
    stream: ldap3::SearchStream<'static, String, Vec<String>>,
}

impl EntryStream {
    /// The next entry, or `None` at the end (the search's result code is checked then).
    pub async fn next(&mut self) -> Result<Option<Entry>, DirectoryError> {
        match self.stream.next().await.map_err(DirectoryError::from)? {
            Some(entry) => {
                let entry = SearchEntry::construct(entry);
                Ok(Some(Entry {
                    dn: entry.dn,
                    attrs: entry.attrs.into_iter().collect(),
                }))
            }
            None => {
                let result = self.stream.finish().await;
                match result.rc {
                    0 => Ok(None),
                    rc => Err(DirectoryError::from_result(rc, result.text)),
                }
            }
        }
    }
}

/// Object class and attribute type names published in the directory's subschema.
#[derive(Debug, Default)]
pub struct Subschema {
    /// Object class names and aliases, lowercased.
    pub object_classes: HashSet<String>,
    /// Attribute type names and aliases, lowercased.
    pub attribute_types: HashSet<String>,
}

/// The directory: a pool of bound connections and the operations scim2ldap needs.
#[derive(Clone)]
pub struct Directory {
    pool: std::sync::Arc<pool::Pool>,
    values: std::sync::Arc<values::ValueQueue>,
    /// The daemon's own writes, while changes are followed (`track_own_writes`).
    own: Option<std::sync::Arc<own::OwnWrites>>,
}

impl Directory {
    /// Prepares the pool; no connection is opened until the first operation.
    ///
    /// Fails when the TLS settings cannot be loaded.
    pub fn new(config: &LdapConfig) -> Result<Directory, DirectoryError> {
        Ok(Directory {
            pool: std::sync::Arc::new(pool::Pool::new(config.clone())?),
            values: Default::default(),
            own: None,
        })
    }

    /// Keeps a tally of the daemon's own writes, so that a follower of the directory's
    /// changes can pass over their messages (`own_change`).
    pub fn track_own_writes(&mut self) {
        self.own = Some(Default::default());
    }

    /// Whether a change message for `dn` is the daemon's own write (and takes it off the
    /// tally). Always false without `track_own_writes`.
    pub fn own_change(&self, dn: &str) -> bool {
        self.own.as_ref().is_some_and(|own| own.take(dn))
    }

    /// Runs the write `op` of the entry that will be at `dn`, counted in the tally of own
    /// writes (before it is sent: its change message may come before its answer).
    async fn write<T>(
        &self,
        dn: &str,
        op: impl std::future::Future<Output = Result<T, DirectoryError>>,
    ) -> Result<T, DirectoryError> {
        let Some(own) = &self.own else {
            return op.await;
        };
        own.wrote(dn);
        let result = op.await;
        match result {
            Ok(_) => own.answered(dn),
            Err(_) => own.failed(dn),
        }
        result
    }

    /// Runs `op` on a pooled connection with the configured timeout; a lost connection is
    /// dropped so that the next use reconnects (`Pool::after`).
    ///
    /// Each run is counted in the metrics under `operation`, with its result and latency.
    async fn run<T, F, Fut>(&self, operation: &'static str, op: F) -> Result<T, DirectoryError>
    where
        F: FnOnce(ldap3::Ldap) -> Fut,
        Fut: std::future::Future<Output = Result<T, DirectoryError>>,
    {
        let started = std::time::Instant::now();
        let result = async {
            let pooled = self.pool.get().await?;
            let mut ldap = pooled.ldap.clone();
            ldap.with_timeout(self.pool.timeout());
            let began_us = self.pool.now_us();
            let result = op(ldap).await;
            self.pool.after(&pooled, began_us, &result).await;
            result
        }
        .await;
        crate::metrics::record_directory_operation(
            operation,
            operation_result(&result),
            started.elapsed(),
        );
        result
    }

    /// Slots, bound connections and waiting operations of the pool, for the metrics.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Checks that the directory answers: reads the root DSE.
    pub async fn ping(&self) -> Result<(), DirectoryError> {
        self.read("", &["namingContexts"]).await.map(|_| ())
    }

    /// The naming context (from the root DSE's `namingContexts`) that holds `dn`: the longest
    /// one `dn` ends with. `dn` itself when the root DSE names none that does (a server that
    /// hides it from the bind DN).
    pub async fn naming_context(&self, dn: &str) -> Result<String, DirectoryError> {
        let root = self.read("", &["namingContexts"]).await?;
        let key = crate::mapping::dn_key(dn);
        let holds = |context: &str| {
            let context = crate::mapping::dn_key(context);
            key == context
                || key
                    .strip_suffix(context.as_str())
                    .is_some_and(|head| head.trim_end().ends_with(','))
        };
        Ok(root
            .iter()
            .flat_map(|root| root.values("namingContexts"))
            .filter(|context| !context.is_empty() && holds(context))
            .max_by_key(|context| context.len())
            .cloned()
            .unwrap_or_else(|| dn.to_string()))
    }

    /// Whether any entry below `base` holds `attr=value` (one indexed equality search that
    /// asks for no attributes and stops at the first match).
    pub async fn holds_value(
        &self,
        base: &str,
        attr: &str,
        value: &str,
    ) -> Result<bool, DirectoryError> {
        let filter = escape::eq_filter(attr, value);
        self.run("search", |mut ldap| async move {
            let result = ldap
                .with_search_options(ldap3::SearchOptions::new().sizelimit(1))
                .search(base, Scope::Subtree, &filter, vec!["1.1"])
                .await?;
            // Size limit exceeded (4) also means a match.
            if result.1.rc == 4 {
                return Ok(!result.0.is_empty());
            }
            let (entries, _) = result.success()?;
            Ok(!entries.is_empty())
        })
        .await
    }

    /// Adds an entry and returns the value of `id_attr` (the directory's own id, such as
    /// `entryUUID`) from the post-read control (RFC 4527), without a second round trip; `None`
    /// when the server does not support the control.
    pub async fn add_returning(
        &self,
        dn: &str,
        attrs: &[(String, Vec<String>)],
        id_attr: &str,
    ) -> Result<Option<String>, DirectoryError> {
        let add = self.run("add", |mut ldap| async move {
            let attrs: Vec<(&str, HashSet<&str>)> = attrs
                .iter()
                .filter(|(_, values)| !values.is_empty())
                .map(|(attr, values)| (attr.as_str(), values.iter().map(String::as_str).collect()))
                .collect();
            let result = ldap
                .with_controls(ldap3::controls::PostRead::new(vec![id_attr]))
                .add(dn, attrs)
                .await?
                .success()?;
            let entry_id = result.ctrls.iter().find_map(|ctrl| {
                matches!(ctrl.0, Some(ldap3::controls::ControlType::PostReadResp)).then(|| {
                    let resp: ldap3::controls::PostReadResp = ctrl.1.parse();
                    resp.attrs
                        .iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case(id_attr))
                        .and_then(|(_, values)| values.first().cloned())
                })
            });
            Ok(entry_id.flatten())
        });
        self.write(dn, add).await
    }

    /// Applies `mods` to `dn` in one modify operation.
    pub async fn modify(&self, dn: &str, mods: &[Mod]) -> Result<(), DirectoryError> {
        if mods.is_empty() {
            return Ok(());
        }
        let modify = self.run("modify", |mut ldap| async move {
            let mods: Vec<ldap3::Mod<&str>> = mods.iter().map(Mod::to_ldap).collect();
            ldap.modify(dn, mods).await?.success()?;
            Ok(())
        });
        self.write(dn, modify).await
    }

    /// Adds one value to `attr` of `dn`; a value already there counts as done. Merged with
    /// other single-value changes of the same attribute waiting meanwhile (`values.rs`).
    pub async fn add_value(&self, dn: &str, attr: &str, value: &str) -> Result<(), DirectoryError> {
        self.change_value(dn, attr, value, true).await
    }

    /// Deletes one value from `attr` of `dn`; a value already gone, or an entry gone, counts
    /// as done. Merged as `add_value` is.
    pub async fn delete_value(
        &self,
        dn: &str,
        attr: &str,
        value: &str,
    ) -> Result<(), DirectoryError> {
        self.change_value(dn, attr, value, false).await
    }

    async fn change_value(
        &self,
        dn: &str,
        attr: &str,
        value: &str,
        add: bool,
    ) -> Result<(), DirectoryError> {
        let key = (dn.to_string(), attr.to_string());
        let (reply, answer) = tokio::sync::oneshot::channel();
        let change = values::ValueChange {
            add,
            value: value.to_string(),
            reply,
        };
        if self.values.push(&key, change) {
            // A task of its own, so that a caller that goes away cannot strand the others.
            let directory = self.clone();
            tokio::spawn(async move { directory.apply_values(key).await });
        }
        answer.await.unwrap_or_else(|_| {
            Err(DirectoryError::Unavailable(
                "a value change was abandoned".to_string(),
            ))
        })
    }

    /// Applies the changes waiting for one attribute of one entry until none wait: a batch as
    /// one modify in order, or, when the directory refuses it (a value already there or gone,
    /// say), each change on its own so that each gets its own result.
    async fn apply_values(&self, key: values::Key) {
        let serving = self.values.serving(&key);
        let (dn, attr) = &key;
        while let Some(batch) = self.values.take(&key, values::MAX_BATCH, |_| 1) {
            if batch.len() > 1 {
                let mods: Vec<Mod> = batch
                    .iter()
                    .map(|change| value_mod(attr, &change.value, change.add))
                    .collect();
                match self.modify(dn, &mods).await {
                    Ok(()) => {
                        for change in batch {
                            let _ = change.reply.send(Ok(()));
                        }
                        continue;
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, n = batch.len(), "merged value changes refused; applying them one by one");
                    }
                }
            }
            for change in batch {
                let result = self
                    .change_one_value(dn, attr, &change.value, change.add)
                    .await;
                let _ = change.reply.send(result);
            }
        }
        serving.disarm();
    }

    async fn change_one_value(
        &self,
        dn: &str,
        attr: &str,
        value: &str,
        add: bool,
    ) -> Result<(), DirectoryError> {
        match self.modify(dn, &[value_mod(attr, value, add)]).await {
            Err(DirectoryError::ValueExists(_)) if add => Ok(()),
            // No such value, or no such entry: the value is not there either way.
            Err(DirectoryError::NoSuchAttribute(_) | DirectoryError::NoSuchObject(_)) if !add => {
                Ok(())
            }
            other => other,
        }
    }

    /// Deletes an entry; an entry already gone counts as done.
    pub async fn delete(&self, dn: &str) -> Result<(), DirectoryError> {
        let result = self
            .run("delete", |mut ldap| async move {
                ldap.delete(dn).await?.success()?;
                Ok(())
            })
            .await;
        match result {
            Err(DirectoryError::NoSuchObject(_)) => Ok(()),
            other => other,
        }
    }

    /// Renames `dn` to `new_rdn` (an escaped `attr=value`), optionally under `new_superior`;
    /// the old RDN value is removed.
    pub async fn rename(
        &self,
        dn: &str,
        new_rdn: &str,
        new_superior: Option<&str>,
    ) -> Result<(), DirectoryError> {
        let new_dn = format!(
            "{new_rdn},{}",
            new_superior.unwrap_or_else(|| crate::mapping::parent_dn(dn))
        );
        let rename = self.run("modrdn", |mut ldap| async move {
            ldap.modifydn(dn, new_rdn, true, new_superior)
                .await?
                .success()?;
            Ok(())
        });
        self.write(&new_dn, rename).await
    }

    /// Sets the password of `dn` with the Password Modify extended operation (RFC 3062), so the
    /// directory hashes it under its own policy.
    pub async fn set_password(
        &self,
        dn: &str,
        password: &SecretString,
    ) -> Result<(), DirectoryError> {
        let set = self.run("password_modify", |mut ldap| async move {
            let exop = ldap3::exop::PasswordModify {
                user_id: Some(dn),
                old_pass: None,
                new_pass: Some(password.expose_secret()),
            };
            ldap.extended(exop).await?.success()?;
            Ok(())
        });
        self.write(dn, set).await
    }

    /// Writes `userPassword` as exactly these already hashed values (for directories without
    /// the Password Modify extended operation, or an entry put back as it was). The hashes are
    /// kept out of logs like a password.
    pub async fn set_password_hashes(
        &self,
        dn: &str,
        hashes: &[SecretString],
    ) -> Result<(), DirectoryError> {
        let set = self.run("password_hash", |mut ldap| async move {
            let values: HashSet<&str> = hashes.iter().map(|hash| hash.expose_secret()).collect();
            let mods = vec![ldap3::Mod::Replace("userPassword", values)];
            ldap.modify(dn, mods).await?.success()?;
            Ok(())
        });
        self.write(dn, set).await
    }

    /// The `userPassword` hashes of `dn`: empty when it has none, is gone, or the bound
    /// identity may not read them.
    pub async fn password_hashes(&self, dn: &str) -> Result<Vec<SecretString>, DirectoryError> {
        Ok(self
            .read(dn, &["userPassword"])
            .await?
            .map(|entry| {
                entry
                    .values("userPassword")
                    .iter()
                    .map(|hash| SecretString::from(hash.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Reads one entry; `None` when it does not exist.
    pub async fn read(&self, dn: &str, attrs: &[&str]) -> Result<Option<Entry>, DirectoryError> {
        let result = self
            .search(dn, SearchScope::Base, "(objectClass=*)", attrs)
            .await;
        match result {
            Ok(mut entries) => Ok(entries.pop()),
            Err(DirectoryError::NoSuchObject(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Searches `base` with `filter` (already escaped by the caller through `escape`).
    pub async fn search(
        &self,
        base: &str,
        scope: SearchScope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<Entry>, DirectoryError> {
        let scope = match scope {
            SearchScope::Base => Scope::Base,
            SearchScope::OneLevel => Scope::OneLevel,
            SearchScope::Subtree => Scope::Subtree,
        };
        self.run("search", |mut ldap| async move {
            let (entries, _) = ldap.search(base, scope, filter, attrs).await?.success()?;
            Ok(entries
                .into_iter()
                .map(|entry| {
                    let entry = SearchEntry::construct(entry);
                    Entry {
                        dn: entry.dn,
                        attrs: entry.attrs.into_iter().collect(),
                    }
                })
                .collect())
        })
        .await
    }

    /// Streams the entries below `base` matching `filter` with the paged-results control
    /// (RFC 2696), `page_size` at a time: memory stays bounded by the page, whatever the
    /// directory's size.
    pub async fn stream(
        &self,
        base: &str,
        scope: SearchScope,
        filter: &str,
        attrs: Vec<String>,
        page_size: u32,
    ) -> Result<EntryStream, DirectoryError> {
        let pooled = self.pool.get().await?;
        let mut ldap = pooled.ldap;
        ldap.with_timeout(self.pool.timeout());
        let scope = match scope {
            SearchScope::Base => Scope::Base,
            SearchScope::OneLevel => Scope::OneLevel,
            SearchScope::Subtree => Scope::Subtree,
        };
        let page_size = i32::try_from(page_size).unwrap_or(i32::MAX);
        let adapters: Vec<Box<dyn ldap3::adapters::Adapter<'static, String, Vec<String>>>> = vec![
            Box::new(ldap3::adapters::EntriesOnly::new()),
            Box::new(ldap3::adapters::PagedResults::new(page_size)),
        ];
        let stream = ldap
            .streaming_search_with(adapters, base, scope, filter, attrs)
            .await
            .map_err(DirectoryError::from)?;
        Ok(EntryStream { stream })
    }

    /// Reads the object class and attribute type names of the directory's subschema.
    pub async fn subschema(&self) -> Result<Subschema, DirectoryError> {
        let root = self.read("", &["subschemaSubentry"]).await?;
        let subentry = root
            .as_ref()
            .and_then(|root| root.first("subschemaSubentry"))
            .unwrap_or("cn=Subschema")
            .to_string();
        let entries = self
            .search(
                &subentry,
                SearchScope::Base,
                "(objectClass=subschema)",
                &["objectClasses", "attributeTypes"],
            )
            .await?;
        let mut subschema = Subschema::default();
        for entry in entries {
            for definition in entry.values("objectClasses") {
                subschema
                    .object_classes
                    .extend(definition_names(definition));
            }
            for definition in entry.values("attributeTypes") {
                subschema
                    .attribute_types
                    .extend(definition_names(definition));
            }
        }
        Ok(subschema)
    }
}

/// The metrics class of an operation's outcome.
fn operation_result<T>(result: &Result<T, DirectoryError>) -> crate::metrics::OperationResult {
    match result {
        Ok(_) => crate::metrics::OperationResult::Ok,
        Err(err) if err.is_transient() => crate::metrics::OperationResult::Transient,
        Err(_) => crate::metrics::OperationResult::Permanent,
    }
}

/// The NAME or NAMEs of an RFC 4512 definition, lowercased: `( 2.5.4.3 NAME ( 'cn' 'commonName' ) ...`.
fn definition_names(definition: &str) -> Vec<String> {
    let Some(start) = definition.find(" NAME ") else {
        return Vec::new();
    };
    let rest = definition[start + 6..].trim_start();
    let names = if let Some(list) = rest.strip_prefix('(') {
        list.split(')').next().unwrap_or("")
    } else {
        rest.split_whitespace().next().unwrap_or("")
    };
    names
        .split_whitespace()
        .map(|name| name.trim_matches('\'').to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::definition_names;

    #[test]
    fn subschema_definitions_yield_every_name() {
        assert_eq!(
            definition_names("( 2.5.4.3 NAME ( 'cn' 'commonName' ) DESC 'x' SUP name )"),
            vec!["cn", "commonname"]
        );
        assert_eq!(
            definition_names(
                "( 2.16.840.1.113730.3.2.2 NAME 'inetOrgPerson' SUP organizationalPerson )"
            ),
            vec!["inetorgperson"]
        );
        assert!(definition_names("( 1.2.3 DESC 'no name' )").is_empty());
    }
}
