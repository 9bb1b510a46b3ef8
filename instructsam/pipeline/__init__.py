"""The frame pipeline (no ROS, no threads of its own): camera frames and per-camera instructions in, tracked
instance sets out. The node and the bag replay drive it.

    frame_pipeline.py    FramePipeline: latest-frame slots, keyframe or tracked step, FrameResult; run_worker
    model_interface.py   PipelineModel: what it uses of a model (InstructSAMModel implements it)
    scheduler.py         when a frame is a keyframe (the detector) and when SAM3's tracker is enough
    tracker_session.py   stable ids (TrackSet) and SAM3's streaming tracker with bounded memory
    instructions.py      per-camera instructions: validation, the InstructionBook
    image_decode.py      sensor_msgs Image / CompressedImage payloads -> RGB arrays, with limits
    drawing.py           the overlay image (masks, boxes, ids) drawn on a frame
"""
