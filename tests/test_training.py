"""Training: Hungarian matcher, set criterion, the training loop (loss falls, exact resume) and DDP."""
from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torchvision.ops import box_convert

from instructsam.modeling import InstructSAMModel
from instructsam_tools.training.train_config import load_config
from instructsam_tools.training.criterion import SetCriterion
from instructsam_tools.data.batching import build_dataset, epoch_batches, image_groups
from instructsam_tools.training.denoising import noised_reference_boxes
from instructsam_tools.training.export import main as export_main
from instructsam_tools.training.matcher import HungarianMatcher
from instructsam_tools.training.trainer import load_step_model, train, warmup_cosine
from training_helpers import REPO, build_test_model

# ---------------------------------------------------------------------------------------------------------------
# matcher


def random_case(gen: torch.Generator, k: int, t: int, size: int = 8):
    """Random outputs for one sample with K slots, and T random box/mask targets."""
    def boxes(n):
        xy = torch.rand(n, 2, generator=gen) * 0.6
        wh = 0.1 + torch.rand(n, 2, generator=gen) * 0.3
        return torch.cat([xy, xy + wh], dim=1)

    outputs = {"logits": torch.randn(1, k, generator=gen), "boxes": boxes(k)[None],
               "mask_logits": torch.randn(1, k, size, size, generator=gen) * 3}
    target = {"boxes": boxes(t), "masks": torch.rand(t, size, size, generator=gen) > 0.6}
    return outputs, target


def reference_cost(outputs, target, matcher: HungarianMatcher, i: int, j: int) -> float:
    """The (slot i, target j) cost written out term by term, independently of the matcher's batched code."""
    x = float(outputs["logits"][0, i])
    p = 1 / (1 + math.exp(-x))
    a, g = matcher.focal_alpha, matcher.focal_gamma
    cls = a * (1 - p) ** g * -math.log(p) - (1 - a) * p ** g * -math.log(1 - p)
    ob, tb = outputs["boxes"][0, i].tolist(), target["boxes"][j].tolist()
    l1 = sum(abs(u - v) for u, v in zip(ob, tb))

    def area(b):
        return (b[2] - b[0]) * (b[3] - b[1])
    iw = max(0.0, min(ob[2], tb[2]) - max(ob[0], tb[0]))
    ih = max(0.0, min(ob[3], tb[3]) - max(ob[1], tb[1]))
    inter = iw * ih
    union = area(ob) + area(tb) - inter
    hull = (max(ob[2], tb[2]) - min(ob[0], tb[0])) * (max(ob[3], tb[3]) - min(ob[1], tb[1]))
    giou = inter / union - (hull - union) / hull
    logit = outputs["mask_logits"][0, i].flatten().double()
    m = target["masks"][j].flatten().double()
    prob = logit.sigmoid()
    bce = float((-(m * torch.log(prob) + (1 - m) * torch.log(1 - prob))).mean())
    dice = 1 - (2 * float((prob * m).sum()) + 1) / (float(prob.sum() + m.sum()) + 1)
    return (matcher.cost_class * cls + matcher.cost_bbox * l1 - matcher.cost_giou * giou
            + matcher.cost_mask * bce + matcher.cost_dice * dice)


@pytest.mark.parametrize("k,t", [(4, 1), (4, 3), (4, 4), (3, 5), (5, 2)])
def test_matcher_costs_and_assignment_match_brute_force(k, t):
    gen = torch.Generator().manual_seed(10 * k + t)
    matcher = HungarianMatcher(mask_cost_size=8)  # the cost grid equals the mask size: exact costs
    for _ in range(5):
        outputs, target = random_case(gen, k, t)
        cost = matcher.cost_matrices(outputs, [target])[0]
        expected = torch.tensor([[reference_cost(outputs, target, matcher, i, j) for j in range(t)]
                                 for i in range(k)])
        torch.testing.assert_close(cost, expected.float(), rtol=1e-4, atol=1e-4)

        slots, tgts = matcher(outputs, [target])[0]
        assert len(slots) == min(k, t) and len(set(slots.tolist())) == len(slots)
        assert len(set(tgts.tolist())) == len(tgts)
        got = float(cost[slots, tgts].sum())
        # brute force over every injective assignment of the smaller side into the larger
        if t <= k:
            best = min(sum(float(cost[p[j], j]) for j in range(t)) for p in itertools.permutations(range(k), t))
        else:
            best = min(sum(float(cost[i, p[i]]) for i in range(k)) for p in itertools.permutations(range(t), k))
        assert got == pytest.approx(best, abs=1e-5)


