"""Example client of the HTTP mode's live WebSocket (`/v1/audio/speech/stream`): streams a text file into a
session word by word, as an LLM's reply arrives, saves (or plays) the audio and prints, per sentence, the time from
its last word leaving the client to its first audio arriving.

    python scripts/live_client.py --url ws://127.0.0.1:8000 --file reply.txt --out reply.wav
    python scripts/live_client.py --text "Hello there. How are you?" --play      # needs ffplay
    python scripts/live_client.py --file reply.txt --sessions 4 --baseline       # the latency figures

`--sessions N` runs N identical sessions at once (without --out); `--baseline` first times a one-frame job through
`/run` (prompt prefill + one frame + decode), the floor a sentence's first audio is measured against.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

from websockets.sync.client import connect

ROUTE = "/v1/audio/speech/stream"


@dataclass
class SentenceTiming:
    index: int
    text: str
    last_word_sent_s: float  # when the client sent the word that ends it
    first_audio_s: float | None = None  # when its first binary frame arrived
    server_first_audio_s: float | None = None  # the server's: from its text being complete to its first audio
    queued_s: float | None = None  # the server's: how long it waited behind the session's earlier sentences

    @property
    def latency_s(self) -> float | None:
        return None if self.first_audio_s is None else self.first_audio_s - self.last_word_sent_s


@dataclass
class SessionResult:
    sentences: list[SentenceTiming] = field(default_factory=list)
    audio: dict[int, bytearray] = field(default_factory=dict)
    ready: dict = field(default_factory=dict)
    error: dict | None = None


def words_of(text: str) -> list[tuple[str, int]]:
    """The text as the pieces an LLM would send (each word with the space before it) and each piece's end."""
    return [(m.group(), m.end()) for m in re.finditer(r"\s*\S+", text)]


def run_session(url: str, text: str, config: dict, words_per_second: float) -> SessionResult:
    result = SessionResult()
    pieces = words_of(text)
    sent_at: list[tuple[int, float]] = []  # (end of the piece in the text, when it was sent)
    with connect(url.rstrip("/") + ROUTE, max_size=None) as ws:
        ws.send(json.dumps({"type": "session.config", **config}))

        def feed() -> None:
            for piece, end in pieces:
                ws.send(json.dumps({"type": "input.text", "text": piece}))
                sent_at.append((end, time.perf_counter()))
                time.sleep(1.0 / words_per_second)
            ws.send(json.dumps({"type": "input.done"}))

        threading.Thread(target=feed, daemon=True).start()
        current: SentenceTiming | None = None
        for message in ws:
            now = time.perf_counter()
            if isinstance(message, bytes):
                result.audio.setdefault(current.index, bytearray()).extend(message)
                if current.first_audio_s is None:
                    current.first_audio_s = now
                continue
            event = json.loads(message)
            if event["type"] == "session.ready":
                result.ready = event
            elif event["type"] == "audio.start":
                end = event["text_span"][1]
                last_word = next((t for e, t in sent_at if e >= end), now)
                current = SentenceTiming(event["sentence_index"], event["sentence_text"], last_word)
                result.sentences.append(current)
            elif event["type"] == "audio.done":
                current.server_first_audio_s = event["first_audio_seconds"]
                current.queued_s = event["queued_seconds"]
            elif event["type"] == "error":
                result.error = event
    return result


def save(result: SessionResult, out: Path) -> None:
    fmt, rate = result.ready["format"], result.ready["sample_rate"]
    if fmt == "wav":  # one file per sentence
        for index, data in sorted(result.audio.items()):
            path = out.with_name(f"{out.stem}-{index:03d}.wav")
            path.write_bytes(bytes(data))
        print(f"saved {len(result.audio)} sentence file(s) as {out.stem}-NNN.wav")
        return
    data = b"".join(bytes(result.audio[i]) for i in sorted(result.audio))
    if fmt == "pcm":
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(data)
        data = buf.getvalue()
    out.write_bytes(data)
    print(f"saved {out} ({fmt}, {rate} Hz, {len(data)} bytes)")


