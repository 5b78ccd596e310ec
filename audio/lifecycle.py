"""Which failures leave a worker unfit for more jobs, so RunPod should replace it (`refresh_worker`).

A CUDA out-of-memory mid-generation can leave qwen_tts's per-call module state, the engine's caches and CUDA
graphs half-written, and a CUDA error (illegal access, device-side assert, cuBLAS/cuDNN failure) poisons the
process's CUDA context for good: neither is worth another job on this process. Told apart by type name and
message, so torch is not imported here.
"""

from __future__ import annotations

# Errors torch raises once the CUDA context is broken (RuntimeError or torch.AcceleratorError, 2.8+).
_CUDA_FAILURES = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error", "device-side assert")


def unusable_reason(exc: BaseException) -> str | None:
    """Why this failure leaves the worker's GPU or model unusable, for the caller's message; None when the
    worker can go on (the failure is the job's own)."""
    for e in _chain(exc):
        if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
            return "the GPU ran out of memory while generating (OutOfMemoryError)"
        if isinstance(e, RuntimeError) and any(s in str(e) for s in _CUDA_FAILURES):
            return f"the GPU reported an error that leaves this worker's CUDA context unusable ({type(e).__name__})"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen
