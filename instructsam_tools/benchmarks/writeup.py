"""The benchmark's outputs: the printed PASS/FAIL table, plots (matplotlib Agg) and BENCHMARKS.md."""
from __future__ import annotations

from pathlib import Path

from instructsam_tools.benchmarks.common import Target

# Why a target misses, from the profiles behind it (cProfile / FLOP counts on this machine, 1 thread; the commands
# are in docs/benchmarks/notes.md). Keyed by (section, which); shown for the targets that FAIL in the run written up.
EXPLANATIONS = {
    ("paths", "switch"): (
        "**Instruction switch vs cold pass (tiny).** The switch re-runs everything that depends on the instruction: "
        "the VLM over the instruction + K query tokens, SAM3's DETR encoder (prompt-fused, over all image tokens), "
        "the DETR decoder and the mask decoder, whose pixel decoder (3x3 convolutions up to the 4x FPN level, fed "
        "by the prompt-fused encoder output) runs once per instruction. What a switch saves is encode_image and the "
        "image prefix. In the tiny model those are small: its SAM3 ViT is 0.015 of 0.63 GFLOP of encode_image, while "
        "a switch is 0.67 GFLOP, 63 % of it the mask decoder (FLOP counts, `flops.count_flops`). Profile of a "
        "26 ms tiny switch: detector 15 ms (pixel decoder 5.6), VLM 9 ms, postprocess 5 ms. The mid config, "
        "proportioned like the full model, passes, and on paper at full size the switch is ~0.1x of a cold pass "
        "(section 6). Merging LoRA into the weights was tried and changes nothing measurable."),
    ("paths", "tracked"): (
        "**Tracked frame vs keyframe.** A tracked frame runs only SAM3's ViT and the tracker's own neck "
        "(`encode_image(vlm=False)`, then `tracker_features`). The VLM vision tower (0.58 TFLOP at full size) and "
        "SAM3's detector FPN neck (0.21 TFLOP at full size), which only the VLM and the detector read, run on "
        "keyframes only. What remains is inherent in SAM3's tracker: the ViT runs on every frame, and the tracker "
        "runs memory attention (the frame's tokens against up to 7 memory frames + object pointers) once per object "
        "in a Python loop, so a tracked frame grows linearly with the objects (section 4). At full size that is "
        "~0.97 TFLOP per object at steady state, 3.9 TFLOP for 4 objects next to 5.4 for the ViT, while a keyframe "
        "adds to that only the VLM, the detector FPN neck and the detector heads (section 6 has the ratio on paper). "
        "No object count brings tracked/keyframe to 0.4 while the ViT runs on every frame at the detector's "
        "resolution and the tracker reads full-resolution features (with no objects, a tracked frame does no model "
        "work at all). The levers that do are in section 10: tracker_scale runs the ViT pass of a tracked frame and "
        "the tracker on a smaller token grid; it is not on by default because on the tiny model it costs tracking "
        "quality (see the full-size explanation below). A larger keyframe_interval lowers the average cost, not a "
        "tracked frame's; max_tracked caps it."),
    ("batching", ""): (
        "**16 batched vs 16 separate.** Batching shares encode_image and the image prefix; every instruction still "
        "pays its own VLM suffix, DETR encoder (over all image tokens, fused with that instruction) and mask decoder. "
        "In a batch of 16 an instruction costs about as much as a switch (section 2: ms per instruction vs the "
        "switch in section 1), i.e. the batched pass is compute-bound on per-instruction work, not overhead-bound. "
        "Where those heads are large relative to the shared encoders (tiny and mid, section 2) 16 batched cost more "
        "than a quarter of 16 passes; at full size the encoders dominate and on paper the ratio is ~0.15 (section 6)."),
    ("node", ""): (
        "**Node overhead.** The out-path is almost all COCO RLE encoding: a 640x480 mask had to be copied into "
        "column-major order for pycocotools (0.18 of 0.28 ms per mask). `message_codec.encode_rle` now transposes "
        "and run-length codes only the columns that hold the mask (byte-identical strings, ~5x faster), which puts "
        "10 instances well under 5 ms on an idle core; a FAIL here on a busy machine is load."),
    ("alternatives", ""): (
        "**The default against the alternatives, per frame (section 8).** A tracked frame still runs SAM3's ViT and "
        "the tracker's memory attention once per tracked object (section 4), which at these sizes costs about as "
        "much as a keyframe or more (section 1, tracked/keyframe). So (a), a full pass on every frame, costs about "
        "the same per frame as the default. SAM3 alone (b) runs no VLM at all and is cheaper per frame: what this "
        "package adds to SAM3 is the instruction's understanding, paid by the VLM on keyframes. The default is "
        "ahead where the VLM is the cost: an instruction switch on cached features, and the agent pipeline (c), "
        "which generates on every frame. Making a tracked frame cheap is what puts the default ahead of (a) and (b) "
        "per frame: section 10's levers do (tracker_scale: a tracked frame at 0.28x a keyframe on paper at full "
        "size; skip_unchanged: no model work on a still scene), but the default keeps the tracker at the "
        "detector's resolution, which the tiny model tracks best with, and skipping off, since a moving camera "
        "never repeats a frame."),
    ("full_size", ""): (
        "**Full size on paper (section 6 and 10).** At the default settings a tracked frame runs SAM3's ViT at the "
        "detector's 1008 px (5.4 TFLOP) and the tracker's memory attention over 72 x 72 tokens: ~0.8x a keyframe and "
        "~47 frames/s on one H100 on paper, short of 60. With tracker_scale 2/3 (48 x 48 tokens, a whole number of "
        "SAM3's 24-token windows) a tracked frame is ~0.28x a keyframe and the estimate ~106 frames/s; a keyframe "
        "then runs the ViT at both sizes. It is not the default because the only trained weights here, the tiny "
        "model's, track worse with it: its 8 x 8 token grid becomes 5 x 5 (tracker J&F and bag J&F in section 10), "
        "where full size keeps 48 x 48. What would decide it: the tracker's J&F with real SAM3 weights at 2/3 and 1 "
        "(e.g. `python -m instructsam_tools.bag_eval run BAG --set tracker_scale=0.667` on recorded bags), or a "
        "tiny model with a finer grid."),
    ("cameras", ""): (
        "**Several cameras batched (section 9).** On this CPU at one thread a batched ViT pass over four frames "
        "costs about four single passes: the encoders are compute-bound already at batch 1 (a 640x480 frame is "
        "hundreds of tokens per matmul), so batching saves only per-call overhead, a few percent of a mid frame, "
        "and each camera's detection or tracker step still runs one after another. A GPU at batch 1 is "
        "launch- and memory-bound and is where batching pays; `python -m instructsam_tools.benchmarks.gpu` "
        "measures it. batch_cameras stays off by default for that reason."),
    ("stream", ""): (
        "**Resident memory.** The tracker session is pruned to a bounded window (tracker_session.py); a deviation above "
        "5 % means something per-frame is kept: compare the RSS curve with the tracker_frames count."),
}


