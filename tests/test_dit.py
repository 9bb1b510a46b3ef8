"""DIT mode (deep instruction tuning: the instruction inside SAM3's image encoder) on the tiny stack: what E-DIT and
L-DIT insert where, that without inserted tokens the encoder is SAM3's ViT, the windowed layers' text handling,
the mode through from_pretrained / segment / the trainer (with resume) / the evaluator, and RefCOCO-layout data
feeding DIT's training and evaluation commands."""
from __future__ import annotations

import functools
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import INSTRUCTIONS, random_images
from safetensors.torch import load_file
from training_helpers import REPO, build_test_model

SHIPPED = REPO / "checkpoints" / "instructsam-tiny"  # SAM3 ViT: a windowed layer, then a global one


@functools.lru_cache(maxsize=None)
def dit_dir(variant: str, frozen: bool = False, text_source: str = "sam3", base: str = "shipped") -> Path:
    from instructsam_tools.to_dit import to_dit

    root = Path(tempfile.mkdtemp(prefix=f"instructsam_dit_{variant}_"))
    source = SHIPPED if base == "shipped" else build_test_model(root / "small")
    return to_dit(source, root / "dit", variant, text_source=text_source, frozen_encoder=frozen)


def load_dit(*args, **kwargs):
    from instructsam.modeling import InstructSAMModel

    return InstructSAMModel.from_pretrained(str(dit_dir(*args, **kwargs))).eval()


def vit_inputs(model, batch: int = 2, length: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=g)
    text = torch.randn(batch, length, model.config.sam3_hidden_size, generator=g)
    return pixels, text, torch.ones(batch, length, dtype=torch.bool)


def layer_outputs(model, pixels, text, mask) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    model.dit(model.detector.vision_encoder.backbone, pixels, text, mask, layers_out=out)
    return out


@torch.no_grad()
@pytest.mark.parametrize("variant", ["end_to_end", "layer_wise", "none"])
def test_without_inserted_tokens_the_encoder_is_sam3s_vit(variant):
    model = load_dit(variant)
    vit = model.detector.vision_encoder.backbone
    pixels, text, mask = vit_inputs(model)
    plain = vit(pixels).last_hidden_state
    hidden, _ = model.dit(vit, pixels, text[:, :0], mask[:, :0])  # no instruction tokens
    assert torch.equal(hidden, plain)
    # tokens that are all padding take part in no attention: the general path gives SAM3's features too
    hidden, _ = model.dit(vit, pixels, text, torch.zeros_like(mask))
    torch.testing.assert_close(hidden, plain, rtol=0, atol=1e-5)


@torch.no_grad()
def test_padding_tokens_change_nothing_also_where_windows_are_padded():
    from instructsam.dit_encoder import layer_with_text

    layer = load_dit("end_to_end").detector.vision_encoder.backbone.layers[0]
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 6, 6, layer.attention.hidden_size, generator=g)  # 6 = one window of 4 + padding
    text = torch.randn(2, 3, layer.attention.hidden_size, generator=g)
    out, _ = layer_with_text(layer, hidden, text, torch.zeros(2, 3, dtype=torch.bool), update_text=True)
    torch.testing.assert_close(out, layer(hidden), rtol=0, atol=1e-5)
    # one padding token among real ones is the same as leaving it out
    keep = torch.tensor([[True, True, False], [True, True, False]])
    a, ta = layer_with_text(layer, hidden, text, keep, update_text=True)
    b, tb = layer_with_text(layer, hidden, text[:, :2], keep[:, :2], update_text=True)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(ta[:, :2], tb, rtol=0, atol=1e-5)


