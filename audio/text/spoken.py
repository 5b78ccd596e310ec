"""How text sounds when read aloud: whether it has anything to say (`is_speakable`) and how long it takes to
say, as a weight in characters of plain prose (`spoken_weight`). Pure: stdlib only.

The spoken weight is the written weight (`splitter.text_weight`: 1 per Latin character, 3 per CJK one) with
the text that is read out longer than it is written counted as what is said instead:

- a number, separators included: 8 per integer digit ("1,234,567" is "one million two hundred thirty-four
  thousand five hundred sixty-seven", 65 letters for 7 digits), and "point" plus 5 per decimal digit;
- a currency sign 8 ("dollars"), `%` 7 ("percent"), `°` 7 ("degrees"), `&` 3, `@` 2, `+` 4, `=` 6, `#` 6,
  `§` 7, `/` between numbers 3 ("per");
- a unit right after a number (km, kg, ms, GB, Hz, mph, ...) 10 ("kilometres");
- an all-capitals abbreviation of 2-5 letters, dotted or not (FBI, U.S., HTML) 3 per letter, as it is
  spelled ("eff bee eye").

Nothing is ever weighed below its written weight. The rule is approximate by design: it only has to keep a
chunk's frame budget and its too-short check in proportion to how long a voice takes to say it.
"""

from __future__ import annotations

import re
import unicodedata

from audio.text.splitter import text_weight

DIGIT_WEIGHT = 8.0
DECIMAL_POINT_WEIGHT = 6.0
DECIMAL_DIGIT_WEIGHT = 5.0
UNIT_WEIGHT = 10.0
LETTER_SPELLED_WEIGHT = 3.0
SYMBOL_WEIGHTS = {
    **dict.fromkeys("$€£¥₩₹₽¢", 8.0),
    "%": 7.0,
    "‰": 8.0,
    "°": 7.0,
    "&": 3.0,
    "@": 2.0,
    "+": 4.0,
    "=": 6.0,
    "#": 6.0,
    "§": 7.0,
}
# Symbols with a spoken name: a chunk of only these still says something ("%" is "percent").
_SPOKEN_SYMBOLS = frozenset(SYMBOL_WEIGHTS)
_UNITS = (
    "km|kg|mg|g|cm|mm|m|µm|nm|ml|l|kWh|kW|W|MW|V|mA|A|Hz|kHz|MHz|GHz|ms|s|min|h|mph|kph|km/h|m/s|"
    "KB|kB|MB|GB|TB|Kb|Mb|Gb|ft|in|lb|lbs|oz|mi|yd|px|dB|K"
)
# A number: digits with , . or thin/normal spaces between digit groups, an optional decimal part; then a unit.
_NUMBER_RE = re.compile(
    r"(?<![\w.,])(?P<int>\d{1,3}(?:[,.\u202f\u00a0 ]\d{3})+|\d+)(?:[.,](?P<dec>\d+))?"
    rf"(?:\s?(?P<unit>(?:{_UNITS}))(?![^\W\d_]))?"
)
_ABBREVIATION_RE = re.compile(r"(?<![^\W\d_])(?:(?:[A-Z]\.){2,5}|[A-Z]{2,5})(?![^\W\d_])")
_PER_RE = re.compile(r"(?<=\d)/(?=\d)")


def is_speakable(text: str) -> bool:
    """Whether a voice has anything to say for `text`: a letter, a digit or a symbol with a spoken name.

    Punctuation, ellipses, dashes, emoji and whitespace alone say nothing."""
    return any(unicodedata.category(c)[0] in "LN" or c in _SPOKEN_SYMBOLS for c in text)


def spoken_weight(text: str) -> float:
    """The weight of `text` as it is read aloud, never below its written `text_weight` (see the module doc)."""
    extra = 0.0
    for m in _NUMBER_RE.finditer(text):
        digits = sum(c.isdigit() for c in m.group("int"))
        said = DIGIT_WEIGHT * digits
        if m.group("dec"):
            said += DECIMAL_POINT_WEIGHT + DECIMAL_DIGIT_WEIGHT * len(m.group("dec"))
        if m.group("unit"):
            said += UNIT_WEIGHT
        extra += max(0.0, said - (m.end() - m.start()))
    for m in _ABBREVIATION_RE.finditer(text):
        letters = sum(c.isalpha() for c in m.group())
        extra += max(0.0, LETTER_SPELLED_WEIGHT * letters - (m.end() - m.start()))
    extra += sum(SYMBOL_WEIGHTS.get(c, 1.0) - 1.0 for c in text if c in SYMBOL_WEIGHTS)
    extra += 2.0 * len(_PER_RE.findall(text))
    return text_weight(text) + extra