def test_matcher_empty_targets_and_bad_outputs():
    gen = torch.Generator().manual_seed(0)
    outputs, target = random_case(gen, 4, 2)
    empty = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 8, 8, dtype=torch.bool)}
    two = {k: torch.cat([v, v]) for k, v in outputs.items()}
    indices = HungarianMatcher()(two, [empty, target])
    assert indices[0][0].numel() == 0 and indices[0][1].numel() == 0
    assert len(indices[1][0]) == 2
    outputs["logits"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        HungarianMatcher()(outputs, [target])
    with pytest.raises(ValueError, match="all matcher costs are 0"):
        HungarianMatcher(0, 0, 0, 0, 0)


def test_matcher_downsampled_mask_cost_keeps_the_assignment():
    """The cheap 32x32 cost grid picks the same slots as full resolution when masks are clearly different."""
    size, k = 64, 4
    masks = torch.zeros(k, size, size, dtype=torch.bool)
    for i in range(k):  # four separate squares
        masks[i, 8 + 12 * i: 18 + 12 * i, 8 + 12 * i: 18 + 12 * i] = True
    perm = torch.tensor([2, 0, 3, 1])
    outputs = {"logits": torch.zeros(1, k), "boxes": torch.full((1, k, 4), 0.5) + torch.tensor([0, 0, 0.1, 0.1]),
               "mask_logits": (masks[perm].float() * 20 - 10)[None]}
    target = {"boxes": outputs["boxes"][0].clone(), "masks": masks}
    for grid in (32, 64):
        slots, tgts = HungarianMatcher(cost_bbox=0, cost_giou=0, mask_cost_size=grid)(outputs, [target])[0]
        assert torch.equal(perm[slots], tgts)


# ---------------------------------------------------------------------------------------------------------------
# criterion


def perfect_outputs(targets: list[dict], k: int, size: int, layers: int = 2, confidence: float = 30.0) -> dict:
    """Outputs that predict every target exactly in a shuffled slot, nothing elsewhere."""
    n = len(targets)
    logits = torch.full((n, k), -confidence)
    boxes = torch.tensor([0.1, 0.1, 0.2, 0.2]).repeat(n, k, 1)
    masks = torch.full((n, k, size, size), -confidence)
    presence = torch.empty(n)
    for i, t in enumerate(targets):
        slots = torch.randperm(k, generator=torch.Generator().manual_seed(i))[: len(t["boxes"])]
        logits[i, slots] = confidence
        boxes[i, slots] = t["boxes"]
        masks[i, slots] = t["masks"].float() * 2 * confidence - confidence
        presence[i] = confidence if len(t["boxes"]) else -confidence
    union = torch.stack([t["masks"].any(0) if len(t["masks"]) else torch.zeros(size, size, dtype=torch.bool)
                         for t in targets])
    semantic = (union.float() * 2 * confidence - confidence)[:, None]
    return {"logits": logits, "boxes": boxes, "mask_logits": masks, "presence_logits": presence,
            "semantic_seg": semantic,
            "aux_logits": logits.expand(layers, -1, -1).clone(), "aux_boxes": boxes.expand(layers, -1, -1, -1).clone(),
            "aux_presence_logits": presence.expand(layers, -1).clone()}


def square_targets(size: int = 16) -> list[dict]:
    def square(x0, y0, w):
        m = torch.zeros(size, size, dtype=torch.bool)
        m[y0:y0 + w, x0:x0 + w] = True
        return m, torch.tensor([x0, y0, x0 + w, y0 + w], dtype=torch.float32) / size
    out = []
    for placement in ([(1, 1, 4), (9, 2, 5)], [], [(3, 8, 6)]):
        made = [square(*p) for p in placement]
        out.append({"masks": torch.stack([m for m, _ in made]) if made else torch.zeros(0, size, size, dtype=bool),
                    "boxes": torch.stack([b for _, b in made]) if made else torch.zeros(0, 4)})
    return out


@pytest.mark.parametrize("class_loss", ["focal", "bce"])
def test_criterion_near_zero_for_perfect_predictions_and_positive_otherwise(class_loss):
    targets = square_targets()
    criterion = SetCriterion(HungarianMatcher(), class_loss=class_loss)
    outputs = perfect_outputs(targets, k=5, size=16)
    losses = criterion(outputs, targets)
    assert set(losses) >= {"loss", "loss_class", "loss_presence", "loss_mask", "loss_dice", "loss_bbox",
                           "loss_giou", "loss_semantic", "loss_class_aux0", "loss_bbox_aux0", "loss_presence_aux0"}
    assert float(losses["loss"]) < 1e-3, {k: float(v) for k, v in losses.items()}

    # each kind of mistake alone makes its own term clearly positive
    cases = {
        "loss_presence": lambda o: o["presence_logits"].__setitem__(1, 30.0),  # the no-target sample says present
        "loss_class": lambda o: o["logits"].__setitem__((1, 0), 30.0),  # a confident slot with nothing to match
        "loss_bbox": lambda o: o["boxes"].add_(0.05),
        "loss_mask": lambda o: o["mask_logits"].neg_(),
        "loss_dice": lambda o: o["mask_logits"].neg_(),
        "loss_semantic": lambda o: o["semantic_seg"][1].fill_(30.0),  # the no-target sample lights up pixels
    }
    for term, corrupt in cases.items():
        bad = perfect_outputs(targets, k=5, size=16)
        corrupt(bad)
        bad_losses = criterion(bad, targets)
        assert float(bad_losses[term]) > 0.05, term
        assert float(bad_losses["loss"]) > 0.1, term


def test_criterion_is_invariant_to_slot_order_and_resizes_target_masks():
    gen = torch.Generator().manual_seed(3)
    targets = square_targets(size=32)  # targets at 32x32, predictions at 16x16
    outputs = {"logits": torch.randn(3, 6, generator=gen), "boxes": torch.rand(3, 6, 4, generator=gen).sort(-1)[0],
               "mask_logits": torch.randn(3, 6, 16, 16, generator=gen), "presence_logits": torch.randn(3, generator=gen)}
    outputs["boxes"] = torch.cat([outputs["boxes"][..., :2] * 0.5, outputs["boxes"][..., :2] * 0.5 + 0.3], -1)
    criterion = SetCriterion(HungarianMatcher(), aux_loss=False)
    losses = criterion(outputs, targets)
    perm = torch.randperm(6, generator=gen)
    shuffled = {k: (v[:, perm] if v.ndim > 1 else v) for k, v in outputs.items()}
    for key, value in criterion(shuffled, targets).items():
        torch.testing.assert_close(value, losses[key], rtol=1e-5, atol=1e-6)
    assert float(losses["loss"]) > 1.0


def with_other_objects(targets: list[dict], size: int = 16) -> list[dict]:
    """square_targets plus one annotated non-target object per sample (label 0), after the targets."""
    out = []
    for i, t in enumerate(targets):
        other = torch.zeros(1, size, size, dtype=torch.bool)
        other[0, 12:15, 12 - i:15 - i] = True
        box = torch.tensor([[12 - i, 12, 15 - i, 15]], dtype=torch.float32) / size
        out.append({"masks": torch.cat([t["masks"], other]), "boxes": torch.cat([t["boxes"], box]),
                    "labels": torch.cat([torch.ones(len(t["boxes"])), torch.zeros(1)])})
    return out


def test_detect_all_supervises_every_objects_mask_but_scores_only_the_targets():
    targets = square_targets()
    everything = with_other_objects(targets)
    # perfect for all objects (targets scored high, the other object low)
    outputs = perfect_outputs(everything, k=5, size=16)
    for i, t in enumerate(everything):
        other_slot = (outputs["mask_logits"][i] > 0).flatten(1).float() @ t["masks"][-1].flatten().float()
        outputs["logits"][i, other_slot.argmax()] = -30.0
    outputs["aux_logits"] = outputs["logits"].expand(2, -1, -1).clone()
    outputs["presence_logits"] = torch.tensor([30.0, -30.0, 30.0])  # sample 1 has no target, only the other object
    outputs["aux_presence_logits"] = outputs["presence_logits"].expand(2, -1).clone()
    outputs["semantic_seg"] = perfect_outputs(targets, k=5, size=16)["semantic_seg"]  # the union of targets only
    detect_all = SetCriterion(HungarianMatcher(), class_loss="bce", detect_all=True)
    losses = detect_all(outputs, everything)
    assert float(losses["loss"]) < 1e-3, {k: float(v) for k, v in losses.items()}
    # the same outputs are wrong for targets-only matching only in the extra objects' masks being unsupervised:
    # a wrong mask on another object costs detect_all, not the targets-only criterion
    for i in range(3):
        slot = (outputs["mask_logits"][i] > 0).flatten(1).float() @ everything[i]["masks"][-1].flatten().float()
        outputs["mask_logits"][i, slot.argmax()] *= -1
    assert float(detect_all(outputs, everything)["loss_dice"]) > 0.3  # 3 of 6 objects wrong
    targets_only = SetCriterion(HungarianMatcher(), class_loss="bce")
    assert float(targets_only(outputs, everything)["loss_dice"]) < 1e-3
    # scoring the other object high is a class mistake under detect_all
    outputs = perfect_outputs(everything, k=5, size=16)  # every object, the other one included, scored 1
    assert float(detect_all(outputs, everything)["loss_class"]) > 1.0


def test_denoising_boxes_stay_near_their_objects_and_pad_with_placeholders():
    targets = with_other_objects(square_targets())
    exact = noised_reference_boxes(targets, noise=0.0)
    assert exact.shape == (3, 3, 4)  # the most objects in a sample: 2 targets + 1 other
    for n, t in enumerate(targets):
        torch.testing.assert_close(exact[n, : len(t["boxes"])], box_convert(t["boxes"], "xyxy", "cxcywh"))
    torch.testing.assert_close(exact[1, 1:], torch.tensor([[0.5, 0.5, 1.0, 1.0]] * 2).clamp(max=1 - 1e-3))
    torch.manual_seed(0)
    noisy = noised_reference_boxes(targets, noise=0.4)
    gt = exact[0, :3]
    assert not torch.allclose(noisy[0, :3], gt)
    assert ((noisy[0, :3, :2] - gt[:, :2]).abs() <= 0.4 * gt[:, 2:] / 2 + 1e-6).all()
    assert ((noisy[0, :3, 2:] / gt[:, 2:] - 1).abs() <= 0.4 + 1e-6).all()


def test_denoising_losses_are_near_zero_for_exact_outputs_and_catch_each_mistake():
    targets = with_other_objects(square_targets())
    outputs = perfect_outputs(targets, k=5, size=16)
    # denoising query i = object i: exact masks and boxes, scores following the labels (placeholders anything)
    m = 3
    dn_masks, dn_boxes, dn_logits = torch.full((3, m, 16, 16), -30.0), torch.rand(3, m, 4), torch.zeros(3, m)
    for n, t in enumerate(targets):
        k = len(t["boxes"])
        dn_masks[n, :k] = t["masks"].float() * 60 - 30
        dn_boxes[n, :k] = t["boxes"]
        dn_logits[n, :k] = t["labels"] * 60 - 30
    outputs.update(denoise_mask_logits=dn_masks, denoise_boxes=dn_boxes, denoise_logits=dn_logits)
    criterion = SetCriterion(HungarianMatcher(), class_loss="bce", detect_all=True)
    losses = criterion(outputs, targets)
    dn_terms = {"loss_class_dn", "loss_bbox_dn", "loss_giou_dn", "loss_mask_dn", "loss_dice_dn"}
    assert dn_terms <= set(losses)
    assert all(float(losses[k]) < 1e-3 for k in dn_terms), {k: float(losses[k]) for k in dn_terms}
    assert SetCriterion.term("loss_mask_dn") == "mask" and SetCriterion.term("loss_class_aux0") == "class"
    wrong = {"loss_class_dn": lambda: dn_logits.neg_(), "loss_bbox_dn": lambda: dn_boxes.add_(0.1),
             "loss_dice_dn": lambda: dn_masks[0].copy_(dn_masks[0][[1, 0, 2]])}  # two objects' masks swapped
    for term, corrupt in wrong.items():
        saved = (dn_masks.clone(), dn_boxes.clone(), dn_logits.clone())
        corrupt()
        assert float(criterion(outputs, targets)[term]) > 0.05, term
        for dst, src in zip((dn_masks, dn_boxes, dn_logits), saved):
            dst.copy_(src)


def test_denoising_queries_run_apart_from_the_slots(test_model):
    model = InstructSAMModel.from_pretrained(str(test_model)).eval()
    images = [np.full((64, 64, 3), 90, np.uint8), np.zeros((64, 64, 3), np.uint8)]
    with torch.no_grad():
        features = model.encode_image(images)
        plain = model.segment(features, ["the red circle", "every square"], reuse_prefix=False)
        boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]], [[0.5, 0.5, 0.4, 0.4]] * 2])
        with_dn = model.segment(features, ["the red circle", "every square"], reuse_prefix=False,
                                denoise_boxes=boxes)
    # the K slots are unchanged by the extra queries (a separate detector pass: they cannot see the ground truth)
    torch.testing.assert_close(with_dn.mask_logits, plain.mask_logits)
    torch.testing.assert_close(with_dn.logits, plain.logits)
    assert plain.denoise_logits is None
    h = plain.mask_logits.shape[-1]
    assert with_dn.denoise_mask_logits.shape == (2, 2, h, h) and with_dn.denoise_boxes.shape == (2, 2, 4)
    assert with_dn.denoise_logits.shape == (2, 2)
    # the query placed at a different box predicts a different mask
    assert not torch.allclose(with_dn.denoise_mask_logits[0, 0], with_dn.denoise_mask_logits[0, 1])


