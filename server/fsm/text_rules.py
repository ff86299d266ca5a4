"""The one rule every name and id the state machines keep follows: printable text."""

from __future__ import annotations

import unicodedata


def control_character(value: str) -> int | None:
    """The position of the first control character (C0, DEL, C1) or lone surrogate in `value`,
    or None: such characters garble logs and terminals, and a lone surrogate cannot even be
    encoded as UTF-8 for an answer."""
    if value.isascii() and value.isprintable():  # the usual name, checked at C speed
        return None
    for position, char in enumerate(value):
        if unicodedata.category(char) in ("Cc", "Cs"):
            return position
    return None