@torch.no_grad()
def test_text_tokens_have_no_position_on_the_patch_grid():
    """A patch's score for a word does not depend on where the patch is; patch-patch scores are SAM3's rotary ones."""
    from transformers.models.sam3.modeling_sam3 import apply_rotary_pos_emb_2d

    from instructsam.dit_encoder import patch_attention_inputs

    model = load_dit("end_to_end")
    for layer in model.detector.vision_encoder.backbone.layers:
        side = layer.window_size or 8
        c = layer.attention.hidden_size
        token = torch.randn(c, generator=torch.Generator().manual_seed(3))
        windows = layer.layer_norm1(token.expand(1, side, side, c))  # the same patch everywhere
        text = layer.layer_norm1(torch.randn(1, 2, c, generator=torch.Generator().manual_seed(4)))
        queries, keys, *_ = patch_attention_inputs(layer, windows, text, num_windows=1)
        scores = queries @ keys.transpose(-1, -2)  # (1, heads, S, S + 2)
        to_text = scores[..., side * side:]
        torch.testing.assert_close(to_text, to_text[:, :, :1].expand_as(to_text), rtol=0, atol=1e-5)
        nh = layer.attention.num_attention_heads
        flat = windows.flatten(1, 2)
        q, k = (layer.attention.q_proj(flat).unflatten(-1, (nh, -1)).transpose(1, 2),
                layer.attention.k_proj(flat).unflatten(-1, (nh, -1)).transpose(1, 2))
        cos, sin = layer.rotary_emb(windows, layer.position_ids)
        q, k = apply_rotary_pos_emb_2d(q, k, cos=cos, sin=sin)
        torch.testing.assert_close(scores[..., :side * side], q @ k.transpose(-1, -2), rtol=1e-5, atol=1e-5)
        assert scores[..., :side * side].std(-1).max() > 1e-3  # the patches themselves do see positions


@torch.no_grad()
def test_e_dit_text_changes_the_image_features_of_every_layer():
    model = load_dit("end_to_end")
    vit = model.detector.vision_encoder.backbone
    assert [layer.window_size > 0 for layer in vit.layers] == [True, False]  # both kinds of layer are covered
    pixels, text, mask = vit_inputs(model)
    with_text = layer_outputs(model, pixels, text, mask)
    # (another instruction: the text tokens carry no position and pass SAM3's layer norm, so a reordered or
    # rescaled one would be the same instruction)
    other_text = layer_outputs(model, pixels, vit_inputs(model, seed=1)[1], mask)
    without = layer_outputs(model, pixels, text, torch.zeros_like(mask))
    assert len(with_text) == len(vit.layers)
    for i, (a, b, c) in enumerate(zip(with_text, other_text, without)):
        assert (a - c).abs().max() > 1e-4, f"layer {i}: the instruction did not reach the image features"
        assert (a - b).abs().max() > 1e-4, f"layer {i}: two instructions gave the same image features"


@torch.no_grad()
def test_l_dit_each_layer_reads_its_own_projection():
    model = load_dit("layer_wise")
    pixels, text, mask = vit_inputs(model)
    before = layer_outputs(model, pixels, text, mask)
    for i, proj in enumerate(model.dit.layer_projs):
        saved = proj.weight.clone()
        proj.weight.add_(torch.randn_like(proj.weight) * 0.5)
        after = layer_outputs(model, pixels, text, mask)
        proj.weight.copy_(saved)
        for j in range(i):
            assert torch.equal(after[j], before[j]), f"perturbing layer {i}'s projection changed layer {j}"
        assert (after[i] - before[i]).abs().max() > 1e-4, f"layer {i} does not read its own projection"


@torch.no_grad()
def test_windowed_layers_read_the_text_in_every_window_and_keep_windows_apart():
    """Text tokens are extra keys in every window; a window's patches still see no other window, while the text
    tokens' own update sees all of them."""
    from instructsam.dit_encoder import layer_with_text

    model = load_dit("end_to_end")
    layer = model.detector.vision_encoder.backbone.layers[0]
    w = layer.window_size
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 2 * w, 2 * w, layer.attention.hidden_size, generator=g)
    text = torch.randn(2, 3, layer.attention.hidden_size, generator=g)
    mask = torch.ones(2, 3, dtype=torch.bool)
    out, text_out = layer_with_text(layer, hidden, text, mask, update_text=True)
    for i in range(2):  # a batch is its images one by one (windows and text tokens stay with their image)
        one, one_text = layer_with_text(layer, hidden[i:i + 1], text[i:i + 1], mask[i:i + 1], update_text=True)
        torch.testing.assert_close(out[i:i + 1], one, rtol=0, atol=1e-5)
        torch.testing.assert_close(text_out[i:i + 1], one_text, rtol=0, atol=1e-5)
    hidden, text, mask, out, text_out = hidden[:1], text[:1], mask[:1], out[:1], text_out[:1]
    out_other_text, _ = layer_with_text(layer, hidden, text * -1, mask, update_text=True)
    changed = (out - out_other_text).abs().amax(-1)[0]
    for rows in (slice(0, w), slice(w, 2 * w)):
        for cols in (slice(0, w), slice(w, 2 * w)):
            assert changed[rows, cols].min() > 1e-5  # every window read the text
    moved = hidden.clone()
    moved[:, w:, w:] = torch.randn(1, w, w, moved.shape[-1], generator=g)  # the bottom-right window only
    out_moved, text_moved = layer_with_text(layer, moved, text, mask, update_text=True)
    for rows, cols in ((slice(0, w), slice(None)), (slice(w, None), slice(0, w))):  # the other three windows
        torch.testing.assert_close(out_moved[:, rows, cols], out[:, rows, cols], rtol=0, atol=1e-6)  # float noise
    assert (text_moved - text_out).abs().max() > 1e-4  # the text tokens attend over every window


