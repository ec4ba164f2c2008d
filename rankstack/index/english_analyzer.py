"""Pyserini's default English analysis in pure Python, for ASCII text: no JVM call per query.

Pyserini indexes and searches with Lucene's ``StandardTokenizer`` (Unicode word boundaries, UAX #29),
``EnglishPossessiveFilter``, ``LowerCaseFilter``, a ``StopFilter`` with Lucene's English stop words, and
``PorterStemFilter``. :func:`analyze` follows the same steps for text made only of ASCII characters, where the word
boundary rules reduce to a few character classes; it returns ``None`` for any other text, which the caller then
sends to Lucene's own analyzer, so every query is analysed exactly as Lucene would. The equality is tested on every
query of the test collections and on every ASCII document of SciFact and NFCorpus (``tests/index``).

Word boundaries on ASCII (UAX #29): letters join letters and digits (WB5, WB9, WB10), digits join digits (WB8); a
``.``, ``'`` or ``:`` between two letters joins them (WB6/7), a ``.``, ``'``, ``,`` or ``;`` between two digits joins
them (WB11/12), ``_`` joins anything word-like on either side (WB13a/b); every other character separates. Segments
without a letter or digit are not tokens. Tokens longer than 255 characters (Lucene's limit) are left to Lucene.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["analyze", "porter_stem", "STOP_WORDS"]

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (the stop set Pyserini's default analyzer uses)
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split())

_MAX_TOKEN = 255
# one UAX #29 word on ASCII: word characters, joined across a mid character only between two letters (. ' :) or two
# digits (. ' , ;)
_WORD = re.compile(r"[A-Za-z0-9_]+(?:(?:(?<=[A-Za-z])[.':](?=[A-Za-z])|(?<=[0-9])[.',;](?=[0-9]))[A-Za-z0-9_]+)*")


def _tokens(text: str) -> list[str] | None:
    """UAX #29 words of an ASCII ``text`` that hold a letter or digit; ``None`` if a token is too long."""
    out = [t for t in _WORD.findall(text) if t.strip("_")]
    if any(len(t) > _MAX_TOKEN for t in out):
        return None
    return out


def analyze(text: str) -> list[str] | None:
    """The terms Lucene's analyzer (as Pyserini configures it) makes of ``text``, or ``None`` when ``text`` is not
    plain ASCII (then ask Lucene)."""
    if not text.isascii():
        return None
    toks = _tokens(text)
    if toks is None:
        return None
    out = []
    for t in toks:
        t = _lower_possessive(t)
        if t and t not in STOP_WORDS:
            out.append(porter_stem(t))
    return out


@lru_cache(maxsize=1 << 16)
def _lower_possessive(t: str) -> str:
    """EnglishPossessiveFilter (a trailing 's, before lower-casing), then LowerCaseFilter."""
    return (t[:-2] if t.endswith(("'s", "'S")) else t).lower()


# ---- Porter's stemmer, as Lucene's PorterStemmer runs it (Porter's reference version: "bli" -> "ble", "logi" ->
# "log"; words of one or two letters unchanged) ----------------------------------------------------------------------

