"""The fast engine's decode loop: qwen_tts's talker and code predictor run as direct forwards over their weights.

Per frame: the code predictor's 15 residual codebooks (one 2-position prefill + 14 single steps, each with its
own per-group head and embedding, in a small cache of its own), the sum of the frame's 16 codebook embeddings
plus the next trailing-text embedding, then one talker step (transformer + codec head) into a KV cache sized
from the prompt and the batch's frame budget, and the next first-codebook token. No Hugging Face `generate`,
no mask or rotary rebuilding per step: rotary tables are computed once with the modules' own rotary
embeddings (qwen's 3-D rope with all three position rows equal, which is what its talker feeds), positions
are each row's own (left padding shifts nothing), masks are views of one validity table.

A frame is one call, `steps.frame`: the code predictor's pass, then the talker step that the next frame starts from
(`EagerSteps`; `audio.engine.graphs` replays the same body as one CUDA graph). Rows finish at EOS or at their own
frame budget. The budget is known on the host, so such a row leaves every batch tensor after its last frame. EOS is
not: each row's EOS frame is recorded on the device, and the host reads it (with the frames' first-codebook tokens,
for the guard) every `READ_EVERY_FRAMES` frames without stopping the device (`audio.engine.host_reads`: pinned
memory and an event on CUDA). Until a read lands, a row past its EOS keeps generating; its frames past the end are
dropped before they are handed out, and the row leaves the batch once the host knows. So no frame syncs, and the
frames handed out are exactly those of a loop that syncs. Sampling is `audio.engine.sampling`: per-row parameters
and per-row uniforms. `FrameLoop.run` hands frames out as soon as a read covers them, so they can be decoded and
streamed while the rest is generated.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from audio.engine.host_reads import HostRead, HostReader
from audio.engine.sampling import RowSampling, Warp, apply_repetition_penalty, draw_uniforms, warp_and_sample

READ_EVERY_FRAMES = 4  # the host reads the rows' EOS frames (and first codes) after frame 0, then every 4 frames
MAX_READS_IN_FLIGHT = 2  # beyond this the host waits for the oldest read: at most 12 frames past an EOS
NEVER = 1 << 62  # a row's EOS frame before it has one


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3TTSRMSNorm. In fp32 torch's fused kernel does the same arithmetic (bit-identical, checked on CPU) in
    one op; in bf16/fp16 qwen's own order matters (fp32 statistics, cast back, then the weight)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """`sin` with its first half negated, so that `rotate` needs one roll instead of rotate_half's slices."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """qwen's `x * cos + rotate_half(x) * sin`: rotate_half(x) = [-x2, x1] = roll(x, half) * [-1, 1]."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


