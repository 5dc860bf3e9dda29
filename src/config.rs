//! Configuration: the raw file shape (`RawConfig`), its validation into `Config`, and secrets.
//!
//! One TOML file read with the `config` crate, every key overridable from the environment as
//! `SCIM2LDAP__SECTION__KEY`. Unknown keys and invalid values are all reported at once, each
//! naming its key. Secrets go straight into `SecretString`; nothing here logs them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::mapping::config::{RawGroupMapping, RawUserMapping};

/// Prefix of environment overrides: `SCIM2LDAP__LDAP__URL` sets `ldap.url`.
pub const ENV_PREFIX: &str = "SCIM2LDAP";

/// Two request threads, whatever the core count. Measured with the benchmark on two cores: one
/// thread spends 15-20% less CPU per write at low concurrency, but with 32 writers in flight
/// directory answers wait behind HTTP work and throughput falls to 0.65-0.83 of the
/// directory's (0.76-1.00 with two). Not one per core by default: writes are bound by the
/// directory, and idle threads cost wake-ups; 0 asks for one per core (README, Performance).
const DEFAULT_WORKER_THREADS: u16 = 2;

/// Every problem found in a configuration, each naming its key.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// One line per problem.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> ConfigError {
        ConfigError {
            problems: vec![problem.into()],
        }
    }
}

/// The file as written: every key optional, so that validation can name each missing one.
#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    /// `[server]`: the HTTP listener.
    #[serde(default)]
    pub server: RawServer,
    /// `[auth]`: bearer tokens.
    #[serde(default)]
    pub auth: RawAuth,
    /// `[ldap]`: the directory connection.
    #[serde(default)]
    pub ldap: RawLdap,
    /// `[users]`: where and how users are written.
    #[serde(default)]
    pub users: RawUserMapping,
    /// `[groups]`: where and how groups are written.
    #[serde(default)]
    pub groups: RawGroupMapping,
    /// `[cache]`: the reconciliation cache.
    #[serde(default)]
    pub cache: RawCache,
    /// `[log]`: logging.
    #[serde(default)]
    pub log: RawLog,
    /// `[reconcile]`: drift and orphan policies and the schedule.
    #[serde(default)]
    pub reconcile: crate::reconcile::config::RawReconcile,
}

/// `[server]` keys.
#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    /// `listen`, default `127.0.0.1:8080`; port 0 picks a free one. Env `SCIM2LDAP__SERVER__LISTEN`.
    pub listen: Option<String>,
    /// `base_path`, default `/scim/v2`. Env `SCIM2LDAP__SERVER__BASE_PATH`.
    pub base_path: Option<String>,
    /// `max_body_bytes`, default 1048576; larger request bodies get 413. Env `SCIM2LDAP__SERVER__MAX_BODY_BYTES`.
    pub max_body_bytes: Option<u64>,
    /// `shutdown_timeout`, default `30s`: how long in-flight requests may drain on SIGTERM.
    /// Env `SCIM2LDAP__SERVER__SHUTDOWN_TIMEOUT`.
    pub shutdown_timeout: Option<String>,
    /// `tls_cert_file`, default none: PEM certificate chain; with `tls_key_file` the listener
    /// speaks HTTPS (TLS 1.2 and 1.3). Without both, the systemd credentials `tls_cert` and
    /// `tls_key` are used when present. Re-read on SIGHUP. Env `SCIM2LDAP__SERVER__TLS_CERT_FILE`.
    pub tls_cert_file: Option<PathBuf>,
    /// `tls_key_file`, default none: PEM private key (PKCS#8, PKCS#1 or SEC1) of
    /// `tls_cert_file`. Env `SCIM2LDAP__SERVER__TLS_KEY_FILE`.
    pub tls_key_file: Option<PathBuf>,
    /// `metrics_listen`, default none: a second address:port serving `/metrics` without
    /// authentication (keep it private). `/metrics` on `listen` always needs a bearer token.
    /// Env `SCIM2LDAP__SERVER__METRICS_LISTEN`.
    pub metrics_listen: Option<String>,
    /// `rate_limit_per_second`, default 500: requests per second admitted (token bucket over
    /// all clients); above it the reply is 429 with `Retry-After`. 0 disables the limit.
    /// Env `SCIM2LDAP__SERVER__RATE_LIMIT_PER_SECOND`.
    pub rate_limit_per_second: Option<u32>,
    /// `rate_limit_burst`, default 1000: requests admitted at once above the steady rate.
    /// Env `SCIM2LDAP__SERVER__RATE_LIMIT_BURST`.
    pub rate_limit_burst: Option<u32>,
    /// `worker_threads`, default 2: threads serving requests; 0 means one per CPU core. The
    /// cache writer and its fsync have threads of their own. Env
    /// `SCIM2LDAP__SERVER__WORKER_THREADS`.
    pub worker_threads: Option<u16>,
    /// `trusted_proxies`, default `["127.0.0.1", "::1"]`: peers whose last `X-Forwarded-For`
    /// address (the one they appended) names the client for the failed-authentication
    /// throttle. `[]` trusts none (a TCP-level proxy passes the client's own header through).
    /// Env `SCIM2LDAP__SERVER__TRUSTED_PROXIES` (comma-separated).
    pub trusted_proxies: Option<Vec<String>>,
}

