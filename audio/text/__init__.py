"""Text: the sentence-aware splitter (`splitter`), how much speech a text is (`spoken`), captions (`captions`).

Pure functions on strings and numbers: nothing here knows of models, audio or jobs.
"""

MAY_IMPORT: tuple[str, ...] = ()
