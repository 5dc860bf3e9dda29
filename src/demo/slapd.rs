//! A throwaway OpenLDAP `slapd` for integration tests and `scim2ldap demo`.
//!
//! Each [`Slapd`] owns a private temp directory (cn=config, database, log, password file) and
//! one `slapd` child process listening on a free loopback port, configured with the overlays
//! scim2ldap's OpenLDAP defaults rely on: ppolicy (account lock), memberof, refint and unique.
//! Instances share nothing, so tests may start as many as they like in parallel. Dropping the
//! value stops the server and deletes the directory.
//!
//! Everything is driven through the OpenLDAP command-line tools (`slapadd`, `slapd`,
//! `ldapmodify`, `ldapsearch`, `ldapwhoami`) with blocking `std::process`, so this module needs
//! no LDAP client library and no async runtime.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rand::distributions::Alphanumeric;
use rand::Rng;

#[cfg(test)]
mod tests;

/// The scim2ldap schema (`scimId`, `scimResource`), compiled in so that an installed binary can
/// run `scim2ldap demo` without the source tree.
const SCIM2LDAP_SCHEMA: &str = include_str!("../../schema/scim2ldap.ldif");

/// Schemas loaded before scim2ldap's own, in dependency order (each needs the previous ones).
const BASE_SCHEMAS: [&str; 4] = ["core", "cosine", "nis", "inetorgperson"];

/// Modules every instance loads; `memberof` must precede the database because the database's
/// `memberOf` index names an attribute that only the module defines.
const MODULES: [&str; 5] = ["back_mdb", "ppolicy", "memberof", "refint", "unique"];

/// Where Debian (first) and other distributions keep the OpenLDAP modules.
const MODULE_DIRS: [&str; 4] = [
    "/usr/lib/ldap",
    "/usr/lib64/openldap",
    "/usr/lib/openldap",
    "/usr/local/libexec/openldap",
];

/// Where Debian (first) and other distributions keep the LDIF schemas.
const SCHEMA_DIRS: [&str; 3] = [
    "/etc/ldap/schema",
    "/etc/openldap/schema",
    "/usr/local/etc/openldap/schema",
];

/// `slapd` and `slapadd` live in `sbin`, which is often missing from a non-root `PATH`.
const EXTRA_BIN_DIRS: [&str; 4] = ["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"];

/// How long `start`/`restart` wait for the server to accept an admin bind.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `stop` waits after SIGTERM before it falls back to SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Attempts at finding a free port: another process may grab the port between our probe and
/// slapd's bind.
const PORT_ATTEMPTS: usize = 5;

/// Seconds an LDAP client tool may wait to connect, or for any one response.
const TOOL_TIMEOUT_SECS: u32 = 30;

/// Result code 49, invalidCredentials (RFC 4511): wrong password, unknown DN or locked account.
const INVALID_CREDENTIALS: i32 = 49;

/// Lines of slapd's log quoted in a startup error.
const LOG_TAIL_LINES: usize = 30;

/// Upper bound of the database map. Only address space is reserved, so it can be generous
/// enough for the 100,000-entry benchmarks.
const MDB_MAX_SIZE: u64 = 4 << 30;

/// What can go wrong while running a throwaway `slapd`.
#[derive(Debug, thiserror::Error)]
pub enum SlapdError {
    /// The options cannot produce a working configuration.
    #[error("invalid slapd options: {0}")]
    InvalidOptions(String),
    /// An OpenLDAP program or data file is not installed.
    #[error(
        "{what} not found (looked in {searched}); install the Debian packages slapd and ldap-utils"
    )]
    NotInstalled {
        /// The program, module directory or schema that is missing.
        what: String,
        /// The places that were searched.
        searched: String,
    },
    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An OpenLDAP tool ran and exited unsuccessfully. For the LDAP client tools the exit code is
    /// the LDAP result code (19 constraintViolation, 32 noSuchObject, 49 invalidCredentials...).
    #[error("{program} failed ({}): {stderr}", exit_text(*.code))]
    Tool {
        /// The program's file name.
        program: String,
        /// Its exit code; `None` when it was killed by a signal.
        code: Option<i32>,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
    /// slapd exited or never accepted a bind while starting.
    #[error(
        "slapd on port {port} did not start: {reason}\n--- slapd log (last lines) ---\n{log_tail}"
    )]
    Startup {
        /// The port it was meant to listen on.
        port: u16,
        /// Why it is considered failed.
        reason: String,
        /// The end of slapd's own log.
        log_tail: String,
    },
}

