//! Tests of the throwaway slapd against the real server: start, binds, ppolicy lock, unique,
//! memberof/refint, access rules, restart, stop and isolation of parallel instances.

use super::*;

fn start() -> Slapd {
    Slapd::start(SlapdOptions::default()).unwrap()
}

/// Adds `uid=<uid>,ou=people` with a password and the scim2ldap auxiliary class.
fn add_user(s: &Slapd, uid: &str, password: &str) -> String {
    let dn = format!("uid={uid},{}", s.people_dn());
    s.ldapadd(&format!(
        "dn: {dn}\nobjectClass: inetOrgPerson\nobjectClass: scimResource\nuid: {uid}\ncn: {uid}\n\
         sn: {uid}\nmail: {uid}@example.com\nuserPassword: {password}\n\
         scimId: 2819c223-7f76-453a-919d-41{uid:0>10}\n"
    ))
    .unwrap();
    dn
}

/// Searches as `dn` instead of the admin, to check what a user may see.
fn search_as(s: &Slapd, dn: &str, password: &str, base: &str) -> Result<String, SlapdError> {
    let url = s.url();
    let args = [
        "-x",
        "-LLL",
        "-o",
        "ldif-wrap=no",
        "-H",
        &url,
        "-D",
        dn,
        "-w",
        password,
        "-b",
        base,
        "(objectClass=*)",
    ];
    run_tool(&s.programs.ldapsearch, &args, None)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn starts_with_base_entries_and_admin_bind() {
    let s = start();

    assert_eq!(s.url(), format!("ldap://127.0.0.1:{}", s.port()));
    assert_eq!(s.admin_dn(), "cn=admin,dc=example,dc=com");
    assert_eq!(s.admin_password().len(), 24);
    assert!(s.dir().join("slapd.d").is_dir());
    assert!(s.user_can_bind(&s.admin_dn(), s.admin_password()).unwrap());
    assert!(!s.user_can_bind(&s.admin_dn(), "wrong").unwrap());
    assert!(!s.user_can_bind(&s.admin_dn(), "").unwrap());

    let all = s
        .ldapsearch(s.suffix(), "(objectClass=*)", &["1.1"])
        .unwrap();
    for dn in [
        s.suffix().to_owned(),
        s.people_dn(),
        s.groups_dn(),
        s.disabled_dn(),
        format!("ou=policies,{}", s.suffix()),
        s.policy_dn(),
        s.placeholder_dn(),
    ] {
        assert!(
            all.contains(&format!("dn: {dn}\n")),
            "{dn} missing in:\n{all}"
        );
    }
    let policy = s
        .ldapsearch(&s.policy_dn(), "(objectClass=pwdPolicy)", &["pwdAttribute"])
        .unwrap();
    assert!(policy.contains("pwdAttribute: userPassword"), "{policy}");
}

#[test]
fn another_instance_uses_another_port_and_dir() {
    let handles: Vec<_> = (0..3).map(|_| thread::spawn(start)).collect();
    let all: Vec<Slapd> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a.port(), b.port());
            assert_ne!(a.dir(), b.dir());
            assert_ne!(a.admin_password(), b.admin_password());
            // Each server only knows its own admin password.
            assert!(!b.user_can_bind(&b.admin_dn(), a.admin_password()).unwrap());
        }
    }
}

#[test]
fn scim_id_is_stored_indexed_and_case_insensitive() {
    let s = start();
    add_user(&s, "alice", "secret");
    let id = "2819c223-7f76-453a-919d-4100000alice";
    let found = s
        .ldapsearch(
            &s.people_dn(),
            &format!("(scimId={})", id.to_uppercase()),
            &["uid"],
        )
        .unwrap();
    assert!(found.contains("uid: alice"), "{found}");
    // SINGLE-VALUE: a second id is refused with objectClassViolation (65)... or
    // constraintViolation (19), depending on how the server classifies it.
    let err = s
        .ldapmodify(&format!(
            "dn: uid=alice,{}\nchangetype: modify\nadd: scimId\nscimId: other\n",
            s.people_dn()
        ))
        .unwrap_err();
    assert!(matches!(err.ldap_code(), Some(19 | 65)), "{err}");
}

