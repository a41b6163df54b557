//! The admin surface against failures and hostile callers: a management audit log that cannot be
//! written (no issued secret may be lost), out-of-range grace periods and expiries, weak or
//! ambiguous admin tokens, and guessed admin tokens.

mod common;

use common::upstream::{free_port, MockUpstream, Reply};
use common::{client, key_file, keygate_bin, TestGateway};
use keygate::keys::secret::KeyDigest;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `NAME:TOKEN`, and the token alone as clients send it.
const ADMIN_TOKEN: &str = "ops:hardening-admin-token-0123";
const BEARER: &str = "hardening-admin-token-0123";

/// A policy with the admin listener on a free port; `extra` is appended.
fn policy(upstream: &str, extra: &str) -> String {
    format!(
        "admin_listen: 127.0.0.1:{}\n{}",
        free_port(),
        common::one_model_policy(upstream, extra)
    )
}

async fn admin_call(
    gw: &TestGateway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client()
        .request(method, format!("{}{path}", gw.admin_base()))
        .bearer_auth(BEARER);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn chat_status(gw: &TestGateway, secret: &str) -> u16 {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// A management audit file that cannot even be opened: its parent is a regular file.
fn audit_under_a_file(dir: &Path) -> String {
    let blocker = dir.join("blocker");
    std::fs::write(&blocker, "not a directory").unwrap();
    format!(
        "management_audit_file: {}\n",
        blocker.join("audit.jsonl").display()
    )
}

/// A management audit file that opens, but whose every write fails (ENOSPC).
const AUDIT_WRITES_FAIL: &str = "management_audit_file: /dev/full\n";

/// Boots a gateway with the admin API, one existing key `old` (its secret returned) and `extra`
/// policy lines built from the gateway's directory.
async fn admin_gateway(
    up: &MockUpstream,
    extra: impl FnOnce(&Path) -> String,
) -> (TestGateway, String) {
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::prepare("", &[("old".to_owned(), yaml)]);
    let lines = extra(gw.dir.path());
    std::fs::write(
        &gw.config_path,
        format!(
            "listen: 127.0.0.1:{}\nkeys_dir: keys.d\n{}",
            gw.port,
            policy(&up.url(), &lines)
        ),
    )
    .unwrap();
    let gw = gw.boot_with_admin(Some(ADMIN_TOKEN));
    (gw, secret)
}

fn key_hash(gw: &TestGateway, id: &str) -> Option<String> {
    let text = std::fs::read_to_string(gw.keys_dir().join(format!("{id}.yaml"))).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("hash: "))
        .map(|h| h.trim_matches('"').to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_writes_refused_when_the_audit_log_cannot_be_opened_change_nothing() {
    use reqwest::Method;
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (gw, old_secret) = admin_gateway(&up, audit_under_a_file).await;
    let old_hash = key_hash(&gw, "old").unwrap();

    let (status, body) = admin_call(
        &gw,
        Method::POST,
        "/admin/keys",
        Some(json!({"id": "svc", "workload": "app"})),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "audit_log_unavailable", "{body}");
    assert!(
        !gw.keys_dir().join("svc.yaml").exists(),
        "no key file is left behind whose secret nobody has"
    );

    let (status, body) = admin_call(&gw, Method::POST, "/admin/keys/old/rotate", None).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "audit_log_unavailable", "{body}");
    assert_eq!(key_hash(&gw, "old").as_deref(), Some(old_hash.as_str()));
    assert_eq!(
        chat_status(&gw, &old_secret).await,
        200,
        "the key keeps its working secret"
    );

    let (status, body) = admin_call(&gw, Method::POST, "/admin/keys/old/pause", None).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(chat_status(&gw, &old_secret).await, 200, "not paused");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_returns_issued_secrets_when_the_audit_line_fails_after_the_write() {
    use reqwest::Method;
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (gw, old_secret) = admin_gateway(&up, |_| AUDIT_WRITES_FAIL.to_owned()).await;

    let (status, created) = admin_call(
        &gw,
        Method::POST,
        "/admin/keys",
        Some(json!({"id": "svc", "workload": "app"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("the secret is returned");
    assert!(
        created["warning"]
            .as_str()
            .is_some_and(|w| w.contains("management audit log")),
        "{created}"
    );
    assert_eq!(chat_status(&gw, secret).await, 200);

    let (status, rotated) = admin_call(&gw, Method::POST, "/admin/keys/old/rotate", None).await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().expect("the secret is returned");
    assert!(rotated["warning"].is_string(), "{rotated}");
    assert_eq!(chat_status(&gw, new_secret).await, 200);
    assert_eq!(chat_status(&gw, &old_secret).await, 401);

    let (status, paused) = admin_call(&gw, Method::POST, "/admin/keys/svc/pause", None).await;
    assert_eq!(status, 200, "{paused}");
    assert!(paused["warning"].is_string(), "{paused}");
    assert_eq!(paused["key"]["status"], "paused");
}

fn cli(args: &[&str], config: &Path) -> Output {
    Command::new(keygate_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("KEYGATE_CONFIG")
        .output()
        .expect("run keygate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A policy for the CLI tests (no gateway runs), with one key `old`; `extra` is appended.
fn cli_policy(extra: impl FnOnce(&Path) -> String) -> TestGateway {
    let (_, yaml) = key_file("app", "");
    let gw = TestGateway::prepare("", &[("old".to_owned(), yaml)]);
    let lines = extra(gw.dir.path());
    std::fs::write(
        &gw.config_path,
        format!(
            "listen: 127.0.0.1:{}\nkeys_dir: keys.d\n{}",
            gw.port,
            common::one_model_policy("http://127.0.0.1:9", &lines)
        ),
    )
    .unwrap();
    gw
}

#[test]
fn cli_never_loses_a_secret_it_wrote() {
    // The audit log cannot be opened: the change is refused before anything is written.
    let gw = cli_policy(audit_under_a_file);
    let old_hash = key_hash(&gw, "old").unwrap();
    let out = cli(
        &["keys", "create", "svc", "--workload", "app"],
        &gw.config_path,
    );
    assert!(!out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("management audit log"),
        "{}",
        text(&out.stderr)
    );
    assert!(!gw.keys_dir().join("svc.yaml").exists());
    let out = cli(&["keys", "rotate", "old"], &gw.config_path);
    assert!(!out.status.success(), "{}", text(&out.stderr));
    assert_eq!(key_hash(&gw, "old").as_deref(), Some(old_hash.as_str()));

    // The audit line fails after the key file is written: the secret is still printed.
    let gw = cli_policy(|_| AUDIT_WRITES_FAIL.to_owned());
    let out = cli(
        &["keys", "create", "svc", "--workload", "app"],
        &gw.config_path,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secret = text(&out.stdout).trim().to_owned();
    assert_eq!(
        key_hash(&gw, "svc"),
        Some(KeyDigest::of(&secret).to_string())
    );
    assert!(
        text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(&["keys", "rotate", "old"], &gw.config_path);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secret = text(&out.stdout).trim().to_owned();
    assert_eq!(
        key_hash(&gw, "old"),
        Some(KeyDigest::of(&secret).to_string())
    );
}

#[test]
fn cli_bounds_grace_and_expiry_with_a_clear_error() {
    let gw = cli_policy(|_| String::new());
    let old_hash = key_hash(&gw, "old").unwrap();
    for grace in ["1000000000y", "100000y", "31d"] {
        let out = cli(
            &["keys", "rotate", "old", "--grace", grace],
            &gw.config_path,
        );
        assert_eq!(out.status.code(), Some(1), "{grace}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("at most 30 days"),
            "{grace}: {}",
            text(&out.stderr)
        );
        assert_eq!(key_hash(&gw, "old").as_deref(), Some(old_hash.as_str()));
    }
    let out = cli(
        &["keys", "rotate", "old", "--grace", "30d"],
        &gw.config_path,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    for expires in ["2001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"] {
        let out = cli(
            &[
                "keys",
                "create",
                "svc",
                "--workload",
                "app",
                "--expires",
                expires,
            ],
            &gw.config_path,
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "{expires}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("expiry must be"),
            "{expires}: {}",
            text(&out.stderr)
        );
        assert!(!gw.keys_dir().join("svc.yaml").exists());
    }
    let out = cli(
        &[
            "keys",
            "create",
            "svc",
            "--workload",
            "app",
            "--expires",
            "2999-01-01T00:00:00Z",
        ],
        &gw.config_path,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_bounds_grace_and_expiry_with_a_clear_error() {
    use reqwest::Method;
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (gw, old_secret) = admin_gateway(&up, |_| String::new()).await;
    for grace in ["1000000000y", "100000y", "31d"] {
        let (status, body) = admin_call(
            &gw,
            Method::POST,
            "/admin/keys/old/rotate",
            Some(json!({ "grace": grace })),
        )
        .await;
        assert_eq!(status, 400, "{grace}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("at most 30 days")),
            "{body}"
        );
    }
    assert_eq!(chat_status(&gw, &old_secret).await, 200, "not rotated");

    for expires_at in [
        "2001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "+100000-01-01T00:00:00Z",
    ] {
        let (status, body) = admin_call(
            &gw,
            Method::POST,
            "/admin/keys",
            Some(json!({"id": "svc", "workload": "app", "expires_at": expires_at})),
        )
        .await;
        assert_eq!(status, 400, "{expires_at}: {body}");
        assert!(!gw.keys_dir().join("svc.yaml").exists());
    }
}

/// Runs `keygate serve` with `KEYGATE_ADMIN_TOKEN=token`; returns its exit code and stderr, or
/// None if it was still running after `within` (then it is killed).
fn serve_with_token(token: &str, within: Duration) -> Option<(Option<i32>, String)> {
    let gw = TestGateway::prepare(
        &format!(
            "admin_listen: 127.0.0.1:{}\n{}",
            free_port(),
            common::one_model_policy("http://127.0.0.1:9", "")
        ),
        &[],
    );
    let mut child = Command::new(keygate_bin())
        .args(["serve", "--config"])
        .arg(&gw.config_path)
        .env("KEYGATE_ADMIN_TOKEN", token)
        .env_remove("KEYGATE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keygate");
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return Some((status.code(), text(&out.stderr)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    None
}

#[test]
fn weak_or_ambiguous_admin_tokens_are_refused_at_start() {
    for (value, says) in [
        ("ops:short-token", "at least 24"),
        ("0123456789abcdefghijklm", "at least 24"),
        ("ops:", "at least 24"),
        ("ops.team:0123456789abcdefghijklmnop", "NAME:TOKEN"),
        (":0123456789abcdefghijklmnop", "NAME:TOKEN"),
        ("ops:0123456789 abcdefghijklmnop", "printable"),
    ] {
        let Some((code, stderr)) = serve_with_token(value, Duration::from_secs(20)) else {
            panic!("keygate served with KEYGATE_ADMIN_TOKEN={value:?}");
        };
        assert_eq!(code, Some(1), "{value:?}: {stderr}");
        assert!(
            stderr.contains("KEYGATE_ADMIN_TOKEN") && stderr.contains(says),
            "{value:?}: {stderr}"
        );
        if let Some((_, token)) = value.split_once(':') {
            assert!(
                token.len() < 4 || !stderr.contains(token),
                "the token is never printed: {stderr}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_containing_a_colon_is_written_with_its_name() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let gw = TestGateway::prepare(&policy(&up.url(), ""), &[])
        .boot_with_admin(Some("admin:colon:in-the-token-0123456789"));
    let base = gw.admin_base();
    for (token, status) in [
        ("colon:in-the-token-0123456789", 200),
        ("admin:colon:in-the-token-0123456789", 401),
        ("in-the-token-0123456789", 401),
    ] {
        let resp = client()
            .get(format!("{base}/admin/keys"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{token}");
    }
}

async fn admin_get_from(base: &str, from: &str, token: Option<&str>) -> reqwest::Response {
    let from: IpAddr = from.parse().unwrap();
    let client = reqwest::Client::builder()
        .local_address(from)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut req = client.get(format!("{base}/admin/keys"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_admin_logins_are_throttled_per_address() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let gw = TestGateway::prepare(
        &policy(&up.url(), "auth_guard: {max_failures: 3, per: 1m}\n"),
        &[],
    )
    .boot_with_admin(Some(ADMIN_TOKEN));
    let base = gw.admin_base();

    // a missing token guesses nothing and is not counted
    for token in [
        Some("wrong-token"),
        None,
        Some("also-wrong"),
        None,
        Some("wrong"),
    ] {
        let resp = admin_get_from(&base, "127.0.0.1", token).await;
        assert_eq!(resp.status().as_u16(), 401, "{token:?}");
    }
    let resp = admin_get_from(&base, "127.0.0.1", Some("wrong-again")).await;
    assert_eq!(resp.status().as_u16(), 429);
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after in seconds");
    assert!(retry_after > 0);
    let (status, kind, code) = common::error_of(resp).await;
    assert_eq!(
        (status, kind.as_str(), code.as_str()),
        (429, "rate_limit_error", "rate_limit_exceeded")
    );

    // the right token is not throttled, even from the offending address
    let resp = admin_get_from(&base, "127.0.0.1", Some(BEARER)).await;
    assert_eq!(resp.status().as_u16(), 200);
    // another address is not affected
    let resp = admin_get_from(&base, "127.0.0.2", Some("wrong-token")).await;
    assert_eq!(resp.status().as_u16(), 401);
}
