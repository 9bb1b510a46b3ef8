"""The demo: instructsam_node on a synthetic camera, driven by a scripted planner, recorded to an overlay GIF.

    python -m instructsam_tools.demo [--checkpoint DIR] [--frames N] [--fps F] [--out DIR]   (or bash scripts/demo.sh)

Separate processes talking over real ROS 2 topics, as on a robot (launch/demo.launch.py starts the same nodes):
    camera.py     demo_camera: a synthetic moving-objects video -> /camera/image_raw (sensor_msgs/Image rgb8)
    planner.py    demo_planner: scripted Instructions -> /instructsam_node/instruction (a switch, a no-target one)
    recorder.py   demo_recorder: /camera/instances, /camera/overlay, /diagnostics -> overlay.gif + summary
    scene.py      the video and the default script, with the objects each step means (no ROS)
    self_score.py the summary's self-score: J&F against the video's ground truth, empty frames for no target
    __main__.py   starts the node, camera and planner, records, stops everything, prints the summary
"""
