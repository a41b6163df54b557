//! What a hot-swapped policy of 100,000 keys costs (issue 3), printed as a small table.
//!
//! 1. Compile time of the 100k-key policy (median of 3 `config::load`s) and the resident memory
//!    (VmRSS) before any policy, with one compiled policy held, and with two alive at once (the
//!    swap moment); also what dropping one takes and what the steps of a load (listing, reading,
//!    YAML parsing) cost on their own; and a reload after one key file changed, as the gateway
//!    does it (`config::load_reusing`: unchanged key files keep their compiled keys). This part runs in a child process that does nothing else,
//!    so its memory figures are not mixed with the gateway's.
//! 2. Request latency (p50/p99) through an in-process gateway (`server::RunningGateway`) serving
//!    that policy, with its embedded mock provider as the upstream: sequential chat requests from
//!    2 client tasks, first without policy swaps, then while a thread keeps rewriting one key file
//!    (toggling `status: paused` on a key the clients do not use) and waiting until the gateway
//!    serves the new state, picked up by its file watcher as in production; then once more
//!    without swaps, to see whether the gateway gets back to its baseline (and does no reload at
//!    all while no file changes). Every request must succeed;
//!    failures are counted, printed, and make the run exit non-zero. The gateway process's RSS
//!    is sampled during the swaps, and the CPU used by this process and by others during each
//!    phase is printed: this machine is shared, and the others are its noise.
//!
//! Targets printed next to the figures: compile under 1 s, under 300 MB resident, p99 during swaps
//! under 2x the baseline.
//!
//! Run: `cargo bench --bench policy_swap` (about 3 minutes on 2 cores, 5 with the diagnostics).
//! Everything is on loopback in a temporary directory, request counts are fixed and each phase has
//! a time limit, so it stops by itself. Environment:
//! - `KEYGATE_BENCH_KEYS` (default 100000) and `KEYGATE_BENCH_REQUESTS` (requests per client per
//!   phase, default 100000: the swap phase must outlast several reloads of a few seconds each);
//! - `KEYGATE_BENCH_DIAGNOSE=1` adds three request phases, right after the first baseline, while a
//!   thread only compiles the policy in a loop (no swap; from a hard-linked copy the gateway does
//!   not watch), at normal priority, at nice 19 and under SCHED_IDLE: what the CPU work of
//!   compiling costs the requests, apart from the swap, and what a low-priority reload thread
//!   would give.
//!
//! Without `--bench` (e.g. `cargo test --benches`) it runs a small smoke version: 1,000 keys and
//! 50 requests per client.

mod common;

use keygate::config::schema::KeyFile;
use keygate::config::LoadOptions;
use keygate::domain::KeyStatus;
use keygate::keys::store;
use keygate::server::RunningGateway;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator the `keygate` binary uses, so memory figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENTS: usize = 2;
const LOADS: usize = 3;
const WARMUP_REQUESTS: usize = 100;
/// Longest a request phase may run before the clients give up on the rest.
const PHASE_LIMIT: Duration = Duration::from_secs(180);
const MIB: f64 = 1024.0 * 1024.0;
/// Requests slower than this are counted: a policy dropped on a proxy thread shows up here.
const SLOW: Duration = Duration::from_millis(20);

const COMPILE_TARGET: Duration = Duration::from_secs(1);
const RSS_TARGET_BYTES: u64 = 300 * 1000 * 1000;
const P99_RATIO_TARGET: f64 = 2.0;

const CHAT_BODY: &str = r#"{"model":"mock","messages":[{"role":"user","content":"Hello"}]}"#;

struct Settings {
    keys: usize,
    requests_per_client: usize,
    /// `KEYGATE_BENCH_DIAGNOSE=1`: three more request phases that separate CPU contention from
    /// swapping (see [`diagnose`]).
    diagnose: bool,
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.replace('_', "").parse().ok()
}

