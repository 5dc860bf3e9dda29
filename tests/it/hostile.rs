//! Hostile input: each request gets the right SCIM error, and neither the directory nor the
//! cache changes.

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{user_body, values, TestServer};

/// What the server holds, to compare before and after a hostile request: every entry under
/// the suffix with its attributes, and every cached user and group.
async fn snapshot(server: &TestServer) -> (String, Value, Value) {
    let directory = server
        .slapd
        .ldapsearch(
            server.slapd.suffix(),
            "(objectClass=*)",
            &["*", "entryCSN", "modifyTimestamp"],
        )
        .expect("search");
    let users = server.get("/Users").await.expect(200);
    let groups = server.get("/Groups").await.expect(200);
    (directory, users, groups)
}

/// Sends raw bytes as one HTTP/1.1 request and returns the status and body of the reply.
async fn raw_request(server: &TestServer, request: &[u8]) -> (u16, Value) {
    let addr = server.root.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // Write and read at once: a server refusing an oversized body answers before reading it,
    // and may close the connection while the rest is still being sent.
    let request = request.to_vec();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut reply = Vec::new();
    let mut buffer = [0u8; 8192];
    // `Connection: close` in every raw request: the server ends the reply with EOF.
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buffer[..n]),
        }
    }
    drop(writing.await);
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("");
    // A chunked reply: the JSON sits between the chunk size lines.
    let json_start = body.find('{');
    let json_end = body.rfind('}');
    let body = match (json_start, json_end) {
        (Some(start), Some(end)) if start < end => {
            serde_json::from_str(&body[start..=end]).unwrap_or(Value::Null)
        }
        _ => Value::Null,
    };
    (status, body)
}

fn raw(server: &TestServer, method: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n{headers}",
        server.root.trim_start_matches("http://"),
        server.token
    )
    .into_bytes();
    if !headers.to_ascii_lowercase().contains("transfer-encoding") {
        request.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    request
}

