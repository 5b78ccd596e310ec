"""The `fast` engine: qwen_tts builds the prompts, our decode loop generates the frames, qwen_tts's codec decodes.

A batch is one prompt capture (`prompts.capture_talker_inputs`), one `FrameLoop.run` with a budget, sampling
settings and a seed per row, then either one whole-batch decode (`generate`, byte-identical to what qwen_tts
would decode from the same frames) or per-row incremental decoding as frames arrive (`stream`). On CUDA the loop's
steps replay as CUDA graphs when `cuda_graphs` is on and the warm-up check passed (`audio.engine.graphs`).

`stream` overlaps the codec with the generation: on CUDA each piece's decode is issued on the engine's decode
stream (`decode_stream`) and handed out once its audio has landed on the host, in the order the pieces were made;
the frame loop goes on launching frames meanwhile and the host waits for a decode only when the frames run out.
On CPU a decode is done when issued, so the pieces and their order are those of decoding in line.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from audio.engine.base import QwenSpeech
from audio.engine.codec import IncrementalDecoder, decode_whole
from audio.engine.host_reads import HostRead, HostReader
from audio.engine.prompts import PINNED_QWEN_TTS, capture_talker_inputs
from audio.errors import ModelError
from audio.speech import STREAM_PIECE_FRAMES, AudioPiece, ChunkRequest, FrameGuard, GenerateCall, Voice

GRAPH_PROMPT_TOKENS = 1024


class FastEngine(QwenSpeech):
    engine = "fast"
    streams = True
    batch_independent = True

    def __init__(
        self,
        variant: Any,
        tts: Any,
        runtime: Any,
        *,
        cuda_graphs: bool = False,
        max_batch: int = 8,
        graph_longest_s: float = 60.0,
    ):
        super().__init__(variant, tts, runtime)
        import torch

        from audio.engine.decode_loop import FrameLoop

        talker = tts.model.talker
        config = tts.model.config.talker_config
        eos = int(config.codec_eos_token_id)
        vocab = int(config.vocab_size)
        # What qwen_tts passes its talker.generate (modeling_qwen3_tts.py, Qwen3TTSForConditionalGeneration.generate);
        # `frames` checks each capture against it.
        self._control = {
            "eos_token_id": eos,
            "suppress_tokens": [i for i in range(vocab - 1024, vocab) if i != eos],
            "min_new_tokens": 2,
        }
        self.loop = FrameLoop(talker, **self._control)
        # The streamed pieces' decodes run on a CUDA stream of their own, one per engine; their audio comes to the host
        # through `decode_reader_factory` (tests swap in reads that land late).
        self.codec_device = torch.device(tts.model.speech_tokenizer.device)
        self.decode_stream = torch.cuda.Stream(self.codec_device) if self.codec_device.type == "cuda" else None
        self.decode_reader_factory: Callable[[torch.device], HostReader] = HostReader
        self.cuda_graphs = False
        if cuda_graphs:
            from audio.engine.graphs import GraphSteps

            # Room for the longest prompt (text, instruct, a cloned voice's reference codes) and chunk.
            max_len = GRAPH_PROMPT_TOKENS + math.ceil(graph_longest_s * self.frame_rate_hz)
            steps = GraphSteps.try_enable(self.loop, max_batch=max_batch, max_len=max_len)
            if steps is not None:
                self.loop.steps = steps
                self.cuda_graphs = True

    def _prompts(self, call: GenerateCall) -> tuple[list[Any], list[Any], Any]:
        """qwen_tts's prompt for each of the call's chunks, their sampling settings and the pad embedding."""
        import torch

        from audio.engine.decode_loop import RowPrompt
        from audio.engine.sampling import RowSampling

        texts = [r.text for r in call.requests]
        with torch.inference_mode():
            inputs = capture_talker_inputs(
                self.tts,
                self.variant,
                texts,
                language=call.language,
                voice=call.voice,
                clone_prompt=call.clone_prompt,
                **call.params,
            )
        if any(inputs.talker_kwargs.get(k) != v for k, v in self._control.items()):
            raise ModelError(f"qwen_tts {PINNED_QWEN_TTS} layout changed: its talker settings are not the expected")
        mask = inputs.attention_mask.bool()
        prompts = [
            RowPrompt(inputs.inputs_embeds[i][mask[i]], inputs.trailing_text_hidden[i]) for i in range(len(texts))
        ]
        return prompts, [RowSampling.from_talker_kwargs(inputs.talker_kwargs)] * len(texts), inputs.tts_pad_embed

    def frames_many(self, calls: Sequence[GenerateCall]) -> Iterator[Any]:
        """The loop's `Step`s for all the calls' chunks in one batch, rows numbered across calls in order."""
        prompts: list[Any] = []
        sampling: list[Any] = []
        pad_embed = None
        for call in calls:
            call_prompts, call_sampling, pad_embed = self._prompts(call)
            prompts += call_prompts
            sampling += call_sampling
        requests = [r for call in calls for r in call.requests]
        steps = self.loop.run(
            prompts, pad_embed, [r.budget_frames for r in requests], sampling, [r.seed for r in requests]
        )
        guards = _Guards(calls)
        return _guarded(steps, guards) if guards.by_row else steps

    def frames(self, requests: Sequence[ChunkRequest], **call: Any) -> Iterator[Any]:
        """The loop's `Step`s for one call (`generate`'s arguments): frame by frame, every live row's codes."""
        return self.frames_many([GenerateCall(requests, **call)])

    def generate_many(self, calls: Sequence[GenerateCall]) -> list[list[np.ndarray]]:
        """Several calls as one batch (concurrent jobs on one model); each call's audio is decoded on its own, as
        `generate` alone would, so it is the same whatever it was batched with."""
        import torch

        rows: list[list[Any]] = [[] for call in calls for _ in call.requests]
        for step in self.frames_many(calls):
            for row, codes in zip(step.rows, step.codes, strict=True):
                rows[row].append(codes)
        out = []
        start = 0
        with torch.inference_mode():
            for call in calls:
                codes = [torch.stack(r) for r in rows[start : start + len(call.requests)]]
                start += len(call.requests)
                out.append(decode_whole(self.tts, codes, [_ref_codes(call.clone_prompt)] * len(codes)))
        return out

    def generate(
        self,
        requests: Sequence[ChunkRequest],
        *,
        language: str,
        voice: Voice,
        params: dict[str, Any],
        clone_prompt: Any = None,
        guard: FrameGuard | None = None,
    ) -> list[np.ndarray]:
        return self.generate_many([GenerateCall(requests, language, voice, params, clone_prompt, guard)])[0]

    def stream(
        self,
        requests: Sequence[ChunkRequest],
        *,
        language: str,
        voice: Voice,
        params: dict[str, Any],
        clone_prompt: Any = None,
        piece_frames: int | Sequence[int] | None = None,
        guard: FrameGuard | None = None,
    ) -> Iterator[AudioPiece]:
        """Each row's audio in pieces of `piece_frames` (a size, or sizes in order with the last repeating; default
        `STREAM_PIECE_FRAMES`: the first piece after one frame, growing to ~1 s)."""
        pieces = piece_frames or STREAM_PIECE_FRAMES
        ref = _ref_codes(clone_prompt)
        reader = self.decode_reader_factory(self.codec_device)
        decoders = [
            IncrementalDecoder(self.tts, piece_frames=pieces, ref_codes=ref, stream=self.decode_stream, reader=reader)
            for _ in requests
        ]
        pending: deque[_Pending] = deque()  # issued pieces, in the order they are handed out
        open_rows = set(range(len(requests)))
        steps = self.frames_many([GenerateCall(requests, language, voice, params, clone_prompt, guard)])
        try:
            for step in steps:
                for row in sorted(open_rows - set(step.rows)):  # finished at the previous step
                    pending.append(_last_piece(row, decoders[row]))
                open_rows &= set(step.rows)
                for row, codes in zip(step.rows, step.codes, strict=True):
                    first = decoders[row].frames_out
                    read = decoders[row].push(codes, step.made)
                    if read is not None:
                        pending.append(_Pending(row, read, first, decoders[row].frames_out - first, final=False))
                while pending and pending[0].read.ready():
                    yield pending.popleft().piece()
            for row in sorted(open_rows):
                pending.append(_last_piece(row, decoders[row]))
            while pending:
                yield pending.popleft().piece()
        finally:
            steps.close()  # a consumer that stops early (cancellation) stops the generation