fn main() {
    if let Some(config_path) = std::env::var_os(CHILD_ENV) {
        // The child: compile and memory figures in a process that has done nothing else.
        let keys = env_usize("KEYGATE_BENCH_KEYS").expect("the parent sets the key count");
        compile_part(Path::new(&config_path), keys);
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let (keys, requests) = if full {
        (100_000, 100_000)
    } else {
        (1_000, 50)
    };
    let settings = Settings {
        keys: env_usize("KEYGATE_BENCH_KEYS").unwrap_or(keys),
        requests_per_client: env_usize("KEYGATE_BENCH_REQUESTS").unwrap_or(requests),
        diagnose: env_usize("KEYGATE_BENCH_DIAGNOSE").is_some_and(|d| d > 0),
    };
    assert!(settings.keys > CLIENTS, "need more keys than clients");
    let mut report = Report::default();

    let dir = tempfile::tempdir().expect("tempdir");
    let (gw_port, admin_port, mock_port) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let config_extra = format!(
        "listen: 127.0.0.1:{gw_port}
admin_listen: 127.0.0.1:{admin_port}
server: {{threads: 2}}
mock_provider: {{listen: 127.0.0.1:{mock_port}, api_key: mock-provider-secret, stream_delay: 1ms}}"
    );
    eprintln!(
        "policy_swap: writing {} key files to {} ...",
        settings.keys,
        dir.path().display()
    );
    let started = Instant::now();
    let files = common::write_policy(
        dir.path(),
        settings.keys,
        CLIENTS,
        &config_extra,
        &format!("http://127.0.0.1:{mock_port}"),
    );
    eprintln!("policy_swap: written in {:.1?}", started.elapsed());

    eprintln!(
        "policy_swap: compiling {} keys in a child process ...",
        settings.keys
    );
    report.compile = run_compile_child(&files.config_path, settings.keys);
    measure_requests(&files, &settings, admin_port, &mut report);
    report.print(&settings);
    if report.failures() > 0 {
        std::process::exit(1);
    }
}

/// Set (to the config path) in the child process that measures compiling and memory.
const CHILD_ENV: &str = "KEYGATE_BENCH_COMPILE_CHILD";

fn run_compile_child(config_path: &Path, keys: usize) -> CompileFigures {
    let exe = std::env::current_exe().expect("current exe");
    let out = std::process::Command::new(exe)
        .env(CHILD_ENV, config_path)
        .env("KEYGATE_BENCH_KEYS", keys.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run the compile child");
    assert!(out.status.success(), "the compile child failed");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let mut figures = CompileFigures::default();
    for line in text.lines() {
        let mut words = line.splitn(3, ' ');
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        let nanos = Duration::from_nanos(value);
        match name {
            "load" => figures.loads.push(nanos),
            "rss_before" => figures.rss_before = Some(value),
            "rss_one" => figures.rss_one = Some(value),
            "rss_two" => figures.rss_two = Some(value),
            "hwm" => figures.hwm = Some(value),
            "drop" => figures.drop_time = nanos,
            "reuse" => figures.reuse = Some((nanos, rss_after_reuse(&text))),
            "step" => figures
                .steps
                .push((words.next().unwrap_or_default().to_owned(), nanos)),
            _ => {}
        }
    }
    figures.loads.sort();
    assert_eq!(figures.loads.len(), LOADS, "the child reports every load");
    figures
}

/// One `config::load`, timed.
fn load_timed(config_path: &Path, keys: usize) -> (keygate::policy::Policy, Duration) {
    let started = Instant::now();
    let policy = keygate::config::load(config_path, LoadOptions::default())
        .unwrap_or_else(|e| panic!("the generated policy is invalid:\n{e}"));
    let took = started.elapsed();
    // As the gateway does after every load, so that the memory figures are the product's.
    keygate::reload::return_freed_memory();
    assert_eq!(policy.keys_by_id.len(), keys);
    (policy, took)
}

/// The child's work. Prints `name value` lines (nanoseconds or bytes) for the parent.
fn compile_part(config_path: &Path, keys: usize) {
    let rss_before = rss_bytes();
    let (first, t1) = load_timed(config_path, keys);
    let rss_one = rss_bytes();
    let (second, t2) = load_timed(config_path, keys);
    let rss_two = rss_bytes();
    let started = Instant::now();
    drop(first);
    let drop_time = started.elapsed();
    keygate::reload::return_freed_memory();
    let (third, t3) = load_timed(config_path, keys);
    drop(second);
    // What a reload costs when one key file changed: the gateway's path (`load_reusing`).
    let keys_dir = config_path.with_file_name("keys.d");
    let changed = std::fs::read_dir(&keys_dir)
        .expect("read keys.d")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "yaml"))
        .expect("a key file");
    let text = std::fs::read_to_string(&changed).expect("read a key file");
    std::fs::write(&changed, format!("{text}# touched\n")).expect("touch a key file");
    let started = Instant::now();
    let reloaded = keygate::config::load_reusing(config_path, LoadOptions::default(), &third)
        .expect("the touched policy is valid");
    let reuse = started.elapsed();
    keygate::reload::return_freed_memory();
    let rss_reuse = rss_bytes();
    std::fs::write(&changed, text).expect("restore a key file");
    assert_eq!(reloaded.keys_by_id.len(), keys);
    drop((third, reloaded));
    let hwm = status_kib("VmHWM").map(|k| k * 1024);
    for t in [t1, t2, t3] {
        println!("load {}", t.as_nanos());
    }
    for (name, v) in [
        ("rss_before", rss_before),
        ("rss_one", rss_one),
        ("rss_two", rss_two),
        ("hwm", hwm),
    ] {
        if let Some(v) = v {
            println!("{name} {v}");
        }
    }
    println!("drop {}", drop_time.as_nanos());
    println!("reuse {}", reuse.as_nanos());
    if let Some(rss) = rss_reuse {
        println!("rss_reuse {rss}");
    }
    for (step, took) in building_blocks(config_path) {
        println!("step {} {step}", took.as_nanos());
    }
}

