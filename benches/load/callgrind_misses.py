#!/usr/bin/env python3
"""Per-request figures from callgrind dumps of keygate taken with its cache simulator.

usage: callgrind_misses.py DUMP_A REQUESTS_A DUMP_B REQUESTS_B [TOP]

Prints, for each dump, its events per request (instructions, data reads and writes, first-level
and last-level misses), then the functions whose last-level misses per request grew most from A
to B (their own cost, not their callees'), then the call sites of memcpy that grew most (a copy
into or out of cold memory is charged to memcpy, whatever the caller).

callgrind_annotate cannot read these dumps' inlined-file records as they come from a fat-LTO
build (it charges everything to the thread's entry), hence this reader of the format.
"""

import collections
import re
import sys

LAST_LEVEL = ("DLmr", "DLmw")
MEMCPY = re.compile(r"^__memcpy_\w+$")


class Dump:
    def __init__(self, path):
        self.events = []
        self.summary = []
        # function -> event vector of its own cost
        self.own = collections.defaultdict(lambda: [0] * 16)
        # (calling function, file, line) of a call to memcpy -> [calls, event vector of the call];
        # the file and line are those of the innermost inlined code (often `Box::new`)
        self.memcpy_sites = collections.defaultdict(lambda: [0, [0] * 16])
        self._read(path)

    def _read(self, path):
        names, files = {}, {}
        function = callee = file = None
        line_no = 0
        pending_call = None

        def name(text, table):
            m = re.match(r"\((\d+)\)(?: (.*))?", text)
            if not m:
                return text
            if m.group(2):
                table[m.group(1)] = m.group(2)
            return table[m.group(1)]

        def position(token):
            nonlocal line_no
            if token.startswith("+"):
                line_no += int(token[1:])
            elif token.startswith("-"):
                line_no -= int(token[1:])
            elif token != "*":
                line_no = int(token)

        with open(path) as f:
            for raw in f:
                line = raw.rstrip("\n")
                if pending_call is not None:
                    fields = line.split()
                    position(fields[0])
                    if MEMCPY.match(callee or ""):
                        site = self.memcpy_sites[(function, file, line_no)]
                        site[0] += pending_call
                        for i, v in enumerate(fields[1:]):
                            site[1][i] += int(v)
                    pending_call = None
                    continue
                if line.startswith("events:"):
                    self.events = line.split()[1:]
                elif line.startswith("summary:"):
                    self.summary = [int(v) for v in line.split()[1:]]
                elif line.startswith(("fl=", "fi=", "fe=")):
                    file = name(line[3:], files)
                elif line.startswith("fn="):
                    function = name(line[3:], names)
                elif line.startswith("cfn="):
                    callee = name(line[4:], names)
                elif line.startswith(("cfi=", "cfl=")):
                    name(line[4:], files)
                elif line.startswith("calls="):
                    pending_call = int(line[6:].split()[0])
                elif line and (line[0].isdigit() or line[0] in "+-*"):
                    fields = line.split()
                    position(fields[0])
                    own = self.own[function]
                    for i, v in enumerate(fields[1:]):
                        own[i] += int(v)

    def misses(self, vector):
        return sum(vector[self.events.index(e)] for e in LAST_LEVEL)


def short(path):
    return "/".join((path or "?").split("/")[-3:])


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    a, na = Dump(sys.argv[1]), int(sys.argv[2])
    b, nb = Dump(sys.argv[3]), int(sys.argv[4])
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 20
    for label, d, n in (("A", a, na), ("B", b, nb)):
        per = " ".join(f"{e}={s / n:,.0f}" for e, s in zip(d.events, d.summary))
        print(f"{label}: {n} requests; per request: {per}; last-level misses {d.misses(d.summary) / n:,.0f}")

    print(f"\nlast-level misses per request, own cost (A, B, growth), top {top}:")
    rows = []
    for fn in set(a.own) | set(b.own):
        ma = a.misses(a.own[fn]) / na if fn in a.own else 0.0
        mb = b.misses(b.own[fn]) / nb if fn in b.own else 0.0
        rows.append((mb - ma, ma, mb, fn))
    for growth, ma, mb, fn in sorted(rows, reverse=True)[:top]:
        print(f"{ma:8.1f} {mb:8.1f} {growth:+8.1f}  {fn[:140]}")

    print(f"\nmemcpy call sites: last-level misses per request (A, B, growth), calls per request in B, top {top}:")
    rows = []
    for site in set(a.memcpy_sites) | set(b.memcpy_sites):
        ma = a.misses(a.memcpy_sites[site][1]) / na if site in a.memcpy_sites else 0.0
        mb = b.misses(b.memcpy_sites[site][1]) / nb if site in b.memcpy_sites else 0.0
        calls = b.memcpy_sites[site][0] / nb if site in b.memcpy_sites else 0.0
        rows.append((mb - ma, ma, mb, calls, site))
    for growth, ma, mb, calls, (fn, path, line) in sorted(rows, reverse=True)[:top]:
        print(f"{ma:8.1f} {mb:8.1f} {growth:+8.1f} {calls:6.2f}  {short(path)}:{line} in {fn[:100]}")


if __name__ == "__main__":
    main()