def attend_one(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Attention of one query position per row: `q` [B, H, 1, D] over `keys`/`values` [B, KV, S, D], H a multiple
    of KV (grouped-query), `mask` None or [B, 1, 1, S]. The H / KV query heads that share a KV head are folded
    into that head's query positions ([B, KV, H / KV, D]), so heads are equal and no `enable_gqa` is needed: fused
    kernels take it (flash without a mask, memory-efficient with one), where `enable_gqa` with a mask leaves only
    the math kernel, which copies K and V once per query group, every step. Returns [B, H, 1, D]."""
    batch, heads, _, head_dim = q.shape
    kv_heads = keys.shape[1]
    folded = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    out = F.scaled_dot_product_attention(folded, keys, values, attn_mask=mask, scale=scale)
    return out.reshape(batch, heads, 1, head_dim)


def _fuse(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """One tensor of `params` stacked on dim 0; the modules' parameters become views of it (same values, so
    the reference path is unchanged), so the weights are held once."""
    fused = torch.cat([p.detach() for p in params])
    start = 0
    for p in params:
        p.data = fused[start : start + p.shape[0]]
        start += p.shape[0]
    return fused


class Layer:
    """One decoder layer's weights (talker and code predictor layers share a shape), with q/k/v and gate/up fused."""

    def __init__(self, layer: Any, config: Any):
        attn = layer.self_attn
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.eps = config.rms_norm_eps
        self.qkv = _fuse([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
        self.qkv_bias = _fuse(biases) if biases[0] is not None else None
        self.o = attn.o_proj.weight
        self.o_bias = attn.o_proj.bias
        self.q_norm = attn.q_norm.weight
        self.k_norm = attn.k_norm.weight
        self.ln1 = layer.input_layernorm.weight
        self.ln2 = layer.post_attention_layernorm.weight
        self.gate_up = _fuse([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight])
        self.down = layer.mlp.down_proj.weight
        self.act = layer.mlp.act_fn
        self.gqa = self.heads != self.kv_heads

    def __call__(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor],
        slot: int | torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """`x` [B, T, H] at cache slots `slot..slot+T`; attends to slots `..slot+T` under `mask` (None: causal).
        With a tensor `slot` (one position) it attends to the cache's first `mask.shape[-1]` slots under `mask`
        (a graph's length bucket: the live slots, rounded up)."""
        batch, length, _ = x.shape
        h = rms_norm(x, self.ln1, self.eps)
        qkv = F.linear(h, self.qkv, self.qkv_bias).view(batch, length, -1, self.head_dim)
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=2)
        q = rotate(rms_norm(q, self.q_norm, self.eps).transpose(1, 2), cos, sin)
        k = rotate(rms_norm(k, self.k_norm, self.eps).transpose(1, 2), cos, sin)
        k_cache, v_cache = cache
        if isinstance(slot, int):
            end = slot + length
            k_cache[:, :, slot:end] = k
            v_cache[:, :, slot:end] = v.transpose(1, 2)
            keys, values = k_cache[:, :, :end], v_cache[:, :, :end]
        else:  # graph-friendly: the slot is a tensor, attention spans the mask's slots
            k_cache.index_copy_(2, slot, k)
            v_cache.index_copy_(2, slot, v.transpose(1, 2))
            span = mask.shape[-1]
            keys, values = k_cache[:, :, :span], v_cache[:, :, :span]
        if length == 1:
            out = attend_one(q, keys, values, mask, self.scaling)
        elif mask is None:  # the code predictor's causal prefill: flash takes grouped queries without a mask
            out = F.scaled_dot_product_attention(
                q, keys, values, is_causal=True, scale=self.scaling, enable_gqa=self.gqa
            )
        else:  # the talker's prefill (left padding): K/V repeated per query group once, so heads are equal
            groups = self.heads // self.kv_heads
            keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling)
        x = x + F.linear(out.transpose(1, 2).reshape(batch, length, -1), self.o, self.o_bias)
        gate, up = F.linear(rms_norm(x, self.ln2, self.eps), self.gate_up).chunk(2, dim=-1)
        return x + F.linear(self.act(gate) * up, self.down)


