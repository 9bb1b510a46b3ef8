"""Offline evaluation on rosbag2 recordings: replay (instructsam_ros.bags) + ground truth + scoring, on this
machine's worker processes or a Ray cluster.

    python -m instructsam_tools.bag_eval run BAG [BAG ...] --checkpoint DIR --out DIR [--workers N | --ray ADDR]
    python -m instructsam_tools.bag_eval merge OUT/records ... --out DIR
    python -m instructsam_tools.bag_eval make-synthetic --out DIR [--storage sqlite3|mcap] [--compressed]

    cli.py              the command line
    runner.py           evaluate_bags: sequential or parallel worker processes (die with their parent)
    ray_runner.py       evaluate_bags_ray: the same jobs as Ray tasks (--ray ADDRESS)
    groundtruth.py      the ground-truth JSON (per topic, per frame by header stamp; per instruction target ids)
    scoring.py          score: instance-set metrics, J&F, tracking metrics, latency; the report (JSON, markdown, plots)
    synthetic_bags.py   synthetic ground-truth bags from the synthetic video generator

docs/bag_evaluation.md has the formats and options.
"""
