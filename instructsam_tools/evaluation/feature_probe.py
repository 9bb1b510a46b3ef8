"""Where along the model an object's colour and shape can still be read: linear probes on intermediate features.

    python -m instructsam_tools.evaluation.feature_probe --checkpoint DIR [--scenes 200] [--out FILE.json]

Each synthetic scene is asked one neutral instruction ("all the objects"). Features are taken at
    sam3_vit       SAM3's ViT tokens,
    detr_input     the FPN level SAM3's DETR encoder reads,
    detr_output    the DETR encoder's prompt-fused tokens (what the decoder and the mask decoder read),
    slot_states    the DETR decoder's last-layer state of each slot whose mask matches an object (IoU > 0.5),
    vlm_image      the VLM's image tokens where they enter its language model.
A token belongs to the object covering more than half of its cell. A linear classifier (softmax regression on
standardised features) is fitted on the first 3/4 of the scenes and scored on the rest, beside the majority
class. SAM3's dot-product scoring reads the slot's state, so an attribute the slot states do not carry cannot select
the instruction's targets, whatever the prompt says (unless score_from_masks adds the tokens under the slot's mask).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from instructsam_tools.data.synthetic import SyntheticInst2Seg
from instructsam_tools.evaluation.probe import ATTRIBUTES, TASK
from instructsam_tools.evaluation.report import write_json

SITES = ("sam3_vit", "detr_input", "detr_output", "slot_states", "vlm_image")
INSTRUCTION = "all the objects"
MATCH_IOU = 0.5


def _object_cover(objects, side: int) -> np.ndarray:
    """(objects, side*side) fraction of each cell of a side x side grid that each object covers."""
    return np.stack([F.adaptive_avg_pool2d(torch.tensor(o.visible_mask, dtype=torch.float)[None, None], side)
                     .flatten().numpy() for o in objects])


def _cell_owner(cover: np.ndarray) -> np.ndarray:
    """(cells,) index of the object covering more than half of each token's cell, -1 for none."""
    return np.where(cover.max(0) > 0.5, cover.argmax(0), -1)


def _slot_owner(mask_logits: torch.Tensor, cover: np.ndarray) -> np.ndarray:
    """(K,) index of the object each slot's mask matches (IoU > MATCH_IOU), -1 for none; `cover` on the masks'
    own grid."""
    slots = (mask_logits > 0).flatten(1)
    objs = torch.from_numpy(cover > 0.5)
    inter = (slots[:, None] & objs[None]).sum(-1).float()
    union = (slots[:, None] | objs[None]).sum(-1).float().clamp(min=1)
    best, arg = (inter / union).max(1)
    return torch.where(best > MATCH_IOU, arg, -1).numpy()


def collect(model, dataset: SyntheticInst2Seg, num_scenes: int) -> dict[str, list[tuple[np.ndarray, list, int]]]:
    """Per site, (features (n, d), the owning objects, scene index) for every scene with a visible object."""
    captured = {}
    hooks = [
        model.detector.detr_encoder.register_forward_hook(
            lambda m, a, kw, out: captured.update(detr_input=kw["vision_features"][0], detr_output=out.last_hidden_state),
            with_kwargs=True),
        # the last decoder layer's own slot states, as the mask decoder reads them (scoring may add pooled tokens)
        model.detector.mask_decoder.register_forward_hook(
            lambda m, a, kw, out: captured.update(slot_states=kw["decoder_queries"]), with_kwargs=True)]
    rows = {site: [] for site in SITES}
    try:
        with torch.no_grad():
            for index in range(min(num_scenes, dataset.num_images)):
                _, scene, _ = dataset.scene(index)
                objects = scene.visible_objects()
                if not objects:
                    continue
                features = model.encode_image([scene.image], tracker=False)
                output = model.segment(features, [INSTRUCTION], task=TASK)
                tokens = {"sam3_vit": features.sam3.last_hidden_state[0].flatten(0, -2),
                          "detr_input": captured["detr_input"][0].flatten(1).T,
                          "detr_output": captured["detr_output"][0],
                          "vlm_image": features.vlm_image_embeds[0]}
                covers = {}  # per grid side: the sites mostly share one
                for site, x in tokens.items():
                    side = int(round(len(x) ** 0.5))
                    cover = covers.setdefault(side, _object_cover(objects, side))
                    owner = _cell_owner(cover)
                    keep = owner >= 0
                    rows[site].append((x[keep].float().cpu().numpy(), [objects[j] for j in owner[keep]], index))
                masks = output.mask_logits[0].cpu()
                owner = _slot_owner(masks, _object_cover(objects, masks.shape[-1]))
                keep = owner >= 0
                rows["slot_states"].append((captured["slot_states"][0][keep].float().cpu().numpy(),
                                            [objects[j] for j in owner[keep]], index))
    finally:
        for h in hooks:
            h.remove()
    return rows


