"""Tiny build, composition from source directories, and equality of the composed parts with their sources."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_fixtures import load_tiny, random_images, tiny_dir
from safetensors.torch import load_file
from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration, Sam3VideoModel
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

from instructsam_tools.compose import main as compose_main
from instructsam.modeling import InstructSAMModel
from instructsam.preprocess import patchify_for_qwen, to_image_list, to_square_pixels
from instructsam.tokenizer import QUERY_TOKEN_FORMAT, train_tiny_tokenizer


def test_tiny_checkpoint_layout_and_config():
    root = tiny_dir()
    config = json.loads((root / "config.json").read_text())
    assert config["model_type"] == "instructsam"
    assert config["vlm_config"]["model_type"] == "qwen3_vl"
    assert config["sam3_config"]["model_type"] == "sam3_video"  # detector + tracker, as facebook/sam3
    keys = load_file(root / "model.safetensors").keys()
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] if k.startswith("sam3.") else k.split(".")[0] for k in keys}
    assert {"vlm", "query_bank", "projector", "sam3.detector_model", "sam3.tracker_model",
            "sam3.tracker_neck"} <= prefixes
    assert any("lora_A" in k for k in keys) and any("lora_B" in k for k in keys)


def test_tiny_model_size_and_trainable_parts():
    model = load_tiny()
    total = sum(p.numel() for p in model.parameters())
    assert 2e6 < total < 2e7, total
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"vlm", "query_bank", "projector"}  # vlm: LoRA only
    assert all("lora_" in n for n, p in model.vlm.named_parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in model.sam3.parameters())
    assert model.config.num_queries == 16 and model.query_bank.shape == (16, 192)


def test_tokenizer_is_deterministic_byte_level_and_has_query_tokens():
    a, b = train_tiny_tokenizer(512, seed=3), train_tiny_tokenizer(512, seed=3)
    assert a.get_vocab() == b.get_vocab()
    text = "Grab the 2 tiny mugs ↖ left of the sink — ünïcödé 😀"
    ids = a(text, add_special_tokens=False).input_ids
    assert a.decode(ids) == text  # byte-level: any text round-trips
    tok = AutoTokenizer.from_pretrained(tiny_dir(), local_files_only=True)
    qids = [tok.convert_tokens_to_ids(QUERY_TOKEN_FORMAT.format(i)) for i in range(16)]
    assert qids == load_tiny().config.query_token_ids
    assert tok(QUERY_TOKEN_FORMAT.format(3), add_special_tokens=False).input_ids == [qids[3]]


def test_compose_cli_keeps_source_weights_unchanged(tmp_path):
    src = tiny_dir() / "sources"
    out = tmp_path / "composed"
    compose_main(["--vlm", str(src / "vlm"), "--sam3", str(src / "sam3"), "--out", str(out), "--num-queries", "5"])
    model = InstructSAMModel.from_pretrained(out)
    assert model.config.num_queries == 5 and model.query_bank.shape[0] == 5
    # every SAM3 parameter (detector, tracker, tracker neck) equals the source's
    sam3 = Sam3VideoModel.from_pretrained(src / "sam3").state_dict()
    mine = model.sam3.state_dict()
    assert set(mine) == set(sam3)
    assert all(torch.equal(mine[k], sam3[k]) for k in sam3)
    # the VLM's weights too (LoRA wraps them as base_layer)
    vlm = Qwen3VLForConditionalGeneration.from_pretrained(src / "vlm").state_dict()
    base = {k.replace(".base_layer", ""): v for k, v in model.vlm.state_dict().items() if "lora_" not in k}
    assert set(base) == set(vlm)
    assert all(torch.equal(base[k], vlm[k]) for k in vlm)


def test_our_pixels_match_the_qwen_image_processor():
    image = random_images(1, sizes=((128, 128),))[0]
    ours = to_square_pixels(to_image_list(image), 128, [0.5] * 3, [0.5] * 3)
    patches, grid = patchify_for_qwen(ours, patch_size=8, merge_size=2, temporal_patch_size=2)
    ref = Qwen2VLImageProcessor.from_pretrained(tiny_dir() / "sources" / "vlm")(images=[image], return_tensors="pt")
    assert torch.equal(grid, ref["image_grid_thw"])
    torch.testing.assert_close(patches, ref["pixel_values"], atol=1e-6, rtol=0)


def test_language_states_equal_the_source_qwen3vl_forward():
    """Our path (own preprocessing, 3D rope positions, custom float mask, deepstack, LoRA with B = 0) gives the
    source Qwen3-VL's hidden states for the image + instruction tokens."""
    model = load_tiny()
    image = random_images(1)[0]
    features = model.encode_image(image)
    tokens = model.prompts.encode(["the red circle left of the blue square"], "referring")
    with torch.no_grad():
        hidden, offset = model.language_model_pass(features, tokens, torch.tensor([0]), reuse_prefix=False)
    n_causal = int((tokens.suffix_kinds[0] == 1).sum())
    prefix = torch.tensor(model.prompts.prefix_ids(features.vlm_image_embeds.shape[1]))
    ids = torch.cat([prefix, tokens.suffix_ids[0, :n_causal]])[None]
    src = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dir() / "sources" / "vlm").eval()
    pixels = to_square_pixels(to_image_list(image), model.config.vlm_image_size, [0.5] * 3, [0.5] * 3)
    patches, grid = patchify_for_qwen(pixels, 8, 2, 2)
    with torch.no_grad():
        ref = src.model(input_ids=ids, pixel_values=patches, image_grid_thw=grid,
                        mm_token_type_ids=(ids == src.config.image_token_id).int()).last_hidden_state
    torch.testing.assert_close(hidden[:, : offset + n_causal], ref, atol=1e-5, rtol=0)