/// `[auth]` keys.
#[derive(Debug, Default, Deserialize)]
pub struct RawAuth {
    /// `[auth.tokens]`: named tokens, `name = "sha256:<hex>"` (or plaintext); the name is what
    /// the audit log records as the caller. Names are letters, digits, `.`, `_`, `-`.
    /// Env `SCIM2LDAP__AUTH__TOKENS__<NAME>`. Re-read on SIGHUP.
    pub tokens: Option<BTreeMap<String, String>>,
    /// `bearer_tokens`: accepted tokens, as `sha256:<hex>` hashes or plaintext; several allow
    /// rotation. They are named `token-1`, `token-2`, ... in order (the file's and the
    /// credential's lines follow). Env `SCIM2LDAP__AUTH__BEARER_TOKENS` (comma-separated).
    pub bearer_tokens: Option<Vec<String>>,
    /// `bearer_token_file`: a file with one token (hash or plaintext) per line.
    /// Env `SCIM2LDAP__AUTH__BEARER_TOKEN_FILE`. The systemd credential `bearer_tokens` is read too.
    pub bearer_token_file: Option<PathBuf>,
}

/// `[ldap]` keys.
#[derive(Debug, Default, Deserialize)]
pub struct RawLdap {
    /// `url` (required): `ldap://host:port` or `ldaps://host:port`. Env `SCIM2LDAP__LDAP__URL`.
    pub url: Option<String>,
    /// `bind_dn` (required). Env `SCIM2LDAP__LDAP__BIND_DN`.
    pub bind_dn: Option<String>,
    /// `bind_password`, inline; or `bind_password_file`; or the systemd credential `bind_password`.
    /// Env `SCIM2LDAP__LDAP__BIND_PASSWORD`.
    pub bind_password: Option<String>,
    /// `bind_password_file`: a file holding the bind password. Env `SCIM2LDAP__LDAP__BIND_PASSWORD_FILE`.
    pub bind_password_file: Option<PathBuf>,
    /// `flavor`, default `openldap`: `openldap`, `389ds`, `ad` or `generic`. Env `SCIM2LDAP__LDAP__FLAVOR`.
    pub flavor: Option<String>,
    /// `starttls`, default false: upgrade an `ldap://` connection with StartTLS. Env `SCIM2LDAP__LDAP__STARTTLS`.
    pub starttls: Option<bool>,
    /// `ca_file`: PEM bundle to verify the directory's certificate; default the system roots.
    /// Env `SCIM2LDAP__LDAP__CA_FILE`.
    pub ca_file: Option<PathBuf>,
    /// `timeout`, default `10s`: per-operation timeout. Env `SCIM2LDAP__LDAP__TIMEOUT`.
    pub timeout: Option<String>,
    /// `pool_size`, default 8: bound connections kept open. Env `SCIM2LDAP__LDAP__POOL_SIZE`.
    pub pool_size: Option<u32>,
}

/// `[cache]` keys.
#[derive(Debug, Default, Deserialize)]
pub struct RawCache {
    /// `path`, default `/var/lib/scim2ldap/cache.db`, or `$STATE_DIRECTORY/cache.db` under
    /// systemd. Env `SCIM2LDAP__CACHE__PATH`.
    pub path: Option<PathBuf>,
}

/// `[log]` keys.
#[derive(Debug, Default, Deserialize)]
pub struct RawLog {
    /// `format`, default `text`: `text` or `json`. Env `SCIM2LDAP__LOG__FORMAT`.
    pub format: Option<String>,
    /// `level`, default `info`: a tracing filter such as `info,scim2ldap=debug`; `RUST_LOG` wins.
    /// Env `SCIM2LDAP__LOG__LEVEL`.
    pub level: Option<String>,
}