@dataclass
class _Pending:
    """A streamed piece whose decode has been issued: its audio is on the host once `read` is ready."""

    row: int
    read: HostRead
    first_frame: int
    frames: int
    final: bool

    def piece(self) -> AudioPiece:
        self.read.wait()
        return AudioPiece(self.row, self.read.values.numpy(), self.first_frame, self.frames, self.final)


class _Guards:
    """The calls' frame guards over one batch's rows (numbered across calls). Every `every_frames` frames each guard
    sees its own rows' new first-codebook tokens: the host copies the loop already made of them (`Step.
    first_codes_host`, read with the rows' ends; a step without them is copied here)."""

    def __init__(self, calls: Sequence[GenerateCall]):
        self.by_row: dict[int, tuple[FrameGuard, int]] = {}
        start = 0
        for call in calls:
            if call.guard is not None:
                self.by_row.update({start + i: (call.guard, i) for i in range(len(call.requests))})
            start += len(call.requests)
        self.every_frames = min((g.every_frames for g, _ in self.by_row.values()), default=1)
        self.pending: list[tuple[list[int], Any]] = []

    def step(self, step: Any) -> set[int]:
        first = step.first_codes_host if step.first_codes_host is not None else step.codes[:, 0]
        self.pending.append((step.rows, first))
        return self.flush() if len(self.pending) >= self.every_frames else set()

    def flush(self) -> set[int]:
        """Show the guards the pending frames; the batch rows to stop."""
        if not self.pending:
            return set()
        host = np.concatenate([c if isinstance(c, np.ndarray) else c.cpu().numpy() for _, c in self.pending])
        per_row: dict[int, list[int]] = {}
        at = 0
        for rows, _ in self.pending:
            for row in rows:
                per_row.setdefault(row, []).append(int(host[at]))
                at += 1
        self.pending.clear()
        stop = set()
        for row, tokens in per_row.items():
            if row in self.by_row:
                guard, local = self.by_row[row]
                if guard.observe(local, np.asarray(tokens, dtype=np.int64)):
                    stop.add(row)
        return stop


def _guarded(steps: Any, guards: _Guards) -> Iterator[Any]:
    """The loop's steps, with the rows the guards flag sent back to it to stop; the last frames are shown to the
    guards when the loop ends, so a row that ended by itself still gets its verdict."""
    stop: set[int] | None = None
    try:
        while True:
            try:
                step = steps.send(stop)
            except StopIteration:
                return
            yield step
            stop = guards.step(step) or None
    finally:
        guards.flush()
        steps.close()


def _last_piece(row: int, decoder: IncrementalDecoder) -> _Pending:
    """The row's final piece: the frames still waiting (possibly none: an empty piece, ready at once)."""
    import torch

    first = decoder.frames_out
    read = decoder.flush()
    if read is None:
        read = HostRead(torch.zeros(0, dtype=torch.float32))
    return _Pending(row, read, first, decoder.frames_out - first, final=True)


def _ref_codes(clone_prompt: Any) -> Any:
    """A cloned voice's reference codes (ICL), or None (x-vector only, or not a clone)."""
    if not clone_prompt:
        return None
    return clone_prompt[0].ref_code