#[test]
fn ppolicy_lock_refuses_bind_with_49_and_unlock_restores_it() {
    let s = start();
    let dn = add_user(&s, "bob", "secret");
    assert!(s.user_can_bind(&dn, "secret").unwrap());

    let lock = format!("dn: {dn}\nchangetype: modify\nreplace: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n");
    s.ldapmodify(&lock).unwrap();
    assert!(!s.user_can_bind(&dn, "secret").unwrap());
    // The raw exit code of ldapwhoami is the LDAP result code: 49, like a wrong password.
    let url = s.url();
    let err = run_tool(
        &s.programs.ldapwhoami,
        &["-x", "-H", &url, "-D", &dn, "-w", "secret"],
        None,
    )
    .unwrap_err();
    assert_eq!(err.ldap_code(), Some(49), "{err}");

    s.ldapmodify(&format!(
        "dn: {dn}\nchangetype: modify\ndelete: pwdAccountLockedTime\n"
    ))
    .unwrap();
    assert!(s.user_can_bind(&dn, "secret").unwrap());
}

#[test]
fn unique_overlay_refuses_duplicate_uid_and_mail_with_19() {
    let s = start();
    add_user(&s, "carol", "secret");
    // Same uid under another RDN and another branch.
    let dup_uid = format!(
        "dn: cn=carol2,{}\nobjectClass: inetOrgPerson\ncn: carol2\nsn: x\nuid: carol\n",
        s.disabled_dn()
    );
    let err = s.ldapadd(&dup_uid).unwrap_err();
    assert_eq!(err.ldap_code(), Some(19), "{err}");
    let dup_mail = format!(
        "dn: uid=carol3,{}\nobjectClass: inetOrgPerson\ncn: carol3\nsn: x\nuid: carol3\nmail: carol@example.com\n",
        s.people_dn()
    );
    let err = s.ldapadd(&dup_mail).unwrap_err();
    assert_eq!(err.ldap_code(), Some(19), "{err}");
    // A distinct uid and mail is fine.
    add_user(&s, "carol4", "secret");
}

#[test]
fn memberof_and_refint_keep_groups_consistent() {
    let s = start();
    let dave = add_user(&s, "dave", "secret");
    let group = format!("cn=staff,{}", s.groups_dn());
    s.ldapadd(&format!(
        "dn: {group}\nobjectClass: groupOfNames\ncn: staff\nmember: {dave}\n"
    ))
    .unwrap();
    let user = s
        .ldapsearch(&dave, "(objectClass=*)", &["memberOf"])
        .unwrap();
    assert!(user.contains(&format!("memberOf: {group}")), "{user}");

    // Deleting the last member leaves the placeholder instead of an invalid empty group.
    s.ldapmodify(&format!("dn: {dave}\nchangetype: delete\n"))
        .unwrap();
    let members = s
        .ldapsearch(&group, "(objectClass=*)", &["member"])
        .unwrap();
    assert!(
        members.contains(&format!("member: {}", s.placeholder_dn())),
        "{members}"
    );
    assert!(!members.contains("uid=dave"), "{members}");
}

#[test]
fn users_can_read_only_themselves() {
    let s = start();
    let erin = add_user(&s, "erin", "secret");
    let frank = add_user(&s, "frank", "secret");
    let own = search_as(&s, &erin, "secret", &erin).unwrap();
    assert!(own.contains("uid: erin"), "{own}");
    assert!(!own.contains("userPassword"), "{own}");
    let other = search_as(&s, &erin, "secret", &frank).unwrap_or_default();
    assert!(!other.contains("uid: frank"), "{other}");
    let anonymous = run_tool(
        &s.programs.ldapsearch,
        &[
            "-x",
            "-LLL",
            "-H",
            &s.url(),
            "-b",
            &s.people_dn(),
            "(uid=*)",
        ],
        None,
    );
    assert!(!anonymous
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("uid: erin"))
        .unwrap_or(false));
}

#[test]
fn restart_keeps_port_and_data() {
    let mut s = start();
    let dn = add_user(&s, "grace", "secret");
    let port = s.port();
    s.restart().unwrap();
    assert_eq!(s.port(), port);
    assert!(s.is_running());
    assert!(s.user_can_bind(&dn, "secret").unwrap());
    let found = s
        .ldapsearch(&s.people_dn(), "(uid=grace)", &["uid"])
        .unwrap();
    assert!(found.contains("uid: grace"), "{found}");
}

