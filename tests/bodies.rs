//! Request bodies as clients send them: members that differ from a field keygate reads only in
//! letter case.

mod common;

use common::upstream::{MockUpstream, Reply};
use common::{client, key_file, one_model_policy, TestGateway};
use serde_json::Value;

struct Fixture {
    up: MockUpstream,
    gw: TestGateway,
    secret: String,
}

async fn fixture(extra: &str) -> Fixture {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&one_model_policy(&up.url(), extra), &[("k".into(), yaml)]);
    Fixture { up, gw, secret }
}

async fn refusal_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("a JSON error");
    (status, body["error"].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_named_like_a_governed_field_in_another_case_is_refused() {
    let f = fixture("").await;
    for (body, member) in [
        (r#"{"model":"m1","MODEL":"pricey"}"#, "MODEL"),
        (r#"{"Model":"m1"}"#, "Model"),
        (r#"{"model":"m1","Stream":true}"#, "Stream"),
        (r#"{"model":"m1","Max_Tokens":10}"#, "Max_Tokens"),
        (
            r#"{"model":"m1","MAX_COMPLETION_TOKENS":10}"#,
            "MAX_COMPLETION_TOKENS",
        ),
        (
            r#"{"model":"m1","max_output_TOKENS":10}"#,
            "max_output_TOKENS",
        ),
        (
            r#"{"model":"m1","stream":true,"Stream_Options":null}"#,
            "Stream_Options",
        ),
        (r#"{"model":"m1","N":3}"#, "N"),
        (r#"{"model":"m1","Best_of":3}"#, "Best_of"),
        // an escaped name is read as the provider reads it
        (r#"{"model":"m1","\u004dODEL":"pricey"}"#, "MODEL"),
        // Go folds the long s and the Kelvin sign into ASCII letters
        ("{\"model\":\"m1\",\"\u{17f}tream\":true}", "\u{17f}tream"),
        (
            "{\"model\":\"m1\",\"max_to\u{212a}ens\":1}",
            "max_to\u{212a}ens",
        ),
    ] {
        let resp = client()
            .post(f.gw.url("/v1/chat/completions"))
            .bearer_auth(&f.secret)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, error) = refusal_of(resp).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        assert_eq!(error["code"], "invalid_request", "{body}");
        assert_eq!(error["param"], member, "{body}");
    }
    assert_eq!(f.up.request_count(), 0, "nothing was forwarded");

    // exact names, other members and nested ones pass
    let resp = client()
        .post(f.gw.url("/v1/chat/completions"))
        .bearer_auth(&f.secret)
        .header("content-type", "application/json")
        .body(r#"{"model":"m1","Models":1,"metadata":{"MODEL":"x"},"messages":[{"role":"user","content":"MODEL"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
