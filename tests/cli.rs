//! The `keygate` command line: `check` on good and bad policies, `keys create`, `keys list` and
//! `keys update`.

mod common;

use common::upstream::{MockUpstream, Reply};
use common::{client, keygate_bin, TestGateway};
use std::path::Path;
use std::process::{Command, Output};

const BASE: &str = r#"providers:
  p1:
    format: openai
    api_key: sk-real
    endpoints:
      - {url: "http://127.0.0.1:9", weight: 1}
models:
  m1:
    provider: p1
workloads:
  w1:
    models: [m1]
"#;

const GOOD_HASH: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn run(args: &[&str], config: &Path) -> Output {
    Command::new(keygate_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("KEYGATE_CONFIG")
        .output()
        .expect("run keygate")
}

fn check(config: &str, keys: &[(&str, &str)]) -> (bool, String) {
    let gw = TestGateway::prepare(
        config,
        &keys
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>(),
    );
    let out = run(&["check"], &gw.config_path);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// BASE with `lines` added to provider p1.
fn with_provider_lines(lines: &str) -> String {
    BASE.replace("weight: 1}\n", &format!("weight: 1}}\n{lines}"))
}

fn key(workload: &str, extra: &str) -> String {
    format!("hash: \"{GOOD_HASH}\"\nworkload: {workload}\n{extra}")
}

#[test]
fn check_accepts_a_good_policy_and_the_shipped_one() {
    let (ok, out) = check(BASE, &[("k1", &key("w1", ""))]);
    assert!(ok, "{out}");
    assert!(out.contains("ok"), "{out}");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/keygate.yaml");
    let out = run(&["check"], &shipped);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A bad-policy case: its name, the main file, the key files, and what the report must say.
type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, Vec<&'a str>);

/// Each bad-policy case: what to write, and what the report must say (file, field, reason).
#[test]
fn check_reports_every_bad_policy_case_with_file_and_field() {
    let cases: Vec<Case> = vec![
        (
            "unknown field",
            format!("{BASE}colour: blue\n"),
            vec![],
            vec!["keygate.yaml", "unknown field `colour`"],
        ),
        (
            "unknown nested field",
            BASE.replace("api_key: sk-real", "api_key: sk-real\n    apikey: typo"),
            vec![],
            vec!["keygate.yaml", "providers", "unknown field `apikey`"],
        ),
        (
            "yaml syntax with line",
            format!("{BASE}trusted_proxies: [unclosed\n"),
            vec![],
            vec!["keygate.yaml", "line 15"],
        ),
        (
            "duplicate section",
            format!("{BASE}workloads: {{}}\n"),
            vec![],
            vec!["keygate.yaml", "duplicate field `workloads`"],
        ),
        (
            "key with unknown workload",
            BASE.to_owned(),
            vec![("k1", key("nope", ""))],
            vec!["k1.yaml", "workload", "unknown workload `nope`"],
        ),
        (
            "key with unknown model",
            BASE.to_owned(),
            vec![("k1", key("w1", "models: [ghost]\n"))],
            vec!["k1.yaml", "models[0]", "unknown model `ghost`"],
        ),
        (
            "workload with unknown model",
            BASE.replace("models: [m1]", "models: [m1, ghost]"),
            vec![],
            vec![
                "keygate.yaml",
                "workloads.w1.models[1]",
                "unknown model `ghost`",
            ],
        ),
        (
            "model with unknown provider",
            BASE.replace("provider: p1", "provider: p9"),
            vec![],
            vec![
                "keygate.yaml",
                "models.m1.provider",
                "unknown provider `p9`",
            ],
        ),
        (
            "zero requests in a window",
            BASE.to_owned(),
            vec![("k1", key("w1", "rate_limits: [{requests: 0, per: 1m}]\n"))],
            vec!["k1.yaml", "rate_limits[0].requests", "greater than zero"],
        ),
        (
            "window longer than 30 days",
            BASE.to_owned(),
            vec![("k1", key("w1", "rate_limits: [{tokens: 10, per: 31d}]\n"))],
            vec!["k1.yaml", "rate_limits[0].per", "outside 1s to 30d"],
        ),
        (
            "two windows of one kind and length",
            BASE.to_owned(),
            vec![(
                "k1",
                key(
                    "w1",
                    "rate_limits:\n  - {requests: 10, per: 1m}\n  - {tokens: 10, per: 1m}\n  - {requests: 20, per: 60s}\n",
                ),
            )],
            vec!["k1.yaml", "rate_limits[2]", "repeats", "rate_limits[0]"],
        ),
        (
            "malformed CIDR",
            BASE.to_owned(),
            vec![("k1", key("w1", "allowed_ips: [10.0.0.0/33]\n"))],
            vec!["k1.yaml", "allowed_ips[0]", "not a CIDR"],
        ),
        (
            "negative concurrency cap on a workload",
            BASE.replace("models: [m1]", "models: [m1]\n    max_concurrent: -1"),
            vec![],
            vec!["keygate.yaml", "workloads.w1.max_concurrent", "above zero"],
        ),
        (
            "two keys with one hash",
            BASE.to_owned(),
            vec![("k1", key("w1", "")), ("k2", key("w1", ""))],
            vec!["k2.yaml", "hash", "same hash"],
        ),
        (
            "two keys with one id",
            BASE.to_owned(),
            vec![
                ("k1", key("w1", "")),
                (
                    "list",
                    format!(
                        "- id: k1\n  hash: \"sha256:{}\"\n  workload: w1\n",
                        "2".repeat(64)
                    ),
                ),
            ],
            vec!["list.yaml", "[0].id", "also defined"],
        ),
        (
            "malformed hash",
            BASE.to_owned(),
            vec![("k1", key("w1", "").replace(GOOD_HASH, "sha256:abc"))],
            vec!["k1.yaml", "hash", "64 hex"],
        ),
        (
            "unset variable",
            BASE.replace("sk-real", "${KEYGATE_TEST_SURELY_UNSET_VAR}"),
            vec![],
            vec![
                "keygate.yaml",
                "providers.p1.api_key",
                "KEYGATE_TEST_SURELY_UNSET_VAR is not set",
            ],
        ),
        (
            "bad url",
            BASE.replace("http://127.0.0.1:9", "ftp://example.com"),
            vec![],
            vec!["keygate.yaml", "providers.p1.endpoints[0].url", "scheme"],
        ),
        (
            "zero body timeout",
            format!("server: {{body_timeout: 0s}}\n{BASE}"),
            vec![],
            vec!["keygate.yaml", "server.body_timeout", "greater than zero"],
        ),
        (
            "bad cidr",
            format!("trusted_proxies: [10.0.0.0/40]\n{BASE}"),
            vec![],
            vec!["keygate.yaml", "trusted_proxies[0]", "CIDR"],
        ),
        (
            "bad key status",
            BASE.to_owned(),
            vec![("k1", key("w1", "status: revoked\n"))],
            vec!["k1.yaml", "status", "unknown variant"],
        ),
        (
            "unknown key field",
            BASE.to_owned(),
            vec![("k1", key("w1", "secret: oops\n"))],
            vec!["k1.yaml", "unknown field `secret`"],
        ),
        (
            "unknown balance mode",
            with_provider_lines("    balance: random\n"),
            vec![],
            vec![
                "keygate.yaml",
                "providers.p1.balance",
                "unknown variant `random`",
            ],
        ),
        (
            "negative retries",
            with_provider_lines("    retries: -1\n"),
            vec![],
            vec!["keygate.yaml", "providers.p1.retries", "from 0 to 10"],
        ),
        (
            "too many retries",
            with_provider_lines("    retries: 99\n"),
            vec![],
            vec!["keygate.yaml", "providers.p1.retries", "from 0 to 10"],
        ),
        (
            "health check path without slash",
            with_provider_lines("    health_check: {path: health}\n"),
            vec![],
            vec![
                "keygate.yaml",
                "providers.p1.health_check.path",
                "starting with `/`",
            ],
        ),
        (
            "health check interval too short",
            with_provider_lines("    health_check: {path: /health, interval: 10ms}\n"),
            vec![],
            vec![
                "keygate.yaml",
                "providers.p1.health_check.interval",
                "between 100ms and 1h",
            ],
        ),
        (
            "health check threshold zero",
            with_provider_lines("    health_check: {path: /health, unhealthy_after: 0}\n"),
            vec![],
            vec![
                "keygate.yaml",
                "providers.p1.health_check.unhealthy_after",
                "from 1 to 100",
            ],
        ),
        (
            "health check unknown field",
            with_provider_lines("    health_check: {path: /health, timeout: 1s}\n"),
            vec![],
            vec!["keygate.yaml", "health_check", "unknown field `timeout`"],
        ),
        (
            "bad first_byte timeout",
            with_provider_lines("    timeouts: {first_byte: soon}\n"),
            vec![],
            vec![
                "keygate.yaml",
                "providers.p1.timeouts.first_byte",
                "not a duration",
            ],
        ),
        (
            "zero pool max_idle",
            with_provider_lines("    pool: {max_idle: 0}\n"),
            vec![],
            vec![
                "keygate.yaml",
                "providers.p1.pool.max_idle",
                "from 1 to 1000000",
            ],
        ),
        (
            "bad pool idle_timeout",
            with_provider_lines("    pool: {idle_timeout: forever}\n"),
            vec![],
            vec![
                "keygate.yaml",
                "providers.p1.pool.idle_timeout",
                "not a duration",
            ],
        ),
        (
            "pool unknown field",
            with_provider_lines("    pool: {max_connections: 4}\n"),
            vec![],
            vec!["keygate.yaml", "pool", "unknown field `max_connections`"],
        ),
        (
            "zero total timeout",
            with_provider_lines("    timeouts: {total: 0s}\n"),
            vec![],
            vec![
                "keygate.yaml",
                "providers.p1.timeouts.total",
                "greater than zero",
            ],
        ),
        (
            "first_byte longer than total",
            with_provider_lines("    timeouts: {first_byte: 2m, total: 1m}\n"),
            vec![],
            vec![
                "keygate.yaml",
                "providers.p1.timeouts.first_byte",
                "longer than `timeouts.total`",
            ],
        ),
        (
            "unknown fallback",
            BASE.replace(
                "    provider: p1\n",
                "    provider: p1\n    fallbacks: [ghost]\n",
            ),
            vec![],
            vec![
                "keygate.yaml",
                "models.m1.fallbacks[0]",
                "unknown model `ghost`",
            ],
        ),
        (
            "work_stealing not a boolean",
            format!("{BASE}server: {{work_stealing: sometimes}}\n"),
            vec![],
            vec!["keygate.yaml", "server.work_stealing"],
        ),
        (
            "self fallback",
            BASE.replace(
                "    provider: p1\n",
                "    provider: p1\n    fallbacks: [m1]\n",
            ),
            vec![],
            vec!["keygate.yaml", "models.m1.fallbacks[0]", "its own fallback"],
        ),
    ];
    let cases = cases.into_iter().chain(provider_format_cases());
    for (name, config, keys, expect) in cases {
        let keys: Vec<(&str, &str)> = keys.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let (ok, out) = check(&config, &keys);
        assert!(!ok, "{name}: check passed:\n{out}");
        for needle in expect {
            assert!(
                out.contains(needle),
                "{name}: report lacks `{needle}`:\n{out}"
            );
        }
    }
}

/// A second provider `p2` of `format` with model `m2`, beside BASE's OpenAI `p1`/`m1`.
fn with_second_provider(format: &str, provider_lines: &str, model_lines: &str) -> String {
    BASE.replace(
        "models:\n",
        &format!(
            "  p2:\n    format: {format}\n    api_key: k\n    endpoints:\n      - {{url: \"http://127.0.0.1:9\"}}\n{provider_lines}models:\n  m2:\n    provider: p2\n{model_lines}"
        ),
    )
}

/// The fields of the `anthropic` and `azure` formats, where they do not belong or are malformed.
fn provider_format_cases() -> Vec<Case<'static>> {
    vec![
        (
            "anthropic_version on an openai provider",
            with_provider_lines("    anthropic_version: \"2023-06-01\"\n"),
            vec![],
            vec!["providers.p1.anthropic_version", "format: anthropic"],
        ),
        (
            "deployment on an openai model",
            BASE.replace(
                "    provider: p1\n",
                "    provider: p1\n    deployment: d\n",
            ),
            vec![],
            vec!["models.m1.deployment", "format: azure"],
        ),
        (
            "a deployment that would break the path",
            with_second_provider("azure", "", "    deployment: a/b\n"),
            vec![],
            vec!["models.m2.deployment", "not a deployment name"],
        ),
        (
            "an api_version that would break the query",
            with_second_provider("azure", "", "    api_version: \"2024&x=1\"\n"),
            vec![],
            vec!["models.m2.api_version", "not an api-version"],
        ),
        (
            "a fallback on another API",
            with_second_provider("anthropic", "", "    fallbacks: [m1]\n"),
            vec![],
            vec!["models.m2.fallbacks[0]", "another API"],
        ),
        (
            "an unknown format",
            with_second_provider("gemini", "", ""),
            vec![],
            vec!["providers", "unknown variant `gemini`"],
        ),
    ]
}

#[test]
fn check_accepts_anthropic_and_azure_providers() {
    let config = with_second_provider(
        "anthropic",
        "    anthropic_version: \"2023-06-01\"\n",
        "    price: {input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3, cache_write_per_mtok: 3.75}\n",
    )
    .replace("models: [m1]", "models: [m1, m2, m3]")
    .replace(
        "models:\n  m2:",
        "models:\n  m3:\n    provider: p3\n    deployment: gpt4o-prod\n    api_version: v1\n  m2:",
    )
    .replace(
        "models:\n",
        "  p3:\n    format: azure\n    endpoints:\n      - {url: \"http://127.0.0.1:9\"}\nmodels:\n",
    );
    let (ok, out) = check(
        &config,
        &[(
            "k1",
            &key("w1", "operations: [messages, count_tokens, chat]\n"),
        )],
    );
    assert!(ok, "{out}");
}

#[test]
fn check_lists_every_problem_not_just_the_first() {
    let config = BASE
        .replace("provider: p1", "provider: p9")
        .replace("models: [m1]", "models: [ghost]");
    let (ok, out) = check(&config, &[("k1", &key("nope", ""))]);
    assert!(!ok);
    for needle in [
        "unknown provider `p9`",
        "unknown model `ghost`",
        "unknown workload `nope`",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn created_keys_work_and_list_never_shows_secrets() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let config = BASE.replace("http://127.0.0.1:9", &up.url());
    let gw = TestGateway::prepare(&config, &[]);
    let out = run(
        &[
            "keys",
            "create",
            "ci-bot",
            "--workload",
            "w1",
            "--owner",
            "team-ci",
            "--models",
            "m1",
            "--operations",
            "chat",
            "--expires",
            "2099-01-01T00:00:00Z",
        ],
        &gw.config_path,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let secret = stdout.trim();
    assert_eq!(stdout.lines().count(), 1, "stdout holds the secret alone");
    keygate::keys::secret::check_format(secret).expect("created secret has a valid checksum");
    let file = std::fs::read_to_string(gw.keys_dir().join("ci-bot.yaml")).unwrap();
    assert!(!file.contains(secret));
    assert!(file.contains(&keygate::keys::secret::KeyDigest::of(secret).to_string()));

    // creating the same id again is refused and leaves the file alone
    let again = run(
        &["keys", "create", "ci-bot", "--workload", "w1"],
        &gw.config_path,
    );
    assert!(!again.status.success());
    assert_eq!(
        std::fs::read_to_string(gw.keys_dir().join("ci-bot.yaml")).unwrap(),
        file
    );
    // a key the policy would reject is not left behind
    let bad = run(
        &["keys", "create", "bad", "--workload", "ghost"],
        &gw.config_path,
    );
    assert!(!bad.status.success());
    assert!(!gw.keys_dir().join("bad.yaml").exists());

    let list = run(&["keys", "list"], &gw.config_path);
    let listing = String::from_utf8(list.stdout).unwrap();
    assert!(
        listing.contains("ci-bot") && listing.contains("team-ci") && listing.contains("w1"),
        "{listing}"
    );
    assert!(!listing.contains(secret));

    let gw = gw.boot();
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&serde_json::json!({"model": "m1", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut changed = secret.to_owned().into_bytes();
    changed[10] = if changed[10] == b'A' { b'B' } else { b'A' };
    let changed = String::from_utf8(changed).unwrap();
    assert!(keygate::keys::secret::check_format(&changed).is_err());
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&changed)
        .json(&serde_json::json!({"model": "m1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[test]
fn lifecycle_commands_edit_one_file_and_audit_the_cli_user() {
    let gw = TestGateway::prepare(BASE, &[]);
    let cmd = |args: &[&str]| {
        let out = Command::new(keygate_bin())
            .args(args)
            .arg("--config")
            .arg(&gw.config_path)
            .env("USER", "alice")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = cmd(&["keys", "create", "k", "--workload", "w1"]);
    let path = gw.keys_dir().join("k.yaml");
    let rotated = cmd(&["keys", "rotate", "k", "--grace", "1h"]);
    assert_ne!(first.trim(), rotated.trim());
    keygate::keys::secret::check_format(rotated.trim()).unwrap();
    let file = std::fs::read_to_string(&path).unwrap();
    assert!(file.contains("previous_hashes") && !file.contains(rotated.trim()));
    cmd(&["keys", "pause", "k"]);
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("status: paused"));
    let shown = cmd(&["keys", "show", "k"]);
    assert!(
        shown.contains("status: paused") && shown.contains("workload: w1"),
        "{shown}"
    );
    assert!(!shown.contains(first.trim()) && !shown.contains(rotated.trim()));
    cmd(&["keys", "resume", "k"]);
    cmd(&["keys", "delete", "k"]);
    assert!(!path.exists());
    let missing = run(&["keys", "pause", "k"], &gw.config_path);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));

    let audit = std::fs::read_to_string(gw.dir.path().join("management-audit.jsonl")).unwrap();
    let actions: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = actions
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["create", "rotate", "pause", "resume", "delete"]);
    assert!(actions
        .iter()
        .all(|a| a["actor"] == "cli:alice" && a["key_id"] == "k"));
}

#[test]
fn check_accepts_every_upstream_selection_field() {
    let config = with_provider_lines(
        "    balance: p2c_latency\n    retries: 3\n    health_check: {path: /health, interval: 5s, unhealthy_after: 3, healthy_after: 2}\n    timeouts: {connect: 2s, first_byte: 60s, idle: 30s, total: 600s}\n    pool: {max_idle: 256, idle_timeout: 90s}\n",
    )
    .replace(
        "models:\n  m1:\n    provider: p1\n",
        "models:\n  m1:\n    provider: p1\n    fallbacks: [m2]\n  m2:\n    provider: p1\n    upstream_model: other\n",
    );
    let (ok, out) = check(&config, &[("k1", &key("w1", ""))]);
    assert!(ok, "{out}");
}

#[test]
fn check_accepts_the_server_settings() {
    let config = format!(
        "{BASE}server: {{threads: 1, work_stealing: true, grace_period: 10s, drain_delay: 1s, body_timeout: 1m}}\n"
    );
    let (ok, out) = check(&config, &[("k1", &key("w1", ""))]);
    assert!(ok, "{out}");
}

/// BASE with a second model `m2`, which workload `w1` may use too.
fn two_models(upstream: &str) -> String {
    BASE.replace("http://127.0.0.1:9", upstream)
        .replace(
            "models:\n  m1:\n    provider: p1\n",
            "models:\n  m1:\n    provider: p1\n  m2:\n    provider: p1\n",
        )
        .replace("models: [m1]", "models: [m1, m2]")
}

/// Polls until a chat request for `model` with `secret` gets `status`, for at most a second.
async fn served_within_a_second(url: &str, secret: &str, model: &str, status: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let resp = client()
            .post(url)
            .bearer_auth(secret)
            .json(&serde_json::json!({"model": model, "messages": []}))
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{model}: still {} a second after the change, not {status}",
            resp.status()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_update_changes_every_setting_and_is_served_within_a_second() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let gw = TestGateway::prepare(&two_models(&up.url()), &[]);
    let config = gw.config_path.clone();
    let cmd = |args: &[&str]| {
        Command::new(keygate_bin())
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("USER", "bob")
            .output()
            .unwrap()
    };
    let created = cmd(&["keys", "create", "k", "--workload", "w1"]);
    assert!(created.status.success());
    let secret = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let gw = gw.boot();
    let chat = gw.url("/v1/chat/completions");
    served_within_a_second(&chat, &secret, "m2", 200).await;

    let out = cmd(&[
        "keys",
        "update",
        "k",
        "--models",
        "m1",
        "--operations",
        "chat,embeddings",
        "--rate-limit",
        "requests=600/1m",
        "--rate-limit",
        "tokens=200000/1m",
        "--max-concurrent",
        "4",
        "--allowed-ips",
        "127.0.0.0/8,10.0.0.0/8",
        "--budget-daily",
        "5",
        "--budget-monthly",
        "100",
        "--budget-mode",
        "track",
        "--expires",
        "2099-01-01T00:00:00Z",
        "--owner",
        "team-x",
        "--description",
        "the new description",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    served_within_a_second(&chat, &secret, "m2", 403).await;
    served_within_a_second(&chat, &secret, "m1", 200).await;
    let path = gw.keys_dir().join("k.yaml");
    let file: keygate::config::schema::KeyFile =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(file.models.as_deref(), Some(&["m1".to_owned()][..]));
    let ops: Vec<&str> = file
        .operations
        .iter()
        .flatten()
        .map(|o| o.as_str())
        .collect();
    assert_eq!(ops, ["chat", "embeddings"]);
    let limits: Vec<(Option<i64>, Option<i64>, &str)> = file
        .rate_limits
        .iter()
        .map(|r| (r.requests, r.tokens, r.per.as_str()))
        .collect();
    assert_eq!(
        limits,
        [(Some(600), None, "1m"), (None, Some(200000), "1m")]
    );
    assert_eq!(file.max_concurrent, Some(4));
    assert_eq!(
        file.allowed_ips.as_deref(),
        Some(&["127.0.0.0/8".to_owned(), "10.0.0.0/8".to_owned()][..])
    );
    let budget = file.budget.as_ref().unwrap();
    assert_eq!(
        (budget.daily_usd, budget.monthly_usd),
        (Some(5.0), Some(100.0))
    );
    assert_eq!(budget.mode, keygate::config::schema::BudgetModeFile::Track);
    assert_eq!(
        file.expires_at.map(|t| t.to_rfc3339()),
        Some("2099-01-01T00:00:00+00:00".to_owned())
    );
    assert_eq!(file.owner.as_deref(), Some("team-x"));
    assert_eq!(file.description.as_deref(), Some("the new description"));

    // an address outside the allowlist is refused as soon as the list changes
    let out = cmd(&["keys", "update", "k", "--allowed-ips", "10.0.0.0/8"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    served_within_a_second(&chat, &secret, "m1", 403).await;

    let out = cmd(&[
        "keys",
        "update",
        "k",
        "--no-rate-limits",
        "--no-expiry",
        "--allowed-ips",
        "127.0.0.1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("rate_limits") && !text.contains("expires_at"),
        "{text}"
    );
    served_within_a_second(&chat, &secret, "m1", 200).await;

    // a change the policy rejects writes nothing and names every problem
    let before = std::fs::read(&path).unwrap();
    let out = cmd(&[
        "keys",
        "update",
        "k",
        "--models",
        "m1,ghost",
        "--max-concurrent",
        "0",
        "--allowed-ips",
        "banana",
        "--budget-daily=-1",
        "--rate-limit",
        "requests=10/1y",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for says in [
        "models[1]: unknown model `ghost`",
        "max_concurrent",
        "allowed_ips[0]",
        "budget.daily_usd",
        "rate_limits[0].per",
    ] {
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
    let past = cmd(&["keys", "update", "k", "--expires", "2001-01-01T00:00:00Z"]);
    assert!(!past.status.success());
    assert!(String::from_utf8_lossy(&past.stderr).contains("in the future"));
    let nothing = cmd(&["keys", "update", "k"]);
    assert!(!nothing.status.success());
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written");
    served_within_a_second(&chat, &secret, "m1", 200).await;

    let audit = std::fs::read_to_string(gw.dir.path().join("management-audit.jsonl")).unwrap();
    let updates: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|a| a["action"] == "update")
        .collect();
    assert_eq!(updates.len(), 3, "{audit}");
    assert!(updates
        .iter()
        .all(|a| a["actor"] == "cli:bob" && a["key_id"] == "k"));
    assert_eq!(
        updates[0]["detail"],
        "changed models, operations, rate_limits, max_concurrent, allowed_ips, budget, expires_at, owner, description"
    );
}

/// Polls until a chat request for `m1` saying `text` gets `status`, for at most a second.
async fn text_served_within_a_second(url: &str, secret: &str, text: &str, status: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let got = client()
            .post(url)
            .bearer_auth(secret)
            .json(&serde_json::json!({"model": "m1", "messages": [{"role": "user", "content": text}]}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if got == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{text:?}: still {got} a second after the change, not {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_update_adds_switches_off_and_clears_guardrails() {
    const EMAIL: &str = "write to jane@example.com";
    const AWS: &str = "the key is AKIAIOSFODNN7EXAMPLE";
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let config = format!(
        "{}guardrails:\n  no-secrets: {{secrets: all, action: block}}\n  pii: {{pii: [email], action: block}}\nguardrail_defaults: [pii]\n",
        two_models(&up.url())
    );
    let gw = TestGateway::prepare(&config, &[]);
    let config = gw.config_path.clone();
    let cmd = |args: &[&str]| {
        Command::new(keygate_bin())
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("USER", "bob")
            .output()
            .unwrap()
    };
    let created = cmd(&["keys", "create", "k", "--workload", "w1"]);
    assert!(created.status.success());
    let secret = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let path = gw.keys_dir().join("k.yaml");
    let gw = gw.boot();
    let chat = gw.url("/v1/chat/completions");
    // the defaults apply: emails are blocked, secrets are not looked for
    text_served_within_a_second(&chat, &secret, EMAIL, 400).await;
    text_served_within_a_second(&chat, &secret, AWS, 200).await;

    let out = cmd(&[
        "keys",
        "update",
        "k",
        "--guardrails",
        "no-secrets",
        "--guardrails-off",
        "pii",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::read_to_string(&path).unwrap();
    assert!(
        file.contains("no-secrets") && file.contains("guardrails_off"),
        "{file}"
    );
    text_served_within_a_second(&chat, &secret, AWS, 400).await;
    text_served_within_a_second(&chat, &secret, EMAIL, 200).await;

    // an unknown guardrail is refused with nothing written
    let before = std::fs::read(&path).unwrap();
    let out = cmd(&["keys", "update", "k", "--guardrails", "no-secrets,ghost"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown guardrail `ghost`"), "{stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written");
    let both = cmd(&[
        "keys",
        "update",
        "k",
        "--guardrails",
        "pii",
        "--no-guardrails",
    ]);
    assert!(!both.status.success(), "a list and its clearing at once");

    // clearing both lists: the workload's (the defaults) apply again
    let out = cmd(&[
        "keys",
        "update",
        "k",
        "--no-guardrails",
        "--no-guardrails-off",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!std::fs::read_to_string(&path)
        .unwrap()
        .contains("guardrails"));
    text_served_within_a_second(&chat, &secret, EMAIL, 400).await;
    text_served_within_a_second(&chat, &secret, AWS, 200).await;

    let audit = std::fs::read_to_string(gw.dir.path().join("management-audit.jsonl")).unwrap();
    let details: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|a| a["action"] == "update" && a["actor"] == "cli:bob")
        .map(|a| a["detail"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        details,
        [
            "changed guardrails, guardrails_off",
            "changed guardrails, guardrails_off"
        ]
    );
}

/// `/proc/PID/status` of a `keygate serve` process started with `thp_env` (None: unset) as its
/// `MIMALLOC_ALLOW_THP`, read once it listens.
fn serve_status(thp_env: Option<&str>) -> String {
    let gw = TestGateway::prepare(BASE, &[]);
    let mut command = Command::new(keygate_bin());
    command
        .args(["serve", "--config"])
        .arg(&gw.config_path)
        .env_remove("MIMALLOC_ALLOW_THP")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(value) = thp_env {
        command.env("MIMALLOC_ALLOW_THP", value);
    }
    let mut child = command.spawn().expect("start keygate serve");
    common::wait_until_listening(gw.port);
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    status
}

fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("the kernel reports {field}"))
        .trim()
}

#[test]
fn serve_keeps_off_transparent_huge_pages_unless_mimalloc_is_told_otherwise() {
    assert_eq!(status_field(&serve_status(None), "THP_enabled"), "0");
    assert_eq!(status_field(&serve_status(Some("1")), "THP_enabled"), "1");
}

/// The default `max_connections` is at most 10,000, and at most half the open-file limit, so the
/// table holds two descriptors for each of them before the first client connects.
#[test]
fn serve_grows_its_descriptor_table_for_max_connections_before_any_connects() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    let max_connections = (limit.rlim_max / 2).min(10_000) as usize;
    let table: usize = status_field(&serve_status(None), "FDSize").parse().unwrap();
    assert!(table >= 2 * max_connections, "{table} descriptors");
}