impl SlapdError {
    /// The LDAP result code of a failed client tool (its exit code), if this is one.
    pub fn ldap_code(&self) -> Option<i32> {
        match self {
            SlapdError::Tool { code, .. } => *code,
            _ => None,
        }
    }

    fn io(context: impl Into<String>, source: io::Error) -> Self {
        SlapdError::Io {
            context: context.into(),
            source,
        }
    }
}

fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_owned(),
    }
}

/// How to configure a throwaway directory.
#[derive(Clone, Debug)]
pub struct SlapdOptions {
    /// The database suffix, e.g. `dc=example,dc=com`. Its first RDN must be `dc=`, `o=` or `ou=`
    /// so that the suffix entry can be created with a standard object class.
    pub suffix: String,
    /// Whether the database syncs to disk on commit. `false` sets `olcDbNoSync: TRUE`, about four
    /// times faster, right for tests, wrong for benchmarks compared with a real directory.
    pub fsync: bool,
    /// Whether to load the `syncprov` overlay (RFC 4533 content synchronization).
    pub syncprov: bool,
    /// Further `cn=config` schema LDIF files to load after the built-in ones.
    pub extra_schema_ldif: Vec<PathBuf>,
    /// Whether slapd logs every operation (`-d stats`) to its log, for tests that count the
    /// operations a change cost ([`Slapd::log`]).
    pub log_operations: bool,
    /// Whether to load the `refint` overlay, which rewrites member values after a rename or
    /// delete; off, tests show that the daemon keeps groups right on its own.
    pub refint: bool,
    /// Whether to load the `unique` overlay on `uid` and `mail`; off, tests reach the checks
    /// the daemon makes itself before a directory would refuse a duplicate.
    pub unique: bool,
}

impl Default for SlapdOptions {
    /// `dc=example,dc=com`, no fsync, no syncprov, no extra schema: the fast test setup.
    fn default() -> Self {
        SlapdOptions {
            suffix: "dc=example,dc=com".to_owned(),
            fsync: false,
            syncprov: false,
            extra_schema_ldif: Vec::new(),
            log_operations: false,
            refint: true,
            unique: true,
        }
    }
}

/// The installed OpenLDAP programs, found once per instance.
#[derive(Debug)]
struct Programs {
    slapd: PathBuf,
    slapadd: PathBuf,
    ldapmodify: PathBuf,
    ldapsearch: PathBuf,
    ldapwhoami: PathBuf,
}

/// A running throwaway `slapd` with its own temp directory. See the module documentation.
#[derive(Debug)]
pub struct Slapd {
    dir: PathBuf,
    port: u16,
    suffix: String,
    admin_password: String,
    programs: Programs,
    /// `None` while stopped.
    child: Option<Child>,
    /// slapd's `-d` level: `none`, or `stats` to log every operation.
    debug_level: &'static str,
}

