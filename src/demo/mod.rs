//! `scim2ldap demo`: a throwaway local OpenLDAP with the daemon on it, and the throwaway
//! directory the integration tests use.

pub mod slapd;

use std::net::SocketAddr;

use slapd::{Slapd, SlapdOptions};

/// The configuration file text for a daemon on `slapd`: users and groups under its
/// `ou=people` / `ou=groups`, the SCIM id in `scimId`, the cache at `cache_path`.
pub fn config_toml(
    slapd: &Slapd,
    listen: SocketAddr,
    token_line: &str,
    cache_path: &std::path::Path,
) -> String {
    format!(
        r#"# Generated for a throwaway directory.
[server]
listen = "{listen}"
base_path = "/scim/v2"

[auth]
bearer_tokens = ["{token_line}"]

[ldap]
url = "{url}"
bind_dn = "{bind_dn}"
bind_password = "{bind_password}"
flavor = "openldap"
timeout = "5s"
pool_size = 4

[users]
base_dn = "{people}"
id_attribute = "scimId"
disabled_base_dn = "{disabled}"

[groups]
base_dn = "{groups}"
id_attribute = "scimId"
placeholder_member = "{placeholder}"

[cache]
path = "{cache}"
"#,
        url = slapd.url(),
        bind_dn = slapd.admin_dn(),
        bind_password = slapd.admin_password(),
        people = slapd.people_dn(),
        groups = slapd.groups_dn(),
        disabled = slapd.disabled_dn(),
        placeholder = slapd.placeholder_dn(),
        cache = cache_path.display(),
    )
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The directory did not start.
    #[error("{0}")]
    Slapd(#[from] slapd::SlapdError),
    /// The generated configuration was refused (a defect).
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The listener could not be bound.
    #[error("bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The daemon failed.
    #[error("{0}")]
    Run(#[from] crate::RunError),
    /// The config file could not be written.
    #[error("write {0}: {1}")]
    Write(String, std::io::Error),
}

/// Starts a throwaway OpenLDAP, then serves SCIM on `listen` until `shutdown`; prints a token
/// and ready-to-paste curl lines. The directory and cache are removed on exit.
///
/// With `token_file`, the plaintext token is also written there (owner-only), so that a script
/// (`scripts/conformance`) can use the daemon without parsing the human-readable output.
pub async fn run(
    listen: SocketAddr,
    token_file: Option<&std::path::Path>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), DemoError> {
    // Start-up blocks for a fraction of a second, before anything else runs.
    // With syncprov, the demo repairs a change made with ldapmodify as it happens.
    let slapd = Slapd::start(SlapdOptions {
        syncprov: true,
        ..SlapdOptions::default()
    })?;
    let token = crate::http::new_token();
    let listener = crate::http::bind(listen)
        .await
        .map_err(|err| DemoError::Bind(listen, err))?;
    let bound = listener
        .local_addr()
        .map_err(|err| DemoError::Bind(listen, err))?;
    let cache_path = slapd.dir().join("cache.db");
    let config_path = slapd.dir().join("scim2ldap.toml");
    let mut text = config_toml(&slapd, bound, &token.hash_line, &cache_path);
    text.push_str("\n[reconcile]\nfollow = true\n");
    std::fs::write(&config_path, text)
        .map_err(|err| DemoError::Write(config_path.display().to_string(), err))?;
    let config = crate::config::load(&config_path, Some(Default::default()))?;
    if let Some(token_file) = token_file {
        write_private(token_file, &format!("{}\n", token.plaintext))
            .map_err(|err| DemoError::Write(token_file.display().to_string(), err))?;
    }
    let base = format!("http://{bound}/scim/v2");
    let auth = format!("Authorization: Bearer {}", token.plaintext);
    println!(
        r#"
scim2ldap demo: OpenLDAP at {url} (bind {admin} / {password}), SCIM at {base}
config: {config}

Try:
  curl -s -H '{auth}' {base}/ServiceProviderConfig
  curl -s -H '{auth}' -H 'Content-Type: application/scim+json' -d '{{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"bjensen","name":{{"givenName":"Barbara","familyName":"Jensen"}},"emails":[{{"value":"bjensen@example.com","type":"work","primary":true}}],"password":"Secret-123"}}' {base}/Users
  curl -s -H '{auth}' '{base}/Users?filter=userName%20eq%20%22bjensen%22'
  ldapsearch -x -LLL -H {url} -D '{admin}' -w '{password}' -b '{people}' '(uid=bjensen)'
  ldapwhoami -x -H {url} -D 'uid=bjensen,{people}' -w Secret-123
  printf 'dn: uid=bjensen,{people}\nchangetype: modify\nreplace: sn\nsn: Changed\n' | ldapmodify -x -H {url} -D '{admin}' -w '{password}'
  ldapsearch -x -LLL -H {url} -D '{admin}' -w '{password}' -b 'uid=bjensen,{people}' sn   # Jensen again: changes made by hand are followed and put back

Ctrl-C stops the daemon and removes the directory.
"#,
        url = slapd.url(),
        admin = slapd.admin_dn(),
        password = slapd.admin_password(),
        config = config_path.display(),
        people = slapd.people_dn(),
    );
    crate::run(config, listener, shutdown, || {}).await?;
    drop(slapd);
    Ok(())
}

/// Writes `text` to a new or truncated file that only the owner can read: it holds a token.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}
