"""CUDA graphs for the fast engine: one graph per frame, replayed per (batch, length) bucket.

Eager, a frame of the 1.7B model is ~5,900 small kernels (28 talker layers, 15 code-predictor passes of 5 layers,
sampling): launch-bound, which is what a graph removes. One replay does the whole frame: the code predictor's 15
steps with their sampling, the sum of the frame's codebook embeddings plus the trailing text, the talker step, and
the next frame's first-codebook sampling (repetition penalty, EOS barred before `min_new_tokens` through a step
tensor, suppressed ids). Every sampling setting and each row's uniforms are tensors (the general top-k / top-p
path, which selects exactly what the specialised eager path selects), so the graph set is bounded by the buckets:
batch sizes 1, 2, 4, ... up to the configured max batch (rows past the live ones are padding, computed and
ignored), times length buckets 256, 512, ... up to `max_len` slots: a step attends over the live slots rounded up
to a bucket, not the whole cache. The attention mask is built inside the graph from each row's left padding and
the slot (fused kernels take it: query heads are folded onto their KV heads, `decode_loop.attend_one`).

Graphs run over static buffers: one KV cache of `max_batch` x `max_len` shared by every graph (the live rows are
always its first rows), and per batch bucket the rows' state (last hidden state, first code, ids seen, sampling
settings, left padding), which each replay updates in place. The live rows adopt those buffers, so a frame copies
in only its uniforms, trailing-text embedding, rope position and slot, and copies its codes out; the state is
copied in again only when the rows change (the batch shrinks). A call that doesn't fit the buffers runs eagerly.

Everything is captured at warm-up, never inside a request, and capture never touches live state: its warm-up runs
execute the body, which writes the bucket's buffers and K/V at the static slot of the shared cache, so those are
saved first and restored after (`_scratch`). Before this, a bucket was captured on first use, with rows in flight,
and K/V of zeros landed in slot 0 of every live row (`tests/test_graph_capture.py`).

`GraphSteps.try_enable` captures every graph, then checks each one's replay against its body run eagerly on a fixed
greedy and a fixed sampled generation whose frames fall in its length bucket; on a capture error or any mismatch it
logs why and the loop stays eager. `mode="simulate"` runs the capture's order of operations on CPU (the warm-up
calls, then the body in place of replay), which is how CI tests it; real capture needs a GPU
(`scripts/gpu_check.sh`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Literal

import torch

from audio.engine.decode_loop import EagerSteps, FrameLoop, RowPrompt, _new_cache, _Rows
from audio.engine.sampling import RowSampling, Warp

log = logging.getLogger(__name__)


Mode = Literal["graphs", "bodies", "simulate"]
WARMUP_RUNS = 2  # eager runs on a side stream before capture, so lazy initialisation is not captured
LENGTH_BUCKET_ROOM = 16  # a length bucket is at least this many slots longer than the one before it


def bucket_for(batch: int) -> int:
    size = 1
    while size < batch:
        size *= 2
    return size


def buckets_up_to(max_batch: int) -> list[int]:
    return [1 << i for i in range(bucket_for(max_batch).bit_length())]


class GraphSteps(EagerSteps):
    """`mode`: "graphs" (CUDA capture and replay), "bodies" (the graphs' bodies run eagerly: the check's
    baseline) or "simulate" (the capture's warm-up calls, then the body as the replay: capture order on CPU)."""

    protect_live_state = True  # tests turn this off to show what capture did to live rows without `_scratch`
    min_length_bucket = 256  # the shortest span a frame graph attends over (tests use shorter ones)

    def __init__(self, loop: FrameLoop, *, max_batch: int, max_len: int):
        super().__init__(loop)
        self.max_batch = bucket_for(max_batch)
        # Whole 64-slot blocks: every span a graph attends over is then a multiple of 16, as the memory-efficient
        # kernel wants its mask's last dimension (else torch pads the mask on every step).
        self.max_len = -(-max_len // 64) * 64
        self.lengths = length_buckets(self.max_len, self.min_length_bucket)
        self.cache = _new_cache(loop.layers, self.max_batch, self.max_len, loop.codec_head)
        self.cos, self.sin = loop.rope(self.max_len)  # held here: a graph reads these tensors, whatever the loop grows
        self.pool: Any = None  # one memory pool for all of this loop's graphs, made at the first capture
        self.mode: Mode = "graphs"
        self._inputs: dict[int, dict[str, torch.Tensor]] = {}  # per batch bucket, shared by its length buckets
        self._graphs: dict[tuple[int, int], Callable[[], torch.Tensor]] = {}  # (batch, length) bucket -> run
        self._missing_logged = False

    def capture_all(self) -> None:
        """Every (batch, length) bucket's frame graph (in "bodies" mode: its body). Done at warm-up, never
        inside a request."""
        for size in buckets_up_to(self.max_batch):
            for length in self.lengths:
                self.capture_bucket(size, length)

    @torch.no_grad()  # the model's parameters may require grad: no autograd graph is built, none is captured
    def capture_bucket(self, size: int, length: int) -> None:
        self._graphs[size, length] = self._frame_graph(size, length)

    def length_for(self, slots: int) -> int:
        """The shortest length bucket spanning `slots` cache slots."""
        return next(n for n in self.lengths if n >= slots)

    # -- cache ------------------------------------------------------------------------------------------------
    def new_cache(self, batch: int, total: int, like: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if batch > self.max_batch or total > self.max_len:
            return super().new_cache(batch, total, like)
        for k, v in self.cache:  # stale values are masked, but must be finite: 0 * NaN is NaN
            k[:batch].zero_()
            v[:batch].zero_()
        return [(k[:batch], v[:batch]) for k, v in self.cache]

    def _static(self, cache: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
        return cache[0][0].data_ptr() == self.cache[0][0].data_ptr()

    def select_cache(self, cache: list[tuple[torch.Tensor, torch.Tensor]], keep: torch.Tensor) -> list[tuple]:
        if not self._static(cache):
            return super().select_cache(cache, keep)
        n = keep.shape[0]
        for k, v in cache:
            k[:n] = k[keep]
            v[:n] = v[keep]
        return [(k[:n], v[:n]) for k, v in self.cache]

    # -- the frame ------------------------------------------------------------------------------------------------
    def frame(self, live: _Rows, step: int, prompt_len: int, *, need_next: bool) -> torch.Tensor:
        if not self._static(live.cache):
            return super().frame(live, step, prompt_len, need_next=need_next)
        n = len(live.rows)
        size, slot = bucket_for(n), prompt_len + step
        run = self._graphs.get((size, self.length_for(slot + 1)))
        if run is None:
            if not self._missing_logged:
                log.warning("no CUDA graph for a batch of %d rows at slot %d: running eagerly", n, slot)
                self._missing_logged = True
            return super().frame(live, step, prompt_len, need_next=need_next)
        inputs = self._inputs[size]
        self._feed(inputs, live, n, step, slot)
        codes = run()
        # The rows' state now lives in the bucket's buffers (updated in place by every replay): nothing to copy
        # in for the next frame unless the rows change.
        live.hidden, live.first, live.seen = inputs["hidden"][:n], inputs["first"][:n], inputs["seen"][:n]
        return codes[:n].clone()  # the graph's output is overwritten by the next replay

    def _feed(self, inputs: dict[str, torch.Tensor], live: _Rows, n: int, step: int, slot: int) -> None:
        """Copy the frame's inputs in; the rows' state and settings only when they are not the buffers already."""
        held = {
            "hidden": live.hidden,
            "first": live.first,
            "seen": live.seen,
            "penalty": live.penalty,
            "temperature": live.warp.temperature,
            "top_k": live.warp.top_k,
            "top_p": live.warp.top_p,
            "sub_temperature": live.sub_warp.temperature,
            "sub_top_k": live.sub_warp.top_k,
            "sub_top_p": live.sub_warp.top_p,
            "pad": live.pads,
        }
        for name, value in held.items():
            if value.data_ptr() != inputs[name].data_ptr() or value.shape[0] != n:
                if name == "pad":
                    inputs["pad"].zero_()  # padding rows attend from slot 0: never a row with nothing to attend to
                inputs[name][:n] = value
        live.penalty = inputs["penalty"][:n]
        live.pads = inputs["pad"][:n]
        live.warp = _warp_view(live.warp, inputs, "", n)
        live.sub_warp = _warp_view(live.sub_warp, inputs, "sub_", n)
        inputs["uniforms"][:n] = live.uniforms[:, step : step + 2]
        inputs["trailing"][:n] = live.trailing[:, step]
        inputs["position"][:n] = live.positions[:, slot]
        inputs["slot"].fill_(slot)
        inputs["next_step"].fill_(step + 1)

    def _bucket_inputs(self, size: int) -> dict[str, torch.Tensor]:
        if size not in self._inputs:
            loop = self.loop
            like = loop.codec_head
            device, hidden_size = like.device, like.shape[1]
            floats, longs = dict(device=device), dict(dtype=torch.long, device=device)
            self._inputs[size] = {
                "hidden": like.new_zeros(size, hidden_size),
                "first": torch.zeros(size, **longs),
                "seen": torch.zeros(size, loop.vocab, dtype=torch.bool, device=device),
                "penalty": torch.ones(size, 1, **floats),
                "temperature": torch.ones(size, 1, **floats),
                "top_k": torch.ones(size, 1, **longs),
                "top_p": torch.ones(size, 1, **floats),
                "sub_temperature": torch.ones(size, 1, **floats),
                "sub_top_k": torch.ones(size, 1, **longs),
                "sub_top_p": torch.ones(size, 1, **floats),
                "pad": torch.zeros(size, **longs),
                "uniforms": torch.zeros(size, 2, loop.groups, **floats),  # this frame's, then the next frame's
                "trailing": like.new_zeros(size, hidden_size),
                "position": torch.zeros(size, **longs),
                "slot": torch.zeros(1, **longs),
                "next_step": torch.zeros(1, **longs),
            }
        return self._inputs[size]

    def _frame_graph(self, size: int, length: int) -> Callable[[], torch.Tensor]:
        """The frame body over the bucket's buffers: the code predictor's 15 steps, the frame's embedding sum plus
        the trailing text, the talker step attending over the first `length` slots, first-codebook sampling. Every
        sampling setting is a tensor (the general top-k / top-p path, which keeps exactly what the specialised
        eager path keeps), so the graphs are bounded by the buckets."""
        loop = self.loop
        inputs = self._bucket_inputs(size)
        cache = [(k[:size], v[:size]) for k, v in self.cache]
        cos_table, sin_table = self.cos, self.sin
        key_slots = torch.arange(length, device=loop.device)
        warp = Warp(inputs["temperature"], inputs["top_k"], inputs["top_p"], True, True, loop.vocab, False)
        cp_vocab = loop.code_predictor.heads[0].shape[0]
        sub_warp = Warp(
            inputs["sub_temperature"], inputs["sub_top_k"], inputs["sub_top_p"], True, True, cp_vocab, False
        )

        def body() -> torch.Tensor:
            first, uniforms = inputs["first"], inputs["uniforms"]
            residual, frame_embed = loop.code_predictor(inputs["hidden"], first, uniforms[:, 0, 1:], sub_warp)
            codes = torch.cat((first.unsqueeze(1), residual), dim=1)
            x = (frame_embed + inputs["trailing"]).unsqueeze(1)
            cos = cos_table[inputs["position"]].view(size, 1, 1, -1)
            sin = sin_table[inputs["position"]].view(size, 1, 1, -1)
            mask = ((key_slots >= inputs["pad"].unsqueeze(1)) & (key_slots <= inputs["slot"])).view(size, 1, 1, -1)
            for layer, layer_cache in zip(loop.layers, cache, strict=True):
                x = layer(x, cos, sin, layer_cache, inputs["slot"], mask)
            hidden, logits = loop.head(x[:, -1])
            suppress = torch.where(inputs["next_step"] < loop.min_new_tokens, loop.suppress_eos, loop.suppress)
            nxt = loop.first_code(logits, inputs["seen"], inputs["penalty"], suppress, warp, uniforms[:, 1, 0])
            inputs["hidden"].copy_(hidden)
            inputs["first"].copy_(nxt)
            return codes

        return self._capture(body, inputs)

    # -- capture ------------------------------------------------------------------------------------------------
    def _capture(self, body: Callable[[], Any], inputs: dict[str, torch.Tensor]) -> Callable[[], Any]:
        """`run`: copy into `inputs`, then `run()` returns the outputs (a graph's own tensors)."""
        if self.mode == "bodies":
            return body
        if self.mode == "simulate":
            with self._scratch(inputs):
                for _ in range(WARMUP_RUNS):
                    body()
            return body
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with self._scratch(inputs):
            # Warm up on a side stream first (lazy initialisation must not be captured); capturing records
            # kernels without running them, so only the warm-up runs write anything.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(WARMUP_RUNS):
                    body()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: a model loading (and capturing) while another model generates on another thread must
            # not turn that thread's CUDA calls into capture errors.
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                outputs = body()

        def replay() -> Any:
            graph.replay()
            return outputs

        return replay

    @contextlib.contextmanager
    def _scratch(self, inputs: dict[str, torch.Tensor]) -> Iterator[None]:
        """The bucket's buffers and the shared cache as they were before: the warm-up runs update the rows' state
        in the buffers and write K/V at the static slot of the bucket's rows, which may be live rows' entries."""
        if not self.protect_live_state:
            yield
            return
        slot, size = inputs["slot"], inputs["hidden"].shape[0]
        saved = {name: t.clone() for name, t in inputs.items()}
        saved_kv = [(k[:size].index_select(2, slot), v[:size].index_select(2, slot)) for k, v in self.cache]
        try:
            yield
        finally:
            for name, t in inputs.items():
                t.copy_(saved[name])
            for (k, v), (k_saved, v_saved) in zip(self.cache, saved_kv, strict=True):
                k[:size].index_copy_(2, slot, k_saved)
                v[:size].index_copy_(2, slot, v_saved)

    # -- enabling ---------------------------------------------------------------------------------------------
    @classmethod
    def try_enable(cls, loop: FrameLoop, *, max_batch: int, max_len: int, mode: Mode = "graphs") -> GraphSteps | None:
        """Graph steps for `loop` if every bucket captures and its replay equals eager; None (and a log line)
        otherwise. ("simulate": the same on CPU, for tests.)"""
        if mode == "graphs" and loop.device.type != "cuda":
            return None
        try:
            steps = cls(loop, max_batch=max_batch, max_len=max_len)
            return steps if steps.check(mode) else None
        except Exception as exc:  # any capture failure means: run eager, and say why
            log.warning("CUDA graphs disabled (%s: %s); running eager", type(exc).__name__, exc)
            return None

    def check(self, mode: Mode = "graphs") -> bool:
        """Capture every bucket in `mode` and compare, for each frame graph, a fixed generation (all the batch
        bucket's rows live, its slots inside the length bucket; greedy and sampled) with the same bodies run
        eagerly; logs and returns False on the first mismatch."""
        runs = [
            (size, length, sampled)
            for size in buckets_up_to(self.max_batch)
            for length in self.lengths
            for sampled in (False, True)
        ]
        self.use_mode("bodies")
        want = [self._check_codes(size, length, sampled) for size, length, sampled in runs]
        self.use_mode(mode)
        for (size, length, sampled), codes in zip(runs, want, strict=True):
            if self._check_codes(size, length, sampled) != codes:
                kind = "sampled" if sampled else "greedy"
                log.warning(
                    "CUDA graphs disabled: replay differs from eager at batch %d, %d slots (%s); running eager",
                    size,
                    length,
                    kind,
                )
                return False
        log.info(
            "CUDA graphs on: one per frame for %d batch x %d length buckets, up to %d rows and %d slots",
            len(buckets_up_to(self.max_batch)),
            len(self.lengths),
            self.max_batch,
            self.max_len,
        )
        return True

    def _check_codes(self, size: int, length: int, sampled: bool) -> list[list[list[int]]]:
        shorter = [n for n in self.lengths if n < length]
        frames = 4
        # The frames start just past the next shorter bucket, so they run on this one (and end inside it).
        prompt = min(shorter[-1] + 1 if shorter else 7, length - frames - 6)
        return _codes(self.loop, self, size, sampled=sampled, prompt_len=prompt, frames=frames)

    def use_mode(self, mode: Mode) -> None:
        """Drop the captures and capture every bucket again in `mode`."""
        self.mode = mode
        self._graphs.clear()
        self.capture_all()

    def use_replay(self, replay: bool) -> None:
        """Replay graphs (True), or run the same bodies eagerly (False: the check's baseline)."""
        self.use_mode("graphs" if replay else "bodies")


def _warp_view(warp: Warp, inputs: dict[str, torch.Tensor], prefix: str, n: int) -> Warp:
    """`warp` over the bucket's buffers (its flags kept: they steer only the eager path)."""
    return replace(
        warp,
        temperature=inputs[prefix + "temperature"][:n],
        top_k=inputs[prefix + "top_k"][:n],
        top_p=inputs[prefix + "top_p"][:n],
    )


def length_buckets(max_len: int, shortest: int) -> list[int]:
    """Spans a frame graph attends over: powers of two from `shortest`, then `max_len` (a power of two within
    `LENGTH_BUCKET_ROOM` slots of it is left out: the last bucket must have room for the check's frames)."""
    lengths = []
    n = shortest
    while n + LENGTH_BUCKET_ROOM <= max_len:
        lengths.append(n)
        n *= 2
    return [*lengths, max_len]


def _codes(
    loop: FrameLoop, steps: EagerSteps, batch: int, *, sampled: bool, prompt_len: int = 7, frames: int = 6
) -> list[list[list[int]]]:
    """A fixed generation through `steps` (greedy, or sampled with fixed seeds): the codes per row, as lists. Row
    i's prompt has `prompt_len + i % 4` tokens and its budget is `frames + i % 4` frames."""
    previous, loop.steps = loop.steps, steps
    try:
        embedding = loop.talker.model.codec_embedding
        device = loop.device
        vocab = embedding.weight.shape[0]
        prompts = [
            RowPrompt(
                embedding(torch.arange(5 + i, 5 + i + prompt_len + i % 4, device=device) % vocab),
                embedding(torch.arange(20, 24, device=device)),
            )
            for i in range(batch)
        ]
        pad = embedding(torch.tensor([0], device=device)).reshape(1, 1, -1)
        if sampled:
            sampling = RowSampling()
        else:
            sampling = RowSampling(do_sample=False, sub_do_sample=False, repetition_penalty=1.05)
        rows: list[list[list[int]]] = [[] for _ in range(batch)]
        budgets = [frames + i % 4 for i in range(batch)]
        with torch.inference_mode():
            for step in loop.run(prompts, pad, budgets, [sampling] * batch, list(range(batch))):
                for row, codes in zip(step.rows, step.codes.tolist(), strict=True):
                    rows[row].append(codes)
        return rows
    finally:
        loop.steps = previous
