"""Data preparation and loading: raw text → cleaned, deduplicated, tokenised shards → grain.

Every bad input raises `DataError`, whose message names the file, the line (or record) and
what was expected, so a user never has to read a traceback from deep inside a library.
"""


class DataError(ValueError):
    """A problem with input data or a data directory; the message names file and line."""

    def __init__(self, message: str, source: str | None = None, line: int | None = None):
        where = ""
        if source is not None:
            where = f"{source}:{line}: " if line is not None else f"{source}: "
        super().__init__(where + message)
        self.source = source
        self.line = line
