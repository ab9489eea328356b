#!/usr/bin/env python3
"""Checks that every module includes only the modules below it (docs/architecture.md, "Modules").

Each #include "..." of a source or header in a module folder is mapped to the module that provides it: an internal
header by its folder ("runtime/page_store.hpp" -> runtime), a public header by the module that implements it
("mmsb/graph.hpp" -> graph). An include of a module that is not in the folder's allowed set is an error naming the
file, the line and the rule. `--self-test` builds a small tree with one violation and checks that it is reported.
"""
import argparse
import pathlib
import re
import sys
import tempfile

# What each module may include, besides itself and the plain-value headers every module may use.
ALLOWED = {
    "delta": set(),
    "runtime": {"delta"},
    "graph": {"runtime", "delta"},
    "serialize": {"runtime", "delta"},
    "durable": {"serialize", "graph", "runtime", "delta"},
    "gpu": {"graph", "runtime", "delta"},
    "distributed": {"durable", "serialize", "graph", "runtime", "delta"},
    # Above the line: programs and the transformer use the public API only, and the programs' common main
    # (program/, header-only, which itself uses nothing but the value headers).
    "program": set(),
    "llm": {"api", "program"},
    "tools": {"api", "program"},
    "examples": {"api", "program"},
}
# Public headers that hold only plain values or declarations (no module behind them).
VALUE_HEADERS = {"mmsb/error.hpp", "mmsb/page_id.hpp", "mmsb/topology.hpp", "mmsb/event.hpp", "mmsb/fwd.hpp"}
# The module behind each public header.
PUBLIC = {
    "mmsb/delta.hpp": "delta",
    "mmsb/runtime.hpp": "runtime",
    "mmsb/graph.hpp": "graph",
    "mmsb/durable.hpp": "durable",
    "mmsb/file_system.hpp": "serialize",
    "mmsb/gpu.hpp": "gpu",
    "mmsb/dist.hpp": "distributed",
    "mmsb/dist_mpi.hpp": "distributed",
    "mmsb/mmsb.hpp": "api",
    "mmsb/mmsb.h": "api",
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
SOURCES = ("*.cpp", "*.hpp", "*.h", "*.c")


def module_of_include(path: str, own: str) -> str | None:
    """The module an include names; None for headers that carry no dependency."""
    if path in VALUE_HEADERS:
        return None
    if path in PUBLIC:
        return PUBLIC[path]
    if path.startswith("mmsb/llm/"):
        return "llm"
    if path.startswith("mmsb/"):
        return "api"  # a public header not listed above: treat as part of the API surface
    head = path.split("/", 1)[0]
    if head == "proto":  # protobuf code generated inside serialize/
        return "serialize"
    if "/" not in path:  # a header beside the source
        return own
    return head


def check(root: pathlib.Path) -> list[str]:
    errors = []
    for module, allowed in ALLOWED.items():
        folder = root / module
        if not folder.is_dir():
            errors.append(f"{module}/: missing (the layer table names it)")
            continue
        for pattern in SOURCES:
            for file in sorted(folder.rglob(pattern)):
                text = file.read_text(errors="replace")
                for match in INCLUDE.finditer(text):
                    dep = module_of_include(match.group(1), module)
                    if dep is None or dep == module:
                        continue
                    public = match.group(1).startswith("mmsb/")
                    # "api" allows every public header (and nothing internal), except that examples stay small
                    # programs: the transformer is a module of its own, not an example's dependency.
                    ok = dep in allowed or ("api" in allowed and public and not (module == "examples" and dep == "llm"))
                    if not ok:
                        line = text.count("\n", 0, match.start()) + 1
                        errors.append(f"{file.relative_to(root)}:{line}: includes \"{match.group(1)}\" ({dep}), "
                                      f"but {module}/ may depend only on {sorted(allowed) or 'nothing'}")
    return errors


def self_test() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        for module in ALLOWED:
            (root / module).mkdir()
        (root / "serialize" / "log.cpp").write_text('#include "serialize/log.hpp"\n#include "mmsb/graph.hpp"\n')
        (root / "graph" / "plan.cpp").write_text('#include "runtime/page_store.hpp"\n#include "mmsb/topology.hpp"\n')
        (root / "tools" / "main.cpp").write_text('#include "mmsb/durable.hpp"\n#include "serialize/log.hpp"\n'
                                                 '#include "program/options.hpp"\n')
        (root / "graph" / "node.cpp").write_text('#include "program/main.hpp"\n')  # programs only
        errors = check(root)
        expected = ["graph/node.cpp:1", "serialize/log.cpp:2", "tools/main.cpp:2"]
        found = [e.split(": ", 1)[0] for e in errors]
        if found != expected:
            print(f"self-test failed: expected violations {expected}, got {errors}", file=sys.stderr)
            return 1
    print("self-test passed: the planted violations were reported")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent.parent,
                        help="the source tree (default: this script's repository)")
    parser.add_argument("--self-test", action="store_true", help="check the checker on a planted violation")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    errors = check(args.root)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"{len(errors)} include(s) break the layering of docs/architecture.md", file=sys.stderr)
        return 1
    print(f"layering holds for {len(ALLOWED)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
