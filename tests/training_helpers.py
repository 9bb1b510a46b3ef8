"""Shared by the training and evaluate tests: the smallest tiny InstructSAM that still has every part
(2 DETR-decoder layers for auxiliary losses, LoRA, K query slots), built from config/model_tiny.yaml with the
sizes shrunk, so a training step takes a fraction of a second on one core."""
from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def small_model_spec() -> dict:
    spec = yaml.safe_load((REPO / "config" / "model_tiny.yaml").read_text())
    text = spec["vlm"]["text_config"]
    text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, head_dim=32)
    vision = spec["vlm"]["vision_config"]
    vision.update(depth=1, hidden_size=32, intermediate_size=64, num_heads=1, out_hidden_size=64)
    det = spec["sam3"]["detector_config"]
    det["vision_config"]["backbone_config"].update(num_hidden_layers=1, global_attn_indexes=[0])
    det["detr_encoder_config"]["num_layers"] = 1
    spec["sam3"]["tracker_config"]["vision_config"]["backbone_config"].update(num_hidden_layers=1,
                                                                               global_attn_indexes=[0])
    spec["instructsam"].update(num_queries=4, vlm_image_size=64, max_instances=4, lora_r=4)
    return spec


def build_test_model(directory: Path) -> Path:
    """Build (once per directory) the small test model; returns its InstructSAM directory."""
    from instructsam_tools.tiny import build_tiny

    directory = Path(directory)
    if (directory / "config.json").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    spec_file = directory.parent / f"{directory.name}_spec.yaml"
    spec_file.write_text(yaml.safe_dump(small_model_spec()))
    return build_tiny(directory, spec_file)