/// What the steps a load is made of cost on these files, one after the other on one thread:
/// listing, reading and parsing the key files as `config::load` does them (named `load:`), and
/// cheaper ways to do the same (named `alt:`). Where the time of a load goes, and what changing a
/// step would save.
fn building_blocks(config_path: &Path) -> Vec<(String, Duration)> {
    let keys_dir = config_path.with_file_name("keys.d");
    let mut steps = Vec::new();
    let mut timed = |name: &str, started: Instant| steps.push((name.to_owned(), started.elapsed()));

    let started = Instant::now();
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&keys_dir)
        .expect("read keys.d")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    timed("alt: read_dir, full paths", started);
    let started = Instant::now();
    let regular = files.iter().filter(|p| p.is_file()).count();
    timed("alt: is_file() of each", started);
    assert_eq!(regular, files.len());
    let started = Instant::now();
    let regular = std::fs::read_dir(&keys_dir)
        .expect("read keys.d")
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .count();
    timed("load: read_dir + DirEntry::file_type()", started);
    assert_eq!(regular, files.len());
    let started = Instant::now();
    files.sort();
    timed("alt: sort the full paths", started);
    let mut names: Vec<std::ffi::OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(ToOwned::to_owned))
        .collect();
    names.reverse();
    let started = Instant::now();
    names.sort_unstable();
    timed("load: sort the file names", started);
    let started = Instant::now();
    let texts: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read key file"))
        .collect();
    timed("load: read_to_string of each", started);
    let started = Instant::now();
    let mut buf = Vec::new();
    for f in &files {
        buf.clear();
        let mut file = std::fs::File::open(f).expect("open key file");
        std::io::Read::read_to_end(&mut file, &mut buf).expect("read key file");
    }
    timed("alt: read each into one reused buffer", started);
    let started = Instant::now();
    for text in &texts {
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).expect("YAML");
        assert!(!value.is_sequence());
    }
    timed("alt: YAML to Value (list or not?)", started);
    let started = Instant::now();
    for text in &texts {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let _: KeyFile = serde_path_to_error::deserialize(de).expect("a key file");
    }
    timed("load: YAML to KeyFile, path tracked", started);
    let started = Instant::now();
    for text in &texts {
        let _: KeyFile = serde_yaml_ng::from_str(text).expect("a key file");
    }
    timed("alt: YAML to KeyFile, no path tracking", started);
    drop(texts);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = Instant::now();
    let parsed: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(files.len().div_ceil(threads))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|f| {
                            let text = std::fs::read_to_string(f).expect("read key file");
                            let de = serde_yaml_ng::Deserializer::from_str(&text);
                            serde_path_to_error::deserialize::<_, KeyFile>(de).expect("a key file")
                        })
                        .collect::<Vec<_>>()
                        .len()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).sum()
    });
    timed(
        &format!("alt: read + KeyFile on {threads} threads"),
        started,
    );
    assert_eq!(parsed, files.len());
    steps
}

