"""The code blocks of README.md and docs/: found in reading order, and run the way a reader
pastes them into a shell opened at the root of a fresh clone.

A block preceded by ``<!-- check: syntax-only (why) -->`` is only parsed (``bash -n``, Python's
``compile``): it needs the public bucket, a GPU, a server left running, or takes long.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<language>[\w+-]*)[^\n]*$")
SYNTAX_ONLY = re.compile(r"^\s*<!-- check: syntax-only\b.*-->\s*$")
# A placeholder the shell reads as a redirection: `--model <version>`.
PLACEHOLDER = re.compile(r"(?<![<\w])<[A-Za-z][\w ,.'-]*>")
RUN_LANGUAGES = ("bash", "python")
# Left out of the clone: what a fresh clone does not have.
NOT_CLONED = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".prefect",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".bench",
    "demo-output",
    "bincount-output",
    "ui-check",
    "site",
    "out",
)


@dataclass(frozen=True)
class Block:
    document: str  # relative to the repository
    line: int  # the opening fence's, 1-based
    language: str
    text: str
    syntax_only: bool

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}"


def blocks(path: Path, root: Path) -> list[Block]:
    """The fenced code blocks of one Markdown file, dedented to their fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, number = [], 0
    while number < len(lines):
        opening = FENCE.match(lines[number])
        if not opening:
            number += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        body, end = [], number + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            body.append(lines[end][indent:] if lines[end][:indent].isspace() else lines[end])
            end += 1
        before = next((lines[i] for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        found.append(
            Block(
                document=str(path.relative_to(root)),
                line=number + 1,
                language=opening["language"].lower(),
                text="\n".join(body) + "\n",
                syntax_only=bool(SYNTAX_ONLY.match(before)),
            )
        )
        number = end + 1
    return found


def documents(root: Path) -> list[Path]:
    """README.md, then the site's pages in the order of mkdocs.yml's navigation."""
    config = yaml.safe_load((root / "mkdocs.yml").read_text(encoding="utf-8"))
    docs = root / config.get("docs_dir", "docs")

    def pages(entries) -> list[str]:
        found = []
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            found += pages(value) if isinstance(value, list) else [value]
        return found

    return [root / "README.md", *(docs / page for page in pages(config["nav"]))]


def check_syntax(block: Block) -> str | None:
    """Why the block does not parse (or holds a placeholder the shell misreads), or None."""
    if block.language == "bash":
        if placeholder := PLACEHOLDER.search(_without_heredocs(block.text)):
            return f"a placeholder the shell reads as a redirection: {placeholder[0]}"
        done = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
        return done.stderr.strip() or None if done.returncode else None
    if block.language == "python":
        try:
            compile(block.text, block.where, "exec")
        except SyntaxError as error:
            return str(error)
    if block.language == "yaml":
        try:
            yaml.safe_load(block.text)
        except yaml.YAMLError as error:
            return str(error)
    return None


def _without_heredocs(text: str) -> str:
    """The shell text without heredoc bodies (Python in them may compare with < and >)."""
    return re.sub(r"<<-?'?(\w+)'?\n.*?\n\1\n", "\n", text, flags=re.DOTALL)


def bincount_calls(block: Block) -> list[tuple[str, list[str]]]:
    """Each ``bincount COMMAND`` (or ``torchrun ... -m flows.cli COMMAND``) in a shell block:
    the command and the options it is given."""
    calls = []
    for line in block.text.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        segments, segment = [], []
        for word in words:
            if word in ("&&", "||", "|", ";"):
                segments.append(segment)
                segment = []
            else:
                segment.append(word)
        for part in [*segments, segment]:
            for start, word in enumerate(part):
                module = word == "flows.cli" and start > 0 and part[start - 1] == "-m"
                if Path(word).name != "bincount" and not module:
                    continue
                rest = part[start + 1 :]
                command = next((w for w in rest if not w.startswith("-")), None)
                if command:
                    calls.append((command, [w.split("=")[0] for w in rest if w.startswith("--")]))
                break
    return calls


class Shell:
    """A reader's shell: each block runs in bash from the clone's root with the environment
    the blocks before it left (``export``, ``source .venv/bin/activate``)."""

    def __init__(self, root: Path, environment: dict[str, str], timeout: float = 600) -> None:
        self.root, self.environment, self.timeout = root, dict(environment), timeout

    def run(self, block: Block) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as folder:
            saved = Path(folder) / "environment"
            if block.language == "python":
                script = Path(folder) / "block.py"
                script.write_text(block.text)
                body = f"python {shlex.quote(str(script))}"
            else:
                body = block.text
            done = subprocess.run(
                ["bash", "-c", f"set -e\n{body}\nenv -0 > {shlex.quote(str(saved))}"],
                cwd=self.root,
                env=self.environment,
                capture_output=True,
                text=True,
                timeout=self.timeout,
            )
            if done.returncode == 0 and saved.exists():
                pairs = saved.read_text().split("\0")
                self.environment = dict(p.split("=", 1) for p in pairs if "=" in p)
                for name in ("_", "SHLVL", "OLDPWD", "PWD"):
                    self.environment.pop(name, None)
        return done


def clone(repo: Path, target: Path) -> Path:
    """What ``git clone`` gives: the repository's files, none of its builds or outputs."""
    shutil.copytree(repo, target, ignore=NOT_CLONED, symlinks=True)
    return target


def plain_path() -> str:
    """``PATH`` without any virtual environment on it, as a new shell has it."""
    venv = os.environ.get("VIRTUAL_ENV")
    return os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if not (venv and entry.startswith(venv)) and not Path(entry, "activate").exists()
    )
