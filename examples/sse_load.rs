//! Long paced SSE streams at high concurrency, for `benches/streams.sh`: a paced upstream and a
//! load client in one small binary, so that the bench needs nothing but this repository.
//!
//! - `sse_load upstream ADDR INTERVAL_MS EVENTS`: answers every POST with an OpenAI-style chat
//!   stream of EVENTS chunks, one every INTERVAL_MS (the first at once), then a usage chunk and
//!   `[DONE]`; keep-alive, chunked framing, each event its own write.
//! - `sse_load clients ADDR PATH STREAMS BEARER MODEL [OPEN_OVER_MS]`: opens STREAMS connections,
//!   all at once or spread evenly over OPEN_OVER_MS; each sends one streaming chat request and
//!   reads its stream to the end. Prints one JSON line:
//!   streams completed and failed, events, time to the first event (p50, p99) and the gaps
//!   between events (p50, p99, max), in ms.
//!
//! A stream counts as failed unless it answers 200 and ends with `[DONE]` and the terminating
//! chunk. Times are taken when a read returns, the way a client sees them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match args.get(1).map(String::as_str) {
        Some("upstream") if args.len() == 5 => runtime.block_on(upstream(
            args[2].parse().expect("ADDR"),
            Duration::from_millis(args[3].parse().expect("INTERVAL_MS")),
            args[4].parse().expect("EVENTS"),
        )),
        Some("clients") if args.len() == 7 || args.len() == 8 => runtime.block_on(clients(
            args[2].parse().expect("ADDR"),
            &args[3],
            args[4].parse().expect("STREAMS"),
            &args[5],
            &args[6],
            Duration::from_millis(args.get(7).map_or(0, |a| a.parse().expect("OPEN_OVER_MS"))),
        )),
        _ => {
            eprintln!(
                "usage: sse_load upstream ADDR INTERVAL_MS EVENTS\n       sse_load clients ADDR PATH STREAMS BEARER MODEL [OPEN_OVER_MS]"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("sse_load: {e}");
        std::process::exit(1);
    }
}

const CHUNK: &str = r#"{"id":"chatcmpl-load","object":"chat.completion.chunk","created":1735689600,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" token"},"finish_reason":null}]}"#;
const USAGE: &str = r#"{"id":"chatcmpl-load","object":"chat.completion.chunk","created":1735689600,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":300,"total_tokens":320}}"#;

async fn upstream(addr: SocketAddr, interval: Duration, events: usize) -> std::io::Result<()> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // Thousands of clients connect at once: the default backlog would drop their SYNs.
    let listener = socket.listen(8192)?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = serve(stream, interval, events).await;
        });
    }
}

/// One upstream connection: one stream per request, as long as the client keeps it.
async fn serve(mut stream: TcpStream, interval: Duration, events: usize) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        if !read_request(&mut stream, &mut buf).await? {
            return Ok(());
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
            .await?;
        let mut ticks = tokio::time::interval(interval);
        for _ in 0..events {
            ticks.tick().await;
            write_event(&mut stream, CHUNK).await?;
        }
        write_event(&mut stream, USAGE).await?;
        write_event(&mut stream, "[DONE]").await?;
        stream.write_all(b"0\r\n\r\n").await?;
    }
}

async fn write_event(stream: &mut TcpStream, data: &str) -> std::io::Result<()> {
    let event = format!("data: {data}\n\n");
    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
    stream.write_all(chunk.as_bytes()).await
}

/// Reads one request (head and Content-Length body) into `buf`; false at a clean end of stream.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(true);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What one client stream saw.
#[derive(Default)]
struct Seen {
    completed: bool,
    first_event: Option<Duration>,
    gaps: Vec<Duration>,
    events: usize,
}

async fn clients(
    addr: SocketAddr,
    path: &str,
    streams: usize,
    bearer: &str,
    model: &str,
    open_over: Duration,
) -> std::io::Result<()> {
    let body = format!(
        r#"{{"model":"{model}","stream":true,"stream_options":{{"include_usage":true}},"messages":[{{"role":"user","content":"Tell me a long story."}}]}}"#
    );
    let request: Arc<[u8]> = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {bearer}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into();
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            let request = request.clone();
            let opens_at = start + open_over.mul_f64(i as f64 / streams as f64);
            tokio::spawn(async move {
                tokio::time::sleep_until(opens_at).await;
                one_stream(addr, &request).await.unwrap_or_default()
            })
        })
        .collect();
    let mut seen = Vec::with_capacity(streams);
    for task in tasks {
        seen.push(task.await.unwrap_or_default());
    }
    let completed = seen.iter().filter(|s| s.completed).count();
    let events: usize = seen.iter().map(|s| s.events).sum();
    let mut first: Vec<f64> = seen.iter().filter_map(|s| s.first_event).map(ms).collect();
    let mut gaps: Vec<f64> = seen
        .iter()
        .flat_map(|s| s.gaps.iter().copied().map(ms))
        .collect();
    first.sort_by(f64::total_cmp);
    gaps.sort_by(f64::total_cmp);
    println!(
        r#"{{"streams":{streams},"completed":{completed},"failed":{},"events":{events},"first_event_ms":{{"p50":{:.3},"p99":{:.3}}},"gap_ms":{{"p50":{:.3},"p99":{:.3},"max":{:.3}}}}}"#,
        streams - completed,
        quantile(&first, 0.5),
        quantile(&first, 0.99),
        quantile(&gaps, 0.5),
        quantile(&gaps, 0.99),
        gaps.last().copied().unwrap_or(f64::NAN),
    );
    Ok(())
}

async fn one_stream(addr: SocketAddr, request: &[u8]) -> std::io::Result<Seen> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    let mut stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let sent = Instant::now();
    stream.write_all(request).await?;
    let mut seen = Seen::default();
    let mut received = Vec::with_capacity(1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut last_event: Option<Instant> = None;
    let mut done = false;
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(seen);
        }
        let now = Instant::now();
        let data = &chunk[..n];
        let events = data.windows(6).filter(|w| w == b"data: ").count();
        if events > 0 {
            match last_event {
                None => seen.first_event = Some(now - sent),
                Some(before) => seen.gaps.push(now - before),
            }
            last_event = Some(now);
            seen.events += events;
        }
        // Only the tail is kept: the status line, and the stream's last bytes to find its end.
        if received.len() < 16 {
            received.extend_from_slice(&data[..data.len().min(16)]);
        }
        done = done || find(data, b"[DONE]").is_some();
        if done && data.ends_with(b"0\r\n\r\n") {
            seen.completed = received.starts_with(b"HTTP/1.1 200");
            return Ok(seen);
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
