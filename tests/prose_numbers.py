"""Every number in a notebook's prose must come from a computation shown in that notebook.

:func:`unbacked_numbers` reads a notebook's Markdown cells, section by section (a section starts at
a ``#`` or ``##`` heading), and returns the numbers that appear neither in the outputs of that
section's code cells (the text they printed or displayed, Markdown rendered from Python included;
for the introduction before the first section and for a "Summary" or "Exercises" section: the
outputs of the whole notebook) nor in a **constant marker** of the notebook. A prose number matches an
output number when the output, rounded to the prose number's precision, gives the prose number:
"14.3" matches 14.29, "14" matches 14.3, "7,300" (two significant figures) matches 7,311.

Constant marker (invisible when rendered), anywhere in the notebook's Markdown::

    <!-- const: 8, 13500 — the Raspberry Pi 5's RAM (GB) and Llama-2-7B's fp16 size (MiB), data/devices.json -->

the numbers before the dash are allowed in this notebook's prose; after the dash, where they come
from (required).

Not checked: inline code and fenced code, link targets, HTML comments, section and list numbers
(``## 3.``, ``1.``), numbers glued to letters (``fp32``, ``SmolLM2``, ``135M``, ``B4``), numbers
written with a leading zero (notebook names such as ``02``), powers and subscripts in math
(``2^n``, ``x_1``, ``n^2``), and numbers that are part of a name (``Pi 5``, ``Wi-Fi 6``, ``Llama-2``).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

_CONST = re.compile(r"<!--\s*const:\s*(.*?)\s+[—-]{1,2}\s+(\S.*?)\s*-->", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_FENCE = re.compile(r"```.*?```", re.S)
_INLINE_CODE = re.compile(r"`[^`]*`")
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_HEADING_NUM = re.compile(r"^(\s*#+\s*)\d+(\.\d+)*\.?", re.M)
_LIST_NUM = re.compile(r"^(\s*)\d+\.(\s)", re.M)
_NAMES = re.compile(r"\b(Pi|Wi-Fi|Llama|Llama-2|section|notebook|notebooks|Notebook|part|Part|issue|"
                    r"Orin Nano|Jetson|ISCA|arXiv|Exercise|exercise|step|Step)\s+\d+(\.\d+)?")
_MATH_SCRIPT = re.compile(r"[\^_]\{?[\d.]+\}?|\d+(?=\^)")
_NUMBER = re.compile(r"(?<![\w.,/-])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])"
                     r"|(?<![\w.,])\.\d+(?![\w])")
_OUT_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def _cell_outputs(cell: dict) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append("".join(o["text"]))
        for mime in ("text/plain", "text/markdown", "text/html", "text/latex"):
            if mime in o.get("data", {}):
                out.append("".join(o["data"][mime]))
    return "\n".join(out)


def sections(nb: dict) -> list[tuple[str, list[dict]]]:
    """The notebook cut at its ``#`` and ``##`` headings: (heading, cells) in order."""
    out = [("", [])]
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            m = re.search(r"^#{1,2}\s+(.*)$", "".join(cell["source"]), re.M)
            if m:
                out.append((m.group(1).strip(), []))
        out[-1][1].append(cell)
    return [s for s in out if s[1]]


def _value(text: str) -> Decimal:
    return Decimal(text.replace(",", ""))


def _precision(text: str) -> int:
    """Decimal places that matter in a prose number: 14.3 -> 1, 14 -> 0, 7,300 -> -2."""
    plain = text.replace(",", "").lower()
    if "e" in plain:
        mantissa, exp = plain.split("e")
        return _precision(mantissa) - int(exp)
    if "." in plain:
        return len(plain.split(".")[1])
    stripped = plain.rstrip("0")
    return -(len(plain) - len(stripped)) if stripped and len(plain) > 2 else 0


def _matches(prose: str, values: list[Decimal]) -> bool:
    want, places = _value(prose), _precision(prose)
    q = Decimal(1).scaleb(-places)
    for v in values:
        if v == want or abs(v).quantize(q) == abs(want).quantize(q) or \
                (places < 0 and abs(abs(v) - abs(want)) <= q / 2):
            return True
    return False


def prose_text(cells: list[dict]) -> str:
    """The Markdown of ``cells`` the checker reads (everything it ignores taken out)."""
    parts = []
    for cell in cells:
        if cell["cell_type"] != "markdown":
            continue
        s = "".join(cell["source"])
        for pattern in (_FENCE, _COMMENT, _INLINE_CODE, _LINK_TARGET):
            s = pattern.sub(" ", s)
        s = _HEADING_NUM.sub(r"\1", s)
        s = _LIST_NUM.sub(r"\1\2", s)
        s = _NAMES.sub(" ", s)
        s = _MATH_SCRIPT.sub(" ", s)
        parts.append(s)
    return "\n".join(parts)


def constants(nb: dict) -> dict[str, str]:
    """The notebook's constant markers: number -> where it comes from."""
    out = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for numbers, source in _CONST.findall("".join(cell["source"])):
                for n in re.split(r"[;,]\s+|\s+", numbers.strip()):
                    if n:
                        out[n] = source
    return out


def _numbers(text: str) -> list[Decimal]:
    return [_value(m) for m in _OUT_NUMBER.findall(text)]


def unbacked_numbers(path) -> list[tuple[str, str]]:
    """``(section heading, number)`` for each number of the notebook's prose backed by neither an
    output of its section (of the whole notebook for the introduction and a summary) nor a
    constant marker."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    everywhere = _numbers("\n".join(_cell_outputs(c) for c in nb["cells"] if c["cell_type"] == "code"))
    consts = [_value(c) for c in constants(nb) if _OUT_NUMBER.fullmatch(c)]
    bad = []
    parts = sections(nb)
    for k, (heading, cells) in enumerate(parts):
        broad = k == 0 or re.search(r"summary|exercises", heading, re.I)
        values = everywhere if broad else _numbers(
            "\n".join(_cell_outputs(c) for c in cells if c["cell_type"] == "code"))
        for m in _NUMBER.finditer(prose_text(cells)):
            text = m.group(0)
            if re.fullmatch(r"0\d+", text):  # a name like 02
                continue
            if _value(text) in consts or _matches(text, values):
                continue
            bad.append((heading, text))
    return bad
