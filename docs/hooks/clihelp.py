"""The command reference: the ``bincount`` command's own help, ``bincount --help`` and then
``bincount CMD --help`` for every command that help lists, whichever CLI library implements it.

:func:`reference_page` runs this file as a script (``python docs/hooks/clihelp.py OUT.json``)
with this checkout on ``PYTHONPATH`` and no ``BINCOUNT_*`` variables; the script calls the
console script's entry point (read from ``pyproject.toml``, as ``pip`` installs it) in one
process with ``sys.argv`` set as the shell would set it, so the flows are imported once instead
of once per command. Output is captured at the file-descriptor level, so a library that holds
on to ``sys.stdout`` (Rich consoles do) is captured too.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = "bincount"
# A command in a help listing: a lowercase word at the start of a line (after box-drawing
# characters for Rich-style panels), then two spaces or the end of the line.
_COMMAND_LINE = re.compile(r"^[\s│┃|]{0,6}([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?:\s{2,}|\s*[│┃|]?\s*$)")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def entry_point():
    """The function ``pip`` would wrap as the ``bincount`` script."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attribute = scripts[SCRIPT].partition(":")
    target = importlib.import_module(module)
    for name in attribute.split("."):
        target = getattr(target, name)
    return target


def run(entry, argv: list[str]) -> tuple[int, str]:
    """``bincount ARGV``'s exit status and everything it wrote to stdout and stderr."""
    sys.argv = [SCRIPT, *argv]
    with tempfile.TemporaryFile() as captured:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(captured.fileno(), 1)
        os.dup2(captured.fileno(), 2)
        try:
            status = entry()
        except SystemExit as exit:
            status = exit.code
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        captured.seek(0)
        text = captured.read().decode("utf-8", "replace")
    code = 0 if status in (None, 0) else status if isinstance(status, int) else 1
    return code, clean(text)


def clean(text: str) -> str:
    return "\n".join(_ANSI.sub("", line).rstrip() for line in text.strip("\n").splitlines())


def listed_commands(help_text: str) -> list[str]:
    """Words that look like commands in a help listing, in order (checked by running them)."""
    seen: list[str] = []
    for line in help_text.splitlines():
        match = _COMMAND_LINE.match(line)
        if match and match[1] not in seen and match[1] != SCRIPT:
            seen.append(match[1])
    return seen


def capture() -> dict:
    """The top-level help and each command's, as ``{"help": ..., "commands": {name: help}}``."""
    entry = entry_point()
    code, top = run(entry, ["--help"])
    if code != 0:
        raise SystemExit(f"Expected `{SCRIPT} --help` to exit 0, but it exited {code}:\n{top}")
    commands = {}
    for name in listed_commands(top):
        code, text = run(entry, [name, "--help"])
        if code == 0 and text != top:  # a wrapped help line's first word is no command
            commands[name] = text
    if not commands:
        raise SystemExit(f"Expected `{SCRIPT} --help` to list commands, but found none in:\n{top}")
    return {"help": top, "commands": commands}


# -- the reference page --------------------------------------------------------------------------
_cli_help: dict | None = None


def reference_page() -> str:
    """Markdown: every command's help as it printed it."""
    global _cli_help
    if _cli_help is None:  # once per build: the flows take seconds to import
        _cli_help = _capture_cli_help()
    parts = [
        "Generated while this site was built, by running `bincount --help` and "
        "`bincount COMMAND --help` on the machine that built it (defaults that depend on the "
        "device, such as the training recipe, are that machine's).",
        "",
        "## `bincount`",
        "",
        _text_block(_cli_help["help"]),
    ]
    for name, text in _cli_help["commands"].items():
        parts += ["", f"## `bincount {name}`", "", _text_block(text)]
    return "\n".join(parts)


def _capture_cli_help() -> dict:
    from mkdocs.exceptions import PluginError

    environment = {k: v for k, v in os.environ.items() if not k.startswith("BINCOUNT_")}
    environment.update(
        COLUMNS="100",
        NO_COLOR="1",
        TERM="dumb",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")])),
    )
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "help.json"
        done = subprocess.run(
            [sys.executable, str(Path(__file__)), str(target)],
            cwd=REPO,
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise PluginError(f"Capturing the CLI's help failed:\n{done.stdout}{done.stderr}")
        return json.loads(target.read_text())


def _text_block(text: str) -> str:
    return f"```text\n{text}\n```"


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(capture(), indent=1))
