"""Live sessions (audio/serving/live.py): the text cutter on its own, then the real server on loopback through the
real `websockets` client: text in pieces split mid-word against the same text sent whole, flush, cancel and a
client leaving mid-sentence (generation stopped: frames counted), a slow reader, bad configs and messages, the
session limit, every format, two sessions beside a queue-shaped job, a sentence between a long job's batches,
ElevenLabs' stream-input shape, the example client, and the real `handler.py` process."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import soundfile as sf
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from audio.errors import InputError
from audio.serving import live
from audio.serving.http_server import create_app
from audio.speech import derive_seed
from audio.text.splitter import CLAUSE, FORCED, SENTENCE
from tests.test_http_server import ENV, Served, decode, free_port

ROOT = Path(__file__).resolve().parents[1]
RATE = 24000  # the tiny checkpoint's rate, checked against session.ready
FRAME = 1920  # samples per codec frame at that rate
TOKENS = 9  # max_new_tokens: each sentence is 8 frames on the tiny model (its EOS is off)
SPEECH = (TOKENS - 1) * FRAME
PAUSE = 7200  # 300 ms after a sentence
MAX_LSB_DIFF = 2  # live pieces are decoded incrementally
TEXT = "Hello there. Dr. Smith is here! The U.S. Army came at 5 p.m. today. How are you"


def cuts_of(pieces: list[str], *, clause_chars: int = 100, flush: bool = True) -> list[tuple[str, str, bool]]:
    buffer = live.TextBuffer(clause_chars, 150, 250)
    cuts = [c for piece in pieces for c in buffer.push(piece)]
    if flush:
        cuts += buffer.flush()
    return [(buffer.text[c.start : c.end], c.boundary, c.text_follows) for c in cuts]


@pytest.mark.parametrize(
    ("pieces", "flush", "want"),
    [
        pytest.param(["Hello. Wor"], False, [], id="period-waits-for-the-next-word"),
        pytest.param(["Hello. Wor", "ld "], False, [("Hello.", SENTENCE, True)], id="period-settled-by-a-word"),
        pytest.param(["It is done. I"], False, [("It is done.", SENTENCE, True)], id="plain-word-period-by-a-char"),
        pytest.param(["It is done. i"], False, [], id="lowercase-after-is-no-end"),
        pytest.param(["Wow! T"], False, [("Wow!", SENTENCE, True)], id="exclamation-settled-by-a-char"),
        pytest.param(["Ask Dr.", " Smith", " now. Then "], False, [("Ask Dr. Smith now.", SENTENCE, True)], id="title"),
        pytest.param(["The U.S. A", "rmy won. So "], False, [("The U.S. Army won.", SENTENCE, True)], id="dotted"),
        pytest.param(["你好。我"], False, [("你好。", SENTENCE, True)], id="cjk"),
        pytest.param(["Hello there"], True, [("Hello there", SENTENCE, False)], id="flush-unfinished"),
        pytest.param(
            ["One. Two. Three"],
            True,
            [("One.", SENTENCE, True), ("Two.", SENTENCE, True), ("Three", SENTENCE, False)],
            id="flush-all",
        ),
        pytest.param(
            ["and it is 3.", "5 metres. No"], False, [("and it is 3.5 metres.", SENTENCE, True)], id="decimal-no-end"
        ),
    ],
)
def test_text_is_cut_once_the_text_after_settles_it(pieces, flush, want):
    assert cuts_of(pieces, flush=flush) == want


def test_an_unfinished_sentence_is_cut_at_a_clause_once_enough_waits():
    text = "This first clause runs on for a while, and then the rest of it keeps coming slowly"
    got = cuts_of([w + " " for w in text.split()], clause_chars=30, flush=False)
    assert got == [("This first clause runs on for a while,", CLAUSE, True)]


def test_cjk_without_breaks_is_cut_past_a_chunk_too():
    buffer = live.TextBuffer(20, 20, 40)
    cuts = [c for ch in "我们今天去公园散步然后回家吃饭" * 3 for c in buffer.push(ch)]
    assert [(c.end - c.start, c.boundary) for c in cuts][:1] == [(6, FORCED)]  # 18 of weight: the target


def test_a_clause_without_breaks_is_cut_only_past_a_chunk():
    buffer = live.TextBuffer(20, 20, 40)
    cuts = [c for word in ("word " * 12).split(" ") for c in buffer.push(word + " ")]
    assert [(c.end - c.start, c.boundary) for c in cuts][:1] == [(19, FORCED)]


@pytest.mark.parametrize(
    ("config_fields", "want"),
    [
        pytest.param(
            {"task_type": "Base", "ref_audio": "x", "x_vector_only_mode": True},
            {"model": "0.6B-Base", "ref_audio": "x", "x_vector_only": True, "output_format": "pcm"},
            id="vllm-names",
        ),
        pytest.param(
            {"response_format": "ulaw_8000"}, {"output_format": "ulaw", "sample_rate": 8000}, id="elevenlabs-format"
        ),
        pytest.param(
            {"instructions": "calm", "params": {"top_k": 1}, "max_new_tokens": 5},
            {"instruct": "calm", "params": {"top_k": 1, "max_new_tokens": 5}, "output_format": "pcm"},
            id="params",
        ),
    ],
)
def test_a_session_config_is_a_contract_job(config_fields, want):
    assert live.session_job({"type": "session.config", **config_fields}, "0.6B-CustomVoice") == {
        **want,
        "stream": True,
        "delivery": "base64",
    }


@pytest.mark.parametrize(
    ("config_fields", "fragment"),
    [
        pytest.param({"instruct": "a", "instructions": "b"}, "not both", id="both"),
        pytest.param({"response_format": "pcm_16000", "sample_rate": 8000}, "names 16000 Hz", id="two-rates"),
        pytest.param({"task_type": "Podcast"}, "unknown task_type", id="task"),
        pytest.param({"stream_audio": "yes"}, "stream_audio", id="stream-audio"),
    ],
)
def test_a_bad_session_config_is_refused_by_name(config_fields, fragment):
    with pytest.raises(InputError, match=fragment):
        live.session_job(config_fields, "0.6B-CustomVoice")


# -- the server ------------------------------------------------------------------------------------------------


@pytest.fixture
def serve(make_worker):
    servers = []

    def start(env=None, get_model=None):
        worker = make_worker({**ENV, **(env or {})}, get_model=get_model)
        servers.append(Served(create_app(worker, preload=False)))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def url(server) -> str:
    return f"ws://127.0.0.1:{server.port}{live.ROUTE}"


def config(**fields) -> str:
    return json.dumps(
        {"type": "session.config", "voice": "Ryan", "seed": 5, "params": {"max_new_tokens": TOKENS}, **fields}
    )


def msg(kind: str, **fields) -> str:
    return json.dumps({"type": kind, **fields})


class Received:
    """What a session sent: events in order, each sentence's binary frames, the close code."""

    def __init__(self):
        self.events: list[dict] = []
        self.audio: dict[int, list[bytes]] = {}
        self.code: int | None = None
        self._current = -1

    def take(self, message) -> None:
        if isinstance(message, bytes):
            self.audio.setdefault(self._current, []).append(message)
            return
        event = json.loads(message)
        if event["type"] == "audio.start":
            self._current = event["sentence_index"]
        self.events.append(event)

    def until(self, ws, kind: str | None = None) -> dict | None:
        """Read until an event of `kind` (None: until the socket closes)."""
        try:
            while True:
                self.take(ws.recv(timeout=60))
                if kind is not None and self.events and self.events[-1]["type"] == kind:
                    return self.events[-1]
        except ConnectionClosed as closed:
            self.code = closed.rcvd.code if closed.rcvd else None
            if kind is not None:
                raise
        return None

    def kinds(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    def pcm(self, index: int) -> np.ndarray:
        return np.frombuffer(b"".join(self.audio.get(index, [])), "<i2").astype(int)


def speak(server, pieces: list[str], **fields) -> Received:
    got = Received()
    with connect(url(server)) as ws:
        ws.send(config(**fields))
        for piece in pieces:
            ws.send(msg("input.text", text=piece))
        ws.send(msg("input.done"))
        got.until(ws)
    return got


def test_pieces_split_mid_word_speak_as_the_text_sent_whole(serve):
    server = serve()
    whole = speak(server, [TEXT])
    pieces = speak(server, [TEXT[i : i + 3] for i in range(0, len(TEXT), 3)])
    sentences = ["Hello there.", "Dr. Smith is here!", "The U.S. Army came at 5 p.m. today.", "How are you"]
    for got in (whole, pieces):
        assert got.code == 1000
        assert got.kinds() == ["session.ready", *["audio.start", "audio.done"] * 4, "session.done"]
        assert got.events[0]["sample_rate"] == RATE and got.events[0]["format"] == "pcm"
        assert [e["sentence_text"] for e in got.of("audio.start")] == sentences
        assert [TEXT[slice(*e["text_span"])] for e in got.of("audio.done")] == sentences
        # Each sentence: 8 frames, then its pause (the last, cut by input.done, has none).
        assert [len(got.pcm(i)) for i in range(4)] == [SPEECH + PAUSE] * 3 + [SPEECH]
        assert [e["start_seconds"] for e in got.of("audio.done")] == [i * (SPEECH + PAUSE) / RATE for i in range(4)]
        assert {e["duration_seconds"] for e in got.of("audio.done")} == {SPEECH / RATE}
        assert got.of("session.done")[0] == {
            "type": "session.done",
            "total_sentences": 4,
            "duration_seconds": (4 * SPEECH + 3 * PAUSE) / RATE,
        }
    for i in range(4):
        assert np.max(np.abs(whole.pcm(i) - pieces.pcm(i))) <= MAX_LSB_DIFF


def test_flush_speaks_what_waits_and_the_next_sentence_starts_after_its_pause(serve):
    server = serve()
    got = Received()
    with connect(url(server)) as ws:
        ws.send(config())
        ws.send(msg("input.text", text="Hello there"))
        ws.send(msg("input.flush"))
        first = got.until(ws, "audio.done")
        ws.send(msg("input.text", text=" and goodbye."))
        ws.send(msg("input.done"))
        got.until(ws)
    assert first["text_span"] == [0, 11] and first["duration_seconds"] == SPEECH / RATE
    second = got.of("audio.start")[1]
    assert (second["sentence_text"], second["text_span"]) == ("and goodbye.", [12, 24])
    assert second["start_seconds"] == (SPEECH + PAUSE) / RATE  # the flushed sentence's pause, owed before this one
    assert [len(got.pcm(0)), len(got.pcm(1))] == [SPEECH, PAUSE + SPEECH]
    assert not got.pcm(1)[:PAUSE].any()


class Gate:
    """Wraps the real model: records each stream's pieces (frames), holds the first stream after its first piece
    until released, and notes a stream closed before its end."""

    def __init__(self, get_model):
        self._get_model = get_model
        self.release = threading.Event()
        self.closed_early = threading.Event()
        self.streams: list[list[int]] = []
        self.generated = 0

    def __call__(self, name):
        gate, model = self, self._get_model(name)

        class Gated:
            def __getattr__(self, attr):
                return getattr(model, attr)

            def generate(self, requests, **kwargs):
                gate.generated += 1
                return model.generate(requests, **kwargs)

            def stream(self, requests, **kwargs):
                pieces: list[int] = []
                gate.streams.append(pieces)
                finished = False
                try:
                    for piece in model.stream(requests, **kwargs):
                        pieces.append(piece.frames)
                        yield piece
                        if len(gate.streams) == 1 and len(pieces) == 1:
                            gate.release.wait(60)
                    finished = True
                finally:
                    if not finished:
                        gate.closed_early.set()

        return Gated()


def test_cancel_mid_sentence_stops_generation_and_drops_the_queue(serve, model_cache, monkeypatch):
    gate = Gate(model_cache.get)
    cancel = live.LiveSession._cancel
    monkeypatch.setattr(live.LiveSession, "_cancel", lambda self: (cancel(self), gate.release.set()))
    server = serve(get_model=gate)
    got = Received()
    with connect(url(server)) as ws:
        ws.send(config(params={"max_new_tokens": 40}))
        ws.send(msg("input.text", text="First sentence here. Second sentence here. Third one here."))
        got.until(ws, "audio.start")
        got.take(ws.recv(timeout=60))  # the first piece of sentence 0
        ws.send(msg("input.cancel"))
        ack = got.until(ws, "input.cancelled")
        ws.send(msg("input.text", text="New words."))
        ws.send(msg("input.done"))
        got.until(ws)
    # Generation stopped at the frame after the cancel: a live sentence streams one frame a piece, so two frames of
    # a 39-frame sentence were made; the queued sentence never ran; the next text's sentence ran whole.
    assert gate.closed_early.is_set() and gate.generated == 0
    assert len(gate.streams) == 2 and gate.streams[0] == [1, 1]
    assert sum(gate.streams[1]) == 39
    assert ack == {"type": "input.cancelled", "sentences_dropped": 1, "chars_dropped": 36}
    done = got.of("audio.done")
    assert [(d["sentence_index"], d["cancelled"], d["text_span"]) for d in done] == [
        (0, True, [0, 20]),
        (2, False, [58, 68]),
    ]
    assert got.kinds()[-1] == "session.done" and got.code == 1000
    assert len(got.pcm(2)) == 39 * FRAME


def test_a_client_leaving_mid_sentence_stops_its_generation(serve, model_cache, monkeypatch):
    gate = Gate(model_cache.get)
    stop = live.LiveSession._stop_generation
    monkeypatch.setattr(live.LiveSession, "_stop_generation", lambda self: (stop(self), gate.release.set()))
    server = serve(get_model=gate)
    with connect(url(server)) as ws:
        ws.send(config(params={"max_new_tokens": 40}))
        ws.send(msg("input.text", text="First sentence here. Second sentence here. Third"))
        Received().until(ws, "audio.start")
        assert isinstance(ws.recv(timeout=60), bytes)
    assert gate.closed_early.wait(60)
    assert len(gate.streams) == 1 and len(gate.streams[0]) == 2 and sum(gate.streams[0]) < 39
    assert gate.generated == 0


def test_a_slow_reader_is_buffered_to_the_bound_then_told(serve, caplog):
    server = serve({"QWEN_TTS_LIVE_BUFFER_SECONDS": "2"})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    with caplog.at_level(logging.WARNING), connect(url(server), sock=sock, max_queue=1) as ws:
        # The server's kernel takes megabytes before the socket pushes back: 48 kHz gets there in half the audio.
        ws.send(config(params={"max_new_tokens": 40}, sample_rate=48000))
        ws.send(msg("input.text", text=text))
        ws.send(msg("input.done"))
        deadline = time.monotonic() + 120
        while "ended: client_too_slow" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)  # not reading
        got = Received()
        got.until(ws)
    error = got.events[-1]
    assert (
        error["type"] == "error"
        and error["code"] == "client_too_slow"
        and "QWEN_TTS_LIVE_BUFFER_SECONDS" in error["message"]
    )
    assert got.code == 4429
    assert sum(len(got.pcm(i)) for i in got.audio) < 40 * 39 * FRAME * 2