class _Word:
    __slots__ = ("b", "k", "j")

    def __init__(self, w: str):
        self.b = list(w)
        self.k = len(w) - 1
        self.j = 0

    def cons(self, i: int) -> bool:
        ch = self.b[i]
        if ch in "aeiou":
            return False
        if ch == "y":
            return True if i == 0 else not self.cons(i - 1)
        return True

    def m(self) -> int:
        """Porter's measure of b[0..j], the m in [C](VC)^m[V]: how many vowel runs are followed by a consonant."""
        kinds = [self.cons(i) for i in range(self.j + 1)]
        return sum(1 for a, b in zip(kinds, kinds[1:]) if b and not a)

    def vowel_in_stem(self) -> bool:
        return any(not self.cons(i) for i in range(self.j + 1))

    def doublec(self, j: int) -> bool:
        return j >= 1 and self.b[j] == self.b[j - 1] and self.cons(j)

    def cvc(self, i: int) -> bool:
        if i < 2 or not self.cons(i) or self.cons(i - 1) or not self.cons(i - 2):
            return False
        return self.b[i] not in "wxy"

    def ends(self, s: str) -> bool:
        n = len(s)
        if n > self.k + 1 or "".join(self.b[self.k - n + 1:self.k + 1]) != s:
            return False
        self.j = self.k - n
        return True

    def setto(self, s: str) -> None:
        # in place, as Lucene does: characters past k stay in the buffer (step 6 reads one of them)
        for n, ch in enumerate(s, self.j + 1):
            if n < len(self.b):
                self.b[n] = ch
            else:
                self.b.append(ch)
        self.k = self.j + len(s)

    def r(self, s: str) -> None:
        if self.m() > 0:
            self.setto(s)

    def step1(self) -> None:  # plurals and -ed / -ing
        if self.b[self.k] == "s":
            if self.ends("sses"):
                self.k -= 2
            elif self.ends("ies"):
                self.setto("i")
            elif self.b[self.k - 1] != "s":
                self.k -= 1
        if self.ends("eed"):
            if self.m() > 0:
                self.k -= 1
        elif (self.ends("ed") or self.ends("ing")) and self.vowel_in_stem():
            self.k = self.j
            if self.ends("at"):
                self.setto("ate")
            elif self.ends("bl"):
                self.setto("ble")
            elif self.ends("iz"):
                self.setto("ize")
            elif self.doublec(self.k):
                if self.b[self.k - 1] not in "lsz":
                    self.k -= 1
            elif self.m() == 1 and self.cvc(self.k):
                self.setto("e")

    def step2(self) -> None:  # terminal y -> i when there is another vowel in the stem
        if self.ends("y") and self.vowel_in_stem():
            self.b[self.k] = "i"

    _STEP3 = {"a": (("ational", "ate"), ("tional", "tion")), "c": (("enci", "ence"), ("anci", "ance")),
              "e": (("izer", "ize"),), "l": (("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"),
                                             ("ousli", "ous")),
              "o": (("ization", "ize"), ("ation", "ate"), ("ator", "ate")),
              "s": (("alism", "al"), ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous")),
              "t": (("aliti", "al"), ("iviti", "ive"), ("biliti", "ble")), "g": (("logi", "log"),)}
    _STEP4 = {"e": (("icate", "ic"), ("ative", ""), ("alize", "al")), "i": (("iciti", "ic"),),
              "l": (("ical", "ic"), ("ful", "")), "s": (("ness", ""),)}
    _STEP5 = {"a": ("al",), "c": ("ance", "ence"), "e": ("er",), "i": ("ic",), "l": ("able", "ible"),
              "n": ("ant", "ement", "ment", "ent"), "s": ("ism",), "t": ("ate", "iti"), "u": ("ous",), "v": ("ive",),
              "z": ("ize",)}

    def _replace(self, table: dict, key: str) -> None:
        for suffix, repl in table.get(key, ()):
            if self.ends(suffix):
                self.r(repl)
                return

    def step3(self) -> None:  # double suffixes to single ones
        if self.k >= 1:
            self._replace(self._STEP3, self.b[self.k - 1])

    def step4(self) -> None:  # -ic-, -full, -ness
        self._replace(self._STEP4, self.b[self.k])

    def step5(self) -> None:  # -ant, -ence... when m() > 1
        if self.k < 1:
            return
        key = self.b[self.k - 1]
        if key == "o":
            if not ((self.ends("ion") and self.j >= 0 and self.b[self.j] in "st") or self.ends("ou")):
                return
        elif not any(self.ends(s) for s in self._STEP5.get(key, ())):
            return
        if self.m() > 1:
            self.k = self.j

    def step6(self) -> None:  # a final -e, and -ll -> -l, when m() > 1
        self.j = self.k
        if self.b[self.k] == "e":
            a = self.m()
            if a > 1 or (a == 1 and not self.cvc(self.k - 1)):
                self.k -= 1
        if self.b[self.k] == "l" and self.doublec(self.k) and self.m() > 1:
            self.k -= 1


@lru_cache(maxsize=1 << 16)
def porter_stem(word: str) -> str:
    """Porter's stem of a lower-case ``word``, as Lucene's ``PorterStemFilter`` computes it."""
    if len(word) <= 2:
        return word
    w = _Word(word)
    for step in (w.step1, w.step2, w.step3, w.step4, w.step5, w.step6):
        step()
    return "".join(w.b[:w.k + 1])
