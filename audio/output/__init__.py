"""Output: samples to what a caller receives. `postprocess` (resampling, loudness, tempo), `joiner` (chunks and
pauses into one track), `encoders` (the formats, whole and streamed), `delivery` (base64 or S3).

Pure functions on arrays and bytes, and the S3 client: nothing here knows of models or jobs.
"""

MAY_IMPORT = ("audio.errors",)
