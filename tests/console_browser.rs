//! The web console at `/ui/`: its static side over HTTP (the login redirect, the security headers,
//! content types, caching, unknown paths), and the user journey in a real headless Chromium
//! driven by `tests/console/journey.py` (selenium + chromedriver, and the openai SDK for the
//! gateway calls), with screenshots of each page under `target/console-screenshots/`.

mod common;

use common::upstream::{free_port, MockUpstream, Reply};
use common::{key_file, TestGateway};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An admin and a viewer, as `KEYGATE_ADMIN_TOKENS` names them.
const TOKENS: &str =
    "ops:admin:console-admin-token-0123456789,grafana:viewer:console-viewer-token-0123456789";
const ADMIN_BEARER: &str = "console-admin-token-0123456789";
const VIEWER_BEARER: &str = "console-viewer-token-0123456789";

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Two priced models, a workload that may use both, two guardrails a key may add (the workload
/// applies none); the admin listener on a free port.
fn policy(upstream: &str) -> String {
    format!(
        r#"admin_listen: 127.0.0.1:{admin}
state_dir: state
providers:
  p1:
    format: openai
    api_key: sk-real
    endpoints:
      - {{url: "{upstream}"}}
models:
  m1:
    provider: p1
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
  m2:
    provider: p1
    price: {{input_per_mtok: 3.0, output_per_mtok: 6.0}}
guardrails:
  no-secrets: {{secrets: all, action: block}}
  pii-basic: {{pii: [email], action: redact}}
workloads:
  app:
    description: the checkout service
    models: [m1, m2]
"#,
        admin = free_port()
    )
}

fn start(upstream: &str) -> TestGateway {
    let (_, seed) = key_file("app", "owner: seed-team\n");
    TestGateway::prepare(&policy(upstream), &[("seed".to_owned(), seed)])
        .boot_with_admin_tokens(TOKENS)
}

/// A client that shows redirects instead of following them.
fn browser_like() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{} has no {name} header", resp.url()))
}

/// Every console answer, whatever its status, carries the same protections.
fn assert_protected(resp: &reqwest::Response) {
    assert_eq!(
        header(resp, "content-security-policy"),
        CSP,
        "{}",
        resp.url()
    );
    assert_eq!(header(resp, "x-content-type-options"), "nosniff");
    assert_eq!(header(resp, "referrer-policy"), "no-referrer");
}

