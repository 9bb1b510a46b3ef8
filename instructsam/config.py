"""InstructSAMConfig: a Qwen3-VL-family VLM config + a SAM3 (detector + tracker) config + InstructSAM's own settings.

Saved as one `config.json` by `save_pretrained`; the two sub-configs are stored whole, so a directory composed
from real checkpoints rebuilds exactly their architectures.
"""
from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from instructsam.templates import DEFAULT_MAX_INSTRUCTION_CHARS
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto import AutoConfig

ATTENTION_MODES = ("hybrid", "causal")
PROMPT_SOURCES = ("hidden", "embeddings", "both")
INFERENCE_MODES = ("one_pass", "reference", "dit")
DIT_VARIANTS = ("none", "end_to_end", "layer_wise")
DIT_TEXT_SOURCES = ("sam3", "vlm")
REFERENCE_POSITIONS = ("sequential", "mrope")
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@strict
class InstructSAMConfig(PreTrainedConfig):
    r"""
    vlm_config: Qwen3-VL config (`model_type="qwen3_vl"`), e.g. Qwen3-VL-2B-Instruct's.
    sam3_config: SAM3 video config (`model_type="sam3_video"`: detector + tracker), as in facebook/sam3.
    num_queries: K, the number of instance-query tokens appended after image and instruction.
    attention_mode: "hybrid" (queries see the prefix and every query) or "causal" (ablation).
    prompt_source: where one-pass mode's SAM3 prompt features (and DIT's with dit_text_source "vlm") come from:
        the instruction tokens' "hidden" states (the VLM's last layer, in context), their "embeddings" (the input
        embedding table, RMS-normalised: the words alone, as the published model prompts SAM3 with its phrase's
        embeddings), or "both" (the two sequences joined, each token once in context and once alone). No
        parameters change: a loaded model may switch.
    score_from_masks: one-pass mode's last decoder layer scores each slot on its state plus SAM3's prompt-fused
        image tokens averaged under the slot's own mask. A slot's state says where its object is and hardly what
        it is (in the tiny model a linear probe reads an object's colour from its matched slot's state at chance,
        from each of the prompt-fused image tokens on it 63 % of the time), so without it the score, which selects the
        instruction's targets, cannot see their colour. No parameters: a loaded model may switch (and then needs
        fine-tuning).
    lora_r / lora_alpha / lora_dropout / lora_target_modules: LoRA on the VLM language model; lora_r=0 disables it.
        LoRA is built in `__init__`, so `from_pretrained` restores it from the weights file.
    freeze_sam3 / freeze_vlm_vision / freeze_vlm_language: freeze these components' own weights (query bank,
        projectors and LoRA stay trainable). `unfreeze_modules` lists parameter-name prefixes to train anyway,
        e.g. ["sam3.detector_model.mask_decoder"].
    template_task: default instruction template ("referring", "reasoning", "multi_instance", "video").
    image_size: SAM3's square input side (must equal sam3_config.image_size). vlm_image_size: the VLM's square
        input side (a multiple of patch_size * spatial_merge_size).
    score_threshold / mask_threshold / nms_iou / max_instances: post-process defaults. mask_threshold is applied
        to the mask probability; 0.35 follows DIT's binarisation. crop_masks_to_boxes: cut each mask to its
        predicted box (+1 px), for models whose slot masks bleed into neighbouring instances (small models trained
        from scratch; SAM3's trained mask decoder does not need it).
    max_instruction_chars / max_instruction_tokens: longer instructions are rejected with InstructionError.
    query_token_ids: tokenizer ids of `<inst_q_0>`..`<inst_q_{K-1}>` (placeholders whose embeddings are replaced
        by the learned query bank).
    inference_mode: "one_pass" (this package's: K query tokens after the instruction, one forward pass, trainable
        here) or "reference" (the published InstructSAM-2B's: the VLM writes each target phrase between
        <|object_ref_start|> and <|object_ref_end|>, a block of K queries follows each phrase, SAM3 decodes without
        its presence token; instructsam.generation) or "dit" (deep instruction tuning: the instruction's words
        inside SAM3's image encoder, SAM3's own queries and heads decode; instructsam.dit_encoder). A checkpoint
        says which it is.
    DIT mode only:
    dit_variant: "end_to_end" (E-DIT: projected once, through every encoder layer), "layer_wise" (L-DIT: one
        projection per layer, inserted there) or "none" (SAM3's default text prompting, no insertion).
    dit_text_source: "sam3" (SAM3's own text encoder, DIT's setting; the tokenizer in `sam3_tokenizer/`) or "vlm"
        (the VLM's states of the instruction tokens, through the prompt projector).
    dit_freeze_encoder: keep SAM3's ViT frozen (DIT's * rows; E-DIT then adapts its text tokens with a linear
        layer after every encoder layer); False trains the ViT.
    Reference mode only:
    reference_positions: "sequential" (the reference's inference: 1-D positions for every token, the query block
        shifted by one, the token after it sharing <|mask_end|>'s position) or "mrope" (its training: Qwen3-VL's
        3-D positions, the block as ordinary consecutive tokens).
    max_new_tokens: the answer's length bound (the reference's 1024; the node sets its own per keyframe).
    max_phrase_tokens: SAM3 prompt length per phrase ([ref_start, phrase, ref_end], truncated; the reference's 32).
    ref_start_token_id / ref_end_token_id / mask_start_token_id / mask_end_token_id / eos_token_ids: the official
        tokenizer's ids. repetition_penalty: the generation config's (1.0: none).
    vlm_min_pixels / vlm_max_pixels: the Qwen image processor's area bounds (aspect-preserving resize).
    vlm_image_token_rms: when set, each image token (and each deepstack feature) is rescaled to this root mean
        square where it enters the language model, parameter-free. For a VLM trained from scratch (the tiny stack),
        whose merger otherwise grows its tokens far above the word embeddings' scale; None (default) for a
        pretrained Qwen3-VL, whose tokens are left as its merger makes them.
    model_version: the trained model's name and version (e.g. "instructsam-tiny 0.5"; docs/model_history.md), which
        the node reports in its diagnostics; "" for a model nobody versioned.
    """

    model_type = "instructsam"
    sub_configs_defaults = {
        "vlm_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3_vl"),
        "sam3_config": SubConfigSpec(config_class=AutoConfig, model_type="sam3_video"),
    }

    vlm_config: dict | PreTrainedConfig | None = None
    sam3_config: dict | PreTrainedConfig | None = None
    num_queries: int = 64
    attention_mode: str = "hybrid"
    prompt_source: str = "hidden"
    score_from_masks: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None
    freeze_sam3: bool = True
    freeze_vlm_vision: bool = True
    freeze_vlm_language: bool = True
    unfreeze_modules: list[str] | None = None
    template_task: str = "referring"
    image_size: int | None = None
    vlm_image_size: int = 448
    vlm_image_mean: list[float] | None = None
    vlm_image_std: list[float] | None = None
    sam3_image_mean: list[float] | None = None
    sam3_image_std: list[float] | None = None
    score_threshold: float = 0.5
    mask_threshold: float = 0.35
    nms_iou: float = 0.5
    max_instances: int = 20
    crop_masks_to_boxes: bool = False
    max_instruction_chars: int = DEFAULT_MAX_INSTRUCTION_CHARS
    max_instruction_tokens: int = 256
    query_token_ids: list[int] | None = None
    initializer_range: float = 0.02
    inference_mode: str = "one_pass"
    reference_positions: str = "sequential"
    max_new_tokens: int = 1024
    max_phrase_tokens: int = 32
    ref_start_token_id: int | None = None
    ref_end_token_id: int | None = None
    mask_start_token_id: int | None = None
    mask_end_token_id: int | None = None
    eos_token_ids: list[int] | None = None
    repetition_penalty: float = 1.0
    vlm_min_pixels: int = 65536
    vlm_max_pixels: int = 16777216
    vlm_image_token_rms: float | None = None
    model_version: str = ""
    dit_variant: str = "layer_wise"
    dit_text_source: str = "sam3"
    dit_freeze_encoder: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.lora_target_modules is None:
            self.lora_target_modules = list(DEFAULT_LORA_TARGETS)
        if self.unfreeze_modules is None:
            self.unfreeze_modules = []
        for name in ("vlm_image_mean", "vlm_image_std", "sam3_image_mean", "sam3_image_std"):
            if getattr(self, name) is None:
                setattr(self, name, [0.5, 0.5, 0.5])  # both Qwen3-VL and SAM3 preprocessors use 0.5/0.5
        if self.image_size is None:
            self.image_size = int(self.sam3_config.image_size)
        self.check_settings()

    def check_settings(self) -> None:
        """Reject settings that would only fail later, deep inside a forward pass (plain ValueErrors; `@strict`'s
        own validators would wrap them in a non-ValueError)."""
        if self.prompt_source not in PROMPT_SOURCES:
            raise ValueError(f"prompt_source must be one of {PROMPT_SOURCES}, got {self.prompt_source!r}")
        if self.attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode must be one of {ATTENTION_MODES}, got {self.attention_mode!r}")
        if self.inference_mode not in INFERENCE_MODES:
            raise ValueError(f"inference_mode must be one of {INFERENCE_MODES}, got {self.inference_mode!r}")
        vlm_prompt = self.inference_mode == "one_pass" or (self.inference_mode == "dit" and self.dit_text_source == "vlm")
        if self.prompt_source != "hidden" and not vlm_prompt:
            raise ValueError(f"prompt_source {self.prompt_source!r} chooses the VLM's prompt for SAM3, which "
                             f"inference_mode {self.inference_mode!r} does not use (one_pass, or dit with "
                             f"dit_text_source 'vlm')")
        if self.score_from_masks and self.inference_mode != "one_pass":
            raise ValueError(f"score_from_masks is a one_pass option; inference_mode is {self.inference_mode!r}")
        if self.reference_positions not in REFERENCE_POSITIONS:
            raise ValueError(f"reference_positions must be one of {REFERENCE_POSITIONS}, got "
                             f"{self.reference_positions!r}")
        if self.dit_variant not in DIT_VARIANTS:
            raise ValueError(f"dit_variant must be one of {DIT_VARIANTS}, got {self.dit_variant!r}")
        if self.dit_text_source not in DIT_TEXT_SOURCES:
            raise ValueError(f"dit_text_source must be one of {DIT_TEXT_SOURCES}, got {self.dit_text_source!r}")
        if self.inference_mode == "reference":
            missing = [n for n in ("ref_start_token_id", "ref_end_token_id", "mask_start_token_id",
                                   "mask_end_token_id", "eos_token_ids") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"inference_mode 'reference' needs {', '.join(missing)}")
        if self.vlm_image_token_rms is not None and not self.vlm_image_token_rms > 0:
            raise ValueError(f"vlm_image_token_rms must be > 0 or None, got {self.vlm_image_token_rms}")
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {self.num_queries}")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0 disables LoRA), got {self.lora_r}")
        if not 0.0 <= self.mask_threshold <= 1.0 or not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(
                f"score_threshold and mask_threshold are probabilities in [0, 1], got "
                f"{self.score_threshold} and {self.mask_threshold}")
        if self.sam3_config is not None and self.image_size is not None and not isinstance(self.sam3_config, dict):
            if int(self.image_size) != int(self.sam3_config.image_size):
                raise ValueError(
                    f"image_size {self.image_size} differs from SAM3's image_size {self.sam3_config.image_size}; "
                    f"SAM3 only accepts square inputs of its configured size")
        if self.vlm_config is not None and not isinstance(self.vlm_config, dict):
            vc = self.vlm_config.vision_config
            unit = vc.patch_size * vc.spatial_merge_size
            if self.inference_mode == "one_pass" and self.vlm_image_size % unit:
                raise ValueError(f"vlm_image_size {self.vlm_image_size} must be a multiple of patch_size * "
                                 f"spatial_merge_size = {unit}")
        if self.query_token_ids is not None and len(self.query_token_ids) != self.num_queries:
            raise ValueError(f"query_token_ids has {len(self.query_token_ids)} ids for num_queries={self.num_queries}")

    @property
    def sam3_hidden_size(self) -> int:
        return self.sam3_config.detector_config.detr_decoder_config.hidden_size

    @property
    def vlm_hidden_size(self) -> int:
        return self.vlm_config.text_config.hidden_size


def set_dtype_everywhere(config: PreTrainedConfig, dtype) -> None:
    """Set `dtype` on a config and all its nested sub-configs. transformers' from_pretrained(dtype=...) only sets
    the first level, and sub-models built with `from_config` deeper down (Qwen3-VL's towers, SAM3's ViT) would
    otherwise be created in the dtype their saved sub-config names."""
    config.dtype = dtype
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if isinstance(sub, PreTrainedConfig):
            set_dtype_everywhere(sub, dtype)


AutoConfig.register("instructsam", InstructSAMConfig, exist_ok=True)

__all__ = ["InstructSAMConfig", "ATTENTION_MODES", "DIT_VARIANTS", "DIT_TEXT_SOURCES", "set_dtype_everywhere"]
