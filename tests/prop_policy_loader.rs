//! Property tests of the policy loader (`config::load`) on mutated YAML: a complete main file and
//! key files (one in the flat form `keygate keys` writes, one nested), damaged line by line and
//! byte by byte. Loading never panics, and a policy it refuses comes with problems that each
//! name their file and say where in it: a field path or a line.

use keygate::config::{self, LoadOptions, Problem};
use proptest::prelude::*;
use proptest::sample::Index;
use std::path::Path;

const MAIN: &str = r#"listen: 127.0.0.1:18080
admin_listen: 127.0.0.1:19090
keys_dir: keys.d
max_body_bytes: 16777216
trusted_proxies: [10.0.0.0/8, "::1"]
management_audit_file: management-audit.jsonl
state_dir: state
audit_log: state/requests.jsonl
auth_guard: {max_failures: 20, per: 1m}
server: {threads: 2, work_stealing: true, grace_period: 30s, drain_delay: 5s}
mock_provider: {listen: 127.0.0.1:18181, api_key: mock-secret, stream_delay: 50ms}

providers:
  openai:
    format: openai
    api_key: ${KEYGATE_PROP_KEY:-sk-default}
    endpoints:
      - {url: "http://127.0.0.1:18181", weight: 1}
      - url: http://127.0.0.1:18182/prefix
        weight: 3
    balance: p2c_latency
    retries: 2
    health_check: {path: /health, interval: 5s, unhealthy_after: 3, healthy_after: 2}
    timeouts: {connect: 5s, first_byte: 300s, idle: 300s, total: 600s}

models:
  gpt-4o-mini:
    provider: openai
    price: {input_per_mtok: 0.15, output_per_mtok: 0.60, cached_input_per_mtok: 0.075}
    max_output_tokens: 16384
    fallbacks: [gpt-4o]
  gpt-4o:
    provider: openai
    upstream_model: gpt-4o-2024-08-06
    price: {input_per_mtok: 2.50, output_per_mtok: 10.00}

workloads:
  support-bot:
    description: customer chatbot
    models: [gpt-4o-mini, gpt-4o]
    operations: [chat, responses]
    rate_limits: [{requests: 600, per: 1m}, {tokens: 200000, per: 1m}]
    max_concurrent: 20
    allowed_ips: [127.0.0.0/8]
    budget: {daily_usd: 50, monthly_usd: 1000, mode: enforce, alert_at: [0.5, 0.8]}
  batch:
    models: [gpt-4o-mini]
"#;

/// A key as `keygate keys create` writes it (read by the flat reader).
const FLAT_KEY: &str = "id: flat-key
hash: \"sha256:0e4d2b5c4f0e6c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3\"
hint: \"kg_ab...wxyz\"
workload: support-bot
owner: team-a
status: active
created_at: 2026-01-02T03:04:05Z
";

/// A key with every nested setting (read by the YAML parser).
const NESTED_KEY: &str = "id: nested-key
hash: \"sha256:1f5e3c6d5a1f7d4c3b2a19080706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4\"
workload: support-bot
models: [gpt-4o-mini]
operations: [chat]
status: paused
expires_at: 2099-12-31T23:59:59Z
rate_limits:
  - {requests: 10, per: 1s}
  - {tokens: 5000, per: 1h}
