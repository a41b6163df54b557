"""The README's promise, checked with the official openai Python SDK against the shipped demo.

Run by .ci/run against `keygate serve --config conf/keygate.yaml`. Prints `sdk: N passed, N failed`.
"""
import os
import sys

import openai

BASE_URL = os.environ.get("KEYGATE_URL", "http://127.0.0.1:8080/v1")
DEMO_KEY = os.environ["KEYGATE_DEMO_KEY"]

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


client = openai.OpenAI(base_url=BASE_URL, api_key=DEMO_KEY, max_retries=0)


def completion():
    r = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "Say hello"}])
    assert r.choices[0].message.content, r
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, r.usage


def stream():
    chunks = list(client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "Say hello"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text) > 0, chunks
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, chunks[-1]


def claude_completion():
    # chat completions on an Anthropic model: translated to the Messages API and back
    r = client.chat.completions.create(model="claude-mock", messages=[{"role": "user", "content": "Say hello"}])
    assert r.choices[0].message.content and r.choices[0].finish_reason == "stop", r
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, r.usage


def claude_stream():
    chunks = list(client.chat.completions.create(
        model="claude-mock", messages=[{"role": "user", "content": "Say hello"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text) > 0, chunks
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, chunks[-1]


def embeddings():
    r = client.embeddings.create(model="mock", input=["a", "b"])
    assert len(r.data) == 2 and len(r.data[0].embedding) > 0


def responses():
    r = client.responses.create(model="mock", input="Say hello")
    assert r.output_text, r


def models():
    assert [m.id for m in client.models.list()] == ["claude-mock", "mock"]


def bad_key():
    bad = openai.OpenAI(base_url=BASE_URL, api_key="kg_not-a-real-key", max_retries=0)
    try:
        bad.chat.completions.create(model="mock", messages=[])
    except openai.AuthenticationError as e:
        assert e.code == "invalid_api_key", e.body
        return
    raise AssertionError("expected AuthenticationError")


def unknown_model():
    try:
        client.chat.completions.create(model="gpt-nonexistent", messages=[])
    except openai.NotFoundError as e:
        assert e.code == "model_not_found", e.body
        return
    raise AssertionError("expected NotFoundError")


for name, fn in [("chat completion", completion), ("chat stream", stream),
                 ("chat completion on claude-mock", claude_completion), ("chat stream on claude-mock", claude_stream),
                 ("embeddings", embeddings),
                 ("responses", responses), ("models list", models), ("bad key", bad_key),
                 ("unknown model", unknown_model)]:
    check(name, fn)

print(f"sdk: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