fn measure_requests(
    files: &common::BenchPolicy,
    settings: &Settings,
    admin_port: u16,
    report: &mut Report,
) {
    // The diagnostic loader reads a hard-linked copy of the policy in another directory, so its
    // reads are no events for the gateway's file watcher. Made before the watcher starts: making
    // the links is an event (the link count changes).
    let copy = settings.diagnose.then(|| linked_copy(files));
    eprintln!("policy_swap: starting the gateway ...");
    report.gateway_rss_before = rss_bytes();
    let started = Instant::now();
    let running = RunningGateway::start(&files.config_path, None)
        .unwrap_or_else(|e| panic!("gateway failed to start: {e}"));
    report.gateway_start = started.elapsed();
    report.gateway_rss_serving = rss_bytes();
    let url = format!("http://{}/v1/chat/completions", running.listen);
    let metrics_url = format!("http://127.0.0.1:{admin_port}/metrics");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENTS)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let clients: Vec<reqwest::Client> = (0..CLIENTS)
        .map(|_| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("reqwest client")
        })
        .collect();

    eprintln!("policy_swap: warm-up and requests without swaps ...");
    rt.block_on(run_phase(&clients, &url, &files.secrets, WARMUP_REQUESTS));
    report.without = rt.block_on(run_phase(
        &clients,
        &url,
        &files.secrets,
        settings.requests_per_client,
    ));

    if let Some(copy) = &copy {
        // Before any reload: every phase after the first reload may share the cores with the
        // file watcher's reloads.
        for priority in [Priority::Normal, Priority::Nice19, Priority::Idle] {
            let phase = diagnose(&rt, &clients, &url, copy, settings, priority);
            report.diagnostics.push(phase);
        }
    }

    eprintln!("policy_swap: requests during repeated swaps ...");
    // The last key: no client uses it. Its file alternates between active and paused.
    let toggled_id = common::key_id(settings.keys - 1);
    let toggled = store::key_path(&files.keys_dir, &toggled_id);
    let active_text = std::fs::read_to_string(&toggled).expect("read key file");
    let paused_text = active_text.replace("status: active", "status: paused");
    assert_ne!(active_text, paused_text, "the key file names its status");
    let reloads_before = rt.block_on(reload_counts(&metrics_url));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut max = 0;
            while !stop.load(Ordering::Relaxed) {
                max = max.max(rss_bytes().unwrap_or(0));
                std::thread::sleep(Duration::from_millis(10));
            }
            max
        })
    };
    let swapper = {
        let stop = stop.clone();
        let served = running.store.clone();
        let toggled_id = toggled_id.clone();
        std::thread::spawn(move || {
            let mut stats = SwapStats::default();
            let mut paused = false;
            while !stop.load(Ordering::Relaxed) {
                paused = !paused;
                let text = if paused { &paused_text } else { &active_text };
                store::write_atomic(&toggled, text, false).expect("rewrite key file");
                // The file watcher's reload serves it, as in production.
                let want = if paused {
                    KeyStatus::Paused
                } else {
                    KeyStatus::Active
                };
                let started = Instant::now();
                let shows =
                    || served.load().keys_by_id.get(&toggled_id).map(|k| k.status) == Some(want);
                while !shows() && started.elapsed() < PICKUP_LIMIT {
                    std::thread::sleep(Duration::from_millis(2));
                }
                if shows() {
                    stats.served += 1;
                    stats.pickup_times.push(started.elapsed());
                } else {
                    stats.missed += 1;
                    eprintln!("policy_swap: a change was not served within {PICKUP_LIMIT:?}");
                }
            }
            // Leave the file as the served policy last saw it.
            (stats, paused)
        })
    };
    report.with = rt.block_on(run_phase(
        &clients,
        &url,
        &files.secrets,
        settings.requests_per_client,
    ));
    stop.store(true, Ordering::Relaxed);
    let (mut stats, last_paused) = swapper.join().expect("swap thread");
    report.rss_swaps_max = sampler.join().ok().filter(|m| *m > 0);
    // Let the file watcher's own (debounced) reload of the last write finish before counting.
    std::thread::sleep(Duration::from_millis(300));
    let reloads_after = rt.block_on(reload_counts(&metrics_url));
    let _ = running.reloader.reload_blocking();
    stats.all_reloads = reloads_after
        .zip(reloads_before)
        .map(|(a, b)| ReloadCounts {
            swapped: a.swapped - b.swapped,
            unchanged: a.unchanged - b.unchanged,
            failed: a.failed - b.failed,
        });
    let served = running.store.load_full();
    let status = served.keys_by_id.get(&toggled_id).map(|k| k.status);
    let expected = if last_paused {
        KeyStatus::Paused
    } else {
        KeyStatus::Active
    };
    stats.final_state_ok = status == Some(expected);
    drop(served);
    stats.pickup_times.sort();
    report.swaps = stats;
    report.gateway_hwm = status_kib("VmHWM").map(|k| k * 1024);

    // The baseline again: does the gateway get back to it once the swaps stop? Nothing changes
    // in the files now, so there should be no reload at all.
    eprintln!("policy_swap: requests without swaps again ...");
    let before = rt.block_on(reload_counts(&metrics_url));
    report.after = rt.block_on(run_phase(
        &clients,
        &url,
        &files.secrets,
        settings.requests_per_client,
    ));
    let after = rt.block_on(reload_counts(&metrics_url));
    report.reloads_after = after
        .zip(before)
        .map(|(a, b)| (a.swapped + a.unchanged + a.failed) - (b.swapped + b.unchanged + b.failed));

    rt.block_on(async { drop(clients) });
    drop(rt);
    running.shutdown();
}

