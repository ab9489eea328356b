#!/usr/bin/env python3
"""Lists C and C++ functions longer than a limit (80 lines by default), as file:line, length and name.

A heuristic scan, not a parser: comments, string and character literals are blanked out, then every `{` whose
preceding text ends like a function head (a parameter list, maybe followed by const, noexcept, override, a
trailing return type or a constructor's initializer list) and does not start a control statement, a lambda, a
class or a namespace is matched with its `}`. Test bodies (TEST(...) { ... }) count as functions; lambdas count
towards the function that holds them.

A function may be long for a reason: a comment with `long-function:` and the reason, within the three lines above
its head, moves it from the failures to the explained list. The exit status is 1 when any function over the limit
has no such comment.

    scripts/check_function_length.py                      # the whole tree
    scripts/check_function_length.py gpu examples --max-lines 80
    scripts/check_function_length.py --self-test
"""
import argparse
import pathlib
import re
import sys
import tempfile

SOURCES = (".cpp", ".hpp", ".h", ".c", ".cc")
SKIP_DIRS = {"build", ".git", "third_party"}
CONTROL = {"if", "for", "while", "switch", "catch", "do", "else", "try", "return", "sizeof", "alignof", "decltype",
           "noexcept", "static_assert", "requires"}
MARKER = "long-function:"


