"""The README's promise for Claude, checked with the official anthropic Python SDK against the
shipped demo: the model `claude-mock` on the embedded mock provider, through Anthropic's Messages API.

Run by .ci/run against `keygate serve --config conf/keygate.yaml`. Prints `sdk: N passed, N failed`.
"""
import os
import sys

import anthropic

BASE_URL = os.environ.get("KEYGATE_ORIGIN", "http://127.0.0.1:8080")
DEMO_KEY = os.environ["KEYGATE_DEMO_KEY"]
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


client = anthropic.Anthropic(base_url=BASE_URL, api_key=DEMO_KEY, max_retries=0)


def create():
    r = client.messages.create(model="claude-mock", max_tokens=64, messages=MESSAGES)
    assert r.content[0].text and r.stop_reason == "end_turn", r
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0, r.usage


def stream():
    with client.messages.stream(model="claude-mock", max_tokens=64, messages=MESSAGES) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.usage.output_tokens > 0, final


def count_tokens():
    assert client.messages.count_tokens(model="claude-mock", messages=MESSAGES).input_tokens > 0


def models():
    assert [m.id for m in client.models.list()] == ["claude-mock"]


for name, fn in [("messages.create", create), ("messages.stream", stream),
                 ("messages.count_tokens", count_tokens), ("models.list", models)]:
    check(name, fn)

print(f"sdk: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
