#!/usr/bin/env python3
"""Compiles and runs every C++ snippet in README.md, docs/*.md and examples/*/README.md (ctest docs.snippets).

Kinds of fenced blocks:

  ```cpp                      compiled and run. The snippets of one Markdown file form one program, each snippet
                              nested in a block inside the one before it, so a snippet sees the names an earlier
                              one declared and may declare them again (lines starting with #include are moved to
                              the top). Names no snippet declares come from a fixture in PRELUDE (an in-memory
                              runtime `rt` with a propagator `prop`, pages `page`, `a`, `b`, `total`, ...).
  ```output                   right after a ```cpp block: what that snippet prints on stdout, exactly.
  ```cpp excerpt PATH         quoted from PATH (relative to the repository), which the build compiles and tests:
                              every line of the block except `...` must appear in PATH, in the same order.

A program runs in a fresh temporary directory (so relative paths such as "app-state" are private to it) with the
environment variable MMSB_VULKAN_DEVICE=none; a program that includes mmsb/dist.hpp runs as one MPI rank (--mpiexec).
It must exit with status 0, and each snippet with an output block must print exactly that.

Usage:
  scripts/check_doc_snippets.py --generate OUT.cpp [--root .]    write the program (the build compiles it)
  scripts/check_doc_snippets.py --run BINARY [--root .] [--mpiexec "mpiexec -n 1"]
                                                                 check excerpts, run the programs, compare outputs
Compiler errors point at the Markdown file and line (#line directives).
"""
import argparse
import os
import re
import shlex
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

// Separates the output of one snippet from the next (the checker splits stdout there).
static void mmsb_doc_snippet_begin(int index) {
  std::fflush(stdout);
  std::printf("\\x1e%d\\n", index);
  std::fflush(stdout);
}
"""

# What the docs' snippets refer to without declaring: they continue a snippet of another page, or a program's setup.
FIXTURE = """
  mmsb::Runtime doc_runtime;
  mmsb::Propagator doc_propagator(doc_runtime);
  [[maybe_unused]] mmsb::Runtime& rt = doc_runtime;
  [[maybe_unused]] mmsb::Propagator& prop = doc_propagator;
  [[maybe_unused]] mmsb::PageId page = rt.create_page(4096), a = rt.create_page(8), b = rt.create_page(8),
                                total = rt.create_page(8);
  [[maybe_unused]] std::int64_t x = 100, y = 0;
  [[maybe_unused]] std::uint64_t epoch_a_i_read = 0;
"""

FENCE = re.compile(r"^```(?P<lang>[a-z]*)(?P<info>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
MARK = "\x1e"


class Snippet:
    def __init__(self, doc, line, body):
        self.doc, self.line, self.body = doc, line, body
        self.output = None  # the stated output, if any


def docs_of(root):
    return [root / "README.md"] + sorted((root / "docs").glob("*.md")) + sorted(root.glob("examples/*/README.md"))


def parse(root):
    """Per document: its compiled snippets (with their stated outputs) and its excerpts; plus format problems."""
    programs, excerpts, problems = {}, [], []
    for doc in docs_of(root):
        rel = str(doc.relative_to(root))
        text = doc.read_text()
        previous, previous_end = None, -1
        for m in FENCE.finditer(text):
            lang, info, body = m.group("lang"), m.group("info").split(), m.group("body")
            line = text.count("\n", 0, m.start("body")) + 1
            if lang == "output":
                if previous is None or text[previous_end:m.start()].strip():
                    problems.append(f"{rel}:{line}: an ```output block must follow a ```cpp block directly")
                elif previous.output is not None:
                    problems.append(f"{rel}:{line}: a second ```output block for one snippet")
                else:
                    previous.output = body
                continue
            previous = None
            if lang != "cpp":
                continue
            if info[:1] == ["excerpt"]:
                if len(info) != 2:
                    problems.append(f"{rel}:{line}: write ```cpp excerpt PATH")
                else:
                    excerpts.append((rel, line, info[1], body))
                continue
            if info:
                problems.append(f"{rel}:{line}: unknown ```cpp option '{' '.join(info)}' (only 'excerpt PATH')")
                continue
            previous, previous_end = Snippet(rel, line, body), m.end()
            programs.setdefault(rel, []).append(previous)
    return programs, excerpts, problems


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


def generate(programs):
    includes, functions, table = set(), [], []
    for number, (doc, snippets) in enumerate(sorted(programs.items())):
        body = [f"static void doc_program_{number}() {{", FIXTURE]
        for index, s in enumerate(snippets):
            lines = []
            for l in s.body.splitlines():
                if l.lstrip().startswith("#include"):
                    includes.add(l.strip())
                    lines.append("")  # keep line numbers
                else:
                    lines.append(l)
            body.append(f"{{ mmsb_doc_snippet_begin({index});")
            body.append(f'#line {s.line} "{doc}"')
            body.extend(lines)
        body.append("}" * len(snippets))
        body.append("}")
        functions.append("\n".join(body))
        table.append(f'    {{"{doc}", &doc_program_{number}}},')
    main = """