/// Validated configuration: nothing required is an `Option`.
#[derive(Debug)]
pub struct Config {
    /// HTTP listener settings.
    pub server: ServerConfig,
    /// Accepted bearer tokens.
    pub auth: AuthConfig,
    /// Directory connection settings.
    pub ldap: LdapConfig,
    /// User mapping.
    pub users: crate::mapping::UserMapping,
    /// Group mapping.
    pub groups: crate::mapping::GroupMapping,
    /// Cache location.
    pub cache: CacheConfig,
    /// Logging.
    pub log: LogConfig,
    /// Reconciliation.
    pub reconcile: crate::reconcile::ReconcileConfig,
}

/// Validated `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Path prefix of the SCIM endpoints, without a trailing slash (may be empty).
    pub base_path: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Drain time on shutdown.
    pub shutdown_timeout: Duration,
    /// Certificate and key for HTTPS on `listen`; None serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Address of the unauthenticated metrics listener, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// The request rate limit; None when disabled.
    pub rate_limit: Option<RateLimit>,
    /// Request-serving threads; 0 means one per CPU core.
    pub worker_threads: usize,
    /// Peers trusted to append the client's address to `X-Forwarded-For`.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// Where the listener's certificate chain and private key are (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf.
    pub key: PathBuf,
}

/// A token bucket: `per_second` requests on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Steady rate, at least 1.
    pub per_second: u32,
    /// Bucket size, at least 1.
    pub burst: u32,
}

/// One accepted bearer token: its name (for the audit log) and the SHA-256 of the token.
#[derive(Clone)]
pub struct NamedToken {
    /// `okta` from `[auth.tokens]`, or `token-<n>` for unnamed tokens.
    pub name: std::sync::Arc<str>,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
}

/// Validated `[auth]`: the accepted tokens, by name.
#[derive(Clone)]
pub struct AuthConfig {
    /// Every accepted token.
    pub tokens: Vec<NamedToken>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.tokens.iter().map(|token| &*token.name).collect();
        write!(f, "AuthConfig {{ tokens: {names:?} }}")
    }
}

/// Directory flavor: picks the deactivation strategy and the directory id attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// OpenLDAP with ppolicy.
    OpenLdap,
    /// 389 Directory Server / FreeIPA.
    Ds389,
    /// Microsoft Active Directory.
    ActiveDirectory,
    /// Any other LDAPv3 server.
    Generic,
}

impl Flavor {
    /// The operational attribute holding the directory's own id of an entry.
    pub fn entry_id_attribute(self) -> &'static str {
        match self {
            Flavor::OpenLdap | Flavor::Generic => "entryUUID",
            Flavor::Ds389 => "nsUniqueId",
            Flavor::ActiveDirectory => "objectGUID",
        }
    }
}

/// Validated `[ldap]`.
#[derive(Debug, Clone)]
pub struct LdapConfig {
    /// `ldap://` or `ldaps://` URL.
    pub url: String,
    /// DN to bind as.
    pub bind_dn: String,
    /// Password for `bind_dn`.
    pub bind_password: SecretString,
    /// Directory flavor.
    pub flavor: Flavor,
    /// Use StartTLS on `ldap://`.
    pub starttls: bool,
    /// CA bundle for TLS.
    pub ca_file: Option<PathBuf>,
    /// Per-operation timeout.
    pub timeout: Duration,
    /// Connections in the pool.
    pub pool_size: usize,
}

impl LdapConfig {
    /// The host, when passwords would cross the network in clear: an `ldap://` URL to a host
    /// other than this one, without StartTLS. The bind password goes with every connection,
    /// and each password the IdP sets goes with its write.
    pub fn plaintext_remote_host(&self) -> Option<&str> {
        if self.starttls {
            return None;
        }
        let rest = self.url.strip_prefix("ldap://")?;
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        };
        let local = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        (!local).then_some(host)
    }
}

/// Validated `[cache]`.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// SQLite database file.
    pub path: PathBuf,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// Filter directive.
    pub level: String,
}