@torch.no_grad()
def test_the_dit_model_segments_saves_and_loads(tmp_path):
    from instructsam.errors import CheckpointError
    from instructsam.modeling import InstructSAMModel

    model = load_dit("layer_wise")
    images = random_images(2)
    features = model.encode_image(images)
    assert features.vlm_image_embeds is None  # SAM3's text encoder prompts: the VLM's tower is not run
    assert features.sam3_pixels is not None and features.sam3.last_hidden_state is not None  # tracker input
    out = model.segment(features, INSTRUCTIONS[:2] * 2, image_index=[0, 0, 1, 1])
    queries = model.config.sam3_config.detector_config.detr_decoder_config.num_queries
    assert out.mask_logits.shape[:2] == (4, queries) and out.scores.shape == (4, queries)
    assert not torch.allclose(out.mask_logits[0], out.mask_logits[1])  # the instruction changes the result
    preds = model.postprocess(out, features.original_sizes, score_threshold=0.0)
    assert [p.masks.shape[1:] for p in preds] == [images[0].shape[:2]] * 2 + [images[1].shape[:2]] * 2

    model.save_pretrained(tmp_path / "saved")
    again = InstructSAMModel.from_pretrained(str(tmp_path / "saved")).eval()
    assert again.config.inference_mode == "dit" and again.config.dit_variant == "layer_wise"
    out2 = again.segment(again.encode_image(images), INSTRUCTIONS[:2] * 2, image_index=[0, 0, 1, 1])
    assert torch.equal(out2.mask_logits, out.mask_logits)
    shutil.rmtree(tmp_path / "saved" / "sam3_tokenizer")
    with pytest.raises(CheckpointError, match="sam3_tokenizer"):
        InstructSAMModel.from_pretrained(str(tmp_path / "saved"))
    tracked = model.encode_image(images, vlm=False)
    with pytest.raises(ValueError, match="without the VLM part"):
        model.segment(tracked, INSTRUCTIONS[:1])


def test_to_dit_starts_from_dits_own_scoring_and_prompt_whatever_the_one_pass_options():
    """The shipped one-pass model scores from masks and prompts SAM3 with word embeddings; its DIT conversions
    score with SAM3's decoder and take the words' states in context (SAM3's text encoder's or the VLM's)."""
    from instructsam.config import InstructSAMConfig

    source = InstructSAMConfig.from_pretrained(SHIPPED)
    assert source.score_from_masks and source.prompt_source == "embeddings"  # what the conversion has to undo
    for config in (load_dit("layer_wise").config, load_dit("layer_wise", text_source="vlm").config):
        assert not config.score_from_masks and config.prompt_source == "hidden"


def test_a_dit_model_built_from_its_config_starts_at_the_identities():
    """Built without to_dit (e.g. a fresh tiny build in DIT mode): adapters and L-DIT's prompt projection start as
    the identity all the same."""
    from instructsam.modeling import InstructSAMModel

    for variant, frozen in (("layer_wise", False), ("end_to_end", True)):
        config = load_dit(variant, frozen=frozen).config
        model = InstructSAMModel(config)
        eye = torch.eye(config.sam3_hidden_size if variant == "layer_wise" else
                        config.sam3_config.detector_config.vision_config.backbone_config.hidden_size)
        identities = [model.dit.output_proj] if variant == "layer_wise" else list(model.dit.layer_adapters)
        assert all(torch.equal(lin.weight, eye) and not lin.bias.any() for lin in identities)


