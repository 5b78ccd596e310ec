#!/usr/bin/env python3
"""Speak a whole book or a long podcast through many jobs on RunPod's queue, resumably, into one audio file.

    RUNPOD_API_KEY=... python scripts/long_form.py book.epub --out book.m4b --endpoint-id abc123 --parallel 8
    python scripts/long_form.py book.md --out book.mp3 --url http://localhost:8000 --url http://localhost:8001
    python scripts/long_form.py show.json --out show.mp3 --endpoint-id abc123 --format mp3 --loudness -16

INPUT is plain text or Markdown (chapters at headings, or at lines matching --chapter-regex), an EPUB (chapters
from its spine and table of contents), or a podcast's segments JSON ({"segments": [...]} as a job takes them; a
segment's "chapter" starts a chapter). It is cut into parts of at most --part-chars characters at chapter,
paragraph and sentence boundaries, each one job with one voice (--voice, a saved voice_id, or --ref-audio saved
as a voice first) and its own seed from --seed. At most --parallel parts are in flight; a failed or timed-out
part is retried alone. The parts are joined with pauses (--chapter-pause-ms between chapters), levelled as one
track, encoded once as --format (m4b carries chapter markers), with captions and a chapters file beside --out.

The manifest beside --out (`<stem>.manifest.json`, the parts' audio in `<stem>.parts/`) records every part done:
the same command again, after a crash, Ctrl-C or an edited chapter, fetches only what is missing or changed.
Exit codes: 0 done, 1 parts failed (the rest is kept), 2 usage, 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.longform.assemble import FORMATS  # noqa: E402
from scripts.longform.errors import LongFormError, UsageError  # noqa: E402
from scripts.longform.fanout import EndpointQueue, LocalApiQueue, Retry  # noqa: E402
from scripts.longform.plan import DEFAULT_PART_CHARS, Pauses  # noqa: E402
from scripts.longform.runner import Options, Progress, Report, VoicePlan, run  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", type=Path, metavar="INPUT", help=".txt, .md, .epub or a podcast's .json")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="the book's audio file")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", action="append", help="a local API (handler.py --rp_serve_api); repeat for more")
    where.add_argument("--endpoint-id", help="a deployed RunPod endpoint (key: --api-key or RUNPOD_API_KEY)")
    parser.add_argument("--api-key", help="RunPod API key for --endpoint-id (default: RUNPOD_API_KEY)")
    parser.add_argument("--parallel", type=int, default=4, help="parts in flight at once (default 4)")
    parser.add_argument("--voice", help="a preset speaker (Ryan, Vivian, ...) or a saved voice_id")
    parser.add_argument("--ref-audio", type=Path, help="clone this clip: saved as a voice once, used by every part")
    parser.add_argument("--ref-text", help="transcript of --ref-audio")
    parser.add_argument("--x-vector-only", action="store_true", help="clone from the speaker embedding only")
    parser.add_argument("--model", help="e.g. 1.7B-CustomVoice, 0.6B-CustomVoice, 1.7B-Base")
    parser.add_argument("--language", help="e.g. English, en (default: the worker's Auto)")
    parser.add_argument("--seed", type=int, help="the job seed (default: the manifest's, else random)")
    parser.add_argument("--format", choices=FORMATS, help="output format (default: --out's suffix, else mp3)")
    parser.add_argument("--part-chars", type=int, default=DEFAULT_PART_CHARS, help="most characters per part")
    parser.add_argument("--chapter-regex", help="a line matching this starts a chapter (text and Markdown)")
    parser.add_argument("--chapter-pause-ms", type=int, default=Pauses.chapter_ms)
    parser.add_argument("--paragraph-pause-ms", type=int, default=Pauses.paragraph_ms)
    parser.add_argument("--loudness", default="-18", help="integrated LUFS of the whole track, or 'none'")
    parser.add_argument("--captions", choices=["srt", "vtt", "none"], default="srt")
    parser.add_argument(
        "--job", default="{}", metavar="JSON", help="more fields for every part, e.g. '{\"params\": {...}}'"
    )
    parser.add_argument("--retries", type=int, default=Retry.attempts - 1, help="tries after the first, per part")
    parser.add_argument("--retry-backoff", type=float, default=Retry.backoff_s, help="seconds before a 1st retry")
    parser.add_argument("--part-timeout", type=float, default=Retry.part_timeout_s, help="seconds per part try")
    parser.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto")
    return parser.parse_args(argv)


def options_of(args: argparse.Namespace) -> tuple[Options, VoicePlan]:
    fmt = args.format or (
        args.out.suffix.lstrip(".").lower() if args.out.suffix.lstrip(".").lower() in FORMATS else "mp3"
    )
    try:
        job_fields = json.loads(args.job)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--job is not valid JSON: {exc}") from None
    if not isinstance(job_fields, dict):
        raise UsageError("--job must be a JSON object")
    job_fields.update({k: v for k, v in {"model": args.model, "language": args.language}.items() if v})
    loudness = None if args.loudness.strip().lower() == "none" else float(args.loudness)
    if args.parallel < 1 or args.retries < 0:
        raise UsageError("--parallel must be at least 1 and --retries at least 0")
    if args.ref_audio is not None and args.voice:
        raise UsageError("give --voice or --ref-audio, not both")
    options = Options(
        fmt=fmt,
        part_chars=args.part_chars,
        parallel=args.parallel,
        pauses=Pauses(chapter_ms=args.chapter_pause_ms, paragraph_ms=args.paragraph_pause_ms),
        loudness_lufs=loudness,
        captions=None if args.captions == "none" else args.captions,
        chapter_regex=args.chapter_regex,
        job_fields=job_fields,
        retry=Retry(attempts=args.retries + 1, backoff_s=args.retry_backoff, part_timeout_s=args.part_timeout),
    )
    return options, VoicePlan(args.voice, args.ref_audio, args.ref_text, args.x_vector_only)


def summary(report: Report) -> str:
    return (
        f"wrote {report.out}: {report.duration_s:.1f} s of audio from {report.parts_total} parts "
        f"({report.parts_fetched} fetched, {report.parts_reused} reused, {report.retries} retries) "
        f"in {report.wall_s:.1f} s (join and encode {report.join_s:.1f} s); manifest {report.manifest}"
    )


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv)
    env = os.environ if env is None else env
    try:
        options, voice = options_of(args)
        if args.endpoint_id:
            key = args.api_key or env.get("RUNPOD_API_KEY")
            if not key:
                raise UsageError("an endpoint needs an API key: --api-key KEY or RUNPOD_API_KEY")
            targets = [EndpointQueue(args.endpoint_id, key, env)]
        else:
            targets = [LocalApiQueue(url) for url in args.url]
        bar = {"auto": None, "bar": True, "lines": False}[args.progress]
        report = run(
            args.input, args.out, targets, options=options, voice=voice, seed=args.seed, progress=Progress(bar=bar)
        )
    except LongFormError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # outside the fan-out (which cancels its jobs): nothing is in flight
        print("cancelled; rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
