"""Live speech, the HTTP mode's WebSocket `/v1/audio/speech/stream`: text streamed in piece by piece (an LLM's
tokens) is spoken sentence by sentence while it is still being written, and stops at once when the caller
interrupts.

Protocol (vLLM-Omni's): the client sends `session.config` once, then `input.text` pieces, `input.flush`,
`input.cancel` and finally `input.done`; the server answers `session.ready`, then per sentence `audio.start`, its
audio as binary frames and `audio.done`, and `session.done` at the end; or `error`, then a close whose code matches
the error's code (`CLOSE_CODES`).

`TextBuffer` cuts the session's text with the worker's own splitter: a sentence once the text after it settles the
cut (so slow text never ends speech early), a clause of an unfinished sentence once `live_clause_chars` wait. Each
sentence is one synthesis plan run by `streaming.AudioStream` (the generator with a listener, so the engine's early
pieces), on the shared models through the model gate like every other request. Sessions count against the HTTP
mode's admission limit but hold no run slot: a live sentence and a long job meet at the gate, batch by batch, so
neither waits for the other to end. Audio waits in an `Outbox` bounded in seconds (past the bound a slow reader's
session ends); `input.cancel` and a closed socket stop the generation at its next frame and drop what was queued.
What ends a session becomes its error event in one place (`error_event`). `ElevenLabsSocket` carries ElevenLabs'
`stream-input` messages over the same session.
"""

import asyncio
import base64
import collections
import contextlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from audio.catalog import find_model
from audio.errors import Cancelled, ClientTooSlow, IdleTimeout, InputError, quoted
from audio.openai_compat import speech_request
from audio.output import encoders
from audio.serving import streaming
from audio.serving.service import STATUS_FOR_CODE, failure
from audio.speech import derive_seed
from audio.text.splitter import CLAUSE, SENTENCE, ChunkSpan, split_chunks, text_weight
from audio.text.spoken import is_speakable

log = logging.getLogger(__name__)

ROUTE = "/v1/audio/speech/stream"
ELEVENLABS_ROUTE = "/v1/text-to-speech/{voice_id}/stream-input"
CLOSE_NORMAL = 1000
# 4000 + the HTTP status the HTTP mode answers the same code with; the session's own codes take 408 and 429's.
CLOSE_CODES = {
    **{code: 4000 + status for code, status in STATUS_FOR_CODE.items()},
    "idle_timeout": 4408,
    "client_too_slow": 4429,
}
DEFAULT_FORMAT = "pcm"
# ElevenLabs names its formats <format>_<rate> (ulaw_8000, pcm_16000).
_FORMAT_AT_RATE = re.compile(r"(pcm|wav|mp3|opus|aac|ulaw|alaw)_(\d{4,5})")
_CONTRACT_FIELDS = ("model", "voice", "language", "instruct", "ref_audio", "ref_text", "x_vector_only", "seed")
_ALIASES = {"instructions": "instruct", "x_vector_only_mode": "x_vector_only"}  # vLLM-Omni's / OpenAI's names
CONFIG_FIELDS = (
    *_CONTRACT_FIELDS,
    *_ALIASES,
    "params",
    "max_new_tokens",
    "task_type",
    "response_format",
    "sample_rate",
    "stream_audio",
)
_PROBE_TEXT = "Hello."  # a config is validated as a job speaking this
_UNBOUNDED = 10**9
_CLOSERS = "\"'”’)]}»」』》）】〉〕｝"
# After these (closers aside) the splitter's cut depends on the next character only, as after a period that ends
# a plain lowercase word ("today.") and after CJK; after other periods it may depend on the next word ("U.S.
# Army", "Dr. No", "5 p.m. EST"), so a cut there waits for a whole word after it.
_SETTLED_BY_ONE_CHAR = frozenset("!?…;:,。！？；：，、｡\n")
_PLAIN_WORD_PERIOD = re.compile(r"(?:^|\s)[a-z]{2,}\.\Z")
_ONE_WORD = re.compile(r"\s*\S+(\s)?")
_FFMPEG_FORMATS = ("mp3", "opus", "aac")
_DRAIN_POLL_S = 0.1  # how often an idle ffmpeg-encoded session sends what its encoder has finished


