"""Voices: reference clips taken in (`reference`: decoding, checks, the URL fetch policy), saved voices on the
volume (`store`), the clone-prompt cache (`cache`), and the saved-voice actions (`actions`), which are given the
store, the cache and the model callables they use, never the worker.

May use the contract (schema, catalog, errors), the engine seam's plain types (`speech`) and `output`.
"""

MAY_IMPORT = ("audio.errors", "audio.catalog", "audio.schema", "audio.speech", "audio.output")
