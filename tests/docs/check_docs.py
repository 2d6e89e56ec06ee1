#!/usr/bin/env python3
"""Checks that the documentation shows what the tests run and stands on its own.

1. A fenced code block right after a line `<!-- file: PATH -->` in README.md or docs/*.md must be
   the file PATH verbatim (the examples are built and run by the test suite, so the code a reader
   copies is code that works). `--sync` rewrites such blocks from their files instead.
2. No document links to or names a file outside the repository (the design notes the project
   started from are not shipped: what users need is in README.md and docs/).

usage: check_docs.py ROOT [--sync]
"""
import os
import re
import sys

MARKER = re.compile(r"^<!-- file: (\S+) -->\n```[a-z]*\n", re.M)
LINK = re.compile(r"\]\(([^)#]+)[^)]*\)")


def documents(root):
    yield "README.md"
    for f in sorted(os.listdir(os.path.join(root, "docs"))):
        if f.endswith(".md"):
            yield os.path.join("docs", f)


def check(root, sync):
    problems = []
    for doc in documents(root):
        path = os.path.join(root, doc)
        text = open(path, encoding="utf-8").read()
        out, pos = [], 0
        for m in MARKER.finditer(text):
            end = text.find("```\n", m.end())
            if end < 0:
                problems.append(f"{doc}: block of {m.group(1)} is not closed")
                continue
            source = os.path.join(root, m.group(1))
            if not os.path.isfile(source):
                problems.append(f"{doc}: {m.group(1)} does not exist")
                continue
            want = open(source, encoding="utf-8").read()
            if text[m.end():end] != want:
                problems.append(f"{doc}: the block of {m.group(1)} differs from the file")
            out.append(text[pos:m.end()] + want)
            pos = end
        out.append(text[pos:])
        if sync:
            open(path, "w", encoding="utf-8").write("".join(out))
        for target in LINK.findall(text):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
            if not resolved.startswith(os.path.normpath(root) + os.sep):
                problems.append(f"{doc}: link to {target} leaves the repository")
            elif not os.path.exists(resolved):
                problems.append(f"{doc}: link to {target} points at nothing")
        if re.search(r"DESIGN\.md|\.\./shared/|benchmark brief", text):
            problems.append(f"{doc}: names a document that is not in the repository")
    return problems


def main():
    root = os.path.abspath(sys.argv[1])
    problems = check(root, "--sync" in sys.argv[2:])
    for p in problems:
        print(p)
    return 1 if problems and "--sync" not in sys.argv[2:] else 0


if __name__ == "__main__":
    sys.exit(main())
