"""Offline evaluation on rosbag2 recordings, without ROS (rosbags for IO).

    reader.py       BagSource: camera topics (Image / CompressedImage) and an instruction topic, recorded order
    schedule.py     InstructionSchedule: timed YAML instruction lists, applied per camera
    replay.py       replay_bag: the node's FramePipeline on a bag (fast, or with recorded timing and drops)
    records.py      FrameRecord / BagRecords: per-frame results (+ attached ground truth), JSON round trip
    groundtruth.py  the ground-truth JSON (per topic, per frame by header stamp; per instruction target ids)
    scoring.py      score: instance-set metrics, J&F, ID switches, latency; the report (JSON, markdown, plots)
    writer.py       OutputBag: InstanceMaskArray (+ overlay) bags with the package's own message definitions
    runner.py       evaluate_bags: sequential or parallel worker processes
    synthetic.py    synthetic ground-truth bags from the synthetic video generator
    cli.py          `python -m instructsam_ros.bag_eval` / `python -m instructsam.bags`
"""
