"""The package layout README describes: the library (`llava_mini_jax`) imports no application
(`train`, `convert`, `benchmarks`, `demo`, `cli`, `serve`), has no import cycle between its
modules, and no module anywhere edits `sys.path`. Static: every `import` statement, at any depth."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIBRARY = "llava_mini_jax"
APPS = ("train", "convert", "benchmarks", "demo", "cli", "serve")


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for top in (LIBRARY,) + APPS:
        for path in (ROOT / top).rglob("*.py") if (ROOT / top).is_dir() else ():
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Modules of this checkout that `name` imports (longest known prefix of each target)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets |= {f"{module}.{a.name}" for a in node.names} | {module}
    found = set()
    for t in targets:
        parts = t.split(".")
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in known:
                found.add(".".join(parts[:k]))
                break
    return found - {name}


def _graph():
    mods = _modules()
    return mods, {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def test_library_imports_no_application():
    _, graph = _graph()
    wrong = sorted((m, d) for m, deps in graph.items() if m.split(".")[0] == LIBRARY
                   for d in deps if d.split(".")[0] in APPS)
    assert not wrong, wrong


def test_no_import_cycle_in_the_library():
    _, graph = _graph()
    lib = {m: {d for d in deps if d.split(".")[0] == LIBRARY and not m.startswith(d + ".")}
           for m, deps in graph.items() if m.split(".")[0] == LIBRARY}  # a package's own __init__ is no cycle
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(m, path):
        state[m] = 1
        for d in sorted(lib.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2
    for m in sorted(lib):
        if m not in state:
            visit(m, [m])


def test_nothing_edits_sys_path():
    mods, _ = _graph()
    assert not [m for m, p in mods.items() if "sys.path" in p.read_text()]
