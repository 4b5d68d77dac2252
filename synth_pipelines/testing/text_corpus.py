"""Text nobody here wrote, for measuring the built-in degenerate-text checks (issue 22).

``real_corpus()`` gathers human-written structured text from what is installed on the machine:
Python standard-library source and docstrings, the output of ordinary commands (``ps``, ``df``,
``ls -l``, ``ip addr``, ``mount``...), man pages, package READMEs and metadata, CSV/JSON/YAML/TOML
data shipped inside packages, and system logs. Each sample is a window of a few lines to a few
dozen, the size of a field an example might hold. Sources missing on a machine are skipped.

``degenerate_corpus()`` makes what a derailed small model writes: repetition loops (a word, a
phrase, a sentence, a line), unfilled template placeholders, random tokens, prose cut off
mid-sentence, lorem ipsum, digit and character runaways, boilerplate. Its base sentences come from
package READMEs, not from anything the checks were written against.

Both are deterministic for a seed (sorted file lists, seeded sampling), so figures are comparable
between runs on one machine.
"""

from __future__ import annotations

import ast
import gzip
import os
import random
import re
import string
import subprocess
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_CHARS = 4000  # the longest field value a sample stands for


@dataclass(frozen=True)
class Sample:
    kind: str  # python_source, docstring, command_output, man_page, readme, data_file, log; or a fault
    origin: str  # the file or command it came from
    text: str


def _windows(text: str, rng: random.Random, count: int, low: int = 3, high: int = 30) -> Iterator[str]:
    """``count`` windows of ``low``..``high`` consecutive lines (each non-blank, at most MAX_CHARS)."""
    lines = text.splitlines()
    if not lines:
        return
    for _ in range(count):
        size = rng.randint(low, high)
        start = rng.randrange(max(1, len(lines) - size + 1))
        chunk = "\n".join(lines[start : start + size]).strip("\n")
        if chunk.strip():
            yield chunk[:MAX_CHARS]


def _read(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def _pick(paths: Iterable[Path], rng: random.Random, count: int) -> list[Path]:
    ordered = sorted(paths)
    return rng.sample(ordered, min(count, len(ordered)))


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def python_source(rng: random.Random, files: int = 60, per_file: int = 4) -> list[Sample]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    candidates = [p for p in stdlib.glob("*.py") if p.stat().st_size > 2000]
    out = []
    for path in _pick(candidates, rng, files):
        out += [Sample("python_source", str(path), w) for w in _windows(_read(path), rng, per_file, 5, 40)]
    return out


def docstrings(rng: random.Random, files: int = 60, per_file: int = 3) -> list[Sample]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    candidates = [p for p in stdlib.glob("*.py") if p.stat().st_size > 2000]
    out = []
    for path in _pick(candidates, rng, files):
        try:
            tree = ast.parse(_read(path))
        except (SyntaxError, ValueError):
            continue
        docs = [
            doc
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef | ast.Module)
            and (doc := ast.get_docstring(node))
            and len(doc) >= 40
        ]
        out += [
            Sample("docstring", str(path), d[:MAX_CHARS]) for d in rng.sample(docs, min(per_file, len(docs)))
        ]
    return out


COMMANDS = [
    ["ps", "aux"],
    ["df", "-h"],
    ["df", "-i"],
    ["ls", "-l", "/usr/bin"],
    ["ls", "-la", "/etc"],
    ["ip", "addr"],
    ["ip", "route"],
    ["mount"],
    ["free", "-m"],
    ["uname", "-a"],
    ["id"],
    ["cat", "/proc/cpuinfo"],
    ["cat", "/proc/meminfo"],
    ["cat", "/etc/passwd"],
    ["cat", "/etc/os-release"],
    ["dpkg", "-l"],
    ["git", "--version"],
    ["python3", "-m", "pip", "list"],
    ["python3", "-c", "import sys, pprint; pprint.pprint(sys.path)"],
    ["find", "/etc", "-maxdepth", "2", "-name", "*.conf"],
    ["stat", "/etc/hostname"],
    ["getent", "services"],
]


def command_output(rng: random.Random, per_command: int = 6) -> list[Sample]:
    out = []
    env = {**os.environ, "LC_ALL": "C", "COLUMNS": "120"}
    for command in COMMANDS:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=20, env=env, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and done.stdout.strip():
            origin = " ".join(command)
            out += [
                Sample("command_output", origin, w) for w in _windows(done.stdout, rng, per_command, 2, 30)
            ]
    return out


