"""The official anthropic Python SDK against keygate in front of a recording Anthropic upstream.

Run by tests/anthropic.rs, which starts the gateway and the upstream and then checks what the
upstream received and what keygate booked. Environment:
  KEYGATE_URL       the gateway's origin, e.g. http://127.0.0.1:PORT
  KEYGATE_KEYS      JSON: {"app": secret, "limited": secret, "broke": secret, "chat_only": secret}
  KEYGATE_MODEL     the Claude model's name at the gateway
Prints one line per check and `sdk: N passed, N failed`; exits 1 if any failed.
"""
import json
import os
import sys

import anthropic

URL = os.environ["KEYGATE_URL"]
KEYS = json.loads(os.environ["KEYGATE_KEYS"])
MODEL = os.environ["KEYGATE_MODEL"]
MESSAGES = [{"role": "user", "content": "Say hello"}]

passed = failed = 0


def check(name, fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"ok   {name}")
    except Exception as e:  # report every failure, then carry on
        failed += 1
        print(f"FAIL {name}: {type(e).__name__}: {e}")


def client(key, **kw):
    kw.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=URL, api_key=key, **kw)


app = client(KEYS["app"])


def create():
    r = app.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    assert r.type == "message" and r.content[0].text == "Hello from Claude", r
    assert r.stop_reason == "end_turn", r
    u = r.usage
    assert (u.input_tokens, u.output_tokens) == (7, 12), u
    assert (u.cache_creation_input_tokens, u.cache_read_input_tokens) == (30, 200), u


def stream():
    with app.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello there", text
    assert final.usage.output_tokens == 15, final.usage
    assert final.usage.input_tokens == 5, final.usage


def create_streaming_events():
    # The raw event sequence, as `stream=True` gives it.
    events = [e.type for e in app.messages.create(
        model=MODEL, max_tokens=100, messages=MESSAGES, stream=True)]
    assert events[0] == "message_start" and events[-1] == "message_stop", events
    assert events.count("message_delta") == 2, events


def count_tokens():
    r = app.messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert r.input_tokens == 42, r


def beta_header_passes():
    r = app.beta.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES,
                                 betas=["keygate-test-2025-01-01"])
    assert r.content[0].text == "Hello from Claude", r


def models_list():
    ids = [m.id for m in app.models.list()]
    assert ids == [MODEL], ids


def authentication_error():
    bad = client("kg_" + "A" * 38)
    try:
        bad.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    except anthropic.AuthenticationError as e:
        assert e.status_code == 401 and e.body["error"]["type"] == "authentication_error", e.body
        assert e.body["type"] == "error" and e.body["request_id"], e.body
        return
    raise AssertionError("no AuthenticationError")


def permission_denied():
    try:
        client(KEYS["chat_only"]).messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    except anthropic.PermissionDeniedError as e:
        assert e.body["error"]["type"] == "permission_error", e.body
        assert "messages" in e.body["error"]["message"], e.body
        return
    raise AssertionError("no PermissionDeniedError")


def not_found():
    try:
        app.messages.create(model="no-such-model", max_tokens=10, messages=MESSAGES)
    except anthropic.NotFoundError as e:
        assert e.body["error"]["type"] == "not_found_error", e.body
        return
    raise AssertionError("no NotFoundError")


def rate_limited_then_retry_after_honoured():
    limited = client(KEYS["limited"])
    limited.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    try:
        limited.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
        raise AssertionError("no RateLimitError")
    except anthropic.RateLimitError as e:
        assert e.body["error"]["type"] == "rate_limit_error", e.body
        wait_ms = int(e.response.headers["retry-after-ms"])
        assert 0 < wait_ms and int(e.response.headers["retry-after"]) == -(-wait_ms // 1000), \
            e.response.headers
    # With retries, the SDK waits for retry-after and its retry is admitted (the test reads the
    # refusal and the success that followed it from the audit log).
    r = client(KEYS["limited"], max_retries=2).messages.create(
        model=MODEL, max_tokens=10, messages=MESSAGES)
    assert r.content[0].text == "Hello from Claude", r


def budget_refused_without_retries():
    broke = client(KEYS["broke"], max_retries=2)
    try:
        broke.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    except anthropic.RateLimitError as e:
        assert e.response.headers["x-should-retry"] == "false", e.response.headers
        assert "Budget exceeded" in e.body["error"]["message"], e.body
        return
    raise AssertionError("no RateLimitError")


for name, fn in [
    ("messages.create", create),
    ("messages.stream", stream),
    ("messages.create stream=True", create_streaming_events),
    ("messages.count_tokens", count_tokens),
    ("beta.messages.create", beta_header_passes),
    ("models.list", models_list),
    ("AuthenticationError", authentication_error),
    ("PermissionDeniedError", permission_denied),
    ("NotFoundError", not_found),
    ("RateLimitError and retry-after", rate_limited_then_retry_after_honoured),
    ("budget RateLimitError", budget_refused_without_retries),
]:
    check(name, fn)

# The version the SDK sends, which the test expects upstream unchanged.
print(f"anthropic-version: {app.default_headers['anthropic-version']}")
print(f"sdk: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
