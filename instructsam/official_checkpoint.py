"""The published InstructSAM-2B's checkpoint (CircleRadon/InstructSAM-2B) loaded into InstructSAMModel's reference
mode (instructsam.generation).

Its directory is a Qwen3-VL checkpoint: config.json is a `qwen3_vl` config with InstructSAM's keys (`max_seg_nums`
K, the special-token indices, `mask_decoder_model`: the facebook/sam3 directory it was built with), and one state
dict (safetensors, possibly sharded) holds the VLM, the query bank, the two projector MLPs and SAM3's fine-tuned
detector. facebook/sam3 supplies SAM3's config and what the official file lacks: the tracker, the CLIP text encoder
and the presence head (neither used in this mode) and the detector's own 200 queries (unused).

Every official tensor is mapped exactly once (OFFICIAL_MAP); a key it does not cover, a shape that does not fit,
a missing shard or a weight file that is not safetensors is refused with an error naming the file and the key.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from instructsam.checkpoint import read_config_json, safetensors_files
from instructsam.errors import CheckpointError, CheckpointNotFoundError

# InstructSAM's additions to the Qwen3-VL config (the rest is Qwen3-VL's own).
OFFICIAL_CONFIG_KEYS = (
    "region_token_index", "seg_token_index", "seg_start_token_index", "seg_end_token_index", "ref_start_token_index",
    "ref_end_token_index", "max_seg_nums", "seg_encoder", "seg_decoder", "mask_decoder_model", "mm_mask_decoder",
    "out_dim", "dice_loss_weight", "bce_loss_weight", "cls_loss_weight", "loss_sample_points")

# official prefix -> our prefix, in the order they are tried (the first match wins)
OFFICIAL_MAP = (
    ("model.visual.", "vlm.model.visual."),
    ("model.language_model.", "vlm.model.language_model."),
    ("lm_head.", "vlm.lm_head."),
    ("model.mask_queries", "query_bank"),
    ("model.mask_hidden_fcs.0.0.", "projector.query_mlp.fc1."),
    ("model.mask_hidden_fcs.0.2.", "projector.query_mlp.fc2."),
    ("model.text_hidden_fcs.0.0.", "projector.prompt_mlp.fc1."),
    ("model.text_hidden_fcs.0.2.", "projector.prompt_mlp.fc2."),
    ("model.grounding_model.model.detr_decoder.reference_points.weight", "projector.reference_logits"),
    ("model.grounding_model.model.detr_decoder.query_embed.", None),  # re-initialised in training, unused
    ("model.grounding_model.model.", "sam3.detector_model."),
)
# what facebook/sam3 supplies (its own names = ours); everything else must come from the official file
FROM_SAM3 = ("detector_model.text_encoder.", "detector_model.detr_decoder.presence_",
             "detector_model.detr_decoder.query_embed.", "detector_model.detr_decoder.reference_points.",
             "tracker_model.", "tracker_neck.")
REQUIRED_KEYS = ("max_seg_nums", "ref_start_token_index", "ref_end_token_index", "seg_start_token_index",
                 "seg_end_token_index")
NOT_SAFETENSORS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "model.pt", "model.ckpt")
REFERENCE_POSTPROCESS = dict(score_threshold=0.3, mask_threshold=0.5, nms_iou=1.0, max_instances=100)


def is_official_layout(directory: str | os.PathLike) -> bool:
    """A directory in the published layout: a qwen3_vl config carrying InstructSAM's `max_seg_nums`."""
    config = Path(directory) / "config.json"
    if not config.is_file():
        return False
    try:
        raw = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return raw.get("model_type") == "qwen3_vl" and "max_seg_nums" in raw


def map_official_key(key: str) -> str | None:
    """Our parameter name for an official tensor (None: dropped on purpose); KeyError if nothing maps it."""
    for prefix, target in OFFICIAL_MAP:
        if key == prefix or (prefix.endswith(".") and key.startswith(prefix)):
            return None if target is None else target + key[len(prefix):]
    raise KeyError(key)