def test_criterion_gradients_reach_matched_slots_only_for_mask_terms():
    targets = square_targets()
    outputs = perfect_outputs(targets, k=5, size=16, confidence=2.0)
    outputs["mask_logits"].requires_grad_(True)
    losses = SetCriterion(HungarianMatcher())(outputs, targets)
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    touched = outputs["mask_logits"].grad.abs().flatten(2).sum(-1) > 0
    assert touched.sum() == sum(len(t["boxes"]) for t in targets)  # 3 matched slots in total
    assert not touched[1].any()  # the no-target sample's masks get no mask gradient


# ---------------------------------------------------------------------------------------------------------------
# data and schedule


def test_epoch_batches_shard_deterministically():
    a = epoch_batches(22, 2, epoch=3, seed=7, rank=0, world_size=2)
    b = epoch_batches(22, 2, epoch=3, seed=7, rank=1, world_size=2)
    assert a == epoch_batches(22, 2, epoch=3, seed=7, rank=0, world_size=2)
    assert len(a) == len(b) == 5  # 22 images -> 5 steps of 2 x 2, two left over
    flat = [g for batch in a + b for g in batch]
    assert len(flat) == len(set(flat)) == 20
    assert a != epoch_batches(22, 2, epoch=4, seed=7, rank=0, world_size=2)
    with pytest.raises(ValueError, match="cannot fill one step"):
        epoch_batches(3, 2, epoch=0, seed=0, world_size=2)


