"""One grammar for every spec string, parsed in one place.

An *item* names a component and its options: ``kind`` or ``kind:key=value,key=value``. Examples:
``bm25:k1=0.9,b=0.4``, ``binary:bits=2,rescore=int8``, ``first:model=smollm2,depth=20``.

A value is one of
- bare text: ``0.9``, ``sentence-transformers/all-MiniLM-L6-v2``, ``18.7;18.8``, ``hash:256`` (it ends at a space
  or at one of ``, ( ) % +`` and ``>>``);
- a quoted string, for text with those characters: ``model="/data/my models/x"``;
- a nested item in parentheses: ``index=(binary:rescore=int8,multiplier=10)``. A nested item with a single option
  may drop the parentheses (``index=binary:rescore=int8``).

Index specs (:class:`rankstack.index.base.IndexSpec`), reranker specs (:mod:`rankstack.rerank.factory`) and pipeline
expressions (:mod:`rankstack.pipeline.spec`, which add ``>>``, ``+``, ``%`` and fusion calls around items) all go
through :class:`Parser`; typed values go through :func:`coerce`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Union

from rankstack.errors import BadInput

__all__ = ["Item", "Parser", "parse_item", "coerce", "Value", "Option", "check_options", "option_default"]

Value = Union[str, "Item"]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_BARE_STOP = set(" \t\r\n,()%+\"'")
_QUOTABLE = re.compile(r"[\s,()%+\"']|>>")


@dataclass(frozen=True)
class Item:
    """A parsed ``kind:key=value,...``; values are text or nested items, converted by whoever consumes them."""

    kind: str
    options: tuple[tuple[str, Value], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.options:
            if k == key:
                return v
        return default

    def keys(self) -> list[str]:
        return [k for k, _ in self.options]

    def without(self, *keys: str) -> Item:
        return Item(self.kind, tuple((k, v) for k, v in self.options if k not in keys))

    def updated(self, **values: Value) -> Item:
        """This item with ``values`` replacing (or appended after) its options."""
        opts = [(k, values.pop(k) if k in values else v) for k, v in self.options]
        return Item(self.kind, tuple(opts + list(values.items())))

    def __str__(self) -> str:
        if not self.options:
            return self.kind
        return self.kind + ":" + ",".join(f"{k}={_fmt(v)}" for k, v in self.options)


def _fmt(v: Value) -> str:
    if isinstance(v, Item):
        return f"({v})"
    v = str(v)
    if not v or _QUOTABLE.search(v):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return v


class Parser:
    """A cursor over one spec string; errors name the string, the position and what was expected."""

    def __init__(self, text: str, what: str = "spec"):
        if not isinstance(text, str):
            raise BadInput(f"a {what} must be a string, got {type(text).__name__}")
        self.text = text
        self.pos = 0
        self.what = what

    # -- cursor --
    def error(self, message: str, at: int | None = None) -> BadInput:
        at = self.pos if at is None else at
        near = self.text[at:at + 20] or "the end"
        return BadInput(f"{self.what} {self.text!r}: {message} (at character {at + 1}, near {near!r})")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_ws()
        return self.pos >= len(self.text)

    def peek(self, token: str) -> bool:
        self.skip_ws()
        return self.text.startswith(token, self.pos)

    def eat(self, token: str) -> bool:
        if self.peek(token):
            self.pos += len(token)
            return True
        return False

    def expect(self, token: str, what: str | None = None) -> None:
        if not self.eat(token):
            raise self.error(f"expected {what or repr(token)}")

    def name(self, what: str = "a name") -> str:
        self.skip_ws()
        m = _NAME.match(self.text, self.pos)
        if not m:
            raise self.error(f"expected {what}")
        self.pos = m.end()
        return m.group(0)

    def peek_name(self) -> str | None:
        self.skip_ws()
        m = _NAME.match(self.text, self.pos)
        return m.group(0) if m else None

    def integer(self, what: str) -> int:
        self.skip_ws()
        m = re.compile(r"-?\d+").match(self.text, self.pos)
        if not m:
            raise self.error(f"expected {what} (an integer)")
        self.pos = m.end()
        return int(m.group(0))

    # -- items --
    def item(self, kind: str | None = None) -> Item:
        """``kind[:key=value,...]``; ``kind`` when the caller has already read it."""
        kind = kind or self.name("a component name (e.g. bm25, dense, first)")
        opts: list[tuple[str, Value]] = []
        if self.text.startswith(":", self.pos):
            self.pos += 1
            while True:
                start = self.pos
                key = self.name("an option name")
                if not self.text.startswith("=", self.pos):
                    raise self.error(f"option {key!r} needs a value: {key}=...", start)
                self.pos += 1
                if key in (k for k, _ in opts):
                    raise self.error(f"option {key!r} is given twice", start)
                opts.append((key, self.value()))
                if not self._option_follows():
                    break
                self.pos += 1  # the comma
        return Item(kind, tuple(opts))

    def _option_follows(self) -> bool:
        """True when a ``,`` and then ``name=`` come next (a comma followed by anything else ends the item: it
        separates arguments of an enclosing call)."""
        if not self.text.startswith(",", self.pos):
            return False
        m = re.compile(r",\s*[A-Za-z0-9_][A-Za-z0-9_.\-]*=").match(self.text, self.pos)
        return bool(m)

    def value(self) -> Value:
        if self.pos >= len(self.text):
            raise self.error("expected a value")
        c = self.text[self.pos]
        if c == "(":
            self.pos += 1
            inner = self.item()
            self.skip_ws()
            if not self.text.startswith(")", self.pos):
                raise self.error("expected ')' closing the nested spec")
            self.pos += 1
            return inner
        if c in "\"'":
            end, out = self.pos + 1, []
            while end < len(self.text) and self.text[end] != c:
                if self.text[end] == "\\" and end + 1 < len(self.text):
                    end += 1
                out.append(self.text[end])
                end += 1
            if end >= len(self.text):
                raise self.error("unterminated quoted value")
            self.pos = end + 1
            return "".join(out)
        start = self.pos
        while (self.pos < len(self.text) and self.text[self.pos] not in _BARE_STOP
               and not self.text.startswith(">>", self.pos)):
            self.pos += 1
        if self.pos == start:
            raise self.error("expected a value")
        return self.text[start:self.pos]


def parse_item(text: str, what: str = "spec") -> Item:
    """Parse exactly one item (``kind:key=value,...``) and nothing else."""
    p = Parser(text.strip(), what)
    item = p.item()
    if not p.at_end():
        raise p.error("unexpected text after the spec; separate options with ',' and put nested specs with "
                      "several options in parentheses, e.g. index=(binary:rescore=int8,multiplier=10)")
    return item


def as_item(value: Value, what: str) -> Item:
    """A nested item given either in parentheses or as bare text (``index=binary`` or ``index=pq:m=48``)."""
    return value if isinstance(value, Item) else parse_item(value, what)


def coerce(value: Any, like: Any, *, key: str, where: str) -> Any:
    """Convert ``value`` (text from a spec, or a typed value from a TOML/YAML table) to the type of ``like``: the
    option's default value or its type (``bool``, ``int``, ``float``, ``str``). ``None``/no default: text passes
    through, and text that looks like an integer becomes one."""
    target = like if isinstance(like, type) else (type(like) if like is not None else None)

    def bad(kind: str) -> BadInput:
        return BadInput(f"{where}: {key}={value!r} is not a valid {kind}")

    if isinstance(value, Item):
        if target is None or target is Item:
            return value
        raise bad(target.__name__)
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise bad("bool (true or false)")
    if target in (int, float):  # bools are ints to Python, never to a spec
        numeric = (int,) if target is int else (int, float)
        if isinstance(value, numeric) and not isinstance(value, bool):
            return target(value)
        if isinstance(value, str):
            try:
                return target(value.strip())
            except ValueError:
                pass
        raise bad(target.__name__)
    if target is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad("text value")
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return value


def unknown_option(where: str, key: str, allowed: Iterable[str], hint: str = "") -> BadInput:
    allowed = list(allowed)
    return BadInput(f"{where} has no option {key!r}; its options are {', '.join(allowed) if allowed else 'none'}"
                    + (f". {hint}" if hint else ""))


@dataclass(frozen=True)
class Option:
    """One option of a component (a retrieval kind, a fusion): its default (None: unset unless given), its type
    (taken from the default when not given; ``Item`` for a nested spec), the values it may take, an inclusive
    range, and ``parse`` for values that need more than a type (it returns the canonical value or raises
    :class:`BadInput`). ``doc`` is the one line help texts show."""

    default: Any = None
    type: Any = None
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    parse: Callable[[Any], Any] | None = None
    doc: str = ""

    @property
    def like(self) -> Any:
        """What :func:`coerce` converts a value like: the type, else the default."""
        return self.type if self.type is not None else self.default


def _as_option(spec: Any) -> Option:
    if isinstance(spec, Option):
        return spec
    return Option(type=spec) if isinstance(spec, type) else Option(default=spec)


def check_options(item: Item, options: Mapping[str, Any], where: str, *, hint: Callable[[str], str] | None = None
                  ) -> Item:
    """``item`` with every option checked against ``options`` (name -> :class:`Option`, or a bare default or type)
    and converted to its type; an unknown name, a value of the wrong type, outside its choices or range, fails with
    a message naming the option and what it accepts. ``hint(key)`` may add advice to the unknown-option message."""
    out = []
    for key, value in item.options:
        if key not in options:
            raise unknown_option(where, key, options, hint(key) if hint else "")
        opt = _as_option(options[key])
        if opt.parse is not None:
            v = opt.parse(value)
        else:
            v = coerce(value, opt.like, key=key, where=where)
        if opt.choices and v not in opt.choices:
            raise BadInput(f"{where}: {key} must be one of {', '.join(map(str, opt.choices))}, got {v!r}")
        low_bad = opt.low is not None and v < opt.low
        if low_bad or (opt.high is not None and v > opt.high):
            if opt.low is not None and opt.high is not None:
                need = f"lie in [{opt.low:g}, {opt.high:g}]"
            elif opt.low == 1 and opt.like is int:
                need = "be a positive integer"
            else:
                need = f"be >= {opt.low:g}" if low_bad else f"be <= {opt.high:g}"
            raise BadInput(f"{where}: {key} must {need}, got {v}")
        out.append((key, v))
    return Item(item.kind, tuple(out))


def option_default(options: Mapping[str, Any], key: str) -> Any:
    """The default of ``options[key]`` (None where it has none, or is given only as a type)."""
    return _as_option(options[key]).default