/// Reads `file` and the environment (`env` None means the process environment) into a `Config`.
///
/// Fails with every problem at once: unreadable file, unknown keys, wrong types, invalid values.
pub fn load(file: &Path, env: Option<BTreeMap<String, String>>) -> Result<Config, ConfigError> {
    let (raw, unknown) = read_raw(file, env)?;
    validate(raw, unknown, &SecretSources::from_process())
}

/// `Config::from_raw`, reporting the unknown keys found while reading beside its own problems.
pub fn validate(
    raw: RawConfig,
    unknown: Vec<String>,
    secrets: &SecretSources,
) -> Result<Config, ConfigError> {
    match Config::from_raw(raw, secrets) {
        Ok(config) if unknown.is_empty() => Ok(config),
        Ok(_) => Err(ConfigError { problems: unknown }),
        Err(err) => {
            let mut problems = unknown;
            problems.extend(err.problems);
            Err(ConfigError { problems })
        }
    }
}

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 4] = [
    "auth.bearer_tokens",
    "server.trusted_proxies",
    "users.object_classes",
    "groups.object_classes",
];

/// Reads `file` and the environment into a `RawConfig`, rejecting unknown keys (all listed).
pub fn load_raw(
    file: &Path,
    env: Option<BTreeMap<String, String>>,
) -> Result<RawConfig, ConfigError> {
    match read_raw(file, env)? {
        (raw, unknown) if unknown.is_empty() => Ok(raw),
        (_, unknown) => Err(ConfigError { problems: unknown }),
    }
}

/// Reads `file` and the environment into a `RawConfig` and the unknown keys met (problems to
/// report, beside the values' own). A value of the wrong type ends the reading.
pub fn read_raw(
    file: &Path,
    env: Option<BTreeMap<String, String>>,
) -> Result<(RawConfig, Vec<String>), ConfigError> {
    let env: BTreeMap<String, String> = env.unwrap_or_else(|| std::env::vars().collect());
    let mut builder = config::Config::builder()
        .add_source(config::File::from(file).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .source(Some(env.clone().into_iter().collect())),
        );
    // Environment values stay text (config's `try_parsing` would turn a password of digits
    // into a number, `007` into 7), so the keys that take lists are split here, at commas.
    for key in LIST_KEYS {
        let var = format!(
            "{ENV_PREFIX}__{}",
            key.replace('.', "__").to_ascii_uppercase()
        );
        if let Some(text) = env.get(&var) {
            // An empty value is the empty list (`SCIM2LDAP__SERVER__TRUSTED_PROXIES=`).
            let items: Vec<String> = text
                .split(',')
                .map(|item| item.trim().to_string())
                .filter(|item| !item.is_empty())
                .collect();
            builder = builder
                .set_override(key, items)
                .map_err(|err| ConfigError::one(format!("{var}: {err}")))?;
        }
    }
    let built = builder.build().map_err(|err| {
        ConfigError::one(format!(
            "{}: {}",
            file.display(),
            without_values(&err.to_string())
        ))
    })?;
    // config's own deserializer reads a number or a boolean from text where a key wants one
    // (through serde_json, text could never become a number).
    let value: config::Value = built.try_deserialize().map_err(|err| {
        ConfigError::one(format!(
            "{}: {}",
            file.display(),
            without_values(&err.to_string())
        ))
    })?;
    let mut unknown = Vec::new();
    let raw: Result<RawConfig, _> = serde_ignored::deserialize(value, |path| {
        unknown.push(format!("unknown key `{}`", dotted(&path.to_string())));
    });
    match raw {
        Ok(raw) => Ok((raw, unknown)),
        Err(err) => {
            unknown.push(without_values(&err.to_string()));
            Err(ConfigError { problems: unknown })
        }
    }
}

/// A parser's message without the values it quotes: the line of a TOML syntax error and the
/// text of a mistyped value may be a password or a token, and the message goes to the log.
fn without_values(message: &str) -> String {
    let is_excerpt = |line: &str| {
        let line = line.trim_start();
        let digits = line.trim_start_matches(|c: char| c.is_ascii_digit());
        digits.trim_start().starts_with('|')
    };
    let mut out = String::new();
    for line in message.lines().filter(|line| !is_excerpt(line)) {
        if !out.is_empty() {
            out.push(' ');
        }
        let mut rest = line.trim();
        while let Some(at) = rest.find("string \"") {
            out.push_str(&rest[..at]);
            out.push_str("a string");
            let quoted = &rest[at + "string \"".len()..];
            let mut escaped = false;
            let end = quoted.char_indices().find_map(|(i, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes.then_some(i + 1)
            });
            rest = &quoted[end.unwrap_or(quoted.len())..];
        }
        out.push_str(rest);
    }
    out
}