def test_image_groups_keep_each_images_instructions_together():
    ds = build_dataset("synthetic:train:10", image_size=64)
    groups = image_groups(ds)
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="unknown data spec"):
        build_dataset("coco:train")
    with pytest.raises(ValueError, match="unknown synthetic split"):
        build_dataset("synthetic:dev:10")


def test_warmup_cosine_schedule():
    values = [warmup_cosine(s, 10, 110, 0.1) for s in range(111)]
    assert values[0] < values[5] < values[9] < values[10] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.55)
    assert values[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(REPO / "config" / "train_tiny.yaml", ["train.max_steps=7", "optim.lr=0.5"])
    assert cfg.train.max_steps == 7 and cfg.optim.lr == 0.5
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(REPO / "config" / "train_tiny.yaml", ["train.max_step=7"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="loss.denoise"):
        load_config(REPO / "config" / "train_tiny.yaml", ["loss.denoise=1.5"])


# ---------------------------------------------------------------------------------------------------------------
# the training loop


@pytest.fixture(scope="module")
def test_model(tmp_path_factory) -> Path:
    return build_test_model(tmp_path_factory.mktemp("model") / "tiny")


def run_config(model_dir: Path, output_dir: Path, *extra: str):
    """A 30-step run on 8 training images (1 per step, with its 4 instructions) of the small test model."""
    return load_config(REPO / "config" / "train_test.yaml",
                       [f"model.checkpoint={model_dir}", f"output_dir={output_dir}", *extra])


def trained_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "final" / "model.safetensors"))


