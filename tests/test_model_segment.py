"""Batched segmentation with feature/prefix reuse, the training path, persistence and the post-process."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import INSTRUCTIONS, load_tiny, random_images

from instructsam.modeling import InstructSAMModel
from instructsam.outputs import InstanceSetOutput
from instructsam.postprocess import postprocess_instance_sets
from instructsam.templates import TEMPLATES

FIELDS = ("mask_logits", "boxes", "scores", "presence_logits", "query_states")


def assert_rows_close(batched: InstanceSetOutput, row: int, single: InstanceSetOutput, atol: float = 1e-4):
    for name in FIELDS:
        torch.testing.assert_close(getattr(batched, name)[row], getattr(single, name)[0], atol=atol, rtol=0,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.fixture(scope="module")
def model():
    return load_tiny()


def test_output_shapes_and_scores_include_presence(model):
    features = model.encode_image(random_images(1)[0])
    with torch.no_grad():
        out = model.segment(features, INSTRUCTIONS)
    k, mask_side = model.config.num_queries, model.config.image_size * 2 // 7  # SAM3 masks at 1/3.5
    assert out.mask_logits.shape == (3, k, mask_side, mask_side)
    assert out.boxes.shape == (3, k, 4) and out.scores.shape == (3, k) and out.presence.shape == (3,)
    assert (out.boxes[..., 2:] >= out.boxes[..., :2]).all()  # xyxy (like SAM3's, not clamped to the image)
    torch.testing.assert_close(out.scores, out.logits.sigmoid() * out.presence[:, None])
    assert out.aux_boxes.shape[1:] == (3, k, 4) and out.image_index.tolist() == [0, 0, 0]


def test_instructions_on_cached_features_equal_independent_passes(model):
    image = random_images(1)[0]
    with torch.no_grad():
        features = model.encode_image(image)
        batched = model.segment(features, INSTRUCTIONS)
        assert features.prefix_cache is not None  # the image prefix ran once and is kept for the next call
        for i, text in enumerate(INSTRUCTIONS):
            assert_rows_close(batched, i, model.segment(model.encode_image(image), [text]))
        again = model.segment(features, INSTRUCTIONS[::-1])  # reuses the cached prefix
        assert_rows_close(again, 2, model.segment(model.encode_image(image), [INSTRUCTIONS[0]]))


def test_padded_batch_of_pairs_equals_single_runs(model):
    images = random_images(3)  # three different sizes, three instructions of different lengths
    with torch.no_grad():
        batched = model(images, INSTRUCTIONS)
        for i in range(3):
            assert_rows_close(batched, i, model(images[i], [INSTRUCTIONS[i]]))


def test_forward_agrees_with_encode_and_segment(model):
    images = random_images(2)
    with torch.no_grad():
        full = model(images, INSTRUCTIONS[:2])  # full sequences, no cache
        cached = model.segment(model.encode_image(images), INSTRUCTIONS[:2])  # prefix KV reuse
        mixed = model.segment(model.encode_image(images), INSTRUCTIONS, image_index=[1, 0, 1])
        single = model(images[1], [INSTRUCTIONS[2]])
    for row in range(2):
        assert_rows_close(full, row, InstanceSetOutput(**{n: getattr(cached, n)[row:row + 1] for n in FIELDS}))
    assert_rows_close(mixed, 2, single)


def test_image_inputs_numpy_list_and_uint8_tensor_agree(model):
    images = random_images(2, sizes=((100, 140),))
    with torch.no_grad():
        from_list = model.encode_image(images)
        from_tensor = model.encode_image(torch.from_numpy(np.stack(images)))
        from_single = model.encode_image(images[1])
    assert from_list.original_sizes == from_tensor.original_sizes == [(100, 140), (100, 140)]
    assert from_single.original_sizes == [(100, 140)]
    torch.testing.assert_close(from_list.vlm_image_embeds, from_tensor.vlm_image_embeds)
    torch.testing.assert_close(from_list.sam3.fpn_hidden_states[0][1], from_single.sam3.fpn_hidden_states[0][0])


def test_templates_are_chosen_by_task(model):
    ids = {task: model.prompts.encode(["the mug"], task).suffix_ids for task in TEMPLATES}
    assert len({tuple(v[0].tolist()) for v in ids.values()}) == len(TEMPLATES)
    features = model.encode_image(random_images(1)[0])
    with torch.no_grad():
        video = model.segment(features, ["the mug"], task="video")
        referring = model.segment(features, ["the mug"])  # config.template_task
        model.config.template_task = "video"
        default_video = model.segment(features, ["the mug"])
        model.config.template_task = "referring"
    assert not torch.allclose(video.query_states, referring.query_states)
    torch.testing.assert_close(video.query_states, default_video.query_states)
    with pytest.raises(ValueError, match="unknown template task"):
        model.segment(features, ["the mug"], task="captioning")
    with torch.no_grad():  # one template per instruction in a single batched call
        mixed = model.segment(features, ["the mug", "the mug"], task=["video", "referring"])
    assert_rows_close(mixed, 0, video)
    assert_rows_close(mixed, 1, referring)


def test_save_and_load_round_trip_gives_identical_outputs(tmp_path):
    model = load_tiny()
    with torch.no_grad():  # move every trainable part away from its initialisation (LoRA B included)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = InstructSAMModel.from_pretrained(tmp_path / "ckpt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    images = random_images(2)
    with torch.no_grad():
        a = model(images, INSTRUCTIONS[:2])
        b = loaded(images, INSTRUCTIONS[:2])
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in loaded.parameters()]


def test_postprocess_on_model_output_gives_original_resolution(model):
    images = random_images(2, sizes=((90, 120), (64, 200)))
    with torch.no_grad():
        features = model.encode_image(images)
        out = model.segment(features, INSTRUCTIONS, image_index=[0, 1, 1])
    preds = model.postprocess(out, features.original_sizes, score_threshold=0.0, nms_iou=1.0, max_instances=4)
    assert [p.masks.shape[1:] for p in preds] == [(90, 120), (64, 200), (64, 200)]
    for p in preds:
        assert p.masks.dtype == bool and p.scores.dtype == np.float32 and p.boxes.dtype == np.float32
        assert len(p) <= 4 and (np.diff(p.scores) <= 0).all()
    assert all(len(p) == 0 for p in model.postprocess(out, features.original_sizes, score_threshold=1.0))


def _handmade_output() -> InstanceSetOutput:
    """Four slots on a 10x10 mask grid: two overlapping near-duplicates, one separate, one low-scoring."""
    logits = torch.full((1, 4, 10, 10), -10.0)
    logits[0, 0, 0:5, 0:5] = 10.0
    logits[0, 1, 0:5, 0:6] = 10.0   # near-duplicate of slot 0
    logits[0, 2, 6:9, 6:9] = -0.5   # probability 0.38: above DIT's 0.35, below 0.5
    logits[0, 3, 2:4, 7:9] = 10.0
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.6, 0.5], [0.6, 0.6, 0.9, 0.9], [0.7, 0.2, 0.9, 0.4]]])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    return InstanceSetOutput(mask_logits=logits, boxes=boxes, scores=scores, image_index=torch.tensor([0]))


def test_postprocess_thresholds_nms_and_max_instances():
    out = _handmade_output()
    (pred,) = postprocess_instance_sets(out, [(20, 40)], score_threshold=0.5, mask_threshold=0.35, nms_iou=0.5,
                                        max_instances=10)
    np.testing.assert_allclose(pred.scores, [0.9, 0.7])  # slot 1 suppressed by NMS, slot 3 below threshold
    assert pred.masks.shape == (2, 20, 40)
    np.testing.assert_allclose(pred.boxes[0], [0, 0, 20, 10])  # normalised xyxy -> pixels of the 20x40 image
    assert pred.masks[1].sum() > 0  # probability 0.38 survives the 0.35 mask threshold ...
    (strict,) = postprocess_instance_sets(out, [(20, 40)], 0.5, mask_threshold=0.5, nms_iou=0.5, max_instances=10)
    np.testing.assert_allclose(strict.scores, [0.9])  # ... but not 0.5: its mask is empty, so it is dropped
    (no_nms,) = postprocess_instance_sets(out, [(20, 40)], 0.0, 0.35, nms_iou=1.0, max_instances=3)
    np.testing.assert_allclose(no_nms.scores, [0.9, 0.8, 0.7])
    (none,) = postprocess_instance_sets(out, [(20, 40)], 0.95, 0.35, 0.5, 10)
    assert none.masks.shape == (0, 20, 40) and none.boxes.shape == (0, 4)


def test_load_in_bfloat16_converts_every_component():
    from model_fixtures import tiny_dir

    model = InstructSAMModel.from_pretrained(tiny_dir(), dtype=torch.bfloat16).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # SAM3's ViT and Qwen's towers included
    with torch.no_grad():
        features = model.encode_image(random_images(1)[0])
        out = model.segment(features, INSTRUCTIONS[:2])
    assert out.mask_logits.dtype == torch.bfloat16 and torch.isfinite(out.scores.float()).all()
    assert len(model.postprocess(out, features.original_sizes, score_threshold=0.0)) == 2


def test_postprocess_can_crop_masks_to_their_boxes():
    """A slot mask that bleeds past its box (into a neighbour) is cut to the box grown by one pixel."""
    logits = torch.full((1, 1, 10, 10), -10.0)
    logits[0, 0, 0:10, 0:10] = 10.0  # the whole image
    boxes = torch.tensor([[[0.2, 0.3, 0.5, 0.6]]])  # x 4..10, y 6..12 of a 20x20 image
    out = InstanceSetOutput(mask_logits=logits, boxes=boxes, scores=torch.tensor([[0.9]]),
                            image_index=torch.tensor([0]))
    (full,) = postprocess_instance_sets(out, [(20, 20)], 0.5, 0.35, 0.5, 10)
    (cropped,) = postprocess_instance_sets(out, [(20, 20)], 0.5, 0.35, 0.5, 10, crop_masks_to_boxes=True)
    assert full.masks[0].all()
    expected = np.zeros((20, 20), dtype=bool)
    expected[5:13, 3:11] = True  # pixel centres within [3, 11] x [5, 13]
    np.testing.assert_array_equal(cropped.masks[0], expected)


def test_prompt_source_gives_sam3_the_words_in_context_alone_or_both(model):
    images = random_images(2)
    texts = ["all the red objects", "the blue star left of the green ring"]
    tokens = model.prompts.encode(texts, model.config.template_task)
    index = torch.tensor([0, 1])
    states = {}
    try:
        for source in ("hidden", "embeddings", "both"):
            model.config.prompt_source = source
            with torch.no_grad():
                features = model.encode_image(images)
                states[source] = model._query_and_prompt_states(features, tokens, index, reuse_prefix=True)
                swapped = model._query_and_prompt_states(features, tokens, index.flip(0), reuse_prefix=True)
                batched, single = model.segment(features, texts), model.segment(model.encode_image(images[1]), texts[1:])
            assert_rows_close(batched, 1, single)
            mask = states[source][2]
            if source == "embeddings":  # the words alone: the same whatever the image, RMS 1 per token
                torch.testing.assert_close(states[source][1][mask], swapped[1][mask])
                rms = states[source][1][mask].pow(2).mean(-1).sqrt()
                torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0)
            else:  # in context, the same words read differently on another image
                assert not torch.allclose(states[source][1][mask], swapped[1][mask], atol=1e-3)
    finally:
        model.config.prompt_source = "hidden"
    queries, hidden, mask = states["hidden"]
    torch.testing.assert_close(states["embeddings"][0], queries)  # the query states never change
    both_states, both_mask = states["both"][1], states["both"][2]
    lp = mask.shape[1]
    assert both_states.shape[1] == 2 * lp and both_mask.tolist() == torch.cat([mask, mask], 1).tolist()
    torch.testing.assert_close(both_states[:, :lp], hidden)
    torch.testing.assert_close(both_states[:, lp:], states["embeddings"][1])
    with pytest.raises(ValueError, match="prompt_source"):
        type(model.config)(**{**model.config.to_dict(), "prompt_source": "words"})
    with pytest.raises(ValueError, match="prompt_source 'embeddings' chooses the VLM's prompt"):
        type(model.config)(**{**model.config.to_dict(), "prompt_source": "embeddings", "inference_mode": "dit",
                              "dit_text_source": "sam3"})
    with pytest.raises(ValueError, match="score_from_masks is a one_pass option"):
        type(model.config)(**{**model.config.to_dict(), "score_from_masks": True, "inference_mode": "dit"})


def test_mask_pooled_tokens_average_the_tokens_under_each_mask():
    from instructsam.sam3_queries import mask_pooled_tokens

    tokens = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)  # a 2x2 token grid per image
    logits = torch.full((2, 3, 8, 8), -10.0)  # what an empty slot's mask looks like
    logits[0, 0, :4, :4] = 30.0  # image 0, slot 0: the top-left token's cell only
    logits[1, 1, :, 4:] = 30.0  # image 1, slot 1: the right column (tokens 1 and 3)
    logits[0, 2, :2, :2] = 30.0  # a quarter of one cell: a quarter of that token
    pooled = mask_pooled_tokens(tokens, (2, 2), logits.requires_grad_())
    torch.testing.assert_close(pooled[0, 0], tokens[0, 0], atol=5e-3, rtol=0)
    torch.testing.assert_close(pooled[1, 1], (tokens[1, 1] + tokens[1, 3]) / 2, atol=5e-3, rtol=0)
    torch.testing.assert_close(pooled[0, 2], tokens[0, 0] / 4, atol=5e-3, rtol=0)
    torch.testing.assert_close(pooled[0, 1], torch.zeros(3), atol=5e-3, rtol=0)  # an empty mask adds nothing
    assert not pooled.requires_grad  # the score never bends the masks


def test_score_from_masks_changes_only_the_last_layers_scores(model):
    image = random_images(1)[0]
    outputs = {}
    try:
        for pool in (False, True):
            model.config.score_from_masks = pool
            with torch.no_grad():
                outputs[pool] = model.segment(model.encode_image(image), INSTRUCTIONS)
    finally:
        model.config.score_from_masks = False
    plain, pooled = outputs[False], outputs[True]
    for name in ("mask_logits", "boxes", "presence_logits"):
        torch.testing.assert_close(getattr(pooled, name), getattr(plain, name))
    torch.testing.assert_close(pooled.aux_logits[:-1], plain.aux_logits[:-1])
    torch.testing.assert_close(pooled.aux_logits[-1], pooled.logits)
    assert not torch.allclose(pooled.logits, plain.logits, atol=1e-3)