impl Slapd {
    /// Creates the configuration and base entries in a fresh temp directory, starts `slapd` on a
    /// free loopback port and returns once an admin bind succeeds (at most about 10 s).
    pub fn start(opts: SlapdOptions) -> Result<Slapd, SlapdError> {
        let began = Instant::now();
        let suffix_entry = suffix_entry(&opts.suffix)?;
        let programs = Programs {
            slapd: find_program("slapd")?,
            slapadd: find_program("slapadd")?,
            ldapmodify: find_program("ldapmodify")?,
            ldapsearch: find_program("ldapsearch")?,
            ldapwhoami: find_program("ldapwhoami")?,
        };
        let module_dir = find_dir(&MODULE_DIRS, "back_mdb.la", "OpenLDAP module directory")?;
        let schema_dir = find_dir(&SCHEMA_DIRS, "core.ldif", "OpenLDAP schema directory")?;
        let dir = create_temp_dir()?;
        let admin_password: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        // From here on the value owns the directory, so every early return removes it (Drop).
        let mut slapd = Slapd {
            dir,
            port: 0,
            suffix: opts.suffix.clone(),
            admin_password,
            programs,
            child: None,
            debug_level: if opts.log_operations { "stats" } else { "none" },
        };
        slapd.write_files(&opts, &module_dir, &schema_dir, &suffix_entry)?;

        let mut last_err = None;
        for attempt in 1..=PORT_ATTEMPTS {
            slapd.port = free_port()?;
            match slapd.launch() {
                Ok(()) => {
                    tracing::debug!(
                        port = slapd.port,
                        dir = %slapd.dir.display(),
                        elapsed_ms = began.elapsed().as_millis() as u64,
                        "throwaway slapd ready"
                    );
                    return Ok(slapd);
                }
                Err(err @ SlapdError::Startup { .. }) if is_port_clash(&err) => {
                    tracing::debug!(port = slapd.port, attempt, "port taken, retrying");
                    last_err = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last_err.unwrap_or_else(|| SlapdError::InvalidOptions("no port attempts".to_owned())))
    }

    /// The LDAP URL of the server, `ldap://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// The LDAPI (Unix socket) URL of the server, where SASL EXTERNAL as the current user has
    /// `manage` rights on `cn=config` and the data. `None` when the temp directory's path is too
    /// long for a socket path.
    pub fn ldapi_url(&self) -> Option<String> {
        ldapi_path(&self.dir).map(|path| format!("ldapi://{}", percent_encode(&path)))
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The database suffix.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// The root DN, `cn=admin,<suffix>` (no entry exists for it; slapd knows it from its config).
    pub fn admin_dn(&self) -> String {
        format!("cn=admin,{}", self.suffix)
    }

    /// The root DN's password, random per instance. It is also the password of `cn=config`'s
    /// root DN, `cn=admin,cn=config`.
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// The base for users, `ou=people,<suffix>`.
    pub fn people_dn(&self) -> String {
        format!("ou=people,{}", self.suffix)
    }

    /// The base for groups, `ou=groups,<suffix>`.
    pub fn groups_dn(&self) -> String {
        format!("ou=groups,{}", self.suffix)
    }

    /// The OU for the "move to a disabled OU" deactivation strategy, `ou=disabled,<suffix>`.
    pub fn disabled_dn(&self) -> String {
        format!("ou=disabled,{}", self.suffix)
    }

    /// The entry to use as the only member of an otherwise empty `groupOfNames`,
    /// `cn=placeholder,<suffix>`; refint also puts it where a deleted last member was.
    pub fn placeholder_dn(&self) -> String {
        format!("cn=placeholder,{}", self.suffix)
    }

    /// The ppolicy default policy entry, `cn=default,ou=policies,<suffix>`.
    pub fn policy_dn(&self) -> String {
        format!("cn=default,ou=policies,{}", self.suffix)
    }

    /// The instance's temp directory (config in `slapd.d`, data in `data`, log in `slapd.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id of the server, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) | None => false,
        }
    }

    /// Stops the server: SIGTERM so that it closes the database cleanly, then SIGKILL if it has
    /// not exited within a few seconds. Stopping a stopped server does nothing.
    pub fn stop(&mut self) -> Result<(), SlapdError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child
            .try_wait()
            .map_err(|e| SlapdError::io("checking slapd", e))?
            .is_some()
        {
            return Ok(());
        }
        // std can only send SIGKILL; the shell's `kill` builtin sends SIGTERM without a libc
        // dependency and without relying on procps being installed.
        let term = Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh"])
            .arg(child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(err) = &term {
            tracing::warn!(%err, "could not send SIGTERM to slapd, killing it");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while term.is_ok() && Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(SlapdError::io("waiting for slapd to stop", e)),
            }
        }
        tracing::warn!(pid = child.id(), "slapd ignored SIGTERM, sending SIGKILL");
        child
            .kill()
            .map_err(|e| SlapdError::io("killing slapd", e))?;
        child
            .wait()
            .map_err(|e| SlapdError::io("waiting for killed slapd", e))?;
        Ok(())
    }

    /// Stops the server and starts it again on the same port with the same data.
    pub fn restart(&mut self) -> Result<(), SlapdError> {
        self.stop()?;
        self.launch()
    }

    /// Adds the entries of an LDIF text (plain entries, no `changetype` needed) as the admin.
    pub fn ldapadd(&self, ldif: &str) -> Result<(), SlapdError> {
        self.run_admin_tool(&self.programs.ldapmodify, &["-a"], Some(ldif))
            .map(drop)
    }

    /// Applies an LDIF change text (`changetype: modify`, `delete`, `modrdn`...) as the admin.
    pub fn ldapmodify(&self, ldif: &str) -> Result<(), SlapdError> {
        self.run_admin_tool(&self.programs.ldapmodify, &[], Some(ldif))
            .map(drop)
    }