def test_full_size_check_runs_on_the_tiny_shape(capsys):
    from instructsam_tools.full_size_check import main

    main(["--config", "config/model_tiny.yaml", "--sam3-size", "112", "--dtype", "float32", "--instructions", "2"])
    report = capsys.readouterr().out
    assert "TOTAL (unique parameters)" in report and "finite: True" in report
    assert "mask_logits (2, 16, 32, 32)" in report


def test_tiny_build_is_deterministic(tmp_path):
    from instructsam_tools.tiny import build_tiny

    again = build_tiny(tmp_path / "again")
    a, b = load_file(tiny_dir() / "model.safetensors"), load_file(again / "model.safetensors")
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(json.loads((again / "config.json").read_text())["query_token_ids"],
                          json.loads((tiny_dir() / "config.json").read_text())["query_token_ids"])


def test_he_init_gives_the_mask_embedder_a_slot_dependent_output(tmp_path):
    from instructsam_tools.tiny import build_tiny_sources, load_spec

    spec = load_spec("config/model_tiny.yaml")
    path = "detector_model.mask_decoder.mask_embedder"
    _, sam3_dir = build_tiny_sources(tmp_path / "he", dict(spec, he_init=[path]))
    he = Sam3VideoModel.from_pretrained(sam3_dir).get_submodule(path)
    default = load_tiny().sam3.get_submodule(path)
    fan_in = he.layers[0].in_features
    for i, (lin, ref) in enumerate(zip(he.layers, default.layers)):
        gain = 1.0 if i == len(he.layers) - 1 else 2 ** 0.5
        assert abs(float(lin.weight.std()) - gain / fan_in ** 0.5) < 0.02 and not lin.bias.any()
        assert abs(float(ref.weight.std()) - 0.02) < 0.005  # the default init the option replaces
    x = torch.randn(16, fan_in)  # 16 different slot states
    with torch.no_grad():
        spread = lambda m: float(m(x).std(0).mean())  # noqa: E731
        assert spread(he) > 100 * spread(default)  # the default passes almost nothing of the slot state on
    with pytest.raises(ValueError, match="no module 'detector_model.nope'"):
        build_tiny_sources(tmp_path / "bad", dict(spec, he_init=["detector_model.nope"]))


def test_tiny_training_step_is_cpu_fast():
    """Forward + backward of a batch of 8 at the tiny size (SAM3 frozen) on one thread: ~0.3 s here; the bound
    is loose because the test machines are shared."""
    import time

    model = load_tiny().train()
    size = model.config.image_size
    images = random_images(8, sizes=((size, size),))
    instructions = ["the small red circle left of the blue square"] * 8
    times = []
    for _ in range(3):
        model.zero_grad()
        start = time.perf_counter()
        out = model(images, instructions)
        (out.mask_logits.sigmoid().mean() + out.scores.mean()).backward()
        times.append(time.perf_counter() - start)
    assert min(times) < 2.0, times


def test_lora_off_and_unfreezing_named_parts(tmp_path):
    from instructsam_tools.compose import compose

    src = tiny_dir() / "sources"
    out = compose(src / "vlm", src / "sam3", tmp_path / "nolora", num_queries=4,
                  overrides={"lora_r": 0, "vlm_image_size": 128,
                             "unfreeze_modules": ["sam3.detector_model.mask_decoder"]})
    model = InstructSAMModel.from_pretrained(out).train()
    assert not any("lora_" in n for n, _ in model.named_parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("sam3.detector_model.mask_decoder.") for n in trainable)
    assert not any(n.startswith("vlm.") for n in trainable)
    assert all(n.startswith(("query_bank", "projector", "sam3.detector_model.mask_decoder.")) for n in trainable)
    assert model.sam3.training  # partly trainable -> not forced into eval mode
    out = model(random_images(1), ["the mug"])
    out.mask_logits.mean().backward()
    assert model.detector.mask_decoder.instance_projection.weight.grad is not None
    model.config.unfreeze_modules = ["sam3.detector_model.mask_decoders"]  # misspelt: matches nothing
    with pytest.raises(ValueError, match=r"unfreeze_modules: no parameter name starts with"):
        model.apply_freezing()