def test_frozen_encoder_and_what_each_variant_trains():
    e2e_frozen, l_dit, vlm = load_dit("end_to_end", frozen=True), load_dit("layer_wise"), \
        load_dit("layer_wise", text_source="vlm")
    vit = "sam3.detector_model.vision_encoder.backbone."

    def trainable(model, prefix):
        return {p.requires_grad for n, p in model.named_parameters() if n.startswith(prefix)}

    assert trainable(e2e_frozen, vit) == {False} and trainable(l_dit, vit) == {True}
    assert len(e2e_frozen.dit.layer_adapters) == 2 and getattr(l_dit.dit, "layer_adapters", None) is None
    for model in (e2e_frozen, l_dit):  # SAM3's text encoder prompts: the VLM and the query bank are not used
        assert trainable(model, "vlm.") == {False} and trainable(model, "query_bank") == {False}
        assert trainable(model, "dit.") == {True}
    assert trainable(vlm, "projector.prompt_mlp.") == {True} and trainable(vlm, "query_bank") == {False}
    # the same freezing survives a training config that unfreezes the whole detector
    e2e_frozen.config.unfreeze_modules = ["sam3.detector_model"]
    e2e_frozen.apply_freezing()
    assert trainable(e2e_frozen, vit) == {False}
    # and gradients reach E-DIT's projections through the frozen layers
    out = e2e_frozen.train()(images=random_images(1), instructions=INSTRUCTIONS[:2])
    (out.mask_logits.float().mean() + out.logits.float().mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in e2e_frozen.dit.parameters())
    assert all(p.grad is None for n, p in e2e_frozen.named_parameters() if n.startswith(vit))