MAN_PAGES = [
    "ls",
    "ps",
    "grep",
    "find",
    "tar",
    "bash",
    "ssh",
    "git",
    "curl",
    "sed",
    "awk",
    "cp",
    "chmod",
    "df",
]


def man_pages(rng: random.Random, per_page: int = 5) -> list[Sample]:
    out = []
    env = {**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "100", "LC_ALL": "C"}
    for page in MAN_PAGES:
        try:
            done = subprocess.run(
                ["man", page], capture_output=True, text=True, timeout=20, env=env, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = re.sub(r".\x08", "", done.stdout)  # overstrike bold/underline
        if done.returncode == 0 and text.strip():
            out += [Sample("man_page", f"man {page}", w) for w in _windows(text, rng, per_page, 3, 30)]
    return out


def readmes(rng: random.Random, files: int = 80, per_file: int = 2) -> list[Sample]:
    """Package descriptions (Markdown/reST READMEs inside METADATA) and Debian's package docs."""
    texts: list[tuple[str, str]] = []
    for meta in _pick(_site_packages().glob("*.dist-info/METADATA"), rng, files):
        body = _read(meta).split("\n\n", 1)
        if len(body) == 2 and len(body[1]) > 400:
            texts.append((str(meta), body[1]))
    docs = Path("/usr/share/doc")
    if docs.is_dir():
        for path in _pick([*docs.glob("*/README*"), *docs.glob("*/NEWS*")], rng, files // 2):
            try:
                texts.append((str(path), _read(path)))
            except (OSError, EOFError, gzip.BadGzipFile):
                continue
    out = []
    for origin, text in texts:
        out += [Sample("readme", origin, w) for w in _windows(text, rng, per_file, 3, 25)]
    return out


def data_files(rng: random.Random, files: int = 90, per_file: int = 2) -> list[Sample]:
    root = _site_packages()
    found = [
        p
        for pattern in ("*.csv", "*.json", "*.yaml", "*.yml", "*.toml", "*.tsv")
        for p in root.glob(f"**/{pattern}")
        if 200 < p.stat().st_size < 5_000_000
    ]
    out = []
    for path in _pick(found, rng, files):
        try:
            text = _read(path)
        except OSError:
            continue
        out += [Sample("data_file", str(path), w) for w in _windows(text, rng, per_file, 3, 30)]
    return out


def logs(rng: random.Random, per_file: int = 10) -> list[Sample]:
    out = []
    for path in _pick(
        [p for p in (*Path("/var/log").glob("*.log"), *Path("/var/log/apt").glob("*.log")) if p.is_file()],
        rng,
        8,
    ):
        try:
            text = _read(path)
        except OSError:
            continue
        if text.strip():
            out += [Sample("log", str(path), w) for w in _windows(text, rng, per_file, 2, 25)]
    return out


def real_corpus(seed: int = 0) -> list[Sample]:
    """Human-written structured text from this machine (about 1,500 samples), in a stable order."""
    rng = random.Random(seed)
    return [
        *python_source(rng),
        *docstrings(rng),
        *command_output(rng),
        *man_pages(rng),
        *readmes(rng),
        *data_files(rng),
        *logs(rng),
    ]


def heldout_corpus(seed: int = 1) -> list[Sample]:
    """Kinds of text the checks were never looked at against while they were written: third-party
    Python source, shell scripts, /etc configuration, Markdown/reST docs and SQL inside packages,
    plus a fresh draw (another seed) of every kind ``real_corpus`` has."""
    rng = random.Random(seed)
    root = _site_packages()
    groups: dict[str, list[Path]] = {
        "third_party_python": [p for p in root.glob("*/**/*.py") if 2000 < p.stat().st_size < 500_000],
        "markdown_docs": [
            p for p in (*root.glob("**/*.md"), *root.glob("**/*.rst")) if p.stat().st_size > 200
        ],
        "sql": [p for p in root.glob("**/*.sql") if p.stat().st_size > 100],
        "config": [p for p in (*Path("/etc").glob("*.conf"), *Path("/etc").glob("*/*.conf")) if p.is_file()],
        "shell_script": [
            p
            for p in Path("/usr/bin").iterdir()
            if p.is_file() and not p.is_symlink() and 200 < p.stat().st_size < 200_000
        ],
    }
    out: list[Sample] = []
    for kind, paths in groups.items():
        for path in _pick(paths, rng, 60):
            try:
                head = path.read_bytes()[:4]
                if kind == "shell_script" and not head.startswith(b"#!"):
                    continue
                text = _read(path)
            except (OSError, PermissionError):
                continue
            if "\ufffd" in text[:2000]:
                continue  # not text
            out += [Sample(kind, str(path), w) for w in _windows(text, rng, 3, 3, 30)]
    return out + real_corpus(seed + 100)


# ------------------------------------------------------------------------------------ degenerate
PLACEHOLDERS = [
    "{{customer_name}}",
    "{{ product_name }}",
    "[Your Name]",
    "[Insert date here]",
    "<insert endpoint here>",
    "[PLACEHOLDER]",
    "{placeholder}",
    "TODO: fill in",
    "[Company Name]",
    "<describe the fix>",
]
# Not here: "XXX", "<your-api-key>", "YOUR_TOKEN": deliberate markers of code and technical docs,
# which the real corpus holds too (a check cannot tell them from an unfilled slot).
LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut "
    "aliquip ex ea commodo consequat."
)
FUNCTION_WORDS = ["the", "a", "of", "to", "and", "with", "for", "in", "that", "is", "by", "an", "on", "which"]


def _sentences(rng: random.Random, count: int = 400) -> list[str]:
    """Prose sentences from package READMEs (the degenerate set's raw material)."""
    found: list[str] = []
    for meta in sorted(_site_packages().glob("*.dist-info/METADATA")):
        body = _read(meta).split("\n\n", 1)[-1]
        for sentence in re.split(r"(?<=[.!?])\s+", body):
            sentence = " ".join(sentence.split())
            words = sentence.split()
            if (
                8 <= len(words) <= 40
                and sentence[0].isupper()
                and sentence.endswith(".")
                and not any(c in sentence for c in "`|<>[]{}#*=_/\\")
            ):
                found.append(sentence)
    rng.shuffle(found)
    return found[:count] or ["The service returns the list of accounts created in the last day."]


def _random_token(rng: random.Random, length: int) -> str:
    alphabet = string.ascii_letters + string.digits + "+/"
    return "".join(rng.choice(alphabet) for _ in range(length))


def degenerate_corpus(seed: int = 0, per_kind: int = 60) -> list[Sample]:
    """What derailed generation looks like, ``per_kind`` samples of each fault (about 600)."""
    rng = random.Random(seed)
    sentences = _sentences(rng)

    def sentence() -> str:
        return rng.choice(sentences)

    def prose(n: int) -> str:
        return " ".join(sentence() for _ in range(n))

    makers = {
        "repeated_word": lambda: " ".join([rng.choice(sentence().split()).strip(".,")] * rng.randint(12, 80)),
        "repeated_phrase": lambda: (
            prose(rng.randint(0, 1))
            + " "
            + " ".join([" ".join(sentence().split()[: rng.randint(2, 5)])] * rng.randint(8, 30))
        ).strip(),
        "repeated_sentence": lambda: (
            prose(rng.randint(0, 1)) + " " + " ".join([sentence()] * rng.randint(4, 15))
        ).strip(),
        "repeated_line": lambda: "\n".join([sentence()] * rng.randint(4, 20)),
        "placeholder": lambda: (
            f"{prose(rng.randint(0, 2))} {rng.choice(PLACEHOLDERS)} {prose(rng.randint(0, 1))}".strip()
        ),
        "random_tokens": lambda: " ".join(
            _random_token(rng, rng.randint(16, 48)) for _ in range(rng.randint(1, 6))
        ),
        "random_characters": lambda: "".join(
            rng.choice(string.printable[:94]) for _ in range(rng.randint(40, 300))
        ),
        "truncated": lambda: (
            prose(rng.randint(0, 2))
            + " "
            + " ".join(sentence().split()[: rng.randint(3, 8)])
            + " "
            + rng.choice(FUNCTION_WORDS)
        ).strip(),
        "lorem_ipsum": lambda: LOREM[: rng.randint(60, len(LOREM))],
        "digit_runaway": lambda: (
            sentence()[:-1] + " " + "".join(rng.choice(string.digits) for _ in range(rng.randint(40, 400)))
        ),
        "character_runaway": lambda: (
            sentence()[:-1] + " " + rng.choice("aeiouxz!?.*-=") * rng.randint(40, 300)
        ),
    }
    return [Sample(kind, "synthetic", makers[kind]()) for kind in makers for _ in range(per_kind)]
