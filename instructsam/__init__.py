"""InstructSAM: instruction-conditioned instance-set segmentation (model library, no ROS imports)."""
