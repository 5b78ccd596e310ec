"""A worker process for the saved-voice tests: runs the jobs given as a JSON list on stdin on a worker
configured from the environment, and prints {"results": [...], "builds": prompts built} as JSON."""

from __future__ import annotations

import hashlib
import json
import os
import sys

from audio.serving.service import make_handler
from audio.settings import Settings
from audio.worker import Worker

if __name__ == "__main__":
    worker = Worker(Settings.from_env(os.environ))
    handle = make_handler(worker)
    results = [handle({"id": f"p{i}", "input": job}) for i, job in enumerate(json.load(sys.stdin))]
    for result in results:
        if "audio_base64" in result:
            result["audio_sha256"] = hashlib.sha256(result.pop("audio_base64").encode()).hexdigest()
    print(json.dumps({"results": results, "builds": worker.prompts.builds}))