def play(result: SessionResult) -> None:
    ffplay = shutil.which("ffplay")
    if ffplay is None:
        print("ffplay is not installed: use --out instead", file=sys.stderr)
        return
    fmt, rate = result.ready["format"], result.ready["sample_rate"]
    raw = {"pcm": ["-f", "s16le"], "ulaw": ["-f", "mulaw"], "alaw": ["-f", "alaw"]}.get(fmt, [])
    rate_args = ["-ar", str(rate), "-ch_layout", "mono"] if raw else []
    data = b"".join(bytes(result.audio[i]) for i in sorted(result.audio))
    subprocess.run(
        [ffplay, "-autoexit", "-nodisp", "-loglevel", "error", *raw, *rate_args, "-"], input=data, check=False
    )


def baseline(url: str, config: dict) -> float:
    """Seconds for a one-frame job through /run: the prompt's prefill, one frame and its decode (plus the HTTP)."""
    import requests

    http = url.replace("ws://", "http://").replace("wss://", "https://").rstrip("/")
    job = {k: v for k, v in config.items() if k not in ("response_format", "max_new_tokens")}
    job.update(text="Hello there.", output_format="pcm", params={**config.get("params", {}), "max_new_tokens": 2})
    requests.post(f"{http}/run", json={"input": job}, timeout=300)  # warm
    started = time.perf_counter()
    reply = requests.post(f"{http}/run", json={"input": job}, timeout=300)
    reply.raise_for_status()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:80")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="the text to speak")
    source.add_argument("--text")
    parser.add_argument("--words-per-second", type=float, default=10.0, help="how fast the words are sent")
    parser.add_argument("--voice", default="Ryan")
    parser.add_argument("--model")
    parser.add_argument("--language")
    parser.add_argument("--format", default="pcm", help="pcm, wav, mp3, opus, ulaw (ulaw_8000), alaw")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--max-new-tokens", type=int, help="a cap on each sentence's frames (+1)")
    parser.add_argument("--out", type=Path, help="save the audio here (pcm is saved as WAV)")
    parser.add_argument("--play", action="store_true", help="play the audio with ffplay when the session ends")
    parser.add_argument("--sessions", type=int, default=1, help="identical sessions at once")
    parser.add_argument("--baseline", action="store_true", help="first time a one-frame job through /run")
    args = parser.parse_args(argv)

    text = args.file.read_text() if args.file else args.text
    config: dict = {"voice": args.voice, "response_format": args.format}
    for name, value in (("model", args.model), ("language", args.language), ("seed", args.seed)):
        if value is not None:
            config[name] = value
    if args.max_new_tokens:
        config["max_new_tokens"] = args.max_new_tokens
    if args.baseline:
        print(f"one-frame job through /run (prefill + 1 frame + decode): {baseline(args.url, config):.3f}s")

    results: list[SessionResult] = [SessionResult() for _ in range(args.sessions)]

    def one(i: int) -> None:
        results[i] = run_session(args.url, text, config, args.words_per_second)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(args.sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    latencies, server = [], []
    for n, result in enumerate(results):
        if result.error:
            print(f"session {n}: error {result.error['code']}: {result.error['message']}", file=sys.stderr)
        for s in result.sentences:
            if args.sessions == 1:
                lat = "-" if s.latency_s is None else f"{s.latency_s:.3f}s"
                print(
                    f"[{s.index:3d}] last word -> first audio {lat} (server: {s.server_first_audio_s}s after the "
                    f"cut, {s.queued_s}s queued)  {s.text[:60]}"
                )
            if s.latency_s is not None:
                latencies.append(s.latency_s)
            if s.server_first_audio_s is not None:
                server.append(s.server_first_audio_s)
    if latencies:
        print(
            f"{args.sessions} session(s), {len(latencies)} sentences: last word -> first audio median "
            f"{statistics.median(latencies):.3f}s, max {max(latencies):.3f}s; server (cut -> first audio) median "
            f"{statistics.median(server):.3f}s, max {max(server):.3f}s"
        )
    if args.out and results[0].audio:
        save(results[0], args.out)
    if args.play and results[0].audio:
        play(results[0])
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