/// serde_ignored prints paths as `a.b.c` already; keep one place that decides the spelling.
fn dotted(path: &str) -> String {
    path.trim_start_matches('?').to_string()
}

/// Where secrets may come from besides the file: the systemd credentials directory.
#[derive(Debug, Clone, Default)]
pub struct SecretSources {
    /// `$CREDENTIALS_DIRECTORY`, when set.
    pub credentials_directory: Option<PathBuf>,
    /// `$STATE_DIRECTORY`, when set (systemd's `StateDirectory=`).
    pub state_directory: Option<PathBuf>,
}

impl SecretSources {
    /// Reads `$CREDENTIALS_DIRECTORY` and `$STATE_DIRECTORY` from the process environment.
    pub fn from_process() -> SecretSources {
        SecretSources {
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            state_directory: std::env::var_os("STATE_DIRECTORY")
                .map(PathBuf::from)
                // systemd may list several directories separated by ':'; the first is ours.
                .and_then(|dirs| {
                    dirs.to_str()
                        .and_then(|dirs| dirs.split(':').next())
                        .map(PathBuf::from)
                }),
        }
    }

    fn credential(&self, name: &str) -> Option<PathBuf> {
        let path = self.credentials_directory.as_ref()?.join(name);
        path.exists().then_some(path)
    }
}

/// Collects problems so that validation reports all of them.
#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<String>);

impl Problems {
    pub(crate) fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    /// Unwraps `result`, recording its error under `key`.
    pub(crate) fn check<T, E: fmt::Display>(
        &mut self,
        key: &str,
        result: Result<T, E>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.push(format!("`{key}`: {err}"));
                None
            }
        }
    }

    /// Records that required `key` is missing.
    pub(crate) fn require<T>(&mut self, key: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.push(format!("`{key}` is required"));
        }
        value
    }
}

impl Config {
    /// Validates `raw`, reading secret files; reports every problem at once.
    pub fn from_raw(raw: RawConfig, secrets: &SecretSources) -> Result<Config, ConfigError> {
        let mut problems = Problems::default();
        let server = validate_server(raw.server, secrets, &mut problems);
        let auth = validate_auth(raw.auth, secrets, &mut problems);
        let flavor = parse_flavor(raw.ldap.flavor.as_deref(), &mut problems);
        let ldap = validate_ldap(raw.ldap, flavor, secrets, &mut problems);
        // The mapping's SCIM paths are checked against the compiled-in schemas.
        let schemas = match crate::scim::discovery::resource_schemas() {
            Ok(schemas) => Some(schemas),
            Err(err) => {
                problems.push(format!("the compiled-in SCIM schemas: {err}"));
                None
            }
        };
        let (user_schema, group_schema) = schemas.as_ref().map(|(u, g)| (u, g)).unzip();
        let users =
            crate::mapping::UserMapping::from_raw(raw.users, flavor, user_schema, &mut problems);
        let groups =
            crate::mapping::GroupMapping::from_raw(raw.groups, group_schema, &mut problems);
        if let (Some(users), Some(groups)) = (&users, &groups) {
            if groups.class == crate::mapping::GroupClass::PosixGroup && users.posix.is_none() {
                problems.push(
                    "`groups.object_class = \"posixGroup\"` lists members by uid and needs `users.posix = true`",
                );
            }
        }
        let cache = CacheConfig {
            path: raw
                .cache
                .path
                .unwrap_or_else(|| match &secrets.state_directory {
                    Some(dir) => dir.join("cache.db"),
                    None => PathBuf::from("/var/lib/scim2ldap/cache.db"),
                }),
        };
        let log = validate_log(raw.log, &mut problems);
        let reconcile = crate::reconcile::ReconcileConfig::from_raw(raw.reconcile, &mut problems);
        match (server, auth, ldap, users, groups, log, reconcile) {
            (
                Some(server),
                Some(auth),
                Some(ldap),
                Some(users),
                Some(groups),
                Some(log),
                Some(reconcile),
            ) if problems.0.is_empty() => Ok(Config {
                server,
                auth,
                ldap,
                users,
                groups,
                cache,
                log,
                reconcile,
            }),
            _ => Err(ConfigError {
                problems: problems.0,
            }),
        }
    }
}