class ClientGone(Exception):
    """The client closed the socket (or it broke): the session ends without an error event."""


# -- text -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    start: int  # text[start:end] of the session's text
    end: int
    boundary: str  # the splitter's SENTENCE | CLAUSE | FORCED: the pause after it
    text_follows: bool  # text after it settled the cut (else a flush or the end did)


def _settled(text: str, end: int) -> bool:
    """Whether the text after a cut at `end` is enough for the splitter's decision there to be final."""
    word = _ONE_WORD.match(text, end)
    if word is None:
        return False
    if word.group(1) is not None:
        return True
    before = text[:end].rstrip(_CLOSERS)
    if before[-1:] in _SETTLED_BY_ONE_CHAR or _PLAIN_WORD_PERIOD.search(before) is not None:
        return True
    return text_weight(before[-1:]) > 1  # CJK: no spaces, so no whole word ever comes; one character decides


class TextBuffer:
    """A session's text as it arrives, and how far it has been cut for speaking. `push` and `flush` return the
    new cuts in order; spans are positions in all the text received (what was dropped included)."""

    def __init__(self, clause_chars: int, chunk_target_chars: int, chunk_max_chars: int):
        self.text = ""
        self.cut_to = 0
        self.clause_chars = clause_chars
        self.target_chars = chunk_target_chars
        self.max_chars = chunk_max_chars

    @property
    def waiting_chars(self) -> int:
        return len(self.text) - self.cut_to

    def push(self, piece: str) -> list[Cut]:
        self.text += piece
        return self._cuts(final=False)

    def flush(self) -> list[Cut]:
        return self._cuts(final=True)

    def drop(self) -> int:
        """Forget the text not cut yet; returns how many characters that was."""
        dropped = len(self.text[self.cut_to :].strip())
        self.cut_to = len(self.text)
        return dropped

    def _cuts(self, *, final: bool) -> list[Cut]:
        out: list[Cut] = []
        while True:
            base = self.cut_to
            rest = self.text[base:]
            spans = split_chunks(rest, 1, _UNBOUNDED) if rest.strip() else []  # one span per sentence
            if not spans:
                return out
            if final:
                out += [Cut(base + s.start, base + s.end, s.boundary, i < len(spans) - 1) for i, s in enumerate(spans)]
                self.cut_to = len(self.text)
                return out
            head = spans[0] if len(spans) > 1 and _settled(rest, spans[0].end) else None
            if head is None and len(spans) == 1:
                head = self._clause(rest)
            if head is None:
                return out
            out.append(Cut(base + head.start, base + head.end, head.boundary, True))
            self.cut_to = base + head.end

    def _clause(self, rest: str) -> ChunkSpan | None:
        """The first clause of an unfinished sentence once it holds `clause_chars` (a forced cut once it is longer
        than a chunk may be), or None."""
        weight = text_weight(rest.strip())
        if weight <= self.clause_chars:
            return None
        # A limit just under its weight makes the splitter cut it at its strongest breaks only (`;:`, else `,`).
        pieces = split_chunks(rest, self.clause_chars, max(self.clause_chars, int(weight) - 1))
        if len(pieces) > 1 and pieces[0].boundary == CLAUSE and _settled(rest, pieces[0].end):
            return pieces[0]
        if weight > self.max_chars:
            pieces = split_chunks(rest, self.target_chars, self.max_chars)
            if len(pieces) > 1 and _settled(rest, pieces[0].end):
                return pieces[0]
        return None


# -- config -----------------------------------------------------------------------------------------------------


