"""One-query attention with the query groups folded (`decode_loop.attend_one`): heads equal, no `enable_gqa`, so
fused kernels can take it. Against today's path (`scaled_dot_product_attention(..., enable_gqa=True)`) on the real
heads (16 query / 8 KV heads of 128): masked (left padding, as the talker's steps) and unmasked (the code
predictor's steps), and under the flash kernel alone where no mask is given."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from audio.engine.decode_loop import attend_one

MAX_DIFF_FP32 = 1e-6


def _inputs(batch: int, slots: int, masked: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, 16, 1, 128, generator=g)
    k = torch.randn(batch, 8, slots, 128, generator=g)
    v = torch.randn(batch, 8, slots, 128, generator=g)
    if not masked:
        return q, k, v, None
    pads = torch.arange(batch) * 3  # row i's prompt is left-padded by 3 * i slots
    mask = (torch.arange(slots).unsqueeze(0) >= pads.unsqueeze(1))[:, None, None, :]
    return q, k, v, mask


@pytest.mark.parametrize("masked", [True, False], ids=["talker-masked", "predictor-unmasked"])
@pytest.mark.parametrize("batch,slots", [(1, 7), (4, 40), (8, 129)])
def test_folded_groups_equal_grouped_query_attention(masked, batch, slots):
    q, k, v, mask = _inputs(batch, slots, masked)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=128**-0.5, enable_gqa=True)
    got = attend_one(q, k, v, mask, 128**-0.5)
    assert got.shape == want.shape == (batch, 16, 1, 128)
    assert (got - want).abs().max().item() <= MAX_DIFF_FP32
    # The groups really are the grouped-query mapping: query head h reads KV head h // 2.
    repeated = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), attn_mask=mask, scale=128**-0.5
    )
    assert (got - repeated).abs().max().item() <= MAX_DIFF_FP32


def test_without_a_mask_the_flash_kernel_takes_it():
    q, k, v, _ = _inputs(2, 33, masked=False)
    want = F.scaled_dot_product_attention(q, k, v, scale=0.1, enable_gqa=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        got = attend_one(q, k, v, None, 0.1)
    assert (got - want).abs().max().item() <= MAX_DIFF_FP32
