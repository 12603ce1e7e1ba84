"""MkDocs hook: the reference generated from the code while the site builds, so it cannot drift.

A page asks for a section with a marker on a line of its own, ``<!-- generate: NAME -->``; the
hook replaces it with Markdown built from where that thing is defined:

* ``cli``: the ``bincount`` command's own ``--help`` output, for every command it lists,
  whichever library implements the command (``clihelp.py``);
* ``settings``: the fields of ``bincount.core.settings.Settings``; ``fields MODULE.CLASS``: a
  pydantic model's fields (the review and drift policies); ``recipes``: ``RECIPES`` and
  ``DEMO_RECIPE`` resolved through ``TrainConfig``; ``deployments``:
  ``deployments/prefect.yaml``; ``artifacts``: every artifact key a task publishes;
  ``ui-check``: what ``bench/ui_check.py`` screenshots; ``bench``: ``bench/README.md``, where
  the benchmark figures live (``code_reference.py``);
* ``tables``: ``data_contracts/schemas/*.json`` (``athena``: the same as Athena DDL);
  ``reason-codes``: every code a reason class is raised with in ``bincount/`` (read with
  ``ast``, not imported) and the expectations of ``data_contracts/suites/``
  (``contracts_reference.py``).

``<!-- check: every reason code -->`` makes the build fail (strict mode) unless the page has a
heading for every reason and expectation code, and none for a code that no longer exists.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from mkdocs.exceptions import PluginError

sys.path.insert(0, str(Path(__file__).parent))  # the generators beside this file
import clihelp
import code_reference as code
import contracts_reference as contracts

MARKER = re.compile(r"^<!-- generate: (?P<name>[a-z-]+)(?: (?P<arg>\S+))? -->$", re.MULTILINE)
CHECK_CODES = "<!-- check: every reason code -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    def generated(match: re.Match) -> str:
        name = match["name"]
        if name not in GENERATORS:
            raise PluginError(f"{page.file.src_path}: no generator named {name!r}")
        return GENERATORS[name](match["arg"]) if match["arg"] else GENERATORS[name]()

    if CHECK_CODES in markdown:
        contracts.check_code_headings(markdown, page.file.src_path)
    return MARKER.sub(generated, markdown)


GENERATORS: dict[str, Callable[..., str]] = {
    "cli": clihelp.reference_page,
    "settings": code.settings,
    "fields": code.fields,
    "recipes": code.recipes,
    "deployments": code.deployments,
    "artifacts": code.artifacts,
    "ui-check": code.ui_check,
    "bench": code.bench,
    "tables": contracts.tables,
    "athena": contracts.athena,
    "reason-codes": contracts.reason_codes,
}