def output_format(value: Any) -> tuple[str, int | None]:
    """A session's `response_format` and the rate it names, if it names one (`ulaw_8000`)."""
    if not isinstance(value, str):
        raise InputError(f"response_format must be a string, got {type(value).__name__}")
    name = value.strip().lower()
    named = _FORMAT_AT_RATE.fullmatch(name)
    return (named.group(1), int(named.group(2))) if named else (name, None)


def session_job(config: dict[str, Any], default_model: str) -> dict[str, Any]:
    """The job contract's input (without text) that a `session.config` asks for; the contract checks it."""
    unknown = sorted(k for k in config if k not in CONFIG_FIELDS and k != "type")
    if unknown:
        raise InputError(
            f"unknown field(s) in session.config: {', '.join(unknown)}; it takes {', '.join(CONFIG_FIELDS)}"
        )
    given = {k: v for k, v in config.items() if v is not None and k != "type"}
    job = {name: given[name] for name in _CONTRACT_FIELDS if name in given}
    for alias, name in _ALIASES.items():
        if alias in given:
            if name in given:
                raise InputError(f"session.config: give {name} or {alias}, not both")
            job[name] = given[alias]
    if "task_type" in given:  # vLLM-Omni's way to pick a model kind: resolved as the HTTP mode's speech route does
        asked = {
            "input": _PROBE_TEXT,
            "task_type": given["task_type"],
            **({"model": job["model"]} if "model" in job else {}),
        }
        job["model"] = speech_request(asked, default_model, where="session.config").job.get("model", default_model)
    if "params" in given:
        job["params"] = given["params"]
    if "max_new_tokens" in given:
        params = job.get("params", {})
        if not isinstance(params, dict):
            raise InputError("session.config: params must be an object")
        job["params"] = {**params, "max_new_tokens": given["max_new_tokens"]}
    if not isinstance(given.get("stream_audio", True), bool):
        raise InputError("session.config: stream_audio must be true or false (audio is streamed either way)")
    fmt, rate = output_format(given.get("response_format", DEFAULT_FORMAT))
    job["output_format"] = fmt
    if rate is not None and given.get("sample_rate", rate) != rate:
        raise InputError(
            f"session.config: response_format {fmt}_{rate} names {rate} Hz, but sample_rate is {given['sample_rate']}"
        )
    if rate is not None or "sample_rate" in given:
        job["sample_rate"] = given.get("sample_rate", rate)
    return {**job, "stream": True, "delivery": "base64"}


def error_event(worker: Any, exc: BaseException, session_id: str) -> tuple[dict[str, Any], int]:
    """The error event and close code for what ended a session: the worker's typed errors through the service's
    one mapping (a failure that leaves the GPU unusable included), anything else `internal`."""
    err = failure(worker, exc, f"live-{session_id}")["error"]  # type: ignore[arg-type]
    return {"type": "error", **err}, CLOSE_CODES.get(err["code"], CLOSE_CODES["internal"])


# -- the session ----------------------------------------------------------------------------------------------


@dataclass
class Sentence:
    index: int
    start: int  # its span in the session's text
    end: int
    text: str
    ready_at_s: float  # perf_counter when the message that completed it arrived
    pause_after_ms: float
    text_follows: bool  # its pause is sent at its end (else before the next sentence, if one comes)
    epoch: int  # the cancels before it: a later cancel drops it


@dataclass(frozen=True)
class _Cancel:
    sentences_dropped: int
    chars_dropped: int


_DONE = object()
_CLOSE = object()


