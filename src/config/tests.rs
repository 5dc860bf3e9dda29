use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::ExposeSecret;

use super::*;

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
[auth]
bearer_tokens = ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
[ldap]
url = "ldap://127.0.0.1:389"
bind_dn = "cn=admin,dc=example,dc=com"
bind_password = "very-secret-bind-password"
[users]
base_dn = "ou=people,dc=example,dc=com"
[groups]
base_dn = "ou=groups,dc=example,dc=com"
[cache]
path = "/tmp/cache.db"
"#;

/// Writes `text` to a temp file and loads it with `env` as the environment.
fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write");
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (raw, unknown) = read_raw(&path, Some(env))?;
    validate(raw, unknown, &SecretSources::default())
}

#[track_caller]
fn check_problems(text: &str, env: &[(&str, &str)], expected: &[&str]) {
    let err = load_text(text, env).expect_err("config must be refused");
    for part in expected {
        assert!(
            err.problems.iter().any(|p| p.contains(part)),
            "no problem mentions {part:?}: {:?}",
            err.problems
        );
    }
    assert_eq!(err.problems.len(), expected.len(), "{:?}", err.problems);
}

#[test]
fn a_good_file_loads_with_defaults() {
    let config = load_text(GOOD, &[]).expect("loads");
    assert_eq!(config.server.base_path, "/scim/v2");
    assert_eq!(config.server.max_body_bytes, 1024 * 1024);
    assert_eq!(config.ldap.pool_size, 8);
    assert_eq!(config.ldap.timeout, Duration::from_secs(10));
    assert_eq!(config.ldap.flavor, Flavor::OpenLdap);
    assert_eq!(config.users.rdn_attribute, "uid");
    assert_eq!(config.cache.path, PathBuf::from("/tmp/cache.db"));
}

#[test]
fn unknown_keys_and_bad_values_are_all_reported_naming_the_key() {
    let text = GOOD
        .replace("[server]\n", "[server]\nlistn = \"x\"\n")
        .replace("[ldap]\n", "[ldap]\nurll = \"x\"\n");
    check_problems(&text, &[], &["server.listn", "ldap.urll"]);
    let text = GOOD
        .replace("listen = \"127.0.0.1:0\"", "listen = \"nowhere\"")
        .replace("ldap://127.0.0.1:389", "http://127.0.0.1")
        .replace("[users]\n", "[users]\non_delete = \"shred\"\n")
        .replace(
            "[ldap]\n",
            "[ldap]\nflavor = \"novell\"\ntimeout = \"soon\"\npool_size = 0\n",
        );
    check_problems(
        &text,
        &[],
        &[
            "server.listen",
            "ldap.url",
            "users.on_delete",
            "ldap.flavor",
            "ldap.timeout",
            "ldap.pool_size",
        ],
    );
    let missing = "[server]\nlisten = \"127.0.0.1:0\"\n";
    check_problems(
        missing,
        &[],
        &[
            "auth.bearer_tokens",
            "ldap.url",
            "ldap.bind_dn",
            "ldap.bind_password",
            "users.base_dn",
            "groups.base_dn",
        ],
    );
}

#[test]
fn environment_values_that_look_like_numbers_stay_text_where_text_is_expected() {
    // A password or a DN of digits, a leading zero, an exponent, a boolean word: all text.
    for secret in ["12345678", "007", "1e5", "true", "-0"] {
        let config = load_text(GOOD, &[("SCIM2LDAP__LDAP__BIND_PASSWORD", secret)])
            .unwrap_or_else(|err| panic!("{secret}: {err}"));
        assert_eq!(
            config.ldap.bind_password.expose_secret(),
            secret,
            "{secret} arrives as written"
        );
    }
    // Numbers and booleans still come from text where the key wants them.
    let config = load_text(
        GOOD,
        &[
            ("SCIM2LDAP__LDAP__POOL_SIZE", "007"),
            ("SCIM2LDAP__SERVER__WORKER_THREADS", "3"),
        ],
    )
    .expect("loads");
    assert_eq!(config.ldap.pool_size, 7);
}

