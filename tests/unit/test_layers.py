"""Imports go one way: command line -> pipelines -> stages -> base. No circles.

Every `import` / `from ... import` of every module under src/composer is read with ast
(inside functions too; `if TYPE_CHECKING:` blocks too, for the layer rule), so an
import moved into a function to dodge a circle is still seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "src" / "composer"

# Highest first; a module may import its own layer or a lower one. The first prefix
# that matches a module's dotted name (without "composer.") gives its layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("command line", ("__main__", "cli")),
    ("pipelines", ("pipelines",)),
    (
        "stages",
        (
            "product",
            "templates",
            "dnf",
            "dracut",
            "images",
            "live",
            "outputs",
            "cache",
            "treecheck",
            "kickstart",
            "preflight",
            "verify",
            "lorax",
            "reproducible",
        ),
    ),
    ("base", ("config", "userns", "run", "__init__")),
]


def layer_of(module: str) -> int:
    name = module.removeprefix("composer").lstrip(".") or "__init__"
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"composer.{name}: in no layer; add it to LAYERS in {Path(__file__).name}")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _known(name: str, modules: set[str]) -> str | None:
    """The composer module `name` refers to (a name imported from a package may be a submodule)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[tuple[str, int, bool]]]:
    """module -> {(imported composer module, line, only for type checking)}."""
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[tuple[str, int, bool]]] = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges: set[tuple[str, int, bool]] = set()
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                found = _known(t, modules)
                if found is not None and found != mod:
                    edges.add((found, node.lineno, _type_checking_only(node, parents)))
        graph[mod] = edges
    return graph


def test_every_module_has_a_layer() -> None:
    for mod in import_graph():
        layer_of(mod)


def test_no_import_goes_up() -> None:
    wrong = [
        f"{mod} (line {line}, {LAYERS[layer_of(mod)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
        for mod, edges in sorted(import_graph().items())
        for dep, line, _ in sorted(edges)
        if layer_of(dep) < layer_of(mod)
    ]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_circles() -> None:
    # Type-checking-only imports never run, so they cannot close a circle.
    graph = {m: {d for d, _, tc in edges if not tc} for m, edges in import_graph().items()}
    # A package imports its __init__ first: composer.x.y depends on composer.x too.
    for m in list(graph):
        parent = m.rpartition(".")[0]
        if parent and parent in graph and m not in graph[parent]:
            graph[m] = graph[m] | {parent}
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                circles.append([*stack[stack.index(d) :], d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_check_can_fail() -> None:
    # The parser sees an import inside a function, and the layer order is what it says.
    tree = ast.parse("def f():\n    from composer.cli import main\n")
    assert any(isinstance(n, ast.ImportFrom) and n.module == "composer.cli" for n in ast.walk(tree))
    assert (
        layer_of("composer.cli.compose")
        < layer_of("composer.pipelines.runtime")
        < layer_of("composer.dracut")
        < layer_of("composer.run")
    )


def test_no_composer_import_inside_a_function() -> None:
    # With the layers above there is no circle to dodge: composer's own modules are
    # imported at the top, where a reader (and this test) sees the dependency.
    found = []
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [
                    f"{path.relative_to(PKG.parent)}:{n.lineno}: {ast.unparse(n)}"
                    for n in ast.walk(fn)
                    if isinstance(n, ast.ImportFrom)
                    and (n.level or (n.module or "").split(".")[0] == "composer")
                    or isinstance(n, ast.Import)
                    and any(a.name.split(".")[0] == "composer" for a in n.names)
                ]
    assert not found, "composer imports inside functions (import at the top):\n" + "\n".join(found)


def test_the_suite_runs_this_checkouts_composer(tmp_path: Path) -> None:
    """The test process and the command lines it starts import the same composer: the one
    in this checkout (tests/conftest.py), even with another one first on the path (an
    editable install of another checkout)."""
    import subprocess
    import sys

    decoy = tmp_path / "composer"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("")
    probe = (
        "import subprocess, sys, tests.conftest, composer; print(composer.__file__); "
        "print(subprocess.run([sys.executable, '-c', 'import composer; print(composer.__file__)'], "
        "capture_output=True, text=True).stdout.strip())"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=PKG.parents[1], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert [Path(p).resolve() for p in out] == [PKG / "__init__.py"] * 2, out