@pytest.mark.parametrize(
    ("messages", "code", "close", "fragment"),
    [
        pytest.param([config(voice="nobody")], "invalid_input", 4400, "unknown voice 'nobody'", id="voice"),
        pytest.param([config(pitch=2)], "invalid_input", 4400, "unknown field(s) in session.config: pitch", id="field"),
        pytest.param([config(response_format="flac")], "invalid_input", 4400, "flac can't be cut", id="flac"),
        pytest.param([config(response_format="ulaw", sample_rate=16000)], "invalid_input", 4400, "8000 Hz", id="ulaw"),
        pytest.param([config(model="0.6B-Base", voice=None)], "invalid_input", 4400, "needs ref_audio", id="base"),
        pytest.param([config(seed=-1)], "invalid_input", 4400, "seed", id="seed"),
        pytest.param([msg("input.text", text="Hi.")], "invalid_input", 4400, "first message must be", id="first"),
        pytest.param([config(), "{not json"], "invalid_input", 4400, "not valid JSON", id="json"),
        pytest.param([config(), b"\x00\x01"], "invalid_input", 4400, "not binary", id="binary"),
        pytest.param([config(), msg("input.speak")], "invalid_input", 4400, "unknown message type", id="type"),
        pytest.param([config(), msg("input.text")], "invalid_input", 4400, "needs text", id="no-text"),
        pytest.param([config(), msg("input.text", text="a", lang="en")], "invalid_input", 4400, "lang", id="extra"),
        pytest.param([config(), config()], "invalid_input", 4400, "comes once", id="config-twice"),
        pytest.param([config()], "idle_timeout", 4408, "QWEN_TTS_LIVE_IDLE_SECONDS", id="idle"),
    ],
)
def test_bad_configs_and_messages_end_with_an_error_event_and_its_close_code(serve, messages, code, close, fragment):
    server = serve({"QWEN_TTS_LIVE_IDLE_SECONDS": "0.5", "QWEN_TTS_MAX_CHARS": "100"})
    got = Received()
    with connect(url(server)) as ws:
        for message in messages:
            ws.send(message)
        got.until(ws)
    error = got.events[-1]
    assert (error["type"], error["code"], got.code) == ("error", code, close)
    assert fragment in error["message"]


