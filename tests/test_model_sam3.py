"""SAM3 inside InstructSAM: the external-query detector path, frozen-SAM3 gradients, the shared tracker."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from model_fixtures import INSTRUCTIONS, load_tiny, random_images, tiny_dir
from transformers import Sam3Model, Sam3TrackerVideoModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import Sam3TrackerVideoInferenceSession

from instructsam.preprocess import to_image_list, to_square_pixels
from instructsam.sam3_queries import detect_with_queries


def test_external_queries_reproduce_sam3_forward_exactly():
    model = load_tiny()
    reference = Sam3Model.from_pretrained(tiny_dir() / "sources" / "sam3").eval()  # detector of the source dir
    det = model.detector
    torch.manual_seed(0)
    size = model.config.image_size
    pixels = torch.randn(2, 3, size, size)
    text = torch.randn(2, 5, det.config.detr_decoder_config.hidden_size)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # padding in the second prompt
    with torch.no_grad():
        ref = reference(pixel_values=pixels, text_embeds=BaseModelOutputWithPooling(pooler_output=text),
                        attention_mask=mask)
        vision = det.get_vision_features(pixel_values=pixels)
        dec = det.detr_decoder
        out = detect_with_queries(det, vision, text, mask.bool(),
                                  dec.query_embed.weight.expand(2, -1, -1),
                                  dec.reference_points.weight.sigmoid().expand(2, -1, -1))
    assert torch.equal(out.pred_masks, ref.pred_masks)
    assert torch.equal(out.pred_boxes, ref.pred_boxes)
    assert torch.equal(out.pred_logits, ref.pred_logits)
    assert torch.equal(out.presence_logits, ref.presence_logits)
    assert torch.equal(out.semantic_seg, ref.semantic_seg)
    assert out.all_pred_boxes.shape == (dec.config.num_layers, 2, dec.config.num_queries, 4)


def test_mask_loss_trains_queries_projector_lora_and_not_sam3():
    model = load_tiny().train()
    images = random_images(2)
    out = model(images, INSTRUCTIONS[:2])
    target = (torch.rand_like(out.mask_logits) > 0.5).float()
    F.binary_cross_entropy_with_logits(out.mask_logits, target).backward()

    assert model.query_bank.grad is not None and model.query_bank.grad.abs().sum() > 0
    for name, p in model.projector.named_parameters():
        if name.startswith("box_mlp.fc1"):
            continue  # receives gradient only once box_mlp.fc2 (zero-initialised) is non-zero
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    lora_b = [(n, p) for n, p in model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 3 * 7  # 3 layers x q,k,v,o,gate,up,down
    for name, p in lora_b:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in model.sam3.named_parameters():
        assert p.grad is None and not p.requires_grad, name
    assert not model.sam3.training  # frozen SAM3 stays in eval mode (no dropout) while training

    # lora_A gets gradient once lora_B has moved away from its zero initialisation
    torch.optim.SGD([p for _, p in lora_b], lr=1.0).step()
    model.zero_grad()
    out = model(images, INSTRUCTIONS[:2])
    F.binary_cross_entropy_with_logits(out.mask_logits, target).backward()
    lora_a = [(n, p) for n, p in model.named_parameters() if "lora_A" in n]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in lora_a)


def test_tracker_runs_on_cached_features_like_the_standalone_tracker():
    """The composed tracker has no vision encoder of its own: fed the features encode_image cached, it gives
    exactly what SAM3's standalone tracker (loaded from the same directory, running its own ViT) gives."""
    model = load_tiny()
    assert model.tracker.vision_encoder is None
    standalone = Sam3TrackerVideoModel.from_pretrained(tiny_dir() / "sources" / "sam3").eval()
    size = model.config.image_size
    frames = random_images(3, sizes=((90, 120),))

    def new_session():
        session = Sam3TrackerVideoInferenceSession(video_height=90, video_width=120, dtype=torch.float32)
        obj_idx = session.obj_id_to_idx(7)
        prompt = torch.zeros(1, 1, size, size)
        prompt[..., 30:70, 40:80] = 1
        session.add_mask_inputs(obj_idx, 0, prompt)
        session.obj_with_new_inputs = [7]
        return session

    ours, theirs = new_session(), new_session()
    with torch.no_grad():
        for i, frame in enumerate(frames):
            features = model.encode_image(frame)
            ours.cache.cache_vision_features(i, model.tracker_features(features))  # as TrackerSession does
            out = model.run_tracker(ours, i)
            pixels = to_square_pixels(to_image_list(frame), size, model.config.sam3_image_mean,
                                      model.config.sam3_image_std)
            ref = standalone(inference_session=theirs, frame=pixels[0])
            assert out.object_ids == [7]
            assert torch.equal(out.pred_masks, ref.pred_masks)
            assert torch.equal(out.object_score_logits, ref.object_score_logits)
        assert 0 in features.tracker  # memoised on the features