fn validate_server(
    raw: RawServer,
    secrets: &SecretSources,
    problems: &mut Problems,
) -> Option<ServerConfig> {
    let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen = problems.check(
        "server.listen",
        listen
            .parse::<SocketAddr>()
            .map_err(|_| format!("`{listen}` is not an address:port such as 127.0.0.1:8080")),
    );
    let base_path = raw.base_path.unwrap_or_else(|| "/scim/v2".to_string());
    let base_path = problems.check("server.base_path", normalize_base_path(&base_path));
    let max_body_bytes = raw.max_body_bytes.unwrap_or(1024 * 1024);
    let max_body_bytes = problems.check(
        "server.max_body_bytes",
        match usize::try_from(max_body_bytes) {
            Ok(n) if n >= 1024 => Ok(n),
            _ => Err("must be at least 1024"),
        },
    );
    let shutdown_timeout = problems.check(
        "server.shutdown_timeout",
        parse_duration(raw.shutdown_timeout.as_deref().unwrap_or("30s")),
    );
    let tls = validate_tls(raw.tls_cert_file, raw.tls_key_file, secrets, problems);
    let metrics_listen = match raw.metrics_listen.as_deref() {
        None | Some("") => Some(None),
        Some(text) => problems
            .check(
                "server.metrics_listen",
                text.parse::<SocketAddr>()
                    .map_err(|_| format!("`{text}` is not an address:port such as 127.0.0.1:9187")),
            )
            .map(Some),
    };
    if let (Some(Some(metrics)), Some(listen)) = (metrics_listen, listen) {
        if metrics == listen && listen.port() != 0 {
            problems.push("`server.metrics_listen` must differ from `server.listen`");
        }
    }
    let rate_limit = match (
        raw.rate_limit_per_second.unwrap_or(500),
        raw.rate_limit_burst.unwrap_or(1000),
    ) {
        (0, _) => Some(None),
        (_, 0) => {
            problems.push("`server.rate_limit_burst` must be at least 1 (set `server.rate_limit_per_second = 0` to disable the limit)");
            None
        }
        (per_second, burst) => Some(Some(RateLimit { per_second, burst })),
    };
    let trusted_proxies = raw
        .trusted_proxies
        .unwrap_or_else(|| vec!["127.0.0.1".to_string(), "::1".to_string()])
        .iter()
        .map(|text| {
            problems.check(
                "server.trusted_proxies",
                text.trim()
                    .parse::<std::net::IpAddr>()
                    .map_err(|_| format!("`{text}` is not an IP address")),
            )
        })
        .collect::<Option<Vec<_>>>();
    Some(ServerConfig {
        trusted_proxies: trusted_proxies?,
        listen: listen?,
        base_path: base_path?,
        max_body_bytes: max_body_bytes?,
        shutdown_timeout: shutdown_timeout?,
        tls: tls?,
        metrics_listen: metrics_listen?,
        rate_limit: rate_limit?,
        worker_threads: usize::from(raw.worker_threads.unwrap_or(DEFAULT_WORKER_THREADS)),
    })
}

/// The certificate and key from `tls_cert_file` / `tls_key_file`, else from the credentials
/// `tls_cert` / `tls_key`; both are loaded once here so that a bad file is a config problem.
fn validate_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    secrets: &SecretSources,
    problems: &mut Problems,
) -> Option<Option<TlsFiles>> {
    let files = match (cert, key) {
        (Some(cert), Some(key)) => TlsFiles { cert, key },
        (Some(_), None) => {
            problems.push("`server.tls_cert_file` is set without `server.tls_key_file`");
            return None;
        }
        (None, Some(_)) => {
            problems.push("`server.tls_key_file` is set without `server.tls_cert_file`");
            return None;
        }
        (None, None) => match (
            secrets.credential("tls_cert"),
            secrets.credential("tls_key"),
        ) {
            (Some(cert), Some(key)) => TlsFiles { cert, key },
            (None, None) => return Some(None),
            _ => {
                problems.push(
                    "the systemd credentials `tls_cert` and `tls_key` must be given together",
                );
                return None;
            }
        },
    };
    match crate::tls::server_config(&files) {
        Ok(_) => Some(Some(files)),
        Err(err) => {
            problems.push(format!(
                "`server.tls_cert_file` / `server.tls_key_file`: {err}"
            ));
            None
        }
    }
}

