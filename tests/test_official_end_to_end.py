"""The published layout behind the node, the bag evaluator and the demo, end to end, on the tiny official-layout
checkpoint (random weights arranged to write "<|object_ref_start|>red<|object_ref_end|>": counts, not accuracy).
The node and bag_eval are given the official directory itself; its facebook/sam3 directory is found beside it
through the config's mask_decoder_model, as with the authors' scripts."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from model_fixtures import official_tiny_dir
from node_helpers import Client, active_node, rgb_image_msg

ANSWER = "<|object_ref_start|>red<|object_ref_end|>"


def test_the_node_serves_the_published_layout_and_publishes_the_answer():
    from instructsam_ros.msg import Instruction
    from instructsam_ros.srv import SetInstruction

    params = {"cameras": ["front"], "checkpoint": str(official_tiny_dir(1)), "keyframe_interval": 2,
              "num_threads": 1, "max_new_tokens": 16, "diagnostics_period": 0.5}
    with active_node(params):
        client = Client({"front": False})
        try:
            assert client.spin_until(lambda: client.image_pubs["front"].get_subscription_count() > 0, 20)
            res = client.call(client.set_instruction, SetInstruction.Request(
                instruction=Instruction(id="red", text="the red circle", camera="front")))
            assert res.success, res.message
            results = client.results["front"]
            images = np.random.default_rng(0).integers(0, 256, (3, 60, 80, 3), dtype=np.uint8)
            for t, image in enumerate(images):
                start = len(results)
                client.image_pubs["front"].publish(rgb_image_msg(image, f"f{t}"))
                assert client.spin_until(lambda: len(results) > start, 60), f"no result for frame {t}"
            assert [r.keyframe for r in results] == [True, False, True]
            assert all(r.answer == ANSWER for r in results)  # tracked frames carry their keyframe's answer
            assert len(results[0].instances) > 0  # one phrase x K = 4 slots, scored by the random detector
            node = client.diagnostic(": node", lambda v: v["state"] == "active")
            assert node["model_version"] == "unversioned"
        finally:
            client.close()


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
