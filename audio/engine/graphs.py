"""CUDA graphs for the fast engine: the code predictor's whole pass and the talker step, replayed per batch bucket.

On CUDA a frame is ~20 small kernels per layer, 15 code-predictor passes and a talker step: launch-bound, which
is what graphs remove. Each graph is captured on first use for a batch-size bucket (1, 2, 4, ...; rows past the
live ones are padding, computed and ignored) over static buffers: one KV cache of `max_batch` x `max_len`
shared by every bucket (the live rows are always its first rows), inputs copied in before each replay, outputs
read from the graph's own tensors. The talker step writes the cache at a tensor slot and attends to the whole
cache under a mask, so one graph serves every step. A call that doesn't fit (more rows or tokens than the
buffers) runs eagerly.

`GraphSteps.try_enable` verifies at warm-up that replay equals the same computation run eagerly, for a fixed
greedy generation at two batch sizes; on a capture error or any mismatch it logs why and the loop stays eager.
This path needs a GPU, so CI never runs it: `scripts/gpu_check.sh` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from audio.engine.decode_loop import EagerSteps, FrameLoop, RowPrompt, _new_cache, _Rows
from audio.engine.sampling import RowSampling, Warp

log = logging.getLogger(__name__)


def bucket_for(batch: int) -> int:
    size = 1
    while size < batch:
        size *= 2
    return size


class GraphSteps(EagerSteps):
    def __init__(self, loop: FrameLoop, *, max_batch: int, max_len: int):
        super().__init__(loop)
        self.max_batch = bucket_for(max_batch)
        self.max_len = max_len
        self.cache = _new_cache(loop.layers, self.max_batch, max_len, loop.codec_head)
        self.pool: Any = None  # one memory pool for all of this loop's graphs, made at the first capture
        self.replay = True  # False: run the graphs' bodies eagerly (the warm-up check's baseline)
        self._talker: dict[int, tuple[Callable[[], Any], dict[str, torch.Tensor]]] = {}
        self._predictor: dict[tuple, tuple[Callable[[], Any], dict[str, torch.Tensor]]] = {}

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
            self._talker[size] = self._talker_graph(size)
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
        key = (size, warp.any_top_k, warp.max_top_k, warp.any_top_p, warp.same_top_k)
        if key not in self._predictor:
            self._predictor[key] = self._predictor_graph(*key)
        run, inputs = self._predictor[key]
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

    def _predictor_graph(
        self, size: int, any_top_k: bool, max_top_k: int, any_top_p: bool, same_top_k: bool
    ) -> tuple[Callable[[], Any], dict[str, torch.Tensor]]:
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
        warp = Warp(
            inputs["temperature"], inputs["top_k"], inputs["top_p"], any_top_k, any_top_p, max_top_k, same_top_k
        )

        def body() -> tuple[torch.Tensor, torch.Tensor]:
            return loop.code_predictor(inputs["hidden"], inputs["first"], inputs["uniforms"], warp)

        return self._capture(body, inputs)

    def _capture(
        self, body: Callable[[], Any], inputs: dict[str, torch.Tensor]
    ) -> tuple[Callable[[], Any], dict[str, torch.Tensor]]:
        """`(run, inputs)`: copy into `inputs`, then `run()` returns the outputs (a graph's own tensors)."""
        if not self.replay:
            return body, inputs
        # Warm up on a side stream first (lazy initialisation must not be captured). The body is idempotent
        # for the inputs already copied in, so the cache writes it makes are the ones the replay makes again.
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                body()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = body()

        def replay() -> Any:
            graph.replay()
            return outputs

        return replay, inputs

    # -- enabling ---------------------------------------------------------------------------------------------
    @classmethod
    def try_enable(cls, loop: FrameLoop, *, max_batch: int, max_len: int) -> GraphSteps | None:
        """Graph steps for `loop` if capture works and replay equals eager; None (and a log line) otherwise."""
        if loop.device.type != "cuda":
            return None
        try:
            steps = cls(loop, max_batch=max_batch, max_len=max_len)
            batches = (1, min(3, max_batch))
            steps.use_replay(False)
            want = [_greedy_codes(loop, steps, batch) for batch in batches]
            steps.use_replay(True)
            for batch, codes in zip(batches, want, strict=True):
                if _greedy_codes(loop, steps, batch) != codes:
                    log.warning("CUDA graphs disabled: replay differs from eager at batch %d; running eager", batch)
                    return None
        except Exception as exc:  # any capture failure means: run eager, and say why
            log.warning("CUDA graphs disabled (%s: %s); running eager", type(exc).__name__, exc)
            return None
        log.info("CUDA graphs on: buckets up to %d rows, %d tokens", steps.max_batch, max_len)
        return steps

    def use_replay(self, replay: bool) -> None:
        """Replay graphs (True), or run the same bodies eagerly (False: the check's baseline); drops captures."""
        self.replay = replay
        self._talker.clear()
        self._predictor.clear()


def _greedy_codes(loop: FrameLoop, steps: GraphSteps, batch: int) -> list[list[list[int]]]:
    """A fixed greedy generation through `steps`: the codes per row, as lists."""
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
        greedy = RowSampling(do_sample=False, sub_do_sample=False, repetition_penalty=1.05)
        rows: list[list[list[int]]] = [[] for _ in range(batch)]
        with torch.inference_mode():
            for step in loop.run(prompts, pad, [6 + i for i in range(batch)], [greedy] * batch, list(range(batch))):
                for row, codes in zip(step.rows, step.codes.tolist(), strict=True):
                    rows[row].append(codes)
        return rows
    finally:
        loop.steps = previous
