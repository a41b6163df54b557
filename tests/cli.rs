//! The `keygate` command line: `check` on good and bad policies, `keys create` and `keys list`.

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
        "    balance: p2c_latency\n    retries: 3\n    health_check: {path: /health, interval: 5s, unhealthy_after: 3, healthy_after: 2}\n    timeouts: {connect: 2s, first_byte: 60s, idle: 30s, total: 600s}\n",
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