def find_sam3_dir(official: Path, raw: dict, sam3: str | os.PathLike | None) -> Path:
    """The facebook/sam3 directory: as given, else the config's `mask_decoder_model` (a path the authors' scripts
    store relative to where they ran), looked up in the working directory, the official directory and beside it."""
    if sam3:
        path = Path(os.path.expanduser(str(sam3)))
        if not (path / "config.json").is_file():
            raise CheckpointNotFoundError(f"SAM3 directory {str(path)!r} has no config.json (a facebook/sam3 "
                                          f"directory is needed for SAM3's config, tracker and presence weights)")
        return path
    stored = raw.get("mask_decoder_model") or "sam3"
    looked = [Path(stored)] if Path(stored).is_absolute() else [
        Path.cwd() / stored, official / stored, official.parent / stored, official.parent / Path(stored).name]
    for candidate in looked:
        if (candidate / "config.json").is_file():
            return candidate
    raise CheckpointNotFoundError(
        f"the official checkpoint {str(official)!r} needs a facebook/sam3 directory (its config names "
        f"{stored!r}); not found in {', '.join(map(str, looked))}: give it with sam3_checkpoint / --sam3")


def official_config(official: Path, sam3: Path, raw: dict):
    """Our InstructSAMConfig for an official directory: its Qwen3-VL config, facebook/sam3's config, K, the token
    ids, the generation config's stop ids and penalty, the image processor's bounds, the reference's post-process.
    `raw` is its config.json as check_official_dir read and checked it."""
    from transformers import AutoConfig, Qwen3VLConfig

    from instructsam.config import InstructSAMConfig

    vlm = Qwen3VLConfig.from_dict({k: v for k, v in raw.items() if k not in OFFICIAL_CONFIG_KEYS})
    sam3_config = AutoConfig.from_pretrained(str(sam3), local_files_only=True)
    if sam3_config.model_type != "sam3_video":
        raise CheckpointError(f"{str(sam3)!r} holds a {sam3_config.model_type!r} config; facebook/sam3's "
                              f"(sam3_video: detector + tracker) is needed")
    out_dim = raw.get("out_dim", 256)
    if out_dim != sam3_config.detector_config.detr_decoder_config.hidden_size:
        raise CheckpointError(f"out_dim {out_dim} of {str(official)!r} differs from SAM3's DETR width "
                              f"{sam3_config.detector_config.detr_decoder_config.hidden_size} in {str(sam3)!r}")
    generation = _json(official / "generation_config.json")
    eos = generation.get("eos_token_id", raw.get("eos_token_id"))
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if not eos:
        raise CheckpointError(f"{str(official)!r}: no eos_token_id in generation_config.json or config.json")
    size = _json(official / "preprocessor_config.json").get("size") or {}
    return InstructSAMConfig(
        vlm_config=vlm, sam3_config=sam3_config, num_queries=int(raw["max_seg_nums"]), lora_r=0,
        freeze_sam3=True, freeze_vlm_vision=True, freeze_vlm_language=True, inference_mode="reference",
        ref_start_token_id=int(raw["ref_start_token_index"]), ref_end_token_id=int(raw["ref_end_token_index"]),
        mask_start_token_id=int(raw["seg_start_token_index"]), mask_end_token_id=int(raw["seg_end_token_index"]),
        eos_token_ids=[int(e) for e in eos], repetition_penalty=float(generation.get("repetition_penalty", 1.0)),
        vlm_min_pixels=int(size.get("shortest_edge", 65536)), vlm_max_pixels=int(size.get("longest_edge", 16777216)),
        **REFERENCE_POSTPROCESS)


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {err}") from err


def _weight_files(directory: Path, what: str) -> list[Path]:
    for name in NOT_SAFETENSORS:
        if (directory / name).exists() and not (directory / "model.safetensors").exists() \
                and not (directory / "model.safetensors.index.json").exists():
            raise CheckpointError(f"{what} {str(directory)!r} holds {name}: only safetensors weights are loaded "
                                  f"(pickled weights can run code)")
    return safetensors_files(directory, what)


