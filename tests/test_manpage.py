"""man/gearmand.8 is generated from the option table and must be current (issue 4)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support import REPO, require

from gearmand_py import manpage
from gearmand_py.settings import OPTIONS

PAGE = os.path.join(REPO, "man", "gearmand.8")


def committed() -> str:
    with open(PAGE, encoding="utf-8") as f:
        return f.read()


def test_committed_page_is_current() -> None:
    assert committed() == manpage.render(), (
        "man/gearmand.8 is stale: run  python -m gearmand_py.manpage > man/gearmand.8")


def test_module_entry_point_prints_the_page() -> None:
    out = subprocess.run([sys.executable, "-m", "gearmand_py.manpage"], capture_output=True,
                         text=True, timeout=30, cwd=REPO).stdout
    assert out == manpage.render()


def test_every_option_and_section_documented() -> None:
    page = committed()
    for opt in OPTIONS:
        assert f"\\fB{manpage.esc('--' + opt.name)}\\fR" in page, opt.name
        if opt.short:
            assert f"\\fB\\-{opt.short}\\fR" in page, opt.short
    for heading in ("OPTIONS", "FILES", "SIGNALS", "EXIT STATUS", "CONFIGURATION FILE",
                    "ENVIRONMENT"):
        assert f".SH {heading}" in page
    for default in ("32", "/etc/gearmand.conf", "stderr", "4730", "991"):
        assert f"Default: {manpage.esc(default)}." in page


@pytest.mark.parametrize("page", ["gearmand.8", "gearmand-bench.1"])
def test_pages_render_without_warnings(page: str) -> None:
    path = os.path.join(REPO, "man", page)
    assert os.path.exists(path)
    require("groff", "rendering check of the man pages (groff-base comes with man-db)")
    run = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", path], capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 0 and run.stderr == "", run.stderr
