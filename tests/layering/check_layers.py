#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Checks that the source folders include only downwards (DESIGN.md section 2).

    check_layers.py ROOT      exit 1 and list every upward include, folder cycle or unknown folder
    check_layers.py --self-test   runs the checker on small trees with known violations

Layers, lowest first: shm/ <- segment/ <- eviction/ <- store/ <- events/ <- src/ (the public API's
implementation) <- tool/ <- tools/. The public headers (include/kvbm/) may be included from
anywhere and include only each other. testing/ (test hooks) may include anything, and nothing
but the tests (not scanned here) may include testing/, except the benchmark listed below.
"""
import os
import re
import subprocess
import sys
import tempfile

RANK = {
    "shm": 0,
    "segment": 1,
    "eviction": 2,
    "store": 3,
    "events": 4,
    "api": 5,  # src/*.cpp, src/*.hpp
    "tool": 6,
    "tools": 7,
}
# Files outside the tests that may use the test hooks, and why.
TESTING_USERS = {
    # case 8 crashes a child while it holds the store mutex (kvbm::testing::Peer)
    "tools/kvbm-bench/main.cpp",
}
SOURCE_EXT = (".cpp", ".hpp", ".h", ".cc")
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def layer_of_file(rel):
    parts = rel.split("/")
    if parts[0] == "include":
        return "public"
    if parts[0] == "tools":
        return "tools"
    if parts[0] == "src":
        if len(parts) == 2:
            return "api"
        if parts[1] == "testing":
            return "testing"
        return parts[1]
    return None


def layer_of_include(root, src_rel, quote, target):
    first = target.split("/")[0]
    if target.startswith("kvbm/"):
        return "public"
    if quote == "<":
        return None  # system or third-party header
    # A path relative to the including file's folder (e.g. tools/kvbm-ctl/common.hpp).
    local = os.path.normpath(os.path.join(os.path.dirname(src_rel), target))
    if os.path.isfile(os.path.join(root, local)):
        return layer_of_file(local)
    if os.path.isfile(os.path.join(root, "src", target)):
        return layer_of_file("src/" + target)
    if first in RANK or first == "testing":
        return "testing" if first == "testing" else first
    return "unknown"


def check(root):
    problems = []
    edges = {}
    for top in ("src", "tools", "include"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for f in sorted(files):
                if not f.endswith(SOURCE_EXT):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), root)
                src_layer = layer_of_file(rel)
                if src_layer not in RANK and src_layer not in ("public", "testing"):
                    problems.append(f"{rel}: folder src/{src_layer}/ is not a known layer")
                    continue
                with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
                for quote, target in INCLUDE_RE.findall(text):
                    dst = layer_of_include(root, rel, quote, target)
                    if dst is None or dst == src_layer:
                        continue
                    where = f'{rel}: #include "{target}"'
                    if dst == "unknown":
                        problems.append(f"{where}: not found in any layer")
                        continue
                    edges.setdefault(src_layer, set()).add(dst)
                    if src_layer == "public":
                        problems.append(f"{where}: public headers include only kvbm/ headers")
                    elif dst == "testing":
                        if src_layer != "testing" and rel not in TESTING_USERS:
                            problems.append(f"{where}: only tests may include testing/")
                    elif dst == "public" or src_layer == "testing":
                        pass
                    elif RANK[dst] > RANK[src_layer]:
                        problems.append(f"{where}: upward include ({src_layer} -> {dst})")
    problems.extend(cycles(edges))
    return problems


def cycles(edges):
    """Folder-level cycles (ignoring testing/, which may reach anything)."""
    found = []
    state = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt == "testing" or node == "testing":
                continue
            if state.get(nxt) == 1:
                found.append("folder cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [n])
    return found


def self_test():
    """The checker must flag each kind of violation and pass a clean tree."""
    cases = {
        "clean": ({"src/segment/a.hpp": '#include "shm/x.hpp"\n#include "kvbm/c.hpp"\n',
                   "src/shm/x.hpp": "", "include/kvbm/c.hpp": "",
                   "src/b.cpp": '#include "store/s.hpp"\n#include "b.hpp"\n',
                   "src/b.hpp": "", "src/store/s.hpp": '#include "segment/a.hpp"\n',
                   "src/testing/h.cpp": '#include "b.hpp"\n#include "tool/t.hpp"\n',
                   "src/tool/t.hpp": '#include "store/s.hpp"\n',
                   "tools/x/common.hpp": "", "tools/x/main.cpp": '#include "common.hpp"\n'}, 0),
        "upward": ({"src/segment/a.cpp": '#include "eviction/e.hpp"\n',
                    "src/eviction/e.hpp": ""}, 1),
        "api to tool": ({"src/b.cpp": '#include "tool/t.hpp"\n', "src/tool/t.hpp": ""}, 1),
        "library to testing": ({"src/store/s.cpp": '#include "testing/h.hpp"\n',
                                "src/testing/h.hpp": ""}, 1),
        "tool to testing": ({"tools/x/main.cpp": '#include "testing/h.hpp"\n',
                             "src/testing/h.hpp": ""}, 1),
        "public to src": ({"include/kvbm/c.hpp": '#include "shm/x.hpp"\n',
                           "src/shm/x.hpp": ""}, 1),
        "unknown folder": ({"src/misc/m.cpp": ""}, 1),
    }
    failures = 0
    for name, (files, want) in cases.items():
        with tempfile.TemporaryDirectory() as root:
            for rel, text in files.items():
                os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
                with open(os.path.join(root, rel), "w") as fh:
                    fh.write(text)
            got = subprocess.run([sys.executable, __file__, root], capture_output=True, text=True)
            if got.returncode != want:
                failures += 1
                print(f"self-test '{name}': exit {got.returncode}, expected {want}\n{got.stdout}")
    cyc = cycles({"a": {"b"}, "b": {"a"}})
    if not cyc:
        failures += 1
        print("self-test 'cycle': a <-> b not reported")
    print("self-test:", "FAILED" if failures else f"{len(cases) + 1} cases ok")
    return 1 if failures else 0


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "--self-test":
        return self_test()
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    problems = check(sys.argv[1])
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} layering problem(s)")
        return 1
    print("layering ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