def blank_comments_and_literals(text: str) -> str:
    """The text with comments and literals replaced by spaces (line breaks kept, so line numbers hold)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == 'R' and text.startswith('R"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'R"([^(\s]*)\(', text[i:])
            if not m:
                out.append(c)
                i += 1
                continue
            end = text.find(")" + m.group(1) + '"', i)
            j = n if end < 0 else end + len(m.group(1)) + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c in "\"'":
            if c == "'" and i > 0 and text[i - 1].isalnum():  # a digit separator (1'000)
                out.append(" ")
                i += 1
                continue
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + " " * (j - i - 2) + (c if j - i >= 2 else ""))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_preprocessor(text: str) -> str:
    """Blanks preprocessor lines (and their continuations), keeping line breaks."""
    lines = text.split("\n")
    continued = False
    for k, line in enumerate(lines):
        if continued or line.lstrip().startswith("#"):
            continued = line.rstrip().endswith("\\")
            lines[k] = ""
    return "\n".join(lines)


HEAD_END = re.compile(
    r"\)\s*(?:const\s*)?(?:&{1,2}\s*)?(?:noexcept(?:\s*\([^()]*\))?\s*)?(?:override\s*|final\s*)*"
    r"(?:->\s*[\w:<>,\s\*&]+)?\s*$")


def function_name(head: str) -> str | None:
    """The name of the function whose head (the text before its `{`) this is, or None if it is no function."""
    head = head.strip()
    # A constructor's initializer list: cut at the `:` that follows the parameter list.
    init = re.search(r"\)\s*(?:noexcept\s*)?:(?!:)", head)
    if init:
        head = head[: init.start() + 1]
    if not HEAD_END.search(head) or re.search(r"\b(class|struct|union|enum|namespace)\b", head.split("(")[0]):
        return None
    # The parameter list: from the `(` that matches the last `)` of the head.
    depth = 0
    for k in range(head.rfind(")"), -1, -1):
        depth += {")": 1, "(": -1}.get(head[k], 0)
        if depth == 0:
            before = head[:k].rstrip()
            break
    else:
        return None
    m = re.search(r"((?:[\w~]+::)*(?:operator\s*(?:\(\)|[^\s(]+)|[~\w]+))$", before)
    if not m or before.endswith("]"):  # no name, or a lambda
        return None
    name = m.group(1)
    if name.split("::")[-1] in CONTROL:
        return None
    if re.fullmatch(r"[A-Z][A-Z0-9_]{2,}", name):  # a macro-made function such as TEST(Suite, Case)
        name += head[k: head.rfind(")") + 1]
    return name


def scan(path: pathlib.Path, text: str):
    """Yields (line, length, name) for each function in the text."""
    code = strip_preprocessor(blank_comments_and_literals(text))
    stack = []  # (position of `{`, function name or None)
    statement_start = 0
    for k, c in enumerate(code):
        if c == "{":
            head = code[statement_start:k]
            enclosing_function = any(name for _, name in stack)
            name = None if enclosing_function else function_name(head)
            stack.append((k, name))
            statement_start = k + 1
        elif c == "}":
            if stack:
                start, name = stack.pop()
                if name:
                    first = code.count("\n", 0, start) + 1
                    last = code.count("\n", 0, k) + 1
                    head_line = code.count("\n", 0, statement_start_of(code, start)) + 1
                    yield head_line, last - first + 1, name
            statement_start = k + 1
        elif c == ";":
            statement_start = k + 1


def statement_start_of(code: str, brace: int) -> int:
    """The first non-blank character of the head that ends at `brace`."""
    k = brace - 1
    while k >= 0 and code[k] not in ";{}":
        k -= 1
    k += 1
    while k < brace and code[k].isspace():
        k += 1
    return k


def explained(lines: list[str], head_line: int) -> bool:
    window = lines[max(0, head_line - 4): head_line]
    return any(MARKER in line for line in window)


def files_under(roots: list[pathlib.Path], excludes: set[pathlib.Path]):
    for root in roots:
        candidates = [root] if root.is_file() else sorted(root.rglob("*"))
        for f in candidates:
            if f.suffix not in SOURCES or not f.is_file():
                continue
            if any(part in SKIP_DIRS for part in f.parts) or f.resolve() in excludes:
                continue
            yield f


def check(roots, excludes, max_lines, base: pathlib.Path):
    long, ok = [], []
    for f in files_under(roots, excludes):
        text = f.read_text(errors="replace")
        lines = text.split("\n")
        for line, length, name in scan(f, text):
            if length <= max_lines:
                continue
            where = f"{f.resolve().relative_to(base) if f.resolve().is_relative_to(base) else f}:{line}"
            (ok if explained(lines, line) else long).append((where, length, name))
    return long, ok


def self_test() -> int:
    body = "\n".join(f"  x += {i};" for i in range(90))
    source = (
        "// a string with a brace: \"{\"\n"
        "int short_one(int x) { return x; }\n"
        f"int long_one(int x) {{\n{body}\n  return x;\n}}\n"
        "// long-function: a table that reads best in one piece\n"
        f"void explained_one() {{\n  int x = 0;\n{body}\n}}\n"
        f"struct S {{\n  S() : a(1) {{\n{body}\n  }}\n  int a;\n}};\n"
        f"void with_lambda() {{\n  auto f = [](int x) {{\n{body}\n    return x;\n  }};\n}}\n"
        f"TEST(Suite, Case) {{\n  if (true) {{\n{body}\n  }}\n}}\n"
        "int after(int y) { if (y) { return 1; } return \"}\"[0]; }\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "t.cpp"
        path.write_text(source)
        long, ok = check([path], set(), 80, pathlib.Path(tmp))
    names = sorted(name for _, _, name in long)
    lines = sorted(int(where.split(":")[-1]) for where, _, _ in long)
    if names != ["S", "TEST(Suite, Case)", "long_one", "with_lambda"] or lines != [3, 191, 285, 380] or \
            [n for _, _, n in ok] != ["explained_one"]:
        print(f"self-test failed: long {long}, explained {ok}", file=sys.stderr)
        return 1
    print("self-test passed: the long functions were found, the explained one set apart, short ones ignored")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=pathlib.Path, help="files or folders (default: the whole tree)")
    parser.add_argument("--max-lines", type=int, default=80, help="the limit (lines from `{` to `}`)")
    parser.add_argument("--exclude", action="append", default=[], type=pathlib.Path, help="a file to skip")
    parser.add_argument("--self-test", action="store_true", help="check the checker on a planted example")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    base = pathlib.Path(__file__).resolve().parent.parent
    roots = args.paths or [base]
    long, ok = check(roots, {e.resolve() for e in args.exclude}, args.max_lines, base)
    for where, length, name in ok:
        print(f"{where}: {name} has {length} lines (explained)")
    for where, length, name in long:
        print(f"{where}: {name} has {length} lines")
    if long:
        print(f"{len(long)} function(s) over {args.max_lines} lines without a `{MARKER}` comment", file=sys.stderr)
        return 1
    print(f"no function over {args.max_lines} lines without a reason")
    return 0


if __name__ == "__main__":
    sys.exit(main())
