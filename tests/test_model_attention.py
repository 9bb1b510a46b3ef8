"""Hybrid attention: image/instruction tokens causal and blind to the queries; queries see everything."""
from __future__ import annotations

import pytest
import torch
from model_fixtures import INSTRUCTIONS, load_tiny, random_images

from instructsam.attention import CAUSAL, PAD, QUERY, additive_mask, allowed_pairs


def test_mask_pattern_hybrid_and_causal():
    kinds = torch.tensor([[CAUSAL, CAUSAL, QUERY, QUERY, PAD]])
    hybrid = allowed_pairs(kinds, kinds, "hybrid")[0].int().tolist()
    assert hybrid == [[1, 0, 0, 0, 0],
                      [1, 1, 0, 0, 0],
                      [1, 1, 1, 1, 0],  # query 0 also sees the later query 1
                      [1, 1, 1, 1, 0],
                      [0, 0, 0, 0, 1]]  # padding only sees itself (no all-blocked rows -> no NaN)
    causal = allowed_pairs(kinds, kinds, "causal")[0].int().tolist()
    assert causal[2] == [1, 1, 1, 0, 0]
    # with a cached prefix the query rows are the last rows of the key axis
    prefix = torch.full((1, 3), CAUSAL)
    cached = allowed_pairs(kinds, torch.cat([prefix, kinds], 1), "hybrid")[0].int()
    assert cached[:, :3].tolist() == [[1, 1, 1]] * 4 + [[0, 0, 0]]
    assert torch.equal(cached[:, 3:], torch.tensor(hybrid))
    mask = additive_mask(kinds, kinds, "hybrid", torch.float32)
    assert mask.shape == (1, 1, 5, 5) and mask.dtype == torch.float32
    assert mask[0, 0, 0, 1] == torch.finfo(torch.float32).min and mask[0, 0, 2, 3] == 0
    with pytest.raises(ValueError, match="hybrid"):
        allowed_pairs(kinds, kinds, "bidirectional")


@pytest.mark.parametrize("reuse_prefix", [False, True])
def test_prefix_states_do_not_depend_on_the_queries(reuse_prefix):
    model = load_tiny()
    features = model.encode_image(random_images(1)[0])
    index = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        with_q = model.prompts.encode(INSTRUCTIONS, "referring", with_queries=True)
        without_q = model.prompts.encode(INSTRUCTIONS, "referring", with_queries=False)
        h_with, off = model.language_model_pass(features, with_q, index, reuse_prefix)
        h_without, _ = model.language_model_pass(features, without_q, index, reuse_prefix)
    for row in range(3):
        n_causal = off + int((without_q.suffix_kinds[row] == CAUSAL).sum())
        torch.testing.assert_close(h_with[row, :n_causal], h_without[row, :n_causal], atol=1e-5, rtol=0)


def _query_states_after_changing(model, features, j):
    with torch.no_grad():
        before = model.segment(features, INSTRUCTIONS[:2]).query_states
        model.query_bank.data[j] += 1.0
        after = model.segment(features, INSTRUCTIONS[:2]).query_states
        model.query_bank.data[j] -= 1.0
    return (after - before).abs().amax(dim=(0, 2))  # per query slot


def test_hybrid_queries_see_each_other():
    model = load_tiny(attention_mode="hybrid")
    features = model.encode_image(random_images(1)[0])
    j = 5
    change = _query_states_after_changing(model, features, j)
    assert (change > 1e-4).all(), change  # every query i != j (earlier ones too) reacts to query j


def test_causal_queries_only_see_earlier_queries():
    model = load_tiny(attention_mode="causal")
    features = model.encode_image(random_images(1)[0])
    j = 5
    change = _query_states_after_changing(model, features, j)
    assert (change[:j] == 0).all(), change  # i < j: untouched
    assert (change[j + 1:] > 1e-4).all(), change
