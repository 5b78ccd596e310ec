"""Long-form synthesis across many jobs: a book or a podcast of any length, split into parts under a job's size,
fanned out on RunPod's queue (or local APIs), retried, resumed from a manifest and joined into one track.

`source` reads the input (text, Markdown, EPUB, podcast JSON) into chapters; `plan` cuts them into parts, each
one job; `manifest` records what is done; `fanout` sends parts through the runpod client; `assemble` joins,
levels, encodes and writes captions and chapters; `runner.run` ties them together (scripts/long_form.py is its
command line). Client side only: it uses the worker's pure packages (audio.text, audio.output), never torch.
"""
