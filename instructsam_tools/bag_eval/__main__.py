"""python -m instructsam_tools.bag_eval: the bag evaluation CLI (cli.py); needs no rclpy."""
import sys

from instructsam_tools.bag_eval.cli import main

sys.exit(main())
