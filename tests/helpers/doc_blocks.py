"""The code blocks of carl's docs, read and sorted for tests/test_docs.py (which states the rules).

A page is README.md or a Markdown file under docs/. Its fenced blocks are read with markdown-it-py
(the CommonMark parser rich and typer already bring); each block gets a kind from its info string,
and a bash block is cut into commands with :mod:`shlex`. Nothing here runs anything.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from markdown_it import MarkdownIt

ROOT = Path(__file__).parents[2]
SHELLS = ("bash", "sh", "shell")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    info: str  # the fence's info string: a language, then attributes (title="path")
    text: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def lang(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def title(self) -> str | None:
        found = re.search(r'title="([^"]+)"', self.info)
        return found[1] if found else None

    @property
    def kind(self) -> str:
        """``file`` (a file shown as it is in the repository), ``python``, ``bash``, ``yaml``, ``toml``,
        ``text`` (not code: a diagram, a tree), or ``unknown`` (which the tests refuse)."""
        if self.title:
            return "file"
        if self.lang in SHELLS:
            return "bash"
        return self.lang if self.lang in ("python", "yaml", "toml", "text") else "unknown"


def blocks(page: Path) -> list[Block]:
    """Every fenced or indented code block of a page, in order."""
    found = []
    for token in MarkdownIt("commonmark").parse(page.read_text()):
        if token.type in ("fence", "code_block"):
            info = token.info.strip() if token.type == "fence" else ""
            found.append(Block(str(page.relative_to(ROOT)), token.map[0] + 1, info, token.content))
    return found


@cache
def all_blocks() -> tuple[Block, ...]:
    return tuple(b for page in pages() for b in blocks(page))


# -- bash blocks ---------------------------------------------------------------------------------

PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")  # RECIPE, MODEL, N, USER/REPO's parts
SEPARATORS = {"&&", ";"}


@dataclass
class Command:
    """One simple command of a bash block: ``env`` assignments, then ``argv``."""

    block: Block
    line: int  # in the page
    text: str  # as written, without its comment
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    comment: str = ""

    def __str__(self) -> str:
        return f"{self.block.page}:{self.line}: {self.text}"

    @property
    def expected_error(self) -> str | None:
        """The text after ``# error:``: the command must fail printing it (a trailing ``...`` elides)."""
        if not self.comment.startswith("error:"):
            return None
        return self.comment[len("error:"):].strip().removesuffix("...").strip()


@dataclass
class Synopsis:
    """A line that shows a command's form (placeholders, ``[optional]`` parts), not an instance."""

    block: Block
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.block.page}:{self.line}: {self.text}"

    def forms(self) -> list[list[str]]:
        """The words of each form on the line (``carl recipes list | carl recipes show NAME``: two)."""
        return [part.split() for part in re.split(r"\|\s*(?=carl\b)", self.text) if part.strip()]


def split_comment(line: str) -> tuple[str, str]:
    """``code  # comment`` -> (code, comment); a ``#`` inside quotes or a word is not a comment."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def is_synopsis(code: str) -> bool:
    """A placeholder word (``RECIPE``, ``USER/REPO``, ``N``), an ``[optional]`` part or ``...``."""
    words = code.replace("|", " ").split()
    placeholder = any(PLACEHOLDER.match(part.strip("[]")) for word in words if "=" not in word for part in word.split("/"))
    return placeholder or re.search(r"(^|\s)\[", code) is not None or "..." in words


def lines(block: Block) -> list[tuple[int, str, str]]:
    """(page line, code, comment) of each logical line: ``\\`` joins lines, and an indented line
    continues the synopsis above it."""
    out: list[tuple[int, str, str]] = []
    pending = ""
    for offset, raw in enumerate(block.text.splitlines()):
        code, comment = split_comment(raw)
        if pending:
            code, pending = pending + " " + code.strip(), ""
        if code.endswith("\\"):
            pending = code[:-1]
            continue
        if not code.strip():
            continue
        if raw[:1].isspace() and out and is_synopsis(out[-1][1]):
            number, previous, note = out[-1]
            out[-1] = (number, previous + " " + code.strip(), note or comment)
            continue
        out.append((block.line + 1 + offset, code.strip(), comment))
    return out


def commands(block: Block) -> list[Command | Synopsis]:
    """The block's lines as commands (``a && b; c``: three) and synopsis lines.

    Raises:
        ValueError: a pipe, a redirection or a background job (write the commands one by one).
    """
    items: list[Command | Synopsis] = []
    for number, code, comment in lines(block):
        if is_synopsis(code):
            items.append(Synopsis(block, number, code))
            continue
        lexer = shlex.shlex(code, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        tokens, current = list(lexer), []
        for token in tokens + [";"]:
            if token in SEPARATORS:
                if current:
                    items.append(_command(block, number, current, comment))
                current = []
            elif token and set(token) <= set(";&|<>()"):
                raise ValueError(f"{block}: line {number} uses {token!r}; the doc runner runs simple commands "
                                 f"joined by && or ; only")
            else:
                current.append(token)
    return items


def _command(block: Block, number: int, words: list[str], comment: str) -> Command:
    env = {}
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    text = " ".join(shlex.quote(w) for w in [*(f"{k}={v}" for k, v in env.items()), *words])
    return Command(block, number, text, words, env, comment)


# -- pip lines -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    spec: str  # as written: torch==2.13.0, ., ".[dev]", plugins/image_ear
    editable: bool

    @property
    def local(self) -> Path | None:
        """The repository folder of a local requirement (extras dropped), None for a PyPI one."""
        path = self.spec.split("[")[0]
        local = self.editable or path.startswith((".", "/")) or "/" in path or (ROOT / path).is_dir()  # as pip reads it
        return (ROOT / path).resolve() if local else None

    @property
    def extras(self) -> list[str]:
        found = re.search(r"\[(.*)\]", self.spec)
        return [e.strip() for e in found[1].split(",")] if found else []


def pip_requirements(command: Command) -> list[Requirement] | None:
    """The requirements of a ``pip install`` command (None for any other command)."""
    argv = command.argv
    if argv[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
        argv = argv[2:]
    if argv[:2] != ["pip", "install"]:
        return None
    found, editable = [], False
    for word in argv[2:]:
        if word in ("-e", "--editable"):
            editable = True
        elif not word.startswith("-"):
            found.append(Requirement(word, editable))
            editable = False
    return found


def setup_requirements() -> list[Requirement]:
    """What the README's set-up line installs: the first ``pip install`` commands of README.md."""
    readme = next(b for b in all_blocks() if b.page == "README.md" and b.kind == "bash")
    return [r for c in commands(readme) if isinstance(c, Command) for r in (pip_requirements(c) or [])]


def package_extras(folder: Path) -> set[str]:
    project = tomllib.loads((folder / "pyproject.toml").read_text()).get("project", {})
    return set(project.get("optional-dependencies", {}))
