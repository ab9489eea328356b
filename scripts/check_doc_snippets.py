#!/usr/bin/env python3
"""Checks that every C++ snippet in README.md, docs/*.md and examples/*/README.md compiles (ctest docs.snippets).

Two kinds of fenced blocks:

  ```cpp                      compiled: the block becomes the body of its own function, after the public headers
                              (lines starting with #include are moved to the top). Names a snippet uses without
                              declaring — it continues an earlier one — are declared below in PRELUDE.
  ```cpp excerpt PATH         quoted from PATH (relative to the repository), which the build compiles: every line
                              of the block except `...` must appear in PATH, in the same order.

Usage: scripts/check_doc_snippets.py [--compiler c++] [--root .]
Compiler errors point at the Markdown file and line (#line directives).
"""
import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PRELUDE = """
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>
#include <mmsb/mmsb.hpp>
#include <mmsb/durable.hpp>

// What the docs' snippets refer to without declaring (they continue an earlier snippet of the same page).
extern mmsb::Runtime& rt;
extern mmsb::Propagator& prop;
extern mmsb::PageId page, a, b, total;
extern std::int64_t x, y;
extern std::uint64_t epoch_a_i_read;
"""

FENCE = re.compile(r"^```cpp(?P<info>[^\n]*)\n(?P<body>.*?)^```", re.S | re.M)


def blocks(path):
    text = path.read_text()
    for m in FENCE.finditer(text):
        first_line = text.count("\n", 0, m.start("body")) + 1
        yield m.group("info").split(), m.group("body"), first_line


def code_of(line):
    """A line without its trailing // comment and surrounding blanks (excerpts may comment differently)."""
    return re.sub(r"\s*//.*$", "", line).strip()


def check_excerpt(root, doc, line, source, body):
    src = root / source
    if not src.is_file():
        return f"{doc}:{line}: excerpt names {source}, which does not exist"
    haystack = [code_of(l) for l in src.read_text().splitlines()]
    pos = 0
    for offset, wanted in enumerate(body.splitlines()):
        w = code_of(wanted)
        if not w or w == "...":
            continue
        try:
            pos = haystack.index(w, pos) + 1
        except ValueError:
            return f"{doc}:{line + offset}: excerpt line not found (in order) in {source}: {w}"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compiler", default="c++")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    args = ap.parse_args()
    root = Path(args.root)
    docs = [root / "README.md"] + sorted((root / "docs").glob("*.md")) + sorted(root.glob("examples/*/README.md")) + sorted(root.glob("examples/*/README.md"))

    includes, functions, problems = [], [], []
    compiled = excerpts = 0
    for doc in docs:
        rel = doc.relative_to(root)
        for info, body, line in blocks(doc):
            if info[:1] == ["excerpt"]:
                if len(info) != 2:
                    problems.append(f"{rel}:{line}: write ```cpp excerpt PATH")
                    continue
                excerpts += 1
                problem = check_excerpt(root, rel, line, info[1], body)
                if problem:
                    problems.append(problem)
                continue
            compiled += 1
            lines = []
            for offset, l in enumerate(body.splitlines()):
                if l.lstrip().startswith("#include"):
                    includes.append(l)
                    lines.append("")  # keep line numbers
                else:
                    lines.append(l)
            functions.append(f'[[maybe_unused]] static void snippet_{compiled}() {{\n#line {line} "{rel}"\n' +
                             "\n".join(lines) + "\n}\n")
    source = "\n".join(sorted(set(includes))) + PRELUDE + "\n".join(functions)
    with tempfile.TemporaryDirectory() as tmp:
        cpp = Path(tmp) / "doc_snippets.cpp"
        cpp.write_text(source)
        cmd = [args.compiler, "-std=c++20", "-fsyntax-only", "-Wall", "-Wno-unused-variable",
               "-Wno-unused-but-set-variable", f"-I{root / 'api' / 'include'}", str(cpp)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            problems.append("the compiled snippets do not compile:\n" + result.stderr)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(f"doc snippets: {compiled} compiled, {excerpts} excerpts found in their sources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
