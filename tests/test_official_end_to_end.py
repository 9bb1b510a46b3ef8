"""The published layout behind the node, the bag evaluator and the demo, end to end, on the tiny official-layout
checkpoint (random weights arranged to write "<|object_ref_start|>red<|object_ref_end|>": counts, not accuracy).
The node and bag_eval are given the official directory itself; its facebook/sam3 directory is found beside it
through the config's mask_decoder_model, as with the authors' scripts."""
from __future__ import annotations

import json
import subprocess
import sys

from model_fixtures import official_tiny_dir
from node_helpers import serve_one_instruction

ANSWER = "<|object_ref_start|>red<|object_ref_end|>"


def test_the_node_serves_the_published_layout_and_publishes_the_answer():
    params = {"cameras": ["front"], "checkpoint": str(official_tiny_dir(1)), "keyframe_interval": 2,
              "num_threads": 1, "max_new_tokens": 16, "diagnostics_period": 0.5}
    results, node = serve_one_instruction(params, "the red circle")
    assert [r.keyframe for r in results] == [True, False, True]
    assert all(r.answer == ANSWER for r in results)  # tracked frames carry their keyframe's answer
    assert len(results[0].instances) > 0  # one phrase x K = 4 slots, scored by the random detector
    assert node["model_version"] == "unversioned"


def test_bag_eval_runs_on_the_published_layout(tmp_path):
    bags = tmp_path / "bags"
    made = subprocess.run([sys.executable, "-m", "instructsam_tools.bag_eval", "make-synthetic", "--out", str(bags),
                           "--frames", "6", "--size", "64"], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    bag = next(p for p in bags.iterdir() if p.is_dir())
    out = tmp_path / "eval"
    run = subprocess.run([sys.executable, "-m", "instructsam_tools.bag_eval", "run", str(bag), "--checkpoint",
                          str(official_tiny_dir(1)), "--out", str(out), "--write-bags", "--threads", "1",
                          "--set", "max_new_tokens=16"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = json.loads(next((out / "records").glob("*.json")).read_text())
    processed = [f for f in records["frames"] if f["status"] == "processed"]
    assert processed and all(f["answer"] == ANSWER for f in processed)
    assert sum(len(f["instances"]) for f in processed) > 0

    from rosbags.rosbag2 import Reader

    from instructsam_ros.bags.typestore import INSTANCE_MASK_ARRAY, typestore
    store = typestore()
    with Reader(next((out / "bags").glob("*_instances"))) as reader:
        answers = [store.deserialize_cdr(raw, INSTANCE_MASK_ARRAY).answer
                   for conn, _, raw in reader.messages() if conn.msgtype == INSTANCE_MASK_ARRAY]
    assert answers and set(answers) == {ANSWER}


def test_the_demo_runs_on_the_published_layout(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "instructsam_tools.demo", "--frames", "12", "--fps", "8",
                           "--size", "80", "--checkpoint", str(official_tiny_dir(1)), "--out", str(tmp_path),
                           "-p", "max_new_tokens:=16"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    answered = [i for i in summary["instructions"] if i["results"]]
    assert answered and all(i["answers"] == [ANSWER] for i in answered)
    assert f"the model wrote: {ANSWER!r}" in proc.stdout
