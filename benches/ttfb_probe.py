#!/usr/bin/env python3
"""Time to the first SSE event of a paced stream, from a raw socket (no HTTP client library).

A second opinion beside benches/load/ttft.sh, whose curl figures carry curl's own handling of a
streamed response: each request opens a new connection, sends the request in one write, and times
until the first `data:` line arrives, then until `[DONE]`. The targets take turns, request by
request, and each one after the first also gets the median of its differences from the first
target's neighbouring requests. Prints rows for the TTFB table of benches/e2e.sh.

usage: ttfb_probe.py N LABEL HOST:PORT MODEL AUTH [LABEL HOST:PORT MODEL AUTH ...]
"""
import socket
import statistics
import sys
import time


def request(host, model, auth):
    body = ('{"model":"%s","stream":true,"stream_options":{"include_usage":true},'
            '"messages":[{"role":"user","content":"hi"}]}' % model).encode()
    head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (host, auth, len(body))).encode()
    return head + body


def once(addr, model, auth):
    """One request on a new connection: (ms to the first `data:` line, ms to `[DONE]`)."""
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    started = time.perf_counter()
    s.sendall(request(addr, model, auth))
    got, seen_first = b"", None
    while b"[DONE]" not in got:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit(f"{addr}: the stream ended without [DONE]")
        got += chunk
        if seen_first is None and b"data:" in got:
            seen_first = time.perf_counter()
    done = time.perf_counter()
    s.close()
    return (seen_first - started) * 1000, (done - started) * 1000


def main():
    n, rest = int(sys.argv[1]), sys.argv[2:]
    targets = [rest[i:i + 4] for i in range(0, len(rest), 4)]
    # Interleaved, one request per target in turn: on a noisy machine, drift over the run then
    # falls on every target alike instead of on whichever was measured last.
    first = {t[0]: [] for t in targets}
    total = {t[0]: [] for t in targets}
    down = set()
    for _ in range(n):
        for label, addr, model, auth in targets:
            if label in down:
                continue
            try:
                f, a = once(addr, model, auth)
            except OSError as e:
                print(f"| {label} (socket probe) | unreachable: {e} | | |")
                down.add(label)
                continue
            first[label].append(f)
            total[label].append(a)
    base = targets[0][0]
    for label, *_ in targets:
        if label in down or not first[label]:
            continue
        row = (f"| {label} (socket probe) | {statistics.median(first[label]):.2f} | "
               f"{statistics.median(total[label]):.1f} | {len(first[label])} |")
        print(row)
    # The added time as the median of differences between neighbouring requests.
    for label, *_ in targets[1:]:
        if label in down or base in down:
            continue
        added = [x - y for x, y in zip(first[label], first[base])]
        print(f"| {label} − {base}, paired (socket probe) | {statistics.median(added):+.2f} | | {len(added)} |")


if __name__ == "__main__":
    main()
