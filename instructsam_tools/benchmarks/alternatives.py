"""Section 8: the package's default beside what a user would run instead, in one run on the same machine and at the
same config sizes (random weights: cost, not accuracy). Per frame and per instruction switch, as ratios to the
package's default; 640x480 frames, NUM_OBJECTS objects where a method tracks or keeps objects.

    default        FramePipeline at the node's default keyframe interval (NODE_KEYFRAME_INTERVAL): a keyframe,
                   then SAM3's tracker on the frames between (per frame: the mean over whole cycles); switch: segment +
                   postprocess of a new instruction on the keyframe's cached features
    (a) naive      a full InstructSAM pass on every frame (encode_image + segment + postprocess); a switch is one pass
    (b) SAM3 video transformers' Sam3VideoModel streaming with the instruction as its text prompt: SAM3's detector on
                   every frame, its tracker and its association (at most NUM_OBJECTS objects, every detection
                   admitted); switch: a new session's first frame with the new prompt
    (c) agent      a SAM3-agent-style pipeline on every frame: the VLM writes AGENT_TOKENS tokens of target phrases
                   (transformers' greedy generate on the frame and the instruction), then SAM3's text-prompted
                   detector once per phrase on the frame's features; a switch costs the same
    (d) reference  the published model's mode (a checkpoint in its layout, same sizes, scripted to keep writing
                   phrases, bounded at AGENT_TOKENS tokens): generation with a query block after each phrase on every
                   keyframe, the tracker between; switch: a new instruction's generation on cached features
"""
from __future__ import annotations

import torch

from instructsam.attention import CAUSAL
from instructsam.preprocess import patchify_for_qwen, to_image_list, to_square_pixels
from instructsam_tools.benchmarks.common import (
    FRAME_SIZE, INSTRUCTIONS, NODE_KEYFRAME_INTERVAL, NUM_OBJECTS, Target, Timing, detection_kwargs, moving_shapes,
    run_frames, time_ms, tracking_pipeline,
)
from instructsam_tools.benchmarks.paths import model_paths

AGENT_TOKENS = 16


def pipeline_per_frame(model, repeats: int, max_new_tokens: int | None = None) -> tuple[float, int]:
    """Mean FrameResult.processing_ms over `repeats` whole keyframe cycles after a warm-up cycle."""
    frames = moving_shapes(2 * NODE_KEYFRAME_INTERVAL, *FRAME_SIZE)
    extra = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    pipeline = tracking_pipeline(model, NUM_OBJECTS, NODE_KEYFRAME_INTERVAL, **extra)
    run_frames(pipeline, frames, NODE_KEYFRAME_INTERVAL + 1)
    results = run_frames(pipeline, frames, NODE_KEYFRAME_INTERVAL * max(1, repeats), start=NODE_KEYFRAME_INTERVAL + 1)
    return sum(r.processing_ms for r in results) / len(results), len(results[-1].instances)


def sam3_video(sam3, tokenizer, repeats: int) -> dict:
    """transformers' SAM3 video streaming path with a text prompt: per-frame and first-frame (switch) medians."""
    from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

    frames = moving_shapes(2 * NODE_KEYFRAME_INTERVAL, *FRAME_SIZE)
    cfg = sam3.config
    size = cfg.detector_config.vision_config.backbone_config.image_size
    pixels = [to_square_pixels(to_image_list(f), size, [0.5] * 3, [0.5] * 3, sam3.device, sam3.dtype)[0]
              for f in frames]
    # random weights score below SAM3's thresholds: admit every detection, at most NUM_OBJECTS tracked objects
    cfg.score_threshold_detection = cfg.new_det_thresh = 0.0
    cfg.max_num_objects = NUM_OBJECTS
    texts = iter(INSTRUCTIONS * (repeats + 2))

    def session():
        s = Sam3VideoInferenceSession(video_height=FRAME_SIZE[0], video_width=FRAME_SIZE[1], dtype=sam3.dtype)
        text = next(texts)
        prompt = s.add_prompt(text)
        enc = tokenizer(text, return_tensors="pt", padding="max_length", max_length=32)
        s.prompt_input_ids[prompt], s.prompt_attention_masks[prompt] = enc.input_ids, enc.attention_mask
        return s

    with torch.inference_mode():
        first = Timing([])
        for _ in range(max(1, repeats) + 1):
            s = session()
            with_first = time_ms(lambda: sam3(inference_session=s, frame=pixels[0]), 1, warmup=0)
            first.samples += with_first.samples
        first.samples = first.samples[1:]  # the first session warms up
        i = iter(range(1, 10 ** 9))
        steady = time_ms(lambda: sam3(inference_session=s, frame=pixels[next(i) % len(pixels)]),
                         NODE_KEYFRAME_INTERVAL * max(1, repeats), warmup=NODE_KEYFRAME_INTERVAL)
    return {"frame": steady.as_dict(), "switch": first.as_dict(), "objects": len(s.obj_ids)}


