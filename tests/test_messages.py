"""The package's messages over real ROS 2 (rclpy + colcon-generated types), masks as COCO RLE."""
from __future__ import annotations

import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from instructsam.pipeline.instructions import InstructionBook, InstructionRejected
from instructsam_ros.conversions import decode_masks, make_instance, make_instance_array
from instructsam_ros.msg import InstanceMask, InstanceMaskArray, Instruction
from instructsam_ros.srv import SetInstruction
from ros_helpers import spin_until

H, W = 48, 64


def three_masks() -> np.ndarray:
    """Three masks with a hole, an overlap and a mask touching the image border."""
    m = np.zeros((3, H, W), dtype=bool)
    m[0, 5:30, 5:30] = True
    m[0, 12:20, 12:20] = False  # hole
    m[1, 20:40, 20:50] = True  # overlaps mask 0 at rows 20-29, cols 20-29
    m[2, 0:H, 55:W] = True  # touches the border
    m[2, 10, 58] = False  # single-pixel hole
    return m


def test_instance_mask_array_roundtrip_between_two_nodes(ros_context):
    import rclpy

    masks = three_masks()
    assert (masks[0] & masks[1]).any() and not masks[0, 15, 15]
    pub_node = rclpy.create_node("pub_node", context=ros_context)
    sub_node = rclpy.create_node("sub_node", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(pub_node)
    executor.add_node(sub_node)
    received: list[InstanceMaskArray] = []
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    sub_node.create_subscription(InstanceMaskArray, "instances", received.append, qos)
    pub = pub_node.create_publisher(InstanceMaskArray, "instances", qos)
    assert spin_until(executor, lambda: pub.get_subscription_count() > 0)

    header = Header(frame_id="camera_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    states = ["new", "tracked", "lost"]
    instances = [make_instance(f"t{i}", 0.9 - 0.1 * i, states[i], m) for i, m in enumerate(masks)]
    msg = make_instance_array(header, "front", H, W, "instr-7", "every mug left of the sink", instances,
                              keyframe=True, frame_index=3, processing_ms=12.5, latency_ms=20.0)
    pub.publish(msg)
    assert spin_until(executor, lambda: len(received) == 1), "the subscriber received nothing"

    got = received[0]
    assert (got.header.stamp.sec, got.header.stamp.nanosec, got.header.frame_id) == (12, 345, "camera_optical_frame")
    assert (got.camera, got.height, got.width, got.instruction_id) == ("front", H, W, "instr-7")
    assert [i.id for i in got.instances] == ["t0", "t1", "t2"]
    assert [i.state for i in got.instances] == [InstanceMask.STATE_NEW, InstanceMask.STATE_TRACKED, InstanceMask.STATE_LOST]
    np.testing.assert_allclose([i.score for i in got.instances], [0.9, 0.8, 0.7], rtol=1e-6)
    decoded = decode_masks(got)
    assert decoded.dtype == bool and decoded.shape == masks.shape
    np.testing.assert_array_equal(decoded, masks)
    # bbox is the tight COCO box of each mask
    ys, xs = np.nonzero(masks[1])
    np.testing.assert_array_equal(got.instances[1].bbox, [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])
    # RLE is compact compared with raw masks
    assert sum(len(i.rle_counts) for i in got.instances) < masks.size // 10
    executor.shutdown()


def test_empty_instance_set_decodes_to_no_masks(ros_context):
    msg = make_instance_array(Header(), "front", H, W, "i", "nothing here", [])
    assert decode_masks(msg).shape == (0, H, W)


@pytest.fixture
def instruction_service(ros_context):
    """A node serving SetInstruction on top of the pipeline's InstructionBook, and a client node."""
    import rclpy

    book = InstructionBook(cameras=["front", "rear"], max_chars=200)

    def handle(request, response):
        ins = request.instruction
        try:
            active = book.set(ins.text, ins.camera, ins.id, ins.task, ins.max_instances, ins.score_threshold)
        except InstructionRejected as exc:
            response.success, response.message = False, str(exc)
            return response
        response.success = True
        response.id = active.id if active else ""
        response.message = f"set {active.id}" if active else "cleared"
        return response

    server = rclpy.create_node("instruction_server", context=ros_context)
    server.create_service(SetInstruction, "set_instruction", handle)
    client_node = rclpy.create_node("planner", context=ros_context)
    client = client_node.create_client(SetInstruction, "set_instruction")
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(server)
    executor.add_node(client_node)
    assert spin_until(executor, client.service_is_ready)

    def call(**fields) -> SetInstruction.Response:
        future = client.call_async(SetInstruction.Request(instruction=Instruction(**fields)))
        assert spin_until(executor, future.done), "no service response"
        return future.result()

    yield call, book
    executor.shutdown()


def test_set_instruction_service_roundtrip(instruction_service):
    call, book = instruction_service
    res = call(id="pick-1", text="the red cup closest to the robot", camera="front")
    assert res.success and res.id == "pick-1", res.message
    assert book.get("front").text == "the red cup closest to the robot"
    assert book.get("rear") is None
    res = call(text="all tools except the hammer")  # no id: the node assigns one; all cameras
    assert res.success and res.id
    assert book.get("rear").id == res.id == book.get("front").id
    res = call(text="", camera="rear")  # clearing one camera
    assert res.success and res.message == "cleared" and book.get("rear") is None
    assert book.get("front") is not None


@pytest.mark.parametrize("fields, reason", [
    (dict(text="a mug", camera="kitchen"), "unknown camera 'kitchen'"),
    (dict(text="x" * 201), "201 characters"),
    (dict(text="a mug", task="dance"), "unknown task 'dance'"),
])
def test_set_instruction_service_rejects_invalid_requests(instruction_service, fields, reason):
    call, book = instruction_service
    res = call(**fields)
    assert not res.success
    assert reason in res.message
    assert res.id == ""
    assert book.get("front") is None  # nothing was applied


def test_the_codecs_state_codes_are_the_message_constants():
    """instructsam_ros.message_codec has no ROS import; its codes must be the generated messages' constants."""
    from instructsam_ros.message_codec import STATE_CODES
    from instructsam_ros.msg import InstanceMask

    assert STATE_CODES == {"new": InstanceMask.STATE_NEW, "tracked": InstanceMask.STATE_TRACKED,
                           "lost": InstanceMask.STATE_LOST}
