"""The pipeline's contract with its model (instructsam.pipeline.model_interface.PipelineModel) is complete: every
member the pipeline's modules use of a model is declared there (computed from the source, so a new undeclared use
fails here), and InstructSAMModel provides every declared member."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

from model_fixtures import load_tiny

import instructsam.pipeline as pipeline
from instructsam.pipeline.model_interface import PipelineModel

PIPELINE = Path(pipeline.__file__).parent


def declared() -> set[str]:
    return {name for name in dir(PipelineModel) if not name.startswith("_")} | set(PipelineModel.__annotations__)


def used_members() -> dict[str, set[str]]:
    """model.X / self.model.X attribute reads in each pipeline module."""
    out = {}
    for file in PIPELINE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Attribute):
                base = node.value
                if (isinstance(base, ast.Name) and base.id == "model") or \
                        (isinstance(base, ast.Attribute) and base.attr == "model"):
                    found.add(node.attr)
        out[file.name] = found
    return out


def test_the_pipeline_uses_only_declared_model_members():
    used = used_members()
    assert used["frame_pipeline.py"] and used["tracker_session.py"]  # the check sees the uses
    undeclared = {f: sorted(u - declared()) for f, u in used.items() if u - declared()}
    assert not undeclared, f"model members used by the pipeline but not declared in PipelineModel: {undeclared}"


def test_instructsam_model_implements_the_pipeline_interface():
    model = load_tiny()
    assert isinstance(model, PipelineModel)
    for name in ("segment", "postprocess"):  # the keyword arguments the pipeline passes exist on the real methods
        params = inspect.signature(getattr(model, name)).parameters
        wanted = [p for p in inspect.signature(getattr(PipelineModel, name)).parameters if p != "self"]
        assert all(p in params for p in wanted), (name, wanted, list(params))
