"""The house stays as drawn (DESIGN §1): imports go only downward between packages, and no file
imports another that (transitively) imports it back — lazy imports inside functions included.

Floors, bottom to top: protocol → contracts → verifier, devnet → node → scheduler → gateway, audit
→ veriplex. A package may skip floors downward, never import upward or sideways. The scheduler's
pure core imports nothing of ours outside `scheduler` and no IO library.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOOR = {"protocol": 0, "contracts": 1, "verifier": 2, "devnet": 2, "node": 3, "scheduler": 4,
         "gateway": 5, "audit": 5, "veriplex": 6}
PURE_CORE = ("allocate", "costs", "dynamics", "exact", "model", "route", "schema", "errors", "sim")
IO_MODULES = {"socket", "asyncio", "httpx", "requests", "urllib", "web3", "sqlalchemy", "subprocess",
              "time", "random", "threading", "uvicorn", "fastapi"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in FLOOR:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Every module of ours that `path` imports, at module level or inside a function."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    # `if TYPE_CHECKING:` blocks are annotations only: never executed, so never part of a cycle
    typing_only = {id(n) for blk in ast.walk(tree) if isinstance(blk, ast.If)
                   and getattr(blk.test, "id", getattr(blk.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in blk.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: _imports(p, m, known) for m, p in known.items()}


def _ancestors(m: str) -> set[str]:
    parts = m.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_package_imports_a_package_above_or_beside_it():
    bad = []
    for m, deps in _graph().items():
        top = m.split(".")[0]
        for d in deps:
            dtop = d.split(".")[0]
            if dtop != top and FLOOR[dtop] >= FLOOR[top]:
                bad.append(f"{m} -> {d}")
    assert not bad, "imports that go up or sideways:\n" + "\n".join(sorted(bad))


def test_no_import_cycle_between_files():
    graph = _graph()
    # a package's __init__ is not an edge target for its own children (Python loads it first anyway)
    edges = {m: {d for d in deps if d not in _ancestors(m)} for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_scheduler_core_is_pure():
    bad = []
    known = _modules()
    for m, p in known.items():
        if not m.startswith("scheduler.") or m.split(".")[1] not in PURE_CORE:
            continue
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            for n in names:
                top = n.split(".")[0]
                if top in FLOOR and top != "scheduler":
                    bad.append(f"{m} imports {n}")
                if top in IO_MODULES:
                    bad.append(f"{m} imports IO module {n}")
                if n.startswith("scheduler.service"):
                    bad.append(f"{m} imports the coordinator service {n}")
    assert not bad, "\n".join(bad)


def test_product_packages_hold_no_test_harness_and_benches_import_no_test_module():
    bad = [str(p.relative_to(ROOT)) for pkg in FLOOR for p in (ROOT / pkg).rglob("testing.py")]
    for p in (ROOT / "bench").glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.") \
                    and not (node.module or "").startswith("tests.support"):
                bad.append(f"{p.name} imports {node.module}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", ["gateway.app", "gateway.cli", "gateway.service", "audit.check",
                                    "protocol.frames", "protocol.messages", "node.dataplane.client",
                                    "node.dataplane.query", "node.coordinator"])
def test_data_plane_clients_load_no_torch(module: str):
    code = (f"import sys, {module}; bad = [m for m in ('torch', 'node.runtime.executor', "
            f"'node.dataplane.server') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"importing {module} loads {r.stdout.strip()} {r.stderr[-500:]}"
