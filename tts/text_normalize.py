"""Text normalisation for speech: what the user wrote → the words the voice should say.

espeak-ng (Piper's phonemiser) reads digits one way only: "3/4/2025" came out "3-4-2-2025", "10:30am"
"1030am", and emoji were read by their Unicode names ("pizza, grinning face"). Each rule below rewrites one
kind of token into plain words before synthesis; the rules run in table order (money before plain numbers,
dates before fractions...), and whatever no rule matches is left to espeak. US conventions: m/d/y dates,
12-hour times.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}
_MONTHS = ("January February March April May June July August September October November December").split()


def number_words(n: int) -> str:
    """Cardinal in words: 1234 → "one thousand two hundred thirty-four"."""
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")
    for scale, name in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            return f"{number_words(high)} {name}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def ordinal_words(n: int) -> str:
    """Ordinal in words: 21 → "twenty-first"."""
    words = number_words(n)
    head, sep, last = words.rpartition("-") if "-" in words.split(" ")[-1] else words.rpartition(" ")
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def year_words(n: int) -> str:
    """A year as people say it: 1999 → "nineteen ninety-nine", 2005 → "two thousand five", 2025 → "twenty
    twenty-five"."""
    if 2000 <= n <= 2009 or n % 1000 == 0 or not 1000 <= n <= 9999:
        return number_words(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{number_words(high)} hundred"
    return f"{number_words(high)} " + (f"oh {_ONES[low]}" if low < 10 else number_words(low))


def _digits(text: str) -> int:
    return int(text.replace(",", ""))


def _decimal(text: str) -> str:
    """ "3.14" → "three point one four"; "1,200" → "one thousand two hundred"."""
    whole, _, frac = text.partition(".")
    words = number_words(_digits(whole)) if whole else "zero"
    return words + (" point " + " ".join(_ONES[int(d)] for d in frac) if frac else "")


# --- the rules: (pattern, replacement), applied in this order ----------------------------------------------

_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
               "£": ("pound", "pounds", "penny", "pence")}
_MAGNITUDE = r"(?:\s*(million|billion|trillion|thousand|[kKmMbB]n?)\b)?"
_MAGNITUDE_WORDS = {"k": "thousand", "m": "million", "mn": "million", "b": "billion", "bn": "billion"}


def _money(m: re.Match) -> str:
    one, many, cent, cents = _CURRENCIES[m.group(1)]
    amount, magnitude = m.group(2), m.group(3)
    if magnitude:  # "$1.5 million" → "one point five million dollars"
        scale = _MAGNITUDE_WORDS.get(magnitude.lower(), magnitude.lower())
        return f"{_decimal(amount)} {scale} {many}"
    whole, _, frac = amount.partition(".")
    units = _digits(whole) if whole else 0
    parts = [f"{number_words(units)} {one if units == 1 else many}"] if units or not frac else []
    if frac:
        hundredths = int((frac + "0")[:2])
        if hundredths:
            parts.append(f"{number_words(hundredths)} {cent if hundredths == 1 else cents}")
    return " and ".join(parts) if parts else f"zero {many}"


def _date(m: re.Match) -> str:
    month, day, year = int(m.group(1)), int(m.group(2)), m.group(3)
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return m.group(0).replace("/", " slash ")
    spoken = f"{_MONTHS[month - 1]} {ordinal_words(day)}"
    y = int(year)
    return f"{spoken}, {year_words(y + 2000 if len(year) == 2 else y)}"


_DENOMINATORS = {2: ("half", "halves"), 4: ("quarter", "quarters")}


def _fraction(m: re.Match) -> str:
    top, bottom = int(m.group(1)), int(m.group(2))
    if bottom == 0:
        return f"{number_words(top)} slash zero"
    if bottom in _DENOMINATORS:
        return f"{number_words(top)} {_DENOMINATORS[bottom][top != 1]}"
    if 3 <= bottom <= 10:  # "two thirds", "one fifth"
        return f"{number_words(top)} {ordinal_words(bottom)}{'s' if top != 1 else ''}"
    return f"{number_words(top)} over {number_words(bottom)}"


def _iso_date(m: re.Match) -> str:
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return m.group(0)
    return f"{_MONTHS[month - 1]} {ordinal_words(day)}, {year_words(year)}"


def _clock(hour: int, minute: int, meridiem: str | None) -> str:
    spoken = number_words(hour)
    if minute:
        spoken += " " + (f"oh {_ONES[minute]}" if minute < 10 else number_words(minute))
    elif not meridiem:
        spoken += " o'clock"
    if meridiem:
        spoken += " " + " ".join(meridiem.lower().replace(".", ""))  # "a m": espeak spells the letters
    return spoken


def _time(m: re.Match) -> str:
    hour, minute = int(m.group(1)), int(m.group(2))
    if hour > 23 or minute > 59:
        return m.group(0)
    return _clock(hour, minute, m.group(3))


def _hour_meridiem(m: re.Match) -> str:
    hour = int(m.group(1))
    return _clock(hour, 0, m.group(2)) if 1 <= hour <= 12 else m.group(0)


