#!/usr/bin/env python3
"""Time to the first SSE event of a paced stream, from a raw socket (no HTTP client library).

A second opinion beside ../shared/bench/ttft.sh, whose curl figures carry curl's own handling of a
streamed response: each request opens a new connection, sends the request in one write, and times
until the first `data:` line arrives, then until `[DONE]`. Prints rows for the TTFB table of
benches/e2e.sh.

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


def measure(addr, model, auth, n):
    host, port = addr.rsplit(":", 1)
    first, total = [], []
    for _ in range(n):
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
        total.append((time.perf_counter() - started) * 1000)
        first.append((seen_first - started) * 1000)
        s.close()
    return statistics.median(first), statistics.median(total)


def main():
    n, rest = int(sys.argv[1]), sys.argv[2:]
    for i in range(0, len(rest), 4):
        label, addr, model, auth = rest[i:i + 4]
        try:
            t, a = measure(addr, model, auth, n)
            print(f"| {label} (socket probe) | {t:.2f} | {a:.1f} | {n} |")
        except OSError as e:
            print(f"| {label} (socket probe) | unreachable: {e} | | |")


if __name__ == "__main__":
    main()
