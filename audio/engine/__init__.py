"""The engines behind `audio.speech.SpeechModel`: `reference` (qwen_tts's own generate) and `fast` (our loop).

Everything here imports torch and qwen_tts lazily or is imported only by `model_loader`, the model boundary.
"""