def linear_probe(x: np.ndarray, labels: list[str], train: np.ndarray, steps: int = 300) -> tuple[float, float]:
    """(held-out accuracy of a softmax regression fitted on `train` rows, held-out accuracy of always answering the
    training rows' most frequent class)."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    xs = torch.tensor((x - mean) / std, dtype=torch.float32)
    tr, te = torch.tensor(train), torch.tensor(~train)
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Linear(xs.shape[1], len(classes))
    with torch.no_grad():
        w.weight.normal_(0, 0.01, generator=gen)
        w.bias.zero_()
    opt = torch.optim.Adam(w.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(w(xs[tr]), y[tr]).backward()
        opt.step()
    with torch.no_grad():
        accuracy = (w(xs[te]).argmax(1) == y[te]).float().mean().item()
    majority = int(np.bincount(y[tr].numpy(), minlength=len(classes)).argmax())
    return accuracy, float((y[te] == majority).float().mean())


def feature_probe(model, dataset: SyntheticInst2Seg, num_scenes: int) -> dict:
    """{site: {attribute: {"accuracy", "majority", "n_test"}}}; the first 3/4 of the scenes train each probe."""
    model.eval()
    split = int(0.75 * min(num_scenes, dataset.num_images))
    result = {}
    for site, rows in collect(model, dataset, num_scenes).items():
        rows = [r for r in rows if len(r[0])]
        if not rows:
            continue
        x = np.concatenate([r[0] for r in rows])
        train = np.concatenate([np.full(len(r[0]), r[2] < split) for r in rows])
        objects = [o for r in rows for o in r[1]]
        result[site] = {}
        for attribute in ATTRIBUTES:
            if train.all() or not train.any():
                continue
            accuracy, majority = linear_probe(x, [str(getattr(o, attribute)) for o in objects], train)
            result[site][attribute] = {"accuracy": accuracy, "majority": majority, "n_test": int((~train).sum())}
    return result


def format_feature_probe(result: dict) -> str:
    lines = ["site | " + " | ".join(f"{a}: accuracy (majority)" for a in ATTRIBUTES) + " | held-out tokens",
             "--- | " + " | ".join("---" for _ in ATTRIBUTES) + " | ---"]
    for site, r in result.items():
        cells = [f"{r[a]['accuracy']:.3f} ({r[a]['majority']:.3f})" if a in r else "-" for a in ATTRIBUTES]
        n = next(iter(r.values()))["n_test"] if r else 0
        lines.append(f"{site} | " + " | ".join(cells) + f" | {n}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from instructsam_tools.evaluation.evaluate import load_model

    parser = argparse.ArgumentParser(prog="python -m instructsam_tools.evaluation.feature_probe",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="InstructSAM directory (one-pass mode)")
    parser.add_argument("--scenes", type=int, default=200, help="synthetic scenes (default 200; 3/4 train the probes)")
    parser.add_argument("--split", default="train", help="synthetic split (default train)")
    parser.add_argument("--image-size", type=int, default=128, help="synthetic image size (default 128)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    if args.scenes < 4:
        parser.error(f"--scenes must be >= 4, got {args.scenes}")
    model = load_model(args.checkpoint, args.device)
    if model.config.inference_mode != "one_pass":
        parser.error(f"the feature probe reads one-pass mode's decoder; this checkpoint is {model.config.inference_mode!r}")
    dataset = SyntheticInst2Seg(args.split, size=args.scenes, image_size=args.image_size, instructions_per_image=1)
    result = feature_probe(model, dataset, args.scenes)
    print(format_feature_probe(result))
    if args.out:
        write_json({"run": {"checkpoint": str(args.checkpoint), "scenes": args.scenes, "split": args.split}, **result},
                   args.out)
    return result


if __name__ == "__main__":
    main()
