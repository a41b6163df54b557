"""The official openai SDK on a Claude-routed model, one scenario per run.

Run by tests/translate.rs: `python3 openai_on_claude.py SCENARIO` with KEYGATE_URL (the gateway's
/v1 base) and KEYGATE_KEY. Prints one JSON line of what the SDK returned or raised, which the Rust
test checks along with what the recording upstream received.
"""
import json
import os
import sys

import openai

client = openai.OpenAI(base_url=os.environ["KEYGATE_URL"], api_key=os.environ["KEYGATE_KEY"],
                       max_retries=0, timeout=20)
MODEL = os.environ.get("KEYGATE_MODEL", "claude")

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def plain():
    r = client.chat.completions.create(
        model=MODEL, temperature=0.2, max_tokens=50, stop=["END"],
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}])
    return r.model_dump()


def stream():
    text, finish, usage, chunks = "", None, None, 0
    for c in client.chat.completions.create(
            model=MODEL, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Say hello"}]):
        chunks += 1
        if c.choices:
            text += c.choices[0].delta.content or ""
            finish = c.choices[0].finish_reason or finish
        if c.usage is not None:
            usage = c.usage.model_dump()
    return {"text": text, "finish_reason": finish, "usage": usage, "chunks": chunks}


def stream_without_usage():
    usage_chunks = 0
    text = ""
    for c in client.chat.completions.create(
            model=MODEL, stream=True, messages=[{"role": "user", "content": "Say hello"}]):
        if c.usage is not None:
            usage_chunks += 1
        if c.choices:
            text += c.choices[0].delta.content or ""
    return {"text": text, "usage_chunks": usage_chunks}


def tools():
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="auto")
    call = first.choices[0].message.tool_calls[0]
    # The round trip: the SDK's own message goes back, then the tool's result.
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"})
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    return {"finish_reason": first.choices[0].finish_reason, "call_id": call.id,
            "name": call.function.name, "arguments": json.loads(call.function.arguments),
            "answer": second.choices[0].message.content}


def stream_tools():
    calls = {}
    finish = None
    for c in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather?"}],
                                            tools=TOOLS, stream=True):
        if not c.choices:
            continue
        for d in c.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            entry["id"] = d.id or entry["id"]
            if d.function:
                entry["name"] = d.function.name or entry["name"]
                entry["arguments"] += d.function.arguments or ""
        finish = c.choices[0].finish_reason or finish
    return {"finish_reason": finish, "calls": [calls[i] for i in sorted(calls)]}


def image():
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these images?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
    ]}])
    return {"content": r.choices[0].message.content}


def raised(fn):
    try:
        fn()
    except openai.APIStatusError as e:
        return {"exception": type(e).__name__, "status": e.status_code, "body": e.body}
    except openai.APIError as e:
        return {"exception": type(e).__name__, "message": e.message, "body": e.body}
    return {"exception": None}


def unsupported():
    return [raised(lambda: client.chat.completions.create(
                model=MODEL, logprobs=True, messages=[{"role": "user", "content": "x"}])),
            raised(lambda: client.chat.completions.create(
                model=MODEL, n=2, messages=[{"role": "user", "content": "x"}]))]


def upstream_error():
    return raised(lambda: client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}]))


def stream_error():
    def run():
        for _ in client.chat.completions.create(model=MODEL, stream=True,
                                                messages=[{"role": "user", "content": "x"}]):
            pass
    return raised(run)


print(json.dumps(globals()[sys.argv[1]]()))
