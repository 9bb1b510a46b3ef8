"""InstructSAM, the runtime library: instruction-conditioned instance-set segmentation and tracking (the model,
the frame pipeline, pre/post-processing, checkpoint loading). No ROS imports and no tools: what a robot installs."""
