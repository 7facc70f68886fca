"""Project names: what is stored is what a user sees.

A name is stored in Unicode NFC, so two names that render alike ("Café" typed as one code
point or as "e" + a combining accent) are the same string, and it must contain at least one
visible character, so that no project shows as blank in a list.  Invisible here: white
space, control and format characters, separators, nonspacing and enclosing marks (combining
accents, variation selectors), the code points Unicode says to render as nothing
(Default_Ignorable_Code_Point, e.g. the Hangul fillers), and the blank braille cell.  The
contract's ``ProjectCreate.name`` pattern is this rule as one character class
(``tests/unit/test_project_names.py`` proves they agree for every code point).
"""

from __future__ import annotations

import unicodedata

from tether_kit.errors import TetherError

_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Me"})
# Default_Ignorable_Code_Point from Unicode's DerivedCoreProperties.txt (unicodedata does not
# expose it); most are also in the categories above, these ranges are the whole property.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_BRAILLE_BLANK = 0x2800  # a glyph, but an empty one: the usual way to make a name that looks blank
_IGNORED = frozenset(cp for low, high in _DEFAULT_IGNORABLE for cp in range(low, high + 1)) | {_BRAILLE_BLANK}


def invisible(ch: str) -> bool:
    return ch.isspace() or ord(ch) in _IGNORED or unicodedata.category(ch) in _INVISIBLE_CATEGORIES


def project_name(raw: str) -> str:
    """The name to store for ``raw`` (NFC, without surrounding white space); ``validation_failed``
    when nothing of it would be visible."""
    name = unicodedata.normalize("NFC", raw).strip()
    if all(invisible(ch) for ch in name):
        raise TetherError("validation_failed", "name must contain at least one visible character")
    return name
