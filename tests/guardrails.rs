//! Guardrails end to end: redaction seen in what the recording upstream received, a block seen
//! through the official SDK, workload and key lists, hot reload of a rule, the moderation hook
//! against a local service, and what metrics, audit and usage report.

mod common;

use common::upstream::{free_port, MockUpstream, Reply};
use common::{
    body_with_its_length, error_of, get_text, key_file, keygate_bin, one_model_policy, post_json,
    TestGateway,
};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

const GUARDRAILS: &str = r#"guardrails:
  pii-basic:    {pii: [email, phone, credit_card, iban, us_ssn], action: redact}
  no-secrets:   {secrets: all, action: block}
  banned-words: {keywords: [project-falcon, "internal only"], match: word, action: block}
  ticket-ids:   {regex: ['TCK-\d{6}'], action: redact}
  watch-words:  {keywords: [merger], action: log}
"#;

/// One model `m1` at `upstream` for workloads `app` (with `app_guardrails`) and `bare` (none of
/// its own), audited and persisted under the test's directory.
fn policy(upstream: &str, admin_port: u16, defaults: &str, app_guardrails: &str) -> String {
    format!(
        r#"admin_listen: 127.0.0.1:{admin_port}
state_dir: state
audit_log: state/audit.jsonl
providers:
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
    guardrails: {app_guardrails}
  bare:
    models: [m1]
{GUARDRAILS}guardrail_defaults: {defaults}
"#
    )
}

fn chat(text: &str) -> Value {
    json!({"model": "m1", "messages": [{"role": "user", "content": text}]})
}

fn chat_url(gw: &TestGateway) -> String {
    gw.url("/v1/chat/completions")
}

