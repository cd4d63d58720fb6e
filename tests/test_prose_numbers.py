"""Every figure in the notebooks' prose comes from a computation shown there (tests/prose_numbers.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prose_numbers import constants, unbacked_numbers

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_prose_number_is_computed_or_a_marked_constant(path):
    bad = unbacked_numbers(path)
    assert not bad, f"{path.name}: numbers in the prose that no output of their section shows " \
                    f"and no constant marker names: {bad}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_constants_name_their_source(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for number, source in constants(nb).items():
        assert len(source.split()) >= 3, f"{path.name}: constant {number} needs a source, got {source!r}"


def _notebook(tmp_path, markdown: list[str], printed: list[str]) -> Path:
    cells = []
    for text, out in zip(markdown, printed):
        cells.append({"cell_type": "markdown", "metadata": {}, "source": text})
        cells.append({"cell_type": "code", "metadata": {}, "execution_count": 1, "source": "print(x)",
                      "outputs": [{"output_type": "stream", "name": "stdout", "text": out}]})
    path = tmp_path / "planted.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_a_planted_wrong_figure_is_caught(tmp_path):
    ok = ["# T\n\nIntro.", "## 1. Rates\n\nThe DP's plan serves **14.3** prompts/s, about 14 per "
          "second, over 7,300 tokens/s; exo serves 5.2."]
    printed = ["", "DP 14.29 prompts/s, 7,315 tokens/s; exo 5.21 prompts/s\n"]
    assert unbacked_numbers(_notebook(tmp_path, ok, printed)) == []
    wrong = [ok[0], ok[1].replace("14.3", "13.0")]
    assert unbacked_numbers(_notebook(tmp_path, wrong, printed)) == [("1. Rates", "13.0")]
    # a figure printed in another section does not back this one
    elsewhere = [ok[0], "## 1. Rates\n\nAbout 6,000 tokens/s.", "## 2. Other\n\nNothing."]
    assert ("1. Rates", "6,000") in unbacked_numbers(_notebook(tmp_path, elsewhere, ["", "", "6,000\n"]))


def test_constant_markers_and_ignored_numbers(tmp_path):
    text = ["# T", "## 1. Budgets\n\nA Pi 5 has 8 GB of RAM and stands in for a 13,500 MiB model; "
            "`x = 42` and fp32 and notebook 02 are not figures; $2^n$ neither.\n\n"
            "<!-- const: 8, 13,500 — the Pi 5's RAM (GB) and Llama-2-7B's fp16 size, data/devices.json -->"]
    assert unbacked_numbers(_notebook(tmp_path, text, ["", ""])) == []
    no_marker = [text[0], text[1].split("<!--")[0]]
    assert unbacked_numbers(_notebook(tmp_path, no_marker, ["", ""])) == [("1. Budgets", "8"),
                                                                           ("1. Budgets", "13,500")]