def test_text_waiting_past_the_limit_is_refused(serve):
    server = serve({"QWEN_TTS_MAX_CHARS": "100"})
    got = Received()
    with connect(url(server)) as ws:
        ws.send(config())
        ws.send(msg("input.text", text="word " * 30))
        got.until(ws)
    assert got.events[-1]["code"] == "invalid_input" and "QWEN_TTS_MAX_CHARS" in got.events[-1]["message"]


def test_sessions_past_the_limit_get_429_before_the_upgrade(serve):
    server = serve({"QWEN_TTS_MAX_QUEUE": "0"})
    with connect(url(server)) as first:
        first.send(config())
        Received().until(first, "session.ready")
        with pytest.raises(InvalidStatus) as refused:
            connect(url(server))
        assert refused.value.response.status_code == 429
        assert refused.value.response.headers["Retry-After"] == "1"
        assert json.loads(refused.value.response.body)["error"]["code"] == "rate_limited"
    # Once the first session has left (the server counts it out just after its close), a new one is let in.
    for _ in range(100):
        with contextlib.suppress(InvalidStatus):
            assert speak(server, ["Hi."]).code == 1000
            break
        time.sleep(0.05)
    else:
        raise AssertionError("a session was refused after the first one left")


@pytest.mark.parametrize(
    ("fmt", "rate"),
    [
        ("pcm", 24000),
        ("wav", 24000),
        ("ulaw", 8000),
        ("ulaw_8000", 8000),
        ("alaw", 8000),
        ("mp3", 24000),
        ("opus", 24000),
    ],
)
def test_formats(serve, fmt, rate):
    got = speak(serve(), ["One here. Two here."], response_format=fmt)
    assert got.code == 1000 and got.events[0]["sample_rate"] == rate
    name = got.events[0]["format"]
    assert name == fmt.removesuffix("_8000")
    model_s = [(SPEECH + PAUSE) / RATE, SPEECH / RATE]
    if name == "wav":  # one file per sentence
        files = [b"".join(got.audio[i]) for i in range(2)]
        assert [sf.info(io.BytesIO(f)).frames for f in files] == [SPEECH + PAUSE, SPEECH]
        return
    data = b"".join(b for i in sorted(got.audio) for b in got.audio[i])
    samples, decoded_rate = decode(data, name)
    if name in ("ulaw", "alaw"):  # sentence by sentence at 8 kHz
        assert [len(b"".join(got.audio[i])) for i in range(2)] == [round(s * 8000) for s in model_s]
    else:
        assert decoded_rate == (48000 if name == "opus" else rate)  # Opus decodes at 48 kHz
        assert len(samples) / decoded_rate == pytest.approx(sum(model_s), abs=0.08)