int main(int argc, char** argv) {
  struct Program { const char* doc; void (*run)(); };
  static const Program programs[] = {
%s
  };
  if (argc == 2 && std::string(argv[1]) == "--list") {
    for (const Program& p : programs) std::printf("%%s\\n", p.doc);
    return 0;
  }
  for (const Program& p : programs) {
    if (argc == 2 && std::string(argv[1]) == p.doc) {
      try {
        p.run();
      } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "%%s: a snippet threw: %%s\\n", p.doc, e.what());
        return 1;
      }
      std::fflush(stdout);
      return 0;
    }
  }
  std::fprintf(stderr, "usage: %%s --list | DOC (one of --list)\\n", argv[0]);
  return 2;
}
""" % "\n".join(table)
    return ("// Generated by scripts/check_doc_snippets.py from the C++ snippets of the docs; do not edit.\n"
            "// Snippets declare names again in nested blocks and leave some unused: only those warnings are off.\n"
            '#pragma GCC diagnostic ignored "-Wshadow"\n#pragma GCC diagnostic ignored "-Wunused-variable"\n'
            '#pragma GCC diagnostic ignored "-Wunused-but-set-variable"\n'
            '#pragma GCC diagnostic ignored "-Wunused-parameter"\n' +
            "\n".join(sorted(includes)) + PRELUDE + "\n\n".join(functions) + main)


def run(root, binary, mpiexec, programs):
    problems = []
    for doc, snippets in sorted(programs.items()):
        command = [binary, doc]
        if mpiexec and any("mmsb/dist.hpp" in s.body for s in snippets):
            command = shlex.split(mpiexec) + command
        env = dict(os.environ, MMSB_VULKAN_DEVICE="none")
        with tempfile.TemporaryDirectory() as cwd:
            result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            problems.append(f"{doc}: its snippets exited with status {result.returncode}:\n{result.stderr}")
            continue
        parts = {}
        for chunk in result.stdout.split(MARK)[1:]:
            index, _, printed = chunk.partition("\n")
            parts[int(index)] = printed
        for index, s in enumerate(snippets):
            printed = parts.get(index)
            if printed is None:
                problems.append(f"{s.doc}:{s.line}: the snippet did not run")
            elif s.output is not None and printed != s.output:
                problems.append(f"{s.doc}:{s.line}: the snippet printed\n{printed}but its ```output block says\n"
                                f"{s.output}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--generate", metavar="OUT.cpp", help="write the snippet program")
    ap.add_argument("--run", metavar="BINARY", help="the built snippet program: check excerpts, run and compare")
    ap.add_argument("--mpiexec", default="", help="command prefix that starts one MPI rank (mpiexec -n 1 ...)")
    args = ap.parse_args()
    root = Path(args.root)
    programs, excerpts, problems = parse(root)
    if args.generate:
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 1
        Path(args.generate).write_text(generate(programs))
        return 0
    if not args.run:
        ap.error("give --generate OUT.cpp or --run BINARY")
    for doc, line, source, body in excerpts:
        problem = check_excerpt(root, doc, line, source, body)
        if problem:
            problems.append(problem)
    problems += run(root, args.run, args.mpiexec, programs)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    ran = sum(len(s) for s in programs.values())
    checked = sum(1 for s in programs.values() for x in s if x.output is not None)
    print(f"doc snippets: {ran} compiled and run ({checked} with their output checked) in {len(programs)} programs; "
          f"{len(excerpts)} excerpts found in their sources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
