"""The engines behind `audio.speech.SpeechModel`: `reference` (qwen_tts's own generate) and `fast` (our loop).

Everything here imports torch and qwen_tts lazily or is imported only by `model_loader`, the model boundary. It
sees only the seam's plain types (`speech`), the catalog and the errors: no job, text or output code.
"""

MAY_IMPORT = ("audio.speech", "audio.catalog", "audio.errors")
