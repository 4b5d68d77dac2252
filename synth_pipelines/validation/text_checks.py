"""The built-in degenerate-text checks: what a derailed model writes, told apart from real
human-written structured text (code, command output, logs, tables, man pages, READMEs, data files).

Each check is a measure over the whole value, not a single regex hit, and none counts whitespace:
alignment padding, indentation and blank lines are how tables and code look, not degeneracy. The
checks were measured on text nobody here wrote (``synth_pipelines/testing/text_corpus.py``: the
standard library, command output, man pages, package READMEs and data files, system logs) and on a
set of derailed outputs (repetition loops, placeholders, random tokens, truncation, lorem ipsum,
runaways); the figures are in docs/quality.md and ``tests/test_text_checks.py`` holds them.

What was tried and left out, because real structured text trips it (measured on that corpus):
Gopher's duplicate n-gram character fractions (99th percentile of real text 0.92 for 5-grams:
tables and logs repeat), the top n-gram fraction (real 99th percentile 0.43, overlapping phrase
loops), zlib compression ratio (real logs compress to 0.13, below sentence loops' 0.27), and the
earlier single-regex rules (any 10-character run, including spaces; any 12-digit run).
"""

from __future__ import annotations

import itertools
import re

import numpy as np

WHITESPACE = re.compile(r"\s+")
# Up to 12 characters repeated back to back 8+ times inside the text (hahahaha, B B B B, x1x1x1).
SHORT_TANDEM = re.compile(r"(.{1,12}?)\1{7,}", re.DOTALL)
# The longest unit, in words, a loop is looked for with (a long sentence repeated).
MAX_UNIT_WORDS = 80
LETTERS = re.compile(r"[^\W\d_]")
# A tiny model's runaway: one letter or digit repeated (real text peaks at 13 in the corpus).
ALNUM_RUN = re.compile(r"([^\W_])\1{19,}")
# Punctuation that is not a separator, repeated ("!!!!!!", "??????", ",,,,,,").
LOUD_RUN = re.compile(r"([!?'\"@$%&`])\1{11,}")
SEPARATOR_RUN = re.compile(r"([-=_*#~.+/\\|<>:^,;])\1{39,}")
DIGIT_RUN = re.compile(r"\d{33,}")
_LOREM = (
    "lorem ipsum dolor amet consectetur adipiscing elit eiusmod tempor incididunt labore dolore "
    "magna aliqua veniam nostrud exercitation ullamco laboris aliquip commodo consequat"
)
LOREM_WORDS = frozenset(_LOREM.split())
# Slots a template left unfilled: {{customer_name}}, [Your Name], [Insert date here], <insert X>,
# {placeholder}. Not <your-api-key> or YOUR_TOKEN: deliberate placeholders of technical docs.
# {{name}} is a slot left unfilled in prose, but the syntax of every template language (Jinja, dbt,
# Mustache, prompt templates): it counts only in text that is not about or made of templates.
DOUBLE_BRACE_SLOT = re.compile(r"\{\{\s*[a-z_][a-z0-9_]*\s*\}\}", re.IGNORECASE)
TEMPLATE_CONTEXT = re.compile(
    r"\{%|\{\{[#/^!>]|```|\"\{\{|template|variable|placeholder|jinja|mustache|handlebars|macro",
    re.IGNORECASE,
)
PLACEHOLDER = re.compile(
    r"\[(?:your|insert|enter|add|company|customer|recipient|sender)\b[^\]\[\n]{0,40}\](?!\()"
    r"|<(?:insert|enter|describe|add|fill in)\b[^<>\n]{0,40}>"
    r"|\{(?:placeholder|insert[_ ]\w+|your[_ ]\w+)\}"
    r"|\bTODO: fill\b"
    r"|\[PLACEHOLDER\]",
    re.IGNORECASE,
)
# Words prose rarely ends on.
_FUNCTION = (
    "the a an of to and or with for at from that which who whose is are was were be as "
    "than into onto its their his her our your this these those"
)
# "in", "on" and "by" also end phrasal verbs ("sign in", "log on", "come by"), as real unpunctuated
# chat messages do: after one of these verbs they are a particle, not a cut.
PARTICLES = frozenset({"in", "on", "by"})
_PARTICLE_VERBS = (
    "sign signed signing log logged logging check checked checking plug plugged come came coming "
    "drop dropped stop stopped stopping turn turned fill filled hand handed move moved hold held "
    "get got go goes going went put opt opted switch switched kick kicked pass passed stand "
    "stood keep kept hang hung pop popped tune tuned count counted clock clocked dial dialed zoom "
    "zoomed carry carried click clicked tap tapped swipe swiped stay stayed sit sat walk walked "
    "call called let moving live lived step stepped jump jumped it them this that something everything"
)
PARTICLE_VERBS = frozenset(_PARTICLE_VERBS.split())
FUNCTION_WORDS = frozenset(_FUNCTION.split())
# Candidate tokens are runs of letters and digits: separators (- _ / + = .) end them, so model names
# (all-MiniLM-L6-v2), paths and identifiers never count as one random blob.
NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def collapse_whitespace(text: str) -> str:
    return WHITESPACE.sub(" ", text).strip()


