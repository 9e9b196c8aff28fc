"""Pure-Python detectors for the demo adapters' styles.

They tell a pirate, cowboy, French or shouting answer from the base model's plain English
without a model: marker-word density, French function-word density and the share of
capital letters. Each score is a float in [0, 1]; `classify_style` applies thresholds.
"""

from __future__ import annotations

import re
from typing import Final, Literal

Style = Literal["pirate", "french", "shout", "cowboy", "base"]
STYLES: Final[tuple[Style, ...]] = ("pirate", "french", "shout", "cowboy", "base")

# Apostrophes stay inside words so "knowin'", "o'" and "'tis" survive tokenising.
_WORD = re.compile(r"[a-zà-ÿœæ']+")
_FRENCH_TOKEN = re.compile(r"[a-zà-ÿœæ]+")
_ARR = re.compile(r"a+r{2,}h*")
_ACCENTED = re.compile(r"[àâäçéèêëîïôöùûüÿœæ]")

# Words plain English almost never uses.
_PIRATE_STRONG: Final = frozenset(
    {
        "ahoy", "avast", "matey", "mateys", "ye", "yer", "aye", "hearty", "hearties",
        "landlubber", "landlubbers", "doubloon", "doubloons", "scallywag", "scallywags",
        "shiver", "timbers", "booty", "plunder", "savvy", "yo", "o'", "'tis", "ye'll",
        "buccaneer", "buccaneers", "grog",
    }
)  # fmt: skip
# Nautical words a plain answer about the sea would use too: worth half.
_PIRATE_WEAK: Final = frozenset(
    {"treasure", "ship", "ships", "sail", "sails", "seas", "captain", "crew", "parrot", "plank"}
)
# "be" after these is ordinary English ("can be", "to be"); elsewhere it is pirate grammar.
_BE_ENGLISH_BEFORE: Final = frozenset(
    {
        "to", "can", "will", "would", "could", "should", "may", "might", "must", "not",
        "also", "cannot", "shall", "let", "always", "never", "often", "sometimes", "usually",
        "won't", "can't", "don't", "it'll", "you'll", "they'll", "we'll", "i'll", "just",
        "even", "still", "then", "and", "or", "please", "ever",
    }
)  # fmt: skip
# Old-West words a plain answer does not use ("partner" alone is common English: it counts
# only as "howdy, partner" or "pardner").
_COWBOY_STRONG: Final = frozenset(
    {"howdy", "pardner", "reckon", "reckons", "y'all", "yonder", "yeehaw", "yee-haw", "ain't",
     "tootin'", "varmint", "varmints", "giddy", "giddyup", "buckaroo", "buckaroos"}
)  # fmt: skip
_PIRATE_ME_AFTER: Final = frozenset({"hearty", "hearties", "beard", "ship", "crew", "lads"})

# French function words that are not also common English words ("son", "pour", "plus",
# "a" and "on" are left out on purpose).
_FRENCH_WORDS: Final = frozenset(
    {
        "le", "la", "les", "un", "une", "des", "du", "de", "et", "est", "sont", "au", "aux",
        "dans", "sur", "avec", "pas", "ne", "que", "qui", "ce", "cette", "ces", "il", "elle",
        "ils", "elles", "nous", "vous", "je", "tu", "sa", "ses", "leur", "leurs", "mon", "ma",
        "mes", "votre", "vos", "mais", "ou", "comme", "aussi", "peut", "fait", "font", "entre",
        "tout", "tous", "toutes", "sans", "suis", "sommes", "êtes", "être", "avoir", "très",
        "y", "l", "qu", "j", "en", "bonjour", "merci", "oui", "avez", "ont", "cela", "deux",
        "trois", "quatre", "cinq", "sept", "huit", "neuf", "dix", "chaque", "notre",
    }
)  # fmt: skip

SHOUT_THRESHOLD: Final = 0.6
FRENCH_THRESHOLD: Final = 0.2
PIRATE_THRESHOLD: Final = 0.05
COWBOY_THRESHOLD: Final = 0.04
_MIN_LETTERS: Final = 8
_MIN_HITS: Final = 2


