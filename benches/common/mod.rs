//! Shared by the benches: a policy directory with many key files, written the way
//! `keygate keys create` writes them (one YAML file per key, rendered by `keys::store::render`).
#![allow(dead_code)]

use keygate::config::schema::KeyFile;
use keygate::keys::{secret, store};
use std::path::{Path, PathBuf};

/// The workload and model every generated key uses.
pub const WORKLOAD: &str = "bench";
pub const MODEL: &str = "mock";

/// A policy written to disk.
pub struct BenchPolicy {
    pub config_path: PathBuf,
    pub keys_dir: PathBuf,
    /// The secrets of the first keys (`k000000`, `k000001`, …), as many as were asked for.
    pub secrets: Vec<String>,
}

/// A free TCP port on loopback (bound and released; good enough for a bench).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The id of key number `i`: sorted ids, fixed width, valid file stems.
pub fn key_id(i: usize) -> String {
    format!("k{i:06}")
}

/// The key file text of one key, exactly as `keys create` renders it (header comment included).
/// Built from JSON so fields the schema adds later (all optional) do not break the bench.
pub fn key_file_text(hash: &str, hint: &str, i: usize, paused: bool) -> String {
    let file: KeyFile = serde_json::from_value(serde_json::json!({
        "hash": hash,
        "hint": hint,
        "workload": WORKLOAD,
        "owner": format!("team-{}", i % 50),
        "description": format!("bench key {i}"),
        "status": if paused { "paused" } else { "active" },
        "created_at": "2026-11-22T10:00:00Z",
    }))
    .expect("a valid KeyFile");
    store::render(&file).expect("render")
}

/// Writes `dir/keygate.yaml` (with `config_extra` added at the top level, and its one provider's
/// endpoint at `upstream_url`) and `dir/keys.d/` holding `keys` key files. Returns the secrets of
/// the first `keep_secrets` keys.
pub fn write_policy(
    dir: &Path,
    keys: usize,
    keep_secrets: usize,
    config_extra: &str,
    upstream_url: &str,
) -> BenchPolicy {
    let keys_dir = dir.join("keys.d");
    std::fs::create_dir_all(&keys_dir).expect("create keys.d");
    let mut secrets = Vec::with_capacity(keep_secrets);
    for i in 0..keys {
        let s = secret::generate().expect("OS random source");
        let text = key_file_text(&s.digest.to_string(), &s.hint, i, false);
        std::fs::write(store::key_path(&keys_dir, &key_id(i)), text).expect("write key file");
        if i < keep_secrets {
            secrets.push(s.secret);
        }
    }
    let config_path = dir.join("keygate.yaml");
    std::fs::write(&config_path, config_text(config_extra, upstream_url))
        .expect("write keygate.yaml");
    BenchPolicy {
        config_path,
        keys_dir,
        secrets,
    }
}

/// A minimal valid main file: one provider, one model, one workload. `extra` must add `listen`
/// and may add anything else at the top level.
fn config_text(extra: &str, upstream_url: &str) -> String {
    format!(
        "keys_dir: keys.d
{extra}
providers:
  mock:
    format: openai
    api_key: mock-provider-secret
    endpoints:
      - {{url: \"{upstream_url}\", weight: 1}}
models:
  {MODEL}:
    provider: mock
workloads:
  {WORKLOAD}:
    models: [{MODEL}]
"
    )
}