def _true_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the runs of True in a boolean array."""
    padded = np.concatenate(([0], mask.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    return edges[::2], edges[1::2] - edges[::2]


def _is_loop(unit: str, repeats: int, span: int) -> bool:
    letters = len(LETTERS.findall(unit))
    solid = len(unit.replace(" ", ""))
    if letters == 0 and solid < 6:
        return False  # 0,0,0,0 / ,1.8,1.8 / ----: data and rules, not a loop
    if letters < 2 and solid < 6 and repeats < 12:
        return False  # \x00\x00 in a bytes literal; but "B B B B ..." a dozen times is a loop
    return repeats >= 8 or (letters >= 2 and repeats >= 3 and span >= 80)


def repetition_loop(text: str) -> str | None:
    """A unit repeated back to back: 8+ times, or 3+ times over 80+ characters, where the unit has
    letters (a loop of content, not ``0,0,0,0`` data or ``-----`` rules); or one line three times
    in a row. Units are runs of up to ``MAX_UNIT_WORDS`` words (whitespace collapsed), or up to 12
    characters inside a word (``hahahaha``). Linear: one vectorized comparison per unit length."""
    flat = collapse_whitespace(text)
    inner = SHORT_TANDEM.search(flat)
    if inner and _is_loop(inner.group(1), len(inner.group(0)) // len(inner.group(1)), len(inner.group(0))):
        unit = inner.group(1)
        return f"repetition loop ({unit[:30]!r} x{len(inner.group(0)) // len(unit)})"
    words = flat.split(" ")
    if len(words) >= 3:
        ids = np.array([hash(w) for w in words], dtype=np.int64)
        ends = np.cumsum([len(w) + 1 for w in words])  # char offset after each word (and its space)
        for k in range(1, min(MAX_UNIT_WORDS, len(words) // 3) + 1):
            starts, lengths = _true_runs(ids[:-k] == ids[k:])
            for at, run in zip(starts[lengths >= 2 * k], lengths[lengths >= 2 * k], strict=True):
                repeats = run // k + 1
                unit = " ".join(words[at : at + k])
                first = int(ends[at - 1]) if at else 0
                span = int(ends[at + repeats * k - 1]) - first
                if _is_loop(unit + " ", repeats, span):
                    return f"repetition loop ({unit[:30]!r} x{repeats})"
    lines = [collapse_whitespace(line) for line in text.splitlines()]
    streak = best = 0
    for previous, line in zip(["", *lines], lines, strict=False):
        streak = streak + 1 if line == previous and len(line) >= 20 else 1
        best = max(best, streak)
    if best >= 3:
        return f"repetition loop (one line {best} times in a row)"
    return None


def runaway(text: str) -> str | None:
    """A character the model could not stop writing."""
    if ALNUM_RUN.search(text) or LOUD_RUN.search(text):
        return "long repeated-character run"
    lines = text.rstrip().splitlines() or [""]
    separator = SEPARATOR_RUN.search(lines[-1])
    # A rule line, or a banner comment (# Section *****#), is formatting. Prose that runs on into a
    # rule until the text ends, or a rule that is most of the text, is a model that could not stop.
    if separator and (
        (separator.end() == len(lines[-1]) and len(lines[-1][: separator.start()].split()) >= 3)
        or len(separator.group(0)) >= 0.5 * len(collapse_whitespace(text))
    ):
        return "long repeated-character run"
    if any(
        (m := SEPARATOR_RUN.search(line)) and len(m.group(0)) >= 0.5 * len(collapse_whitespace(text))
        for line in lines[:-1]
    ):
        return "long repeated-character run"
    if DIGIT_RUN.search(text):
        return "long digit run"
    return None


def lorem_ipsum(text: str) -> bool:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return len(words & LOREM_WORDS) >= 4


def random_token(text: str) -> str | None:
    """The first run of 16+ letters and digits that looks random rather than
    written: digits, lower and upper case mixed, and the character class switching at almost every
    other position (base64-like garbage, keys and tokens; camelCase, acronyms, snake_case, hashes
    and UUIDs switch rarely or lack a class)."""
    for token in NOT_ALNUM.split(text):
        if len(token) < 16:
            continue
        digits = sum(c.isdigit() for c in token)
        lower = sum(c.islower() for c in token)
        upper = sum(c.isupper() for c in token)
        if digits >= 2 and lower >= 2 and upper >= 2 and class_switches(token) >= 0.45 * len(token):
            return token
    return None


def class_switches(token: str) -> int:
    """How often consecutive characters change class (lower, upper, digit, other): random strings
    switch at about two of three positions, identifiers and words rarely."""

    def kind(c: str) -> int:
        return 0 if c.islower() else 1 if c.isupper() else 2 if c.isdigit() else 3

    return sum(1 for a, b in itertools.pairwise(token) if kind(a) != kind(b))


def character_noise(text: str) -> bool:
    """Random characters: long text whose characters spread almost evenly over many symbols
    (entropy near log2 of the printable set) with few word-like tokens."""
    flat = "".join(text.split())
    if len(flat) < 40:
        return False
    switches = class_switches(flat) / (len(flat) - 1)
    symbols = sum(1 for c in flat if not c.isalnum()) / len(flat)
    lower = sum(1 for c in flat if c.islower()) / len(flat)
    upper = sum(1 for c in flat if c.isupper()) / len(flat)
    tokens = text.split()
    wordlike = sum(1 for t in tokens if re.fullmatch(r"[A-Za-z][a-z]{1,}[.,;:]?", t))
    return (
        switches >= 0.6
        and symbols >= 0.15
        and min(lower, upper) >= 0.1  # numbers and punctuation alone are data (CSV), not noise
        and wordlike / max(1, len(tokens)) < 0.3
    )


def truncated(text: str) -> bool:
    """Prose cut off mid-sentence: one paragraph of words whose last word is a function word with
    nothing after it (``... created after the``). Lines of code, tables and logs are not prose."""
    stripped = text.strip()
    if "\n" in stripped:
        return False
    words = stripped.split()
    if len(words) < 4:
        return False
    alphabetic = sum(1 for w in words if re.fullmatch(r"[A-Za-z][A-Za-z'-]*[.,;:]?", w))
    if alphabetic / len(words) < 0.6:
        return False
    last, before = words[-1], words[-2].lower().strip(".,;:'\"")
    return last in FUNCTION_WORDS or (last in PARTICLES and before not in PARTICLE_VERBS)


def starts_mid_structure(text: str) -> bool:
    """The value begins with a comma: the rest of something else (a JSON object or a list the
    model was still writing), not a value of its own. Real text starts a line with one in none of
    the 2,887 windows of both corpora; a leading ";" is left alone (ini comments, shell ``case``)."""
    return text.lstrip().startswith(",")


def degenerate_text(text: str) -> list[str]:
    """Every reason ``text`` looks like derailed output (empty list: it does not)."""
    reasons = []
    loop = repetition_loop(text)
    if loop:
        reasons.append(loop)
    run = runaway(text)
    if run:
        reasons.append(run)
    if PLACEHOLDER.search(text) or (DOUBLE_BRACE_SLOT.search(text) and not TEMPLATE_CONTEXT.search(text)):
        reasons.append("unfilled template placeholder")
    if lorem_ipsum(text):
        reasons.append("lorem ipsum filler")
    if random_token(text) is not None:
        reasons.append("random-looking token (garbage, a key or a token)")
    elif character_noise(text):
        reasons.append("random characters")
    if truncated(text):
        reasons.append("cut off mid-sentence")
    if starts_mid_structure(text):
        reasons.append("starts with a comma (the tail of other text, not a value)")
    return reasons
