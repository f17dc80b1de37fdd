"""The documentation is tested like code.

* Every ```python block of README.md and docs/*.md runs, each in a fresh interpreter in an empty
  folder. A block that reads ``BILLING_AI_WAREHOUSE`` gets a copy of the session's tiny warehouse
  (``data/warehouse.duckdb`` and its published snapshot); one that reads ``STRIPE_API_BASE`` gets a
  sandbox of its own on a free port; one that reads ``BILLING_AI_LEDGER`` a copy of that warehouse's
  action ledger and chain heads. A block opts out only with ``<!-- not-run: reason -->`` on the
  line before its fence, and the reason is required. (docs/development.md, "The docs are tested".)
* docs/configuration.md's table names every environment variable the package reads, and nothing else.
* Every relative link of README.md and docs/*.md reaches a file, and its #anchor a heading there; every
  repository path the prose names in backticks (`billing_ai/...`, `sql/...`) exists.
* The package layout in docs/development.md names every package of billing_ai/ and nothing that is gone.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "billing_ai"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
DEVELOPMENT = DOCS / "development.md"
SNIPPET_TIMEOUT = 60  # seconds per block
README_MAX_LINES = 230


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ---- fenced blocks ------------------------------------------------------------------------------------
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
NOT_RUN = re.compile(r"^\s*<!--\s*not-run\s*:?(.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    page: Path
    index: int  # among the page's python blocks, from 1
    line: int  # of the opening fence, from 1
    code: str
    not_run: str | None  # None: runs; "": opted out without a reason; else the reason

    @property
    def id(self) -> str:
        return f"{rel(self.page)}#python{self.index}(line{self.line})"


def fenced_blocks(text: str) -> list[tuple[str, int, str, str | None]]:
    """(language, line of the opening fence, code, not-run marker) of every fenced block, in order."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(prev)
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        out.append((lang, i + 1, textwrap.dedent("\n".join(body)) + "\n", marker.group(1).strip() if marker else None))
        i = j + 1
    return out


def python_blocks() -> list[Block]:
    blocks = []
    for page in pages():
        n = 0
        for lang, line, code, marker in fenced_blocks(page.read_text(encoding="utf-8")):
            if lang in ("python", "py"):
                n += 1
                blocks.append(Block(page, n, line, code, marker))
    return blocks


BLOCKS = python_blocks()
# what a reader's shell would not have set: the snippet sees only the settings the test gives it
PACKAGE_PREFIXES = ("BILLING_AI_", "STRIPE_", "CHARGEBEE_", "RECURLY_", "ZUORA_")


def snippet_env(tmp: Path, request: pytest.FixtureRequest, code: str) -> tuple[dict[str, str], list]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(PACKAGE_PREFIXES)}
    cleanups = []
    if "BILLING_AI_WAREHOUSE" in code:
        tiny: Path = request.getfixturevalue("tiny_warehouse")
        live = tmp / "data" / "warehouse.duckdb"
        published = tmp / "data" / "published" / "warehouse.duckdb"
        published.parent.mkdir(parents=True)
        shutil.copyfile(tiny, live)  # copies: the session's warehouse is never written
        shutil.copyfile(tiny, published)
        env["BILLING_AI_WAREHOUSE"] = str(live)
    if "BILLING_AI_LEDGER" in code:  # the tiny warehouse's action ledger and chain heads (beside it, in ops/)
        ops = request.getfixturevalue("tiny_warehouse").parent / "ops"
        ledger, heads = tmp / "data" / "ops" / "actions.sqlite", tmp / "data" / "ops" / "audit_heads.jsonl"
        ledger.parent.mkdir(parents=True, exist_ok=True)
        src, dst = sqlite3.connect(ops / "actions.sqlite"), sqlite3.connect(ledger)
        try:
            src.backup(dst)  # SQLite's online backup: the WAL's pages too
        finally:
            src.close()
            dst.close()
        shutil.copyfile(ops / "audit_heads.jsonl", heads)
        env["BILLING_AI_LEDGER"], env["BILLING_AI_AUDIT_HEADS"] = str(ledger), str(heads)
    if "STRIPE_API_BASE" in code:
        from billing_ai.sandbox.server import SandboxServer

        world = request.getfixturevalue("tiny_world")
        server = SandboxServer(world.paths.world_dir, tmp / "sandbox_state")  # port 0: a free one
        server.__enter__()
        cleanups.append(lambda: server.__exit__(None, None, None))
        env["STRIPE_API_BASE"] = server.url
    return env, cleanups


