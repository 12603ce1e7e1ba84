"""Every code block of README.md and docs/ runs as written from a fresh clone.

The blocks run in reading order (README.md, then the site's navigation) in a copy of the
repository whose ``.venv`` is this test's virtual environment, in a shell of their own: a
plain ``PATH``, a temporary ``HOME``, the Prefect API of the test harness (where a reader has a
server or Prefect's temporary one), and S3 pointed at the loopback moto server, so a block that
reached for the public bucket would fail at once. README.md runs in a new shell; the guides
share one, as a reader working through them would, starting with Getting started's
``source .venv/bin/activate`` and its toy-size demo, whose output the later pages read.
Blocks marked ``<!-- check: syntax-only (why) -->`` are parsed only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.docblocks import (
    RUN_LANGUAGES,
    Shell,
    blocks,
    check_syntax,
    clone,
    documents,
    plain_path,
)

REPO = Path(__file__).resolve().parents[1]
KNOWN_LANGUAGES = {"bash", "python", "yaml", "sql", "text", ""}


def _all_blocks(root: Path):
    return [block for document in documents(root) for block in blocks(document, root)]


def test_every_block_parses_and_names_its_language():
    found = _all_blocks(REPO)
    assert {block.document for block in found} >= {"README.md", "docs/getting-started.md"}
    problems = [
        f"{block.where}: language {block.language!r}"
        for block in found
        if block.language not in KNOWN_LANGUAGES
    ]
    problems += [
        f"{block.where}: {why}" for block in found if (why := check_syntax(block)) is not None
    ]
    assert not problems, "\n".join(problems)


def test_the_syntax_check_refuses_a_placeholder_the_shell_misreads():
    from tests.docblocks import Block

    block = Block("x.md", 1, "bash", "bincount evaluate --model <version>\n", syntax_only=True)
    assert "placeholder" in check_syntax(block)
    heredoc = "python - <<'EOF'\nprint(1 <2 and 3> 2)\nEOF\n"
    assert check_syntax(Block("x.md", 1, "bash", heredoc, syntax_only=False)) is None


@pytest.mark.slow
def test_every_block_runs_from_a_fresh_clone(prefect_api, s3_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from bincount.testing.s3server import TEST_CREDENTIALS

    if sys.prefix == sys.base_prefix:
        pytest.skip("the docs run bincount from .venv: run the tests in a virtual environment")
    root = clone(REPO, tmp_path / "bincount")
    (root / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    home = tmp_path / "home"
    home.mkdir()
    fresh = {
        "PATH": plain_path(),
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        # The clone's code, as `make install` (an editable install of the clone) would give.
        "PYTHONPATH": str(root),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "DO_NOT_TRACK": "1",
        "BINCOUNT_S3_ENDPOINT_URL": s3_server.endpoint_url,
        **TEST_CREDENTIALS,
    }
    ran, failures = [], []
    readme, *guides = documents(root)
    for shell, pages in ((Shell(root, fresh), [readme]), (Shell(root, fresh), guides)):
        for document in pages:
            for block in blocks(document, root):
                if block.syntax_only or block.language not in RUN_LANGUAGES:
                    continue
                done = shell.run(block)
                ran.append(block.where)
                if done.returncode != 0:
                    failures.append(
                        f"{block.where} exited {done.returncode}:\n{block.text}\n"
                        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
                    )
                    break  # the page's later blocks build on this one
    assert not failures, "\n\n".join(failures)
    # What the blocks were for: the guides' demo wrote its output, and later pages used it.
    assert (root / "demo-output" / "output" / "review_queue").is_dir()
    assert (root / "demo-output" / "output" / "review_outcomes").is_dir()
    assert (root / "demo-output" / "tonight.html").read_text().count("<img ") >= 1
    assert len(ran) >= 10, ran
