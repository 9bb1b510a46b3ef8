"""Imports run one way, computed from the source (every import statement, lazy ones inside functions included), so
the test fails when someone adds an upward import or a cycle:

    tools (training, evaluation, benchmarks, bag evaluation, synthetic data, tiny builds)
      -> ROS layer (instructsam_ros)  -> runtime library (model, pipeline, loading, codec, checkpoints)

The runtime library imports neither the tools nor the ROS layer; no module of the model library imports the ROS
layer; and no import cycle joins any two of the package's modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"instructsam": REPO / "model" / "instructsam", "instructsam_ros": REPO / "instructsam_ros"}
# Modules of the model library that are tools, not what a robot runs (everything else there is the runtime library).
TOOLS = ("instructsam.training", "instructsam.evaluation", "instructsam.benchmarks", "instructsam.bags",
         "instructsam.data", "instructsam.tiny", "instructsam.compose", "instructsam.full_size_check")


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


def is_tool(name: str) -> bool:
    return any(name == t or name.startswith(t + ".") for t in TOOLS)


def test_the_runtime_library_imports_neither_the_tools_nor_the_ros_layer():
    g = graph()
    runtime = [m for m in g if m.startswith("instructsam.") and not is_tool(m)]
    assert "instructsam.modeling" in runtime and "instructsam.pipeline.frame_pipeline" in runtime
    upward = {m: sorted(d for d in g[m] if is_tool(d) or d.startswith("instructsam_ros")) for m in runtime}
    assert not {m: d for m, d in upward.items() if d}


def test_the_model_library_never_imports_the_ros_layer():
    g = graph()
    assert not {m: sorted(d) for m, ds in g.items() if m.startswith("instructsam.")
                if (d := {x for x in ds if x.startswith("instructsam_ros")})}


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
    """The checks themselves: a made-up graph with a cycle and a runtime module importing a tool."""
    made_up = {"instructsam.a": {"instructsam.b"}, "instructsam.b": {"instructsam.a"}, "instructsam.c": set()}
    assert strongly_connected(made_up) == [["instructsam.a", "instructsam.b"]]
    assert is_tool("instructsam.training.trainer") and not is_tool("instructsam.trainingwheels")