def official_state_dict(official: Path, expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Our state dict from the official weights, checked against `expected` (our model's names and shapes): every
    official key used once, every tensor of the model filled that facebook/sam3 does not supply (FROM_SAM3)."""
    state: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for file in _weight_files(official, "official InstructSAM checkpoint"):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                try:
                    target = map_official_key(key)
                except KeyError:
                    raise CheckpointError(f"{str(file)!r}: tensor {key!r} is not part of the InstructSAM-2B layout "
                                          f"(no parameter of the model takes it)") from None
                if target is None:
                    continue
                if target in source:
                    raise CheckpointError(f"{str(file)!r}: {key!r} fills {target!r}, already filled from "
                                          f"{source[target]!r}")
                _put(state, source, target, f.get_tensor(key), expected, f"{file.name}:{key}", file)
    tied = "vlm.lm_head.weight"
    if tied in expected and tied not in state and "vlm.model.language_model.embed_tokens.weight" in state:
        state[tied] = state["vlm.model.language_model.embed_tokens.weight"]  # tied embeddings: not saved twice
    from_sam3 = tuple(f"sam3.{prefix}" for prefix in FROM_SAM3)
    missing = sorted(k for k in set(expected) - set(state) if not k.startswith(from_sam3))
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"official checkpoint {str(official)!r} lacks {len(missing)} tensors of the model: "
                              f"{shown}")
    return state


def _put(state, source, target: str, tensor: torch.Tensor, expected, origin: str, file: Path) -> None:
    if target not in expected:
        raise CheckpointError(f"{str(file)!r}: {origin.split(':', 1)[1]!r} maps to {target!r}, which the model "
                              f"built from the configs does not have")
    if tuple(tensor.shape) != tuple(expected[target]):
        raise CheckpointError(f"{str(file)!r}: {origin.split(':', 1)[1]!r} has shape {tuple(tensor.shape)}, the "
                              f"model's {target!r} needs {tuple(expected[target])}")
    state[target] = tensor
    source[target] = origin


def check_official_dir(directory: str | os.PathLike, sam3: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """What loading needs, checked without reading the weights: a qwen3_vl config with the layout's keys,
    safetensors weight files that open, the tokenizer and the facebook/sam3 directory; returns the SAM3 directory
    and the parsed config.json."""
    official = Path(directory)
    raw = read_config_json(official, "official InstructSAM checkpoint")
    if raw.get("model_type") != "qwen3_vl":
        raise CheckpointError(f"{str(official)!r} is not in the InstructSAM-2B layout (a qwen3_vl config with "
                              f"max_seg_nums), its config.json says model_type {raw.get('model_type')!r}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise CheckpointError(f"{str(official / 'config.json')!r} lacks InstructSAM's keys {missing}")
    _weight_files(official, "official InstructSAM checkpoint")
    if not (official / "tokenizer.json").is_file() and not (official / "tokenizer_config.json").is_file():
        raise CheckpointNotFoundError(f"official InstructSAM checkpoint {str(official)!r} has no tokenizer files")
    sam3_dir = find_sam3_dir(official, raw, sam3)
    _weight_files(sam3_dir, "SAM3 directory")
    return sam3_dir, raw


def load_official(directory: str | os.PathLike, sam3: str | os.PathLike | None = None,
                  dtype: torch.dtype = torch.float32):
    """InstructSAMModel in reference mode from an official directory (+ facebook/sam3), in `dtype`, on the CPU,
    with the official tokenizer."""
    from transformers import AutoTokenizer, Sam3VideoModel
    from transformers.initialization import no_init_weights

    from instructsam.config import set_dtype_everywhere
    from instructsam.modeling import InstructSAMModel

    official = Path(directory)
    sam3_dir, raw = check_official_dir(official, sam3)
    config = official_config(official, sam3_dir, raw)
    set_dtype_everywhere(config, dtype)
    # SAM3 whole from facebook/sam3 (transformers maps its file's names); the official file then replaces the
    # detector, and fills everything else (built without initialisation: every such tensor is overwritten)
    sam3_model = Sam3VideoModel.from_pretrained(str(sam3_dir), dtype=dtype, local_files_only=True)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            model = InstructSAMModel(config, sam3=sam3_model)
    finally:
        torch.set_default_dtype(previous)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = official_state_dict(official, expected)
    result = model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                                   strict=False)
    assert not result.unexpected_keys  # official_state_dict only yields the model's own names
    model.tie_weights()
    model.attach_tokenizer(AutoTokenizer.from_pretrained(str(official), local_files_only=True))
    model.apply_freezing()
    return model.eval()


__all__ = ["is_official_layout", "check_official_dir", "load_official", "official_config", "official_state_dict", "map_official_key",
           "find_sam3_dir", "OFFICIAL_MAP", "FROM_SAM3", "REFERENCE_POSTPROCESS"]