#[test]
fn environment_overrides_apply_and_misspelled_ones_are_refused() {
    let config = load_text(
        GOOD,
        &[
            ("SCIM2LDAP__LDAP__URL", "ldaps://directory.example:636"),
            ("SCIM2LDAP__LDAP__POOL_SIZE", "3"),
        ],
    )
    .expect("loads");
    assert_eq!(config.ldap.url, "ldaps://directory.example:636");
    assert_eq!(config.ldap.pool_size, 3);
    check_problems(
        GOOD,
        &[("SCIM2LDAP__LDAP__URLL", "ldap://x")],
        &["ldap.urll"],
    );
    let tokens = format!("{},{}", "a".repeat(20), "b".repeat(20));
    let config =
        load_text(GOOD, &[("SCIM2LDAP__AUTH__BEARER_TOKENS", tokens.as_str())]).expect("loads");
    assert_eq!(config.auth.tokens.len(), 2);
}

#[test]
fn secrets_come_from_files_and_credentials_and_never_show_in_debug() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("bind_password"), "from-credential\n").expect("write");
    std::fs::write(
        dir.path().join("bearer_tokens"),
        "# rotation\nccccccccccccccccccccc\ndddddddddddddddddddd\n",
    )
    .expect("write");
    let text = GOOD.replace("bind_password = \"very-secret-bind-password\"\n", "");
    let text = text.replace(
        "bearer_tokens = [\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"]",
        "",
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write");
    let raw = load_raw(&path, Some(BTreeMap::new())).expect("raw");
    let secrets = SecretSources {
        credentials_directory: Some(dir.path().to_path_buf()),
        state_directory: None,
    };
    let config = Config::from_raw(raw, &secrets).expect("loads");
    assert_eq!(config.ldap.bind_password.expose_secret(), "from-credential");
    assert_eq!(config.auth.tokens.len(), 2);
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("from-credential") && !shown.contains("ccccccccccccccccccccc"),
        "{shown}"
    );

    let inline = load_text(GOOD, &[]).expect("loads");
    assert!(!format!("{inline:?}").contains("very-secret-bind-password"));

    let both = GOOD.replace(
        "[ldap]\n",
        "[ldap]\nbind_password_file = \"/nonexistent\"\n",
    );
    check_problems(&both, &[], &["both set"]);
    let short = GOOD.replace(
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "short",
    );
    check_problems(&short, &[], &["at least 16"]);
}

#[test]
fn durations_and_base_paths_are_normalised() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("10").is_err());
    assert_eq!(normalize_base_path("/scim/v2/"), Ok("/scim/v2".to_string()));
    assert_eq!(
        normalize_base_path("//scim//v2"),
        Ok("/scim/v2".to_string())
    );
    assert_eq!(normalize_base_path(""), Ok(String::new()));
    assert!(normalize_base_path("scim").is_err());
}

/// A hash line in any case of its prefix is a hash: read as a plaintext token, the line
/// itself, which is not kept secret, would be a valid token.
#[test]
fn a_token_hash_prefix_in_any_case_is_a_hash() {
    let hex = "ab".repeat(32);
    let expected = [0xab_u8; 32];
    for prefix in ["sha256:", "SHA256:", "Sha256:"] {
        let line = SecretString::from(format!("{prefix}{hex}"));
        assert_eq!(parse_token(&line), Ok(expected), "{prefix}");
    }
    assert!(parse_token(&SecretString::from("SHA256:not-hex-at-all-here")).is_err());
    let plain = SecretString::from("a-plaintext-token-of-length");
    assert_eq!(
        parse_token(&plain),
        Ok(sha256(b"a-plaintext-token-of-length"))
    );
}

