"""python -m instructsam.bags: the bag evaluation CLI (cli.py), usable without any ROS package installed."""
import sys

from .cli import main

sys.exit(main())