def format_table(targets: list[Target]) -> str:
    rows = [("section", "config", "figure", "value", "target", "verdict", "")]
    for t in targets:
        rows.append((t.section, t.config, t.name, t.value_text, t.limit_text, t.verdict, t.note))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:6], widths)) + ("  " + r[6] if r[6] else ""))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _explanation_key(target: Target) -> tuple[str, str]:
    if target.section == "paths":
        return ("paths", "switch" if "switch" in target.name else "tracked")
    return (target.section, "")


# ---- plots ------------------------------------------------------------------------------------------------------
def make_plots(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []

    def save(fig, axes, name: str, legend_size: int) -> None:
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=legend_size)
        fig.tight_layout()
        files.append(out_dir / name)
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)

    scaling = results.get("sections", {}).get("scaling", {})
    if scaling:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for config, data in scaling.items():
            ks = sorted(int(k) for k in data["k"])
            axes[0].plot(ks, [data["k"][str(k)]["cold_ms"] for k in ks], "o-", label=f"{config}: cold pass")
            axes[0].plot(ks, [data["k"][str(k)]["switch_ms"] for k in ks], "s--", label=f"{config}: switch")
            axes[1].plot(ks, [data["k"][str(k)]["peak_mb"] for k in ks], "o-", label=f"{config}: cold-pass peak")
        axes[0].set(xscale="log", yscale="log", xlabel="K (instance queries)", ylabel="ms (median)",
                    title="latency vs K")
        axes[1].set(xscale="log", xlabel="K (instance queries)", ylabel="MB allocated and alive at once",
                    title="peak memory vs K")
        save(fig, axes, "scaling_k.png", 7)

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for config, data in scaling.items():
            ns = sorted(int(n) for n in data["objects"])
            axes[0].plot(ns, [data["objects"][str(n)]["tracked_ms"] for n in ns], "o-", label=f"{config}: tracked")
            axes[0].plot(ns, [data["objects"][str(n)]["keyframe_ms"] for n in ns], "s--", label=f"{config}: keyframe")
            axes[1].plot(ns, [data["objects"][str(n)]["state_mb"] for n in ns], "o-",
                         label=f"{config}: kept between frames")
            axes[1].plot(ns, [data["objects"][str(n)]["peak_mb"] for n in ns], "s--",
                         label=f"{config}: peak in a tracked frame")
        axes[0].set(xlabel="tracked objects", ylabel="ms per frame (median)", title="latency vs tracked objects")
        axes[1].set(xlabel="tracked objects", ylabel="MB",
                    title="memory vs tracked objects")
        save(fig, axes, "scaling_objects.png", 7)

    stream = results.get("sections", {}).get("stream")
    if stream:
        frames, mb = zip(*stream["rss_mb"])
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot(frames, mb, "-", lw=1.2)
        ref = stream["reference_mb"]
        ax.axhspan(ref * 0.95, ref * 1.05, color="green", alpha=0.1, label="±5 % of the reference")
        ax.axvline(stream["reference_frame"], color="grey", lw=0.8, ls=":")
        ax.set(xlabel="frame", ylabel="RSS (MB)", title=f"resident memory over {stream['frames']:,} frames (tiny)")
        save(fig, [ax], "stream_rss.png", 8)
    return files


