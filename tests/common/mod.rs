//! Test support: recording mock upstreams ([`upstream`]) and an in-process gateway on loopback.
#![allow(dead_code)]

pub mod upstream;

use keygate::keys::secret;
use keygate::server::RunningGateway;
use std::path::{Path, PathBuf};

/// A gateway running in this test process on a free loopback port, with its policy in a temp dir.
pub struct TestGateway {
    pub running: Option<RunningGateway>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub port: u16,
}

impl TestGateway {
    /// The audit lines so far (`state/audit.jsonl`), after the accounting thread has written what
    /// it was handed.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        self.handles().recorder.flush();
        let path = self.dir.path().join("state/audit.jsonl");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }

    /// Waits until `n` requests are booked: the gateway's `logging` phase runs a moment after the
    /// client has its answer (or has gone).
    pub async fn booked(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let lines = self.audit_lines();
            if lines.len() >= n || std::time::Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Writes `config` (everything but `listen`/`keys_dir`, which are added) and `keys`
    /// (`(file stem, yaml)`), then starts the gateway.
    pub fn start(config: &str, keys: &[(String, String)]) -> TestGateway {
        let gw = Self::prepare(config, keys);
        gw.boot()
    }

    /// Like `start`, but does not boot: for tests that edit files first.
    pub fn prepare(config: &str, keys: &[(String, String)]) -> TestGateway {
        Self::prepare_in(tempfile::tempdir().expect("tempdir"), config, keys)
    }

    /// Like `prepare`, in a temp directory in memory where the system has one (`/dev/shm`):
    /// for policies of many key files, whose writing a loaded disk would make take minutes.
    pub fn prepare_in_memory(config: &str, keys: &[(String, String)]) -> TestGateway {
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("tempdir");
        Self::prepare_in(dir, config, keys)
    }

    fn prepare_in(dir: tempfile::TempDir, config: &str, keys: &[(String, String)]) -> TestGateway {
        let port = upstream::free_port();
        let keys_dir = dir.path().join("keys.d");
        std::fs::create_dir_all(&keys_dir).unwrap();
        for (stem, yaml) in keys {
            std::fs::write(keys_dir.join(format!("{stem}.yaml")), yaml).unwrap();
        }
        let config_path = dir.path().join("keygate.yaml");
        std::fs::write(
            &config_path,
            format!("listen: 127.0.0.1:{port}\nkeys_dir: keys.d\n{config}"),
        )
        .unwrap();
        TestGateway {
            running: None,
            dir,
            config_path,
            port,
        }
    }

    pub fn boot(self) -> TestGateway {
        self.boot_with_admin(None)
    }

    /// Boots with the admin API enabled under `token` (`NAME:TOKEN` or a bare token).
    pub fn boot_with_admin(mut self, token: Option<&str>) -> TestGateway {
        let token = token.map(|t| keygate::admin::AdminToken::parse(t).expect("admin token"));
        match RunningGateway::start(&self.config_path, token) {
            Ok(r) => self.running = Some(r),
            Err(e) => panic!("gateway failed to start: {e}"),
        }
        self
    }

    /// Boots with the admin API enabled under these tokens, written as `KEYGATE_ADMIN_TOKENS`
    /// (`NAME:ROLE:TOKEN,…`).
    pub fn boot_with_admin_tokens(mut self, tokens: &str) -> TestGateway {
        let tokens = keygate::admin::AdminTokens::parse(Some(tokens), None).expect("admin tokens");
        match RunningGateway::start_with_tokens(&self.config_path, tokens) {
            Ok(r) => self.running = Some(r),
            Err(e) => panic!("gateway failed to start: {e}"),
        }
        self
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The port of the admin listener the policy's `admin_listen` names.
    pub fn admin_port(&self) -> u16 {
        let running = self.running.as_ref().expect("a running gateway");
        let listen = running.store.load().startup.admin_listen;
        listen.expect("the policy sets admin_listen").port()
    }

    /// `http://127.0.0.1:PORT` of the admin listener.
    pub fn admin_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port())
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys.d")
    }

    /// The running gateway's reloader, accounting, limits and upstream state.
    pub fn handles(&self) -> &keygate::server::Handles {
        &self
            .running
            .as_ref()
            .expect("the gateway is running")
            .handles
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
        }
    }
}

/// A fresh secret and the YAML of a key file for it; `extra` is appended verbatim.
pub fn key_file(workload: &str, extra: &str) -> (String, String) {
    let s = secret::generate().expect("random");
    let yaml = format!(
        "hash: \"{}\"\nhint: \"{}\"\nworkload: {workload}\n{extra}",
        s.digest, s.hint
    );
    (s.secret, yaml)
}

/// The path of the `keygate` binary built for this test run.
pub fn keygate_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_keygate"))
}

/// Waits, 20 s at most, until a `keygate serve` process the test started accepts connections on
/// `port`.
pub fn wait_until_listening(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A reqwest client that never pools (each test controls its own connections).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The body of a GET of `url` (a metrics scrape, say), as text.
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Reads an OpenAI-shaped error body and returns `(status, type, code)`.
pub async fn error_of(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "error responses are JSON"
    );
    let v: serde_json::Value = resp.json().await.expect("error body is JSON");
    let e = &v["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error has a message: {v}"
    );
    assert!(e.get("param").is_some(), "error has a param field: {v}");
    (
        status,
        e["type"].as_str().unwrap_or_default().to_owned(),
        e["code"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The policy most tests need: provider `p1` at `upstream`, model `m1`, workload `app` allowed to
/// use it; `extra` is appended verbatim.
pub fn one_model_policy(upstream: &str, extra: &str) -> String {
    format!(
        r#"providers:
  p1:
    format: openai
    api_key: sk-real
    endpoints:
      - {{url: "{upstream}"}}
models:
  m1:
    provider: p1
workloads:
  app:
    models: [m1]
{extra}"#
    )
}

/// The body of a response sent whole, not chunked, checked against its `Content-Length`.
pub async fn body_with_its_length(resp: reqwest::Response) -> bytes::Bytes {
    assert!(
        resp.headers().get("transfer-encoding").is_none(),
        "sent chunked"
    );
    let length: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), length);
    body
}

/// POSTs `body` as JSON to `url` with `secret` as the Bearer key.
pub async fn post_json(url: &str, secret: &str, body: &serde_json::Value) -> reqwest::Response {
    client()
        .post(url)
        .bearer_auth(secret)
        .json(body)
        .send()
        .await
        .expect("request sent")
}