def _param(block: Block):
    # a block that reads the tiny warehouse or its ledger waits for that build: the quick lane leaves it out
    needs_world = "BILLING_AI_WAREHOUSE" in block.code or "BILLING_AI_LEDGER" in block.code
    return pytest.param(block, id=block.id, marks=[pytest.mark.slow] if needs_world else [])


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_python_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if block.not_run is not None:
        assert block.not_run, (
            f"{block.id}: a <!-- not-run: ... --> marker needs a reason (why this block cannot run in the test)"
        )
        pytest.skip(f"not run: {block.not_run}")
    work = tmp_path / "work"
    work.mkdir()
    script = tmp_path / "snippet.py"
    script.write_text(block.code, encoding="utf-8")
    env, cleanups = snippet_env(work, request, block.code)
    try:
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=SNIPPET_TIMEOUT
        )
    finally:
        for undo in cleanups:
            undo()
    assert proc.returncode == 0, (
        f"{block.id} failed (exit {proc.returncode}):\n--- code ---\n{block.code}\n--- stderr ---\n"
        f"{proc.stderr[-4000:]}\n--- stdout ---\n{proc.stdout[-2000:]}"
    )


def test_fence_parser_sees_markers() -> None:
    text = "x\n<!-- not-run: needs a live account -->\n```python\nprint(1)\n```\n\n```python\nprint(2)\n```\n"
    blocks = fenced_blocks(text)
    assert [(b[0], b[2], b[3]) for b in blocks] == [
        ("python", "print(1)\n", "needs a live account"),
        ("python", "print(2)\n", None),
    ]
    assert fenced_blocks("<!-- not-run -->\n```python\npass\n```\n")[0][3] == ""


# ---- environment variables ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvRead:
    name: str | None  # None: the test could not tell which variable
    where: str  # path:line
    via_envvar: bool  # read through dagster's EnvVar (a secret)


# reads that name no setting of their own: (file, the read's source) -> why
NOT_SETTINGS = {
    (
        "billing_ai/runner.py",
        "os.environ.get(k)",
    ): "sandbox_environment saves the variables it sets (all in the table) to restore them afterwards",
}


def _is_environ(node: ast.AST, os_names: set[str], environ_names: set[str]) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id in os_names
    ) or (isinstance(node, ast.Name) and node.id in environ_names)


class _Module:
    """One module's string constants, imports and functions, to resolve what an env read names."""

    def __init__(self, path: Path, source: str):
        self.path, self.source = path, source
        self.tree = tree = ast.parse(source, str(path))
        self.constants: dict[str, str] = {}
        self.imported: dict[str, tuple[str, str]] = {}  # local name -> (module, name)
        self.functions: dict[str, ast.AST] = {}  # name -> FunctionDef or Lambda
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                self.constants[node.targets[0].id] = node.value.value
            if isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    self.imported[a.asname or a.name] = (node.module, a.name)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions.setdefault(node.name, node)
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Lambda)
            ):
                self.functions.setdefault(node.targets[0].id, node.value)


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _params(fn: ast.AST) -> list[str]:
    args = fn.args
    return [a.arg for a in [*args.posonlyargs, *args.args]]