# ---- markdown ---------------------------------------------------------------------------------------------------
def _md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(results: dict, targets: list[Target], plots: list[Path], md_path: Path, notes: str = "") -> str:
    meta = results["meta"]
    s = results["sections"]
    out = ["# Benchmarks", "",
           "Generated by `python -m instructsam_tools.benchmarks` (the last run's figures; re-run to refresh). "
           "Random weights: the figures are about cost, not accuracy.", "",
           "## Commands", "", "```", *meta["commands"], "```", "",
           "## Machine and run", "",
           f"- {meta['when']}; {meta['platform']}; torch {meta['torch']}, transformers {meta['transformers']}",
           f"- torch threads: {meta['threads']}; CPU cores: {meta['cpus']}; load average at start "
           f"{meta['loadavg_start']}, at end {meta['loadavg_end']} (other jobs were running: timings of a busy "
           f"machine are noisy and slower, ratios less so)" if meta["loadavg_start"][0] > 1.0 else
           f"- torch threads: {meta['threads']}; CPU cores: {meta['cpus']}; load average at start "
           f"{meta['loadavg_start']}, at end {meta['loadavg_end']}",
           f"- configs: {', '.join(meta['configs'])} (tiny = config/model_tiny.yaml, mid = config/model_mid.yaml); "
           f"repeats {meta['repeats']} (medians after a warm-up call); runtime {meta['runtime_s'] / 60:.1f} min", "",
           "## Targets", "",
           _md_table(["section", "config", "figure", "value", "target", "verdict", "detail"],
                     [[t.section, t.config, t.name, t.value_text, t.limit_text, f"**{t.verdict}**", t.note]
                      for t in targets]), ""]
    if "paths" in s:
        out += ["## 1. Paths (one 640x480 frame, median ms)", "",
                "cold = encode_image + segment + postprocess on new features; switch = segment + postprocess on "
                "cached features (prefix KV cache filled); tracked-frame encode = encode_image(vlm=False) + "
                "tracker_features, what a tracked frame encodes (SAM3's ViT and the tracker's neck; the VLM vision "
                "tower and the detector FPN neck run on keyframes only); keyframe / tracked = FramePipeline "
                f"processing_ms with {next(iter(s['paths'].values()))['num_objects']} tracked objects, a keyframe "
                f"every {next(iter(s['paths'].values()))['keyframe_interval']} frames.", "",
                _md_table(["config", "encode_image", "tracked-frame encode (ViT + tracker neck)", "cold pass", "switch",
                           "keyframe", "tracked", "switch/cold", "tracked/keyframe"],
                          [[c, f"{d['encode']['median_ms']:.1f}", f"{d['encode_tracker_inputs']['median_ms']:.1f}",
                            f"{d['cold']['median_ms']:.1f}", f"{d['switch']['median_ms']:.1f}",
                            f"{d['keyframe']['median_ms']:.1f}", f"{d['tracked']['median_ms']:.1f}",
                            f"{d['ratios']['switch_vs_cold']:.3f}", f"{d['ratios']['tracked_vs_keyframe']:.3f}"]
                           for c, d in s["paths"].items()]), ""]
    if "batching" in s:
        rows = []
        for c, d in s["batching"].items():
            for n, v in d.items():
                rows.append([c, n, f"{v['median_ms']:.1f}", f"{v['separate_ms']:.1f}", f"{v['per_instruction_ms']:.1f}",
                             f"{v['ratio']:.3f}"])
        out += ["## 2. N instructions on one image: one batched pass vs N separate cold passes", "",
                "separate = N x the median single cold pass.", "",
                _md_table(["config", "N", "batched ms", "separate ms", "batched ms / instruction", "ratio"], rows), ""]
    if "node" in s:
        d = s["node"]
        out += ["## 3. Node overhead (image message in -> InstanceMaskArray out, minus model time)", "",
                d["what"], "",
                _md_table(["instances", "decode + submit ms", "build message (RLE) ms", "publish ms", "total ms",
                           "message bytes", "raw mono8 bytes", "message / raw"],
                          [[n, f"{v['in_ms']:.2f}", f"{v['build_ms']:.2f}", f"{v['publish_ms']:.2f}",
                            f"{v['total_ms']:.2f}", f"{v['message_bytes']:,}", f"{v['raw_bytes']:,}",
                            f"{v['size_ratio'] * 100:.2f} %"] for n, v in d["instances"].items()]), ""]
    if "scaling" in s:
        out += ["## 4. Scaling with K and with the number of tracked objects", ""]
        for c, d in s["scaling"].items():
            out += [f"**{c}** (its own K = {d['default_k']})", "",
                    _md_table(["K", "cold ms", "switch ms", "cold-pass peak MB (tensors alive at once)", "parameters"],
                              [[k, f"{v['cold_ms']:.1f}", f"{v['switch_ms']:.1f}", f"{v['peak_mb']:.1f}",
                                f"{v['params']:,}"] for k, v in d["k"].items()]), "",
                    _md_table(["tracked objects", "tracked ms", "keyframe ms", "state kept between frames MB",
                               "peak in a tracked frame MB"],
                              [[n, f"{v['tracked_ms']:.1f}", f"{v['keyframe_ms']:.1f}", f"{v['state_mb']:.1f}",
                                f"{v['peak_mb']:.1f}"] for n, v in d["objects"].items()]), ""]
    if "stream" in s:
        d = s["stream"]
        out += ["## 5. Resident memory over a long stream", "", d.get("what", ""), "",
                f"{d['frames']:,} frames of {d['frame_size'][1]}x{d['frame_size'][0]} in {d['seconds']:.0f} s "
                f"({d['ms_per_frame']:.1f} ms/frame), {d['keyframes']} keyframes, {d['tracks']} tracks at the end, "
                f"tracker session holding {d['tracker_frames']} frames. RSS {d['reference_mb']:.0f} MB at frame "
                f"{d['reference_frame']}, {d['final_mb']:.0f} MB at the end (growth {d['growth_pct']:+.2f} %, "
                f"largest deviation {d['max_deviation_pct']:+.2f} %).", ""]
    if "full_size" in s:
        d = s["full_size"]
        phases = d["phases"]
        comps = sorted({c for p in phases.values() for c in p["components_gflop"]})
        names = ["keyframe", "tracked frame", "encode_image", "instruction switch (prefix cached)",
                 "16 instructions batched (prefix cached)"]
        out += ["## 6. Full-size composition on paper (Qwen3-VL-2B shape + SAM3 default, bf16)", "",
                f"Config {d['config']}, one 640x480 frame, {d['num_objects']} tracked objects. FLOPs counted with "
                "torch's formulas while the real code paths run with every matmul/convolution/attention replaced by "
                "zeros of its shape (`instructsam_tools.benchmarks.flops`), on a model built on the meta device "
                f"(section time {d['seconds']:.0f} s).", "",
                _md_table(["component", "parameters", "bf16 weights GB"],
                          [[p["component"], f"{p['parameters']:,}", f"{p['bf16_gb']:.2f}"] for p in d["parameters"]]),
                "",
                _md_table(["GFLOP per component"] + names,
                          [[c] + [f"{phases[n]['components_gflop'].get(c, 0.0):,.1f}" for n in names]
                           for c in comps] +
                          [["**total TFLOP**"] + [f"**{phases[n]['tflop']:.3f}**" for n in names],
                           ["peak activations GB (tensors alive at once)"]
                           + [f"{phases[n]['activation_peak_gb']:.2f}" for n in names]]),
                "",
                f"Tracker step TFLOP while its memory fills (frames 1..{len(d['tracker_warmup_tflop'])}): "
                f"{', '.join(f'{t:.3f}' for t in d['tracker_warmup_tflop'])}.", "",
                "Ratios on paper (FLOPs): switch / cold = {switch_vs_cold:.3f}, tracked / keyframe = "
                "{tracked_vs_keyframe:.3f}, 16 batched / 16 separate = {batched16_vs_separate16:.3f}.".format(
                    **d["ratios_on_paper"]), ""]
        h = d["h100"]
        out += ["**H100 frame rate: an estimate on paper.** "
                f"Time = FLOPs / ({h['peak_tflops']:.0f} TFLOP/s dense bf16 peak x {h['utilisation']:.0%} assumed "
                "utilisation); ignores memory-bound ops, kernel launches, Python overhead, image decoding, "
                "post-processing and host-device transfers, all of which matter at batch 1.", "",
                _md_table(["", "keyframe", "tracked frame", "instruction switch", f"mixed (1 keyframe in "
                           f"{h['keyframe_interval']})"],
                          [["ms", f"{h['keyframe_ms']:.1f}", f"{h['tracked_ms']:.1f}",
                            f"{h['switch_ms']:.1f}", f"{1e3 / h['mixed_fps']:.1f}"],
                           ["frames/s", f"{h['keyframe_fps']:.0f}", f"{h['tracked_fps']:.0f}", "",
                            f"{h['mixed_fps']:.0f}"]]), ""]
    if "dit" in s:
        out += ["## 7. DIT beside InstructSAM: the per-instruction encoder cost (one 640x480 frame, median ms)", "",
                "DIT's detector features depend on the instruction: a keyframe runs SAM3's ViT once per instruction "
                "(and once more, plainly, for the tracker), a switch re-runs it, N instructions cost N encoder passes. "
                "InstructSAM encodes once and every instruction reuses the features. encoder = SAM3's ViT alone, "
                "what each further DIT instruction pays again; per-instruction = the N-batched call / N.", ""]
        for c, d in s["dit"].items():
            counts = list(next(iter(d.values()))["batched"])
            out += [f"**{c}**", "",
                    _md_table(["model", "keyframe", "switch", "switch / keyframe", "encoder (ViT)"]
                              + [f"{n} batched, per instruction" for n in counts],
                              [[m, f"{v['keyframe']['median_ms']:.1f}", f"{v['switch']['median_ms']:.1f}",
                                f"{v['switch']['median_ms'] / v['keyframe']['median_ms']:.2f}",
                                f"{v['encoder']['median_ms']:.1f}"]
                               + [f"{v['batched'][n]['per_instruction_ms']:.1f}" for n in counts]
                               for m, v in d.items()]), ""]
        if "full_size" in s:
            phases = s["full_size"]["phases"]
            vit = phases["keyframe"]["components_gflop"].get("SAM3 ViT", 0.0) / 1e3
            switch = phases["instruction switch (prefix cached)"]["tflop"]
            out += [f"At full size on paper (section 6): each further DIT instruction re-runs SAM3's ViT, "
                    f"≈ {vit:.2f} TFLOP (plus the few text tokens it carries), where an InstructSAM switch costs "
                    f"{switch:.2f} TFLOP on cached features: {vit / switch:.1f}x per instruction.", ""]
    if "alternatives" in s:
        from instructsam_tools.benchmarks.alternatives import AGENT_TOKENS
        from instructsam_tools.benchmarks.common import NODE_KEYFRAME_INTERVAL

        names = {"default": "this package's default", "naive": "(a) a full InstructSAM pass on every frame",
                 "sam3_video": "(b) SAM3 alone: transformers' Sam3Video streaming, text prompt",
                 "agent": "(c) SAM3-agent style: VLM writes phrases, SAM3 once per phrase, every frame",
                 "reference": "(d) the published model's mode (answer, then query blocks), keyframes + tracker"}
        out += ["## 8. The alternatives a user would pick, side by side (one 640x480 frame, median ms)", "",
                f"default = FramePipeline with a keyframe every {NODE_KEYFRAME_INTERVAL} frames (per frame: the mean "
                "over whole cycles), switch = a new instruction on the keyframe's cached features. (b) tracks at most "
                f"as many objects as the default, every detection admitted; its switch is a new session's first "
                f"frame. (c) generates {AGENT_TOKENS} tokens with transformers' greedy generate and runs SAM3's "
                f"text-prompted detector once per phrase (as many phrases as (d) wrote); (d) writes at most "
                f"{AGENT_TOKENS} tokens per keyframe. Ratios are to the default (> 1: costlier).", ""]
        for c, d in s["alternatives"].items():
            out += [f"**{c}**", "",
                    _md_table(["pipeline", "per frame ms", "per frame / default", "switch ms", "switch / default"],
                              [[names[n], f"{v['frame_ms']:.1f}", f"{v['frame_ratio']:.2f}", f"{v['switch_ms']:.1f}",
                                f"{v['switch_ratio']:.2f}"] for n, v in d.items()]), ""]
    if "cameras" in s:
        out += ["## 9. Several cameras: one batched pass per round vs one camera after another", "",
                "Each round every camera submits a 640x480 frame; batched = FramePipeline.step_batch (the keyframes "
                "of the round encoded together, the tracked frames together, then each camera's own detection or "
                "tracker step), sequential = step_any once per camera. Frames/s over whole keyframe cycles; latency "
                "spread = the slowest camera's mean latency / the fastest's, batched.", ""]
        rows = [[c, n, f"{v['sequential']['frames_per_s']:.2f}", f"{v['batched']['frames_per_s']:.2f}",
                 f"{v['speedup']:.2f}", f"{v['batched']['latency_spread']:.2f}"]
                for c, d in s["cameras"].items() for n, v in d.items()]
        out += [_md_table(["config", "cameras", "sequential frames/s", "batched frames/s", "speed-up",
                           "latency spread"], rows), ""]
    if "levers" in s:
        from instructsam_tools.benchmarks.levers import (BAG_FRAMES, BAG_VIDEOS, DEFAULTS, LEVERS, QUALITY_FRAMES,
                                                          QUALITY_VIDEOS, STATIC_NOISE)

        d = s["levers"]
        full = s.get("full_size", {})
        configs = list(d.get("cost", {}))
        quality = d.get("quality", {})
        rows = []
        for name in LEVERS:
            row = [name]
            for c in configs:
                v = d["cost"][c].get(name)
                row.append("" if v is None else f"{v['tracked_ms']:.1f} ({v['tracked_ms'] / v['keyframe_ms']:.2f}), "
                           f"{v['tracker_input_size']} px")
                row.append("" if v is None or "still_scene_ms" not in v else f"{v['still_scene_ms']:.1f}")
            if full:
                v = full.get("levers", {}).get(name) or ({
                    "tracked_tflop": full["phases"]["tracked frame"]["tflop"],
                    "keyframe_tflop": full["phases"]["keyframe"]["tflop"], "h100": full["h100"]}
                    if name == DEFAULTS else None)
                row += ["", ""] if v is None else [
                    f"{v['tracked_tflop']:.2f} ({v['tracked_tflop'] / v['keyframe_tflop']:.2f})",
                    f"{v['h100']['mixed_fps']:.0f}"]
            q = quality.get(name)
            bag = (q or {}).get("bag", {})
            row += ["" if q is None else f"{q['J&F']:.3f}",
                    "" if q is None or q["object_overlap"] is None else f"{q['object_overlap']:.3f}"]
            row += ["" if bag.get(k) is None else (f"{bag[k]:.3f}" if k != "id_switches" else str(bag[k]))
                    for k in ("J&F", "HOTA", "IDF1", "id_switches")]
            rows.append(row)
        header = (["lever (from the defaults)"]
                  + [h for c in configs for h in (f"{c}: tracked ms (/ keyframe), tracker input",
                                                  f"{c}: still scene, ms per frame")]
                  + (["full size: tracked TFLOP (/ keyframe)", "full size: H100 frames/s on paper"] if full else [])
                  + [f"tracker J&F ({QUALITY_VIDEOS} test videos x {QUALITY_FRAMES} frames)", "object_overlap",
                     f"bags ({BAG_VIDEOS} x {BAG_FRAMES} frames): J&F", "HOTA", "IDF1", "id switches"])
        out += ["## 10. Levers on a tracked frame: cost beside tracking quality", "",
                "Each lever changes node parameters from the defaults (tracker_memory_frames 4, tracker_scale 1). "
                "tracker_memory_frames: the past frames SAM3's tracker reads through memory attention, once per "
                "tracked object (the checkpoint's own is 7; keyframes it was conditioned on are read as well). "
                "tracker_scale: SAM3's tracker and a tracked frame's ViT pass on that fraction of the detector's "
                "token grid (a keyframe runs the ViT at both sizes; tracker input = the tracker's square input). "
                "skip_unchanged: a tracked frame whose 8x8-pixel block means moved by less than that many grey "
                "levels from the last frame the model saw repeats its instances without model work; its gain shows "
                f"on a still scene (one frame with sensor noise of {STATIC_NOISE:g} grey levels, mean over keyframe "
                "cycles), and the moving objects of the other columns must not be skipped. "
                "Cost at each size with random weights (H100 frames/s: section 6's estimate, a keyframe every "
                "10 frames). Quality with the shipped model: the tracker alone given the first frame's masks, and "
                "the bag evaluator on synthetic bags (detector on keyframes, tracker between, ids).", "",
                _md_table(header, rows), ""]
    if plots:
        out += ["## Plots", ""]
        for p in plots:
            try:
                rel = p.resolve().relative_to(md_path.resolve().parent)
            except ValueError:
                rel = p.resolve()
            out += [f"![{p.stem}]({rel})", ""]
    failed = [t for t in targets if t.verdict == "FAIL"]
    if failed:
        out += ["## Where a target is missed, and why", ""]
        seen = set()
        for t in failed:
            key = _explanation_key(t)
            if key in seen or key not in EXPLANATIONS:
                continue
            seen.add(key)
            out += [EXPLANATIONS[key], ""]
    if notes:
        out += [notes, ""]
    return "\n".join(out)


__all__ = ["format_table", "make_plots", "markdown", "EXPLANATIONS"]