max_concurrent: 2
allowed_ips: [127.0.0.1, 10.0.0.0/8]
budget: {daily_usd: 1.5, mode: track}
previous_hashes:
  - {hash: \"sha256:2a6f4d7e6b2a8e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5\", valid_until: 2030-01-01T00:00:00Z}
";

/// Values that YAML or keygate's rules read badly: wrong types, overflowing numbers and
/// durations, unset variables, anchors and tags, empties.
const VALUES: &[&str] = &[
    "",
    "~",
    "[]",
    "{}",
    "-1",
    "0",
    "1e999",
    "-.inf",
    ".nan",
    "18446744073709551616",
    "9223372036854775807",
    "0ms",
    "18446744073709551615s",
    "99999999999999999d",
    "584942417355y",
    "1ns",
    "${KEYGATE_PROP_UNSET}",
    "${KEYGATE_PROP_UNSET:-}",
    "${",
    "\"\\u0000\"",
    "!!binary aGVsbG8=",
    "&anchor x",
    "*anchor",
    "<<: *anchor",
    "yes",
    "'",
    "\"",
    "- item",
    "::",
    "http://",
    "https://user:pw@127.0.0.1:1/?q#f",
    "127.0.0.1:99999",
    "[::1]:0",
    "256.0.0.1/40",
    "9999-99-99T99:99:99Z",
    "-999999-01-01T00:00:00Z",
];

#[derive(Debug, Clone)]
enum Edit {
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    Indent(Index, usize),
    Dedent(Index),
    /// Replaces what follows the first `: ` of a line (or the whole line) by a value.
    Value(Index, &'static str),
    SetByte(Index, u8),
    InsertByte(Index, u8),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![
        prop::sample::select(b":-[]{}\"'&*!#|>% \t\n\x00\xff".to_vec()),
        any::<u8>()
    ];
    prop_oneof![
        2 => any::<Index>().prop_map(Edit::DeleteLine),
        1 => any::<Index>().prop_map(Edit::DuplicateLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        1 => (any::<Index>(), 1usize..4).prop_map(|(a, n)| Edit::Indent(a, n)),
        1 => any::<Index>().prop_map(Edit::Dedent),
        6 => (any::<Index>(), prop::sample::select(VALUES)).prop_map(|(a, v)| Edit::Value(a, v)),
        2 => (any::<Index>(), byte.clone()).prop_map(|(a, b)| Edit::SetByte(a, b)),
        2 => (any::<Index>(), byte).prop_map(|(a, b)| Edit::InsertByte(a, b)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
    for e in edits {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match e {
            Edit::DeleteLine(i) => {
                lines.remove(i.index(n));
            }
            Edit::DuplicateLine(i) => {
                let l = lines[i.index(n)].clone();
                lines.insert(i.index(n), l);
            }
            Edit::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
            Edit::Indent(i, k) => {
                let l = &mut lines[i.index(n)];
                l.splice(0..0, std::iter::repeat_n(b' ', *k));
            }
            Edit::Dedent(i) => {
                let l = &mut lines[i.index(n)];
                let spaces = l.iter().take_while(|&&c| c == b' ').count();
                l.drain(..spaces.min(2));
            }
            Edit::Value(i, v) => {
                let l = &mut lines[i.index(n)];
                let at = l.windows(2).position(|w| w == b": ").map_or(0, |p| p + 2);
                l.truncate(at);
                l.extend_from_slice(v.as_bytes());
            }
            Edit::SetByte(i, b) | Edit::InsertByte(i, b) => {
                let l = &mut lines[i.index(n)];
                let at = i.index(l.len() + 1);
                if matches!(e, Edit::SetByte(..)) && at < l.len() {
                    l[at] = *b;
                } else {
                    l.insert(at, *b);
                }
            }
            Edit::Truncate(i) => lines.truncate(i.index(n)),
        }
    }
    let mut out = lines.join(&b'\n');
    out.push(b'\n');
    out
}

/// Writes the policy with `main` and the key files into `dir`; returns the main file's path.
fn write_policy(dir: &Path, main: &[u8], flat: &[u8], nested: &[u8]) -> std::path::PathBuf {
    let keys = dir.join("keys.d");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("flat-key.yaml"), flat).unwrap();
    std::fs::write(keys.join("nested-key.yaml"), nested).unwrap();
    let path = dir.join("keygate.yaml");
    std::fs::write(&path, main).unwrap();
    path
}

fn load(path: &Path) -> Result<keygate::policy::Policy, config::PolicyErrors> {
    config::load(path, LoadOptions { resolve_dns: false })
}

/// A problem says which file and where in it: a field path or a line. A file it could not read
/// (an unreadable or non-UTF-8 one) has no place inside it to name.
fn check_problem(p: &Problem, base: &Path) -> Result<(), TestCaseError> {
    prop_assert!(
        p.file.starts_with(base),
        "a problem names a policy file: {p}"
    );
    prop_assert!(!p.message.trim().is_empty(), "a problem says what: {p:?}");
    let placed = !p.field.is_empty() || p.message.contains("line ");
    let whole_file = p.message.starts_with("cannot read");
    // The YAML parser reports a second document without its place; a dedicated test holds the
    // loader to it, so the property does not stop at it.
    let second_document = p.message.contains("more than one document");
    prop_assert!(
        placed || whole_file || second_document,
        "a problem says where: {p}"
    );
    let shown = p.to_string();
    prop_assert!(shown.contains(&*p.file.to_string_lossy()), "{shown}");
    Ok(())
}

#[test]
fn the_unmutated_policy_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(
        dir.path(),
        MAIN.as_bytes(),
        FLAT_KEY.as_bytes(),
        NESTED_KEY.as_bytes(),
    );
    let policy = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(policy.keys_by_id.len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_policies_load_or_say_where_they_are_wrong(
        target in 0usize..3,
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut files = [MAIN.as_bytes().to_vec(), FLAT_KEY.as_bytes().to_vec(), NESTED_KEY.as_bytes().to_vec()];
        let original = std::str::from_utf8(&files[target]).unwrap().to_owned();
        files[target] = apply(&original, &edits);
        let path = write_policy(dir.path(), &files[0], &files[1], &files[2]);
        if let Err(errors) = load(&path) {
            prop_assert!(!errors.0.is_empty(), "a refusal lists its problems");
            for p in &errors.0 {
                check_problem(p, dir.path())?;
            }
        }
    }
}

/// A main file whose first line is indented reads, to the YAML parser, as more than one
/// document; the problem must still say where (today it names neither line nor field).
#[test]
fn a_second_document_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let main = format!(" {MAIN}");
    let path = write_policy(
        dir.path(),
        main.as_bytes(),
        FLAT_KEY.as_bytes(),
        NESTED_KEY.as_bytes(),
    );
    let errors = load(&path).expect_err("an indented first line is an error");
    for p in &errors.0 {
        assert!(
            !p.field.is_empty() || p.message.contains("line "),
            "a problem says where: {p}"
        );
    }
}