    /// Applies an LDIF change text to `cn=config` over LDAPI with SASL EXTERNAL, as an
    /// operator would (limits, access rules, overlays).
    pub fn configure(&self, ldif: &str) -> Result<(), SlapdError> {
        self.ldapmodify_as_operator(ldif)
    }

    /// Applies an LDIF change text over LDAPI with SASL EXTERNAL: as the operator's own
    /// identity (the peer credentials of this process), not as the admin DN. The changed
    /// entries' `modifiersName` tells the two apart.
    pub fn ldapmodify_as_operator(&self, ldif: &str) -> Result<(), SlapdError> {
        let ldapi = self.ldapi_url().ok_or_else(|| {
            SlapdError::InvalidOptions(
                "the directory's path is too long for an LDAPI socket".to_string(),
            )
        })?;
        run_tool(
            &self.programs.ldapmodify,
            &["-Y", "EXTERNAL", "-Q", "-H", &ldapi],
            Some(ldif),
        )
        .map(drop)
    }

    /// Searches the subtree under `base` as the admin and returns the entries as LDIF without
    /// comments or version line (`-LLL`) and with unwrapped lines. Empty `attrs` means all user
    /// attributes. A missing base is an error with `ldap_code() == Some(32)`.
    pub fn ldapsearch(
        &self,
        base: &str,
        filter: &str,
        attrs: &[&str],
    ) -> Result<String, SlapdError> {
        let mut args = vec!["-LLL", "-o", "ldif-wrap=no", "-b", base, filter];
        args.extend_from_slice(attrs);
        let out = self.run_admin_tool(&self.programs.ldapsearch, &args, None)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether a simple bind as `dn` with `password` succeeds: `Ok(false)` for result 49
    /// (wrong password, unknown DN or a ppolicy lock alike), an error for anything else. An empty
    /// password is `Ok(false)` without asking, since LDAP treats it as an anonymous bind.
    pub fn user_can_bind(&self, dn: &str, password: &str) -> Result<bool, SlapdError> {
        if password.is_empty() {
            return Ok(false);
        }
        let url = self.url();
        let args = ["-x", "-H", url.as_str(), "-D", dn, "-w", password];
        match run_tool(&self.programs.ldapwhoami, &args, None) {
            Ok(_) => Ok(true),
            Err(err) if err.ldap_code() == Some(INVALID_CREDENTIALS) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Path of the file holding the admin password, for the tools' `-y` option: a password on
    /// the command line would be visible to every user through `ps`.
    fn password_file(&self) -> PathBuf {
        self.dir.join("admin.pw")
    }

    /// What slapd has logged so far (every operation with `log_operations`).
    pub fn log(&self) -> Result<String, SlapdError> {
        let path = self.log_file();
        std::fs::read(&path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|e| SlapdError::io(format!("reading {}", path.display()), e))
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("slapd.log")
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.join("slapd.d")
    }

    fn run_admin_tool(
        &self,
        program: &Path,
        extra: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, SlapdError> {
        self.run_admin_tool_within(program, extra, stdin, TOOL_TIMEOUT_SECS)
    }

    fn run_admin_tool_within(
        &self,
        program: &Path,
        extra: &[&str],
        stdin: Option<&str>,
        timeout_secs: u32,
    ) -> Result<Output, SlapdError> {
        let url = self.url();
        let admin = self.admin_dn();
        let pw_file = self.password_file();
        let pw_file = pw_file.to_string_lossy();
        let mut args = vec![
            "-x",
            "-H",
            url.as_str(),
            "-D",
            admin.as_str(),
            "-y",
            &pw_file,
        ];
        args.extend_from_slice(extra);
        run_tool_within(program, &args, stdin, timeout_secs)
    }

    /// Writes the password file, the config and the base entries, and loads them with slapadd.
    fn write_files(
        &self,
        opts: &SlapdOptions,
        module_dir: &Path,
        schema_dir: &Path,
        suffix_entry: &str,
    ) -> Result<(), SlapdError> {
        let pw_file = self.password_file();
        // No trailing newline: `-y` uses the file's whole content as the password.
        write_private(&pw_file, self.admin_password.as_bytes())?;

        let data_dir = self.dir.join("data");
        let config_dir = self.config_dir();
        for d in [&data_dir, &config_dir] {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(d)
                .map_err(|e| SlapdError::io(format!("creating {}", d.display()), e))?;
        }
        // The peer credentials of LDAPI connections from this process get `manage`; the temp
        // directory we just created tells us our uid and gid without libc.
        let meta = fs::metadata(&self.dir)
            .map_err(|e| SlapdError::io(format!("reading {}", self.dir.display()), e))?;
        let peer = format!(
            "gidNumber={}+uidNumber={},cn=peercred,cn=external,cn=auth",
            meta.gid(),
            meta.uid()
        );

        let config = self.config_ldif(opts, module_dir, schema_dir, &data_dir, &peer)?;
        let config_path = self.dir.join("config.ldif");
        write_private(&config_path, config.as_bytes())?;
        self.slapadd("0", &config_path)?;

        let base = self.base_ldif(suffix_entry);
        let base_path = self.dir.join("base.ldif");
        write_private(&base_path, base.as_bytes())?;
        self.slapadd("1", &base_path)
    }

    fn slapadd(&self, db: &str, ldif: &Path) -> Result<(), SlapdError> {
        let config_dir = self.config_dir();
        let ldif = ldif.to_string_lossy();
        let config_dir = config_dir.to_string_lossy();
        run_tool(
            &self.programs.slapadd,
            &["-n", db, "-F", &config_dir, "-l", &ldif],
            None,
        )
        .map(drop)
    }

    fn config_ldif(
        &self,
        opts: &SlapdOptions,
        module_dir: &Path,
        schema_dir: &Path,
        data_dir: &Path,
        peer: &str,
    ) -> Result<String, SlapdError> {
        let suffix = &self.suffix;
        let pw = &self.admin_password;
        let dir = self.dir.display();
        let mut out = String::new();
        // `write!` into a String cannot fail; the results are ignored with `let _`.
        let _ = write!(
            out,
            "dn: cn=config\n\
             objectClass: olcGlobal\n\
             cn: config\n\
             olcPidFile: {dir}/slapd.pid\n\
             olcArgsFile: {dir}/slapd.args\n\
             olcLogLevel: none\n\
             \n\
             dn: cn=module{{0}},cn=config\n\
             objectClass: olcModuleList\n\
             cn: module{{0}}\n\
             olcModulePath: {}\n",
            module_dir.display()
        );
        for module in MODULES {
            let _ = writeln!(out, "olcModuleLoad: {module}");
        }
        if opts.syncprov {
            out.push_str("olcModuleLoad: syncprov\n");
        }
        out.push_str("\ndn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n\n");
        for name in BASE_SCHEMAS {
            let path = schema_dir.join(format!("{name}.ldif"));
            push_ldif(&mut out, &read_text(&path)?);
        }
        push_ldif(&mut out, SCIM2LDAP_SCHEMA);
        for path in &opts.extra_schema_ldif {
            push_ldif(&mut out, &read_text(path)?);
        }

        // olcSortVals keeps `member` sorted so that adding or deleting one value in a group with
        // tens of thousands of members stays cheap; slapd only accepts it on the frontend entry
        // (slapd-config(5)), from where it applies to every database.
        // Access: LDAPI connections from our own uid manage everything (operators' habit of
        // `ldapadd -Y EXTERNAL -H ldapi://`); users may authenticate and read their own entry;
        // the root DNs bypass ACLs altogether.
        let _ = write!(
            out,
            "dn: olcDatabase={{-1}}frontend,cn=config\n\
             objectClass: olcDatabaseConfig\n\
             objectClass: olcFrontendConfig\n\
             olcDatabase: {{-1}}frontend\n\
             olcSortVals: member uniqueMember\n\
             olcAccess: {{0}}to dn.base=\"\" by * read\n\
             olcAccess: {{1}}to dn.base=\"cn=Subschema\" by * read\n\
             \n\
             dn: olcDatabase={{0}}config,cn=config\n\
             objectClass: olcDatabaseConfig\n\
             olcDatabase: {{0}}config\n\
             olcRootDN: cn=admin,cn=config\n\
             olcRootPW: {pw}\n\
             olcAccess: {{0}}to * by dn.exact={peer} manage by * none\n\
             \n\
             dn: olcDatabase={{1}}mdb,cn=config\n\
             objectClass: olcDatabaseConfig\n\
             objectClass: olcMdbConfig\n\
             olcDatabase: {{1}}mdb\n\
             olcDbDirectory: {data}\n\
             olcSuffix: {suffix}\n\
             olcRootDN: cn=admin,{suffix}\n\
             olcRootPW: {pw}\n\
             olcDbMaxSize: {MDB_MAX_SIZE}\n\
             olcDbNoSync: {nosync}\n\
             olcLastMod: TRUE\n\
             olcAccess: {{0}}to * by dn.exact={peer} manage by * break\n\
             olcAccess: {{1}}to attrs=userPassword by anonymous auth by self auth by * none\n\
             olcAccess: {{2}}to * by self read by * none\n",
            data = data_dir.display(),
            nosync = if opts.fsync { "FALSE" } else { "TRUE" },
        );
        for attr in [
            "objectClass",
            "uid",
            "mail",
            "cn",
            "member",
            "uniqueMember",
            "memberOf",
            "entryUUID",
            "scimId",
            "uidNumber",
            "gidNumber",
        ] {
            let _ = writeln!(out, "olcDbIndex: {attr} eq");
        }
        if opts.syncprov {
            // syncprov looks entries up by entryCSN on every refresh.
            out.push_str("olcDbIndex: entryCSN eq\n");
        }

        let db = "olcDatabase={1}mdb,cn=config";
        let mut overlays = vec![
            format!(
                "objectClass: olcPPolicyConfig\nolcOverlay: {{N}}ppolicy\n\
                 olcPPolicyDefault: cn=default,ou=policies,{suffix}\n"
            ),
            "objectClass: olcMemberOf\nolcOverlay: {N}memberof\n\
             olcMemberOfGroupOC: groupOfNames\nolcMemberOfMemberAD: member\n\
             olcMemberOfMemberOfAD: memberOf\nolcMemberOfRefInt: TRUE\n"
                .to_owned(),
        ];
        if opts.refint {
            // One attribute per value: several in one value only warn today and will be refused.
            overlays.push(format!(
                "objectClass: olcRefintConfig\nolcOverlay: {{N}}refint\n\
                 olcRefintAttribute: member\nolcRefintAttribute: uniqueMember\n\
                 olcRefintNothing: cn=placeholder,{suffix}\n"
            ));
        }
        if opts.unique {
            // An empty base in the URI means the database suffix.
            overlays.push(
                "objectClass: olcUniqueConfig\nolcOverlay: {N}unique\n\
                 olcUniqueURI: ldap:///?uid?sub\nolcUniqueURI: ldap:///?mail?sub\n"
                    .to_owned(),
            );
        }
        if opts.syncprov {
            overlays.push(
                "objectClass: olcSyncProvConfig\nolcOverlay: {N}syncprov\n\
                 olcSpCheckpoint: 100 10\nolcSpSessionlog: 10000\n"
                    .to_owned(),
            );
        }
        for (i, body) in overlays.iter().enumerate() {
            let body = body.replace("{N}", &format!("{{{i}}}"));
            let name = body
                .lines()
                .find_map(|l| l.strip_prefix("olcOverlay: "))
                .unwrap_or_default();
            let _ = write!(
                out,
                "\ndn: olcOverlay={name},{db}\nobjectClass: olcOverlayConfig\n{body}"
            );
        }
        Ok(out)
    }

    fn base_ldif(&self, suffix_entry: &str) -> String {
        let s = &self.suffix;
        format!(
            "{suffix_entry}\n\
             dn: ou=people,{s}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,{s}\nobjectClass: organizationalUnit\nou: groups\n\n\
             dn: ou=disabled,{s}\nobjectClass: organizationalUnit\nou: disabled\n\n\
             dn: ou=policies,{s}\nobjectClass: organizationalUnit\nou: policies\n\n\
             dn: cn=default,ou=policies,{s}\nobjectClass: organizationalRole\n\
             objectClass: pwdPolicy\ncn: default\npwdAttribute: userPassword\npwdLockout: TRUE\n\n\
             dn: cn=placeholder,{s}\nobjectClass: organizationalRole\ncn: placeholder\n\
             description: member of otherwise empty groups (groupOfNames needs one)\n"
        )
    }

    /// Starts slapd on `self.port` and waits until an admin bind works.
    fn launch(&mut self) -> Result<(), SlapdError> {
        let log_path = self.log_file();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| SlapdError::io(format!("opening {}", log_path.display()), e))?;
        let log_start = log
            .metadata()
            .map_err(|e| SlapdError::io(format!("reading {}", log_path.display()), e))?
            .len();
        let log_err = log
            .try_clone()
            .map_err(|e| SlapdError::io("duplicating the log file handle", e))?;
        let mut urls = format!("ldap://127.0.0.1:{}/", self.port);
        if let Some(url) = self.ldapi_url() {
            urls.push(' ');
            urls.push_str(&url);
            urls.push('/');
        }
        let config_dir = self.config_dir();
        // `-d none` keeps slapd in the foreground (so that we own its pid) and prints only its
        // unconditional messages (errors, not traces) on stderr, which goes to the log file
        // (`-d 0` would silence those too); `-d stats` adds a line per operation.
        let child = Command::new(&self.programs.slapd)
            .arg("-h")
            .arg(&urls)
            .arg("-F")
            .arg(&config_dir)
            .args(["-d", self.debug_level])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| {
                SlapdError::io(format!("starting {}", self.programs.slapd.display()), e)
            })?;
        self.child = Some(child);
        match self.wait_ready() {
            Ok(()) => Ok(()),
            Err(reason) => {
                // Do not leave a half-started server behind.
                if let Err(err) = self.stop() {
                    tracing::warn!(%err, "could not stop a slapd that failed to start");
                }
                Err(SlapdError::Startup {
                    port: self.port,
                    reason,
                    log_tail: log_tail(&log_path, log_start),
                })
            }
        }
    }

    /// Polls until the admin can bind; a cheap TCP connect first spares a tool spawn per poll.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut last = String::from("no connection yet");
        loop {
            match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => {}
                Some(Ok(Some(status))) => {
                    return Err(format!("slapd exited: {}", status_text(status)))
                }
                Some(Err(e)) => return Err(format!("cannot watch slapd: {e}")),
                None => return Err("slapd is not running".to_owned()),
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                match self.run_admin_tool_within(&self.programs.ldapwhoami, &[], None, 1) {
                    Ok(_) => return Ok(()),
                    Err(err) => last = err.to_string(),
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no successful admin bind within {} s (last error: {last})",
                    READY_TIMEOUT.as_secs()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Slapd {
    /// Stops the server and removes the temp directory; failures are logged, not raised.
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::warn!(%err, "could not stop throwaway slapd");
        }
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(%err, dir = %self.dir.display(), "could not remove slapd temp dir");
        }
    }
}

/// Builds the LDIF of the suffix entry from its first RDN.
fn suffix_entry(suffix: &str) -> Result<String, SlapdError> {
    let bad = |why: &str| SlapdError::InvalidOptions(format!("suffix {suffix:?}: {why}"));
    // LDIF would need base64 for anything else; throwaway suffixes do not need it.
    if suffix.is_empty()
        || !suffix.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        || suffix.starts_with(' ')
    {
        return Err(bad("must be non-empty printable ASCII"));
    }
    let rdn = suffix.split(',').next().unwrap_or_default();
    if rdn.contains(['+', '\\', '"']) {
        return Err(bad(
            "the first RDN must be a single unescaped attribute=value",
        ));
    }
    let (attr, value) = rdn
        .split_once('=')
        .ok_or_else(|| bad("the first RDN has no '='"))?;
    let (attr, value) = (attr.trim(), value.trim());
    if value.is_empty() {
        return Err(bad("the first RDN has an empty value"));
    }
    let classes = match attr.to_ascii_lowercase().as_str() {
        "dc" => {
            format!("objectClass: dcObject\nobjectClass: organization\ndc: {value}\no: {value}\n")
        }
        "o" => format!("objectClass: organization\no: {value}\n"),
        "ou" => format!("objectClass: organizationalUnit\nou: {value}\n"),
        _ => return Err(bad("the first RDN must be dc=, o= or ou=")),
    };
    Ok(format!("dn: {suffix}\n{classes}"))
}

/// Appends one LDIF document, keeping a blank line between entries of consecutive documents.
fn push_ldif(out: &mut String, ldif: &str) {
    out.push_str(ldif.trim_end());
    out.push_str("\n\n");
}

fn read_text(path: &Path) -> Result<String, SlapdError> {
    fs::read_to_string(path).map_err(|e| SlapdError::io(format!("reading {}", path.display()), e))
}

/// Writes a file readable only by us: it may contain the admin password.
fn write_private(path: &Path, content: &[u8]) -> Result<(), SlapdError> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(content))
        .map_err(|e| SlapdError::io(format!("writing {}", path.display()), e))
}