def test_vlm_text_source_trains_the_vlm_path():
    """dit_text_source "vlm": the instruction's VLM states (image-conditioned) are the word features."""
    model = load_dit("layer_wise", text_source="vlm").train()
    images = random_images(1)
    out = model(images=images, instructions=INSTRUCTIONS[:2])
    (out.mask_logits.float().mean() + out.logits.float().mean()).backward()
    assert model.projector.prompt_mlp.fc1.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if "lora_" in n)
    assert model.query_bank.grad is None
    assert model.dit.layer_projs[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("variant,frozen", [("end_to_end", False), ("layer_wise", False), ("end_to_end", True)],
                         ids=["e_dit", "l_dit", "e_dit_frozen"])
def test_dit_training_resumes_exactly_and_evaluates(tmp_path, variant, frozen):
    from instructsam.modeling import DIT_ENCODER_PREFIX, InstructSAMModel
    from instructsam_tools.data.batching import build_dataset
    from instructsam_tools.evaluation.evaluate import evaluate_model
    from instructsam_tools.training.train import train
    from instructsam_tools.training.train_config import load_config

    torch.set_num_threads(1)
    init = dit_dir(variant, frozen=frozen, base="small")

    def config(out):
        return load_config(REPO / "config" / "train_test.yaml",
                           [f"model.checkpoint={init}", f"output_dir={out}", "train.max_steps=8",
                            "train.checkpoint_every=4", "optim.warmup_steps=2",
                            "model.freeze_modules=[sam3.detector_model.geometry_encoder]"])

    full = train(config(tmp_path / "full"))
    assert full["step"] == 8
    cfg = config(tmp_path / "split")
    assert train(cfg, stop_at_step=4)["step"] == 4
    assert train(cfg, resume=tmp_path / "split" / "checkpoints" / "step_0000004")["step"] == 8
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    start = load_file(str(init / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed DIT run differs from the uninterrupted one"
    moved = {k.split(".")[0] for k in a if not torch.equal(a[k], start[k])}
    assert "dit" in moved and "query_bank" not in moved and "vlm" not in moved
    vit_moved = [not torch.equal(a[k], start[k]) for k in a if k.startswith(DIT_ENCODER_PREFIX)]
    assert vit_moved and (not any(vit_moved) if frozen else any(vit_moved))

    model = InstructSAMModel.from_pretrained(str(tmp_path / "full" / "final"))
    summary, _ = evaluate_model(model, build_dataset("synthetic:test:16", image_size=64), num_overlays=0,
                                targets="single")
    assert 0 < summary["num_samples"] <= 16 and summary["P@0.5"] is not None and summary["oIoU"] is not None


# ------------------------------------------------------------------ RefCOCO-layout data into DIT's commands
def write_refcoco(root: Path) -> Path:
    """A RefCOCO directory in the lichengunc/refer layout, around the real COCO annotations of two images, with
    images drawn at the sizes those annotations state."""
    from PIL import Image

    from conftest import REALDATA

    coco_file = REALDATA / "refseg" / "coco_val2017_2img_mmdet_annotations_only" / "instances_val2017.json"
    coco = json.loads(coco_file.read_text())
    (root / "refcoco").mkdir(parents=True)
    shutil.copy(coco_file, root / "refcoco" / "instances.json")
    images = root / "images" / "mscoco" / "images" / "train2014"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for im in coco["images"]:
        Image.fromarray(rng.integers(0, 256, (im["height"], im["width"], 3), dtype=np.uint8)).save(
            images / im["file_name"])
    refs, ref_id = [], 0
    for ann in coco["annotations"][:4]:
        if ann.get("iscrowd"):
            continue
        name = next(c["name"] for c in coco["categories"] if c["id"] == ann["category_id"])
        file_name = next(im["file_name"] for im in coco["images"] if im["id"] == ann["image_id"])
        refs.append({"ref_id": ref_id, "ann_id": ann["id"], "image_id": ann["image_id"], "file_name": file_name,
                     "split": "train" if ref_id % 2 == 0 else "val", "category_id": ann["category_id"],
                     "sent_ids": [ref_id], "sentences": [{"sent_id": ref_id, "sent": f"the {name}",
                                                          "raw": f"The {name}", "tokens": ["the", name]}]})
        ref_id += 1
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root


def test_refcoco_layout_feeds_dit_training_and_evaluation(tmp_path):
    root = write_refcoco(tmp_path / "refer")
    init = dit_dir("layer_wise", base="small")
    run = subprocess.run(
        [sys.executable, "-m", "instructsam_tools.training.train", "--config", str(REPO / "config/train_test.yaml"),
         f"model.checkpoint={init}", f"output_dir={tmp_path / 'run'}", f"data.train=refer:{root}:refcoco:unc:train",
         "train.max_steps=3", "train.checkpoint_every=3", "optim.warmup_steps=1", "train.num_threads=1"],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["step"] == 3
    ev = subprocess.run(
        [sys.executable, "-m", "instructsam_tools.evaluation.evaluate", "--checkpoint", str(tmp_path / "run/final"),
         "--data", f"refer:{root}:refcoco:unc:val", "--out", str(tmp_path / "eval"), "--num-overlays", "0",
         "--threads", "1", "--targets", "single"], capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stdout[-2000:] + ev.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_samples"] == 2 and metrics["run"]["targets"] == "single"
    assert all(metrics[k] is not None for k in ("P@0.5", "P@0.7", "P@0.9", "oIoU", "mIoU"))
    bad = subprocess.run([sys.executable, "-m", "instructsam_tools.evaluation.evaluate", "--checkpoint",
                          str(tmp_path / "run/final"), "--data", f"refer:{root}:refcoco", "--out",
                          str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "refer:ROOT:DATASET:SPLIT_BY" in bad.stderr


# ------------------------------------------------------------------------------------------- the node
def test_the_node_serves_a_dit_model():
    """A DIT checkpoint behind `checkpoint:=`: keyframes run the instruction-fused encoder, the frames between them
    SAM3's tracker on the plain ViT features, as with the other modes."""
    from node_helpers import serve_one_instruction

    params = {"cameras": ["front"], "checkpoint": str(dit_dir("layer_wise")), "keyframe_interval": 2,
              "num_threads": 1, "score_threshold": 0.0, "diagnostics_period": 0.5}
    results, node = serve_one_instruction(params, "the red circle")
    assert [r.keyframe for r in results] == [True, False, True]
    assert len(results[0].instances) > 0  # score threshold 0: every kept slot of SAM3's queries
    assert all(len(r.instances) for r in results[1:])  # tracked objects carried between keyframes
    assert node["model_version"] == "unversioned"


@torch.no_grad()
def test_sam3_default_prompting_encodes_each_image_once():
    """dit_variant "none" (the baseline): the image features do not depend on the instruction, so they are computed
    once by encode_image (as SAM3 caches them) and every instruction is decoded against them."""
    model = load_dit("none")
    features = model.encode_image(random_images(1))
    assert features.sam3_pixels is None and features.sam3.fpn_hidden_states is not None
    out = model.segment(features, INSTRUCTIONS[:2])
    assert not torch.allclose(out.mask_logits[0], out.mask_logits[1])  # the prompt still decides the result
