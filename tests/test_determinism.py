"""The same job with the same seed gives the same bytes, in every output format (issue #23, class 7: opus's Ogg
serial number was random), through the real entry point."""

from __future__ import annotations

import pytest

from audio.output.encoders import FORMATS
from audio.serving.service import make_handler


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_seeded_job_gives_equal_bytes_in_every_format(worker, fmt):
    handle = make_handler(worker)
    job = {"text": "Same words.", "seed": 3, "output_format": fmt, "params": {"max_new_tokens": 4}}
    first, second = (handle({"id": f"run-{i}", "input": job}) for i in range(2))
    assert first["audio_base64"] == second["audio_base64"]


def test_the_openai_shape_is_deterministic_too(worker):
    handle = make_handler(worker)
    request = {"input": "Same words.", "voice": "alloy", "response_format": "opus", "seed": 3, "max_new_tokens": 4}
    first, second = (handle({"id": f"run-{i}", "input": {"openai_input": request}}) for i in range(2))
    assert first["audio_base64"] == second["audio_base64"]
