"""Qwen3-TTS RunPod worker: everything between a validated job and the bytes a caller gets back."""