fn normalize_base_path(base_path: &str) -> Result<String, String> {
    if !base_path.is_empty() && !base_path.starts_with('/') {
        return Err(format!("`{base_path}` must start with '/'"));
    }
    if base_path.contains(['?', '#', ' ']) {
        return Err(format!("`{base_path}` must be a plain path"));
    }
    let segments: Vec<&str> = base_path.split('/').filter(|s| !s.is_empty()).collect();
    Ok(segments.iter().map(|s| format!("/{s}")).collect())
}

fn validate_auth(
    raw: RawAuth,
    secrets: &SecretSources,
    problems: &mut Problems,
) -> Option<AuthConfig> {
    // (key for messages, name, token)
    let mut tokens: Vec<(String, String, SecretString)> = Vec::new();
    for (name, token) in raw.tokens.unwrap_or_default() {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            problems.push(format!(
                "`auth.tokens.{name}`: a token name is letters, digits, `.`, `_` and `-`"
            ));
            continue;
        }
        tokens.push((
            format!("auth.tokens.{name}"),
            name,
            SecretString::from(token),
        ));
    }
    let mut unnamed: Vec<(String, SecretString)> = raw
        .bearer_tokens
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(idx, token)| {
            (
                format!("auth.bearer_tokens[{idx}]"),
                SecretString::from(token),
            )
        })
        .collect();
    let mut files = Vec::new();
    if let Some(path) = raw.bearer_token_file {
        files.push(("auth.bearer_token_file", path));
    }
    if let Some(path) = secrets.credential("bearer_tokens") {
        files.push(("credential bearer_tokens", path));
    }
    for (key, path) in files {
        // An empty file is no token (the unit's credential may be empty when the tokens are
        // in `[auth.tokens]`); at least one token overall is still required below.
        match std::fs::read_to_string(&path)
            .map(SecretString::from)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))
        {
            Ok(text) => unnamed.extend(
                text.expose_secret()
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .enumerate()
                    .map(|(idx, line)| {
                        (
                            format!("{key} line {}", idx + 1),
                            SecretString::from(line.to_string()),
                        )
                    }),
            ),
            Err(err) => problems.push(format!("`{key}`: {err}")),
        }
    }
    for (idx, (key, token)) in unnamed.into_iter().enumerate() {
        tokens.push((key, format!("token-{}", idx + 1), token));
    }
    if tokens.is_empty() {
        problems.push(
            "`auth.bearer_tokens` is required: give at least one token in `auth.tokens` or `auth.bearer_tokens` (see `scim2ldap token new`)",
        );
        return None;
    }
    let mut named: Vec<NamedToken> = Vec::with_capacity(tokens.len());
    for (key, name, token) in tokens {
        let hash = match parse_token(&token) {
            Ok(hash) => hash,
            Err(err) => {
                problems.push(format!("`{key}`: {err}"));
                continue;
            }
        };
        if named.iter().any(|other| *other.name == *name) {
            problems.push(format!(
                "`{key}`: the token name `{name}` is used twice (unnamed tokens are token-1, token-2, ...)"
            ));
        } else if let Some(other) = named.iter().find(|other| other.hash == hash) {
            problems.push(format!(
                "`{key}`: the same token is also configured as `{}`; give each token one name",
                other.name
            ));
        } else {
            named.push(NamedToken {
                name: std::sync::Arc::from(name),
                hash,
            });
        }
    }
    Some(AuthConfig { tokens: named })
}

/// Minimum length of a plaintext token; shorter ones are guessable.
const MIN_TOKEN_LEN: usize = 16;

/// Parses one configured token: `sha256:<64 hex>` or a plaintext token of at least 16 characters.
fn parse_token(token: &SecretString) -> Result<[u8; 32], String> {
    let token = token.expose_secret();
    // Any case of the prefix (`SHA256:`, `Sha256:`) is a hash, never a plaintext token whose
    // value anyone who reads the hash line would know.
    let prefixed = token
        .get(..7)
        .filter(|prefix| prefix.eq_ignore_ascii_case("sha256:"));
    if let Some(hex_digest) = prefixed.map(|prefix| &token[prefix.len()..]) {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hex_digest.trim(), &mut hash)
            .map_err(|_| "a `sha256:` token must be followed by 64 hex digits".to_string())?;
        return Ok(hash);
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "a plaintext token must be at least {MIN_TOKEN_LEN} characters (use `scim2ldap token new`)"
        ));
    }
    Ok(sha256(token.as_bytes()))
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn parse_flavor(flavor: Option<&str>, problems: &mut Problems) -> Option<Flavor> {
    match flavor.unwrap_or("openldap") {
        "openldap" => Some(Flavor::OpenLdap),
        "389ds" => Some(Flavor::Ds389),
        "ad" => Some(Flavor::ActiveDirectory),
        "generic" => Some(Flavor::Generic),
        other => {
            problems.push(format!(
                "`ldap.flavor`: `{other}` is not one of openldap, 389ds, ad, generic"
            ));
            None
        }
    }
}