/// A copy of the policy in a sibling directory, its key files hard links to the originals.
fn linked_copy(files: &common::BenchPolicy) -> common::BenchPolicy {
    let root = files
        .config_path
        .parent()
        .expect("the policy has a directory")
        .join("diagnostic-copy");
    let keys_dir = root.join("keys.d");
    std::fs::create_dir_all(&keys_dir).expect("create the copy");
    for entry in std::fs::read_dir(&files.keys_dir).expect("read keys.d") {
        let entry = entry.expect("keys.d entry");
        std::fs::hard_link(entry.path(), keys_dir.join(entry.file_name())).expect("link");
    }
    let config_path = root.join("keygate.yaml");
    std::fs::copy(&files.config_path, &config_path).expect("copy keygate.yaml");
    common::BenchPolicy {
        config_path,
        keys_dir,
        secrets: files.secrets.clone(),
    }
}

/// A request phase while a thread at `priority` keeps compiling the policy and dropping it: the
/// CPU cost of reloads without any swap or file change (and no watcher reload either). Compared
/// with the swap phase, it tells how much of the p99 comes from sharing the cores with compiling;
/// at a low priority it shows what a low-priority reload thread would give.
fn diagnose(
    rt: &tokio::runtime::Runtime,
    clients: &[reqwest::Client],
    url: &str,
    files: &common::BenchPolicy,
    settings: &Settings,
    priority: Priority,
) -> Diagnostic {
    let label = priority.label();
    eprintln!("policy_swap: diagnostic: requests, {label} ...");
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let stop = stop.clone();
        let config_path = files.config_path.clone();
        let keys = settings.keys;
        std::thread::spawn(move || {
            let applied = priority.apply_to_this_thread();
            let mut loads = 0;
            while !stop.load(Ordering::Relaxed) {
                drop(load_timed(&config_path, keys));
                loads += 1;
            }
            (loads, applied)
        })
    };
    let phase = rt.block_on(run_phase(
        clients,
        url,
        &files.secrets,
        settings.requests_per_client,
    ));
    stop.store(true, Ordering::Relaxed);
    let (loads, applied) = loader.join().expect("loader thread");
    Diagnostic {
        label: if applied {
            label.to_owned()
        } else {
            format!("{label} (could not be set)")
        },
        phase,
        loads,
    }
}

/// The scheduling of the diagnostic loader thread.
#[derive(Clone, Copy)]
enum Priority {
    Normal,
    Nice19,
    /// `SCHED_IDLE`: runs only when nothing else wants the core.
    Idle,
}

