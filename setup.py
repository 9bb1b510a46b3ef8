"""pip install for development, training and evaluation without colcon.

`pip install .` gives the three layers: `instructsam` (the runtime library), `instructsam_ros` (the ROS layer)
and `instructsam_tools` (training, evaluation, bag evaluation, benchmarks, demo); the ROS message types come from
the colcon build (scripts/setup.sh, or a robot's colcon workspace). Exact versions: requirements.lock.
"""
from setuptools import find_packages, setup

setup(
    name="instructsam-ros",
    version="0.1.0",
    description="Instruction-conditioned instance-set segmentation and tracking for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["instructsam", "instructsam.*", "instructsam_ros", "instructsam_ros.*",
                                    "instructsam_tools", "instructsam_tools.*"]),
    install_requires=[
        "torch>=2.9", "torchvision", "transformers>=5.23,<6", "tokenizers", "safetensors", "peft>=0.21",
        "numpy", "scipy", "pycocotools", "opencv-python-headless", "pillow", "imageio", "matplotlib",
        "pyyaml", "tqdm", "psutil", "rosbags>=0.11", "rosbags-image",
    ],
    # ray: bag_eval --ray on a cluster (never needed on a robot); trackeval: the bag report's tracking metrics,
    # installed --no-deps by scripts/setup.sh (it declares opencv-python, which would duplicate the headless cv2)
    extras_require={"test": ["pytest", "pytest-timeout"], "ray": ["ray==2.60.0"], "eval": ["trackeval==1.3.0"]},
)