def _ordinal(m: re.Match) -> str:
    return ordinal_words(_digits(m.group(1)))


def _percent(m: re.Match) -> str:
    return f"{_decimal(m.group(1))} percent"


def _number(m: re.Match) -> str:
    return _number_text(m.group(0))


def _number_text(text: str) -> str:
    sign = "minus " if text.startswith(("-", "−")) else ""
    text = text.lstrip("-−")
    if re.fullmatch(r"1[1-9]\d\d|20\d\d", text):  # a bare four-digit number in this range is most often a year
        return sign + year_words(int(text))
    return sign + _decimal(text)


_UNITS = {"km": "kilometers", "kg": "kilograms", "cm": "centimeters", "mm": "millimeters", "mph": "miles per hour",
          "km/h": "kilometers per hour", "kph": "kilometers per hour", "ml": "milliliters", "lbs": "pounds",
          "lb": "pounds", "°C": "degrees Celsius", "°F": "degrees Fahrenheit", "°": "degrees",
          "GB": "gigabytes", "MB": "megabytes", "kB": "kilobytes", "ms": "milliseconds", "Hz": "hertz",
          "kHz": "kilohertz"}

# Abbreviations whose full stop does not end a sentence (the TTS chunker keeps them with what follows).
_ABBREVIATIONS = {"Mr.": "Mister", "Mrs.": "Missus", "Ms.": "Miz", "Dr.": "Doctor", "Prof.": "Professor",
                  "Jr.": "Junior", "Sr.": "Senior", "St.": "Saint", "Mt.": "Mount", "vs.": "versus",
                  "e.g.": "for example", "i.e.": "that is", "etc.": "et cetera", "approx.": "approximately",
                  "Jan.": "January", "Feb.": "February", "Aug.": "August", "Sept.": "September",
                  "Oct.": "October", "Nov.": "November", "Dec.": "December", "No.": "number",
                  "Ave.": "Avenue", "Blvd.": "Boulevard", "Dept.": "Department", "min.": "minutes"}
_SYMBOLS = {"&": " and ", "+": " plus ", "=": " equals ", "@": " at ", "#": " number "}

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_Rule = tuple[re.Pattern, Callable[[re.Match], str]]
_RULES: tuple[_Rule, ...] = (
    (re.compile(r"([$€£])\s?(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)" + _MAGNITUDE), _money),
    (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"), _iso_date),
    (re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})\b(?!/)"), _date),
    (re.compile(r"\b(\d{1,3})/(\d{1,3})\b(?!/)"), _fraction),
    (re.compile(r"\b(\d{1,2}):(\d{2})\s*([AaPp]\.[Mm]\.|[AaPp][Mm](?![A-Za-z]))?"), _time),
    (re.compile(r"\b(\d{1,2})\s*([AaPp]\.[Mm]\.|[AaPp][Mm])(?![A-Za-z])"), _hour_meridiem),
    (re.compile(r"\b(\d+)(?:st|nd|rd|th)\b"), _ordinal),
    (re.compile(rf"({_NUM})\s?%"), _percent),
    (re.compile(rf"(?<![\w.])({_NUM})\s?(" + "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
                + r")(?![A-Za-z])"), lambda m: f"{_number_text(m.group(1))} {_UNITS[m.group(2)]}"),
    (re.compile(r"(?<![\w.])(?:" + "|".join(re.escape(a) for a in _ABBREVIATIONS) + r")(?!\w)"),
     lambda m: _ABBREVIATIONS[m.group(0)]),
    # A minus sign only where it cannot be a dash: "-5" and "it was -3" but not "5-10".
    (re.compile(rf"(?:(?<!\S)[-−])?(?<![\w.])(?:{_NUM})(?!\w|\.\d)"), _number),
    (re.compile(r"[&+=@#]"), lambda m: _SYMBOLS[m.group(0)]),
)

# Pictographs are not spoken at all: read by name they are noise ("pizza, grinning face").
_EMOJI = re.compile("[\U0001F000-\U0001FAFF\U00002600-\U000027BF\U0001F1E6-\U0001F1FF\U00002B00-\U00002BFF"
                    "\u200d\ufe0f\ufe0e\u20e3\U000E0020-\U000E007F]")


def _drop_symbols(text: str) -> str:
    text = _EMOJI.sub("", text)
    # Other pictographic symbols (category So: ☺ ✓ ™...) are dropped too, but letters of any script stay.
    return "".join(ch for ch in text if ch == "°" or unicodedata.category(ch) != "So")


def normalize_for_speech(text: str) -> str:
    """The text as words for the voice; "" when nothing in it can be spoken (only spaces, emoji, symbols)."""
    text = _drop_symbols(unicodedata.normalize("NFKC", text))
    for pattern, replace in _RULES:
        text = pattern.sub(replace, text)
    return re.sub(r"\s+", " ", text).strip()


def has_speech(text: str) -> bool:
    """Whether normalising `text` leaves anything a voice can say (a letter or a digit)."""
    return any(ch.isalnum() for ch in normalize_for_speech(text))