def test_two_sessions_beside_a_job_keep_their_own_audio(serve):
    server = serve({"QWEN_TTS_CONCURRENCY": "2"})
    texts = {"Ryan": "Alpha one here. Alpha two here.", "Serena": "Beta one, then. Beta two done."}
    job = {"text": "Gamma job text here.", "seed": 9, "params": {"max_new_tokens": 12}, "output_format": "pcm"}
    results: dict[str, object] = {}
    start = threading.Barrier(3)

    def session(voice):
        start.wait()
        words = texts[voice].split(" ")
        results[voice] = speak(server, [w + " " for w in words], voice=voice)

    def run_job():
        start.wait()
        results["job"] = requests.post(f"{server.url}/run", json={"input": job}, timeout=120).json()

    threads = [threading.Thread(target=session, args=(v,)) for v in texts] + [threading.Thread(target=run_job)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    alone = requests.post(f"{server.url}/run", json={"input": job}, timeout=120).json()
    assert results["job"]["audio_base64"] == alone["audio_base64"]
    for voice, got in ((v, results[v]) for v in texts):
        assert got.code == 1000
        for start_event, done in zip(got.of("audio.start"), got.of("audio.done"), strict=True):
            i = done["sentence_index"]
            one = {
                "text": start_event["sentence_text"],
                "voice": voice,
                "seed": derive_seed(got.events[0]["seed"], "live", i),
                "params": {"max_new_tokens": TOKENS},
                "output_format": "pcm",
            }
            want = np.frombuffer(
                base64.b64decode(requests.post(f"{server.url}/run", json={"input": one}).json()["audio_base64"]), "<i2"
            ).astype(int)
            speech = got.pcm(i)[: len(want)]
            assert len(want) == SPEECH and np.max(np.abs(speech - want)) <= MAX_LSB_DIFF


def test_a_live_sentence_runs_between_a_long_jobs_batches(serve, model_cache):
    calls: list[str] = []

    def recorded(name):
        model = model_cache.get(name)

        class Recorded:
            def __getattr__(self, attr):
                return getattr(model, attr)

            def generate(self, requests, **kwargs):
                calls.append("job batch")
                return model.generate(requests, **kwargs)

            def stream(self, requests, **kwargs):
                calls.append("live sentence")
                yield from model.stream(requests, **kwargs)

        return Recorded()

    server = serve({"QWEN_TTS_MAX_BATCH": "1"}, get_model=recorded)
    text = " ".join(f"Sentence number {i} is here." for i in range(12))
    job = threading.Thread(
        target=requests.post,
        args=(f"{server.url}/run",),
        kwargs={"json": {"input": {"text": text, "params": {"max_new_tokens": 40}}}, "timeout": 300},
    )
    job.start()
    while "job batch" not in calls:
        time.sleep(0.01)
    got = speak(server, ["Live words here."], params={"max_new_tokens": 40})
    job.join(300)
    assert got.code == 1000 and len(got.pcm(0)) == 39 * FRAME
    # The job's 12 batches of one chunk each; the sentence took its turn between them, not after the job.
    assert calls.count("job batch") == 12 and calls.index("live sentence") < len(calls) - 1


def test_a_clone_reference_speaks(serve, speech_wav):
    ref = base64.b64encode(speech_wav).decode()
    got = speak(serve(), ["Cloned words here."], model="0.6B-Base", voice=None, ref_audio=ref, x_vector_only=True)
    assert got.code == 1000 and got.events[0]["model"] == "0.6B-Base" and len(got.pcm(0)) == SPEECH


def test_a_saved_voice_speaks(serve, speech_wav, tmp_path):
    server = serve({"QWEN_TTS_VOICE_DIR": str(tmp_path / "voices")})
    create = {"action": "create_voice", "name": "Agent", "ref_audio": base64.b64encode(speech_wav).decode()}
    voice_id = requests.post(f"{server.url}/run", json={"input": {**create, "x_vector_only": True}}).json()["voice_id"]
    got = speak(server, ["Saved voice words."], voice=voice_id)
    assert got.code == 1000 and got.events[0]["model"] == "0.6B-Base" and len(got.pcm(0)) == SPEECH


def test_a_sentence_that_fails_its_check_ends_the_session(serve):
    got = speak(serve(), ["Hi."], params={})  # the tiny model never stops: without a cap the chunk runs away
    assert (got.events[-1]["type"], got.events[-1]["code"], got.code) == ("error", "synthesis_failed", 4500)
    assert "could not be retried" in got.events[-1]["message"]


def elevenlabs(server, voice: str, query: str, messages: list[dict]) -> tuple[list[dict], int | None]:
    got, code = [], None
    path = live.ELEVENLABS_ROUTE.format(voice_id=voice)
    with connect(f"ws://127.0.0.1:{server.port}{path}?{query}") as ws:
        for message in messages:
            ws.send(json.dumps(message))
        try:
            while True:
                got.append(json.loads(ws.recv(timeout=60)))
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
    return got, code


def test_elevenlabs_stream_input_speaks_as_a_native_session(serve):
    server = serve()
    init = {"text": " ", "voice_settings": {"stability": 0.5}, "xi_api_key": "unused"}
    messages = [init, {"text": "Hello there. "}, {"text": "How are", "flush": True}, {"text": " you?"}, {"text": ""}]
    got, code = elevenlabs(
        server, "Ryan", "output_format=pcm_24000&seed=5&max_new_tokens=9&model_id=eleven_x", messages
    )
    assert code == 1000 and got[-1] == {"isFinal": True}
    assert all(m["isFinal"] is None and set(m) == {"audio", "isFinal", "normalizedAlignment"} for m in got[:-1])
    audio = b"".join(base64.b64decode(m["audio"]) for m in got[:-1])
    native = speak(server, ["Hello there. ", "How are"], seed=5)  # the flush cuts "How are" on its own
    native_audio = b"".join(b"".join(native.audio[i]) for i in sorted(native.audio))
    assert len(audio) == 2 * (SPEECH + PAUSE + SPEECH + PAUSE + SPEECH) and audio[: len(native_audio)] == native_audio


@pytest.mark.parametrize(
    ("query", "want"),
    [
        pytest.param("output_format=ulaw_8000", ("ok", 1000), id="ulaw_8000"),
        pytest.param("output_format=mp3_44100_128", ("ok", 1000), id="mp3-with-bitrate"),
        pytest.param("output_format=flac_44100", ("invalid_input", 4400), id="flac"),
    ],
)
def test_elevenlabs_formats_and_errors(serve, query, want):
    got, code = elevenlabs(serve(), "Ryan", f"{query}&max_new_tokens=9", [{"text": " "}, {"text": "Hi."}, {"text": ""}])
    assert (got[-1].get("error", "ok"), code) == want


def test_the_example_client_streams_a_file_word_by_word_and_saves_the_audio(serve, tmp_path, capsys):
    from scripts import live_client

    server = serve()
    (tmp_path / "reply.txt").write_text("Thanks for calling. Your order left on Monday, so it comes soon. Bye")
    out = tmp_path / "reply.wav"
    argv = ["--url", f"ws://127.0.0.1:{server.port}", "--file", str(tmp_path / "reply.txt"), "--out", str(out)]
    assert live_client.main([*argv, "--words-per-second", "200", "--max-new-tokens", str(TOKENS), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert [line.split("  ")[-1] for line in printed.splitlines() if line.startswith("[")] == [
        "Thanks for calling.",
        "Your order left on Monday, so it comes soon.",
        "Bye",
    ]
    assert "3 sentences: last word -> first audio median" in printed
    assert sf.info(str(out)).frames == 3 * SPEECH + 2 * PAUSE and sf.info(str(out)).samplerate == RATE


def test_the_real_process_serves_a_session(tiny_model_dir):
    from tests.test_http_server import _http_env

    port = free_port()
    env = _http_env(tiny_model_dir, port, QWEN_TTS_PRELOAD="0.6B-CustomVoice")
    proc = subprocess.Popen([sys.executable, "handler.py"], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        got = speak(SimpleNamespace(port=port), ["Hello from ", "the real process. Bye"])
        assert got.code == 1000
        assert [e["sentence_text"] for e in got.of("audio.start")] == ["Hello from the real process.", "Bye"]
        assert [len(got.pcm(i)) for i in range(2)] == [SPEECH + PAUSE, SPEECH]
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
