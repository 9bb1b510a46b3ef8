"""The pretrained-stages recipe, stage 1: SAM3's own task (promptable concept segmentation) on the synthetic scenes.
The concept-phrase data (synthetic_phrases:) names every matching object and nothing else; the stage's training
command (config/train_pcs_tiny.yaml on a DIT directory of variant none) runs, its loss falls, it resumes exactly and
trains SAM3's text path and detector, not the VLM; the finer tiny geometry (config/model_tiny_224.yaml) builds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_helpers import REPO, build_test_model

from instructsam_tools.data.batching import build_dataset
from instructsam_tools.data.synthetic_language import GENERIC_WORDS, SHAPE_WORDS, SIZE_WORDS, TEXTURE_WORDS, Descriptor
from instructsam_tools.data.synthetic_scene import COLOR_NAMES, HELDOUT_PAIRS


def parse_phrase(text: str) -> Descriptor:
    """A concept phrase back into the attributes it names: adjectives, then a shape noun (possibly two words, "plus
    sign") or a generic one ("object")."""
    nouns = {sing: shape for shape, forms in SHAPE_WORDS.items() for sing, _ in forms}
    nouns.update({sing: None for sing, _ in GENERIC_WORDS})
    noun = next(n for n in sorted(nouns, key=len, reverse=True) if text == n or text.endswith(" " + n))
    adjectives = {w: ("size", s) for s, ws in SIZE_WORDS.items() for w in ws}
    adjectives.update({w: ("texture", t) for t, ws in TEXTURE_WORDS.items() for w in ws})
    adjectives.update({c: ("color", c) for c in COLOR_NAMES})
    words = text[: len(text) - len(noun)].split()
    values = dict(adjectives[w] for w in words)
    assert len(values) == len(words), f"an attribute named twice in {text!r}"
    return Descriptor(shape=nouns[noun], **values)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_concept_phrases_name_every_matching_object_and_nothing_else(split):
    from instructsam_tools.data.synthetic import SyntheticInst2Seg

    phrases = build_dataset(f"synthetic_phrases:{split}:240", image_size=96)
    instructions = SyntheticInst2Seg(split, 240, image_size=96)
    families = set()
    for i in range(len(phrases)):
        sample = phrases[i]
        _, scene, _ = phrases.scene(i // phrases.instructions_per_image)
        assert np.array_equal(sample.image, instructions[i].image)  # the same scenes as the instruction data
        d = parse_phrase(sample.text)
        matching = sorted(o.obj_id for o in scene.visible_objects() if d.matches(o))
        assert sample.target_ids == matching, (sample.text, sample.target_ids, matching)
        assert (sample.family == "phrase_absent") == (not matching)
        if split == "train":
            assert not (d.pairs() & HELDOUT_PAIRS), f"a training phrase names a held-out pair: {sample.text!r}"
        families.add(sample.family)
    assert families == {"phrase", "phrase_absent"}


def test_unknown_prompt_kind_is_refused():
    from instructsam_tools.data.synthetic import SyntheticInst2Seg

    with pytest.raises(ValueError, match="prompts must be one of"):
        SyntheticInst2Seg("train", 4, prompts="captions")


def stage1_config(init, out):
    from instructsam_tools.training.train_config import load_config

    return load_config(REPO / "config" / "train_pcs_tiny.yaml", [
        f"model.checkpoint={init}", f"output_dir={out}", "data.train=synthetic_phrases:train:32", "data.val=null",
        "data.image_size=64", "data.images_per_batch=1", "train.max_steps=30", "train.log_every=1",
        "train.checkpoint_every=15", "train.keep_checkpoints=0", "train.progress=false", "train.eval_every=0",
        "optim.warmup_steps=3", "matcher.mask_cost_size=32", "train.num_threads=1"])


def test_stage1_trains_sam3_on_phrases_its_loss_falls_and_it_resumes_exactly(tmp_path):
    from instructsam_tools.to_dit import to_dit
    from instructsam_tools.training.train import train

    torch.set_num_threads(1)
    init = to_dit(build_test_model(tmp_path / "small"), tmp_path / "init", "none")
    full = train(stage1_config(init, tmp_path / "full"))
    assert full["step"] == 30
    losses = [json.loads(line)["loss"] for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses

    cfg = stage1_config(init, tmp_path / "split")
    assert train(cfg, stop_at_step=15)["step"] == 15
    assert train(cfg, resume=tmp_path / "split" / "checkpoints" / "step_0000015")["step"] == 30
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed stage-1 run differs from the uninterrupted one"
    start = load_file(str(init / "model.safetensors"))
    moved = {k for k in a if not torch.equal(a[k], start[k])}
    assert any(".text_encoder." in k for k in moved), "SAM3's text encoder did not train"
    assert any(".mask_decoder." in k for k in moved) and any(".vision_encoder." in k for k in moved)
    assert not any(k.startswith("vlm.") for k in moved), "the VLM takes no part in stage 1"
    assert not any(".geometry_encoder." in k for k in moved)


def test_the_finer_tiny_geometry_sees_16x16_tokens_and_predicts_64x64_masks(tmp_path):
    from instructsam.modeling import InstructSAMModel
    from instructsam_tools.tiny import build_tiny, load_spec

    spec = load_spec("config/model_tiny_224.yaml")
    assert spec["sam3"]["detector_config"]["text_config"]["num_hidden_layers"] == 2  # from model_tiny_112.yaml
    assert spec["sam3"]["detector_config"]["detr_decoder_config"]["num_queries"] == 16  # from model_tiny.yaml
    model = InstructSAMModel.from_pretrained(str(build_tiny(tmp_path / "t224", "config/model_tiny_224.yaml"))).eval()
    with torch.no_grad():
        features = model.encode_image([np.zeros((224, 224, 3), dtype=np.uint8)], tracker=False)
        out = model.segment(features, ["all the red circles"])
    assert model.config.image_size == 224 and model.config.vlm_image_size == 224
    assert features.sam3.last_hidden_state.shape[1] == 16 * 16  # SAM3's ViT tokens (flattened grid)
    assert features.vlm_image_embeds.shape[1] == 14 * 14  # the VLM's image tokens after 2x2 merging
    assert out.mask_logits.shape[-2:] == (64, 64)
