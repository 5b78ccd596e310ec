"""CUDA graphs for the fast engine: the code predictor's whole pass and the talker step, replayed per batch bucket.

On CUDA a frame is ~20 small kernels per layer, 15 code-predictor passes and a talker step: launch-bound, which
is what graphs remove. One graph per batch-size bucket (1, 2, 4, ... up to the configured max batch; rows past
the live ones are padding, computed and ignored) for each computation, all captured at warm-up and never inside
a request, over static buffers: one KV cache of `max_batch` x `max_len` shared by every bucket (the live rows
are always its first rows), inputs copied in before each replay, outputs read from the graph's own tensors. The
talker step writes the cache at a tensor slot and attends to the whole cache under a mask, so one graph serves
every step; sampling settings are tensor inputs of the predictor's graph (the general top-k / top-p path, which
selects exactly what the specialised eager path selects), so the set of graphs is bounded by the buckets. A
call that doesn't fit (more rows or tokens than the buffers) runs eagerly.

Capture never touches live state: the warm-up runs that precede a capture execute the talker body, which writes
K/V at its static slot into the shared cache, so the cache entries that slot covers are saved first and
restored after (`_scratch`). Before this, a bucket was captured on first use, with rows in flight and before
their inputs were copied in, and K/V of zeros landed in slot 0 of every live row (`tests/test_graph_capture.py`).

`GraphSteps.try_enable` captures every bucket, then checks replay against the same bodies run eagerly on a fixed
greedy and a fixed sampled generation per bucket; on a capture error or any mismatch it logs why and the loop
stays eager. `mode="simulate"` runs the capture's order of operations on CPU (the warm-up calls, then the body
in place of replay), which is how CI tests it; real capture needs a GPU (`scripts/gpu_check.sh`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch

from audio.engine.decode_loop import EagerSteps, FrameLoop, RowPrompt, _new_cache, _Rows
from audio.engine.sampling import RowSampling, Warp

log = logging.getLogger(__name__)


Mode = Literal["graphs", "bodies", "simulate"]
WARMUP_RUNS = 2  # eager runs on a side stream before capture, so lazy initialisation is not captured


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

    def __init__(self, loop: FrameLoop, *, max_batch: int, max_len: int):
        super().__init__(loop)
        self.max_batch = bucket_for(max_batch)
        self.max_len = max_len
        self.cache = _new_cache(loop.layers, self.max_batch, max_len, loop.codec_head)
        self.pool: Any = None  # one memory pool for all of this loop's graphs, made at the first capture
        self.mode: Mode = "graphs"
        self._talker: dict[int, tuple[Callable[[], Any], dict[str, torch.Tensor]]] = {}
        self._predictor: dict[int, tuple[Callable[[], Any], dict[str, torch.Tensor]]] = {}
        self._missing_logged = False

    def capture_all(self) -> None:
        """Every bucket's two graphs (in "bodies" mode: their bodies). Done at warm-up, never inside a request."""
        for size in buckets_up_to(self.max_batch):
            self.capture_bucket(size)

    def capture_bucket(self, size: int) -> None:
        self._talker[size] = self._talker_graph(size)
        self._predictor[size] = self._predictor_graph(size)

    def _eager_fallback(self, size: int) -> None:
        if not self._missing_logged:
            log.warning("no CUDA graph for a batch of %d rows (bucket %d): running eagerly", size, size)
            self._missing_logged = True

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

    # -- the two graphed computations -------------------------------------------------------------------------
    def talker_step(
        self, live: _Rows, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._static(live.cache):
            return super().talker_step(live, x, cos, sin, slot)
        n = x.shape[0]
        size = bucket_for(n)
        if size not in self._talker:
            self._eager_fallback(size)
            return super().talker_step(live, x, cos, sin, slot)
        run, inputs = self._talker[size]
        inputs["x"][:n] = x
        inputs["cos"][:n] = cos
        inputs["sin"][:n] = sin
        inputs["slot"].fill_(slot)
        mask = inputs["mask"]
        mask.zero_()
        mask[:n, :, :, : slot + 1] = live.valid[:, None, None, : slot + 1]
        mask[n:, :, :, 0] = True  # padding rows attend to one slot, so they stay finite
        hidden, logits = run()
        return hidden[:n], logits[:n]

    def code_pass(self, live: _Rows, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._static(live.cache):
            return super().code_pass(live, step)
        n = live.hidden.shape[0]
        size = bucket_for(n)
        warp = live.sub_warp
        if size not in self._predictor:
            self._eager_fallback(size)
            return super().code_pass(live, step)
        run, inputs = self._predictor[size]
        inputs["hidden"][:n] = live.hidden
        inputs["first"][:n] = live.first
        inputs["uniforms"][:n] = live.uniforms[:, step, 1:]
        inputs["temperature"][:n] = warp.temperature
        inputs["top_k"][:n] = warp.top_k
        inputs["top_p"][:n] = warp.top_p
        codes, embeds = run()
        return codes[:n], embeds[:n]

    # -- capture ------------------------------------------------------------------------------------------------
    def _talker_graph(self, size: int) -> tuple[Callable[[], Any], dict[str, torch.Tensor]]:
        loop = self.loop
        like = loop.codec_head
        hidden_size, head_dim = like.shape[1], loop.layers[0].head_dim
        inputs = {
            "x": like.new_zeros(size, 1, hidden_size),
            "cos": like.new_ones(size, 1, 1, head_dim),
            "sin": like.new_zeros(size, 1, 1, head_dim),
            "slot": torch.zeros(1, dtype=torch.long, device=like.device),
            "mask": torch.zeros(size, 1, 1, self.max_len, dtype=torch.bool, device=like.device),
        }
        cache = [(k[:size], v[:size]) for k, v in self.cache]

        def body() -> tuple[torch.Tensor, torch.Tensor]:
            x = inputs["x"]
            for layer, layer_cache in zip(loop.layers, cache, strict=True):
                x = layer(x, inputs["cos"], inputs["sin"], layer_cache, inputs["slot"], inputs["mask"])
            return loop.head(x[:, -1])

        return self._capture(body, inputs)

    def _predictor_graph(self, size: int) -> tuple[Callable[[], Any], dict[str, torch.Tensor]]:
        loop = self.loop
        like = loop.codec_head
        device = like.device
        inputs = {
            "hidden": like.new_zeros(size, like.shape[1]),
            "first": torch.zeros(size, dtype=torch.long, device=device),
            "uniforms": torch.zeros(size, loop.groups - 1, device=device),
            "temperature": torch.ones(size, 1, device=device),
            "top_k": torch.ones(size, 1, dtype=torch.long, device=device),
            "top_p": torch.ones(size, 1, device=device),
        }
        vocab = loop.code_predictor.heads[0].shape[0]
        # The general path (any k per row, top-p always applied): with k = 1 or p = 1 it keeps exactly what the
        # specialised eager path keeps, so the graph needs no sampling settings as keys.
        warp = Warp(inputs["temperature"], inputs["top_k"], inputs["top_p"], True, True, vocab, False)

        def body() -> tuple[torch.Tensor, torch.Tensor]:
            return loop.code_predictor(inputs["hidden"], inputs["first"], inputs["uniforms"], warp)

        return self._capture(body, inputs)

    def _capture(
        self, body: Callable[[], Any], inputs: dict[str, torch.Tensor]
    ) -> tuple[Callable[[], Any], dict[str, torch.Tensor]]:
        """`(run, inputs)`: copy into `inputs`, then `run()` returns the outputs (a graph's own tensors)."""
        if self.mode == "bodies":
            return body, inputs
        if self.mode == "simulate":
            with self._scratch(inputs):
                for _ in range(WARMUP_RUNS):
                    body()
            return body, inputs
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
            with torch.cuda.graph(graph, pool=self.pool):
                outputs = body()

        def replay() -> Any:
            graph.replay()
            return outputs

        return replay, inputs

    @contextlib.contextmanager
    def _scratch(self, inputs: dict[str, torch.Tensor]) -> Iterator[None]:
        """The shared cache as it was before: the warm-up runs write K/V at the static slot of the bucket's
        rows, which may be live rows' entries. The predictor's body writes only its own buffers."""
        if "slot" not in inputs or not self.protect_live_state:
            yield
            return
        slot, size = inputs["slot"], inputs["x"].shape[0]
        saved = [(k[:size].index_select(2, slot), v[:size].index_select(2, slot)) for k, v in self.cache]
        try:
            yield
        finally:
            for (k, v), (k_saved, v_saved) in zip(self.cache, saved, strict=True):
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
        """Capture every bucket in `mode` and compare a fixed greedy and a fixed sampled generation per bucket
        (all its rows live) with the same bodies run eagerly; logs and returns False on the first mismatch."""
        runs = [(size, sampled) for size in buckets_up_to(self.max_batch) for sampled in (False, True)]
        self.use_mode("bodies")
        want = [_codes(self.loop, self, size, sampled=sampled) for size, sampled in runs]
        self.use_mode(mode)
        for (size, sampled), codes in zip(runs, want, strict=True):
            if _codes(self.loop, self, size, sampled=sampled) != codes:
                kind = "sampled" if sampled else "greedy"
                log.warning(
                    "CUDA graphs disabled: replay differs from eager at batch %d (%s); running eager", size, kind
                )
                return False
        log.info("CUDA graphs on: %d buckets up to %d rows, %d tokens", len(runs) // 2, self.max_batch, self.max_len)
        return True

    def use_mode(self, mode: Mode) -> None:
        """Drop the captures and capture every bucket again in `mode`."""
        self.mode = mode
        self._talker.clear()
        self._predictor.clear()
        self.capture_all()

    def use_replay(self, replay: bool) -> None:
        """Replay graphs (True), or run the same bodies eagerly (False: the check's baseline)."""
        self.use_mode("graphs" if replay else "bodies")


def _greedy_codes(loop: FrameLoop, steps: EagerSteps, batch: int) -> list[list[list[int]]]:
    return _codes(loop, steps, batch, sampled=False)


def _codes(loop: FrameLoop, steps: EagerSteps, batch: int, *, sampled: bool) -> list[list[list[int]]]:
    """A fixed generation through `steps` (greedy, or sampled with fixed seeds): the codes per row, as lists."""
    previous, loop.steps = loop.steps, steps
    try:
        embedding = loop.talker.model.codec_embedding
        device = loop.device
        prompts = [
            RowPrompt(
                embedding(torch.arange(5 + i, 12 + 2 * i, device=device)),
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
        budgets = [6 + i for i in range(batch)]
        with torch.inference_mode():
            for step in loop.run(prompts, pad, budgets, [sampling] * batch, list(range(batch))):
                for row, codes in zip(step.rows, step.codes.tolist(), strict=True):
                    rows[row].append(codes)
        return rows
    finally:
        loop.steps = previous
