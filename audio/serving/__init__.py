"""Serving: what sits under the entry points. `service` (this process's worker, one job to its result, the
typed errors mapped to the contract's error object, cancellation), `streaming` (a job's audio in order while it
is made), `http_server` (the HTTP mode), `live` (the HTTP mode's WebSocket: text streamed in, audio out).
`handler.py` and the HTTP server both stand on `service`, never on each other; nothing under `audio/` imports
`handler`.

May import any module of the worker; nothing else in `audio/` imports this package.
"""

MAY_IMPORT = ("audio",)
