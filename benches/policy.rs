//! Criterion benchmarks of the policy at 100,000 keys (issue 3):
//!
//! - `policy_compile/100k_keys`: `keygate::config::load` of a policy whose `keys_dir` holds
//!   100,000 key files, one YAML file per key as `keygate keys create` writes them. This is what
//!   startup, `keygate check` and every reload pay. The files are generated once, outside the
//!   timed loop, in a temporary directory.
//! - `key_lookup/100k/*`: the request path's authentication, `proxy::authenticate::key_for_secret`, on that
//!   compiled policy: a valid secret (checksum, SHA-256, one map lookup), a secret with a bad
//!   checksum (refused before hashing), and a well-formed secret that is in no key file.
//!
//! Run: `cargo bench --bench policy` (add `-- key_lookup` to run only the lookups). Under
//! `cargo test --benches` each benchmark runs once, as a smoke test.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use keygate::config::LoadOptions;
use keygate::keys::secret;
use keygate::proxy::authenticate::key_for_secret;
use std::hint::black_box;
use std::time::Duration;

const KEYS: usize = 100_000;

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy_files = common::write_policy(
        dir.path(),
        KEYS,
        1,
        "listen: 127.0.0.1:8080",
        "http://127.0.0.1:9",
    );
    let config_path = policy_files.config_path.as_path();

    let mut group = c.benchmark_group("policy_compile");
    // A second or more per load: ten flat samples of one or a few loads, no linear ramp-up.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(30));
    group.bench_function("100k_keys", |b| {
        // The old snapshot's drop is not part of compiling; it is timed by `policy_swap`.
        b.iter_with_large_drop(|| {
            keygate::config::load(black_box(config_path), LoadOptions::default())
                .expect("the generated policy is valid")
        })
    });
    group.finish();

    let policy = keygate::config::load(config_path, LoadOptions::default()).expect("valid policy");
    assert_eq!(policy.keys_by_id.len(), KEYS);
    let valid = policy_files.secrets[0].clone();
    let bad_checksum = {
        // Change one random character: the CRC32 no longer matches.
        let mut bytes = valid.clone().into_bytes();
        let i = secret::PREFIX.len();
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        String::from_utf8(bytes).expect("ASCII")
    };
    let unknown = secret::generate().expect("OS random source").secret;
    assert!(key_for_secret(&policy, &valid).is_ok());
    assert!(key_for_secret(&policy, &bad_checksum).is_err());
    assert!(key_for_secret(&policy, &unknown).is_err());

    let mut group = c.benchmark_group("key_lookup");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, secret) in [
        ("100k/valid", &valid),
        ("100k/bad_checksum", &bad_checksum),
        ("100k/unknown", &unknown),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| key_for_secret(black_box(&policy), black_box(secret.as_str())).is_ok())
        });
    }
    group.finish();
}

criterion_group!(policy, benches);
criterion_main!(policy);
