//! `scim2ldap check`: everything that can be verified before serving, all problems at once.

use crate::config::Config;
use crate::directory::{Directory, DirectoryError, UNAVAILABLE_CRITICAL_EXTENSION};
use crate::mapping::Deactivate;

/// Connects and binds, checks that the configured base DNs exist and that every object class
/// and attribute the mapping writes is in the directory's subschema. Returns one line per
/// problem; empty means ready to serve.
pub async fn check_directory(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let directory = match Directory::new(&config.ldap) {
        Ok(directory) => directory,
        Err(err) => return vec![format!("`ldap`: {err}")],
    };
    if let Err(err) = directory.ping().await {
        let problem = match err {
            DirectoryError::InvalidCredentials => format!(
                "cannot bind to {} as {}: the directory refused the bind password",
                config.ldap.url, config.ldap.bind_dn
            ),
            other => format!(
                "cannot reach or bind to {} as {}: {other}",
                config.ldap.url, config.ldap.bind_dn
            ),
        };
        return vec![problem];
    }
    let mut bases = vec![
        ("users.base_dn", config.users.base_dn.clone()),
        ("groups.base_dn", config.groups.base_dn.clone()),
    ];
    if let Deactivate::Move { disabled_base_dn } = &config.users.deactivate {
        bases.push(("users.disabled_base_dn", disabled_base_dn.clone()));
    }
    for (key, dn) in bases {
        match directory.read(&dn, &["1.1"]).await {
            Ok(Some(_)) => {}
            Ok(None) => problems.push(format!("`{key}`: {dn} does not exist in the directory")),
            Err(err) => problems.push(format!("`{key}`: cannot read {dn}: {err}")),
        }
    }
    if config.reconcile.follow {
        // The searches the daemon would open.
        let plan = crate::reconcile::follow_plan(&directory, config).await;
        for search in plan.searches {
            let dn = search.base;
            match follow_offered(&directory, &dn, search.scope, config.ldap.timeout).await {
                Ok(true) => {}
                Ok(false) => problems.push(format!(
                    "`reconcile.follow`: the directory does not offer content synchronization (RFC 4533) on {dn}: load OpenLDAP's syncprov overlay on its database, or set reconcile.follow = false"
                )),
                Err(err) => problems.push(format!("`reconcile.follow`: cannot follow {dn}: {err}")),
            }
        }
    }
    match directory.subschema().await {
        Ok(subschema) => {
            let (user_classes, user_attrs) = config.users.ldap_names();
            let (group_classes, group_attrs) = config.groups.ldap_names();
            for (section, classes, attrs) in [
                ("users", user_classes, user_attrs),
                ("groups", group_classes, group_attrs),
            ] {
                for class in classes {
                    if !subschema
                        .object_classes
                        .contains(&class.to_ascii_lowercase())
                    {
                        problems.push(format!(
                            "`{section}`: object class `{class}` is not in the directory's schema"
                        ));
                    }
                }
                for attr in attrs {
                    if !subschema
                        .attribute_types
                        .contains(&attr.to_ascii_lowercase())
                    {
                        problems.push(format!(
                            "`{section}`: attribute `{attr}` is not in the directory's schema"
                        ));
                    }
                }
            }
        }
        Err(err) => problems.push(format!("cannot read the directory's subschema: {err}")),
    }
    if let Some(parent) = config
        .cache
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        if !parent.is_dir() {
            problems.push(format!(
                "`cache.path`: directory {} does not exist",
                parent.display()
            ));
        }
    }
    problems
}

/// Whether the directory answers a content synchronization search on `base` as a provider:
/// its first message carries a sync state or a sync info (the search is then dropped).
async fn follow_offered(
    directory: &Directory,
    base: &str,
    scope: crate::directory::SearchScope,
    timeout: std::time::Duration,
) -> Result<bool, DirectoryError> {
    let mut stream = match directory
        .follow(
            base,
            scope,
            "(objectClass=*)",
            vec!["1.1".to_string()],
            None,
        )
        .await
    {
        Ok(stream) => stream,
        Err(DirectoryError::Other { rc, .. }) if rc == UNAVAILABLE_CRITICAL_EXTENSION => {
            return Ok(false)
        }
        Err(err) => return Err(err),
    };
    match tokio::time::timeout(timeout, stream.next()).await {
        Ok(Ok(first)) => Ok(first.is_some()),
        Ok(Err(DirectoryError::Other { rc, .. })) if rc == UNAVAILABLE_CRITICAL_EXTENSION => {
            Ok(false)
        }
        Ok(Err(err)) => Err(err),
        Err(_) => Err(DirectoryError::Timeout),
    }
}
