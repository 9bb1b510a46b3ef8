"""The published InstructSAM-2B layout and the reference mode, on a tiny random checkpoint in that layout
(instructsam_tools.official_tiny; the real weights cannot be downloaded here): every official tensor is used once,
malformed directories are refused by name, and the computation follows the reference's rules (positions, the query
block's attention, KV growth, phrase features from input embeddings, SAM3 without presence), checked against a
full recomputation and against an oracle written from the reference's description with stock SAM3 modules."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import load_official_tiny, official_tiny_dir
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from instructsam.errors import CheckpointError, CheckpointNotFoundError
from instructsam.generation import generate_answer
from instructsam.official_checkpoint import FROM_SAM3, load_official, map_official_key

IMAGE = np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8)
TEXT = "the red circle"


@pytest.fixture(scope="module")
def model():
    return load_official_tiny(phrases=2)


def official_tensors(directory) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def answer(model, max_new_tokens=8, text=TEXT):
    with torch.no_grad():
        features = model.encode_image(IMAGE)
        tokens = model.prompts.encode([text], model.config.template_task)
        return features, tokens, generate_answer(model, features, 0, tokens.suffix_ids[0], max_new_tokens)


# ---- layout ---------------------------------------------------------------------------------------------------
def test_every_official_tensor_is_used_once_and_the_rest_comes_from_sam3(model):
    from transformers import Sam3VideoModel

    official = official_tiny_dir(2)
    ours = model.state_dict()
    used = set()
    for key, tensor in official_tensors(official).items():
        target = map_official_key(key)
        if target is None:
            assert key.endswith("detr_decoder.query_embed.weight")  # the one tensor dropped on purpose
            continue
        assert target not in used, target
        used.add(target)
        assert torch.equal(ours[target], tensor), key
    sam3 = Sam3VideoModel.from_pretrained(official.parent / "sam3").state_dict()
    rest = set(ours) - used
    assert rest and all(k.startswith(tuple(f"sam3.{p}" for p in FROM_SAM3)) for k in rest), sorted(rest)[:5]
    assert all(torch.equal(ours[k], sam3[k[len("sam3."):]]) for k in rest)
    # the fine-tuned detector heads are the official file's, not facebook/sam3's
    head = "detector_model.mask_decoder.instance_projection.weight"
    assert not torch.equal(ours[f"sam3.{head}"], sam3[head])
    assert model.config.inference_mode == "reference" and model.config.num_queries == 4


def edited_copy(tmp_path, edit):
    official = official_tiny_dir(2)
    copy = tmp_path / "official"
    shutil.copytree(official, copy)
    shutil.copytree(official.parent / "sam3", tmp_path / "sam3")
    edit(copy)
    return copy


def shard(directory, index=1):
    return next(directory.glob(f"model-{index:05d}-of-*.safetensors"))


def rewrite(file, change):
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def add_extra(d):
    rewrite(shard(d), lambda t: t.__setitem__("model.extra_head.weight", torch.zeros(2)))


def wrong_shape(d):
    file = next(f for f in d.glob("*.safetensors") if "model.mask_queries" in load_file(str(f)))
    rewrite(file, lambda t: t.__setitem__("model.mask_queries", torch.zeros(5, 7)))


def drop_tensor(d):
    file = next(f for f in d.glob("*.safetensors") if "model.text_hidden_fcs.0.2.bias" in load_file(str(f)))
    rewrite(file, lambda t: t.pop("model.text_hidden_fcs.0.2.bias"))


def pickled_only(d):
    for f in list(d.glob("*.safetensors")) + [d / "model.safetensors.index.json"]:
        f.unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")


@pytest.mark.parametrize("edit, named", [
    (lambda d: shard(d, 2).unlink(), ["model-00002-of-00002.safetensors"]),
    (add_extra, ["model.extra_head.weight", "model-00001-of-00002.safetensors"]),
    (wrong_shape, ["model.mask_queries", "(5, 7)"]),
    (drop_tensor, ["projector.prompt_mlp.fc2.bias"]),
    (pickled_only, ["pytorch_model.bin", "safetensors"]),
    (lambda d: shutil.rmtree(d.parent / "sam3"), ["facebook/sam3", "sam3"]),
], ids=["missing shard", "extra key", "wrong shape", "missing tensor", "not safetensors", "no sam3 directory"])
def test_a_malformed_official_directory_is_refused_naming_the_file_and_key(tmp_path, edit, named):
    directory = edited_copy(tmp_path, edit)
    with pytest.raises((CheckpointError, CheckpointNotFoundError)) as err:
        load_official(directory)
    assert all(n in str(err.value) for n in named), str(err.value)


# ---- the computation --------------------------------------------------------------------------------------------
def test_the_scripted_answer_names_its_phrases_and_bounds_its_length(model):
    _, _, two = answer(model, max_new_tokens=8)
    tok = model.tokenizer
    assert tok.decode(two.ids) == "<|object_ref_start|>red<|object_ref_end|>,<|object_ref_start|>red<|object_ref_end|>,"
    assert len(two.query_states) == 2 and [tok.decode(p) for p in two.phrases] == [
        "<|object_ref_start|>red<|object_ref_end|>"] * 2
    one = load_official_tiny(phrases=1)
    _, _, stopped = answer(one, max_new_tokens=50)
    assert tok.decode(stopped.ids) == "<|object_ref_start|>red<|object_ref_end|>"  # stopped at <|im_end|>


def fed_calls(model, run):
    """(positions, new embeddings, cache length before) of every language-model call during run()."""
    calls = []

    def record(_module, _args, kwargs):
        cache = kwargs.get("past_key_values")
        calls.append((kwargs["position_ids"].clone(), kwargs["inputs_embeds"].shape[1],
                      cache.get_seq_length() if cache is not None else 0))

    handle = model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = run()
    finally:
        handle.remove()
    return calls, result


@pytest.mark.parametrize("rule", ["sequential", "mrope"])
def test_positions_and_kv_growth_follow_the_reference_rule(rule):
    model = load_official_tiny(phrases=2, reference_positions=rule)
    calls, (_, tokens, ans) = fed_calls(model, lambda: answer(model, max_new_tokens=8))
    k = model.config.num_queries
    prefix, prompt = calls[0], calls[1]  # the image prefix (its KV is cached), then the instruction
    p, s = prefix[1], prompt[1]
    assert s == int((tokens.suffix_kinds[0] != 0).sum())
    if rule == "sequential":  # 1-D, the same on all three rope axes
        assert torch.equal(prefix[0][:, 0], torch.arange(p).expand(3, -1))
    fed = calls[2:]
    assert len(fed) == len(ans.ids) - 1  # the last token is returned, not fed (as transformers' generate)
    n = p + s  # the reference's attention-mask length
    nxt = int(prompt[0].max()) + 1
    for (pos, width, past), token in zip(fed, ans.ids):
        block = token == model.config.ref_end_token_id
        assert width == (k + 3 if block else 1)
        assert pos.shape == (3, 1, width) and torch.equal(pos[0], pos[1]) and torch.equal(pos[0], pos[2])
        got = pos[0, 0].tolist()
        if rule == "sequential":
            n += 1  # this token
            if block:  # one past its natural place; the mask then holds K + 2 more entries
                assert got == list(range(n, n + k + 3))
                n += k + 2
            else:
                assert got == [n - 1]
        else:
            assert got == list(range(nxt, nxt + width))
            nxt += width
    # the cache grows by one per token and by K + 3 per block
    lengths = [past for _, _, past in fed] + [fed[-1][2] + fed[-1][1]]
    assert [b - a for a, b in zip(lengths, lengths[1:])] == [w for _, w, _ in fed]
    assert lengths[0] == p + s
    if rule == "sequential":  # the token after a block shares <|mask_end|>'s position
        first_block = next(i for i, t in enumerate(ans.ids) if t == model.config.ref_end_token_id)
        assert fed[first_block + 1][0][0, 0, 0] == fed[first_block][0][0, 0, -1]


def test_the_incremental_run_equals_one_full_recomputation(model):
    """The whole sequence (image prefix, instruction, the answer with its query blocks) in one pass without a cache,
    with the block rule written as an explicit mask and the positions as explicit ids: the same query states and
    the same greedy choices as the cached step-by-step run."""
    features, tokens, ans = answer(model, max_new_tokens=8)
    cfg, k = model.config, model.config.num_queries
    lm, embed = model.language_model, model.language_model.get_input_embeddings()
    with torch.no_grad():
        ids, prefix = model._prefix(features, torch.tensor([0]))
        suffix = tokens.suffix_ids[0][tokens.suffix_kinds[0] != 0]
        pieces, kinds = [prefix[0], embed(suffix)], ["t"] * (prefix.shape[1] + len(suffix))
        for token in ans.ids[:-1]:  # the last token is never fed
            if token == cfg.ref_end_token_id:
                pieces += [embed(torch.tensor([cfg.ref_end_token_id, cfg.mask_start_token_id])),
                           model.query_bank, embed(torch.tensor([cfg.mask_end_token_id]))]
                kinds += ["t", "t"] + ["b"] * (k + 1)  # queries and <|mask_end|> see the whole block
            else:
                pieces.append(embed(torch.tensor([token])))
                kinds.append("t")
        x = torch.cat(pieces)[None]
        length = x.shape[1]
        allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))
        i = 0
        while i < length:
            if kinds[i] == "b":
                j = i
                while j < length and kinds[j] == "b":
                    j += 1
                allowed[i:j, i - 2:j] = True
                i = j
            else:
                i += 1
        mask = torch.zeros(length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
        positions, n, i = list(range(len(ids) + len(suffix))), len(ids) + len(suffix), 0
        for token in ans.ids[:-1]:
            n += 1
            if token == cfg.ref_end_token_id:
                positions += list(range(n, n + k + 3))
                n += k + 2
            else:
                positions.append(n - 1)
        pos = torch.tensor(positions)[None].expand(3, 1, -1)
        visual = torch.zeros(1, length, dtype=torch.bool)
        visual[0, : len(ids)] = ids == model.prompts.image_pad
        out = lm(inputs_embeds=x, attention_mask=mask, position_ids=pos, visual_pos_masks=visual,
                 deepstack_visual_embeds=[d[0] for d in features.vlm_deepstack]).last_hidden_state[0]
    starts = [i for i in range(length) if kinds[i] == "b" and kinds[i - 1] == "t"]
    full_states = torch.stack([out[s:s + k] for s in starts])
    assert torch.allclose(full_states, ans.query_states, atol=1e-5)
    # greedy choices: the prompt's last position, then each fed item's last position predicts the next token
    ends = [len(ids) + len(suffix) - 1]
    fed_ends, i = [], len(ids) + len(suffix)
    for token in ans.ids[:-1]:
        i += (k + 3) if token == cfg.ref_end_token_id else 1
        fed_ends.append(i - 1)
    choices = model.vlm.lm_head(out[ends + fed_ends]).argmax(-1).tolist()
    assert choices == ans.ids


def test_phrase_features_are_the_mlp_of_the_phrase_embeddings_and_presence_changes_nothing(model):
    """SAM3's prompt for a phrase is the prompt MLP (Linear, ReLU, Linear) of the input-embedding rows of
    [ref_start, phrase, ref_end]: not contextual states, so the language model's layers do not move it; SAM3
    decodes without its presence token, so the presence weights change nothing and a score is sigmoid(logit)."""
    captured = []
    hook = model.detector.detr_encoder.register_forward_pre_hook(
        lambda _m, _a, kw: captured.append(kw["text_features"].clone()), with_kwargs=True)
    try:
        with torch.no_grad():
            features = model.encode_image(IMAGE)
            out = model.segment(features, [TEXT], max_new_tokens=8)
    finally:
        hook.remove()
    cfg = model.config
    rows = model.language_model.get_input_embeddings().weight[
        torch.tensor([cfg.ref_start_token_id, model.tokenizer.convert_tokens_to_ids("red"), cfg.ref_end_token_id])]
    fc1, fc2 = model.projector.prompt_mlp.fc1, model.projector.prompt_mlp.fc2
    by_hand = torch.relu(rows @ fc1.weight.T + fc1.bias) @ fc2.weight.T + fc2.bias
    assert torch.allclose(captured[0], by_hand.expand(2, -1, -1), atol=1e-6)
    assert out.phrases == [["red", "red"]] and out.scores.shape == (1, 2 * cfg.num_queries)
    assert torch.equal(out.scores, out.logits.sigmoid()) and out.presence_logits is None

    dec = model.detector.detr_decoder
    with torch.no_grad():
        for module in (dec.presence_token, dec.presence_head, dec.presence_layer_norm):
            for p in module.parameters():
                p.add_(torch.randn_like(p))
        again = model.segment(features, [TEXT], max_new_tokens=8)
    assert torch.equal(again.mask_logits, out.mask_logits) and torch.equal(again.scores, out.scores)


def test_masks_and_scores_equal_an_oracle_written_from_the_reference_description(model):
    """§1.8 of the reference's description transcribed with stock SAM3 submodules (DETR encoder and decoder layers'
    attention blocks, box head, dot-product scoring, mask decoder): the same masks and scores within 1e-5 (fp32)."""
    from transformers.models.sam3.modeling_sam3 import box_cxcywh_to_xyxy, inverse_sigmoid

    features, _, ans = answer(model, max_new_tokens=8)
    with torch.no_grad():
        out = model.segment(features, [TEXT], max_new_tokens=8)
        det = model.detector
        n = len(ans.phrases)
        ids = torch.tensor(ans.phrases)
        fc = model.projector
        mlp = lambda m, x: torch.relu(x @ m.fc1.weight.T + m.fc1.bias) @ m.fc2.weight.T + m.fc2.bias  # noqa: E731
        text = mlp(fc.prompt_mlp, model.language_model.get_input_embeddings()(ids))
        text_mask = torch.ones(n, ids.shape[1], dtype=torch.bool)
        queries = mlp(fc.query_mlp, ans.query_states)
        boxes = fc.reference_logits.sigmoid()[None].expand(n, -1, -1)
        vision = features.sam3
        fpn = [f.expand(n, -1, -1, -1) for f in vision.fpn_hidden_states[:-1]]
        pos_enc = [p.expand(n, -1, -1, -1) for p in vision.fpn_position_encoding[:-1]]
        enc = det.detr_encoder(vision_features=[fpn[-1]], text_features=text, vision_pos_embeds=[pos_enc[-1]],
                               text_mask=text_mask)
        dec, h = det.detr_decoder, queries
        states, all_boxes = [], []
        memory, memory_pos = enc.last_hidden_state, enc.pos_embeds_flattened
        shape = enc.spatial_shapes[0]
        for layer in dec.layers:
            qpos = dec.ref_point_head(dec.position_encoding.encode_boxes(boxes))
            rpb = dec._get_rpb_matrix(boxes, (shape[0], shape[1]))
            a, _ = layer.self_attn(query=h + qpos, key=h + qpos, value=h)
            h = layer.self_attn_layer_norm(h + a)
            a, _ = layer.text_cross_attn(query=h + qpos, key=enc.text_features, value=enc.text_features)
            h = layer.text_cross_attn_layer_norm(h + a)
            a, _ = layer.vision_cross_attn(query=h + qpos, key=memory + memory_pos, value=memory,
                                           attention_mask=rpb)
            h = layer.vision_cross_attn_layer_norm(h + a)
            h = layer.mlp_layer_norm(h + layer.mlp(h))
            normed = dec.output_layer_norm(h)
            new = (dec.box_head(normed) + inverse_sigmoid(boxes)).sigmoid()
            states.append(normed)
            all_boxes.append(box_cxcywh_to_xyxy(new))
            boxes = new
        logits = det.dot_product_scoring(decoder_hidden_states=torch.stack(states), text_features=enc.text_features,
                                         text_mask=text_mask).squeeze(-1)[-1]
        masks = det.mask_decoder(decoder_queries=states[-1], backbone_features=fpn,
                                 encoder_hidden_states=memory, prompt_features=text, prompt_mask=text_mask).pred_masks
    assert torch.allclose(out.mask_logits[0], masks.flatten(0, 1), atol=1e-5)
    assert torch.allclose(out.scores[0], logits.flatten().sigmoid(), atol=1e-5)
    assert torch.allclose(out.boxes[0], all_boxes[-1].flatten(0, 1), atol=1e-5)


def test_the_converted_directory_loads_like_any_checkpoint_and_computes_the_same(model, tmp_path):
    from instructsam_tools.convert_official import main

    main(["--official", str(official_tiny_dir(2)), "--out", str(tmp_path / "converted")])
    config = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert config["model_type"] == "instructsam" and config["inference_mode"] == "reference"
    from instructsam.loading import load_model

    converted = load_model(tmp_path / "converted")
    with torch.no_grad():
        a = model.segment(model.encode_image(IMAGE), [TEXT], max_new_tokens=8)
        b = converted.segment(converted.encode_image(IMAGE), [TEXT], max_new_tokens=8)
    assert a.answers == b.answers and torch.equal(a.mask_logits, b.mask_logits) and torch.equal(a.scores, b.scores)


GOLDEN = Path(__file__).parent / "golden" / "instructsam2b_tiny_reference.safetensors"


def test_the_reference_mode_equals_the_authors_own_code_on_the_tiny_checkpoint(model):
    """Golden values from the authors' unmodified inference code, run outside this repository on this same tiny
    checkpoint and inputs (provenance in the file's metadata; scripts/reference_oracle.py): this checks the reading
    of the reference, not only a re-implementation of its description."""
    golden = load_file(str(GOLDEN))
    with torch.no_grad():
        out = model.segment(model.encode_image(IMAGE), [TEXT], max_new_tokens=8)
    assert out.answers[0] == model.tokenizer.decode(golden["generated_ids"][0].tolist())
    assert torch.allclose(out.mask_logits[0], golden["pred_masks"].flatten(0, 1), atol=1e-5, rtol=0)
    assert torch.allclose(out.scores[0], golden["scores"].flatten(), atol=1e-6, rtol=0)


def test_phrase_runs_are_read_as_the_reference_reads_them():
    from instructsam.generation import phrase_ids

    S, E = 7, 8
    assert phrase_ids([1, S, 2, E, 3, S, 4, 5, E], S, E, 32) == [[S, 2, E], [S, 4, 5, E]]
    assert phrase_ids([S, 2, S, 3, E], S, E, 32) == [[S, 2, S, 3, E]]  # an inner start belongs to the open run
    assert phrase_ids([S, 2, 3, 4, E, S, 9], S, E, 3) == [[S, 2, 3]]  # truncated; an unclosed run is no phrase


def test_a_last_token_that_closes_a_phrase_opens_no_block(model):
    """At the length bound the last token is returned but not fed: a phrase closed by it has no query block, so
    phrases and blocks do not pair up and the instruction has no slots (as the reference returns no masks)."""
    _, _, ans = answer(model, max_new_tokens=3)  # <ref_start> red <ref_end>
    assert ans.ids[-1] == model.config.ref_end_token_id and len(ans.phrases) == 1 and len(ans.query_states) == 0
    with torch.no_grad():
        out = model.segment(model.encode_image(IMAGE), [TEXT], max_new_tokens=3)
    assert out.scores.shape == (1, 0) and out.answers == [model.tokenizer.decode(ans.ids)]
    assert model.postprocess(out, [IMAGE.shape[:2]])[0].masks.shape == (0, 60, 80)


def untie_removed(d):
    config = json.loads((d / "config.json").read_text())
    config["tie_word_embeddings"] = config["text_config"]["tie_word_embeddings"] = True
    (d / "config.json").write_text(json.dumps(config))
    for file in d.glob("*.safetensors"):
        if "lm_head.weight" in load_file(str(file)):
            rewrite(file, lambda t: t.pop("lm_head.weight"))
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"].pop("lm_head.weight")
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def test_tied_embeddings_without_a_saved_lm_head_load(tmp_path):
    """The published model ties lm_head to its embedding table, and save_pretrained omits the duplicate."""
    model = load_official(edited_copy(tmp_path, untie_removed))
    lm = model.vlm
    assert lm.lm_head.weight.data_ptr() == lm.model.language_model.embed_tokens.weight.data_ptr()


def test_pixels_equal_the_stock_processors_the_reference_uses(model):
    """SAM3: transformers' Sam3ImageProcessor (which the authors left unchanged) at the model's size; the VLM: the
    image processor saved in the official directory, loaded as the reference loads it."""
    from transformers import AutoImageProcessor, Sam3ImageProcessor

    from instructsam.preprocess import to_image_list, to_square_pixels

    frame = np.random.default_rng(0).integers(0, 256, (48, 72, 3), dtype=np.uint8)
    cfg = model.config
    stock = Sam3ImageProcessor(size={"height": cfg.image_size, "width": cfg.image_size})(
        images=[frame], return_tensors="pt").pixel_values
    ours = to_square_pixels(to_image_list(frame), cfg.image_size, cfg.sam3_image_mean, cfg.sam3_image_std,
                            quantize=True)
    assert torch.allclose(ours, stock, atol=1e-6, rtol=0)
    saved = AutoImageProcessor.from_pretrained(str(official_tiny_dir(2)))(images=[frame], return_tensors="pt")
    patches, grid = model._qwen_patches(to_image_list(frame), torch.float32)
    assert torch.equal(grid, saved.image_grid_thw) and torch.allclose(patches, saved.pixel_values, atol=1e-6, rtol=0)


def test_a_truncated_phrase_is_shown_without_losing_its_last_token():
    model = load_official_tiny(phrases=1, max_phrase_tokens=2)  # [ref_start, red]: the end marker cut off
    with torch.no_grad():
        out = model.segment(model.encode_image(IMAGE), [TEXT], max_new_tokens=16)
    assert out.phrases == [["red"]] and out.scores.shape == (1, model.config.num_queries)
