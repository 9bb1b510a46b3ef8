"""InstructSAM tools: everything above the runtime library and the ROS layer that a robot does not run.

    training/     the trainer (one-pass InstructSAM and SAM3's tracker), step checkpoints, export
    evaluation/   instance-set, COCO and video metrics, the evaluation CLIs, reports
    bag_eval/     offline evaluation on rosbag2 recordings (local workers or a Ray cluster)
    benchmarks/   speed and memory benchmarks (python -m instructsam_tools.benchmarks), the soak test
    data/         Inst2Seg-style datasets, loaders and batching, the synthetic scene generator
    demo/         the end-to-end ROS demo (camera, planner, recorder)
    tiny.py, compose.py, full_size_check.py   building checkpoints from configs or from local source weights
"""
