//! Operations: HTTPS on the listener and its reload, token rotation, metrics, the rate limit,
//! the audit log and SIGHUP in the real binary, and the install script.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use scim2ldap::demo::slapd::{Slapd, SlapdOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::support::{sample, user_body, TestServer};

/// A daemon run in-process through `run_with`, so the test holds its `Control`.
struct Daemon {
    slapd: Slapd,
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    config_path: PathBuf,
    control: scim2ldap::Control,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), scim2ldap::RunError>>>,
}

impl Daemon {
    /// Starts on a fresh directory with the config text that `edit` makes from the default
    /// one (whose token line is `TOKEN_LINE`) in `dir`.
    async fn start(dir: tempfile::TempDir, edit: impl FnOnce(String) -> String) -> Daemon {
        let slapd = Slapd::start(SlapdOptions::default()).expect("slapd starts");
        let text = scim2ldap::demo::config_toml(
            &slapd,
            "127.0.0.1:0".parse().unwrap(),
            TOKEN_LINE,
            &dir.path().join("cache.db"),
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, edit(text)).unwrap();
        let config = scim2ldap::config::load(&config_path, Some(Default::default())).unwrap();
        let control = scim2ldap::Control::new(&config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (send, receive) = oneshot::channel::<()>();
        let (ready_send, ready_receive) = oneshot::channel::<()>();
        let handle = tokio::spawn(scim2ldap::run_with(
            config,
            listener,
            control.clone(),
            async move {
                let _ = receive.await;
            },
            move || {
                let _ = ready_send.send(());
            },
        ));
        ready_receive.await.expect("daemon becomes ready");
        Daemon {
            slapd,
            dir,
            addr,
            config_path,
            control,
            shutdown: Some(send),
            handle: Some(handle),
        }
    }

    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }
}

/// Stands for the token line in the generated config; tests replace it.
const TOKEN_LINE: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The `[auth]` token line of the generated config, as written.
fn token_setting() -> String {
    format!("bearer_tokens = [\"{TOKEN_LINE}\"]")
}

/// A self-signed certificate for `localhost` (PEM certificate, PEM key).
fn self_signed() -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

fn client_config(
    cert_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Opens a TLS connection to `addr` as `localhost`, trusting only `cert_pem`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    cert_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(client_config(cert_pem, versions));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// One HTTP/1.1 GET on an open (keep-alive) stream: status and body.
async fn http_get<S>(stream: &mut S, path: &str, token: Option<&str>) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let auth = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a response");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buffer.len() < header_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside a body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buffer[header_end..header_end + length]).to_string();
    (status, body)
}

