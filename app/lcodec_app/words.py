"""The dashboard's words: one vocabulary on every page, with no Streamlit (so the teaching
pieces, the charts and the pages say numbers, people and guarantees the same way)."""
from __future__ import annotations

import math
import re


# One vocabulary on every page: a number that does not exist is MISSING; a removal (or a
# model) without an (epsilon, delta) promise has NO_GUARANTEE, never "none", "n/a" or "inf".
MISSING = "–"
NO_GUARANTEE = "no guarantee"


def pct(value) -> str:
    """A fraction as a percentage, or MISSING when there is none (None, NaN, inf)."""
    return MISSING if not _finite(value) else f"{value:.1%}"


def number(value, fmt: str = ".3g") -> str:
    """A number formatted with ``fmt``, or MISSING when there is none."""
    return MISSING if not _finite(value) else format(float(value), fmt)


def epsilon_text(epsilon) -> str:
    """An epsilon for the page: NO_GUARANTEE when there is none (None, inf or NaN)."""
    return NO_GUARANTEE if not _finite(epsilon) else f"{float(epsilon):.4g}"


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def person(identity: int, names: list[str] | None = None) -> str:
    """How pages name a class: its name ("person 05" on Olivetti, a folder name on an upload),
    else "person NN" (two digits)."""
    if names is not None and 0 <= identity < len(names):
        return names[identity]
    return f"person {identity:02d}"


def unit_owner(identity: int, names: list[str] | None = None) -> str:
    """Whose output unit row ``identity`` of the head is: "person 22", "class 3" (MNIST)."""
    name = person(identity, names)
    return f"class {name}" if name.isdigit() else name


def request_label(request, names: list[str] | None = None) -> str:
    """A removal request in the pages' words: "person 05 (8 training photos)"."""
    count = len(request.forget_indices)
    photos = f"{count} training photo{'s' if count != 1 else ''}"
    if request.identity is not None:
        return f"{person(request.identity, names)} ({photos})"
    shown = ", ".join(f"#{i}" for i in request.forget_indices[:10])
    return f"{photos} ({shown}{', ...' if count > 10 else ''})"


_IDENTITY = re.compile(r"\bidentity (\d+)\b")


def people_words(text: str, names: list[str] | None = None) -> str:
    """``text`` with "identity 5" (the engine's wording) said as the pages say it: "person 05"."""
    return _IDENTITY.sub(lambda m: person(int(m.group(1)), names), text)


def points(before, after) -> str | None:
    """Change in percentage points, for st.metric's delta."""
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        return None
    return f"{(after - before) * 100:+.1f} pts"
