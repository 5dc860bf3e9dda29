//! The daemon as a subprocess (the built binary), for tests that kill it or read its stderr.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `scim2ldap serve` process on the config of a `TestServer`.
pub struct Daemon {
    pub child: Child,
    pub listen: SocketAddr,
    pub base: String,
}

/// A free loopback address (taken, then released for the daemon to bind).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Daemon {
    /// Starts `scim2ldap serve --config config` on `listen` with extra environment `env`,
    /// its stderr going to `stderr`.
    pub fn spawn(config: &Path, listen: SocketAddr, env: &[(&str, &str)], stderr: Stdio) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_scim2ldap"));
        command
            .args(["serve", "--config"])
            .arg(config)
            .env("SCIM2LDAP__SERVER__LISTEN", listen.to_string())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (name, value) in env {
            command.env(name, value);
        }
        Daemon {
            child: command.spawn().unwrap(),
            listen,
            base: format!("http://{listen}/scim/v2"),
        }
    }

    /// `spawn` on a free address, without extra environment or stderr, once ready.
    pub async fn ready(config: &Path) -> Daemon {
        let mut daemon = Daemon::spawn(config, free_addr(), &[], Stdio::null());
        daemon.wait_ready().await;
        daemon
    }

    /// Waits until `/readyz` answers 200: polls an external process, with a deadline.
    pub async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("daemon exited before it was ready: {status}");
            }
            let ready = client
                .get(format!("http://{}/readyz", self.listen))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|reply| reply.status() == 200);
            if ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("daemon not ready within 30 s");
    }

    /// The metrics text, read with `token`.
    pub async fn metrics(&self, token: &str) -> String {
        reqwest::Client::new()
            .get(format!("http://{}/metrics", self.listen))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
