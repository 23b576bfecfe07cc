"""The house stays as issue #15 left it: packages named for their jobs, imports that
flow one way (commands → api → paper | local → runner → records → base → trainables),
no import circle, every import of our own code at the top of its module (or named, for
a process that must not import it: a command's action, the code a study's driver hands
Ray's workers).

Read from the source (AST), not by importing: a test that fails names the module, the
line and the rule it breaks.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN = ("service", "trainables", "search_spaces")

#: Each package of ``service`` and its rank: a module may import only from a lower rank,
#: or from its own package. The base modules sit directly in ``service/``.
RANKS = {"service.commands": 6, "service.cli": 6, "service.api": 5, "service.paper": 4,
         "service.local": 4, "service.runner": 3, "service.records": 2, "service": 1,
         "search_spaces": 0.5, "trainables": 0}
MAX_TOP_MODULES, MAX_LINES = 12, 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in OWN for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = modules()


def package_of(module: str) -> str:
    """The key of ``RANKS`` a module belongs to (its longest prefix)."""
    keys = [k for k in RANKS if module == k or module.startswith(k + ".")]
    return max(keys, key=len)


def resolve(node: ast.ImportFrom | ast.Import, module: str, is_package: bool) -> list[str]:
    """The own modules an import statement imports (``from p import m`` names module m)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = module.split(".") if is_package else module.split(".")[:-1]
        if node.level:
            base = base[:len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target
                 for a in node.names]
    return [n for n in names if n.split(".")[0] in OWN]


def named_code(node: ast.AST) -> tuple[str, str] | None:
    """(module, function) a ``WorkerCode("<module>:<function>")`` names, else None: the
    code a study's driver hands Ray's workers without importing it
    (``service.runner.worker_code``)."""
    if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "WorkerCode"
            and node.args and isinstance(node.args[0], ast.Constant)):
        module, _, name = node.args[0].value.partition(":")
        return module, name
    return None


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported own module, line, inside a function) of every import in ``module``; a
    command's action named in ``run_action("<module>:<function>")`` counts as imported
    by the function that names it, and code named in ``WorkerCode("<module>:<function>")``
    as imported by the module that names it."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in resolve(child, module, path.name == "__init__.py"):
                    found.append((target, child.lineno, in_function))
            elif (isinstance(child, ast.Call) and getattr(child.func, "id", None) == "run_action"
                  and child.args and isinstance(child.args[0], ast.Constant)):
                target = "service.commands.actions." + child.args[0].value.partition(":")[0]
                found.append((target, child.lineno, False))
            elif (named := named_code(child)) is not None:
                found.append((named[0], child.lineno, False))
            visit(child, inside)

    visit(tree, False)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def test_no_function_level_import_of_our_own_code() -> None:
    inside = [f"{m}:{line} imports {t}" for m, edges in GRAPH.items()
              for t, line, in_function in edges if in_function and m.startswith("service")]
    assert inside == []


def test_imports_flow_down_the_layers() -> None:
    upward = []
    for m, edges in GRAPH.items():
        for target, line, _ in edges:
            mine, theirs = package_of(m), package_of(target)
            if mine == theirs:
                continue
            if RANKS[theirs] >= RANKS[mine] and not (mine == "service.cli" and
                                                      theirs == "service.commands"):
                upward.append(f"{m}:{line} ({mine}, rank {RANKS[mine]}) imports {target} "
                              f"({theirs}, rank {RANKS[theirs]})")
    assert upward == []


def test_no_import_circle() -> None:
    edges = {m: sorted({t for t, _, _ in es if t in MODULES and t != m})
             for m, es in GRAPH.items()}
    # a package's __init__ is imported with any of its modules: its own imports count
    circles, state = [], dict.fromkeys(edges, 0)  # 0 new, 1 on the path, 2 done

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in edges[m]:
            if state[t] == 1:
                circles.append(" → ".join(path[path.index(t):] + [t]))
            elif state[t] == 0:
                walk(t, path + [t])
        state[m] = 2

    for m in edges:
        if state[m] == 0:
            walk(m, [m])
    assert circles == []


def test_every_action_a_command_names_exists() -> None:
    for m, edges in GRAPH.items():
        for target, line, _ in edges:
            if target.startswith("service.commands.actions."):
                assert importlib.util.find_spec(target) is not None, f"{m}:{line}: {target}"


def test_every_function_handed_to_workers_exists() -> None:
    """A misspelt ``WorkerCode`` name would fail only in a trial: read each from source."""
    named = [(m, node.lineno, *code) for m, path in MODULES.items()
             for node in ast.walk(ast.parse(path.read_text()))
             if (code := named_code(node)) is not None]
    assert named, "no WorkerCode found: the test reads the wrong name"
    for m, line, module, name in named:
        assert module in MODULES, f"{m}:{line}: no module {module}"
        defined = {n.name for n in ast.parse(MODULES[module].read_text()).body
                   if isinstance(n, ast.FunctionDef)}
        assert name in defined, f"{m}:{line}: {module} defines no function {name}"


def test_service_is_a_few_packages_of_small_modules() -> None:
    top = sorted(p.name for p in (ROOT / "service").glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top
    long = {m: n for m, p in MODULES.items() if m.startswith("service")
            and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("package", ["trainables", "search_spaces"])
def test_the_library_never_imports_the_service(package: str) -> None:
    bad = [f"{m}:{line} imports {t}" for m, edges in GRAPH.items() if m.startswith(package)
           for t, line, _ in edges if t.startswith("service")]
    assert bad == []


def test_no_private_name_crosses_a_module() -> None:
    """What a module shares it names publicly (ruff's PLC2701 cannot tell our own
    packages apart: they are one first-party tree to it)."""
    private = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module \
                    and node.module.split(".")[0] in OWN and node.module != m:
                private += [f"{m}:{node.lineno} imports {node.module}.{a.name}"
                            for a in node.names if a.name.startswith("_")]
    assert private == []


def test_the_tree_passes_ruff() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed beside this interpreter (pip install -e '.[dev]')")
    proc = subprocess.run([str(ruff), "check", "--no-cache", "service", "tests", "trainables",
                           "search_spaces"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