#[test]
fn stop_ends_the_process_and_drop_removes_the_dir() {
    let mut s = start();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, s.port()));
    let pid = s.child.as_ref().map(Child::id).unwrap();
    s.stop().unwrap();
    assert!(!s.is_running());
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
    // Stopping twice is fine; tools now fail with "can't contact" (-1 → exit 255).
    s.stop().unwrap();
    assert!(s.user_can_bind(&s.admin_dn(), s.admin_password()).is_err());

    let dir = s.dir().to_owned();
    assert!(dir.exists());
    drop(s);
    assert!(!dir.exists());
}

#[test]
fn drop_of_a_running_server_stops_it() {
    let s = start();
    let pid = s.child.as_ref().map(Child::id).unwrap();
    let dir = s.dir().to_owned();
    drop(s);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
}

#[test]
fn busy_port_is_reported_with_the_log_tail() {
    let mut s = start();
    s.stop().unwrap();
    let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, s.port())).unwrap();
    let err = s.restart().unwrap_err();
    assert!(is_port_clash(&err), "{err}");
    assert!(err.to_string().contains("did not start"), "{err}");
    assert!(!s.is_running());
    drop(squatter);
    s.restart().unwrap();
    assert!(s.user_can_bind(&s.admin_dn(), s.admin_password()).unwrap());
}

#[test]
fn options_select_syncprov_fsync_and_extra_schema() {
    let extra_dir =
        std::env::temp_dir().join(format!("scim2ldap-slapd-test-{}", std::process::id()));
    fs::create_dir_all(&extra_dir).unwrap();
    let extra = extra_dir.join("extra.ldif");
    fs::write(
        &extra,
        "dn: cn=extra,cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: extra\n\
         olcAttributeTypes: ( 2.25.90327866172312434040927707255788884923.99.1 NAME 'testExtra' \
         EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )\n",
    )
    .unwrap();
    let s = Slapd::start(SlapdOptions {
        suffix: "o=acme".to_owned(),
        fsync: true,
        syncprov: true,
        extra_schema_ldif: vec![extra],
        log_operations: true,
        refint: true,
        unique: false,
    })
    .unwrap();
    fs::remove_dir_all(&extra_dir).unwrap();
    assert_eq!(s.people_dn(), "ou=people,o=acme");

    // cn=config through LDAPI with SASL EXTERNAL, as an operator would load a schema.
    let ldapi = s.ldapi_url().unwrap();
    let out = run_tool(
        &s.programs.ldapsearch,
        &[
            "-Y",
            "EXTERNAL",
            "-H",
            &ldapi,
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-b",
            "cn=config",
            "(|(olcOverlay=*)(olcDbNoSync=*)(cn=*extra))",
            "olcOverlay",
            "olcDbNoSync",
            "cn",
        ],
        None,
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "olcOverlay: {3}syncprov",
        "olcDbNoSync: FALSE",
        "cn: {5}extra",
        "olcOverlay: {0}ppolicy",
    ] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
    assert!(!text.contains("unique"), "unique overlay loaded:\n{text}");
    // With `log_operations`, the search above is in slapd's log.
    let log = s.log().unwrap();
    assert!(log.contains("SRCH base=\"cn=config\""), "{log}");
}

#[test]
fn suffix_validation() {
    assert!(suffix_entry("dc=example,dc=com")
        .unwrap()
        .contains("objectClass: dcObject"));
    assert!(suffix_entry("ou=test").unwrap().contains("ou: test"));
    for bad in [
        "",
        "example",
        "cn=x,dc=com",
        "dc=a+o=b",
        "dc=\u{e9}",
        "dc=a\nb",
        "dc=",
    ] {
        let err = suffix_entry(bad).unwrap_err();
        assert!(
            matches!(err, SlapdError::InvalidOptions(_)),
            "{bad:?}: {err}"
        );
    }
    let err = Slapd::start(SlapdOptions {
        suffix: "cn=nope".to_owned(),
        ..SlapdOptions::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("dc=, o= or ou="), "{err}");
}

#[test]
fn helpers() {
    assert_eq!(percent_encode("/tmp/a b/ldapi"), "%2Ftmp%2Fa%20b%2Fldapi");
    assert_eq!(exit_text(Some(19)), "exit code 19");
    let err = SlapdError::Tool {
        program: "ldapmodify".to_owned(),
        code: Some(19),
        stderr: "x".to_owned(),
    };
    assert_eq!(err.ldap_code(), Some(19));
}