class Outbox:
    """What waits to be sent, in order: events, audio (with its seconds, counted until sent) and the final close.
    More than `bound_s` of audio waiting is a client that reads too slowly."""

    def __init__(self, bound_s: float):
        self.items: collections.deque[tuple[str, Any, float]] = collections.deque()
        self.audio_s = 0.0
        self.bound_s = bound_s
        self._ready = asyncio.Event()

    def event(self, payload: dict[str, Any]) -> None:
        self._put("text", json.dumps(payload), 0.0)

    def audio(self, data: bytes, seconds: float) -> None:
        if not data:
            return
        self._put("bytes", data, seconds)
        if self.audio_s > self.bound_s:
            raise ClientTooSlow(
                f"the client read its audio too slowly: more than {self.bound_s:g} s of audio waited to be sent "
                "(QWEN_TTS_LIVE_BUFFER_SECONDS); read the socket as the audio arrives"
            )

    def close(self) -> None:
        self._put("close", _CLOSE, 0.0)

    def purge_audio(self) -> None:
        kept = [item for item in self.items if item[0] != "bytes"]
        self.audio_s -= sum(item[2] for item in self.items if item[0] == "bytes")
        self.items = collections.deque(kept)

    def _put(self, kind: str, payload: Any, seconds: float) -> None:
        self.items.append((kind, payload, seconds))
        self.audio_s += seconds
        self._ready.set()

    async def next(self) -> tuple[str, Any, float]:
        while not self.items:
            self._ready.clear()
            await self._ready.wait()
        return self.items.popleft()

    def sent(self, seconds: float) -> None:
        self.audio_s -= seconds


