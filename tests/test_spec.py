"""The one spec grammar: items, nested items, quoting, canonical text, and errors that point at the problem."""

from __future__ import annotations

import pytest

from rankstack.errors import BadInput
from rankstack.spec import Item, coerce, parse_item


@pytest.mark.parametrize("text, want", [
    ("bm25", Item("bm25")),
    ("bm25:k1=0.9,b=0.4", Item("bm25", (("k1", "0.9"), ("b", "0.4")))),
    ("dense:model=hash:256", Item("dense", (("model", "hash:256"),))),
    ("dense:index=(binary:rescore=int8,multiplier=10)",
     Item("dense", (("index", Item("binary", (("rescore", "int8"), ("multiplier", "10")))),))),
    ("dense:index=binary:rescore=int8", Item("dense", (("index", "binary:rescore=int8"),))),
    ('first:model="/models/my model, v2",depth=5', Item("first", (("model", "/models/my model, v2"), ("depth", "5")))),
    ("icr:heads=18.7;18.8", Item("icr", (("heads", "18.7;18.8"),))),
    ("  cross-encoder:model=org/name  ", Item("cross-encoder", (("model", "org/name"),))),
])
def test_items_parse_and_print_back(text, want):
    got = parse_item(text)
    assert got == want
    assert parse_item(str(got)) == got  # canonical text parses back to the same item


@pytest.mark.parametrize("text, fragment", [
    ("bm25:k1", "option 'k1' needs a value: k1=... (at character 6"),
    ("bm25:k1=1,k1=2", "option 'k1' is given twice"),
    ("dense:index=(binary", "expected ')' closing the nested spec"),
    (":x", "expected a component name"),
    ("bm25 dense", "unexpected text after the spec"),
    ('first:model="unterminated', "unterminated quoted value"),
    ("bm25:k1=", "expected a value"),
])
def test_errors_name_the_position_and_the_fix(text, fragment):
    with pytest.raises(BadInput, match=fragment.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_item(text)


def test_coerce_converts_text_and_rejects_mismatches():
    assert coerce("3", int, key="k", where="w") == 3 and coerce(3, 0, key="k", where="w") == 3
    assert coerce("0.5", float, key="a", where="w") == 0.5 and coerce(2, 1.0, key="a", where="w") == 2.0
    assert coerce("TRUE", False, key="b", where="w") is True and coerce("no", True, key="b", where="w") is False
    assert coerce("12", None, key="x", where="w") == 12 and coerce("abc", None, key="x", where="w") == "abc"
    for value, like in (("x", int), (True, int), ("maybe", bool), ([1], int), ("1.5", int), (Item("a"), int)):
        with pytest.raises(BadInput, match="is not a valid"):
            coerce(value, like, key="opt", where="spec 's'")


def test_item_helpers():
    it = parse_item("first:depth=20,window=10")
    assert it.get("depth") == "20" and it.get("nope", 7) == 7 and it.keys() == ["depth", "window"]
    assert str(it.without("depth")) == "first:window=10"
    assert str(it.updated(depth="5", model="m")) == "first:depth=5,window=10,model=m"
