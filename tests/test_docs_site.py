"""The documentation site builds in strict mode (a broken link, anchor or page fails), its
reference is generated from the code, and the docs use only spellings the CLI shows."""

from __future__ import annotations

import html
import importlib
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docblocks import bincount_calls, blocks, documents

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """``mkdocs build --strict`` of this checkout into a temporary folder."""
    target = tmp_path_factory.mktemp("site")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BINCOUNT_")}
    environment.update(PYTHONPATH=str(REPO), NO_MKDOCS_2_WARNING="1")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(target)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}"
    return target


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


def _command_help(site: Path) -> dict[str, str]:
    """The generated command reference: ``{"train": its --help text, ...}``."""
    page = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    sections = {}
    for chunk in re.split(r"<h2 ", page)[1:]:
        title = html.unescape(re.sub(r"<[^>]+>", "", chunk.split("</h2>")[0].split(">", 1)[1]))
        words = title.strip().strip("¶").split()
        if words and words[0] == "bincount":
            code = re.search(r"<code>(.*?)</code></pre>", chunk, re.DOTALL)
            assert code, f"Expected the help of {title!r} in a code block"
            sections[" ".join(words[1:])] = html.unescape(re.sub(r"<[^>]+>", "", code[1]))
    return sections


def test_the_readme_is_a_landing_page_of_at_most_250_lines():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250


def test_the_reference_has_every_setting_table_column_and_code(site):
    from bincount.core.contracts import contract_names, expectation_suite, table_contract
    from bincount.core.settings import Settings

    settings = _text(site / "reference" / "settings" / "index.html")
    for name in Settings.model_fields:
        assert f"BINCOUNT_{name.upper()}" in settings

    tables = _text(site / "reference" / "tables" / "index.html")
    for name in contract_names("schemas"):
        for field in table_contract(name).schema:
            assert re.search(rf"\b{re.escape(field.name)}\b", tables), (name, field.name)

    codes = _text(site / "reference" / "reason-codes" / "index.html")
    for expectation in expectation_suite("bins")["expectations"]:
        assert expectation["meta"]["code"] in codes
    # A code raised in the library, found by reading the code.
    assert "undecodable_image" in codes and "bincount/images/decode.py" in codes


def test_the_command_reference_is_the_cli_s_own_help(site):
    help_text = _command_help(site)
    assert "" in help_text  # `bincount --help`
    listed = help_text[""]
    for command in help_text.keys() - {""}:
        assert command in listed
    for command in ("demo", "train", "score", "review", "record-verdicts", "predict"):
        assert command in help_text, sorted(help_text)


def test_every_bincount_option_in_the_docs_is_one_the_cli_shows(site):
    help_text = _command_help(site)
    unknown = []
    for document in documents(REPO):
        for block in blocks(document, REPO):
            if block.language != "bash":
                continue
            for command, options in bincount_calls(block):
                if command not in help_text:
                    unknown.append(f"{block.where}: bincount {command}")
                    continue
                unknown += [
                    f"{block.where}: bincount {command} {option}"
                    for option in options
                    if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text[command])
                ]
    assert not unknown, "spellings the CLI's help does not show:\n" + "\n".join(unknown)


def _generator(name: str):
    """A module of the docs hook (docs/hooks/), imported as MkDocs imports it."""
    hooks = str(REPO / "docs" / "hooks")
    if hooks not in sys.path:
        sys.path.insert(0, hooks)
    return importlib.import_module(name)


def test_a_page_that_checks_codes_fails_the_build_without_a_section_per_code(site, caplog):
    contracts = _generator("contracts_reference")
    page = (REPO / "docs" / "operators" / "troubleshooting.md").read_text(encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="mkdocs.plugins.bincount"):
        contracts.check_code_headings(page, "troubleshooting.md")
    assert not caplog.records  # the page as it is covers every code (the build passed too)

    without = re.sub(r"^### `bad_json`$", "### Broken JSON", page, flags=re.MULTILINE)
    with caplog.at_level(logging.WARNING, logger="mkdocs.plugins.bincount"):
        contracts.check_code_headings(without + "\n### `no_such_code`\n", "troubleshooting.md")
    warned = [record.getMessage() for record in caplog.records]
    assert any("`bad_json`" in message for message in warned)
    assert any("`no_such_code`" in message for message in warned)
    assert "bad_json" in _text(site / "operators" / "troubleshooting" / "index.html")
