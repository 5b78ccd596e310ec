"""The `fast` engine: qwen_tts builds the prompts, our decode loop generates the frames, qwen_tts's codec decodes.

A batch is one prompt capture (`prompts.capture_talker_inputs`), one `FrameLoop.run` with a budget, sampling
settings and a seed per row, then either one whole-batch decode (`generate`, byte-identical to what qwen_tts
would decode from the same frames) or per-row incremental decoding as frames arrive (`stream`). On CUDA the loop's
steps replay as CUDA graphs when `cuda_graphs` is on and the warm-up check passed (`audio.engine.graphs`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from audio.engine.base import QwenSpeech
from audio.engine.codec import IncrementalDecoder, decode_whole
from audio.engine.prompts import PINNED_QWEN_TTS, capture_talker_inputs
from audio.errors import ModelError
from audio.speech import AudioPiece, ChunkRequest, Voice

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
        self.cuda_graphs = False
        if cuda_graphs:
            from audio.engine.graphs import GraphSteps

            # Room for the longest prompt (text, instruct, a cloned voice's reference codes) and chunk.
            max_len = GRAPH_PROMPT_TOKENS + math.ceil(graph_longest_s * self.frame_rate_hz)
            steps = GraphSteps.try_enable(self.loop, max_batch=max_batch, max_len=max_len)
            if steps is not None:
                self.loop.steps = steps
                self.cuda_graphs = True

    def frames(
        self,
        requests: Sequence[ChunkRequest],
        *,
        language: str,
        voice: Voice,
        params: dict[str, Any],
        clone_prompt: Any = None,
        sampling: Sequence[Any] | None = None,
    ) -> Iterator[Any]:
        """The loop's `Step`s for a batch: frame by frame, every live row's codes."""
        import torch

        from audio.engine.decode_loop import RowPrompt
        from audio.engine.sampling import RowSampling

        texts = [r.text for r in requests]
        with torch.inference_mode():
            inputs = capture_talker_inputs(
                self.tts, self.variant, texts, language=language, voice=voice, clone_prompt=clone_prompt, **params
            )
        if any(inputs.talker_kwargs.get(k) != v for k, v in self._control.items()):
            raise ModelError(
                f"qwen_tts {PINNED_QWEN_TTS} layout changed: its talker settings are not the expected ones"
            )
        mask = inputs.attention_mask.bool()
        prompts = [
            RowPrompt(inputs.inputs_embeds[i][mask[i]], inputs.trailing_text_hidden[i]) for i in range(len(texts))
        ]
        row_sampling = sampling or [RowSampling.from_talker_kwargs(inputs.talker_kwargs)] * len(texts)
        return self.loop.run(
            prompts,
            inputs.tts_pad_embed,
            [r.budget_frames for r in requests],
            row_sampling,
            [r.seed for r in requests],
        )

    def generate(
        self,
        requests: Sequence[ChunkRequest],
        *,
        language: str,
        voice: Voice,
        params: dict[str, Any],
        clone_prompt: Any = None,
    ) -> list[np.ndarray]:
        import torch

        rows: list[list[Any]] = [[] for _ in requests]
        for step in self.frames(requests, language=language, voice=voice, params=params, clone_prompt=clone_prompt):
            for row, codes in zip(step.rows, step.codes, strict=True):
                rows[row].append(codes)
        with torch.inference_mode():
            return decode_whole(self.tts, [torch.stack(r) for r in rows], [_ref_codes(clone_prompt)] * len(requests))

    def stream(
        self,
        requests: Sequence[ChunkRequest],
        *,
        language: str,
        voice: Voice,
        params: dict[str, Any],
        clone_prompt: Any = None,
        piece_frames: int | None = None,
    ) -> Iterator[AudioPiece]:
        piece = piece_frames or max(1, round(self.frame_rate_hz))  # about 1 s of audio
        ref = _ref_codes(clone_prompt)
        decoders = [IncrementalDecoder(self.tts, piece_frames=piece, ref_codes=ref) for _ in requests]
        open_rows = set(range(len(requests)))
        for step in self.frames(requests, language=language, voice=voice, params=params, clone_prompt=clone_prompt):
            for row in sorted(open_rows - set(step.rows)):  # finished at the previous step
                yield from _last_piece(row, decoders[row])
            open_rows &= set(step.rows)
            for row, codes in zip(step.rows, step.codes, strict=True):
                first = decoders[row].frames_out
                audio = decoders[row].push(codes)
                if audio is not None:
                    yield AudioPiece(row, audio, first, decoders[row].frames_out - first, final=False)
        for row in sorted(open_rows):
            yield from _last_piece(row, decoders[row])


def _last_piece(row: int, decoder: IncrementalDecoder) -> Iterator[AudioPiece]:
    first = decoder.frames_out
    audio = decoder.flush()
    if audio is None:
        audio = np.zeros(0, dtype=np.float32)
    yield AudioPiece(row, audio, first, decoder.frames_out - first, final=True)


def _ref_codes(clone_prompt: Any) -> Any:
    """A cloned voice's reference codes (ICL), or None (x-vector only, or not a clone)."""
    if not clone_prompt:
        return None
    return clone_prompt[0].ref_code