/// The `guardrails` field of an audit line, as `guardrail/rule/action` strings.
fn fired(line: &Value) -> Vec<String> {
    line["guardrails"]
        .as_array()
        .unwrap_or_else(|| panic!("no guardrails field: {line}"))
        .iter()
        .map(|f| format!("{}/{}/{}", f["guardrail"], f["rule"], f["action"]).replace('"', ""))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_text_never_reaches_the_provider() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let admin_port = free_port();
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &policy(&up.url(), admin_port, "[]", "[pii-basic, ticket-ids]"),
        &[("k1".into(), yaml)],
    );
    let body = json!({
        "model": "m1",
        "temperature": 0.25,
        "messages": [
            {"role": "system", "content": "Escalate to ops@example.com when stuck."},
            {"role": "user", "content": [
                {"type": "text", "text": "I am jane.doe@example.org, ticket TCK-123456 \"quoted\"."},
                {"type": "image_url", "image_url": {"url": "https://img.example.com/a.png"}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "owner: bob@example.net"}
        ],
        "metadata": {"note": "not scanned: carol@example.com"}
    });
    let resp = post_json(&chat_url(&gw), &secret, &body).await;
    assert_eq!(resp.status(), 200);
    let got = up.wait_for_requests(1).await.remove(0);
    let text = String::from_utf8(got.body.to_vec()).unwrap();
    for leaked in [
        "ops@example.com",
        "jane.doe@example.org",
        "bob@example.net",
        "TCK-123456",
    ] {
        assert!(
            !text.contains(leaked),
            "{leaked} reached the provider: {text}"
        );
    }
    assert_eq!(
        got.header("content-length"),
        Some(got.body.len().to_string().as_str())
    );
    let sent = got.json();
    assert_eq!(
        sent["messages"][0]["content"],
        "Escalate to [REDACTED:EMAIL] when stuck."
    );
    let part = sent["messages"][1]["content"][0]["text"].as_str().unwrap();
    assert!(
        part.starts_with("I am [REDACTED:EMAIL], ticket [REDACTED:"),
        "{part}"
    );
    assert!(part.ends_with(" \"quoted\"."), "{part}");
    assert_eq!(sent["messages"][2]["content"], "owner: [REDACTED:EMAIL]");
    // what is not prompt text is forwarded as it was
    assert_eq!(
        sent["messages"][1]["content"][1],
        body["messages"][1]["content"][1]
    );
    assert_eq!(sent["metadata"], body["metadata"]);
    assert_eq!(sent["temperature"], 0.25);

    let lines = gw.booked(1).await;
    let mut seen = fired(&lines[0]);
    seen.sort();
    assert_eq!(
        seen,
        ["pii-basic/email/redact", "ticket-ids/regex[0]/redact"]
    );
    assert!(!lines[0].to_string().contains("example.org"));

    let scrape = get_text(&format!("http://127.0.0.1:{admin_port}/metrics")).await;
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("keygate_guardrail_actions_total{")
                && l.contains(r#"action="redact""#)
                && l.contains(r#"guardrail="pii-basic""#)
                && l.contains(r#"key="k1""#)
                && l.contains(r#"workload="app""#)
                && l.ends_with(" 1")),
        "{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_is_a_bad_request_error_in_the_official_sdk() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &policy(&up.url(), free_port(), "[]", "[banned-words]"),
        &[("k1".into(), yaml)],
    );
    let base = gw.url("/v1");
    let model = "m1";
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/sdk/guardrail_block.py"
            ))
            .env("KEYGATE_URL", base)
            .env("KEYGATE_KEY", secret)
            .env("KEYGATE_MODEL", model)
            .env("KEYGATE_BLOCKED", "Status of Project-Falcon, please")
            .env("KEYGATE_GUARDRAIL", "banned-words")
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(up.request_count(), 0, "a blocked request is not forwarded");
    let lines = gw.booked(1).await;
    assert_eq!(fired(&lines[0]), ["banned-words/keyword[0]/block"]);
    assert_eq!(lines[0]["refusal"], "content_policy_violation");
    assert_eq!(lines[0]["status"], 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_workloads_and_keys_combine_and_switch_off() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (plain, plain_yaml) = key_file("bare", "");
    let (adds, adds_yaml) = key_file("bare", "guardrails: [banned-words]\n");
    let (off, off_yaml) = key_file("app", "guardrails_off: [no-secrets, banned-words]\n");
    let (list_a, list_b) = (
        keygate::keys::secret::generate().unwrap(),
        keygate::keys::secret::generate().unwrap(),
    );
    let list = format!(
        "- id: l1\n  hash: \"{}\"\n  workload: bare\n  guardrails: [watch-words]\n- id: l2\n  hash: \"{}\"\n  workload: app\n  guardrails_off: [banned-words]\n",
        list_a.digest, list_b.digest
    );
    let gw = TestGateway::start(
        &policy(&up.url(), free_port(), "[no-secrets]", "[banned-words]"),
        &[
            ("plain".into(), plain_yaml),
            ("adds".into(), adds_yaml),
            ("off".into(), off_yaml),
            ("list".into(), list),
        ],
    );
    let url = chat_url(&gw);
    let secret_text = "here: ghp_0123456789abcdefghijABCDEFGHIJ012345";
    let banned = "about project-falcon";
    let status = |key: String, text: &'static str| {
        let url = url.clone();
        async move { post_json(&url, &key, &chat(text)).await.status().as_u16() }
    };
    // the default applies to a workload with none of its own
    assert_eq!(status(plain.clone(), secret_text).await, 400);
    assert_eq!(status(plain.clone(), banned).await, 200);
    // a key adds to its workload's
    assert_eq!(status(adds.clone(), banned).await, 400);
    assert_eq!(status(adds.clone(), secret_text).await, 400);
    // and switches off what its workload and the defaults apply
    assert_eq!(status(off.clone(), banned).await, 200);
    assert_eq!(status(off.clone(), secret_text).await, 200);
    // in a list file too
    assert_eq!(status(list_a.secret.clone(), "the merger is on").await, 200);
    assert_eq!(status(list_b.secret.clone(), banned).await, 200);
    assert_eq!(status(list_b.secret.clone(), secret_text).await, 400);

    let lines = gw.booked(9).await;
    let l1 = lines
        .iter()
        .find(|l| l["key_id"] == "l1")
        .expect("l1's line");
    assert_eq!(fired(l1), ["watch-words/keyword[0]/log"]);
    let blocked = post_json(&url, &adds, &chat(banned)).await;
    let (status, kind, code) = error_of(blocked).await;
    assert_eq!(
        (status, kind.as_str(), code.as_str()),
        (400, "invalid_request_error", "content_policy_violation")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rule_applies_after_a_reload() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let admin_port = free_port();
    let gw = TestGateway::start(
        &policy(&up.url(), admin_port, "[]", "[banned-words]"),
        &[("k1".into(), yaml)],
    );
    let url = chat_url(&gw);
    assert_eq!(
        post_json(&url, &secret, &chat("about zephyr"))
            .await
            .status(),
        200
    );
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        text.replace("[project-falcon, \"internal only\"]", "[zephyr]"),
    )
    .unwrap();
    gw.handles().reloader.reload_blocking().unwrap();
    assert_eq!(
        post_json(&url, &secret, &chat("about zephyr"))
            .await
            .status(),
        400
    );
    assert_eq!(
        post_json(&url, &secret, &chat("about project-falcon"))
            .await
            .status(),
        200
    );
    // A broken rule is refused and the last good policy keeps serving.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, text.replace("'TCK-\\d{6}'", "'(a)\\1'")).unwrap();
    assert!(gw.handles().reloader.reload_blocking().is_err());
    assert_eq!(
        post_json(&url, &secret, &chat("about zephyr"))
            .await
            .status(),
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_requests_are_counted_per_key_in_the_usage_view() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &policy(&up.url(), free_port(), "[]", "[banned-words]"),
        &[("k1".into(), yaml)],
    );
    let url = chat_url(&gw);
    assert_eq!(post_json(&url, &secret, &chat("hello")).await.status(), 200);
    for _ in 0..2 {
        assert_eq!(
            post_json(&url, &secret, &chat("internal only, sorry"))
                .await
                .status(),
            400
        );
    }
    gw.booked(3).await;
    gw.handles().recorder.flush();
    let out = Command::new(keygate_bin())
        .args(["usage", "--json", "--by", "key", "--config"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["total"]["requests"], 1, "{report}");
    assert_eq!(report["total"]["blocked_requests"], 2, "{report}");
    let table = Command::new(keygate_bin())
        .args(["usage", "--by", "key", "--config"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.lines().next().unwrap().ends_with("BLOCKED"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("k1 ") && l.ends_with(" 2")),
        "{table}"
    );
}

/// A policy whose workload `app` applies one moderation guardrail at `service`.
fn moderated(upstream: &str, service: &str, format: &str, on_error: &str, action: &str) -> String {
    one_model_policy(
        upstream,
        &format!(
            r#"    guardrails: [pii-basic, moderation]
state_dir: state
audit_log: state/audit.jsonl
guardrails:
  pii-basic: {{pii: [email], action: redact}}
  moderation:
    moderation: {{url: "{service}/v1/moderations", format: {format}, timeout: 300ms, on_error: {on_error}}}
    action: {action}
"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_moderation_hook_allows_denies_and_handles_failures() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let verdict = |flagged: bool| Reply::Json {
        status: 200,
        body: json!({"id": "modr-1", "model": "omni-moderation-latest",
                     "results": [{"flagged": flagged, "categories": {}}]}),
    };
    let service = MockUpstream::start("moderation", verdict(false)).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &moderated(&up.url(), &service.url(), "openai", "allow", "block"),
        &[("k1".into(), yaml)],
    );
    let url = chat_url(&gw);

    // allowed: the service was asked about the text as it will be forwarded
    let ok = post_json(&url, &secret, &chat("hello, I am x@example.com")).await;
    assert_eq!(ok.status(), 200);
    let asked = service.wait_for_requests(1).await.remove(0);
    assert_eq!(asked.path, "/v1/moderations");
    assert_eq!(
        asked.json(),
        json!({"input": "hello, I am [REDACTED:EMAIL]"})
    );
    assert_eq!(up.request_count(), 1);

    // flagged: blocked, and never forwarded
    service.set_reply(verdict(true));
    let denied = post_json(&url, &secret, &chat("something awful")).await;
    let (status, _, code) = error_of(denied).await;
    assert_eq!((status, code.as_str()), (400, "content_policy_violation"));
    assert_eq!(up.request_count(), 1);

    // timeout and error, with on_error: allow: let through, and audited
    service.set_reply(Reply::Delayed {
        delay: Duration::from_secs(2),
        reply: Box::new(verdict(true)),
    });
    assert_eq!(post_json(&url, &secret, &chat("slow")).await.status(), 200);
    service.set_reply(Reply::Json {
        status: 500,
        body: json!({"error": "down"}),
    });
    assert_eq!(
        post_json(&url, &secret, &chat("broken")).await.status(),
        200
    );
    assert_eq!(up.request_count(), 3);
    let lines = gw.booked(4).await;
    assert_eq!(fired(&lines[1]), ["moderation/moderation/block"]);
    assert_eq!(fired(&lines[2]), ["moderation/moderation_unavailable/log"]);
    assert_eq!(fired(&lines[3]), ["moderation/moderation_unavailable/log"]);
    assert!(!lines.iter().any(|l| l.to_string().contains("awful")));
    drop(gw);

    // on_error: block refuses while the service fails, with a retryable 503
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &moderated(&up.url(), &service.url(), "openai", "block", "block"),
        &[("k1".into(), yaml)],
    );
    let refused = post_json(&chat_url(&gw), &secret, &chat("broken")).await;
    let (status, _, code) = error_of(refused).await;
    assert_eq!((status, code.as_str()), (503, "moderation_unavailable"));
    assert_eq!(up.request_count(), 3);
    drop(gw);

    // the generic webhook: {"allow": bool}
    let hook = MockUpstream::start(
        "webhook",
        Reply::Json {
            status: 200,
            body: json!({"allow": false}),
        },
    )
    .await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &moderated(&up.url(), &hook.url(), "webhook", "block", "block"),
        &[("k1".into(), yaml)],
    );
    let url = chat_url(&gw);
    assert_eq!(post_json(&url, &secret, &chat("no")).await.status(), 400);
    hook.set_reply(Reply::Json {
        status: 200,
        body: json!({"allow": true}),
    });
    assert_eq!(post_json(&url, &secret, &chat("yes")).await.status(), 200);
    assert_eq!(
        hook.wait_for_requests(2).await[1].json(),
        json!({"input": "yes"})
    );
}

#[test]
fn check_refuses_patterns_the_regex_crate_cannot_run_and_unknown_names() {
    let config = |guardrails: &str, workload: &str| {
        format!(
            r#"providers:
  p1:
    format: openai
    endpoints:
      - {{url: "http://127.0.0.1:9"}}
models:
  m1: {{provider: p1}}
workloads:
  w1: {{models: [m1], guardrails: {workload}}}
guardrails:
{guardrails}"#
        )
    };
    let check = |config: String, key_extra: &str| {
        let (_, yaml) = key_file("w1", key_extra);
        let gw = TestGateway::prepare(&config, &[("k1".into(), yaml)]);
        let out = Command::new(keygate_bin())
            .args(["check", "--config"])
            .arg(&gw.config_path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = check(
        config("  echo: {regex: ['(\\w+) \\1'], action: block}\n", "[echo]"),
        "",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("keygate.yaml: guardrails.echo:"), "{out}");
    assert!(out.contains("(\\w+) \\1"), "{out}");
    assert!(out.to_lowercase().contains("backreference"), "{out}");

    let (ok, out) = check(
        config("  ok: {keywords: [x], action: log}\n", "[ok, nope]"),
        "guardrails_off: [gone]\n",
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("workloads.w1.guardrails[1]: unknown guardrail `nope`"),
        "{out}"
    );
    assert!(
        out.contains("k1.yaml: guardrails_off[0]: unknown guardrail `gone`"),
        "{out}"
    );

    let (ok, out) = check(
        config(
            "  two: {keywords: [x], regex: [y], action: log}\n  m: {moderation: {url: \"ftp://x\"}, action: redact, apply_to: [request, response]}\n",
            "[]",
        ),
        "",
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("guardrails.two: needs exactly one detector"),
        "{out}"
    );
    assert!(out.contains("guardrails.m.moderation.url"), "{out}");
    assert!(out.contains("guardrails.m.action"), "{out}");
    assert!(out.contains("guardrails.m.apply_to"), "{out}");

    let (ok, out) = check(
        config("  ok: {pii: [email], action: redact}\n", "[ok]"),
        "guardrails: [ok]\n",
    );
    assert!(ok, "{out}");
}

/// A streamed chat answer whose deltas are `parts`, then usage and `[DONE]`.
fn stream_of(parts: &[&str]) -> Reply {
    let mut events: Vec<String> = parts
        .iter()
        .map(|p| {
            let chunk = json!({"id": "c", "object": "chat.completion.chunk", "model": "m1",
                "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]});
            format!("data: {chunk}\n\n")
        })
        .collect();
    events.push(format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk", "model": "m1", "choices": [],
               "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}})
    ));
    events.push("data: [DONE]\n\n".to_owned());
    Reply::Sse {
        events,
        interval: Duration::from_millis(10),
    }
}

/// A policy whose workload `app` applies response guardrails: secrets blocked, emails redacted,
/// a watch word logged.
fn response_policy(upstream: &str) -> String {
    one_model_policy(
        upstream,
        r#"    guardrails: [secrets-out, pii-out, watch-out]
state_dir: state
audit_log: state/audit.jsonl
guardrails:
  secrets-out: {secrets: [github], action: block, apply_to: [request, response]}
  pii-out: {pii: [email], action: redact, apply_to: [response]}
  watch-out: {keywords: [merger], action: log, apply_to: [response]}
"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_cut_with_an_error_event_when_a_response_guardrail_blocks() {
    // The token arrives split over three deltas.
    let up = MockUpstream::start(
        "up",
        stream_of(&[
            "Sure, the merger. Here: ",
            "ghp_0123456789abcdef",
            "ghijABCDEFGHIJ012345",
            " and more text",
            " that must not arrive",
        ]),
    )
    .await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&response_policy(&up.url()), &[("k1".into(), yaml)]);
    let body = json!({"model": "m1", "stream": true,
                      "messages": [{"role": "user", "content": "give me a token"}]});
    let resp = post_json(&chat_url(&gw), &secret, &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("the stream ends cleanly");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    let last: Value = serde_json::from_str(events.last().unwrap().strip_prefix("data: ").unwrap())
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(last["error"]["code"], "response_blocked", "{text}");
    assert!(last["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`secrets-out`"));
    for gone in ["ghijABCDEFGHIJ012345", "must not arrive", "[DONE]"] {
        assert!(!text.contains(gone), "{gone} arrived: {text}");
    }
    assert!(text.contains("the merger"), "{text}");
    let lines = gw.booked(1).await;
    let mut seen = fired(&lines[0]);
    seen.sort();
    assert_eq!(
        seen,
        ["secrets-out/github/block", "watch-out/keyword[0]/log"]
    );
    assert_eq!(lines[0]["error"], "response_blocked");
    // the provider's usage is still booked
    assert_eq!(lines[0]["completion_tokens"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_responses_are_redacted_and_a_block_never_delivers_the_text() {
    let answer = |content: &str| Reply::Json {
        status: 200,
        body: json!({"id": "c", "object": "chat.completion", "model": "m1",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}),
    };
    let up = MockUpstream::start("up", answer("Write to jane@example.com today.")).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&response_policy(&up.url()), &[("k1".into(), yaml)]);
    let resp = post_json(&chat_url(&gw), &secret, &chat("who?")).await;
    assert_eq!(resp.status(), 200);
    // Held until scanned, then sent whole with its new length.
    let got: Value = serde_json::from_slice(&body_with_its_length(resp).await).unwrap();
    assert_eq!(
        got["choices"][0]["message"]["content"],
        "Write to [REDACTED:EMAIL] today."
    );
    assert_eq!(got["usage"]["total_tokens"], 7);
    assert_eq!(
        up.wait_for_requests(1).await[0].header("accept-encoding"),
        Some("identity")
    );

    // A block answers 502 response_blocked in place of the text, which the SDKs must not retry.
    up.set_reply(answer("token ghp_0123456789abcdefghijABCDEFGHIJ012345"));
    let resp = post_json(&chat_url(&gw), &secret, &chat("token?")).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-should-retry"], "false");
    assert!(resp.headers().get("x-request-id").is_some());
    let text = resp.text().await.unwrap();
    assert!(!text.contains("ghp_"), "{text}");
    let err: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["error"]["code"], "response_blocked", "{err}");
    assert_eq!(err["error"]["type"], "api_error", "{err}");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`secrets-out`"));
    let lines = gw.booked(2).await;
    assert_eq!(fired(&lines[1]), ["secrets-out/github/block"]);
    assert_eq!(lines[1]["error"], "response_blocked");
    assert_eq!(lines[1]["status"], 502);
    // The provider's answer is still paid for.
    assert_eq!(lines[1]["completion_tokens"], 4);

    // The connection stays usable: the next answer arrives on it whole.
    up.set_reply(answer("all clear"));
    let resp = post_json(&chat_url(&gw), &secret, &chat("again?")).await;
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.unwrap();
    assert_eq!(got["choices"][0]["message"]["content"], "all clear");
}

/// Model `claude` of a `format: anthropic` provider at `upstream`, for workload `app` with
/// request and response guardrails.
fn anthropic_policy(upstream: &str) -> String {
    format!(
        r#"state_dir: state
audit_log: state/audit.jsonl
providers:
  ant:
    format: anthropic
    api_key: sk-ant-real
    endpoints:
      - {{url: "{upstream}"}}
models:
  claude:
    provider: ant
workloads:
  app:
    models: [claude]
    guardrails: [pii-basic, banned-words, secrets-out]
{GUARDRAILS}  secrets-out: {{secrets: [github], action: block, apply_to: [request, response]}}
"#
    )
}

/// A Messages stream whose text arrives as `parts`, one delta each.
fn text_events(parts: &[&str]) -> Vec<String> {
    let mut events = vec![format!(
        "event: message_start\ndata: {}\n\n",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "model": "claude", "content": [],
            "usage": {"input_tokens": 9, "output_tokens": 1}}})
    )];
    for p in parts {
        events.push(format!(
            "event: content_block_delta\ndata: {}\n\n",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": p}})
        ));
    }
    events.push(format!(
        "event: message_delta\ndata: {}\n\n",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
               "usage": {"output_tokens": 6}})
    ));
    events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned());
    events
}