impl Priority {
    fn label(self) -> &'static str {
        match self {
            Priority::Normal => "compiling at normal priority",
            Priority::Nice19 => "compiling at nice 19",
            Priority::Idle => "compiling at SCHED_IDLE",
        }
    }

    /// Applies to the calling thread with `renice`/`chrt` (the bench has no libc binding).
    fn apply_to_this_thread(self) -> bool {
        let Ok(link) = std::fs::read_link("/proc/thread-self") else {
            return false;
        };
        let Some(tid) = link.file_name().and_then(|t| t.to_str()) else {
            return false;
        };
        let (program, args) = match self {
            Priority::Normal => return true,
            Priority::Nice19 => ("renice", vec!["-n", "19", "-p", tid]),
            Priority::Idle => ("chrt", vec!["--idle", "-p", "0", tid]),
        };
        std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// `keygate_policy_reloads_total` by result, from the admin listener's `/metrics`.
async fn reload_counts(metrics_url: &str) -> Option<ReloadCounts> {
    let text = reqwest::get(metrics_url).await.ok()?.text().await.ok()?;
    let count = |result: &str| -> Option<u64> {
        let prefix = format!("keygate_policy_reloads_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(ReloadCounts {
        swapped: count("swapped")?,
        unchanged: count("unchanged")?,
        failed: count("failed")?,
    })
}

/// `requests` sequential requests from each client, each with its own key, all at once.
async fn run_phase(
    clients: &[reqwest::Client],
    url: &str,
    secrets: &[String],
    requests: usize,
) -> Phase {
    let deadline = Instant::now() + PHASE_LIMIT;
    let cpu_before = cpu_ticks();
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .zip(secrets)
        .map(|(client, secret)| {
            let (client, url, secret) = (client.clone(), url.to_owned(), secret.clone());
            tokio::spawn(async move { run_client(client, url, secret, requests, deadline).await })
        })
        .collect();
    let mut phase = Phase::default();
    for task in tasks {
        let one = task.await.expect("client task");
        phase.latencies.extend(one.latencies);
        phase.failures += one.failures;
        phase.not_sent += one.not_sent;
        phase.first_failure = phase.first_failure.or(one.first_failure);
    }
    phase.elapsed = started.elapsed();
    phase.cpu = cpu_before
        .zip(cpu_ticks())
        .map(|((all0, own0), (all1, own1))| {
            let cores =
                |ticks: u64| ticks as f64 / ticks_per_second() / phase.elapsed.as_secs_f64();
            let own = own1 - own0;
            (cores(own), cores((all1 - all0).saturating_sub(own)))
        });
    phase.latencies.sort();
    phase
}

async fn run_client(
    client: reqwest::Client,
    url: String,
    secret: String,
    requests: usize,
    deadline: Instant,
) -> Phase {
    let mut phase = Phase {
        latencies: Vec::with_capacity(requests),
        ..Phase::default()
    };
    for sent in 0..requests {
        if Instant::now() > deadline {
            phase.not_sent = requests - sent;
            break;
        }
        let started = Instant::now();
        let outcome = async {
            let resp = client
                .post(&url)
                .bearer_auth(&secret)
                .header("content-type", "application/json")
                .body(CHAT_BODY)
                .send()
                .await
                .map_err(|e| format!("send: {e}"))?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
            if !status.is_success() || !body.windows(15).any(|w| w == b"chat.completion") {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            Ok(())
        }
        .await;
        let took = started.elapsed();
        match outcome {
            Ok(()) => phase.latencies.push(took),
            Err(e) => {
                phase.failures += 1;
                phase.first_failure.get_or_insert(e);
            }
        }
    }
    phase
}

#[derive(Default)]
struct Phase {
    /// Successful requests only, sorted once the phase is over.
    latencies: Vec<Duration>,
    failures: usize,
    not_sent: usize,
    first_failure: Option<String>,
    elapsed: Duration,
    /// Cores used on average during the phase by this process (gateway, mock upstream, clients,
    /// reloads), and by other processes: the machine's noise.
    cpu: Option<(f64, f64)>,
}

impl Phase {
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    fn max(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }

    fn slower_than(&self, limit: Duration) -> usize {
        self.latencies.len() - self.latencies.partition_point(|l| *l <= limit)
    }
}

struct Diagnostic {
    label: String,
    phase: Phase,
    loads: usize,
}

#[derive(Clone, Copy)]
struct ReloadCounts {
    swapped: u64,
    unchanged: u64,
    failed: u64,
}

/// How long a rewrite may take to be served before it counts as missed.
const PICKUP_LIMIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct SwapStats {
    /// Rewrites of the toggled key that the watcher's reloads served, and how long after the write.
    served: usize,
    missed: usize,
    pickup_times: Vec<Duration>,
    /// Every reload the gateway did in the phase, the file watcher's included (from `/metrics`).
    all_reloads: Option<ReloadCounts>,
    /// The served policy ends with the toggled key in the state last written.
    final_state_ok: bool,
}

/// What the compile child measured.
#[derive(Default)]
struct CompileFigures {
    /// Sorted.
    loads: Vec<Duration>,
    rss_before: Option<u64>,
    rss_one: Option<u64>,
    rss_two: Option<u64>,
    hwm: Option<u64>,
    drop_time: Duration,
    /// A reload after one key file changed, reusing the rest, and the RSS with both alive.
    reuse: Option<(Duration, Option<u64>)>,
    steps: Vec<(String, Duration)>,
}

fn rss_after_reuse(child_output: &str) -> Option<u64> {
    child_output
        .lines()
        .find_map(|l| l.strip_prefix("rss_reuse ")?.parse().ok())
}

#[derive(Default)]
struct Report {
    compile: CompileFigures,
    gateway_rss_before: Option<u64>,
    gateway_start: Duration,
    gateway_rss_serving: Option<u64>,
    without: Phase,
    with: Phase,
    after: Phase,
    /// Reloads the gateway did during `after`, when no file changed.
    reloads_after: Option<u64>,
    swaps: SwapStats,
    rss_swaps_max: Option<u64>,
    gateway_hwm: Option<u64>,
    diagnostics: Vec<Diagnostic>,
}

fn cpu(phase: &Phase) -> String {
    phase.cpu.map_or_else(
        || "n/a".to_owned(),
        |(own, others)| format!("{own:.2} cores / {others:.2} cores"),
    )
}

fn latencies(phase: &Phase) -> String {
    format!(
        "{} / {} / {} / {}",
        ms(phase.percentile(50.0)),
        ms(phase.percentile(99.0)),
        ms(phase.percentile(99.9)),
        ms(phase.max())
    )
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn mb(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "n/a".to_owned(),
        |b| format!("{:.1} MiB ({:.0} MB)", b as f64 / MIB, b as f64 / 1e6),
    )
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

impl Report {
    fn failures(&self) -> usize {
        self.without.failures
            + self.with.failures
            + self.after.failures
            + self.swaps.missed
            + self
                .diagnostics
                .iter()
                .map(|d| d.phase.failures)
                .sum::<usize>()
    }

    fn print(&self, settings: &Settings) {
        let c = &self.compile;
        let median = c.loads[c.loads.len() / 2];
        let rss_ok = |b: Option<u64>| verdict(b.is_some_and(|b| b < RSS_TARGET_BYTES));
        let p99_without = self.without.percentile(99.0);
        let p99_with = self.with.percentile(99.0);
        let ratio = p99_with.as_secs_f64() / p99_without.as_secs_f64().max(1e-9);
        let times = &self.swaps.pickup_times;
        let reload_median = times.get(times.len() / 2).copied().unwrap_or_default();
        let reload_max = times.last().copied().unwrap_or_default();
        let per_key = |d: Duration| {
            format!(
                "{:.3} s  ({:.1} µs/key)",
                d.as_secs_f64(),
                d.as_secs_f64() * 1e6 / settings.keys as f64
            )
        };

        let mut rows: Vec<(String, String, String)> = Vec::new();
        let mut row = |what: &str, value: String, target: &str| {
            rows.push((what.to_owned(), value, target.to_owned()));
        };
        row(
            &format!("compile {} keys, median of {LOADS}", settings.keys),
            per_key(median),
            &format!("< 1 s: {}", verdict(median < COMPILE_TARGET)),
        );
        row(
            "  the 3 loads",
            c.loads
                .iter()
                .map(|d| format!("{:.3}", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(" / ")
                + " s",
            "",
        );
        for (step, took) in &c.steps {
            row(&format!("  {step}"), per_key(*took), "");
        }
        let in_load: Duration = c
            .steps
            .iter()
            .filter(|(step, _)| step.starts_with("load:"))
            .map(|(_, took)| *took)
            .sum();
        row(
            "  rest of a load (compile, maps, drops)",
            per_key(median.saturating_sub(in_load)),
            "",
        );
        row("RSS before any policy", mb(c.rss_before), "");
        row(
            "RSS with 1 policy held",
            mb(c.rss_one),
            &format!("< 300 MB: {}", rss_ok(c.rss_one)),
        );
        row(
            "RSS with 2 alive (swap moment)",
            mb(c.rss_two),
            &format!("< 300 MB: {}", rss_ok(c.rss_two)),
        );
        row("  peak RSS (VmHWM) of the 3 loads", mb(c.hwm), "");
        row("  drop of one compiled policy", ms(c.drop_time), "");
        if let Some((took, rss)) = c.reuse {
            row(
                "reload, 1 key file changed (reusing)",
                ms(took),
                &format!(
                    "< 1 s: {}",
                    if took < Duration::from_secs(1) {
                        "ok"
                    } else {
                        "MISSED"
                    }
                ),
            );
            row("  RSS with both alive (keys shared)", mb(rss), "");
        }
        row("gateway start (load + listen)", ms(self.gateway_start), "");
        row(
            "gateway process RSS: before start",
            mb(self.gateway_rss_before),
            "",
        );
        row(
            "  serving, before any swap",
            mb(self.gateway_rss_serving),
            &format!("< 300 MB: {}", rss_ok(self.gateway_rss_serving)),
        );
        row(
            "  max sampled during swaps",
            mb(self.rss_swaps_max),
            &format!("< 300 MB: {}", rss_ok(self.rss_swaps_max)),
        );
        row(
            "  peak (VmHWM) at the end",
            mb(self.gateway_hwm),
            &format!("< 300 MB: {}", rss_ok(self.gateway_hwm)),
        );
        for (name, phase) in [
            ("without swaps", &self.without),
            ("during swaps", &self.with),
            ("after the swaps", &self.after),
        ] {
            row(
                &format!("requests {name}"),
                format!(
                    "{} ok, {} failed, {} not sent, {:.1} s",
                    phase.latencies.len(),
                    phase.failures,
                    phase.not_sent,
                    phase.elapsed.as_secs_f64()
                ),
                verdict(phase.failures == 0 && phase.not_sent == 0),
            );
            row("  CPU used: this process / others", cpu(phase), "");
            row("  p50 / p99 / p99.9 / max", latencies(phase), "");
            row(
                "  requests slower than 20 ms",
                phase.slower_than(SLOW).to_string(),
                "",
            );
        }
        row(
            "p99 during swaps / p99 without",
            format!("{ratio:.2}x"),
            &format!("< 2x: {}", verdict(ratio < P99_RATIO_TARGET)),
        );
        row(
            "p99 after the swaps / p99 before",
            format!(
                "{:.2}x",
                self.after.percentile(99.0).as_secs_f64() / p99_without.as_secs_f64().max(1e-9)
            ),
            "",
        );
        row(
            "reloads after the swaps, files unchanged",
            self.reloads_after
                .map_or_else(|| "n/a".to_owned(), |n| n.to_string()),
            &format!("0: {}", verdict(self.reloads_after == Some(0))),
        );
        row(
            "rewrites served by the watcher's reloads",
            format!(
                "{} served, {} not within {:?}",
                self.swaps.served, self.swaps.missed, PICKUP_LIMIT
            ),
            verdict(self.swaps.missed == 0 && self.swaps.served > 0),
        );
        row(
            "  write to served, median / max",
            format!("{} / {}", ms(reload_median), ms(reload_max)),
            "",
        );
        row(
            "all reloads in the phase (/metrics)",
            self.swaps.all_reloads.map_or_else(
                || "n/a".to_owned(),
                |c| {
                    format!(
                        "{} swapped, {} unchanged, {} failed",
                        c.swapped, c.unchanged, c.failed
                    )
                },
            ),
            "",
        );
        row(
            "toggled key served as last written",
            if self.swaps.final_state_ok {
                "yes"
            } else {
                "no"
            }
            .to_owned(),
            verdict(self.swaps.final_state_ok),
        );

        for d in &self.diagnostics {
            let p99 = d.phase.percentile(99.0).as_secs_f64();
            row(
                &format!("diagnostic: {}", d.label),
                format!(
                    "{} loads, {} ok, {} failed, {:.1} s",
                    d.loads,
                    d.phase.latencies.len(),
                    d.phase.failures,
                    d.phase.elapsed.as_secs_f64()
                ),
                "",
            );
            row("  CPU used: this process / others", cpu(&d.phase), "");
            row("  p50 / p99 / p99.9 / max", latencies(&d.phase), "");
            row(
                "  p99 / p99 without swaps",
                format!("{:.2}x", p99 / p99_without.as_secs_f64().max(1e-9)),
                "",
            );
        }

        let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
        println!();
        println!(
            "policy_swap: {} keys, {CLIENTS} clients x {} sequential requests per phase",
            settings.keys, settings.requests_per_client
        );
        println!("{:<w0$}  {:<w1$}  target", "measure", "value");
        println!("{}", "-".repeat(w0 + w1 + 20));
        for (what, value, target) in &rows {
            println!("{what:<w0$}  {value:<w1$}  {target}");
        }
        for (name, phase) in [
            ("without swaps", &self.without),
            ("during swaps", &self.with),
            ("after the swaps", &self.after),
        ] {
            if let Some(e) = &phase.first_failure {
                println!("first failure {name}: {e}");
            }
        }
    }
}

/// A `/proc/self/status` field given in kB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        line.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// CPU time, in clock ticks, used by the whole machine (busy, from `/proc/stat`) and by this
/// process (`/proc/self/stat`).
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: busy is all but idle and iowait.
    let busy = fields.iter().take(8).sum::<u64>() - fields.get(3)? - fields.get(4)?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (rest.get(11)?.parse().ok()?, rest.get(12)?.parse().ok()?);
    Some((busy, utime + stime))
}

/// `USER_HZ`: 100 on every Linux this runs on (the bench has no `sysconf` binding).
fn ticks_per_second() -> f64 {
    100.0
}

fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS").map(|k| k * 1024)
}