/// A ClientHello without the supported_versions extension, as TLS 1.2 and older clients send
/// it, offering `version` (`[3, 2]` is TLS 1.1) and otherwise acceptable: ECDHE suites, groups
/// and signature schemes the server has.
fn legacy_client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = version.to_vec();
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x06, 0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x13]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let extensions: Vec<u8> = [
        &[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17][..], // groups
        &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00][..],                         // point formats
        &[
            0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
        ][..],
        &[0x00, 0x17, 0x00, 0x00][..], // extended master secret
    ]
    .concat();
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(body.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// The first bytes the server answers `hello` with.
async fn answer_to(addr: std::net::SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut answer = vec![0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    answer.truncate(n);
    answer
}

fn tls_config_lines(dir: &Path) -> String {
    format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

fn write_cert(dir: &Path, (cert, key): &(String, String)) {
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn https_works_with_a_self_signed_certificate_and_tls_1_1_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pair = self_signed();
    write_cert(dir.path(), &pair);
    let token = scim2ldap::http::new_token();
    let lines = tls_config_lines(dir.path());
    let daemon = Daemon::start(dir, |text| {
        text.replace(
            "base_path = \"/scim/v2\"\n",
            &format!("base_path = \"/scim/v2\"\n{lines}"),
        )
        .replace(TOKEN_LINE, &token.hash_line)
    })
    .await;

    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let mut stream = tls_connect(daemon.addr, &pair.0, versions)
            .await
            .expect("handshake");
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(versions[0].version)
        );
        let (status, body) = http_get(&mut stream, "/healthz", None).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        let (status, body) = http_get(&mut stream, "/scim/v2/Users", Some(&token.plaintext)).await;
        assert_eq!(status, 200, "{body}");
    }

    // The same hello gets a ServerHello when it offers TLS 1.2, and a protocol_version alert
    // when it offers TLS 1.1.
    let answer = answer_to(daemon.addr, &legacy_client_hello([3, 3])).await;
    assert_eq!(
        answer.first(),
        Some(&0x16),
        "expected a handshake record: {answer:02x?}"
    );
    assert_eq!(
        answer.get(5),
        Some(&0x02),
        "expected a ServerHello: {answer:02x?}"
    );
    let answer = answer_to(daemon.addr, &legacy_client_hello([3, 2])).await;
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "expected an alert record: {answer:02x?}"
    );
    assert_eq!(
        answer.get(6),
        Some(&70),
        "expected protocol_version: {answer:02x?}"
    );

    // Plain HTTP on the HTTPS port does not get an answer in the clear.
    let mut tcp = TcpStream::connect(daemon.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_swaps_certificate_and_tokens_without_dropping_an_open_connection() {
    let dir = tempfile::tempdir().unwrap();
    let first = self_signed();
    write_cert(dir.path(), &first);
    let old = scim2ldap::http::new_token();
    let new = scim2ldap::http::new_token();
    let lines = tls_config_lines(dir.path());
    let daemon = Daemon::start(dir, |text| {
        text.replace(
            "base_path = \"/scim/v2\"\n",
            &format!("base_path = \"/scim/v2\"\n{lines}"),
        )
        .replace(
            &token_setting(),
            &format!("tokens = {{ okta = \"{}\" }}", old.hash_line),
        )
    })
    .await;
    let mut open = tls_connect(daemon.addr, &first.0, &[&rustls::version::TLS13])
        .await
        .unwrap();
    assert_eq!(
        http_get(&mut open, "/scim/v2/Schemas", Some(&old.plaintext))
            .await
            .0,
        200
    );

    // New certificate and a rotated token: the file changes, then the reload.
    let second = self_signed();
    write_cert(daemon.dir.path(), &second);
    let text = std::fs::read_to_string(&daemon.config_path).unwrap();
    let text = text.replace(
        &format!("tokens = {{ okta = \"{}\" }}", old.hash_line),
        &format!("tokens = {{ okta-2025 = \"{}\" }}", new.hash_line),
    );
    std::fs::write(&daemon.config_path, &text).unwrap();
    let config = scim2ldap::config::load(&daemon.config_path, Some(Default::default())).unwrap();
    daemon.control.reload(&config).unwrap();

    // The connection opened before the reload is still served, with the new tokens.
    assert_eq!(
        http_get(&mut open, "/scim/v2/Schemas", Some(&old.plaintext))
            .await
            .0,
        401
    );
    assert_eq!(
        http_get(&mut open, "/scim/v2/Schemas", Some(&new.plaintext))
            .await
            .0,
        200
    );
    // New handshakes present the new certificate.
    assert!(
        tls_connect(daemon.addr, &first.0, &[&rustls::version::TLS13])
            .await
            .is_err()
    );
    let mut fresh = tls_connect(daemon.addr, &second.0, &[&rustls::version::TLS13])
        .await
        .unwrap();
    assert_eq!(
        http_get(&mut fresh, "/scim/v2/Schemas", Some(&new.plaintext))
            .await
            .0,
        200
    );

    // A broken file is refused and the running configuration stays.
    std::fs::write(daemon.dir.path().join("key.pem"), "not a key").unwrap();
    assert!(daemon.control.reload_file(&daemon.config_path).is_err());
    std::fs::write(
        &daemon.config_path,
        text.replace("[auth]", "[auth]\nbogus = 1"),
    )
    .unwrap();
    assert!(daemon.control.reload_file(&daemon.config_path).is_err());
    assert_eq!(
        http_get(&mut open, "/scim/v2/Schemas", Some(&new.plaintext))
            .await
            .0,
        200
    );
    let mut again = tls_connect(daemon.addr, &second.0, &[&rustls::version::TLS12])
        .await
        .unwrap();
    assert_eq!(http_get(&mut again, "/healthz", None).await.0, 200);
    daemon.stop().await;
}

/// The value of the sample `name` (the full series text before the value) in `text`.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_need_the_token_and_count_requests_directory_operations_and_cache() {
    let server = TestServer::start().await;
    let url = format!("{}/metrics", server.root);
    let unauthenticated = reqwest::get(&url).await.unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);
    let before = server.get(&url).await;
    assert_eq!(before.status.as_u16(), 200);
    assert!(before
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let before = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let created = r#"scim2ldap_http_requests_total{route="/Users",method="POST",status="201"}"#;
    let adds = r#"scim2ldap_directory_operations_total{operation="add",result="ok"}"#;
    server
        .post("/Users", user_body("metrics.user", "Metric", "User"))
        .await
        .expect(201);
    let after = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        sample(&after, created) >= sample(&before, created) + 1.0,
        "{after}"
    );
    assert!(
        sample(&after, adds) >= sample(&before, adds) + 1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, r#"scim2ldap_cache_resources{kind="user"}"#),
        1.0
    );
    assert_eq!(sample(&after, "scim2ldap_intents_pending"), 0.0);
    assert_eq!(sample(&after, "scim2ldap_directory_pool_size"), 4.0);
    for series in [
        "scim2ldap_http_request_duration_seconds_bucket{",
        "scim2ldap_directory_operation_duration_seconds_bucket{",
        "scim2ldap_directory_pool_waiters ",
        "scim2ldap_cache_memberships ",
        "scim2ldap_group_member_changes_waiting ",
        "scim2ldap_reconcile_entries_scanned_total ",
    ] {
        assert!(after.contains(series), "no {series} in\n{after}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_listen_serves_metrics_without_a_token() {
    let token = scim2ldap::http::new_token();
    let daemon = Daemon::start(tempfile::tempdir().unwrap(), |text| {
        text.replace(
            "base_path = \"/scim/v2\"\n",
            "base_path = \"/scim/v2\"\nmetrics_listen = \"127.0.0.1:0\"\n",
        )
        .replace(TOKEN_LINE, &token.hash_line)
    })
    .await;
    let address = daemon.control.metrics_address().expect("metrics bound");
    let response = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("scim2ldap_directory_pool_size"));
    let other = reqwest::get(format!("http://{address}/scim/v2/Users"))
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 404);
    // The SCIM listener still wants the token for /metrics.
    let main = reqwest::get(format!("http://{}/metrics", daemon.addr))
        .await
        .unwrap();
    assert_eq!(main.status().as_u16(), 401);
    daemon.stop().await;
}

