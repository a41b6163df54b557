"""A guardrail block as the official openai SDK sees it: a BadRequestError whose code is
content_policy_violation, and whose message names the guardrail but not what matched.

Run by tests/guardrails.rs against an in-process gateway. Environment: KEYGATE_URL (the base URL,
ending in /v1), KEYGATE_KEY, KEYGATE_MODEL, KEYGATE_BLOCKED (a prompt a block guardrail catches),
KEYGATE_GUARDRAIL (its name). Exits non-zero on any mismatch.
"""
import os
import sys

import openai

client = openai.OpenAI(
    base_url=os.environ["KEYGATE_URL"], api_key=os.environ["KEYGATE_KEY"], max_retries=0
)
model = os.environ["KEYGATE_MODEL"]
blocked = os.environ["KEYGATE_BLOCKED"]
guardrail = os.environ["KEYGATE_GUARDRAIL"]

try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": blocked}])
except openai.BadRequestError as e:
    problems = []
    if e.status_code != 400:
        problems.append(f"status {e.status_code}")
    if e.code != "content_policy_violation":
        problems.append(f"code {e.code!r}")
    body = e.body if isinstance(e.body, dict) else {}
    if body.get("type") != "invalid_request_error":
        problems.append(f"type {body.get('type')!r}")
    if guardrail not in str(e.message):
        problems.append(f"the message does not name {guardrail!r}: {e.message!r}")
    if blocked in str(e.message):
        problems.append("the message quotes the blocked text")
    if problems:
        print("FAIL " + "; ".join(problems))
        sys.exit(1)
    print("ok BadRequestError content_policy_violation")
    sys.exit(0)
except Exception as e:  # any other outcome is a failure, reported by its class
    print(f"FAIL {type(e).__name__}: {e}")
    sys.exit(1)
print("FAIL the request was not blocked")
sys.exit(1)
