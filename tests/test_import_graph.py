"""Imports run one way, computed from the source (every import statement, lazy ones inside functions included), so
the test fails when someone adds an upward import or a cycle:

    instructsam_tools (training, evaluation, bag evaluation, benchmarks, demo, synthetic data, tiny builds)
      -> instructsam_ros (node, conversions, message codec, bag IO)
        -> instructsam (runtime library: model, pipeline, pre/post-processing, checkpoint loading)

A layer imports only the layers below it, and no import cycle joins any two of the package's modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("instructsam", "instructsam_ros", "instructsam_tools")  # bottom to top
PACKAGES = {name: REPO / name for name in LAYERS}


def modules() -> dict[str, Path]:
    out = {}
    for package, root in PACKAGES.items():
        for file in root.rglob("*.py"):
            parts = [p for p in file.relative_to(root).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = file
    return out


def imports(name: str, file: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `name` imports (a `from X import y` counts X.y when that is a module, else X)."""
    package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, file, known) for name, file in known.items()}


def layer(name: str) -> int:
    return LAYERS.index(name.split(".")[0])


def test_every_module_imports_only_its_own_layer_and_those_below():
    g = graph()
    assert {"instructsam.modeling", "instructsam_ros.node", "instructsam_tools.training.trainer"} <= set(g)
    upward = {m: sorted(d for d in ds if layer(d) > layer(m)) for m, ds in g.items()}
    assert not {m: d for m, d in upward.items() if d}


def test_no_import_cycles():
    g = graph()
    cycles = strongly_connected(g)
    assert not cycles, f"import cycles: {cycles}"


def strongly_connected(g: dict[str, set[str]]) -> list[list[str]]:
    """The components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The checks themselves: a made-up graph with a cycle, and the layer order."""
    made_up = {"instructsam.a": {"instructsam.b"}, "instructsam.b": {"instructsam.a"}, "instructsam.c": set()}
    assert strongly_connected(made_up) == [["instructsam.a", "instructsam.b"]]
    assert layer("instructsam_tools.training.trainer") > layer("instructsam_ros.node") > layer("instructsam.modeling")
