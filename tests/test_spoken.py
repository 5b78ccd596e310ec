"""How text is read aloud: `is_speakable`, `spoken_weight`, and the budget and checks a chunk gets from it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from audio.quality import QualityLimits, check_chunk, frame_budget
from audio.serving.service import make_handler
from audio.text.splitter import text_weight
from audio.text.spoken import is_speakable, spoken_weight

FRAME = 1920
FRAME_RATE = 12.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Hello there.", 12.0, id="prose-as-written"),
        pytest.param("$1,234,567.89", 80.0, id="currency-with-separators"),  # 7*8 + 6 + 2*5 + 8
        pytest.param("2024", 32.0, id="year"),
        pytest.param("3.5 km", 29.0, id="decimal-with-unit"),  # 8 + 6 + 5 + 10
        pytest.param("50%", 23.0, id="percent"),
        pytest.param("10/20", 35.0, id="per"),
        pytest.param("FBI", 9.0, id="spelled-abbreviation"),
        pytest.param("U.S.", 6.0, id="dotted-abbreviation"),
        pytest.param("Wir haben 1.000.000 Euro.", 72.0, id="german-separators"),
        pytest.param("你好。", 9.0, id="cjk-as-written"),
    ],
)
def test_spoken_weight(text, expected):
    assert spoken_weight(text) == expected
    assert spoken_weight(text) >= text_weight(text)


@pytest.mark.parametrize(
    ("text", "speakable"),
    [
        pytest.param("Hi", True, id="letters"),
        pytest.param("42", True, id="digits"),
        pytest.param("%", True, id="named-symbol"),
        pytest.param("你", True, id="cjk"),
        pytest.param("...", False, id="ellipsis"),
        pytest.param("— – -", False, id="dashes"),
        pytest.param("😀🎉", False, id="emoji"),
        pytest.param(" \n\t", False, id="whitespace"),
        pytest.param("「」《》。", False, id="cjk-punctuation"),
    ],
)
def test_is_speakable(text, speakable):
    assert is_speakable(text) is speakable


def test_a_long_read_number_is_not_a_runaway_by_its_budget():
    limits = QualityLimits()
    said_s = 6.5  # "one million two hundred thirty-four thousand ... and eighty-nine cents"
    frames = round(said_s * FRAME_RATE)
    written = frame_budget(text_weight("$1,234,567.89"), FRAME_RATE, limits)
    spoken = frame_budget(spoken_weight("$1,234,567.89"), FRAME_RATE, limits)
    assert (written, spoken) == (66, 275)
    assert written < frames < spoken


class SpeaksAtLength:
    """Delegates to the real model, then lets each chunk speak `seconds` of (loud noise) audio, unless its
    budget runs out first: what a real voice reading the text does."""

    def __init__(self, real, seconds: float):
        self.real, self.seconds = real, seconds
        self.sample_rate, self.frame_samples = real.sample_rate, real.frame_samples
        self.budgets: list[int] = []

    def generate(self, requests, **kwargs):
        self.budgets.extend(r.budget_frames for r in requests)
        wavs = self.real.generate([dataclasses.replace(r, budget_frames=1) for r in requests], **kwargs)
        out = []
        for r in requests:
            frames = min(round(self.seconds * FRAME_RATE), r.budget_frames)
            out.append(np.random.default_rng(1).uniform(-0.3, 0.3, frames * self.frame_samples).astype(np.float32))
        assert len(out) == len(wavs)
        return out


def test_a_chunk_read_longer_than_written_passes_its_checks(make_worker, model_cache):
    model = SpeaksAtLength(model_cache.get("0.6B-CustomVoice"), seconds=6.5)
    worker = make_worker(get_model=lambda name: model)
    result = make_handler(worker)({"id": "n", "input": {"text": "$1,234,567.89", "model": "0.6B-CustomVoice"}})
    assert result["metadata"]["retries"] == 0
    assert model.budgets == [275]  # spoken weight 80: (0.25 * 80 + 2) s at 12.5 Hz
    assert result["metadata"]["duration_seconds"] == round(81 * FRAME / 24000, 3)  # all 6.5 s of it


def test_a_short_word_in_a_quiet_chunk_is_not_silent():
    rate = 24000
    audio = np.zeros(3 * rate, np.float32)
    t = np.arange(int(0.05 * rate)) / rate
    audio[rate : rate + t.size] = 0.03 * np.sin(2 * np.pi * 200 * t)  # 50 ms at -33 dBFS, the rest silence
    whole_rms_db = 10 * np.log10(np.mean(audio.astype(np.float64) ** 2))
    assert whole_rms_db < -50  # the old whole-chunk RMS would call it silent
    reason = check_chunk(
        audio, rate, text_weight=3.0, frames=38, budget_frames=60, user_capped=False, limits=QualityLimits()
    )
    assert reason is None