#[test]
fn tokens_are_named_and_operations_keys_are_validated() {
    let text = GOOD.replace(
        "[auth]\n",
        "[auth]\ntokens = { okta = \"sha256:1111111111111111111111111111111111111111111111111111111111111111\" }\n",
    );
    let config = load_text(&text, &[]).expect("loads");
    let names: Vec<&str> = config.auth.tokens.iter().map(|t| &*t.name).collect();
    assert_eq!(names, ["okta", "token-1"]);
    assert_eq!(
        config.server.rate_limit,
        Some(RateLimit {
            per_second: 500,
            burst: 1000
        })
    );
    assert_eq!(config.server.tls, None);
    assert_eq!(config.server.metrics_listen, None);
    assert_eq!(config.server.worker_threads, 2);
    assert!(!format!("{:?}", config.auth).contains("1111"));

    let config = load_text(
        GOOD,
        &[
            ("SCIM2LDAP__SERVER__RATE_LIMIT_PER_SECOND", "0"),
            ("SCIM2LDAP__SERVER__METRICS_LISTEN", "127.0.0.1:9187"),
            ("SCIM2LDAP__SERVER__WORKER_THREADS", "0"),
            (
                "SCIM2LDAP__AUTH__TOKENS__ENTRA",
                "sha256:2222222222222222222222222222222222222222222222222222222222222222",
            ),
        ],
    )
    .expect("loads");
    assert_eq!(config.server.rate_limit, None);
    assert_eq!(config.server.worker_threads, 0);
    assert_eq!(
        config.server.metrics_listen,
        Some("127.0.0.1:9187".parse().expect("address"))
    );
    assert!(config.auth.tokens.iter().any(|t| &*t.name == "entra"));

    let bad = GOOD
        .replace(
            "[server]\n",
            "[server]\ntls_cert_file = \"/nonexistent/cert.pem\"\nmetrics_listen = \"nowhere\"\nrate_limit_burst = 0\n",
        )
        .replace(
            "[auth]\n",
            "[auth]\ntokens = { \"bad name\" = \"sha256:1111111111111111111111111111111111111111111111111111111111111111\", twin = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\" }\n",
        );
    check_problems(
        &bad,
        &[],
        &[
            "tls_key_file",
            "server.metrics_listen",
            "server.rate_limit_burst",
            "auth.tokens.bad name",
            "same token",
        ],
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("cert.pem"), "not pem").expect("write");
    std::fs::write(dir.path().join("key.pem"), "not pem").expect("write");
    let unreadable = GOOD.replace(
        "[server]\n",
        &format!(
            "[server]\ntls_cert_file = \"{0}/cert.pem\"\ntls_key_file = \"{0}/key.pem\"\n",
            dir.path().display()
        ),
    );
    check_problems(&unreadable, &[], &["no PEM certificate"]);
}

#[test]
fn mapping_paths_must_name_attributes_of_the_schema() {
    // Each of these would map nothing, silently, on every write.
    let text = GOOD.replace(
        "[users]\n",
        "[users]\nposix = true\nhome_directory = \"/home/{usrName}\"\n",
    ) + r#"
[users.attributes]
givenName = "name.givenNme"
title = ["title", "{name.familyNam} (x)"]
mail = 'emails[type eq "work"].valu'
departmentNumber = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:deprtment"
employeeNumber = "URN:IETF:PARAMS:SCIM:SCHEMAS:EXTENSION:ENTERPRISE:2.0:USER:EMPLOYEENUMBER"
manager = "dn:urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value"
mobile = 'phoneNumbers[type eq "mobile"].value'
[groups.attributes]
description = "descriptin"
"#;
    check_problems(
        &text,
        &[],
        &[
            "`users.home_directory`: `/home/{usrName}`",
            "`users.attributes.givenName`: `name.givenNme`: the User schema has no such attribute",
            "`users.attributes.title`: `{name.familyNam} (x)`",
            "`users.attributes.mail`",
            "`users.attributes.departmentNumber`",
            "`groups.attributes.description`: `descriptin`: the Group schema has no such attribute",
        ],
    );
}