def agent_step(vlm_model, sam3_text_model, phrases: int, repeats: int) -> dict:
    """(c): greedy generation of AGENT_TOKENS tokens on the frame and the instruction, then SAM3's default text
    prompting once per phrase (`phrases` of them) on the frame's features."""
    image = moving_shapes(1, *FRAME_SIZE)[0]
    cfg = vlm_model.config
    vc = cfg.vlm_config.vision_config
    tokens = vlm_model.prompts.encode([INSTRUCTIONS[0]], "referring")
    suffix = tokens.suffix_ids[0][tokens.suffix_kinds[0] == CAUSAL]  # the instruction and the assistant header
    post = detection_kwargs(NUM_OBJECTS)

    def generate():
        pixels = to_square_pixels(to_image_list(image), cfg.vlm_image_size, cfg.vlm_image_mean, cfg.vlm_image_std)
        patches, grid = patchify_for_qwen(pixels, vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size)
        count = int(grid.prod(-1).sum()) // vc.spatial_merge_size ** 2
        ids = torch.cat([torch.tensor(vlm_model.prompts.prefix_ids(count)), suffix])[None]
        vlm_model.vlm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=patches,
                               image_grid_thw=grid, max_new_tokens=AGENT_TOKENS, min_new_tokens=AGENT_TOKENS,
                               do_sample=False, pad_token_id=vlm_model.tokenizer.pad_token_id)

    def detect():
        features = sam3_text_model.encode_image(image)
        out = sam3_text_model.segment(features, INSTRUCTIONS[:phrases])
        sam3_text_model.postprocess(out, features.original_sizes, **post)

    with torch.no_grad():
        gen, det = time_ms(generate, repeats), time_ms(detect, repeats)
    return {"generate": gen.as_dict(), "detect": det.as_dict(), "frame_ms": gen.median + det.median,
            "phrases": phrases, "tokens": AGENT_TOKENS}


def run_alternatives(store, config: str, repeats: int) -> tuple[dict, list[Target]]:
    from instructsam.loading import load_model

    model = store.load(config)
    default_frame, tracked = pipeline_per_frame(model, repeats)
    paths = model_paths(model, repeats, NUM_OBJECTS, encoders=False)
    result = {"default": {"frame_ms": default_frame, "switch_ms": paths["switch"].median, "objects": tracked},
              "naive": {"frame_ms": paths["cold"].median, "switch_ms": paths["cold"].median}}
    sam3_text = load_model(store.dit_checkpoint(config, "none"))
    video = sam3_video(sam3_text.sam3, sam3_text.sam3_tokenizer, repeats)
    result["sam3_video"] = {"frame_ms": video["frame"]["median_ms"], "switch_ms": video["switch"]["median_ms"],
                            "objects": video["objects"]}
    reference = load_model(store.official_checkpoint(config))
    ref_frame, _ = pipeline_per_frame(reference, repeats, max_new_tokens=AGENT_TOKENS)
    features = reference.encode_image(moving_shapes(1, *FRAME_SIZE)[0])
    texts = iter(INSTRUCTIONS * (repeats + 2))
    with torch.no_grad():
        out = reference.segment(features, [next(texts)], max_new_tokens=AGENT_TOKENS)
        phrases = len(out.phrases[0])
        switch = time_ms(lambda: reference.segment(features, [next(texts)], max_new_tokens=AGENT_TOKENS), repeats)
    result["reference"] = {"frame_ms": ref_frame, "switch_ms": switch.median, "phrases": phrases}
    agent = agent_step(model, sam3_text, max(1, phrases), repeats)  # as many phrases as the reference wrote
    result["agent"] = {"frame_ms": agent["frame_ms"], "switch_ms": agent["frame_ms"], **agent}
    result = {name: result[name] for name in ("default", "naive", "sam3_video", "agent", "reference")}
    base = result["default"]
    for name, row in result.items():
        row["frame_ratio"] = row["frame_ms"] / base["frame_ms"]
        row["switch_ratio"] = row["switch_ms"] / base["switch_ms"]
    labels = {"naive": "(a) a full pass on every frame", "sam3_video": "(b) SAM3 alone (video, text prompt)",
              "agent": "(c) SAM3-agent style (VLM phrases, SAM3 per phrase)"}
    targets = [Target("alternatives", f"default per frame / {label}", config,
                      base["frame_ms"] / result[name]["frame_ms"], 1.0,
                      note=f"{base['frame_ms']:.1f} ms vs {result[name]['frame_ms']:.1f} ms")
               for name, label in labels.items()]
    return result, targets


__all__ = ["run_alternatives", "AGENT_TOKENS"]
