//! No secret in the logs at any level: the real `keygate serve` binary at `KEYGATE_LOG=trace`
//! carries every kind of traffic, and its whole output is searched for the provider key, the
//! virtual keys and the admin token.

mod common;

use common::upstream::{free_port, MockUpstream, Reply};
use common::{client, key_file, keygate_bin, post_json, TestGateway};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A gateway process whose stdout and stderr are collected as they are written.
struct Process {
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Process {
    fn spawn(config: &std::path::Path, admin_token: &str) -> Process {
        let mut child = Command::new(keygate_bin())
            .args(["serve", "--config"])
            .arg(config)
            .env("KEYGATE_LOG", "trace")
            .env("KEYGATE_ADMIN_TOKEN", admin_token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keygate serve");
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for mut pipe in pipes {
            let sink = output.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }));
        }
        Process {
            child,
            output,
            readers,
        }
    }

    /// Stops the process and returns everything it wrote.
    fn finish(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let output = self.output.lock().unwrap();
        String::from_utf8_lossy(&output).into_owned()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request head written by hand, for heads no HTTP client sends (a malformed header).
fn raw_request(port: u16, head: &str) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_provider_key_virtual_key_or_admin_token() {
    let nonce = keygate::keys::secret::generate().unwrap().secret;
    let provider_key = format!("sk-provider-{}", &nonce[3..]);
    let admin_token = format!("admin-token-{}", &nonce[3..]);
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let admin_port = free_port();
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::prepare(
        &format!(
            r#"admin_listen: 127.0.0.1:{admin_port}
providers:
  p1:
    format: openai
    api_key: {provider_key}
    endpoints:
      - {{url: "{}"}}
models:
  m1:
    provider: p1
  m2:
    provider: p1
workloads:
  app:
    models: [m1]
"#,
            up.url()
        ),
        &[("k".into(), yaml)],
    );
    let process = Process::spawn(&gw.config_path, &admin_token);
    let admin = format!("http://127.0.0.1:{admin_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client().get(format!("{admin}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "keygate never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let chat = gw.url("/v1/chat/completions");
    let messages = json!([{"role": "user", "content": "hi"}]);

    // a chat, a stream, and refusals: a wrong key and a model the key may not use
    let body = json!({"model": "m1", "messages": messages});
    let resp = post_json(&chat, &secret, &body).await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    up.set_reply(Reply::chat_stream_ok("m1"));
    let stream = json!({"model": "m1", "stream": true, "messages": messages});
    let resp = post_json(&chat, &secret, &stream).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("[DONE]"));
    let mut wrong = secret.clone().into_bytes();
    let last = wrong.len() - 1;
    wrong[last] = if wrong[last] == b'A' { b'B' } else { b'A' };
    let resp = post_json(&chat, std::str::from_utf8(&wrong).unwrap(), &body).await;
    assert_eq!(resp.status(), 401);
    let resp = post_json(
        &chat,
        &secret,
        &json!({"model": "m2", "messages": messages}),
    )
    .await;
    assert_eq!(resp.status(), 403);
    // the provider refuses its credential and echoes it whole
    up.set_reply(Reply::Json {
        status: 401,
        body: json!({"error": {"message": format!("Incorrect API key provided: {provider_key}")}}),
    });
    let resp = post_json(&chat, &secret, &body).await;
    assert!(resp.status().is_client_error() || resp.status().is_server_error());
    resp.bytes().await.unwrap();
    up.set_reply(Reply::chat_ok());

    // the admin API: a listing, a key created, the new key used
    let resp = client()
        .get(format!("{admin}/admin/keys"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client()
        .post(format!("{admin}/admin/keys"))
        .bearer_auth(&admin_token)
        .json(&json!({"id": "created", "workload": "app"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    let created = created["secret"].as_str().unwrap().to_owned();
    let resp = post_json(&chat, &created, &body).await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();

    // malformed heads that carry a credential: Pingora reports them with the bytes it read
    raw_request(
        gw.port,
        &format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\nbad header\r\n\r\n"),
    );
    raw_request(
        admin_port,
        &format!("GET /admin/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin_token}\r\nbad header\r\n\r\n"),
    );

    // The last request's logging may run after its response: let it finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let output = process.finish();
    // The traffic was logged at trace level: the search below covers Pingora's own lines.
    assert!(output.contains("TRACE"), "no trace lines: {output}");
    let leaks: Vec<String> = [
        ("the provider key", provider_key.as_str()),
        ("a virtual key", secret.as_str()),
        ("the created virtual key", created.as_str()),
        ("the admin token", admin_token.as_str()),
    ]
    .into_iter()
    .flat_map(|(what, secret)| {
        let lines = output.lines().filter(move |l| l.contains(secret));
        lines.map(move |l| format!("{what}: {}", l.chars().take(300).collect::<String>()))
    })
    .collect();
    assert!(
        leaks.is_empty(),
        "{} lines hold a secret: {leaks:#?}",
        leaks.len()
    );
}