#[track_caller]
fn assert_scim_error(status: u16, body: &Value, expected_status: u16, scim_type: Option<&str>) {
    assert_eq!(status, expected_status, "body: {body}");
    assert_eq!(
        body["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error",
        "{body}"
    );
    assert_eq!(body["status"], expected_status.to_string(), "{body}");
    match scim_type {
        Some(scim_type) => assert_eq!(body["scimType"], scim_type, "{body}"),
        None => assert!(body.get("scimType").is_none(), "{body}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_bodies_are_refused_and_write_nothing() {
    let server = TestServer::start().await;
    let user = server
        .post("/Users", user_body("victim", "Vic", "Tim"))
        .await
        .expect(201);
    let user_id = user["id"].as_str().unwrap().to_string();
    let group = server
        .post(
            "/Groups",
            json!({"displayName": "targets", "members": [{"value": user_id}]}),
        )
        .await
        .expect(201);
    let group_id = group["id"].as_str().unwrap().to_string();
    let before = snapshot(&server).await;

    let limit = 1_048_576;
    let big_name = "x".repeat(limit + 1);
    let deep = format!("{}{}", "{\"a\":[".repeat(5_000), "]}".repeat(5_000));
    let huge_emails: Vec<Value> = (0..100_000)
        .map(|n| json!({"value": format!("u{n}@example.com")}))
        .collect();
    let many_emails: Vec<Value> = (0..5_000)
        .map(|n| json!({"value": format!("u{n}@example.com")}))
        .collect();
    let many_members: Vec<Value> = (0..15_000)
        .map(|n| json!({"value": format!("m{n}")}))
        .collect();
    let many_ops: Vec<Value> = (0..1_001)
        .map(|n| json!({"op": "replace", "path": "title", "value": format!("t{n}")}))
        .collect();
    let users = format!("{}/Users", "/scim/v2");
    let user_path = format!("/scim/v2/Users/{user_id}");
    let group_path = format!("/scim/v2/Groups/{group_id}");
    let json_type = "Content-Type: application/scim+json\r\n";
    struct Case<'a> {
        what: &'a str,
        method: &'a str,
        path: &'a str,
        headers: &'a str,
        body: Vec<u8>,
        status: u16,
        scim_type: Option<&'a str>,
    }
    let case = |what, method, path, headers, body: Vec<u8>, status, scim_type| Case {
        what,
        method,
        path,
        headers,
        body,
        status,
        scim_type,
    };
    let cases = vec![
        case(
            "body over the limit (declared)",
            "POST",
            &users,
            json_type,
            json!({"userName": big_name}).to_string().into_bytes(),
            413,
            None,
        ),
        case(
            "100,000 emails: over the body limit",
            "POST",
            &users,
            json_type,
            json!({"userName": "many", "emails": huge_emails})
                .to_string()
                .into_bytes(),
            413,
            None,
        ),
        case(
            "5,000 emails: under the body limit, over the value limit",
            "POST",
            &users,
            json_type,
            json!({"userName": "many", "emails": many_emails})
                .to_string()
                .into_bytes(),
            400,
            Some("invalidValue"),
        ),
        case(
            "15,000 members in a PUT",
            "PUT",
            &group_path,
            json_type,
            json!({"displayName": "targets", "members": many_members})
                .to_string()
                .into_bytes(),
            400,
            Some("invalidValue"),
        ),
        case(
            "15,000 members in a PATCH",
            "PATCH",
            &group_path,
            json_type,
            json!({"Operations": [{"op": "add", "path": "members", "value": many_members}]})
                .to_string()
                .into_bytes(),
            400,
            Some("tooMany"),
        ),
        case(
            "1,001 operations in a PATCH",
            "PATCH",
            &user_path,
            json_type,
            json!({"Operations": many_ops}).to_string().into_bytes(),
            400,
            Some("tooMany"),
        ),
        case(
            "deeply nested JSON",
            "POST",
            &users,
            json_type,
            deep.clone().into_bytes(),
            400,
            Some("invalidSyntax"),
        ),
        case(
            "deeply nested JSON in a PATCH",
            "PATCH",
            &user_path,
            json_type,
            deep.into_bytes(),
            400,
            Some("invalidSyntax"),
        ),
        case(
            "invalid UTF-8",
            "POST",
            &users,
            json_type,
            b"{\"userName\":\"bad\xff\xfe\"}".to_vec(),
            400,
            Some("invalidSyntax"),
        ),
        case(
            "overlong UTF-8 encoding of '/'",
            "POST",
            &users,
            json_type,
            b"{\"userName\":\"a\xc0\xafb\"}".to_vec(),
            400,
            Some("invalidSyntax"),
        ),
        case(
            "duplicate keys",
            "POST",
            &users,
            json_type,
            br#"{"userName":"dup","userName":"other"}"#.to_vec(),
            400,
            Some("invalidSyntax"),
        ),
        case(
            "duplicate keys in a PATCH value",
            "PATCH",
            &user_path,
            json_type,
            br#"{"Operations":[{"op":"replace","value":{"active":true,"active":false}}]}"#.to_vec(),
            400,
            Some("invalidSyntax"),
        ),
        case(
            "a JSON array at the top",
            "POST",
            &users,
            json_type,
            br#"[{"userName":"arr"}]"#.to_vec(),
            400,
            Some("invalidSyntax"),
        ),
        case(
            "an empty body",
            "POST",
            &users,
            json_type,
            Vec::new(),
            400,
            Some("invalidSyntax"),
        ),
        case(
            "a form body",
            "POST",
            &users,
            "Content-Type: application/x-www-form-urlencoded\r\n",
            b"userName=form".to_vec(),
            400,
            Some("invalidSyntax"),
        ),
        case(
            "an XML body",
            "PUT",
            &user_path,
            "Content-Type: application/xml\r\n",
            b"<User><userName>xml</userName></User>".to_vec(),
            400,
            Some("invalidSyntax"),
        ),
        case(
            "a multipart body",
            "PATCH",
            &group_path,
            "Content-Type: multipart/form-data; boundary=x\r\n",
            b"--x\r\n\r\n{}\r\n--x--".to_vec(),
            400,
            Some("invalidSyntax"),
        ),
        case(
            "JSON with a missing content type and a bad value",
            "POST",
            &users,
            "",
            json!({"userName": "no\u{1b}type"}).to_string().into_bytes(),
            400,
            Some("invalidValue"),
        ),
    ];
    for case in cases {
        let request = raw(&server, case.method, case.path, case.headers, &case.body);
        let (status, body) = raw_request(&server, &request).await;
        assert_eq!(status, case.status, "{}: {body}", case.what);
        assert_scim_error(status, &body, case.status, case.scim_type);
        assert_eq!(
            snapshot(&server).await,
            before,
            "{} wrote something",
            case.what
        );
    }

    // A chunked body without Content-Length is cut off at the limit too.
    let mut chunked = raw(
        &server,
        "POST",
        &users,
        "Content-Type: application/scim+json\r\nTransfer-Encoding: chunked\r\n",
        b"",
    );
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = raw_request(&server, &chunked).await;
    assert_scim_error(status, &body, 413, None);
    assert_eq!(snapshot(&server).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_unknown_schemas_and_bad_filters_are_refused() {
    let server = TestServer::start().await;
    let user = server
        .post("/Users", user_body("victim", "Vic", "Tim"))
        .await
        .expect(201);
    let user_id = user["id"].as_str().unwrap().to_string();
    let group = server
        .post("/Groups", json!({"displayName": "targets"}))
        .await
        .expect(201);
    let group_id = group["id"].as_str().unwrap().to_string();
    let before = snapshot(&server).await;

    let mut refused: Vec<(Method, String, Value, &str)> = Vec::new();
    for bad in [
        "nul\u{0}",
        "esc\u{1b}[31m",
        "bell\u{7}",
        "del\u{7f}",
        "bs\u{8}x",
    ] {
        refused.push((
            Method::POST,
            "/Users".into(),
            json!({"userName": bad}),
            "invalidValue",
        ));
        refused.push((
            Method::POST,
            "/Users".into(),
            json!({"userName": "ok", "displayName": bad}),
            "invalidValue",
        ));
        refused.push((
            Method::POST,
            "/Users".into(),
            json!({"userName": "ok", "externalId": bad}),
            "invalidValue",
        ));
        refused.push((
            Method::POST,
            "/Groups".into(),
            json!({"displayName": bad}),
            "invalidValue",
        ));
        refused.push((
            Method::PATCH,
            format!("/Users/{user_id}"),
            json!({"Operations": [{"op": "replace", "path": "userName", "value": bad}]}),
            "invalidValue",
        ));
        refused.push((
            Method::PATCH,
            format!("/Users/{user_id}"),
            json!({"Operations": [{"op": "replace", "path": "name.givenName", "value": bad}]}),
            "invalidValue",
        ));
        refused.push((
            Method::PATCH,
            format!("/Groups/{group_id}"),
            json!({"Operations": [{"op": "replace", "path": "displayName", "value": bad}]}),
            "invalidValue",
        ));
        refused.push((
            Method::PUT,
            format!("/Groups/{group_id}"),
            json!({"displayName": bad}),
            "invalidValue",
        ));
    }
    // Unknown schemas, unknown attributes in paths, values of the wrong type.
    refused.extend([
        (
            Method::POST,
            "/Users".to_string(),
            json!({"schemas": ["urn:evil:1.0"], "userName": "evil"}),
            "invalidValue",
        ),
        (
            Method::PUT,
            format!("/Users/{user_id}"),
            json!({"userName": "victim", "urn:evil:1.0:User": {"root": true}}),
            "invalidValue",
        ),
        (
            Method::PATCH,
            format!("/Users/{user_id}"),
            json!({"Operations": [{"op": "replace", "path": "isAdmin", "value": true}]}),
            "invalidPath",
        ),
        (
            Method::PATCH,
            format!("/Users/{user_id}"),
            json!({"Operations": [{"op": "replace", "path": "urn:evil:1.0:User:x", "value": 1}]}),
            "invalidPath",
        ),
        (
            Method::PATCH,
            format!("/Users/{user_id}"),
            json!({"schemas": ["urn:evil"], "Operations": [{"op": "replace", "path": "title", "value": "x"}]}),
            "invalidSyntax",
        ),
        (
            Method::PATCH,
            format!("/Users/{user_id}"),
            json!({"Operations": [{"op": "frobnicate", "path": "title", "value": "x"}]}),
            "invalidSyntax",
        ),
        (
            Method::PATCH,
            format!("/Users/{user_id}"),
            json!({"Operations": [{"op": "replace", "path": "emails[type eq \"work\"", "value": "x"}]}),
            "invalidPath",
        ),
    ]);
    // Member values that are no user: metacharacters stay values and name nothing.
    for member in [
        "*",
        "uid=victim,ou=people,dc=example,dc=com",
        "x)(member=*",
        "../victim",
        "\\2a",
    ] {
        refused.push((
            Method::PATCH,
            format!("/Groups/{group_id}"),
            json!({"Operations": [{"op": "add", "path": "members", "value": [{"value": member}]}]}),
            "invalidValue",
        ));
    }
    for (method, path, body, scim_type) in refused {
        let reply = server.call(method.clone(), &path, Some(body.clone())).await;
        let status = reply.status.as_u16();
        assert_scim_error(status, &reply.body, 400, Some(scim_type));
        let _ = (method, body);
        assert_eq!(snapshot(&server).await, before, "{path} wrote something");
    }

    // Filters: too long, too deep, malformed; each 400 invalidFilter.
    let long = format!("userName eq \"{}\"", "a".repeat(5_000));
    let deep = format!("{}userName pr{}", "(".repeat(100), ")".repeat(100));
    let deep_not = format!("{}userName pr{}", "not (".repeat(100), ")".repeat(100));
    let deep_value = format!("emails[{}value pr{}]", "(".repeat(60), ")".repeat(60));
    let wide = vec!["userName pr"; 2_000].join(" or ");
    for filter in [
        long.as_str(),
        deep.as_str(),
        deep_not.as_str(),
        deep_value.as_str(),
        wide.as_str(),
        "userName eq",
        "userName zz \"x\"",
        "((userName pr)",
        "userName eq \"\\u0000\"\u{0}",
        "isAdmin eq true",
    ] {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("filter", filter)
            .finish();
        let reply = server.get(&format!("/Users?{query}")).await;
        let shown: String = filter.chars().take(40).collect();
        assert_eq!(reply.status.as_u16(), 400, "{shown}: {}", reply.body);
        assert_eq!(reply.body["scimType"], "invalidFilter", "{shown}");
        let search = server
            .post(
                "/.search",
                json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": filter}),
            )
            .await;
        assert_eq!(search.status.as_u16(), 400, "{shown}: {}", search.body);
        assert_eq!(search.body["scimType"], "invalidFilter", "{shown}");
    }
    assert_eq!(snapshot(&server).await, before);

    // Tab and newline are allowed in values other than names.
    server
        .patch(
            &format!("/Users/{user_id}"),
            json!({"Operations": [{"op": "replace", "path": "title", "value": "line one\n\tline two"}]}),
        )
        .await
        .expect(200);
    assert_eq!(
        values(&server.entry(&server.user_dn("victim")).unwrap(), "title"),
        ["line one\n\tline two"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_that_traverse_paths_name_nothing() {
    let server = TestServer::start().await;
    let user = server
        .post("/Users", user_body("victim", "Vic", "Tim"))
        .await
        .expect(201);
    let user_id = user["id"].as_str().unwrap().to_string();
    let group = server
        .post("/Groups", json!({"displayName": "targets"}))
        .await
        .expect(201);
    let group_id = group["id"].as_str().unwrap().to_string();
    let before = snapshot(&server).await;
    let patch = json!({"Operations": [{"op": "replace", "path": "displayName", "value": "owned"}]})
        .to_string();
    let put = json!({"userName": "owned", "displayName": "owned"}).to_string();
    let ids = [
        "..".to_string(),
        "%2e%2e".to_string(),
        "%2E%2E".to_string(),
        format!("..%2F..%2FUsers%2F{user_id}"),
        format!("..%2fGroups%2f{group_id}"),
        format!("%2e%2e%2fGroups%2f{group_id}"),
        format!("{user_id}%2F..%2F{group_id}"),
        format!("{user_id}%00"),
        format!("{user_id}%0d%0aX-Injected:%201"),
        "%252e%252e".to_string(),
        "..\\..\\".to_string(),
        "*".to_string(),
        format!("{user_id}*"),
        "%ff%fe".to_string(),
    ];
    for collection in ["Users", "Groups"] {
        for id in &ids {
            let path = format!("/scim/v2/{collection}/{id}");
            for (method, body) in [
                ("GET", ""),
                ("PATCH", patch.as_str()),
                ("PUT", put.as_str()),
                ("DELETE", ""),
            ] {
                let headers = if body.is_empty() {
                    ""
                } else {
                    "Content-Type: application/scim+json\r\n"
                };
                let request = raw(&server, method, &path, headers, body.as_bytes());
                let (status, reply) = raw_request(&server, &request).await;
                assert!(
                    status == 404 || status == 400,
                    "{method} {path}: {status} {reply}"
                );
                assert_scim_error(status, &reply, status, reply["scimType"].as_str());
            }
        }
        // Dot segments that a client did not normalise, as path segments of their own.
        for path in [
            format!("/scim/v2/{collection}/../Users/{user_id}"),
            format!("/scim/v2/{collection}/%2e%2e/Groups/{group_id}"),
            format!("/scim/v2/{collection}/./{user_id}"),
            format!("/scim/v2/{collection}/{user_id}/.."),
        ] {
            for method in ["PATCH", "DELETE"] {
                let request = raw(
                    &server,
                    method,
                    &path,
                    "Content-Type: application/scim+json\r\n",
                    patch.as_bytes(),
                );
                let (status, reply) = raw_request(&server, &request).await;
                assert_scim_error(status, &reply, 404, None);
            }
        }
    }
    assert_eq!(snapshot(&server).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn metacharacters_in_group_names_and_display_names_stay_values() {
    let server = TestServer::start().await;
    let names = [
        "a,ou=people",
        "x)(cn=*",
        "#lead",
        " trailing ",
        "\"q\"",
        "back\\slash",
        "semi;colon+plus<>=",
        "*",
        "nul-free\\00",
    ];
    let mut member_ids = Vec::new();
    for (n, name) in names.iter().enumerate() {
        let user_name = format!("{name}{n}");
        let created = server
            .post(
                "/Users",
                json!({"userName": user_name, "displayName": name, "name": {"familyName": name}}),
            )
            .await
            .expect(201);
        assert_eq!(created["displayName"], *name);
        member_ids.push(created["id"].as_str().unwrap().to_string());
    }
    for (n, name) in names.iter().enumerate() {
        let group = server
            .post(
                "/Groups",
                json!({"displayName": name, "members": [{"value": member_ids[n]}]}),
            )
            .await
            .expect(201);
        assert_eq!(group["displayName"], *name);
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("filter", &format!("displayName eq {}", json!(name)))
            .finish();
        let found = server.get(&format!("/Groups?{query}")).await.expect(200);
        assert_eq!(found["totalResults"], 1, "{name}");
    }
    let groups = server.search(&server.slapd.groups_dn(), "(objectClass=groupOfNames)");
    assert_eq!(groups.len(), names.len());
    let people = server.search(&server.slapd.people_dn(), "(objectClass=inetOrgPerson)");
    for (dn, attrs) in &groups {
        assert!(
            dn.ends_with(&format!(",{}", server.slapd.groups_dn())),
            "{dn}"
        );
        let cn = values(attrs, "cn")[0];
        let n = names
            .iter()
            .position(|name| *name == cn)
            .expect("cn is a name");
        let members = values(attrs, "member");
        assert_eq!(members.len(), 1, "{dn}");
        let member_dn = members[0];
        assert!(
            people.iter().any(|(person, attrs)| person == member_dn
                && values(attrs, "uid")[0] == format!("{}{n}", names[n])),
            "{dn} has member {member_dn}"
        );
    }
    // The group named `*` is one entry, not a wildcard.
    assert_eq!(
        server.search(&server.slapd.groups_dn(), "(cn=\\2a)").len(),
        1
    );
}

/// A plain HTTP server with `options` whose every answer is `ok`.
async fn bare_server(options: scim2ldap::http::ServeOptions) -> std::net::SocketAddr {
    use warp::Filter;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let filter = warp::any()
        .map(|| warp::reply::Response::new("ok".into()))
        .boxed();
    tokio::spawn(scim2ldap::http::serve(
        listener,
        filter,
        std::future::pending(),
        std::time::Duration::from_secs(1),
        options,
    ));
    address
}

/// Sends one request on `stream` and reads the answer's first bytes.
async fn ask(stream: &mut tokio::net::TcpStream) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0; 64];
    let n = stream.read(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[..n]).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let address = bare_server(scim2ldap::http::ServeOptions {
        header_read_timeout: Some(std::time::Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The server closes it (hyper answers 408 first); without the timeout it waited forever.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        slow.read_to_end(&mut rest),
    )
    .await;
    assert!(read.is_ok(), "the connection is still open after 20 s");
    // Nor does a connection that sends nothing at all keep its slot (waiting for a first byte
    // to tell HTTP/1 from HTTP/2 had no time limit), nor an HTTP/2 preface.
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
        let mut silent = tokio::net::TcpStream::connect(address).await.unwrap();
        silent.write_all(opening).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            silent.read_to_end(&mut rest),
        )
        .await;
        assert!(
            read.is_ok(),
            "a connection sending {opening:?} is still open after 20 s"
        );
    }
    // A client that sends its request in time is served.
    let mut prompt = tokio::net::TcpStream::connect(address).await.unwrap();
    assert!(ask(&mut prompt).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let address = bare_server(scim2ldap::http::ServeOptions {
        max_connections: Some(2),
        ..Default::default()
    })
    .await;
    let mut first = tokio::net::TcpStream::connect(address).await.unwrap();
    assert!(ask(&mut first).await.starts_with("HTTP/1.1 200"));
    let second = tokio::net::TcpStream::connect(address).await.unwrap();
    // Both slots are taken (the second connection is idle, not closed): a third connection
    // gets no answer while they last.
    let mut third = tokio::net::TcpStream::connect(address).await.unwrap();
    let waiting =
        tokio::time::timeout(std::time::Duration::from_millis(500), ask(&mut third)).await;
    assert!(waiting.is_err(), "a third connection was served beside two");
    drop(second);
    let mut answer = vec![0; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), third.read(&mut answer))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
    drop(first);
}