fn validate_ldap(
    raw: RawLdap,
    flavor: Option<Flavor>,
    secrets: &SecretSources,
    problems: &mut Problems,
) -> Option<LdapConfig> {
    let url = problems.require("ldap.url", raw.url);
    let url = url.and_then(|url| {
        problems.check(
            "ldap.url",
            if url.starts_with("ldap://") || url.starts_with("ldaps://") {
                Ok(url)
            } else {
                Err(format!("`{url}` must start with ldap:// or ldaps://"))
            },
        )
    });
    let bind_dn = problems.require("ldap.bind_dn", raw.bind_dn);
    let credential = secrets.credential("bind_password");
    let bind_password = match (raw.bind_password, raw.bind_password_file, credential) {
        (Some(inline), None, _) => Some(SecretString::from(inline)),
        (None, Some(path), _) => problems.check("ldap.bind_password_file", read_secret_file(&path)),
        (None, None, Some(path)) => {
            problems.check("credential bind_password", read_secret_file(&path))
        }
        (Some(_), Some(_), _) => {
            problems
                .push("`ldap.bind_password` and `ldap.bind_password_file` are both set; keep one");
            None
        }
        (None, None, None) => {
            problems.push(
                "`ldap.bind_password` is required (inline, as `bind_password_file`, or as the systemd credential `bind_password`)",
            );
            None
        }
    };
    let starttls = raw.starttls.unwrap_or(false);
    if starttls
        && url
            .as_deref()
            .is_some_and(|url| url.starts_with("ldaps://"))
    {
        problems.push("`ldap.starttls` cannot be used with an ldaps:// url");
    }
    if let Some(ca_file) = &raw.ca_file {
        if !ca_file.is_file() {
            problems.push(format!(
                "`ldap.ca_file`: {} is not a readable file",
                ca_file.display()
            ));
        }
    }
    let timeout = problems.check(
        "ldap.timeout",
        parse_duration(raw.timeout.as_deref().unwrap_or("10s")),
    );
    let pool_size = match raw.pool_size.unwrap_or(8) {
        n @ 1..=256 => Some(n as usize),
        n => {
            problems.push(format!("`ldap.pool_size`: {n} is not between 1 and 256"));
            None
        }
    };
    Some(LdapConfig {
        url: url?,
        bind_dn: bind_dn?,
        bind_password: bind_password?,
        flavor: flavor?,
        starttls,
        ca_file: raw.ca_file,
        timeout: timeout?,
        pool_size: pool_size?,
    })
}

fn validate_log(raw: RawLog, problems: &mut Problems) -> Option<LogConfig> {
    let format = match raw.format.as_deref().unwrap_or("text") {
        "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        other => {
            problems.push(format!("`log.format`: `{other}` is not one of text, json"));
            None
        }
    };
    let level = raw.level.unwrap_or_else(|| "info".to_string());
    if let Err(problem) = check_log_level(&level) {
        problems.push(format!("`log.level`: {problem}"));
        return None;
    }
    Some(LogConfig {
        format: format?,
        level,
    })
}

/// A tracing filter (`info`, `warn,scim2ldap=debug`). A bare word that is not a level would be
/// read as a target at trace level and silence every other line, the audit included: refused.
fn check_log_level(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        if !LEVELS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(level.trim()))
        {
            return Err(format!(
                "`{directive}` names no level; use one of {} (optionally `target=level`, comma-separated)",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(drop)
        .map_err(|err| format!("`{filter}`: {err}"))
}

/// Reads a secret file, trimming one trailing newline; an empty file is an error.
fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::from(text.to_string()))
}

/// Parses `500ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 10s, 5m"))?;
    let millis = match unit.trim() {
        "ms" => Some(number),
        "s" => number.checked_mul(1000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(|| format!("`{text}` is not a duration such as 500ms, 10s, 5m"))?;
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests;
