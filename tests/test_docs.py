"""Every ```python snippet of the docs (``docs/*.md`` and the README) runs as written, each in a
fresh namespace; and the documentation site builds with mkdocs in strict mode (no broken links,
no missing API pages)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def snippets():
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            line = text[:match.start()].count("\n") + 1
            # a docs page's copy of the README's quick start (the bundled model on a CPU: a minute)
            slow = page.name != "README.md" and "smollm2" in match.group(1)
            yield pytest.param(page, match.group(1), id=f"{page.relative_to(ROOT)}:{line}",
                               marks=[pytest.mark.slow] if slow else [])


SNIPPETS = list(snippets())


def test_the_docs_have_snippets():
    pages = {p.values[0].name for p in SNIPPETS}
    assert len(SNIPPETS) >= 15 and {"README.md", "concepts.md", "extending.md", "attention.md"} <= pages


@pytest.mark.parametrize("page, code", SNIPPETS)
def test_snippet_runs(page, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("kvlab_docs_snippet")          # a real module: dataclasses need one
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, str(page), "exec"), module.__dict__)
    assert capsys.readouterr().out.strip(), "a snippet should show its result"


def test_site_builds_strict(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "index.html").exists() and (site / "api" / "kvcache" / "index.html").exists()
