"""Qwen3-TTS RunPod worker: everything between a job and the bytes a caller gets back.

Top level, where a reader looks first:
- the contract: `schema` (jobs, limits), `settings` (the environment, read once), `errors` (typed, with codes),
  `catalog` (models, speakers, languages), `openai_compat` (the OpenAI speech request's shape);
- the job flow: `worker` (one job: plan → generate → render → deliver), `generator` (text → chunks → batched
  generation with checks and retries), `quality` and `guard` (per-chunk checks, the long-form guard), `render`,
  `results`, `info`, `lifecycle`, and the model side: `speech` (the engine seam), `model_loader` (the one place
  weights are loaded), `model_gate` (cross-job batching).

Packages: `text/` (splitting, spoken weight, captions), `voices/` (references, saved voices, prompt cache, voice
actions), `output/` (post-processing, joining, encoders, delivery), `engine/` (the engines behind `speech`),
`serving/` (what the entry points share, streaming, the HTTP mode). `handler.py`, outside, is the RunPod entry.

Each package's `MAY_IMPORT` names what its modules may import from this project besides themselves
(tests/test_architecture.py holds every module to it); this one is for the top-level modules: anything but
`serving`, which stands on top of them.
"""

MAY_IMPORT = ("audio.text", "audio.voices", "audio.output", "audio.engine")