def _words(text: str) -> list[str]:
    # Generated text often uses curly apostrophes; fold them so a dropped g still counts.
    lowered = text.lower().replace("\u2019", "'")
    return [w for w in _WORD.findall(lowered) if w.strip("'")]


def _pirate_hits(text: str) -> tuple[float, int, int]:
    """Weighted marker hits, strong marker count and word count."""
    words = _words(text)
    weighted = 0.0
    strong = 0
    for index, word in enumerate(words):
        previous = words[index - 1].strip("'") if index else ""
        following = words[index + 1].strip("'") if index + 1 < len(words) else ""
        bare = word.strip("'")
        if word in _PIRATE_STRONG or bare in _PIRATE_STRONG or _ARR.fullmatch(bare):
            weighted += 1.0
            strong += 1
        elif len(bare) > 4 and word.endswith("in'"):
            # A dropped g ("sailin'") is part of the voice.
            weighted += 1.0
            strong += 1
        elif bare == "me" and following in _PIRATE_ME_AFTER:
            weighted += 1.0
            strong += 1
        elif (bare == "be" and previous not in _BE_ENGLISH_BEFORE) or bare in _PIRATE_WEAK:
            weighted += 0.5
    return weighted, strong, len(words)


def pirate_score(text: str) -> float:
    """Weighted share of words that are pirate markers (arr, matey, ye, 'X be Y', ...)."""
    weighted, _, count = _pirate_hits(text)
    return min(1.0, weighted / count) if count else 0.0


def _french_hits(text: str) -> tuple[int, int]:
    # Elisions ("l'eau", "qu'il") split into their own tokens, which count as French.
    tokens = _FRENCH_TOKEN.findall(text.lower())
    hits = sum(1 for t in tokens if t in _FRENCH_WORDS or _ACCENTED.search(t))
    return hits, len(tokens)


def french_score(text: str) -> float:
    """Share of words that are French function words or carry a French accent."""
    hits, count = _french_hits(text)
    return hits / count if count else 0.0


def shout_score(text: str) -> float:
    """Share of cased letters that are capitals; 0 for text with too few letters to judge."""
    letters = [c for c in text if c.isalpha() and c.lower() != c.upper()]
    if len(letters) < _MIN_LETTERS:
        return 0.0
    return sum(1 for c in letters if c.isupper()) / len(letters)


def _cowboy_hits(text: str) -> tuple[int, int]:
    words = _words(text)
    hits = sum(
        1
        for index, word in enumerate(words)
        if word in _COWBOY_STRONG
        or word.strip("'") in _COWBOY_STRONG
        or (word == "partner" and index > 0 and words[index - 1] == "howdy")
    )
    return hits, len(words)


def cowboy_score(text: str) -> float:
    """Share of words that are Old-West markers (howdy, reckon, y'all, yonder, yeehaw, ...)."""
    hits, count = _cowboy_hits(text)
    return hits / count if count else 0.0


def style_scores(text: str) -> dict[str, float]:
    """All four scores for one text."""
    return {
        "pirate": pirate_score(text),
        "french": french_score(text),
        "shout": shout_score(text),
        "cowboy": cowboy_score(text),
    }


def classify_style(text: str) -> Style:
    """The style a text shows: "shout", "french", "cowboy", "pirate", or "base"."""
    # Capitals first: a shouted answer's words are still English (or French) words.
    if shout_score(text) >= SHOUT_THRESHOLD:
        return "shout"
    french_hits, _ = _french_hits(text)
    if french_hits >= _MIN_HITS and french_score(text) >= FRENCH_THRESHOLD:
        return "french"
    # Before the pirate voice: both drop their g's, only the cowboy says howdy or reckon.
    cowboy_hits, _ = _cowboy_hits(text)
    if cowboy_hits >= _MIN_HITS and cowboy_score(text) >= COWBOY_THRESHOLD:
        return "cowboy"
    _, strong, _ = _pirate_hits(text)
    if strong >= _MIN_HITS and pirate_score(text) >= PIRATE_THRESHOLD:
        return "pirate"
    return "base"
