"""InstructSAMModel: a Qwen3-VL VLM with K instance-query tokens under hybrid attention, projected into SAM3's
DETR-decoder query space and decoded by SAM3's unchanged detector (+ SAM3's tracker for video), in one pass.

    images ──encode_image──► ImageFeatures (VLM vision tokens + SAM3 ViT/FPN features, computed once)
    ImageFeatures + N instructions ──segment──► InstanceSetOutput (N x K slots), one batched pass
    InstanceSetOutput ──postprocess──► list[Prediction] at the original image resolution
    forward(images, instructions) = encode_image + segment without prefix reuse (the training path)

Components (state-dict prefixes): `vlm` (Qwen3VLForConditionalGeneration, LoRA inside its language model),
`sam3` (Sam3VideoModel: `detector_model`, `tracker_model`, `tracker_neck`, laid out as in facebook/sam3),
`query_bank` (K x d_vlm) and `projector`.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    DynamicCache,
    PreTrainedModel,
    Qwen3VLForConditionalGeneration,
    Sam3VideoModel,
)
from transformers import initialization as init

from instructsam.attention import CAUSAL, PAD, additive_mask
from instructsam.checkpoint import check_instructsam_dir, record_weight_hashes
from instructsam.config import InstructSAMConfig, set_dtype_everywhere
from instructsam.dit_encoder import DITEncoder
from instructsam.errors import CheckpointError, InstructSAMInputError
from instructsam.generation import reference_segment, sequential_positions
from instructsam.lora import add_lora, is_lora_parameter
from instructsam.outputs import ImageFeatures, InstanceSetOutput, Prediction
from instructsam.postprocess import postprocess_instance_sets
from instructsam.preprocess import ImagesInput, patchify_for_qwen, to_image_list, to_square_pixels
from instructsam.prompting import PromptBuilder, TokenizedInstructions
from instructsam.sam3_queries import (QueryProjector, ReferenceProjector, Sam3VisionEncoderOutput, decode_queries,
                                      encode_prompted, select_vision)
from instructsam.tracker_resolution import TrackerResolution


DIT_ENCODER_PREFIX = "sam3.detector_model.vision_encoder.backbone."  # SAM3's ViT, DIT's fusion network
SAM3_TOKENIZER_DIR = "sam3_tokenizer"


class InstructSAMPreTrainedModel(PreTrainedModel):
    config: InstructSAMConfig
    config_class = InstructSAMConfig
    base_model_prefix = "instructsam"
    main_input_name = "images"
    input_modalities = ("image", "text")
    _supports_sdpa = True


def rescale_rms(x: torch.Tensor, rms: float | None) -> torch.Tensor:
    """x with each last-dimension vector rescaled to root mean square `rms` (None: x unchanged)."""
    if rms is None:
        return x
    return x * (rms * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-12)).to(x.dtype)


def require_parameter_prefixes(module: nn.Module, prefixes, setting: str) -> None:
    """Refuse parameter-name prefixes (a freezing setting named `setting`) that match no parameter of `module`: a
    typo would otherwise silently train what it meant to freeze, or the other way round."""
    names = [name for name, _ in module.named_parameters()]
    unmatched = [prefix for prefix in prefixes if not any(n.startswith(prefix) for n in names)]
    if unmatched:
        raise ValueError(f"{setting}: no parameter name starts with {unmatched} (names look like {names[0]!r})")


class InstructSAMModel(InstructSAMPreTrainedModel):
    def __init__(self, config: InstructSAMConfig, vlm: Qwen3VLForConditionalGeneration | None = None,
                 sam3: Sam3VideoModel | None = None):
        """Builds the components from `config`, or takes already-loaded ones (compose: weights unchanged)."""
        super().__init__(config)
        self.vlm = vlm if vlm is not None else Qwen3VLForConditionalGeneration(config.vlm_config)
        self.sam3 = sam3 if sam3 is not None else Sam3VideoModel(config.sam3_config)
        self.query_bank = nn.Parameter(torch.empty(config.num_queries, config.vlm_hidden_size))
        projector = ReferenceProjector if config.inference_mode == "reference" else QueryProjector
        self.projector = projector(config.vlm_hidden_size, config.sam3_hidden_size, config.num_queries)
        self.vlm_image_processor = None  # reference mode: Qwen's own (aspect-preserving) image processor
        self.dit = None  # DIT mode: the instruction inside SAM3's image encoder
        if config.inference_mode == "dit":
            vit = self.detector.vision_encoder.backbone.config
            self.dit = DITEncoder(config.dit_variant, config.sam3_hidden_size, vit.hidden_size, vit.num_hidden_layers,
                                  config.dit_freeze_encoder)
        self.sam3_tokenizer = None  # DIT mode with SAM3's text encoder: its tokenizer (`sam3_tokenizer/`)
        if config.lora_r > 0:
            add_lora(self.vlm.model.language_model, config.lora_r, config.lora_alpha, config.lora_dropout,
                     config.lora_target_modules)
        self.tokenizer = None  # attached by from_pretrained / compose (`attach_tokenizer`)
        self._prompts: PromptBuilder | None = None
        self._tracker_resolution: TrackerResolution | None = None  # set_tracker_scale; None: the detector's size
        self.post_init()
        self.apply_freezing()

    # ---- components -------------------------------------------------------------------------------------------
    @property
    def detector(self):
        """SAM3's detector (`Sam3Model`)."""
        return self.sam3.detector_model

    @property
    def tracker(self):
        """SAM3's tracker (`Sam3TrackerVideoModel` without its own vision encoder: feed it `tracker_features`)."""
        return self.sam3.tracker_model

    @property
    def tracker_input_size(self) -> int:
        """The square input size SAM3's tracker (and the ViT pass it reads) runs at: see set_tracker_scale."""
        res = self._tracker_resolution
        return int(self.tracker.config.image_size) if res is None else res.image_size

    def set_tracker_scale(self, scale: float) -> int:
        """Run SAM3's tracker, and the ViT pass it reads on tracked frames, at `scale` x the detector's token grid
        (1: the same features as the detector; a cost lever, tracker_resolution.py). Model-wide, for inference:
        features encoded before a change cannot be tracked after it. Returns the tracker's input size in effect."""
        res = TrackerResolution(self, scale)
        self._tracker_resolution = None if res.image_size == int(self.tracker.config.image_size) else res
        return self.tracker_input_size

    def _tracker_grid(self):
        res = self._tracker_resolution
        return contextlib.nullcontext() if res is None else res.tracker()

    @property
    def language_model(self):
        return self.vlm.model.language_model

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, InstructSAMModel):
            init.normal_(module.query_bank, mean=0.0, std=std)
            if module.dit is not None:  # it owns no parameter directly, so transformers' walk would skip it
                module.dit.reset_parameters(std, init)
        elif isinstance(module, (QueryProjector, ReferenceProjector, DITEncoder)):
            module.reset_parameters(std, init)
        else:
            super()._init_weights(module)

    def attach_tokenizer(self, tokenizer) -> None:
        reference = self.config.inference_mode == "reference"
        if self.config.query_token_ids is None and not reference:
            raise CheckpointError("config.query_token_ids is not set; compose the model with instructsam_tools.compose")
        self.tokenizer = tokenizer
        self._prompts = PromptBuilder(tokenizer, [] if reference else self.config.query_token_ids,
                                      self.config.max_instruction_chars, self.config.max_instruction_tokens,
                                      use_templates=not reference)
        if reference:
            from transformers import Qwen2VLImageProcessor

            vc = self.config.vlm_config.vision_config
            self.vlm_image_processor = Qwen2VLImageProcessor(
                size={"shortest_edge": self.config.vlm_min_pixels, "longest_edge": self.config.vlm_max_pixels},
                patch_size=vc.patch_size, temporal_patch_size=vc.temporal_patch_size,
                merge_size=vc.spatial_merge_size, image_mean=self.config.vlm_image_mean,
                image_std=self.config.vlm_image_std)

    @property
    def prompts(self) -> PromptBuilder:
        if self._prompts is None:
            raise RuntimeError("no tokenizer attached: load with InstructSAMModel.from_pretrained(dir) or call "
                               "attach_tokenizer(tokenizer)")
        return self._prompts

    # ---- freezing -------------------------------------------------------------------------------------------
    def apply_freezing(self) -> None:
        """SAM3 (and the VLM's own weights) frozen as configured; query bank, projector and LoRA trainable;
        `config.unfreeze_modules` prefixes trainable on top."""
        cfg = self.config
        require_parameter_prefixes(self, cfg.unfreeze_modules, "unfreeze_modules")
        unused = ()  # DIT decodes with SAM3's own queries: the query bank and its projector stay as they are
        if cfg.inference_mode == "dit":
            unused = ("query_bank", "projector.query_", "projector.box_mlp.", "projector.reference_logits")
            if cfg.dit_text_source == "sam3":
                unused += ("vlm.", "projector.")
        for name, p in self.named_parameters():
            if name.startswith(unused):
                trainable = False
            elif name.startswith("sam3."):
                trainable = not cfg.freeze_sam3
            elif name.startswith("vlm.model.visual."):
                trainable = not cfg.freeze_vlm_vision
            elif name.startswith("vlm."):
                trainable = is_lora_parameter(name) or not cfg.freeze_vlm_language
            else:
                trainable = True
            if any(name.startswith(prefix) for prefix in cfg.unfreeze_modules):
                trainable = True
            if cfg.inference_mode == "dit" and name.startswith(DIT_ENCODER_PREFIX):
                trainable = not cfg.dit_freeze_encoder  # DIT's own setting, whatever freeze_sam3/unfreeze_modules say
            p.requires_grad_(trainable)

    def train(self, mode: bool = True):
        """Fully frozen components stay in eval mode (no dropout in weights that are not being trained)."""
        super().train(mode)
        for part in (self.sam3, self.vlm.model.visual):
            if not any(p.requires_grad for p in part.parameters()):
                part.eval()
        # SAM3's tracker is trained through the streaming path the pipeline runs (`run_tracker`), which in
        # transformers computes object scores and binarises prompt masks only in eval mode: train as it infers
        self.sam3.tracker_model.eval()
        return self

    # ---- persistence ----------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        cfg = self.config
        if cfg.inference_mode == "dit" and cfg.dit_text_source == "sam3" and self.sam3_tokenizer is None:
            raise CheckpointError("a DIT model prompting with SAM3's text encoder needs its tokenizer to be saved: set "
                                  "model.sam3_tokenizer (instructsam_tools.to_dit does)")
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)
        if self.sam3_tokenizer is not None:
            self.sam3_tokenizer.save_pretrained(Path(save_directory) / SAM3_TOKENIZER_DIR)
        record_weight_hashes(save_directory)  # from_pretrained checks the weights against these

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load from a local InstructSAM directory (config.json + safetensors + tokenizer). Bad directories raise
        CheckpointNotFoundError / CheckpointError naming the path or file."""
        path = Path(pretrained_model_name_or_path)
        check_instructsam_dir(path, verify_hashes=True)
        kwargs.setdefault("local_files_only", True)
        dtype = kwargs.get("dtype")
        if dtype is not None and dtype != "auto" and not isinstance(dtype, dict):
            # one dtype for every component, not only the first level of sub-models
            config = kwargs.get("config") or InstructSAMConfig.from_pretrained(str(path), local_files_only=True)
            set_dtype_everywhere(config, getattr(torch, dtype) if isinstance(dtype, str) else dtype)
            kwargs["config"] = config
        try:
            loaded = super().from_pretrained(str(path), *args, **kwargs)
        except (OSError, ValueError, RuntimeError) as err:  # corrupt data past the header, shape mismatches
            raise CheckpointError(f"could not load InstructSAM checkpoint {str(path)!r}: {err}") from err
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info
        model.attach_tokenizer(AutoTokenizer.from_pretrained(str(path), local_files_only=True))
        if model.config.inference_mode == "dit" and model.config.dit_text_source == "sam3":
            if not (path / SAM3_TOKENIZER_DIR / "tokenizer_config.json").is_file():
                raise CheckpointError(f"DIT checkpoint {str(path)!r} prompts with SAM3's text encoder but has no "
                                      f"{SAM3_TOKENIZER_DIR}/ (SAM3's tokenizer, e.g. from facebook/sam3's directory)")
            model.sam3_tokenizer = AutoTokenizer.from_pretrained(str(path / SAM3_TOKENIZER_DIR), local_files_only=True)
        model.apply_freezing()
        return loaded

    # ---- images ---------------------------------------------------------------------------------------------
    def _grad_context(self, *modules: nn.Module):
        trainable = torch.is_grad_enabled() and any(p.requires_grad for m in modules for p in m.parameters())
        return torch.enable_grad() if trainable else torch.no_grad()

    def encode_image(self, images: ImagesInput, vlm: bool = True, tracker: bool = True) -> ImageFeatures:
        """Image features for both the VLM and SAM3, computed once per image.

        images: uint8 RGB (H, W, 3), a list of them (any sizes) or a (B, H, W, 3) uint8 tensor. Each is resized
        (stretched) to the square model inputs: config.vlm_image_size for the VLM, config.image_size for SAM3.
        vlm: False skips the VLM's vision tower and SAM3's detector FPN neck, for frames only SAM3's tracker will
        see (it reads the ViT output through its own neck; `segment` then refuses the features).
        Reference mode: the VLM's pixels come from Qwen's image processor (aspect kept, bicubic, one grid per image,
        so a batch must share one size) and SAM3's are resized on the uint8 image, as the published model's are.
        DIT mode: the detector's image features depend on the instruction, so a keyframe keeps SAM3's pixels for
        `segment` (one encoder pass per instruction there) and only the plain ViT runs here, for the tracker
        (tracker=False skips it: the training path); the VLM's tower runs only for dit_text_source "vlm". With
        dit_variant "none" (SAM3's default prompting) the features are the plain ones, computed here once.
        """
        imgs = to_image_list(images)
        sizes = [(int(im.shape[0]), int(im.shape[1])) for im in imgs]
        cfg, device = self.config, self.device
        dit = cfg.inference_mode == "dit"
        fused = dit and cfg.dit_variant != "none"  # image features that depend on the instruction
        image_embeds = deepstack = grid_thw = None
        if vlm and (not dit or cfg.dit_text_source == "vlm"):
            visual = self.vlm.model.visual
            vc = cfg.vlm_config.vision_config
            with self._grad_context(visual):
                if self.vlm_image_processor is not None:
                    patches, grid_thw = self._qwen_patches(imgs, visual.dtype)
                else:
                    pixels = to_square_pixels(imgs, cfg.vlm_image_size, cfg.vlm_image_mean, cfg.vlm_image_std,
                                              device, visual.dtype)
                    patches, grid_thw = patchify_for_qwen(pixels, vc.patch_size, vc.spatial_merge_size,
                                                          vc.temporal_patch_size)
                vis = visual(patches, grid_thw=grid_thw)
                m = len(imgs)
                image_embeds = rescale_rms(vis.pooler_output.reshape(m, -1, vis.pooler_output.shape[-1]),
                                           cfg.vlm_image_token_rms)
                deepstack = [rescale_rms(d.reshape(m, -1, d.shape[-1]), cfg.vlm_image_token_rms)
                             for d in vis.deepstack_features]
        small = self._tracker_resolution if tracker else None  # the tracker's own, smaller ViT pass
        backbone = self.detector.vision_encoder.backbone
        pixels = functools.partial(to_square_pixels, imgs, mean=cfg.sam3_image_mean, std=cfg.sam3_image_std,
                                   device=device, dtype=self.detector.dtype, quantize=cfg.inference_mode == "reference")
        sam_pixels = tracker_vision = None
        with self._grad_context(self.detector.vision_encoder):
            if vlm or small is None:
                sam_pixels = pixels(cfg.image_size)
            if vlm and not fused:
                sam3_vision = self.detector.get_vision_features(pixel_values=sam_pixels)
            elif (fused and not tracker) or small is not None:
                sam3_vision = Sam3VisionEncoderOutput(last_hidden_state=None)  # nothing reads full-size ViT output
            else:  # only the tracker reads these, through its own neck: skip the detector's FPN neck too
                with torch.no_grad() if fused else contextlib.nullcontext():  # DIT trains the ViT in `segment`
                    sam3_vision = Sam3VisionEncoderOutput(last_hidden_state=backbone(sam_pixels).last_hidden_state)
            if small is not None:
                with torch.no_grad(), small.vit():
                    tracker_vision = Sam3VisionEncoderOutput(
                        last_hidden_state=backbone(pixels(small.image_size)).last_hidden_state)
        return ImageFeatures(vlm_image_embeds=image_embeds, vlm_deepstack=deepstack, vlm_grid_thw=grid_thw,
                             sam3=sam3_vision, original_sizes=sizes, sam3_pixels=sam_pixels if fused and vlm else None,
                             tracker_vision=tracker_vision)

    def _qwen_patches(self, imgs: list[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if len({tuple(im.shape) for im in imgs}) > 1:
            raise InstructSAMInputError("reference mode encodes a batch of images of one size only (each image's "
                                        "token count follows its aspect ratio); encode them one by one")
        out = self.vlm_image_processor(images=[im.permute(2, 0, 1) for im in imgs], return_tensors="pt")
        return out.pixel_values.to(self.device, dtype), out.image_grid_thw.to(self.device)

    def tracker_features(self, features: ImageFeatures, index: int = 0) -> dict[str, list[torch.Tensor]]:
        """SAM3-tracker inputs for image `index` of `features`, derived from the cached SAM3 ViT output (the
        ViT is not re-run). Returns {"vision_feats", "vision_pos_embeds"} ready for
        `Sam3TrackerVideoInferenceSession.cache.cache_vision_features(frame_idx, ...)`. Memoised in `features`."""
        source = features.sam3 if features.tracker_vision is None else features.tracker_vision
        grid = self.tracker_input_size // int(self.detector.vision_encoder.backbone.config.patch_size)
        tokens = None if source.last_hidden_state is None else int(source.last_hidden_state.shape[1])
        if tokens != grid * grid:
            raise InstructSAMInputError(f"these features hold {tokens} ViT tokens for the tracker, which now runs on "
                                        f"{grid}x{grid} (set_tracker_scale changed in between?): encode the frame "
                                        "again")
        if index not in features.tracker:
            vision = select_vision(source, torch.tensor([index], device=self.device))
            with self._grad_context(self.sam3.tracker_neck), self._tracker_grid():
                feats, pos = self.sam3.get_vision_features_for_tracker(vision)
            features.tracker[index] = {"vision_feats": feats, "vision_pos_embeds": pos}
        return features.tracker[index]

    def run_tracker(self, session, frame_idx: int):
        """SAM3's tracker on frame `frame_idx` of a streaming `Sam3TrackerVideoInferenceSession` whose features for
        that frame are cached (`session.cache.cache_vision_features(frame_idx, self.tracker_features(...))`; the session
        is the caller's, as in SAM2's predictors: pipeline.tracker_session.TrackerSession). transformers runs the tracker under `torch.inference_mode`;
        when gradients are enabled and tracker weights are trainable (tracker training) the same undecorated
        forward runs with autograd, so training and inference share one computation."""
        # our tracker has no vision encoder and reads only the cached features, so a 1-pixel placeholder stands in
        # for the frame (passing one, with the explicit index, keeps the tracker in streaming mode)
        kwargs = dict(inference_session=session, frame_idx=frame_idx, frame=torch.zeros(3, 1, 1, device=self.device))
        with self._tracker_grid():
            if torch.is_grad_enabled() and any(p.requires_grad for p in self.tracker.parameters()):
                return type(self.tracker).forward.__wrapped__(self.tracker, **kwargs)
            return self.tracker(**kwargs)

    # ---- language model -------------------------------------------------------------------------------------
    def _embed_suffix(self, tokens: TokenizedInstructions) -> torch.Tensor:
        """Token embeddings of the suffixes, with query placeholders replaced by the query bank."""
        ids, kinds = tokens.suffix_ids.to(self.device), tokens.suffix_kinds.to(self.device)
        safe_ids = torch.where(kinds == CAUSAL, ids, torch.full_like(ids, self.prompts.pad_id))
        embeds = self.language_model.embed_tokens(safe_ids)
        slot = torch.full_like(ids, -1)
        k = tokens.query_index.shape[1]
        if k:
            rows = torch.arange(len(ids), device=self.device)[:, None].expand(-1, k)
            slot[rows, tokens.query_index.to(self.device)] = torch.arange(k, device=self.device)
        bank = self.query_bank[slot.clamp(min=0)].to(embeds.dtype)
        return torch.where((slot >= 0)[..., None], bank, embeds)

    def _prefix(self, features: ImageFeatures, image_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix token ids (P,) and their embeddings with the image features spliced in: (len(image_index), P, d)."""
        num_image_tokens = features.vlm_image_embeds.shape[1]
        ids = torch.tensor(self.prompts.prefix_ids(num_image_tokens), device=self.device)
        start = int((ids == self.prompts.image_pad).nonzero()[0])
        text = self.language_model.embed_tokens(ids)
        image = features.vlm_image_embeds[image_index].to(text.dtype)
        n = len(image_index)
        embeds = torch.cat([text[:start].expand(n, -1, -1), image, text[start + num_image_tokens:].expand(n, -1, -1)],
                           dim=1)
        return ids, embeds

    def _rope_positions(self, ids: torch.Tensor, kinds: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        if self.config.inference_mode == "reference" and self.config.reference_positions == "sequential":
            return sequential_positions(ids)
        """Qwen3-VL's 3D rope positions (3, B, L). Explicit, and computed with the 2-D padding mask: the custom 4-D
        attention mask means transformers cannot derive them, and padded suffixes would otherwise shift them."""
        pos, _ = self.vlm.model.get_rope_index(
            ids, mm_token_type_ids=(ids == self.prompts.image_pad).int(), image_grid_thw=grid_thw,
            attention_mask=(kinds != PAD).long())
        return pos

    def _prefix_kv(self, features: ImageFeatures) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """KV cache of the image prefix of every image in `features` (one VLM pass over the image tokens)."""
        if features.prefix_cache is not None:
            return features.prefix_cache
        m = len(features)
        index = torch.arange(m, device=self.device)
        ids, embeds = self._prefix(features, index)
        ids = ids.expand(m, -1)
        kinds = torch.full_like(ids, CAUSAL)
        cache = DynamicCache(config=self.vlm.config.text_config)
        self.language_model(
            inputs_embeds=embeds, attention_mask=additive_mask(kinds, kinds, "causal", embeds.dtype),
            position_ids=self._rope_positions(ids, kinds, features.vlm_grid_thw), past_key_values=cache,
            use_cache=True, visual_pos_masks=ids == self.prompts.image_pad,
            deepstack_visual_embeds=[d.flatten(0, 1).to(embeds.dtype) for d in features.vlm_deepstack])
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        if not torch.is_grad_enabled():  # a cache holding an autograd graph must not outlive this call
            features.prefix_cache = kv
        return kv

    def language_model_pass(self, features: ImageFeatures, tokens: TokenizedInstructions, image_index: torch.Tensor,
                            reuse_prefix: bool) -> tuple[torch.Tensor, int]:
        """Final VLM hidden states for N (image, instruction) sequences and the offset of the suffix in them.

        reuse_prefix=True runs the image prefix once per image (cached in `features`) and only the N suffixes
        against it: hidden states cover the suffix (offset 0). Otherwise the full sequences run (offset P).
        """
        mode = self.config.attention_mode
        n = len(image_index)
        prefix_ids = torch.tensor(self.prompts.prefix_ids(features.vlm_image_embeds.shape[1]), device=self.device)
        p = len(prefix_ids)
        suffix_ids, kinds = tokens.suffix_ids.to(self.device), tokens.suffix_kinds.to(self.device)
        full_ids = torch.cat([prefix_ids.expand(n, -1), suffix_ids], dim=1)
        full_kinds = torch.cat([torch.full((n, p), CAUSAL, device=self.device), kinds], dim=1)
        positions = self._rope_positions(full_ids, full_kinds, features.vlm_grid_thw[image_index])
        suffix_embeds = self._embed_suffix(tokens)
        if reuse_prefix:
            kv = self._prefix_kv(features)
            cache = DynamicCache(ddp_cache_data=[(k[image_index], v[image_index]) for k, v in kv],
                                 config=self.vlm.config.text_config)
            out = self.language_model(
                inputs_embeds=suffix_embeds,
                attention_mask=additive_mask(kinds, full_kinds, mode, suffix_embeds.dtype),
                position_ids=positions[:, :, p:], past_key_values=cache, use_cache=True)
            return out.last_hidden_state, 0
        _, prefix_embeds = self._prefix(features, image_index)
        embeds = torch.cat([prefix_embeds, suffix_embeds], dim=1)
        out = self.language_model(
            inputs_embeds=embeds, attention_mask=additive_mask(full_kinds, full_kinds, mode, embeds.dtype),
            position_ids=positions, use_cache=False, visual_pos_masks=full_ids == self.prompts.image_pad,
            deepstack_visual_embeds=[d[image_index].flatten(0, 1).to(embeds.dtype) for d in features.vlm_deepstack])
        return out.last_hidden_state, p

    # ---- instance sets ----------------------------------------------------------------------------------------
    def _image_index(self, features: ImageFeatures, num_instructions: int,
                     image_index: list[int] | torch.Tensor | None) -> torch.Tensor:
        m = len(features)
        if image_index is None:
            if m == 1:
                return torch.zeros(num_instructions, dtype=torch.long, device=self.device)
            if m == num_instructions:
                return torch.arange(m, device=self.device)
            raise InstructSAMInputError(f"{num_instructions} instructions on {m} images: pass image_index (the "
                                        f"image of each instruction)")
        index = torch.as_tensor(image_index, dtype=torch.long, device=self.device).flatten()
        if len(index) != num_instructions:
            raise InstructSAMInputError(f"image_index has {len(index)} entries for {num_instructions} instructions")
        if len(index) and (index.min() < 0 or index.max() >= m):
            raise InstructSAMInputError(f"image_index {index.tolist()} out of range for {m} images")
        return index

    def segment(self, features: ImageFeatures, instructions: list[str], image_index: list[int] | None = None,
                task: str | list[str] | None = None, reuse_prefix: bool = True,
                denoise_boxes: torch.Tensor | None = None,
                tokens: TokenizedInstructions | None = None,
                max_new_tokens: int | None = None) -> InstanceSetOutput:
        """K instance slots per instruction, all N instructions in one batched pass over cached features.

        image_index: the image (in `features`) of each instruction; default all image 0 for one image, or
            instruction i on image i when there are as many images as instructions.
        task: instruction template ("referring", "reasoning", "multi_instance", "video"), one for all or one per
            instruction; default config.template_task.
        reuse_prefix: run the image prefix once per image and reuse its KV cache for every instruction.
        denoise_boxes: training only, (N, M, 4) cxcywh reference boxes (noised ground truth) for M extra
            "denoising" queries (DN-DETR), decoded in a separate pass on the same encoder output, so the K slots
            never see them. Their content is the instruction's mean slot query; each must segment and score the
            object at its box, a direct, matching-free lesson in separating instances.
        tokens: `self.prompts.encode(instructions, task)` computed earlier (the frame pipeline encodes each
            instruction once, when it arrives, and reuses the tokens on every keyframe).
        max_new_tokens: reference mode: the answer's bound (default config.max_new_tokens); one-pass mode ignores it.
        """
        if self.config.inference_mode == "dit":
            fused = self.config.dit_variant != "none"
            keyframe_part = features.sam3_pixels if fused else features.sam3.fpn_hidden_states
        else:
            keyframe_part = features.vlm_image_embeds
        if keyframe_part is None:
            raise ValueError("these image features were encoded without the VLM part (encode_image(..., vlm=False));"
                             " encode with vlm=True to segment")
        if tokens is None:
            tokens = self.prompts.encode(instructions, task if task is not None else self.config.template_task)
        elif len(tokens.suffix_ids) != len(instructions):
            raise InstructSAMInputError(f"got tokens for {len(tokens.suffix_ids)} instructions, but "
                                        f"{len(instructions)} instructions")
        index = self._image_index(features, len(instructions), image_index)
        if self.config.inference_mode == "reference":
            if denoise_boxes is not None:
                raise InstructSAMInputError("reference mode is inference only: no denoising queries")
            return reference_segment(self, features, instructions, index, tokens,
                                     self.config.max_new_tokens if max_new_tokens is None else max_new_tokens)
        if self.config.inference_mode == "dit":
            vision, prompt, prompt_mask = self._dit_vision(features, instructions, index, tokens, reuse_prefix)
            dec = self.detector.detr_decoder  # SAM3's own queries decode the fused features, as in SAM3
            queries = dec.query_embed.weight.expand(len(index), -1, -1)
            reference_boxes = dec.reference_points.weight.sigmoid().expand(len(index), -1, -1)
            query_states = None
        else:
            query_states, prompt_states, prompt_mask = self._query_and_prompt_states(features, tokens, index,
                                                                                     reuse_prefix)
            proj_dtype = self.query_bank.dtype
            queries, reference_boxes = self.projector.queries(query_states.to(proj_dtype))
            prompt = self.projector.prompt(prompt_states.to(proj_dtype))
            vision = select_vision(features.sam3, index)
        sam_dtype = self.detector.dtype
        # the DETR encoder runs once; the slots (and the denoising queries, apart from them) are decoded against it
        prompted = encode_prompted(self.detector, vision, prompt.to(sam_dtype), prompt_mask)
        pool = self.config.score_from_masks  # a one_pass option (the config refuses it in other modes)
        det = decode_queries(self.detector, prompted, queries.to(sam_dtype), reference_boxes.to(sam_dtype),
                             score_from_masks=pool)
        presence_logits = det.presence_logits[:, 0]
        denoise = {}
        if denoise_boxes is not None:
            content = queries.mean(1, keepdim=True).expand(-1, denoise_boxes.shape[1], -1)
            dn = decode_queries(self.detector, prompted, content.to(sam_dtype),
                                denoise_boxes.to(self.device, sam_dtype), score_from_masks=pool)
            denoise = dict(denoise_mask_logits=dn.pred_masks, denoise_boxes=dn.pred_boxes,
                           denoise_logits=dn.pred_logits)
        return InstanceSetOutput(
            mask_logits=det.pred_masks, boxes=det.pred_boxes, logits=det.pred_logits,
            scores=det.pred_logits.sigmoid() * presence_logits.sigmoid()[:, None],
            presence_logits=presence_logits, presence=presence_logits.sigmoid(),
            aux_boxes=det.all_pred_boxes, aux_logits=det.all_pred_logits,
            aux_presence_logits=det.all_presence_logits[..., 0], reference_boxes=reference_boxes,
            semantic_seg=det.semantic_seg, query_states=query_states, image_index=index, **denoise)

    def _query_and_prompt_states(self, features: ImageFeatures, tokens: TokenizedInstructions, index: torch.Tensor,
                                 reuse_prefix: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Final VLM states of the query tokens (N, K, d), the prompt states (N, L, d) of the instruction's tokens
        from config.prompt_source, and their mask (N, L) bool."""
        hidden, offset = self.language_model_pass(features, tokens, index, reuse_prefix)
        rows = torch.arange(len(index), device=self.device)[:, None]
        prompt_index, mask = tokens.prompt_index.to(self.device), tokens.prompt_mask.to(self.device).bool()
        query_states = hidden[rows, offset + tokens.query_index.to(self.device)]
        in_context = hidden[rows, offset + prompt_index]
        if self.config.prompt_source == "hidden":
            return query_states, in_context, mask
        # the words alone: a VLM whose image tokens swamp its residual stream keeps little of them in context
        ids = tokens.suffix_ids.to(self.device)[rows, prompt_index]
        alone = rescale_rms(self.language_model.embed_tokens(ids), 1.0).to(in_context.dtype)
        if self.config.prompt_source == "embeddings":
            return query_states, alone, mask
        return query_states, torch.cat([in_context, alone], 1), torch.cat([mask, mask], 1)

    def _dit_vision(self, features: ImageFeatures, instructions: list[str], index: torch.Tensor,
                    tokens: TokenizedInstructions, reuse_prefix: bool):
        """DIT: the instruction's word features F_t, SAM3's ViT with them inserted (one pass per instruction) and
        SAM3's FPN neck on its output. Returns the vision features, the detector's prompt and its mask."""
        cfg = self.config
        if cfg.dit_text_source == "sam3":
            if self.sam3_tokenizer is None:
                raise RuntimeError("no SAM3 tokenizer attached (DIT with SAM3's text encoder): load the model with "
                                   "InstructSAMModel.from_pretrained(dir) or set model.sam3_tokenizer")
            # SAM3's text encoder reads at most its context length (32 tokens for facebook/sam3): longer
            # instructions are cut there, a limit of DIT's setting, not of the VLM's
            text_len = cfg.sam3_config.detector_config.text_config.max_position_embeddings
            enc = self.sam3_tokenizer(list(instructions), padding=True, truncation=True, max_length=text_len,
                                      return_tensors="pt").to(self.device)
            with self._grad_context(self.detector.text_encoder, self.detector.text_projection):
                text = self.detector.get_text_features(input_ids=enc.input_ids,
                                                       attention_mask=enc.attention_mask).pooler_output
            text_mask = enc.attention_mask.bool()
        else:
            _, prompt_states, text_mask = self._query_and_prompt_states(features, tokens, index, reuse_prefix)
            text = self.projector.prompt(prompt_states.to(self.query_bank.dtype))
        if cfg.dit_variant == "none":  # SAM3's default prompting: the image features are the cached, plain ones
            return select_vision(features.sam3, index), text, text_mask
        vision_encoder = self.detector.vision_encoder
        pixels = features.sam3_pixels[index]
        with self._grad_context(vision_encoder, self.dit, self.projector, self.detector.text_encoder,
                                self.detector.text_projection, self.vlm):
            hidden, prompt = self.dit(vision_encoder.backbone, pixels, text.to(self.detector.dtype), text_mask)
            side = vision_encoder.config.backbone_config.patch_size
            spatial = hidden.view(len(index), pixels.shape[-2] // side, pixels.shape[-1] // side, -1)
            fpn, fpn_pos = vision_encoder.neck(spatial.permute(0, 3, 1, 2))
        vision = Sam3VisionEncoderOutput(last_hidden_state=hidden, fpn_hidden_states=fpn,
                                         fpn_position_encoding=fpn_pos)
        return vision, prompt, text_mask

    def forward(self, images: ImagesInput | None = None, instructions: list[str] | None = None,
                image_index: list[int] | None = None, task: str | list[str] | None = None,
                features: ImageFeatures | None = None) -> InstanceSetOutput:
        """Training path: encode the images (or take `features`) and segment every instruction with full
        sequences (no KV-cache reuse), so gradients reach LoRA through the image tokens too."""
        if instructions is None:
            raise InstructSAMInputError("forward needs instructions (a list of strings)")
        if features is None:
            if images is None:
                raise InstructSAMInputError("forward needs images or precomputed features")
            features = self.encode_image(images, tracker=False)
        return self.segment(features, instructions, image_index=image_index, task=task, reuse_prefix=False)

    def postprocess(self, output: InstanceSetOutput, original_sizes: list[tuple[int, int]],
                    score_threshold: float | None = None, mask_threshold: float | None = None,
                    nms_iou: float | None = None, max_instances: int | None = None) -> list[Prediction]:
        """One Prediction per instruction at the original resolution (original_sizes: one (H, W) per image, e.g.
        `features.original_sizes`). Unset thresholds default to the config's."""
        cfg = self.config
        return postprocess_instance_sets(
            output, original_sizes,
            score_threshold=cfg.score_threshold if score_threshold is None else score_threshold,
            mask_threshold=cfg.mask_threshold if mask_threshold is None else mask_threshold,
            nms_iou=cfg.nms_iou if nms_iou is None else nms_iou,
            max_instances=cfg.max_instances if max_instances is None else max_instances,
            crop_masks_to_boxes=cfg.crop_masks_to_boxes)

    @torch.no_grad()
    def predict(self, images: ImagesInput, instructions: list[str], task: str | None = None,
                **postprocess_kwargs) -> list[Prediction]:
        """Convenience: instructions on one image (or one instruction per image) -> predictions."""
        features = self.encode_image(images)
        output = self.segment(features, instructions, task=task)
        return self.postprocess(output, features.original_sizes, **postprocess_kwargs)


__all__ = ["InstructSAMModel", "InstructSAMPreTrainedModel", "require_parameter_prefixes"]
