"""Bad input a person hands the platform (a data or mapping file, an option, an id): one error type
whose message is one line naming the file or option and the problem, and the one rule every batch
and campaign id obeys wherever it enters (CLI options, mapping files, ingest).

The id rule: letters, digits, '.', '_' and '-', starting with a letter or digit (so no path
separator, no leading dot, never `.` or `..`), at most MAX_ID_LENGTH characters. Ids become S3 key
segments and local file names (raw/<batch>/, scores/<campaign>/), so nothing else may pass.
"""
from __future__ import annotations

import re

MAX_ID_LENGTH = 64
SAFE_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_ID_LENGTH - 1}}}")
ID_RULE = f"letters, digits, '.', '_', '-', starting with a letter or digit, at most {MAX_ID_LENGTH} characters"


class InputError(ValueError):
    """Input that cannot be used as given; the message is one line: where (file or option), what is
    wrong and what to do. The CLI prints it without a traceback and exits 2."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


class UnsafeId(InputError):
    """A batch or campaign id outside the safe-id rule."""


def one_line(text: str) -> str:
    """`text` with its line breaks (and the blanks around them) folded into single spaces."""
    return re.sub(r"\s*[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+\s*", " ", str(text)).strip()


def is_safe_id(value) -> bool:
    return isinstance(value, str) and SAFE_ID.fullmatch(value) is not None


def check_id(value, what: str) -> str:
    """`value` if it is a safe id, else UnsafeId naming `what` (e.g. "--batch", "batch")."""
    if is_safe_id(value):
        return value
    shown = repr(value) if len(repr(value)) <= 2 * MAX_ID_LENGTH else repr(value)[: 2 * MAX_ID_LENGTH] + "..."
    kind = "text" if isinstance(value, str) else type(value).__name__
    raise UnsafeId(f"{what} {shown}: not a safe id ({ID_RULE}; got {kind}"
                   + (f" of {len(value)} characters" if isinstance(value, str) else "") + ")")
