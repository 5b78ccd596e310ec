"""The worker's error hierarchy: every failure a caller can see has a stable code here.

Only `handler.py` turns these into `{"error": {"code", "message"}}`. Messages are written for the caller:
what was wrong and how to fix it, never a traceback, a path of the worker's disk, or a credential.
"""

SHOWN_CHARS = 64  # how much of a caller's string an error message repeats


def shown(value: str) -> str:
    """A caller's string as a message repeats it: lone surrogates escaped, a long one cut (its length said)."""
    text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}… ({len(value)} characters)"


def quoted(value: object) -> str:
    """`repr(value)`, a long string cut (its length said): a megabyte voice name is not echoed back."""
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return f"{value[:SHOWN_CHARS]!r}… ({len(value)} characters)"
    return repr(value)


class TTSError(Exception):
    """Base of every error with a contract code."""

    code = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InputError(TTSError):
    """The job is malformed, out of range, or asks a model for what it can't do. Never retried."""

    code = "invalid_input"


class ModelError(TTSError):
    """The model's files are missing or could not be loaded."""

    code = "model_unavailable"


class WorkerUnusable(ModelError):
    """This worker's GPU or model can no longer be trusted (out of memory, a CUDA error; audio/lifecycle.py): the
    job fails, and the result asks RunPod for a fresh worker (`refresh_worker`)."""


class SynthesisError(TTSError):
    """A chunk failed its quality check after every retry."""

    code = "synthesis_failed"


class PayloadTooLargeError(TTSError):
    """The inline (base64) result would exceed the response limit and S3 is not configured."""

    code = "payload_too_large"


class DeliveryError(TTSError):
    """The S3 upload failed."""

    code = "delivery_failed"


class IdleTimeout(TTSError):
    """A live session (the HTTP mode's WebSocket) received nothing and had nothing to say for too long."""

    code = "idle_timeout"


class ClientTooSlow(TTSError):
    """A live session's client read its audio too slowly: more than the buffer's bound waited to be sent."""

    code = "client_too_slow"


class Cancelled(Exception):
    """Not a contract error: the job's consumer went away (client disconnect, RunPod cancel, shutdown), so its
    generation stops at the next piece or batch."""