def environment_reads() -> list[EnvRead]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        modules[_module_name(path)] = _Module(path, path.read_text(encoding="utf-8"))

    def constant(mod: _Module, name: str, depth: int = 0) -> str | None:
        if name in mod.constants:
            return mod.constants[name]
        if name in mod.imported and depth < 5:
            other, orig = mod.imported[name]
            if other in modules:
                return constant(modules[other], orig, depth + 1)
        return None

    def resolve(mod: _Module, node: ast.AST, parents: dict, depth: int = 0) -> list[str | None]:
        """The variable names ``node`` (an argument of an env read) can hold."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.Name):
            found = constant(mod, node.id)
            if found is not None:
                return [found]
            # a parameter of the enclosing function or lambda: the literals its callers in this module pass
            fn = parents.get(node)
            while fn is not None and not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                fn = parents.get(fn)
            if fn is not None and node.id in _params(fn) and depth < 3:
                position = _params(fn).index(node.id)
                fname = next((n for n, f in mod.functions.items() if f is fn), None)
                calls = [
                    c
                    for c in ast.walk(mod.tree)
                    if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == fname
                ]
                out: list[str | None] = []
                for c in calls:
                    arg = (
                        c.args[position]
                        if position < len(c.args)
                        else next((k.value for k in c.keywords if k.arg == node.id), None)
                    )
                    out += resolve(mod, arg, parents, depth + 1) if arg is not None else [None]
                return out or [None]
        return [None]

    reads = []
    for mod in modules.values():
        os_names = {"os"} | {
            a.asname or a.name
            for n in ast.walk(mod.tree)
            if isinstance(n, ast.Import)
            for a in n.names
            if a.name == "os" and a.asname
        }
        from_os = {local: orig for local, (m, orig) in mod.imported.items() if m == "os"}
        environ_names = {k for k, v in from_os.items() if v == "environ"}
        getenv_names = {k for k, v in from_os.items() if v == "getenv"}
        parents = _parents(mod.tree)
        for node in ast.walk(mod.tree):
            arg, via_envvar = None, False
            if isinstance(node, ast.Call) and node.args:
                f = node.func
                environ_get = (
                    isinstance(f, ast.Attribute)
                    and f.attr in ("get", "setdefault")
                    and _is_environ(f.value, os_names, environ_names)
                )
                getenv = (
                    isinstance(f, ast.Attribute)
                    and f.attr == "getenv"
                    and isinstance(f.value, ast.Name)
                    and f.value.id in os_names
                ) or (isinstance(f, ast.Name) and f.id in getenv_names)
                if environ_get or getenv:
                    arg = node.args[0]
                elif (isinstance(f, ast.Name) and f.id == "EnvVar") or (
                    isinstance(f, ast.Attribute) and f.attr == "EnvVar"
                ):
                    arg, via_envvar = node.args[0], True
            elif (
                isinstance(node, ast.Subscript)
                and isinstance(node.ctx, ast.Load)
                and _is_environ(node.value, os_names, environ_names)
            ):
                arg = node.slice
            elif (
                isinstance(node, ast.Compare)
                and len(node.ops) == 1
                and isinstance(node.ops[0], (ast.In, ast.NotIn))
                and _is_environ(node.comparators[0], os_names, environ_names)
            ):
                arg = node.left
            if arg is None:
                continue
            if (rel(mod.path), ast.get_source_segment(mod.source, node)) in NOT_SETTINGS:
                continue
            where = f"{rel(mod.path)}:{node.lineno}"
            reads += [EnvRead(name, where, via_envvar) for name in resolve(mod, arg, parents)]
    return reads


def configuration_table() -> dict[str, dict[str, str]]:
    """docs/configuration.md's table of variables: name -> the row's cells by header."""
    lines = CONFIGURATION.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip().lower() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells and cells[0] == "variable":
            header, rows = cells, {}
            for row in lines[i + 2 :]:
                if not row.lstrip().startswith("|"):
                    break
                values = [c.strip() for c in row.strip().strip("|").split("|")]
                names = re.findall(r"`([A-Z][A-Z0-9_]+)`", values[0])
                assert names, f"docs/configuration.md: no `NAME` in the first cell of {row!r}"
                for name in names:
                    rows[name] = dict(zip(header, values, strict=False))
            return rows
    raise AssertionError("docs/configuration.md has no table whose first column is 'variable'")


def test_environment_reads_are_resolved() -> None:
    reads = environment_reads()
    unknown = sorted(r.where for r in reads if r.name is None)
    assert not unknown, (
        "cannot tell which environment variable these read (use a string literal or a module "
        f"constant, so the configuration table can be checked): {unknown}"
    )
    assert len({r.name for r in reads}) > 20  # the scan sees the package's reads at all


def test_configuration_table_lists_every_variable_the_package_reads() -> None:
    reads = [r for r in environment_reads() if r.name]
    in_code = {r.name for r in reads}
    table = configuration_table()
    missing = sorted(in_code - set(table))
    stale = sorted(set(table) - in_code)
    where = {n: sorted({r.where for r in reads if r.name == n}) for n in missing}
    problems = ([f"read by the package but not in docs/configuration.md's table: {where}"] if missing else []) + (
        [f"in docs/configuration.md's table but read nowhere in billing_ai/: {stale}"] if stale else []
    )
    assert not problems, "\n".join(problems)


def test_configuration_table_marks_envvar_secrets() -> None:
    table = configuration_table()
    header = next(iter(table.values()))
    assert {"default", "meaning", "secret"} <= set(header), f"columns: {list(header)}"
    secrets = sorted({r.name for r in environment_reads() if r.via_envvar and r.name})
    not_marked = [n for n in secrets if not table[n]["secret"].lower().startswith("yes")]
    assert not not_marked, f"read through dagster EnvVar (a secret) but not marked secret: {not_marked}"
    empty = [n for n, row in table.items() if not row["default"] or not row["meaning"]]
    assert not empty, f"rows without a default or a meaning: {empty}"


# ---- links ----------------------------------------------------------------------------------------------
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The text outside fenced blocks and inline code (links there are not links)."""
    out, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and (fence is None or m.group(2).startswith(fence)):
            fence = None if fence else m.group(2)
            continue
        if fence is None:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            out.add(s if n == 0 else f"{s}-{n}")
            seen[s] = n + 1
    return out


def test_relative_links_resolve() -> None:
    broken = []
    for page in pages():
        for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{rel(page)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{rel(page)}: {target} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


REPO_PATH = re.compile(r"`((?:billing_ai|billing_ai_tests|bench|sql)/[^`\s]*)`")


def test_repository_paths_named_in_docs_exist() -> None:
    """A `billing_ai/...` path in the prose names a file or folder that exists (code moves; docs follow)."""
    gone = []
    for page in pages():
        text = re.sub(r"^\s*(```|~~~).*?^\s*\1", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
        for path in REPO_PATH.findall(text):
            if any(c in path for c in "<*{…") or "..." in path:
                continue  # a pattern, not a path
            if not (ROOT / path.split("#")[0].split(":")[0]).exists():
                gone.append(f"{rel(page)}: {path}")
    assert not gone, "paths named in the docs that do not exist:\n" + "\n".join(sorted(set(gone)))


# ---- the README and the layout ----------------------------------------------------------------------------
def test_readme_stays_short() -> None:
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move detail to docs/"


def layout_block() -> str:
    text = DEVELOPMENT.read_text(encoding="utf-8")
    m = re.search(r"<!-- layout -->\s*```[^\n]*\n(.*?)```", text, re.S)
    assert m, "docs/development.md: no ``` block after a <!-- layout --> marker"
    return m.group(1)


def test_layout_names_every_package_and_only_what_exists() -> None:
    block = layout_block()
    named = set(re.findall(r"(?<![\w/.])((?:billing_ai|sql|bench|billing_ai_tests)/[\w./<>-]*)", block))
    # a nested line ("  platforms/stripe/") is relative to the package: name the packages both ways
    nested = set(re.findall(r"^\s{2,}([a-z_]+/(?:[a-z_<>]+/)?)", block, re.M))
    gone = sorted(p for p in named if "<" not in p and not (ROOT / p).exists())
    gone += sorted(p for p in nested if "<" not in p and not (PACKAGE / p).exists())
    assert not gone, f"docs/development.md's layout names paths that do not exist: {gone}"
    packages = sorted(
        p.parent.relative_to(PACKAGE).as_posix() + "/" for p in PACKAGE.glob("*/**/__init__.py") if p.parent != PACKAGE
    )
    mentioned = {p.removeprefix("billing_ai/") for p in named} | nested
    unnamed = [p for p in packages if p not in mentioned]
    assert not unnamed, f"packages of billing_ai/ missing from docs/development.md's layout: {unnamed}"
