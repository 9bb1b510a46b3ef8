"""The pretrained-stages recipe. Stage 1, SAM3's own task (promptable concept segmentation) on the synthetic scenes:
the concept-phrase data (synthetic_phrases:) names every matching object and nothing else; the stage's training
command (config/train_pcs_tiny.yaml on a DIT directory of variant none) runs, its loss falls, it resumes exactly and
trains SAM3's text path and detector, not the VLM; the finer tiny geometry (config/model_tiny_224.yaml) builds.
Stage 2, the VLM on scene language: every question's answer follows from the visible scene; the stage's command
(config/train_vlm_tiny.yaml) trains the VLM alone, its loss falls and it resumes exactly. Stage 3, InstructSAM on
top: stack_stages joins the two, and config/train_instructsam_tiny.yaml trains the heads, queries, projector and
LoRA with SAM3's ViT and the VLM's own weights frozen, and resumes exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_helpers import REPO, build_test_model

from instructsam_tools.data.batching import build_dataset
from instructsam_tools.data.synthetic_language import GENERIC_WORDS, SHAPE_WORDS, SIZE_WORDS, TEXTURE_WORDS, Descriptor
from instructsam_tools.data.synthetic_scene import COLOR_NAMES, HELDOUT_PAIRS, SHAPES


def parse_phrase(text: str, plural: bool = False) -> Descriptor:
    """A concept phrase back into the attributes it names: adjectives, then a shape noun (possibly two words, "plus
    sign") or a generic one ("object")."""
    form = 1 if plural else 0
    nouns = {forms[form]: shape for shape, words in SHAPE_WORDS.items() for forms in words}
    nouns.update({forms[form]: None for forms in GENERIC_WORDS})
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


def parse_command(text: str) -> tuple[str, Descriptor] | None:
    """An instruction of the plural command templates back into (template, the attributes it names), or None."""
    from instructsam_tools.data.synthetic_language import PLURAL_CMDS

    for template in sorted(PLURAL_CMDS, key=len, reverse=True):
        slot = "{P}" if "{P}" in template else "{S}"
        head, tail = template.split(slot)
        if text.startswith(head) and text.endswith(tail) and len(text) > len(head) + len(tail):
            try:
                return template, parse_phrase(text[len(head):len(text) - len(tail)], plural=slot == "{P}")
            except (StopIteration, KeyError, AssertionError):
                return None
    return None


def test_minimal_pair_scenes_change_one_value_and_name_every_matching_object():
    """synthetic_contrast: about half the scenes are asked one command about one attribute, only its value
    changing (present values first, then absent ones); each names every visible object with that value."""
    from instructsam_tools.data.synthetic import SyntheticInst2Seg

    data = build_dataset("synthetic_contrast:train:800", image_size=96)
    contrast_scenes, attributes = 0, set()
    for scene_index in range(data.num_images):
        _, scene, instructions = data.scene(scene_index)
        assert len({ins.text for ins in instructions}) == len(instructions), [i.text for i in instructions]
        parsed = [parse_command(ins.text) for ins in instructions]
        named = [[k for k, v in p[1].items() if v is not None] if p else [] for p in parsed]
        if not (len(named[0]) == len(named[1]) == 1 and named[0] == named[1] and parsed[0][0] == parsed[1][0]):
            continue
        contrast_scenes += 1
        attribute = named[0][0]
        attributes.add(attribute)
        pairs = [(ins, p[1]) for ins, p in zip(instructions, parsed) if p and p[0] == parsed[0][0]
                 and [k for k, v in p[1].items() if v is not None] == [attribute]]
        values = [getattr(d, attribute) for _, d in pairs]
        assert len(set(values)) == len(values) >= min(2, len(instructions)), [i.text for i in instructions]
        hits = []
        for ins, d in pairs:
            matching = sorted(o.obj_id for o in scene.visible_objects() if d.matches(o))
            assert ins.target_ids == matching, (ins.text, ins.target_ids, matching)
            hits.append(bool(matching))
        assert hits == sorted(hits, reverse=True), "absent values come after the present ones"
    assert 0.35 < contrast_scenes / data.num_images < 0.65, contrast_scenes
    assert {"color", "shape"} <= attributes
    plain = SyntheticInst2Seg("train", 800, image_size=96)
    assert all(np.array_equal(plain[i].image, data[i].image) for i in range(0, 800, 97))  # the same scenes


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


# ---------------------------------------------------------------------------------------------------------------
# stage 2: the VLM on scene language

def _question_subject(kind: str, question: str) -> str | None:
    """The noun phrase a question names, read back through its kind's templates (None for describe/extreme)."""
    import re

    from instructsam_tools.data.scene_questions import _TEMPLATES

    for template in _TEMPLATES.get(kind, ()):
        pattern = re.escape(template).replace(r"\{S\}", "(?P<np>.+)").replace(r"\{P\}", "(?P<np>.+)")
        m = re.fullmatch(pattern, question)
        if m:
            return m.groupdict().get("np")
    return None


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_every_scene_question_is_answered_by_the_visible_scene(split):
    from instructsam_tools.data.scene_questions import NUMBER_WORDS, QUESTION_KINDS
    from instructsam_tools.data.synthetic import SyntheticInst2Seg

    questions = build_dataset(f"synthetic_qa:{split}:600", image_size=96)
    instructions = SyntheticInst2Seg(split, 400, image_size=96)
    kinds = set()
    for i in range(len(questions)):
        sample = questions[i]
        _, scene, _ = questions.scene(i // questions.instructions_per_image)
        objs = scene.visible_objects()
        if i % questions.instructions_per_image == 0:
            assert np.array_equal(sample.image, instructions[(i // 6) * 4].image)  # the instruction data's scenes
        kinds.add(sample.kind)
        subject = _question_subject(sample.kind, sample.question)
        named = []
        if sample.kind in ("colour", "shape", "texture"):
            d = parse_phrase(subject)
            named.append(d)
            (o,) = [o for o in objs if d.matches(o)]  # the question names exactly one object
            assert sample.answer == {"colour": o.color, "shape": o.shape, "texture": o.texture}[sample.kind]
        elif sample.kind == "count":
            d = parse_phrase(subject, plural=True)
            named.append(d)
            assert sample.answer == NUMBER_WORDS[sum(d.matches(o) for o in objs)], sample
        elif sample.kind == "exists":
            d = parse_phrase(subject)
            named.append(d)
            assert sample.answer == ("yes" if any(d.matches(o) for o in objs) else "no"), sample
        elif sample.kind == "extreme":
            d = parse_phrase(sample.answer.removeprefix("the "))
            named.append(d)
            (o,) = [o for o in objs if d.matches(o)]
            axis, sign = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "nearest the top": (1, -1),
                          "bottom": (1, 1), "lowest": (1, 1)}[next(w for w in ("left", "right", "nearest the top",
                                                                               "top", "bottom", "lowest")
                                                                      if w in sample.question)]
            assert sign * o.centroid[axis] == max(sign * x.centroid[axis] for x in objs), sample
        elif sample.kind in ("colours", "shapes"):
            key, values = ("color", COLOR_NAMES) if sample.kind == "colours" else ("shape", SHAPES)
            listed = sample.answer.replace(" and ", ", ").split(", ") if objs else []
            assert listed == [v for v in values if any(getattr(o, key) == v for o in objs)], sample
        else:
            assert sample.kind == "describe"
            ordered = sorted(objs, key=lambda o: o.centroid[0])
            listed = sample.answer.replace(" and ", ", ").split(", ") if objs else []
            assert listed == [f"{'an' if o.color == 'orange' else 'a'} {o.color} {o.shape}" for o in ordered], sample
        if split == "train":
            assert not any(d.pairs() & HELDOUT_PAIRS for d in named), f"a held-out pair named: {sample}"
    assert kinds == set(QUESTION_KINDS)


def test_answer_accuracy_counts_an_answer_only_when_every_token_is_the_argmax():
    from instructsam_tools.training.language_objective import IGNORE, LanguageCriterion, answered

    logits = torch.zeros(2, 4, 5)
    labels = torch.tensor([[IGNORE, 1, 2, IGNORE], [IGNORE, 3, 4, 0]])
    logits[0, 1, 1] = logits[0, 2, 2] = 1.0  # row 0: both answer tokens right (position 3 is not scored)
    logits[1, 1, 3] = logits[1, 2, 4] = 1.0  # row 1: the last one wrong (argmax 0 ties; index 0 wins)
    logits[1, 3, 2] = 1.0
    assert answered(logits, labels).tolist() == [True, False]
    out = LanguageCriterion()((logits, labels))
    assert out["answer_acc"] == 0.5 and abs(float(out["token_acc"]) - 4 / 5) < 1e-6


def stage2_config(out, spec):
    from instructsam_tools.training.train_config import load_config

    return load_config(REPO / "config" / "train_vlm_tiny.yaml", [
        f"model.tiny_config={spec}", f"output_dir={out}", "data.train=synthetic_qa:train:48", "data.val=null",
        "data.image_size=64", "data.images_per_batch=2", "train.max_steps=30", "train.log_every=1",
        "train.checkpoint_every=15", "train.keep_checkpoints=0", "train.progress=false", "train.eval_every=0",
        "optim.warmup_steps=3", "train.num_threads=1"])


def _small_spec_file(tmp_path):
    import yaml
    from training_helpers import small_model_spec

    spec_file = tmp_path / "small_spec.yaml"
    spec_file.write_text(yaml.safe_dump(small_model_spec()))
    return spec_file


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line]


def test_stage2_trains_the_vlm_on_scene_language_its_loss_falls_and_it_resumes_exactly(tmp_path):
    from instructsam_tools.training.train import train

    torch.set_num_threads(1)
    spec = _small_spec_file(tmp_path)
    full = train(stage2_config(tmp_path / "full", spec))
    assert full["step"] == 30
    losses = _losses(tmp_path / "full")
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses

    cfg = stage2_config(tmp_path / "split", spec)
    assert train(cfg, stop_at_step=15)["step"] == 15
    assert train(cfg, resume=tmp_path / "split" / "checkpoints" / "step_0000015")["step"] == 30
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed stage-2 run differs from the uninterrupted one"
    start = load_file(str(tmp_path / "full" / "init" / "model.safetensors"))
    moved = {k for k in a if not torch.equal(a[k], start[k])}
    assert any(k.startswith("vlm.model.visual.") for k in moved), "the VLM's vision tower did not train"
    assert any(k.startswith("vlm.model.language_model.") and "lora_" not in k for k in moved)
    assert not any(k.startswith(("sam3.", "query_bank", "projector.")) for k in moved), \
        sorted(k for k in moved if not k.startswith("vlm."))[:5]


def test_the_scene_qa_command_reports_accuracy_per_kind_beside_the_majority_answer(tmp_path, capsys):
    from instructsam_tools.evaluation.scene_qa import main

    result = main(["--checkpoint", str(build_test_model(tmp_path / "small")), "--data", "synthetic_qa:val:24",
                   "--image-size", "64", "--out", str(tmp_path / "qa.json")])
    printed = capsys.readouterr().out
    assert result["questions"] == 24 and json.loads((tmp_path / "qa.json").read_text())["questions"] == 24
    assert result["answer_acc"] == 0.0  # a random VLM writes none of the answers
    for kind, prior in result["majority_baseline"].items():
        assert 0 < prior <= 1 and kind in printed


# ---------------------------------------------------------------------------------------------------------------
# stage 3: InstructSAM on top of the two

def test_stack_stages_takes_the_vlm_from_one_directory_and_sam3_from_the_other(tmp_path):
    import yaml
    from training_helpers import small_model_spec

    from instructsam.errors import CheckpointError
    from instructsam_tools.stack_stages import stack_stages
    from instructsam_tools.tiny import build_tiny
    from instructsam_tools.to_dit import to_dit

    vlm_dir = build_test_model(tmp_path / "a")
    spec = small_model_spec()
    spec["seed"] = 1  # other random weights, the same shapes
    (tmp_path / "b_spec.yaml").write_text(yaml.safe_dump(spec))
    sam3_dir = to_dit(build_tiny(tmp_path / "b", tmp_path / "b_spec.yaml"), tmp_path / "b_none", "none")
    out = stack_stages(vlm_dir, sam3_dir, tmp_path / "stacked")
    got, a, b = (load_file(str(d / "model.safetensors")) for d in (out, vlm_dir, sam3_dir))
    assert set(got) == set(a)
    assert all(torch.equal(got[k], b[k]) for k in got if k.startswith("sam3."))
    assert all(torch.equal(got[k], a[k]) for k in got if not k.startswith("sam3."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("sam3."))  # the two did differ
    assert json.loads((out / "config.json").read_text())["inference_mode"] == "one_pass"

    spec["sam3"]["detector_config"]["text_config"]["hidden_size"] = 64  # another SAM3
    (tmp_path / "c_spec.yaml").write_text(yaml.safe_dump(spec))
    other = build_tiny(tmp_path / "c", tmp_path / "c_spec.yaml")
    with pytest.raises(CheckpointError, match="does not fit.*other shape"):
        stack_stages(vlm_dir, other, tmp_path / "bad")


def stage3_config(init, out):
    from instructsam_tools.training.train_config import load_config

    return load_config(REPO / "config" / "train_instructsam_tiny.yaml", [
        f"model.checkpoint={init}", f"output_dir={out}", "data.train=synthetic:train:32", "data.val=null",
        "data.image_size=64", "data.images_per_batch=1", "train.max_steps=30", "train.log_every=1",
        "train.checkpoint_every=15", "train.keep_checkpoints=0", "train.progress=false", "train.eval_every=0",
        "optim.warmup_steps=3", "train.num_threads=1"])


def test_stage3_trains_instructsam_with_sam3s_vit_and_the_vlm_frozen_and_resumes_exactly(tmp_path):
    from instructsam_tools.stack_stages import stack_stages
    from instructsam_tools.to_dit import to_dit
    from instructsam_tools.training.train import train

    torch.set_num_threads(1)
    small = build_test_model(tmp_path / "small")
    init = stack_stages(small, to_dit(small, tmp_path / "none", "none"), tmp_path / "init")
    full = train(stage3_config(init, tmp_path / "full"))
    assert full["step"] == 30
    losses = _losses(tmp_path / "full")
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses

    cfg = stage3_config(init, tmp_path / "split")
    assert train(cfg, stop_at_step=15)["step"] == 15
    assert train(cfg, resume=tmp_path / "split" / "checkpoints" / "step_0000015")["step"] == 30
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed stage-3 run differs from the uninterrupted one"
    start = load_file(str(init / "model.safetensors"))
    moved = {k for k in a if not torch.equal(a[k], start[k])}
    assert not any(".vision_encoder.backbone." in k for k in moved), "SAM3's ViT must stay frozen"
    assert not any(k.startswith("vlm.") and "lora_" not in k for k in moved), "only LoRA trains in the VLM"
    assert any("lora_" in k for k in moved) and "query_bank" in moved
    assert any(k.startswith("projector.") for k in moved)
    assert any(".detr_decoder." in k for k in moved) and any(".mask_decoder." in k for k in moved)


def test_the_language_objective_refuses_data_without_questions():
    from instructsam_tools.training.train_config import load_config

    with pytest.raises(ValueError, match="'language' needs synthetic_qa: data specs"):
        load_config(REPO / "config" / "train_vlm_tiny.yaml", ["data.val=synthetic:val:10"])
    with pytest.raises(ValueError, match="'instances' needs image data specs"):
        load_config(REPO / "config" / "train_tiny.yaml", ["data.train=synthetic_qa:train:12"])
