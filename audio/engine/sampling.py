"""Token sampling with the semantics of the Hugging Face processors qwen_tts configures, per row, by inverse CDF.

Talker (first codebook): repetition penalty over the row's generated ids, EOS barred for the first
`min_new_tokens`, suppressed ids, temperature, top-k (ties at the k-th value kept, as `TopKLogitsWarper` does),
top-p when below 1. Code predictor (residual codebooks): temperature, top-k, top-p when below 1. Every parameter
is a per-row tensor, so rows of one batch may come from different jobs. Randomness is a per-row stream of
uniforms drawn up front from the row's own `torch.Generator`: a row samples the same tokens whatever shares its
batch, and the sampling needs no RNG state, which batches and graphs well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class RowSampling:
    """One row's sampling settings, as qwen_tts merges them (explicit value, else generate_config.json, else its
    hard defaults). `top_k` 0 means off; `do_sample` False means greedy."""

    do_sample: bool = True
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    sub_do_sample: bool = True
    sub_temperature: float = 0.9
    sub_top_k: int = 50
    sub_top_p: float = 1.0

    @classmethod
    def from_talker_kwargs(cls, kwargs: dict[str, Any]) -> RowSampling:
        return cls(
            do_sample=bool(kwargs["do_sample"]),
            temperature=float(kwargs["temperature"]),
            top_k=int(kwargs["top_k"] or 0),
            top_p=float(kwargs["top_p"]),
            repetition_penalty=float(kwargs["repetition_penalty"]),
            sub_do_sample=bool(kwargs["subtalker_dosample"]),
            sub_temperature=float(kwargs["subtalker_temperature"]),
            sub_top_k=int(kwargs["subtalker_top_k"] or 0),
            sub_top_p=float(kwargs["subtalker_top_p"]),
        )


@dataclass
class Warp:
    """Temperature, top-k and top-p for a batch of rows: [B, 1] tensors (top_k: [B, 1] int64, vocab = off)."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    any_top_k: bool
    any_top_p: bool
    max_top_k: int
    same_top_k: bool

    @classmethod
    def build(cls, rows: Sequence[tuple[bool, float, int, float]], vocab: int, device: Any) -> Warp:
        temps, ks, ps = [], [], []
        for do_sample, temperature, top_k, top_p in rows:
            if not do_sample:  # greedy: the single best token (HF's argmax, ties aside)
                temperature, top_k, top_p = 1.0, 1, 1.0
            temps.append(temperature)
            ks.append(vocab if top_k <= 0 else min(max(top_k, 1), vocab))
            ps.append(top_p)
        return cls(
            temperature=torch.tensor(temps, dtype=torch.float32, device=device).unsqueeze(1),
            top_k=torch.tensor(ks, dtype=torch.long, device=device).unsqueeze(1),
            top_p=torch.tensor(ps, dtype=torch.float32, device=device).unsqueeze(1),
            any_top_k=min(ks) < vocab,
            any_top_p=min(ps) < 1.0,
            max_top_k=max(ks),
            same_top_k=min(ks) == max(ks),
        )

    def select(self, index: torch.Tensor) -> Warp:
        return Warp(
            self.temperature[index],
            self.top_k[index],
            self.top_p[index],
            self.any_top_k,
            self.any_top_p,
            self.max_top_k,
            self.same_top_k,
        )


def warp_and_sample(logits: torch.Tensor, warp: Warp, uniforms: torch.Tensor) -> torch.Tensor:
    """Sample one id per row from fp32 `logits` [B, V] with uniforms [B] in [0, 1)."""
    scores = logits / warp.temperature
    if warp.any_top_k:
        if warp.same_top_k:  # the k-th best is the smallest of the unsorted top k (cheaper than sorting)
            kth = scores.topk(warp.max_top_k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        else:
            kth = scores.topk(warp.max_top_k, dim=-1).values.gather(1, warp.top_k - 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if warp.any_top_p:
        scores = _top_p(scores, warp.top_p)
    cdf = scores.softmax(dim=-1).cumsum(dim=-1)
    ids = torch.searchsorted(cdf, uniforms.unsqueeze(1) * cdf[:, -1:], right=True)
    return ids.clamp_(max=logits.shape[-1] - 1).squeeze(1)


def _top_p(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    # TopPLogitsWarper: drop the low tail whose total probability is at most 1 - top_p; always keep the best.
    sorted_scores, order = scores.sort(dim=-1, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[:, -1] = False
    return scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """RepetitionPenaltyLogitsProcessor on the ids a row has generated (`seen`: [B, V] bool)."""
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def draw_uniforms(seeds: Sequence[int], steps: Sequence[int], width: int) -> list[torch.Tensor]:
    """Per row, `[steps, width]` uniforms from a CPU generator seeded with the row's seed: the same numbers on
    every device and whatever the batch."""
    out = []
    for seed, n in zip(seeds, steps, strict=True):
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        out.append(torch.rand((n, width), generator=generator, dtype=torch.float32))
    return out