/// The watchdog's health is the daemon's own (accept loop, cache), not the directory's: an
/// outage leaves it healthy, so systemd does not kill a daemon that keeps answering 503 with
/// `Retry-After` until the directory is back, as it is meant to.
#[tokio::test(flavor = "multi_thread")]
async fn a_directory_outage_leaves_the_watchdog_fed_and_writes_answered_503() {
    let token = scim2ldap::http::new_token();
    let mut daemon = Daemon::start(tempfile::tempdir().unwrap(), |text| {
        text.replace(TOKEN_LINE, &token.hash_line)
    })
    .await;
    // The accept loop beats every second.
    let max_age = Duration::from_secs(4);
    assert_eq!(daemon.control.health(max_age), Ok(()));
    let client = reqwest::Client::new();
    let readyz = || client.get(format!("http://{}/readyz", daemon.addr)).send();
    daemon.slapd.stop().unwrap();
    // The daemon pings the directory every 5 s: within 10 s a health that followed the
    // directory's pings (as it once did) would have gone stale under a 4 s limit.
    let outage = std::time::Instant::now();
    while outage.elapsed() < Duration::from_secs(10) {
        assert_eq!(daemon.control.health(max_age), Ok(()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(readyz().await.unwrap().status().as_u16(), 503);
    let write = client
        .post(format!("http://{}/scim/v2/Users", daemon.addr))
        .bearer_auth(&token.plaintext)
        .json(&user_body("outage", "Out", "Age"))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status().as_u16(), 503);
    assert!(write.headers().contains_key("retry-after"));
    daemon.slapd.restart().unwrap();
    let mut ready = 503;
    for _ in 0..150 {
        ready = readyz().await.unwrap().status().as_u16();
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200);
    assert_eq!(daemon.control.health(max_age), Ok(()));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_rate_requests_get_429_with_retry_after_and_a_scim_error() {
    let server = TestServer::start_with(|text| {
        *text = text.replace(
            "base_path = \"/scim/v2\"\n",
            "base_path = \"/scim/v2\"\nrate_limit_per_second = 1\nrate_limit_burst = 3\n",
        );
    })
    .await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..8 {
        let reply = server.get("/Schemas").await;
        statuses.push(reply.status.as_u16());
        if reply.status.as_u16() == 429 {
            limited = Some(reply);
        }
    }
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 3,
        "{statuses:?}"
    );
    let limited = limited.unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after));
    assert_eq!(
        limited.body["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:Error"
    );
    assert_eq!(limited.body["status"], "429");
    // Health checks are not limited.
    let health = reqwest::get(format!("{}/healthz", server.root))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_valid_token_do_not_use_up_the_rate_limit() {
    let server = TestServer::start_with(|text| {
        *text = text.replace(
            "base_path = \"/scim/v2\"\n",
            "base_path = \"/scim/v2\"\nrate_limit_per_second = 1\nrate_limit_burst = 3\n",
        );
    })
    .await;
    // A flood of wrong tokens from many clients (each below the per-client throttle), through
    // a proxy on this host.
    let client = reqwest::Client::new();
    for n in 0..20 {
        let reply = client
            .get(format!("{}/Users", server.base))
            .header("x-forwarded-for", format!("203.0.113.{n}"))
            .bearer_auth("not-the-token")
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), 401);
    }
    // The IdP's requests still get the whole burst.
    for _ in 0..3 {
        assert_eq!(server.get("/Users").await.status.as_u16(), 200);
    }
}