/// The `kg_session` cookie of a fresh console session (`name=value` as a browser sends it back).
async fn session_cookie(base: &str, token: &str) -> String {
    let resp = browser_like()
        .post(format!("{base}/admin/session"))
        .json(&serde_json::json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "login");
    let cookie = header(&resp, "set-cookie");
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pages_need_a_session_and_carry_strict_headers() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let gw = start(&up.url());
    let base = gw.admin_base();
    let http = browser_like();
    let get = |path: &str, cookie: Option<&str>| {
        let mut req = http.get(format!("{base}{path}"));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };

    // Signed out: the app redirects to the login page, which is served.
    for cookie in [None, Some("kg_session=not-a-session-0123456789")] {
        let resp = get("/ui/", cookie).await.unwrap();
        assert_eq!(resp.status(), 303, "{cookie:?}");
        assert_eq!(header(&resp, "location"), "/ui/login");
        assert_eq!(header(&resp, "cache-control"), "no-store");
        assert_protected(&resp);
    }
    let resp = get("/ui", None).await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), header(&resp, "location")),
        (303, "/ui/")
    );
    let resp = get("/ui/login", None).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&resp, "cache-control"), "no-store");
    assert_protected(&resp);
    let page = resp.text().await.unwrap();
    assert!(page.contains(r#"<script type="module" src="/ui/assets/login.js"></script>"#));
    assert!(page.contains(r#"<label for="token">Admin token</label>"#));

    // Signed in, as an admin or a viewer: the app is served, and the login page sends the browser
    // on to it. After logout the cookie no longer opens it.
    for token in [VIEWER_BEARER, ADMIN_BEARER] {
        let cookie = session_cookie(&base, token).await;
        let resp = get("/ui/", Some(&cookie)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(&resp, "cache-control"), "no-store");
        assert_protected(&resp);
        assert!(resp.text().await.unwrap().contains("/ui/assets/app.js"));
        let resp = get("/ui/login", Some(&cookie)).await.unwrap();
        assert_eq!(
            (resp.status().as_u16(), header(&resp, "location")),
            (303, "/ui/")
        );
        let csrf: serde_json::Value = http
            .get(format!("{base}/admin/session"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let out = http
            .delete(format!("{base}/admin/session"))
            .header("cookie", &cookie)
            .header("x-csrf-token", csrf["csrf_token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(out.status(), 200, "logout");
        let resp = get("/ui/", Some(&cookie)).await.unwrap();
        assert_eq!(
            (resp.status().as_u16(), header(&resp, "location")),
            (303, "/ui/login")
        );
    }
    let cookie = session_cookie(&base, ADMIN_BEARER).await;

    // Assets: the right types, public (they hold no data), revalidated by entity tag.
    for (path, content_type, needle) in [
        (
            "/ui/assets/app.js",
            "text/javascript; charset=utf-8",
            "import ",
        ),
        (
            "/ui/assets/chart.js",
            "text/javascript; charset=utf-8",
            "createElementNS",
        ),
        (
            "/ui/assets/style.css",
            "text/css; charset=utf-8",
            "focus-visible",
        ),
        ("/ui/assets/icon.svg", "image/svg+xml", "<svg"),
    ] {
        let resp = get(path, None).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(header(&resp, "content-type"), content_type, "{path}");
        assert_eq!(header(&resp, "cache-control"), "no-cache", "{path}");
        assert_protected(&resp);
        let etag = header(&resp, "etag").to_owned();
        let text = resp.text().await.unwrap();
        assert!(text.contains(needle), "{path}: {needle}");
        let again = http
            .get(format!("{base}{path}"))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(header(&again, "etag"), etag);
    }

    // Unknown paths get the console's own 404 page, with the same protections; other methods 405.
    for path in ["/ui/nope", "/ui/assets/nope.js", "/ui/assets/../index.html"] {
        let resp = get(path, Some(&cookie)).await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(header(&resp, "content-type"), "text/html; charset=utf-8");
        assert_protected(&resp);
    }
    let resp = http.post(format!("{base}/ui/")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(header(&resp, "allow"), "GET");
    assert_protected(&resp);
}

/// The `target/` directory this test binary was built into.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<binary>
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// The browser and driver, or a failure that says how to install them: a journey that cannot run
/// must not pass.
fn browser_tools() -> (PathBuf, PathBuf) {
    let find = |var: &str, default: &str| {
        let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_owned()));
        assert!(
            path.is_file(),
            "{} not found: the console journey needs headless Chromium and chromedriver \
             (`apt-get install -y chromium chromium-driver`, or set {var})",
            path.display()
        );
        path
    };
    let tools = (
        find("CHROMIUM", "/usr/bin/chromium"),
        find("CHROMEDRIVER", "/usr/bin/chromedriver"),
    );
    let python = std::process::Command::new("python3")
        .args(["-c", "import selenium, openai"])
        .output()
        .expect("python3 runs");
    assert!(
        python.status.success(),
        "the console journey needs the selenium and openai Python packages \
         (`pip install selenium openai`): {}",
        String::from_utf8_lossy(&python.stderr)
    );
    tools
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_journey_in_headless_chromium() {
    let (chromium, chromedriver) = browser_tools();
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let gw = start(&up.url());
    let shots = target_dir().join("console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/journey.py");

    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .env("KEYGATE_CONSOLE", gw.admin_base())
        .env("KEYGATE_ADMIN_BEARER", ADMIN_BEARER)
        .env("KEYGATE_VIEWER_BEARER", VIEWER_BEARER)
        .env("KEYGATE_GATEWAY", gw.url("/v1"))
        .env("KEYGATE_SCREENSHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .env("CHROMEDRIVER", &chromedriver)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser journey finished within 4 minutes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the console journey failed (screenshots in {}):\n{stdout}\n{stderr}",
        shots.display()
    );

    // What the browser did reached the gateway: the upstream saw the SDK's requests, and the key's
    // files and audit trail show the journey's changes.
    assert!(
        up.request_count() >= 4,
        "{} upstream requests",
        up.request_count()
    );
    assert!(
        !gw.keys_dir().join("journey-key.yaml").exists(),
        "the key's file is gone after the delete"
    );
    let audit = std::fs::read_to_string(gw.dir.path().join("management-audit.jsonl")).unwrap();
    let updates: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"action\":\"update\""))
        .collect();
    assert!(
        updates
            .iter()
            .any(|l| l.contains("models") && l.contains("guardrails")),
        "the edit changed the models and the guardrails: {updates:?}"
    );
    for action in ["create", "update", "pause", "resume", "rotate", "delete"] {
        assert!(
            audit.contains(&format!("\"action\":\"{action}\"")),
            "no {action} in the management audit log:\n{audit}"
        );
    }
    assert!(
        audit.contains("admin:ops"),
        "changes are audited with the token's name"
    );
    let pages = std::fs::read_dir(&shots).unwrap().count();
    assert!(pages >= 12, "{pages} screenshots");
}