#[test]
fn passwords_in_clear_to_another_host_are_told_apart() {
    let host_of = |url: &str, starttls: &str| {
        let config = load_text(
            GOOD,
            &[
                ("SCIM2LDAP__LDAP__URL", url),
                ("SCIM2LDAP__LDAP__STARTTLS", starttls),
            ],
        )
        .unwrap_or_else(|err| panic!("{url}: {err}"));
        config.ldap.plaintext_remote_host().map(str::to_string)
    };
    assert_eq!(
        host_of("ldap://dir.example.com:389", "false").as_deref(),
        Some("dir.example.com")
    );
    assert_eq!(
        host_of("ldap://[2001:db8::7]:389", "false").as_deref(),
        Some("2001:db8::7")
    );
    for (url, starttls) in [
        ("ldap://dir.example.com", "true"),
        ("ldaps://dir.example.com", "false"),
        ("ldap://127.0.0.1:389", "false"),
        ("ldap://localhost", "false"),
        ("ldap://[::1]:389", "false"),
    ] {
        assert_eq!(host_of(url, starttls), None, "{url} starttls={starttls}");
    }
}

#[test]
fn unknown_keys_and_invalid_values_are_reported_together() {
    let text = GOOD
        .replace("[ldap]\n", "[ldap]\nurll = \"ldap://x\"\n")
        .replace(
            "url = \"ldap://127.0.0.1:389\"",
            "url = \"http://127.0.0.1\"",
        );
    check_problems(&text, &[], &["ldap.urll", "ldap.url"]);
}

#[test]
fn problems_never_quote_the_values_they_refuse() {
    let mistyped = GOOD.replace(
        "bearer_tokens = [\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"]",
        "bearer_tokens = \"plain-secret-token\"",
    );
    let err = load_text(&mistyped, &[]).expect_err("refused").to_string();
    assert!(!err.contains("plain-secret-token"), "{err}");
    assert!(err.contains("auth.bearer_tokens"), "{err}");
    let unterminated = GOOD.replace(
        "bind_password = \"very-secret-bind-password\"",
        "bind_password = \"very-secret-bind-password",
    );
    let err = load_text(&unterminated, &[])
        .expect_err("refused")
        .to_string();
    assert!(!err.contains("very-secret-bind-password"), "{err}");
    assert!(err.contains("line 9"), "{err}");
    assert_eq!(
        super::without_values(r#"invalid type: string "a \" b", expected a sequence"#),
        "invalid type: a string, expected a sequence"
    );
}

#[test]
fn a_log_level_must_name_levels() {
    for good in [
        "info",
        "WARN",
        "warn,scim2ldap=debug",
        "scim2ldap::audit=info,off",
    ] {
        let text = format!("{GOOD}\n[log]\nlevel = \"{good}\"\n");
        assert_eq!(load_text(&text, &[]).expect(good).log.level, good);
    }
    for bad in ["warning", "notice", "info,scim2ldap=loud"] {
        let text = format!("{GOOD}\n[log]\nlevel = \"{bad}\"\n");
        let err = load_text(&text, &[]).expect_err(bad).to_string();
        assert!(err.contains("log.level"), "{err}");
    }
}

#[test]
fn trusted_proxies_default_to_loopback_and_may_be_none() {
    let config = load_text(GOOD, &[]).expect("loads");
    assert_eq!(
        config.server.trusted_proxies,
        [
            "127.0.0.1".parse::<std::net::IpAddr>().unwrap(),
            "::1".parse().unwrap()
        ]
    );
    let none = GOOD.replace("[server]\n", "[server]\ntrusted_proxies = []\n");
    assert!(load_text(&none, &[])
        .expect("loads")
        .server
        .trusted_proxies
        .is_empty());
    let from_env = load_text(
        GOOD,
        &[("SCIM2LDAP__SERVER__TRUSTED_PROXIES", "10.0.0.5, ::1")],
    )
    .expect("loads");
    assert_eq!(from_env.server.trusted_proxies.len(), 2);
    // An empty value is the empty list, as `[]` in the file.
    let none_from_env = load_text(GOOD, &[("SCIM2LDAP__SERVER__TRUSTED_PROXIES", "")])
        .expect("an empty list loads");
    assert!(none_from_env.server.trusted_proxies.is_empty());
    check_problems(
        &GOOD.replace(
            "[server]\n",
            "[server]\ntrusted_proxies = [\"proxy.local\"]\n",
        ),
        &[],
        &["server.trusted_proxies"],
    );
}
