//! Requests per second through keygate with 1 and with 4 upstream endpoints, in the same run, and
//! the upstream connection reuse ratio under that steady load (target: over 99%).
//!
//! Run: `cargo bench --bench upstream_rps` (prints a table; not a criterion bench). The load
//! generator, the mock upstreams and the gateway share the machine, so compare the two rows with
//! each other rather than with other machines.

mod common;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keygate::keys::secret;
use keygate::server::RunningGateway;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 32;
const DURATION: Duration = Duration::from_secs(5);
const REPLY: &str = r#"{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}"#;

/// A keep-alive HTTP/1.1 server answering every request with a small chat completion.
async fn mock_upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    use http_body_util::BodyExt;
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(REPLY.as_bytes())))
                            .unwrap(),
                    )
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

struct Row {
    endpoints: usize,
    rps: f64,
    errors: u64,
    reuse: f64,
}

async fn run(ports: &[u16]) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let listen = common::free_port();
    let endpoints: String = ports
        .iter()
        .map(|p| format!("      - {{url: \"http://127.0.0.1:{p}\", weight: 1}}\n"))
        .collect();
    let config = format!(
        "listen: 127.0.0.1:{listen}\nkeys_dir: keys.d\nserver: {{threads: 1}}\nproviders:\n  p:\n    format: openai\n    api_key: sk\n    endpoints:\n{endpoints}models:\n  m:\n    provider: p\nworkloads:\n  w:\n    models: [m]\n"
    );
    std::fs::create_dir_all(dir.path().join("keys.d")).unwrap();
    let s = secret::generate().unwrap();
    std::fs::write(
        dir.path().join("keys.d/k.yaml"),
        format!("hash: \"{}\"\nworkload: w\n", s.digest),
    )
    .unwrap();
    let config_path = dir.path().join("keygate.yaml");
    std::fs::write(&config_path, config).unwrap();
    let gw = RunningGateway::start(&config_path, None).expect("gateway starts");

    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{listen}/v1/chat/completions");
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#;
    let stop = Arc::new(AtomicBool::new(false));
    let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // warm-up: open the pools on both sides
    for _ in 0..CONCURRENCY {
        let _ = http
            .post(&url)
            .bearer_auth(&s.secret)
            .body(body)
            .send()
            .await;
    }
    let before = gw.handles.upstreams.snapshot();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, url, secret) = (http.clone(), url.clone(), s.secret.clone());
        let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = match http.post(&url).bearer_auth(&secret).body(body).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let counter = if ok { &done } else { &errors };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(DURATION).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = gw.handles.upstreams.snapshot();
    let sum = |v: &[keygate::upstream::state::EndpointStats],
               f: fn(&keygate::upstream::state::EndpointStats) -> u64| {
        v.iter().map(f).sum::<u64>()
    };
    let new = sum(&after, |s| s.connections_new) - sum(&before, |s| s.connections_new);
    let reused = sum(&after, |s| s.connections_reused) - sum(&before, |s| s.connections_reused);
    gw.shutdown();
    Row {
        endpoints: ports.len(),
        rps: done.load(Ordering::Relaxed) as f64 / elapsed,
        errors: errors.load(Ordering::Relaxed),
        reuse: reused as f64 / (new + reused).max(1) as f64,
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; any other run (e.g. `cargo test --benches`) only builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mut ports = Vec::new();
    for _ in 0..4 {
        ports.push(mock_upstream().await);
    }
    println!("endpoints | requests/s | errors | upstream reuse");
    for n in [1, 4, 1, 4] {
        let row = run(&ports[..n]).await;
        println!(
            "{:>9} | {:>10.0} | {:>6} | {:>13.2}%",
            row.endpoints,
            row.rps,
            row.errors,
            row.reuse * 100.0
        );
    }
}