class LiveSession:
    """One WebSocket's session: a receiver (messages → sentences), a speaker (sentences → audio, one at a time, in
    order) and a sender (the outbox → the socket), ended together by the first to finish or fail."""

    def __init__(self, worker: Any, websocket: Any):
        self.worker = worker
        self.ws = websocket
        self.id = secrets.token_hex(4)
        settings = worker.settings
        config = worker.generator.config
        self.buffer = TextBuffer(settings.live_clause_chars, config.chunk_target_chars, config.chunk_max_chars)
        self.pause_ms = {SENTENCE: config.sentence_pause_ms, CLAUSE: config.clause_pause_ms}  # a forced cut: none
        self.max_chars = settings.max_chars
        self.idle_s = settings.live_idle_s
        self.outbox = Outbox(settings.live_buffer_s)
        self.sentences: asyncio.Queue = asyncio.Queue()
        self.job: dict[str, Any] = {}
        self.seed = 0
        self.fmt = DEFAULT_FORMAT
        self.rate = 0
        self.encoder: encoders.StreamEncoder | None = None
        self.epoch = 0
        self.next_index = 0
        self.queued_chars = 0
        self.speaking = False
        self.done_received = False
        self.generating: threading.Event | None = None  # the cancel of the sentence being generated
        self.position = 0  # samples of audio in the session so far, at the output rate
        self.owed_pause_ms = 0.0  # the previous sentence's pause, owed before the next one
        self.spoken = 0

    # -- the flow --------------------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.ws.accept()
        tasks = {asyncio.create_task(self._send_loop())}
        sender = next(iter(tasks))
        try:
            await self._configure(await self._receive())
            tasks |= {asyncio.create_task(self._receive_loop()), asyncio.create_task(self._speak_loop())}
            while True:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if sender in done:
                    log.info("live session %s done: %d sentence(s)", self.id, self.spoken)
                    return
                tasks -= done
        except ClientGone:
            log.info("live session %s: the client went away; its generation stops at the next frame", self.id)
        except Exception as exc:
            for task in tasks:
                task.cancel()
            self._stop_generation()
            event, code = error_event(self.worker, exc, self.id)
            log.warning("live session %s ended: %s", self.id, event["code"])
            # A client that doesn't read may never take these: they wait at most as long as an idle session.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._send_error(event, code), timeout=max(self.idle_s, 1.0))
        finally:
            for task in tasks:
                task.cancel()
            self._stop_generation()
            # A receiver may still see the client leave after the end: no news, but it is collected.
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.encoder is not None:
                self.encoder.close()

    async def _send_error(self, event: dict[str, Any], code: int) -> None:
        await self.ws.send_text(json.dumps(event))
        await self.ws.close(code, event["code"])

    def _stop_generation(self) -> None:
        if self.generating is not None:
            self.generating.set()

    async def _configure(self, message: dict[str, Any]) -> None:
        if message["type"] != "session.config":
            raise InputError(f"the first message must be session.config, not {message['type']}")
        self.job = session_job(message, self.worker.settings.default_model)
        plan = await asyncio.to_thread(self.worker.plan_synthesis, {**self.job, "text": _PROBE_TEXT})
        streaming.check_streamable(plan)
        self.worker.check_synthesis(plan)
        model = await asyncio.to_thread(self.worker.generator.get_model, plan.segments[0].model.name)
        self.fmt = plan.output_format
        self.rate = plan.sample_rate or model.sample_rate
        encoders.check_streamable(self.fmt, self.rate)
        self.encoder = None if self.fmt == "wav" else encoders.StreamEncoder(self.fmt, self.rate)
        self.seed = plan.seed if plan.seed is not None else secrets.randbelow(2**32)
        self.outbox.event(
            {
                "type": "session.ready",
                "session_id": self.id,
                "model": plan.segments[0].model.name,
                "format": self.fmt,
                "sample_rate": encoders.encoded_rate(self.fmt, self.rate),
                "seed": self.seed,
            }
        )
        log.info("live session %s: %s, %s at %d Hz", self.id, plan.segments[0].model.name, self.fmt, self.rate)

    # -- receiving -------------------------------------------------------------------------------------------
    async def _receive(self) -> dict[str, Any]:
        """The next message, a JSON object with a type. Idle (nothing received, nothing left to say) for
        `idle_s`: IdleTimeout."""
        while True:
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout=self.idle_s)
                break
            except asyncio.TimeoutError:
                if self.speaking or not self.sentences.empty() or self.outbox.items:
                    continue
                raise IdleTimeout(
                    f"the session received nothing for {self.idle_s:g} s and had nothing left to say "
                    "(QWEN_TTS_LIVE_IDLE_SECONDS)"
                ) from None
        if message["type"] == "websocket.disconnect":
            raise ClientGone
        if message.get("text") is None:
            raise InputError("messages are JSON text (session.config, input.text, ...), not binary")
        try:
            payload = json.loads(message["text"])
        except ValueError:
            raise InputError("a message is not valid JSON") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            raise InputError('each message is a JSON object with a "type", e.g. {"type": "input.text", "text": "Hi"}')
        return payload

    async def _receive_loop(self) -> None:
        while True:
            message = await self._receive()
            kind = message["type"]
            arrived = time.perf_counter()
            allowed = {"type", "text"} if kind == "input.text" else {"type"}
            if kind in ("input.text", "input.flush", "input.cancel", "input.done") and set(message) - allowed:
                raise InputError(f"unknown field(s) in {kind}: {', '.join(sorted(set(message) - allowed))}")
            if kind in ("input.text", "input.flush", "input.done") and self.done_received:
                raise InputError(f"{kind} after input.done: a session's text ends with input.done")
            if kind == "input.text":
                if not isinstance(message.get("text"), str):
                    raise InputError("input.text needs text, a string")
                self._queue(self.buffer.push(message["text"]), arrived)
            elif kind == "input.flush":
                self._queue(self.buffer.flush(), arrived)
            elif kind == "input.done":
                self._queue(self.buffer.flush(), arrived)
                self.done_received = True
                self.sentences.put_nowait(_DONE)
            elif kind == "input.cancel":
                self._cancel()
            elif kind == "session.config":
                raise InputError("session.config comes once, as the first message")
            else:
                raise InputError(
                    f"unknown message type {quoted(kind)}: send input.text, input.flush, input.cancel or input.done"
                )
            if self.buffer.waiting_chars + self.queued_chars > self.max_chars:
                raise InputError(
                    f"more than {self.max_chars} characters wait to be spoken (QWEN_TTS_MAX_CHARS): send text no "
                    "faster than it is spoken"
                )

    def _queue(self, cuts: list[Cut], arrived: float) -> None:
        for cut in cuts:
            text = self.buffer.text[cut.start : cut.end]
            if not is_speakable(text):  # "…", an emoji: nothing to say
                continue
            pause = self.pause_ms.get(cut.boundary, 0.0)
            sentence = Sentence(self.next_index, cut.start, cut.end, text, arrived, pause, cut.text_follows, self.epoch)
            self.next_index += 1
            self.queued_chars += len(text)
            self.sentences.put_nowait(sentence)

    def _cancel(self) -> None:
        """Interruption: the sentence being spoken stops at its next frame, the queued ones and the text not yet
        cut are dropped, audio not yet sent is dropped; the speaker acknowledges after the interrupted sentence."""
        self.epoch += 1
        chars = self.buffer.drop()
        dropped, done = 0, False
        while not self.sentences.empty():
            item = self.sentences.get_nowait()
            if item is _DONE:
                done = True
            elif isinstance(item, Sentence):
                dropped += 1
                chars += len(item.text)
        self.queued_chars = 0
        self._stop_generation()
        self.outbox.purge_audio()
        self.owed_pause_ms = 0.0
        self.sentences.put_nowait(_Cancel(dropped, chars))
        if done:
            self.sentences.put_nowait(_DONE)

    # -- speaking --------------------------------------------------------------------------------------------
    async def _next_item(self) -> Any:
        while True:
            try:
                timeout = _DRAIN_POLL_S if self.fmt in _FFMPEG_FORMATS else None
                return await asyncio.wait_for(self.sentences.get(), timeout=timeout)
            except asyncio.TimeoutError:
                self.outbox.audio(self.encoder.drain(), 0.0)

    async def _speak_loop(self) -> None:
        while True:
            item = await self._next_item()
            if item is _DONE:
                if self.encoder is not None:
                    self.outbox.audio(await asyncio.to_thread(self.encoder.finish), 0.0)
                self.outbox.event(
                    {
                        "type": "session.done",
                        "total_sentences": self.spoken,
                        "duration_seconds": round(self.position / self.rate, 4),
                    }
                )
                self.outbox.close()
                return
            if isinstance(item, _Cancel):
                self.outbox.event(
                    {
                        "type": "input.cancelled",
                        "sentences_dropped": item.sentences_dropped,
                        "chars_dropped": item.chars_dropped,
                    }
                )
            elif item.epoch == self.epoch:
                await self._speak(item)

    async def _speak(self, sentence: Sentence) -> None:
        started = time.perf_counter()
        self.queued_chars -= len(sentence.text)
        job = {**self.job, "text": sentence.text, "seed": derive_seed(self.seed, "live", sentence.index)}
        cancel = threading.Event()
        self.generating, self.speaking = cancel, True
        lead = round(self.rate * self.owed_pause_ms / 1000.0)
        trail = round(self.rate * sentence.pause_after_ms / 1000.0) if sentence.text_follows else 0
        start_s = (self.position + lead) / self.rate
        self.outbox.event(
            {
                "type": "audio.start",
                "sentence_index": sentence.index,
                "sentence_text": sentence.text,
                "text_span": [sentence.start, sentence.end],
                "format": self.fmt,
                "sample_rate": encoders.encoded_rate(self.fmt, self.rate),
                "start_seconds": round(start_s, 4),
            }
        )
        first_audio_s = None
        speech = sent_bytes = 0
        waiting_s = 0.0
        cancelled = False
        parts: Iterator[tuple[bytes, int, int]] | None = None
        try:
            plan = await asyncio.to_thread(self.worker.plan_synthesis, job)
            # Pieces of one frame: each is a point where a cancel stops the generation (the stateful decoder's cost
            # follows the frames, not the pieces).
            stream = streaming.AudioStream(self.worker, plan, cancel=cancel, piece_frames=1)
            parts = self._encoded(stream, lead, trail)
            while (part := await asyncio.to_thread(next, parts, None)) is not None:
                data, speech_samples, pause_samples = part
                if sentence.epoch != self.epoch:
                    continue  # interrupted: what is still on its way is dropped
                if first_audio_s is None and speech_samples:
                    first_audio_s = time.perf_counter() - sentence.ready_at_s
                speech += speech_samples
                sent_bytes += len(data)
                self.position += speech_samples + pause_samples
                # wav's file and an ffmpeg encoder's bytes come after their samples: they carry those seconds.
                waiting_s += (speech_samples + pause_samples) / self.rate
                if data:
                    self.outbox.audio(data, waiting_s)
                    waiting_s = 0.0
        except Cancelled:
            cancelled = True
        finally:
            cancel.set()
            self.speaking = False
            if parts is not None:
                with contextlib.suppress(ValueError):  # still running on its thread: `cancel` stops it
                    parts.close()
        cancelled = cancelled or sentence.epoch != self.epoch
        if not cancelled:
            self.owed_pause_ms = 0.0 if sentence.text_follows else sentence.pause_after_ms
        self.spoken += 1
        self.outbox.event(
            {
                "type": "audio.done",
                "sentence_index": sentence.index,
                "text_span": [sentence.start, sentence.end],
                "start_seconds": round(start_s, 4),
                "duration_seconds": round(speech / self.rate, 4),
                "total_bytes": sent_bytes,
                "first_audio_seconds": None if first_audio_s is None else round(first_audio_s, 4),
                "queued_seconds": round(started - sentence.ready_at_s, 4),
                "generation_seconds": round(time.perf_counter() - started, 4),
                "cancelled": cancelled,
                "error": False,
            }
        )

    def _encoded(self, stream: streaming.AudioStream, lead: int, trail: int) -> Iterator[tuple[bytes, int, int]]:
        """A sentence's audio as (bytes, speech samples, pause samples) while it is made (on the speaker's
        threads): the owed pause before its first sound, its own pause after it; wav: one file at its end."""
        whole: list[np.ndarray] | None = [] if self.fmt == "wav" else None
        owed = lead

        def encode(samples: np.ndarray) -> bytes:
            if whole is not None:
                whole.append(samples)
                return b""
            return self.encoder.push(samples)  # type: ignore[union-attr]

        for event in stream:
            last = isinstance(event, streaming.Finished)
            samples = (event.last.samples if event.last else np.zeros(0, np.float32)) if last else event.samples
            if not len(samples) and not last:
                continue
            pause = np.zeros(owed + (trail if last else 0), np.float32)
            head, tail = pause[:owed], pause[owed:]
            data = encode(np.concatenate([head, samples, tail]))
            owed = 0
            if last and whole is not None:
                data = encoders.encode(np.concatenate(whole), self.rate, "wav")
            yield data, len(samples), len(pause)

    # -- sending ---------------------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        while True:
            kind, payload, seconds = await self.outbox.next()
            try:
                if kind == "text":
                    await self.ws.send_text(payload)
                elif kind == "bytes":
                    await self.ws.send_bytes(payload)
                else:
                    await self.ws.close(CLOSE_NORMAL)
                    return
            except Exception as exc:  # the socket is closed or broken
                raise ClientGone from exc
            finally:
                self.outbox.sent(seconds)