/// Creates `$TMPDIR/scim2ldap-slapd-<pid>-<random>`, private to us.
fn create_temp_dir() -> Result<PathBuf, SlapdError> {
    let base = std::env::temp_dir();
    let mut last = None;
    for _ in 0..8 {
        let name = format!(
            "scim2ldap-slapd-{}-{:012x}",
            std::process::id(),
            rand::thread_rng().gen::<u64>() & 0xffff_ffff_ffff
        );
        let path = base.join(name);
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(SlapdError::io(format!("creating {}", path.display()), e)),
        }
    }
    Err(SlapdError::io(
        format!("creating a temp dir under {}", base.display()),
        last.unwrap_or_else(|| io::Error::other("no attempt made")),
    ))
}

/// Asks the kernel for a free loopback port. slapd binds it a moment later; the small race with
/// other processes is handled by retrying on "Address already in use".
fn free_port() -> Result<u16, SlapdError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| SlapdError::io("finding a free loopback port", e))
}

fn is_port_clash(err: &SlapdError) -> bool {
    matches!(err, SlapdError::Startup { log_tail, .. } if log_tail.contains("Address already in use"))
}

/// The LDAPI socket path, if short enough for `sun_path` (108 bytes on Linux).
fn ldapi_path(dir: &Path) -> Option<String> {
    let path = dir.join("ldapi");
    let path = path.to_str()?;
    (path.len() < 100).then(|| path.to_owned())
}

