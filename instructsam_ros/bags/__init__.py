"""rosbag2 recordings without rclpy (rosbags for IO): reading camera and instruction topics, replaying them through
the node's frame pipeline, writing InstanceMaskArray bags. The evaluator on top is instructsam_tools.bag_eval.

    typestore.py    the rosbags typestore: ROS 2's standard types plus this package's .msg definitions
    reader.py       BagSource: camera topics (Image / CompressedImage) and an instruction topic, recorded order
    schedule.py     InstructionSchedule: timed YAML instruction lists, applied per camera
    replay.py       replay_bag: the node's FramePipeline on a bag (fast, or with recorded timing and drops)
    records.py      FrameRecord / BagRecords: per-frame results (+ attached ground truth), JSON round trip
    writer.py       OutputBag: InstanceMaskArray (+ overlay) bags with the package's own message definitions
    documents.py    the input files (JSON / YAML) read with errors that name the file
"""
