"""declarative.tools.format: the one table renderer, number formatting and strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from declarative.tools.format import (
    Column,
    Columns,
    array_from_json,
    array_to_json,
    duration,
    finite_or_none,
    json_text,
    none_to_inf,
    ratio,
    sci,
    size_text,
    table,
    write_json,
)


def test_numbers():
    assert [sci(v) for v in (None, 1.234e-9, 0.0, math.inf, math.nan)] == [
        "-", "1.2e-09", "0.0e+00", "inf", "nan"]
    assert [duration(v) for v in (None, math.nan, 12.34, 1.234, 0.01234)] == [
        "-", "-", "12.3s", "1.23s", "12.3ms"]
    assert ratio(None) == "-" and ratio(2.5) == "2.50x"
    assert size_text({"n": 10, "m": 5}) == "n=10,m=5"


def test_table_aligns_columns_and_rules_the_header():
    text = table(["name", "err"], [["a", "1.0e-09"], ["long name", "-"]])
    lines = text.split("\n")
    assert lines == ["name           err",
                     "-" * 18,
                     "a          1.0e-09",
                     "long name        -"]
    left = table(["x", "y"], [["ab", "c"]], right=[False, False]).split("\n")
    assert left == ["x   y", "-----", "ab  c"]


def test_columns_group_header_spans_its_columns():
    cols = Columns([Column("p", 3), Column("a", 5, right=True), Column("b", 5, right=True)])
    top, head, rule = cols.header(groups=[(1, 2, "vs")]).split("\n")
    assert head == "p        a      b" and rule == "-" * len(head)
    lo, hi = head.index("a") - 4, len(head)
    assert top[lo:hi].strip("-") == " vs " and set(top[:lo]) == {" "}
    assert cols.line(["x", "1", "2"]) == "x        1      2"


def test_strict_json_round_trip(tmp_path):
    doc = {"e": finite_or_none(math.inf), "f": finite_or_none(1.5), "n": finite_or_none(None),
           "a": array_to_json(np.array([[1.0, np.nan], [np.inf, -2.0]]))}
    assert doc == {"e": None, "f": 1.5, "n": None, "a": [[1.0, None], [None, -2.0]]}
    path = tmp_path / "d.json"
    write_json(doc, str(path))
    text = path.read_text()
    assert text.endswith("\n") and json.loads(text) == doc
    assert none_to_inf(json.loads(text)["e"]) == math.inf
    back = array_from_json(json.loads(text)["a"])
    assert np.isnan(back[0, 1]) and back[1, 1] == -2.0
    with pytest.raises(ValueError):
        json_text({"x": math.nan})