class ElevenLabsSocket:
    """ElevenLabs' `stream-input` shape over a live session, for agent frameworks that speak it: the path's voice
    and the query's `output_format`, `language_code`, `model_id` (a worker model, else the default), `seed` and
    `max_new_tokens` make the session.config; `{"text": "..."}` is input.text (`"flush": true` adds input.flush),
    `{"text": ""}` is input.done. Audio goes out as `{"audio": "<base64>", "isFinal": null}`, the end as
    `{"isFinal": true}`, an error as `{"error": code, "message": ...}` before the close; the other events and
    query parameters are not part of that shape and are left out."""

    def __init__(self, websocket: Any, voice_id: str, query: Any):
        self.ws = websocket
        self.voice_id = voice_id
        self.query = dict(query)
        self.configured = False
        self.pending: collections.deque[dict[str, Any]] = collections.deque()

    async def accept(self) -> None:
        await self.ws.accept()

    async def close(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        await self.ws.close(code, reason)

    async def receive(self) -> dict[str, Any]:
        if self.pending:
            return self.pending.popleft()
        message = await self.ws.receive()
        try:
            payload = json.loads(message["text"]) if message.get("text") is not None else None
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return message  # the session reports what is wrong with it
        ours: list[dict[str, Any]] = []
        if not self.configured:
            self.configured = True
            ours.append(self._config())
        text = payload.get("text")
        ours.append({"type": "input.done"} if text == "" else {"type": "input.text", "text": text})
        if payload.get("flush") is True and text != "":
            ours.append({"type": "input.flush"})
        self.pending.extend({"type": "websocket.receive", "text": json.dumps(m)} for m in ours)
        return self.pending.popleft()

    def _config(self) -> dict[str, Any]:
        query = self.query
        # ElevenLabs names a bitrate too (mp3_44100_128): the worker's own is used (64 kbps to 24 kHz, 128 above).
        fmt = re.sub(r"^(mp3|opus)_(\d+)_\d+$", r"\1_\2", query.get("output_format", "mp3_44100_128"))
        config: dict[str, Any] = {"type": "session.config", "voice": self.voice_id, "response_format": fmt}
        if query.get("language_code"):
            config["language"] = query["language_code"]
        if query.get("model_id") and find_model(query["model_id"]) is not None:
            config["model"] = query["model_id"]
        for name in ("seed", "max_new_tokens"):
            if name in query:
                config[name] = int(query[name]) if query[name].isdigit() else query[name]
        return config

    async def send_text(self, data: str) -> None:
        event = json.loads(data)
        if event["type"] == "session.done":
            await self.ws.send_text(json.dumps({"isFinal": True}))
        elif event["type"] == "error":
            await self.ws.send_text(json.dumps({"error": event["code"], "message": event["message"]}))

    async def send_bytes(self, data: bytes) -> None:
        audio = base64.b64encode(data).decode()
        await self.ws.send_text(json.dumps({"audio": audio, "isFinal": None, "normalizedAlignment": None}))


def _denial_is_no_error(record: logging.LogRecord) -> bool:
    # Gotcha: uvicorn's sans-I/O WebSocket protocol logs an error after every denial response (a 429 or 503 sent
    # instead of the upgrade), as if the app had forgotten the handshake; the response itself is sent right.
    return record.getMessage() != "ASGI callable returned without completing handshake."


def add_route(app: Any, worker: Any, *, admit: Callable[[], Any], leave: Callable[[], None]) -> None:
    """Serve live sessions on `app`. `admit()` is None to let a session in (it then counts until `leave()`), or
    the HTTP response that refuses it before the upgrade (503 while loading, 429 with Retry-After when full)."""
    from fastapi import WebSocket

    logging.getLogger("uvicorn.error").addFilter(_denial_is_no_error)

    async def serve(websocket: WebSocket, socket: Any) -> None:
        refused = admit()
        if refused is not None:
            await websocket.send_denial_response(refused)
            return
        try:
            await LiveSession(worker, socket).run()
        finally:
            leave()

    @app.websocket(ROUTE)
    async def speech_stream(websocket: WebSocket) -> None:
        await serve(websocket, websocket)

    @app.websocket(ELEVENLABS_ROUTE)
    async def elevenlabs_stream_input(websocket: WebSocket, voice_id: str) -> None:
        await serve(websocket, ElevenLabsSocket(websocket, voice_id, websocket.query_params))
