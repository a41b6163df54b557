//! Live policy: revocation latency, reloads under traffic, rotation, ConfigMap symlink swaps, the
//! admin API and the management audit log.

mod common;

use common::upstream::{MockUpstream, Reply};
use common::{client, error_of, get_text, key_file, post_json, TestGateway};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn policy(upstream: &str) -> String {
    format!(
        "admin_listen: 127.0.0.1:{}\n{}",
        common::upstream::free_port(),
        common::one_model_policy(upstream, "")
    )
}

fn chat() -> Value {
    json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]})
}

async fn status_of(gw_url: &str, secret: &str) -> u16 {
    client()
        .post(gw_url)
        .bearer_auth(secret)
        .json(&chat())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Writes like `git checkout` does: a new file renamed over the old one.
fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Sends requests with `secret` until one is refused; returns how long after `changed` that was.
async fn first_refusal_after(url: &str, secret: &str, change: impl FnOnce()) -> Duration {
    // traffic is flowing before the change
    for _ in 0..5 {
        assert_eq!(status_of(url, secret).await, 200);
    }
    change();
    let changed = Instant::now();
    loop {
        let status = status_of(url, secret).await;
        if status != 200 {
            assert!(status == 401 || status == 403, "refused with {status}");
            return changed.elapsed();
        }
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "key still accepted 5 s after the change"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_and_paused_keys_are_refused_within_a_second() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (a, a_yaml) = key_file("app", "");
    let (b, b_yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &policy(&up.url()),
        &[("a".into(), a_yaml), ("b".into(), b_yaml.clone())],
    );
    let url = gw.url("/v1/chat/completions");

    let keys_dir = gw.keys_dir();
    let took = first_refusal_after(&url, &a, || {
        std::fs::remove_file(keys_dir.join("a.yaml")).unwrap()
    })
    .await;
    println!("delete → first refusal: {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "deleted key refused after {took:?}"
    );
    assert_eq!(
        error_of(post_json(&url, &a, &chat()).await).await.2,
        "invalid_api_key"
    );

    let path = keys_dir.join("b.yaml");
    let took = first_refusal_after(&url, &b, || {
        replace_file(&path, &format!("{b_yaml}status: paused\n"))
    })
    .await;
    println!("pause → first refusal: {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "paused key refused after {took:?}"
    );
    assert_eq!(
        error_of(post_json(&url, &b, &chat()).await).await.2,
        "key_paused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_reloads_under_traffic_fail_no_request_and_a_bad_file_changes_nothing() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (a, a_yaml) = key_file("app", "");
    let (_b, b_yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &policy(&up.url()),
        &[("a".into(), a_yaml), ("b".into(), b_yaml.clone())],
    );
    let running = gw.running.as_ref().unwrap();
    let url = gw.url("/v1/chat/completions");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, url, a) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            url.clone(),
            a.clone(),
        );
        clients.push(tokio::spawn(async move {
            let http = client();
            while !stop.load(Ordering::Relaxed) {
                let outcome = match http.post(&url).bearer_auth(&a).json(&chat()).send().await {
                    Ok(r) if r.status() == 200 => {
                        r.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("failed request: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }

    let b_path = gw.keys_dir().join("b.yaml");
    let bad_path = gw.keys_dir().join("zz-bad.yaml");
    let reloader = running.reloader.clone();
    let store = running.store.clone();
    let (swapped, unchanged) = tokio::task::spawn_blocking(move || {
        let (mut swapped, mut unchanged) = (0, 0);
        for i in 0..100 {
            if i % 2 == 0 {
                replace_file(&b_path, &format!("{b_yaml}description: revision {i}\n"));
            }
            if i == 50 {
                // Settle first, so a watcher reload of revision 50 cannot land after `digest`.
                reloader.reload_blocking().expect("valid policy reloads");
                let digest = store.load().digest.clone();
                std::fs::write(&bad_path, "hash: \"sha256:nothex\"\nworkload: ghost\n").unwrap();
                let problems = reloader
                    .reload_blocking()
                    .expect_err("invalid file refused");
                assert!(problems.to_string().contains("zz-bad.yaml"), "{problems}");
                assert_eq!(store.load().digest, digest, "the old policy keeps serving");
                std::fs::remove_file(&bad_path).unwrap();
            }
            match reloader.reload_blocking().expect("valid policy reloads") {
                keygate::reload::ReloadOutcome::Swapped { .. } => swapped += 1,
                keygate::reload::ReloadOutcome::Unchanged { .. } => unchanged += 1,
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (swapped, unchanged)
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    println!(
        "reloads: {swapped} swapped, {unchanged} unchanged; requests ok {}, failed {}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(swapped + unchanged, 100);
    assert!(
        swapped >= 10,
        "changed revisions were swapped in ({swapped})"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "traffic flowed during the reloads"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_without_and_with_grace() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let gw = TestGateway::prepare(&policy(&up.url()), &[]).boot();
    let url = gw.url("/v1/chat/completions");
    let files = keygate::keys::lifecycle::KeyFiles::open(&gw.config_path).unwrap();
    let actor = keygate::keys::lifecycle::Actor("test".into());
    let reloader = gw.running.as_ref().unwrap().reloader.clone();

    let old = files
        .create(
            "r1",
            keygate::keys::lifecycle::NewKey {
                workload: "app".into(),
                ..Default::default()
            },
            &actor,
        )
        .unwrap()
        .outcome;
    reloader.reload_blocking().unwrap();
    assert_eq!(status_of(&url, &old.secret.secret).await, 200);

    // no grace: the old secret stops at once
    let new = files.rotate("r1", None, &actor).unwrap().outcome;
    reloader.reload_blocking().unwrap();
    assert_eq!(status_of(&url, &new.secret.secret).await, 200);
    assert_eq!(status_of(&url, &old.secret.secret).await, 401);

    // with grace: both work until the grace ends, then only the new one
    let newer = files
        .rotate("r1", Some(Duration::from_secs(2)), &actor)
        .unwrap()
        .outcome;
    reloader.reload_blocking().unwrap();
    assert!(newer.previous_valid_until.is_some());
    assert_eq!(status_of(&url, &newer.secret.secret).await, 200);
    assert_eq!(
        status_of(&url, &new.secret.secret).await,
        200,
        "old secret inside its grace"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        status_of(&url, &new.secret.secret).await,
        401,
        "old secret after its grace"
    );
    assert_eq!(status_of(&url, &newer.secret.secret).await, 200);
    let file = std::fs::read_to_string(gw.keys_dir().join("r1.yaml")).unwrap();
    assert!(!file.contains(&newer.secret.secret) && !file.contains(&new.secret.secret));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn configmap_style_symlink_swap_triggers_a_reload() {
    use std::os::unix::fs::symlink;
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::prepare(&policy(&up.url()), &[]);
    let keys = gw.keys_dir();
    // The layout kubelet writes: timestamped dir, `..data` symlink to it, file symlinks through it.
    std::fs::create_dir(keys.join("..2026_11_23_01")).unwrap();
    std::fs::write(keys.join("..2026_11_23_01/svc.yaml"), &yaml).unwrap();
    symlink("..2026_11_23_01", keys.join("..data")).unwrap();
    symlink("..data/svc.yaml", keys.join("svc.yaml")).unwrap();
    let gw = gw.boot();
    let url = gw.url("/v1/chat/completions");

    let took = first_refusal_after(&url, &secret, || {
        std::fs::create_dir(keys.join("..2026_11_23_02")).unwrap();
        std::fs::write(
            keys.join("..2026_11_23_02/svc.yaml"),
            format!("{yaml}status: paused\n"),
        )
        .unwrap();
        symlink("..2026_11_23_02", keys.join("..data_tmp")).unwrap();
        std::fs::rename(keys.join("..data_tmp"), keys.join("..data")).unwrap();
    })
    .await;
    println!("ConfigMap swap → first refusal: {took:?}");
    assert!(took < Duration::from_secs(1));
}

struct Admin {
    base: String,
    token: &'static str,
}

impl Admin {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, body, Some(self.token)).await
    }

    async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = client().request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_manages_keys_and_audits_every_event() {
    use reqwest::Method;
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let gw = TestGateway::prepare(&policy(&up.url()), &[])
        .boot_with_admin(Some("ops:admin-token-0123456789abcdef"));
    let admin = Admin {
        base: format!("http://127.0.0.1:{}", gw.admin_port()),
        token: "admin-token-0123456789abcdef",
    };
    let url = gw.url("/v1/chat/completions");

    // authentication
    for token in [
        None,
        Some("wrong"),
        Some("ops:admin-token-0123456789abcdef"),
    ] {
        let (status, body) = admin
            .call_with(
                Method::POST,
                "/admin/keys",
                Some(json!({"id": "x", "workload": "app"})),
                token,
            )
            .await;
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(body["error"]["code"], "invalid_admin_token");
    }
    assert!(
        !gw.keys_dir().join("x.yaml").exists(),
        "unauthenticated calls change nothing"
    );

    // create
    let (status, created) = admin
        .call(
            Method::POST,
            "/admin/keys",
            Some(json!({"id": "svc", "workload": "app", "owner": "team-a"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(created["reload"]["ok"], true);
    assert_eq!(status_of(&url, &secret).await, 200, "usable at once");
    let (status, body) = admin
        .call(
            Method::POST,
            "/admin/keys",
            Some(json!({"id": "svc", "workload": "app"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("key_exists"))
    );
    let resp = client()
        .post(format!("{}/admin/keys", admin.base))
        .bearer_auth(admin.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (status, _) = admin
        .call(
            Method::POST,
            "/admin/keys",
            Some(json!({"id": "bad", "workload": "ghost"})),
        )
        .await;
    assert_eq!(status, 422);
    assert!(!gw.keys_dir().join("bad.yaml").exists());
    let (status, _) = admin
        .call(
            Method::POST,
            "/admin/keys",
            Some(json!({"id": "../escape", "workload": "app"})),
        )
        .await;
    assert_eq!(status, 400);

    // read
    let (status, list) = admin.call(Method::GET, "/admin/keys", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"][0]["id"], "svc");
    let (status, one) = admin.call(Method::GET, "/admin/keys/svc", None).await;
    assert_eq!(
        (status, one["owner"].as_str(), one["status"].as_str()),
        (200, Some("team-a"), Some("active"))
    );
    assert!(!one.to_string().contains(&secret));
    assert_eq!(
        admin.call(Method::GET, "/admin/keys/ghost", None).await.0,
        404
    );

    // pause, resume
    assert_eq!(
        admin
            .call(Method::POST, "/admin/keys/svc/pause", None)
            .await
            .0,
        200
    );
    assert_eq!(status_of(&url, &secret).await, 403);
    assert_eq!(
        admin
            .call(Method::POST, "/admin/keys/svc/resume", None)
            .await
            .0,
        200
    );
    assert_eq!(status_of(&url, &secret).await, 200);
    assert_eq!(
        admin
            .call(Method::POST, "/admin/keys/ghost/pause", None)
            .await
            .0,
        404
    );

    // rotate with grace: both secrets work
    let (status, rotated) = admin
        .call(
            Method::POST,
            "/admin/keys/svc/rotate",
            Some(json!({"grace": "1h"})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert!(rotated["previous_secret_valid_until"].is_string());
    assert_eq!(status_of(&url, &new_secret).await, 200);
    assert_eq!(status_of(&url, &secret).await, 200);
    assert_eq!(
        admin
            .call(
                Method::POST,
                "/admin/keys/svc/rotate",
                Some(json!({"grace": "soon"}))
            )
            .await
            .0,
        400
    );

    // two concurrent writers on one key never corrupt its file
    let mut writes = Vec::new();
    for i in 0..10 {
        let (base, action) = (
            admin.base.clone(),
            if i % 2 == 0 { "pause" } else { "resume" },
        );
        writes.push(tokio::spawn(async move {
            client()
                .post(format!("{base}/admin/keys/svc/{action}"))
                .bearer_auth("admin-token-0123456789abcdef")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for w in writes {
        assert_eq!(w.await.unwrap(), 200);
    }
    keygate::keys::store::read_key(&gw.keys_dir(), "svc").expect("file still parses");
    assert_eq!(
        admin
            .call(Method::POST, "/admin/keys/svc/resume", None)
            .await
            .0,
        200
    );

    // reload: fine, then refused with the problems while the old policy keeps serving
    let (status, body) = admin.call(Method::POST, "/admin/reload", None).await;
    assert_eq!((status, body["ok"].as_bool()), (200, Some(true)));
    std::fs::write(gw.keys_dir().join("broken.yaml"), "hash: [").unwrap();
    let (status, body) = admin.call(Method::POST, "/admin/reload", None).await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["problems"][0]
            .as_str()
            .unwrap()
            .contains("broken.yaml"),
        "{body}"
    );
    assert_eq!(status_of(&url, &new_secret).await, 200);
    std::fs::remove_file(gw.keys_dir().join("broken.yaml")).unwrap();

    // delete
    assert_eq!(
        admin.call(Method::DELETE, "/admin/keys/svc", None).await.0,
        200
    );
    assert_eq!(status_of(&url, &new_secret).await, 401);
    assert_eq!(
        admin.call(Method::DELETE, "/admin/keys/svc", None).await.0,
        404
    );
    assert_eq!(admin.call(Method::GET, "/admin/nothing", None).await.0, 404);

    // the audit log: one line per successful lifecycle event, with the token's name as actor
    let audit = std::fs::read_to_string(gw.dir.path().join("management-audit.jsonl")).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.len(), 16, "{actions:?}");
    assert_eq!(actions[..4], ["create", "pause", "resume", "rotate"]);
    assert!(
        actions[4..15]
            .iter()
            .all(|a| *a == "pause" || *a == "resume"),
        "{actions:?}"
    );
    assert_eq!(*actions.last().unwrap(), "delete");
    for l in &lines {
        assert_eq!(l["actor"], "admin:ops");
        assert_eq!(l["key_id"], "svc");
        assert!(l["ts"].is_string());
    }
    assert!(!audit.contains(&secret) && !audit.contains(&new_secret));
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_is_off_without_a_token_but_metrics_and_health_answer() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let gw = TestGateway::prepare(&policy(&up.url()), &[]).boot();
    let admin = Admin {
        base: format!("http://127.0.0.1:{}", gw.admin_port()),
        token: "anything",
    };
    let (status, body) = admin.call(reqwest::Method::GET, "/admin/keys", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("admin_disabled"))
    );
    assert_eq!(
        admin.call(reqwest::Method::GET, "/healthz", None).await.0,
        200
    );
    let metrics = get_text(&format!("{}/metrics", admin.base)).await;
    let digest = gw.running.as_ref().unwrap().store.load().digest.clone();
    assert!(
        metrics.contains(&format!("keygate_policy_info{{digest=\"{digest}\"}} 1")),
        "{metrics}"
    );
    assert!(metrics.contains("keygate_policy_reloads_total{result=\"failed\"} 0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_does_not_trigger_itself() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (_a, a_yaml) = key_file("app", "");
    let gw = TestGateway::start(&policy(&up.url()), &[("a".into(), a_yaml.clone())]);
    let metrics_url = format!("http://127.0.0.1:{}/metrics", gw.admin_port());
    // Written at once after the start, so it may land before the watches are armed: the
    // watcher's catch-up load must see it then.
    replace_file(
        &gw.keys_dir().join("a.yaml"),
        &format!("{a_yaml}description: changed\n"),
    );
    let started = Instant::now();
    while reload_counts(&metrics_url).await.swapped == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let settled = reload_counts(&metrics_url).await.all();
    // Reading every key file during a reload must not look like a change.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        reload_counts(&metrics_url).await.all(),
        settled,
        "reloads kept happening with no change"
    );
}

/// `keygate_policy_reloads_total` by result.
struct ReloadCounts {
    swapped: u64,
    unchanged: u64,
    failed: u64,
}

impl ReloadCounts {
    fn all(&self) -> u64 {
        self.swapped + self.unchanged + self.failed
    }
}

async fn reload_counts(metrics_url: &str) -> ReloadCounts {
    let text = get_text(metrics_url).await;
    let count = |result: &str| {
        let prefix = format!("keygate_policy_reloads_total{{result=\"{result}\"}} ");
        text.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|n| n.parse::<u64>().unwrap())
            .sum::<u64>()
    };
    ReloadCounts {
        swapped: count("swapped"),
        unchanged: count("unchanged"),
        failed: count("failed"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_made_beside_a_broken_file_applies_once_the_file_is_fixed() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (a_secret, a_yaml) = key_file("app", "");
    let (_b, b_yaml) = key_file("app", "");
    // Settled files: the watcher's reloads then skip every key file it did not see change.
    let gw = TestGateway::prepare(
        &policy(&up.url()),
        &[("a".into(), a_yaml.clone()), ("b".into(), b_yaml.clone())],
    );
    std::thread::sleep(Duration::from_millis(1_100));
    let gw = gw.boot();
    let url = gw.url("/v1/chat/completions");
    let metrics_url = format!("http://127.0.0.1:{}/metrics", gw.admin_port());
    let wait_for = |done: fn(&ReloadCounts) -> bool, what: &'static str| {
        let metrics_url = metrics_url.clone();
        async move {
            let started = Instant::now();
            while !done(&reload_counts(&metrics_url).await) {
                assert!(started.elapsed() < Duration::from_secs(5), "{what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(status_of(&url, &a_secret).await, 200);
    let keys = gw.keys_dir();

    // One change: b broken and a paused. The reload fails; the old policy keeps serving a.
    replace_file(&keys.join("b.yaml"), "hash: nope\nworkload: app\n");
    replace_file(&keys.join("a.yaml"), &format!("{a_yaml}status: paused\n"));
    wait_for(|c| c.failed >= 1, "the broken file was not refused").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status_of(&url, &a_secret).await, 200);

    // Fixing b alone must also bring in a's pause, though the fix touched only b.
    // Nothing was swapped since the start (the catch-up load found the files unchanged).
    assert_eq!(reload_counts(&metrics_url).await.swapped, 0);
    replace_file(&keys.join("b.yaml"), &b_yaml);
    wait_for(|c| c.swapped >= 1, "the fix was not swapped in").await;
    assert_eq!(
        error_of(post_json(&url, &a_secret, &chat()).await).await.2,
        "key_paused"
    );
}