fn anthropic_post(gw: &TestGateway, secret: &str, body: &Value) -> reqwest::RequestBuilder {
    common::client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", secret)
        .header("anthropic-version", "2023-06-01")
        .json(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_are_redacted_blocked_and_cut_in_anthropic_shape() {
    let up = MockUpstream::start(
        "up",
        Reply::Json {
            status: 200,
            body: json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                "usage": {"input_tokens": 9, "output_tokens": 1}}),
        },
    )
    .await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&anthropic_policy(&up.url()), &[("k1".into(), yaml)]);

    // Redaction in `system` and in message blocks, as the provider receives them.
    let body = json!({"model": "claude", "max_tokens": 64,
        "system": [{"type": "text", "text": "Escalate to ops@example.com."}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "I am jane@example.org"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]});
    let resp = anthropic_post(&gw, &secret, &body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let sent = up.wait_for_requests(1).await.remove(0).json();
    assert_eq!(sent["system"][0]["text"], "Escalate to [REDACTED:EMAIL].");
    assert_eq!(
        sent["messages"][0]["content"][0]["text"],
        "I am [REDACTED:EMAIL]"
    );
    assert_eq!(sent["messages"][0]["content"][1]["source"]["data"], "AAAA");

    // A block is Anthropic's invalid_request_error, naming the guardrail and not the text.
    let body = json!({"model": "claude", "max_tokens": 64,
        "messages": [{"role": "user", "content": "about project-falcon"}]});
    let resp = anthropic_post(&gw, &secret, &body).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["error"]["type"], "invalid_request_error", "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("`banned-words`"), "{message}");
    assert!(!message.contains("project-falcon"), "{message}");
    // count_tokens sends the prompt to the provider too, so it is scanned as well.
    let resp = common::client()
        .post(gw.url("/v1/messages/count_tokens"))
        .header("x-api-key", &secret)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        up.wait_for_requests(1).await.len(),
        1,
        "a blocked request was forwarded"
    );

    // A whole answer holding a secret is replaced by a 502 in Anthropic's shape.
    up.set_reply(Reply::Json {
        status: 200,
        body: json!({"id": "msg_2", "type": "message", "role": "assistant", "model": "claude",
            "content": [{"type": "text", "text": "ghp_0123456789abcdefghijABCDEFGHIJ012345"}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 9, "output_tokens": 20}}),
    });
    let body = json!({"model": "claude", "max_tokens": 64,
        "messages": [{"role": "user", "content": "a token please"}]});
    let resp = anthropic_post(&gw, &secret, &body).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["error"]["type"], "api_error", "{err}");
    assert!(!err.to_string().contains("ghp_"), "{err}");
    assert!(err["request_id"].as_str().is_some_and(|id| !id.is_empty()));

    // A secret across text deltas cuts the stream with Anthropic's error event.
    up.set_reply(Reply::Sse {
        events: text_events(&[
            "Here: ghp_0123456789abcdef",
            "ghijABCDEFGHIJ012345",
            " never seen",
        ]),
        interval: Duration::from_millis(10),
    });
    let body = json!({"model": "claude", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "a token please"}]});
    let resp = anthropic_post(&gw, &secret, &body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("the stream ends cleanly");
    let last = text.split("\n\n").filter(|e| !e.is_empty()).last().unwrap();
    let data = last
        .strip_prefix("event: error\ndata: ")
        .unwrap_or_else(|| panic!("not an error event: {text}"));
    let err: Value = serde_json::from_str(data).unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "api_error", "{err}");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`secrets-out`"));
    for gone in ["ghijABCDEFGHIJ012345", "never seen", "message_stop"] {
        assert!(!text.contains(gone), "{gone} arrived: {text}");
    }
    let lines = gw.booked(5).await;
    assert_eq!(fired(&lines[3]), ["secrets-out/github/block"]);
    assert_eq!(lines[3]["error"], "response_blocked");
    assert_eq!(lines[3]["status"], 502);
    assert_eq!(fired(&lines[4]), ["secrets-out/github/block"]);
    assert_eq!(lines[4]["error"], "response_blocked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_translated_for_an_anthropic_model_are_guarded_too() {
    let up = MockUpstream::start(
        "up",
        Reply::Sse {
            events: text_events(&[
                "Your token: ghp_0123456789abcdefghij",
                "ABCDEFGHIJ012345 ok",
            ]),
            interval: Duration::from_millis(10),
        },
    )
    .await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&anthropic_policy(&up.url()), &[("k1".into(), yaml)]);
    let body = json!({"model": "claude", "stream": true,
        "messages": [{"role": "system", "content": "Mail ops@example.com"},
                     {"role": "user", "content": "a token please"}]});
    let resp = post_json(&chat_url(&gw), &secret, &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("the stream ends cleanly");
    // The provider got the Messages request, redacted.
    let got = up.wait_for_requests(1).await.remove(0);
    assert!(got.path.ends_with("/v1/messages"), "{}", got.path);
    let sent = got.json();
    assert_eq!(sent["system"], "Mail [REDACTED:EMAIL]", "{sent}");
    // The client got translated chunks, then OpenAI's error event in place of the secret.
    assert!(text.contains("chat.completion.chunk"), "{text}");
    let last = text.split("\n\n").filter(|e| !e.is_empty()).last().unwrap();
    let err: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "response_blocked", "{text}");
    assert!(!text.contains("ABCDEFGHIJ012345"), "{text}");
    let lines = gw.booked(1).await;
    assert_eq!(lines[0]["error"], "response_blocked");
}