def read_log(output_dir: Path) -> list[dict]:
    import json
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_freeze_prefix_that_matches_no_parameter_is_refused(test_model, tmp_path):
    """A misspelt prefix would otherwise silently train what it meant to freeze."""
    cfg = run_config(test_model, tmp_path / "run")
    cfg.model.freeze_modules = ["sam3.tracker_model.tracker_model.memory_encoder"]  # doubled: no such parameter
    with pytest.raises(ValueError, match=r"freeze_modules: no parameter name starts with"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_reinit_modules_resets_only_the_named_modules_after_loading(test_model, tmp_path):
    from instructsam_tools.training.trainer import DistInfo, build_model

    loaded = InstructSAMModel.from_pretrained(str(test_model)).state_dict()
    cfg = run_config(test_model, tmp_path / "run", "model.reinit_modules=[projector.prompt_mlp,projector.prompt_norm]")
    model = build_model(cfg, DistInfo())
    for name, value in model.state_dict().items():
        if name.startswith(("projector.prompt_mlp.", "projector.prompt_norm.")):
            if name.startswith("projector.prompt_norm."):
                expected = torch.ones_like(value) if name.endswith("weight") else torch.zeros_like(value)
                assert torch.equal(value, expected), name
            elif name.endswith("bias"):
                assert not value.any(), name
            else:  # Xavier-uniform: within its bound, and not the loaded weights
                bound = (6 / sum(value.shape)) ** 0.5
                assert value.abs().max() <= bound and not torch.equal(value, loaded[name]), name
        else:
            assert torch.equal(value, loaded[name]), name
    with pytest.raises(ValueError, match="reinit_modules: no module"):
        build_model(run_config(test_model, tmp_path / "run", "model.reinit_modules=[projector.words]"), DistInfo())
    with pytest.raises(ValueError, match="are \\(partly\\) frozen"):
        build_model(run_config(test_model, tmp_path / "run", "model.reinit_modules=[projector.prompt_mlp]",
                               "model.freeze_modules=[projector]"), DistInfo())
    with pytest.raises(ValueError, match="prompt_source must be one of"):  # overrides are checked like a config
        build_model(run_config(test_model, tmp_path / "run", "model.overrides.prompt_source=embedding"), DistInfo())


@pytest.mark.parametrize("loss_options", [(), ("loss.detect_all=true", "loss.denoise=0.4")],
                         ids=["targets", "detect_all+denoise"])
def test_loss_falls_and_resume_is_exact(test_model, tmp_path, loss_options):
    torch.set_num_threads(1)
    full = tmp_path / "full"
    result = train(run_config(test_model, full, *loss_options))
    assert result["step"] == 30
    losses = [r["loss"] for r in read_log(full) if "loss" in r]
    assert len(losses) == 30  # log_every = 1
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.75 * first, f"loss did not fall: first 5 steps {first:.3f}, last 5 {last:.3f}"

    split = tmp_path / "split"
    cfg = run_config(test_model, split, *loss_options)
    stopped = train(cfg, stop_at_step=15)
    assert stopped["step"] == 15 and "final" not in stopped
    resumed = train(cfg, resume=split / "checkpoints" / "step_0000015")
    assert resumed["step"] == 30
    a, b = trained_weights(full), trained_weights(split)
    assert a.keys() == b.keys()
    changed = 0
    init = load_file(str(test_model / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs between the resumed and the uninterrupted run"
        changed += not torch.equal(a[name], init[name])
    assert changed > 10  # training really moved the trainable parameters
    resume_log = [r for r in read_log(split) if "loss" in r]
    assert [r["step"] for r in resume_log] == list(range(1, 31))
    assert [r["loss"] for r in resume_log] == losses  # identical per-step losses, not just final weights

    # a step checkpoint (trainable weights only) + its run's base model rebuilds the final model exactly, and the
    # export command writes it as a directory that loads like any checkpoint
    rebuilt = load_step_model(split / "checkpoints" / "step_0000030").state_dict()
    final = InstructSAMModel.from_pretrained(str(split / "final")).state_dict()
    export_main([str(split / "checkpoints" / "step_0000030"), str(tmp_path / "exported")])
    exported = InstructSAMModel.from_pretrained(str(tmp_path / "exported"))
    assert exported.tokenizer is not None
    assert all(torch.equal(v, final[k]) for k, v in exported.state_dict().items())
    assert rebuilt.keys() == final.keys()
    for name, value in final.items():
        assert torch.equal(rebuilt[name], value), name


def test_ddp_two_processes_end_with_identical_weights(test_model, tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "instructsam_tools.training.train", "--config", str(REPO / "config" / "train_test.yaml"),
           f"model.checkpoint={test_model}", f"output_dir={out}", "train.max_steps=4", "train.checkpoint_every=2",
           "train.save_rank_weights=true"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [load_file(str(out / f"rank{r}_weights.safetensors")) for r in (0, 1)]
    init = load_file(str(test_model / "model.safetensors"))
    assert ranks[0].keys() == ranks[1].keys()
    moved = 0
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between the DDP ranks"
        moved += name in init and not torch.equal(ranks[0][name], init[name])
    assert moved > 10
    log = read_log(out)
    assert log[0]["world_size"] == 2
    assert (out / "final" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "step_0000004" / "rng_rank1.safetensors").is_file()