def _new_cache(layers: Sequence[Layer], batch: int, length: int, like: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    shape = (batch, layers[0].kv_heads, length, layers[0].head_dim)
    return [(like.new_zeros(shape), like.new_zeros(shape)) for _ in layers]


@dataclass
class RowPrompt:
    """One row's talker prompt, as qwen_tts built it (unpadded)."""

    embeds: torch.Tensor  # [T, H]
    trailing: torch.Tensor  # [L, H]; past its end the loop feeds `FrameLoop.pad_embed`


@dataclass
class Step:
    """What one step of `FrameLoop.run` produced: frame `index` of each row in `rows` (batch positions)."""

    index: int
    rows: list[int]
    codes: torch.Tensor  # [len(rows), num_code_groups] int64
    first_codes_host: np.ndarray | None = None  # codes[:, 0] on the host, when the loop has read them
    made: Any = None  # CUDA: the read's event, recorded after this frame (not after the frames queued since)


class CodePredictor:
    """The residual codebooks of one frame: 15 direct forwards of the code predictor."""

    def __init__(self, talker: Any):
        cp = talker.code_predictor
        config = cp.config
        self.groups = config.num_code_groups
        self.layers = [Layer(layer, config) for layer in cp.model.layers]
        self.eps = config.rms_norm_eps
        self.norm = cp.model.norm.weight
        self.heads = [head.weight for head in cp.lm_head]
        self.embeddings = [emb.weight for emb in cp.model.codec_embedding]
        self.projection = cp.small_to_mtp_projection
        self.first_embedding = talker.model.codec_embedding.weight
        positions = torch.arange(self.groups, device=self.norm.device).unsqueeze(0)
        probe = torch.zeros(1, dtype=self.norm.dtype, device=self.norm.device)
        cos, sin = cp.model.rotary_emb(probe, positions)  # [1, groups, D], the module's own arithmetic
        self.cos, self.sin = cos.unsqueeze(1), signed_sin(sin).unsqueeze(1)

    def __call__(
        self, past_hidden: torch.Tensor, first: torch.Tensor, uniforms: torch.Tensor, warp: Warp
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual codes [n, groups-1] for rows whose talker hidden is `past_hidden` [n, H] and first code
        `first` [n]; also the sum of the frame's codebook embeddings [n, H] (the talker's next input)."""
        n = past_hidden.shape[0]
        first_embed = F.embedding(first, self.first_embedding)
        embeds = [first_embed]
        x = self.projection(torch.stack((past_hidden, first_embed), dim=1))
        cache = _new_cache(self.layers, n, self.groups, x)
        codes = []
        slot = 0
        for group in range(self.groups - 1):
            length = x.shape[1]
            cos, sin = self.cos[:, :, slot : slot + length], self.sin[:, :, slot : slot + length]
            for layer, layer_cache in zip(self.layers, cache, strict=True):
                x = layer(x, cos, sin, layer_cache, slot, None)
            slot += length
            hidden = rms_norm(x[:, -1], self.norm, self.eps)
            logits = F.linear(hidden, self.heads[group]).float()
            code = warp_and_sample(logits, warp, uniforms[:, group])
            codes.append(code)
            embed = F.embedding(code, self.embeddings[group])
            embeds.append(embed)
            x = self.projection(embed.unsqueeze(1))
        return torch.stack(codes, dim=1), torch.stack(embeds, dim=1).sum(1)


class FrameLoop:
    """Generates codec frames for a batch of rows on one loaded talker. Holds weight views, no per-call state."""

    def __init__(self, talker: Any, *, eos_token_id: int, suppress_tokens: Sequence[int], min_new_tokens: int):
        config = talker.config
        if getattr(config, "sliding_window", None) is not None:
            raise ValueError("the fast engine does not implement sliding-window attention")
        self.talker = talker
        self.layers = [Layer(layer, config) for layer in talker.model.layers]
        self.eps = config.rms_norm_eps
        self.norm = talker.model.norm.weight
        self.codec_head = talker.codec_head.weight
        self.vocab = self.codec_head.shape[0]
        self.groups = config.num_code_groups
        self.eos = eos_token_id
        self.min_new_tokens = min_new_tokens
        self.device = self.codec_head.device
        self.dtype = self.codec_head.dtype
        suppress = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
        suppress[list(suppress_tokens)] = True
        self.suppress = suppress
        self.suppress_eos = suppress.clone()
        self.suppress_eos[eos_token_id] = True
        self.code_predictor = CodePredictor(talker)
        self.steps: EagerSteps = EagerSteps(self)  # audio.engine.graphs swaps in CUDA-graph replays
        self.reader_factory: Callable[[torch.device], HostReader] = HostReader  # tests swap in lagging reads
        self.read_every_frames = READ_EVERY_FRAMES
        self._rope_len = 0
        self._cos = self._sin = torch.empty(0)

    def rope(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [length, D] for positions 0..length-1, grown on demand."""
        if length > self._rope_len:
            size = max(length, 2 * self._rope_len, 512)
            positions = torch.arange(size, device=self.device).view(1, 1, -1).expand(3, 1, -1)
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = self.talker.model.rotary_emb(probe, positions)  # [3, 1, size, D]
            # With the three position rows equal, qwen's interleaved mrope selection returns row 0 unchanged.
            self._cos, self._sin, self._rope_len = cos[0, 0], signed_sin(sin[0, 0]), size
        return self._cos[:length], self._sin[:length]

    def head(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = rms_norm(hidden, self.norm, self.eps)
        return hidden, F.linear(hidden, self.codec_head).float()

    def first_code(
        self,
        logits: torch.Tensor,
        seen: torch.Tensor,
        penalty: torch.Tensor,
        suppress: torch.Tensor,
        warp: Warp,
        uniforms: torch.Tensor,
    ) -> torch.Tensor:
        """The next first-codebook id per row; marks it in `seen` (in place)."""
        logits = apply_repetition_penalty(logits, seen, penalty).masked_fill(suppress, float("-inf"))
        code = warp_and_sample(logits, warp, uniforms)
        seen.scatter_(1, code.unsqueeze(1), True)
        return code

    def suppressed(self, step: int) -> torch.Tensor:
        """The ids barred at frame `step`: EOS too before `min_new_tokens` frames."""
        return self.suppress_eos if step < self.min_new_tokens else self.suppress

    @torch.inference_mode()
    def run(
        self,
        prompts: Sequence[RowPrompt],
        pad_embed: torch.Tensor,
        budgets: Sequence[int],
        sampling: Sequence[RowSampling],
        seeds: Sequence[int],
    ) -> Iterator[Step]:
        """Frames for each row until its EOS or its budget; yields one `Step` per frame index. Closing the
        iterator stops the generation (cancellation); sending it a set of rows ends those rows after this step."""
        prompt_len, max_frames = max(p.embeds.shape[0] for p in prompts), max(budgets)
        x, live = self._prefill_state(prompts, pad_embed, budgets, sampling, seeds, prompt_len, max_frames)
        cos_table, sin_table = self.rope(prompt_len + max_frames)  # grown once: the frames slice it
        cos = cos_table[live.positions[:, :prompt_len]].unsqueeze(1)
        sin = sin_table[live.positions[:, :prompt_len]].unsqueeze(1)
        causal = torch.ones(prompt_len, prompt_len, dtype=torch.bool, device=self.device).tril_()
        eye = torch.eye(prompt_len, dtype=torch.bool, device=self.device)
        # Padded queries attend to themselves only: their (unused) outputs stay finite, no NaN enters the cache.
        mask = (live.valid[:, None, None, :prompt_len] & causal) | eye
        for layer, layer_cache in zip(self.layers, live.cache, strict=True):
            x = layer(x, cos, sin, layer_cache, 0, mask)
        live.hidden, logits = self.head(x[:, -1])
        live.first = self.first_code(
            logits, live.seen, live.penalty, self.suppressed(0), live.warp, live.uniforms[:, 0, 0]
        )

        out = _Outbox(self.reader_factory(self.device), len(prompts), self.device, self.read_every_frames)
        for step in range(max_frames):
            out.mark_ends(live, step, self.eos)
            # One call per frame: its codes, and the talker step that starts the next frame (skipped, where it
            # can be, once no row can need it).
            need_next = any(out.goes_on(row, b, step) for row, b in zip(live.rows, live.budget, strict=True))
            out.add(Step(step, live.rows, self.steps.frame(live, step, prompt_len, need_next=need_next)))
            yield from out.hand_out()
            # Rows whose budget is spent need no next frame, nor do rows the host knows ended or a guard stopped.
            going_on = [
                i for i, (row, b) in enumerate(zip(live.rows, live.budget, strict=True)) if out.goes_on(row, b, step)
            ]
            if len(going_on) < len(live.rows):
                if not going_on:
                    break
                live = live.keep(going_on, out.reader.upload(going_on))
        yield from out.finish()

    def _prefill_state(
        self,
        prompts: Sequence[RowPrompt],
        pad_embed: torch.Tensor,
        budgets: Sequence[int],
        sampling: Sequence[RowSampling],
        seeds: Sequence[int],
        prompt_len: int,
        max_frames: int,
    ) -> tuple[torch.Tensor, _Rows]:
        """The left-padded prompt batch [B, prompt_len, H] and the rows' state for `prompt_len + max_frames` slots."""
        batch, device = len(prompts), self.device
        lengths = [p.embeds.shape[0] for p in prompts]
        total = prompt_len + max_frames
        hidden_size = pad_embed.shape[-1]
        # Left-pad the prompts; each row keeps its own positions (padding shifts nothing).
        x = torch.zeros(batch, prompt_len, hidden_size, dtype=self.dtype, device=device)
        trailing = pad_embed.reshape(1, 1, hidden_size).expand(batch, max_frames, hidden_size).clone()
        for i, p in enumerate(prompts):
            x[i, prompt_len - lengths[i] :] = p.embeds
            n = min(p.trailing.shape[0], max_frames)
            trailing[i, :n] = p.trailing[:n]
        pads = torch.tensor([prompt_len - n for n in lengths], device=device).unsqueeze(1)
        slots = torch.arange(total, device=device).unsqueeze(0)
        cp_vocab = self.code_predictor.heads[0].shape[0]
        # Column 0 of a step's uniforms samples the first codebook, the others the residual codebooks.
        drawn = draw_uniforms(seeds, [b + 1 for b in budgets], self.groups)
        uniforms = torch.stack([F.pad(u, (0, 0, 0, max_frames + 1 - u.shape[0])) for u in drawn]).to(device)
        rows = _Rows(
            rows=list(range(batch)),
            row_index=torch.arange(batch, device=device),
            budget=list(budgets),
            pads=pads.squeeze(1),
            valid=slots >= pads,
            positions=(slots - pads).clamp_(min=0),
            trailing=trailing,
            uniforms=uniforms,
            seen=torch.zeros(batch, self.vocab, dtype=torch.bool, device=device),
            penalty=torch.tensor([s.repetition_penalty for s in sampling], device=device).unsqueeze(1),
            warp=Warp.build([(s.do_sample, s.temperature, s.top_k, s.top_p) for s in sampling], self.vocab, device),
            sub_warp=Warp.build(
                [(s.sub_do_sample, s.sub_temperature, s.sub_top_k, s.sub_top_p) for s in sampling], cp_vocab, device
            ),
            cache=self.steps.new_cache(batch, total, x),
            select_cache=self.steps.select_cache,
        )
        return x, rows


@dataclass
class _Rows:
    """The live rows' state, batch-first; `keep` drops finished rows from all of it at once."""

    rows: list[int]  # each live row's position in the original batch
    row_index: torch.Tensor  # the same, on the device
    budget: list[int]  # each live row's frame budget
    pads: torch.Tensor  # [B] each row's left padding: its first valid cache slot
    valid: torch.Tensor  # [B, total] cache slots a row may attend to
    positions: torch.Tensor  # [B, total] each slot's rope position for the row
    trailing: torch.Tensor  # [B, frames, H]
    uniforms: torch.Tensor  # [B, frames + 1, groups]
    seen: torch.Tensor  # [B, vocab] first-codebook ids generated so far (repetition penalty)
    penalty: torch.Tensor
    warp: Warp
    sub_warp: Warp
    cache: list[tuple[torch.Tensor, torch.Tensor]]
    select_cache: Callable[[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor], list[tuple[torch.Tensor, ...]]]
    hidden: torch.Tensor | None = None  # [B, H] the talker's last (normed) hidden state
    first: torch.Tensor | None = None  # [B] the last sampled first-codebook id

    def keep(self, indices: list[int], index: torch.Tensor) -> _Rows:
        """These rows only (batch positions `indices`, and the same on the device: `index`)."""
        pick = lambda t: t[index]  # noqa: E731
        return _Rows(
            rows=[self.rows[i] for i in indices],
            row_index=pick(self.row_index),
            budget=[self.budget[i] for i in indices],
            pads=pick(self.pads),
            valid=pick(self.valid),
            positions=pick(self.positions),
            trailing=pick(self.trailing),
            uniforms=pick(self.uniforms),
            seen=pick(self.seen),
            penalty=pick(self.penalty),
            warp=self.warp.select(index),
            sub_warp=self.sub_warp.select(index),
            cache=self.select_cache(self.cache, index),
            select_cache=self.select_cache,
            hidden=pick(self.hidden),
            first=pick(self.first),
        )


@dataclass
class _Read:
    """A read in flight: the EOS frame of every row of the batch, then the first codes of `steps`."""

    host: HostRead
    steps: list[Step]


@dataclass
class _Outbox:
    """Frames made but not handed out yet, and what the host knows of the rows' ends. A frame is handed out once a
    read covers it: by then the host knows whether its row had ended (EOS) before it, and drops it if so."""

    reader: HostReader
    batch: int
    device: torch.device
    read_every_frames: int
    ends: torch.Tensor = field(init=False)  # [batch] each row's EOS frame on the device (NEVER: none yet)
    ended: dict[int, int] = field(default_factory=dict)  # the EOS frames the host has read
    stopped: dict[int, int] = field(default_factory=dict)  # rows a guard stopped -> their frame count
    unread: list[Step] = field(default_factory=list)  # made since the last read was issued
    reads: deque[_Read] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.ends = torch.full((self.batch,), NEVER, dtype=torch.long, device=self.device)

    def mark_ends(self, live: _Rows, step: int, eos: int) -> None:
        """Rows whose last first code is EOS end at frame `step` (the first time only)."""
        at = torch.where(live.first == eos, step, NEVER)
        self.ends.scatter_reduce_(0, live.row_index, at, reduce="amin")

    def add(self, step: Step) -> None:
        self.unread.append(step)
        if step.index % self.read_every_frames == 0:
            self._issue()

    def _issue(self) -> None:
        if not self.unread:
            return
        # One copy: the ends, then the first codes of the frames it covers (the guard's tokens).
        values = torch.cat([self.ends, *(s.codes[:, 0] for s in self.unread)])
        self.reads.append(_Read(self.reader.read(values), self.unread))
        self.unread = []

    def hand_out(self, *, wait: bool = False) -> Iterator[Step]:
        """The frames of every read that has landed (waiting for the oldest while too many are in flight, or for
        all with `wait`), less those past a row's end. A set of rows sent back stops them after that frame."""
        while self.reads:
            read = self.reads[0]
            if wait or len(self.reads) > MAX_READS_IN_FLIGHT:
                read.host.wait()
            elif not read.host.ready():
                return
            self.reads.popleft()
            values = read.host.values.numpy()
            for row in np.nonzero(values[: self.batch] != NEVER)[0].tolist():
                self.ended[row] = int(values[row])
            at = self.batch
            for step in read.steps:
                n = len(step.rows)
                step.first_codes_host = values[at : at + n]
                step.made = read.host.event
                at += n
                step = self._past_ends_dropped(step)
                if step is None:
                    continue
                stop = yield step
                for row in stop or ():
                    self.stopped[row] = min(self.stopped.get(row, NEVER), step.index + 1)

    def _past_ends_dropped(self, step: Step) -> Step | None:
        keep = [
            i
            for i, row in enumerate(step.rows)
            if step.index < self.ended.get(row, NEVER) and step.index < self.stopped.get(row, NEVER)
        ]
        if len(keep) == len(step.rows):
            return step
        if not keep:
            return None
        first_host = step.first_codes_host[keep] if step.first_codes_host is not None else None
        codes = step.codes[self.reader.upload(keep)]
        return Step(step.index, [step.rows[i] for i in keep], codes, first_host, step.made)

    def goes_on(self, row: int, budget: int, step: int) -> bool:
        """Whether `row` needs frame `step + 1`."""
        return min(budget, self.ended.get(row, NEVER), self.stopped.get(row, NEVER)) > step + 1

    def finish(self) -> Iterator[Step]:
        """Every frame still held, once the reads covering them land."""
        self._issue()
        yield from self.hand_out(wait=True)


class EagerSteps:
    """The loop's per-frame computation and its cache handling, run eagerly."""

    def __init__(self, loop: FrameLoop):
        self.loop = loop

    def new_cache(self, batch: int, total: int, like: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return _new_cache(self.loop.layers, batch, total, like)

    def select_cache(self, cache: list[tuple[torch.Tensor, torch.Tensor]], keep: torch.Tensor) -> list[tuple]:
        return [(k[keep], v[keep]) for k, v in cache]

    def frame(self, live: _Rows, step: int, prompt_len: int, *, need_next: bool) -> torch.Tensor:
        """Frame `step`'s codes [B, groups] (the code predictor's pass over the rows' last hidden state and first
        code); then, with `need_next`, the talker step of that frame's embeddings, which leaves the next hidden
        state and first code in `live`."""
        loop = self.loop
        residual, frame_embed = loop.code_predictor(live.hidden, live.first, live.uniforms[:, step, 1:], live.sub_warp)
        codes = torch.cat((live.first.unsqueeze(1), residual), dim=1)
        if need_next:
            slot = prompt_len + step
            x = (frame_embed + live.trailing[:, step]).unsqueeze(1)
            cos_table, sin_table = loop.rope(slot + 1)
            cos = cos_table[live.positions[:, slot]].view(-1, 1, 1, cos_table.shape[-1])
            sin = sin_table[live.positions[:, slot]].view(-1, 1, 1, sin_table.shape[-1])
            mask = live.valid[:, None, None, : slot + 1]
            for layer, layer_cache in zip(loop.layers, live.cache, strict=True):
                x = layer(x, cos, sin, layer_cache, slot, mask)
            live.hidden, logits = loop.head(x[:, -1])
            live.first = loop.first_code(
                logits, live.seen, live.penalty, loop.suppressed(step + 1), live.warp, live.uniforms[:, step + 1, 0]
            )
        return codes
