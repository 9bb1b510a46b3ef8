"""config/instructsam.yaml, launch/instructsam.launch.py and the node's parameter table agree, so the launch
file starts the node exactly as the tests do (`--params-file config/instructsam.yaml -p key:=value`)."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

from instructsam_ros.parameters import PARAMS, PIPELINE_SETTINGS

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "instructsam.launch.py"


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def yaml_params() -> dict:
    doc = yaml.safe_load((REPO / "config" / "instructsam.yaml").read_text())
    assert list(doc) == ["/**"], "one section, for the node under any name"
    return flatten(doc["/**"]["ros__parameters"])


def launch_arguments() -> dict[str, str]:
    """ARGUMENTS in the launch file: name -> declared type name (read from the source: launch isn't installed)."""
    tree = ast.parse(LAUNCH.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ARGUMENTS":
            return {k.value: v.elts[0].id for k, v in zip(node.value.keys, node.value.values)}
    raise AssertionError("no ARGUMENTS table in the launch file")


def test_launch_file_compiles_and_uses_the_ros2_launch_api():
    source = LAUNCH.read_text()
    compile(source, str(LAUNCH), "exec")
    for needed in ("def generate_launch_description", "DeclareLaunchArgument", "LifecycleNode",
                   'executable="instructsam_node"', '"params_file"'):
        assert needed in source


def test_yaml_sets_every_node_parameter_with_the_declared_type():
    params = yaml_params()
    per_camera = {k for k in params if k.split(".")[0] in params["cameras"]}
    assert per_camera == {f"{c}.{f}" for c in params["cameras"] for f in ("image_topic", "compressed")}
    declared = {p.name: p for p in PARAMS}
    assert set(params) - per_camera == set(declared), "the YAML documents every parameter and nothing else"
    for name, spec in declared.items():
        # ROS parameters are strictly typed: an int in the YAML for a double parameter fails at startup
        assert type(params[name]) is type(spec.default), f"{name}: {params[name]!r} vs {spec.default!r}"
        if spec.choices:
            assert params[name] in spec.choices
        if spec.range:
            assert spec.range[0] <= params[name] <= spec.range[1]


def test_every_launch_argument_is_a_node_parameter_of_that_type():
    args = launch_arguments()
    params = yaml_params()
    declared = {p.name: p for p in PARAMS}
    assert set(args) == set(declared), "each node parameter is a launch argument"
    for name, kind in args.items():
        assert name in params
        assert kind == type(declared[name].default).__name__, name


def test_every_pipeline_setting_is_a_node_parameter_with_the_same_default():
    from dataclasses import fields

    from instructsam.pipeline.frame_pipeline import PipelineSettings

    declared = {p.name: p for p in PARAMS}
    assert set(PIPELINE_SETTINGS) == {f.name for f in fields(PipelineSettings)}
    for f in fields(PipelineSettings):
        assert declared[f.name].default == f.default, f.name
    PipelineSettings(**{name: yaml_params()[name] for name in PIPELINE_SETTINGS})  # the YAML's values are valid


def test_node_executable_is_installed_for_robots():
    script = REPO / "scripts" / "instructsam_node"
    assert script.stat().st_mode & 0o111, "executable bit"
    assert "from instructsam_ros.node import main" in script.read_text()
    # that colcon installs it where `ros2 run` / launch look is checked by tests/test_setup.py
