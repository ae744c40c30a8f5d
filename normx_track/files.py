"""A user's text file checked before a library reads it: what `datasets` or a JSON parser
would report as a deep traceback (missing, a folder, empty, binary, not UTF-8, only
whitespace) said in a few words, for the caller's one-line error naming the file or key."""
from __future__ import annotations

from pathlib import Path

SNIFF_BYTES = 1 << 16  # enough to tell text from binary


def text_file_problem(path: str | Path) -> str | None:
    """Why ``path`` is no usable text file, said to follow its name ("does not exist", "is
    empty", "looks binary (NUL bytes), not text", "holds only whitespace", ...), or None.
    Parquet is binary by design: only existence and size are checked."""
    path = Path(path)
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    try:
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
            if not head:
                return "is empty"
            if path.suffix.lower() == ".parquet":
                return None
            if b"\0" in head:
                return "looks binary (NUL bytes), not text"
            try:
                head.decode("utf-8")
            except UnicodeDecodeError as err:
                if err.start < len(head) - 4:  # not just a character cut at the sniff boundary
                    return f"is not UTF-8 text (byte {err.start}: {err.reason})"
            blank = not head.strip()
            while blank and (chunk := handle.read(SNIFF_BYTES)):
                blank = not chunk.strip()
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return "holds only whitespace" if blank else None
