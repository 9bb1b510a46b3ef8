"""instructsam_node's lifecycle, driven over the standard lifecycle services of a separate node process:
a checkpoint that does not exist is a clear error (and the node keeps running), the model loads on
activate and is released on deactivate, and the instruction survives a deactivate/activate cycle."""
from __future__ import annotations

import pytest
from lifecycle_msgs.msg import Transition

from model_fixtures import tiny_dir
from node_helpers import Client, NodeProcess, frames, rgb_image_msg

MISSING = "/nonexistent/instructsam-checkpoint"
IMAGES = frames(3, 32, 40, seed=3)


@pytest.fixture(scope="module")
def node():
    proc = NodeProcess({"checkpoint": MISSING, "cameras": ["cam"], "score_threshold": 0.2, "num_threads": 1,
                        "diagnostics_period": 0.3})
    yield proc
    code = proc.stop()
    assert code == 0, f"the node exited with {code}:\n{proc.output()[-3000:]}"


@pytest.fixture(scope="module")
def client(node):
    c = Client({"cam": False})
    yield c
    c.close()


def wait_result(client, frame_id: str, timeout: float = 20.0):
    results = client.results["cam"]
    ok = client.spin_until(lambda: any(r.header.frame_id == frame_id for r in results), timeout)
    return next(r for r in results if r.header.frame_id == frame_id) if ok else None


def test_missing_checkpoint_is_a_clear_error_and_the_node_keeps_running(node, client):
    expected = f"configure failed: checkpoint directory '{MISSING}' does not exist"
    assert node.wait_for(expected, timeout=60), node.output()
    assert node.proc.poll() is None, "the process keeps running, waiting to be fixed"
    assert client.state() == "unconfigured"
    status = client.diagnostic(": node", lambda v: expected in v["_message"])
    assert status["_level"] == 2 and status["state"] == "unconfigured"  # ERROR


def test_fixing_the_parameter_then_configure_and_activate_serves(node, client):
    [result] = client.set_params(checkpoint=str(tiny_dir()))
    assert result.successful, result.reason
    assert client.transition(Transition.TRANSITION_CONFIGURE) and client.state() == "inactive"
    from instructsam_ros.msg import Instruction
    client.instruction_pub.publish(Instruction(id="keep", text="the red circle", camera="cam"))
    assert client.transition(Transition.TRANSITION_ACTIVATE) and client.state() == "active"
    assert client.spin_until(lambda: client.image_pubs["cam"].get_subscription_count() > 0, 20)
    client.image_pubs["cam"].publish(rgb_image_msg(IMAGES[0], "first"))
    result = wait_result(client, "first")
    assert result is not None and result.instruction_id == "keep"
    node = client.diagnostic(": node", lambda v: v["model"] == str(tiny_dir()))
    assert node["state"] == "active" and node["model_version"] == "unversioned"  # the test model has no version


def test_deactivate_releases_the_model_and_stops_output(node, client):
    mark = node.mark()
    assert client.transition(Transition.TRANSITION_DEACTIVATE) and client.state() == "inactive"
    assert node.wait_for("inactive: model released", since=mark)
    assert "still referenced" not in node.output(mark), "the model must be freed, not just forgotten"
    status = client.diagnostic(": node", lambda v: v["state"] == "inactive", since=len(client.diagnostics))
    assert status["model"] == "not loaded"
    assert client.spin_until(lambda: client.image_pubs["cam"].get_subscription_count() == 0, 10), \
        "an inactive node does not listen to cameras"
    client.image_pubs["cam"].publish(rgb_image_msg(IMAGES[1], "while-inactive"))
    client.spin_until(lambda: False, 1.0)
    assert all(r.header.frame_id != "while-inactive" for r in client.results["cam"])


def test_a_failed_activate_says_why_and_a_fixed_one_resumes_with_the_same_instruction(node, client):
    [result] = client.set_params(checkpoint=MISSING)  # allowed while the model is not loaded
    assert result.successful, result.reason
    mark = node.mark()
    assert not client.transition(Transition.TRANSITION_ACTIVATE)
    assert node.wait_for(f"activate failed: checkpoint directory '{MISSING}' does not exist", since=mark)
    assert client.state() == "inactive"
    [result] = client.set_params(checkpoint=str(tiny_dir()))
    assert client.transition(Transition.TRANSITION_ACTIVATE) and client.state() == "active"
    assert client.spin_until(lambda: client.image_pubs["cam"].get_subscription_count() > 0, 20)
    client.image_pubs["cam"].publish(rgb_image_msg(IMAGES[2], "resumed"))
    result = wait_result(client, "resumed")
    assert result is not None and result.instruction_id == "keep", "instructions live from configure to cleanup"


def test_cleanup_returns_to_unconfigured(node, client):
    assert client.transition(Transition.TRANSITION_DEACTIVATE)
    assert client.transition(Transition.TRANSITION_CLEANUP) and client.state() == "unconfigured"
    [result] = client.set_params(cameras=["cam", "other"])  # configure-time parameters may change now
    assert result.successful, result.reason


def test_a_successful_cleanup_and_configure_clear_a_failed_activates_error(node, client):
    """The diagnostics say ERROR while a failed activate is the last word, and not after a successful cleanup
    (before: the failed activate's message stayed, as ERROR, until the next activate)."""
    if client.state() == "active":
        assert client.transition(Transition.TRANSITION_DEACTIVATE)
    if client.state() == "unconfigured":
        client.set_params(cameras=["cam"], checkpoint=str(tiny_dir()))
        assert client.transition(Transition.TRANSITION_CONFIGURE)
    [result] = client.set_params(checkpoint=MISSING)
    assert result.successful, result.reason
    assert not client.transition(Transition.TRANSITION_ACTIVATE)
    client.diagnostic(": node", lambda v: v["_level"] == 2 and "activate failed" in v["_message"],
                      since=len(client.diagnostics))
    assert client.transition(Transition.TRANSITION_CLEANUP) and client.state() == "unconfigured"
    status = client.diagnostic(": node", lambda v: v["state"] == "unconfigured", since=len(client.diagnostics))
    assert status["_level"] == 0 and status["last_error"] == "", status
    [result] = client.set_params(checkpoint=str(tiny_dir()))
    assert client.transition(Transition.TRANSITION_CONFIGURE)
    status = client.diagnostic(": node", lambda v: v["state"] == "inactive", since=len(client.diagnostics))
    assert status["_level"] == 0 and status["last_error"] == "" and status["_message"] == "inactive", status