/// The binary run as `scim2ldap serve`, its stderr (JSON lines) collected.
struct Process {
    child: std::process::Child,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Process {
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`; returns it.
    async fn wait_for(&self, needle: &str) -> String {
        // Up to 30 s, as for a daemon's start: a debug build on a loaded machine is slow.
        for _ in 0..600 {
            if let Some(line) = self.lines().into_iter().find(|line| line.contains(needle)) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no log line with {needle:?}:\n{}", self.lines().join("\n"));
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_serve(config_path: &Path) -> Process {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_scim2ldap"))
        .args(["serve", "--config"])
        .arg(config_path)
        .env("SCIM2LDAP__LOG__FORMAT", "json")
        .env("SCIM2LDAP__LOG__LEVEL", "info")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    Process { child, lines }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_records_name_the_token_and_attributes_and_sighup_rotates_tokens() {
    let slapd = Slapd::start(SlapdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let okta = scim2ldap::http::new_token();
    let legacy = scim2ldap::http::new_token();
    let rotated = scim2ldap::http::new_token();
    let text = scim2ldap::demo::config_toml(
        &slapd,
        "127.0.0.1:0".parse().unwrap(),
        TOKEN_LINE,
        &dir.path().join("cache.db"),
    );
    let text = text.replace(
        &token_setting(),
        &format!(
            "bearer_tokens = [\"{}\"]\ntokens = {{ okta = \"{}\" }}",
            legacy.hash_line, okta.hash_line
        ),
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, &text).unwrap();
    let process = spawn_serve(&config_path);
    let serving: Value = serde_json::from_str(&process.wait_for("serving SCIM").await).unwrap();
    let base = format!("http://{}/scim/v2", serving["address"].as_str().unwrap());
    let client = reqwest::Client::new();

    let password = "Audit-Secret-Pw-9182";
    let mut body = user_body("audit.user", "Auditgiven", "Auditfamily");
    body["password"] = Value::from(password);
    let created: Value = client
        .post(format!("{base}/Users"))
        .bearer_auth(&okta.plaintext)
        .header("content-type", "application/scim+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let patched = client
        .patch(format!("{base}/Users/{id}"))
        .bearer_auth(&legacy.plaintext)
        .header("content-type", "application/scim+json")
        .body(
            serde_json::json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "path": "title", "value": "Auditor-Title-Value"}]
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status().as_u16(), 200);

    process.wait_for("\"operation\":\"patch\"").await;
    let audits: Vec<Value> = process
        .lines()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| record["target"] == "scim2ldap::audit")
        .collect();
    let create = audits
        .iter()
        .find(|record| record["operation"] == "create")
        .unwrap_or_else(|| panic!("no create record: {audits:?}"));
    assert_eq!(create["token"], "okta");
    assert_eq!(create["resource_type"], "User");
    assert_eq!(create["resource_id"], id.as_str());
    assert_eq!(create["result"], "ok");
    let attributes = create["attributes"].as_str().unwrap();
    for name in ["uid", "givenName", "sn", "mail", "userPassword"] {
        assert!(attributes.split(',').any(|a| a == name), "{attributes}");
    }
    let patch = audits
        .iter()
        .find(|record| record["operation"] == "patch")
        .unwrap();
    assert_eq!(patch["token"], "token-1");
    assert_eq!(patch["attributes"], "title");
    // Lines logged while a request runs carry the request's span: its id and the resource's.
    assert_eq!(patch["span"]["name"], "request");
    assert_eq!(patch["span"]["request_id"], patch["request_id"]);
    assert_eq!(patch["span"]["resource_id"], id.as_str());
    // No value, password or token anywhere in the log.
    let log = process.lines().join("\n");
    for secret in [
        password,
        "Auditgiven",
        "Auditor-Title-Value",
        okta.plaintext.as_str(),
        legacy.plaintext.as_str(),
        okta.hash_line.as_str(),
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    // Exactly one request line per request, with its route template and status (the PATCH's
    // is written after its audit record).
    process.wait_for("\"status\":200").await;
    let request_lines: Vec<Value> = process
        .lines()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| record["message"] == "request")
        .collect();
    assert_eq!(request_lines.len(), 2, "{request_lines:?}");
    assert_eq!(request_lines[1]["span"]["route"], "/Users/{id}");
    assert_eq!(request_lines[1]["span"]["request_id"], patch["request_id"]);
    assert_eq!(request_lines[1]["token"], "token-1");
    assert_eq!(request_lines[1]["status"], 200);

    // Rotation: a config change and SIGHUP, no restart.
    std::fs::write(
        &config_path,
        text.replace(
            &format!("okta = \"{}\"", okta.hash_line),
            &format!("okta-next = \"{}\"", rotated.hash_line),
        ),
    )
    .unwrap();
    process.signal("HUP");
    process.wait_for("configuration reloaded").await;
    let status = |token: String| {
        let client = client.clone();
        let url = format!("{base}/Schemas");
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(okta.plaintext.clone()).await, 401);
    assert_eq!(status(rotated.plaintext.clone()).await, 200);
    assert_eq!(status(legacy.plaintext.clone()).await, 200);

    // A broken file on SIGHUP is logged and changes nothing.
    std::fs::write(&config_path, "[auth]\nbearer_tokens = 7\n").unwrap();
    process.signal("HUP");
    process.wait_for("reload refused").await;
    assert_eq!(status(rotated.plaintext.clone()).await, 200);

    // SIGTERM drains and exits cleanly.
    process.signal("TERM");
    let mut process = process;
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = process.child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exited.expect("exits after SIGTERM").success());
}

#[test]
fn the_install_script_puts_every_file_in_place_with_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install");
    let output = std::process::Command::new(&script)
        .arg("--root")
        .arg(root.path())
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_scim2ldap"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (path, mode) in [
        ("usr/bin/scim2ldap", 0o755),
        ("usr/lib/systemd/system/scim2ldap.service", 0o644),
        ("usr/lib/sysusers.d/scim2ldap.conf", 0o644),
        ("usr/lib/tmpfiles.d/scim2ldap.conf", 0o644),
        ("usr/share/doc/scim2ldap/config.example.toml", 0o644),
        ("etc/scim2ldap", 0o750),
        ("etc/scim2ldap/config.toml", 0o640),
        ("etc/scim2ldap/bearer_tokens", 0o600),
    ] {
        let meta =
            std::fs::metadata(root.path().join(path)).unwrap_or_else(|err| panic!("{path}: {err}"));
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path}");
    }
    let unit =
        std::fs::read_to_string(root.path().join("usr/lib/systemd/system/scim2ldap.service"))
            .unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/scim2ldap serve"));
    // A configuration error (exit 78) leaves the unit failed; nothing before ExecStart can
    // fail and restart it in a loop.
    assert!(unit.contains("\nRestartPreventExitStatus=78\n"));
    assert!(!unit.contains("\nExecStartPre="));
    // An existing config is kept on upgrade.
    std::fs::write(root.path().join("etc/scim2ldap/config.toml"), "# edited\n").unwrap();
    let again = std::process::Command::new(&script)
        .arg("--root")
        .arg(root.path())
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_scim2ldap"))
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/scim2ldap/config.toml")).unwrap(),
        "# edited\n"
    );
}

#[test]
fn the_example_config_names_only_known_keys_and_loads_once_secrets_are_given() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/config.example.toml");
    let env: std::collections::BTreeMap<String, String> = [
        (
            "SCIM2LDAP__AUTH__TOKENS__OKTA",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ),
        ("SCIM2LDAP__LDAP__BIND_PASSWORD", "example-bind-password"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let raw = scim2ldap::config::load_raw(&path, Some(env)).expect("only known keys");
    let config = scim2ldap::config::Config::from_raw(raw, &Default::default()).expect("valid");
    assert_eq!(&*config.auth.tokens[0].name, "okta");
    assert!(config.server.rate_limit.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_readiness_probes_costs_the_directory_one_search_a_second() {
    let server = TestServer::start().await;
    let searches = r#"scim2ldap_directory_operations_total{operation="search",result="ok"}"#;
    let before = sample(&server.metrics().await, searches);
    let client = reqwest::Client::new();
    let probes: Vec<_> = (0..40)
        .map(|_| {
            let request = client.get(format!("{}/readyz", server.root)).send();
            tokio::spawn(request)
        })
        .collect();
    for probe in probes {
        assert_eq!(probe.await.unwrap().unwrap().status().as_u16(), 200);
    }
    let after = sample(&server.metrics().await, searches);
    // A few more than one: the daemon's own pings (every 5 s) and a second that may end
    // between probes.
    assert!(
        after - before <= 5.0,
        "{} searches for 40 probes",
        after - before
    );
}

/// A command-line mistake exits 1 like any other error (2 is `reconcile`'s "differed"), and
/// help and version exit 0.
#[test]
fn usage_errors_exit_1_not_the_drift_code() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_scim2ldap"))
            .args(args)
            .output()
            .unwrap()
    };
    for args in [
        &["reconcile", "--bogus"][..],
        &["reconcile"][..],
        &["reconcile", "--config", "x", "--dry-run", "--rebuild-cache"][..],
    ] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
    assert_eq!(run(&["--help"]).status.code(), Some(0));
    assert_eq!(run(&["--version"]).status.code(), Some(0));
}

/// A configuration that does not load or validate makes `serve` exit 78 (EX_CONFIG), the status
/// the unit's `RestartPreventExitStatus=` names, so that systemd does not restart it in a loop.
#[test]
fn serve_exits_78_on_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, "[server]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n").unwrap();
    let missing = dir.path().join("missing.toml");
    for path in [&invalid, &missing] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_scim2ldap"))
            .arg("serve")
            .arg("--config")
            .arg(path)
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(78),
            "{}: {stderr}",
            path.display()
        );
        assert!(stderr.contains("invalid configuration"), "{stderr}");
    }
}

/// Listening beyond loopback without TLS is logged as a warning at start (tokens and user
/// passwords would cross the network in clear); on loopback, behind a TLS proxy, it is not.
#[tokio::test(flavor = "multi_thread")]
async fn listening_beyond_loopback_without_tls_is_warned_about() {
    let mut server = TestServer::start().await;
    server.stop_daemon().await;
    let log_dir = tempfile::tempdir().unwrap();
    for (listen, warned) in [("0.0.0.0", true), ("127.0.0.1", false)] {
        let address = crate::daemon::free_addr();
        let log_path = log_dir.path().join(format!("{listen}.log"));
        let bind = format!("{listen}:{}", address.port());
        let mut daemon = crate::daemon::Daemon::spawn(
            &server.config_path,
            address,
            &[("SCIM2LDAP__SERVER__LISTEN", bind.as_str())],
            std::fs::File::create(&log_path).unwrap().into(),
        );
        daemon.wait_ready().await;
        daemon.kill();
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert_eq!(
            log.contains("no TLS is configured"),
            warned,
            "{listen}:\n{log}"
        );
    }
}