/// Percent-encodes everything but unreserved characters, as an `ldapi://` host needs.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn find_program(name: &str) -> Result<PathBuf, SlapdError> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(EXTRA_BIN_DIRS.iter().map(PathBuf::from));
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| SlapdError::NotInstalled {
            what: format!("program `{name}`"),
            searched: format!("PATH and {}", EXTRA_BIN_DIRS.join(", ")),
        })
}

fn find_dir(candidates: &[&str], marker: &str, what: &str) -> Result<PathBuf, SlapdError> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join(marker).is_file())
        .ok_or_else(|| SlapdError::NotInstalled {
            what: format!("{what} (with {marker})"),
            searched: candidates.join(", "),
        })
}

/// Runs a tool to completion with the default timeout; see [`run_tool_within`].
fn run_tool(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output, SlapdError> {
    run_tool_within(program, args, stdin, TOOL_TIMEOUT_SECS)
}

/// Runs a tool to completion, feeding `stdin` from a thread so that a large input cannot
/// deadlock against the tool's own output filling its pipe. `timeout_secs` bounds the connect
/// and each wait for a response (libldap reads `LDAP<option>` from the environment), so that a
/// port held by something that accepts but never answers cannot hang the caller.
fn run_tool_within(
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
    timeout_secs: u32,
) -> Result<Output, SlapdError> {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = Command::new(program)
        .args(args)
        .env("LDAPTIMEOUT", timeout_secs.to_string())
        .env("LDAPNETWORK_TIMEOUT", timeout_secs.to_string())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SlapdError::io(format!("starting {}", program.display()), e))?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => {
            let text = text.to_owned();
            Some(thread::spawn(move || pipe.write_all(text.as_bytes())))
        }
        _ => None,
    };
    let out = child
        .wait_with_output()
        .map_err(|e| SlapdError::io(format!("running {name}"), e))?;
    if let Some(writer) = writer {
        // A write error (EPIPE) only means the tool stopped reading; its exit code says why.
        let _ = writer.join();
    }
    if out.status.success() {
        Ok(out)
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        Err(SlapdError::Tool {
            program: name,
            code: out.status.code(),
            stderr,
        })
    }
}

fn status_text(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_owned(),
    }
}

/// The last lines that slapd wrote to its log since `from` (the log's length at launch).
fn log_tail(path: &Path, from: u64) -> String {
    let mut bytes = Vec::new();
    let read = fs::File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(from))?;
        f.read_to_end(&mut bytes)
    });
    if let Err(e) = read {
        return format!("(log unreadable: {e})");
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "(empty)".to_owned();
    }
    let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines.into_iter().skip(skip).collect::<Vec<_>>().join("\n")
}
