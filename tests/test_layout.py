"""The seams stay honest: samplers import no models, algorithms no envs, envs no policies."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pirl"

FORBIDDEN = {
    "flow": ("pirl.policies", "pirl.algorithms", "pirl.envs", "pirl.train", "pirl.data"),
    "algorithms": ("pirl.envs", "pirl.policies", "pirl.flow", "pirl.train", "pirl.data"),
    "envs": ("pirl.policies", "pirl.algorithms", "pirl.flow", "pirl.train"),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_boundaries(package):
    bad = []
    for path in (ROOT / package).rglob("*.py"):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    assert not bad, "\n".join(bad)


def _loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('pirl')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module,forbidden", [
    ("pirl.algorithms", ("pirl.envs", "pirl.policies", "pirl.flow", "pirl.train")),
    ("pirl.flow", ("pirl.envs", "pirl.policies", "pirl.algorithms", "pirl.train")),
    ("pirl.envs.point_mass", ("pirl.policies", "pirl.algorithms", "pirl.flow", "pirl.train")),
])
def test_import_boundaries_at_run_time(module, forbidden):
    loaded = _loaded_after(module)
    assert not any(m.startswith(forbidden) for m in loaded), loaded


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as '-'."""
    text = heading.lstrip("#").strip().lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def test_readme_keeps_its_results_and_links():
    """The README is where measured figures are quoted: its sections stay, its in-page links resolve and every
    results file it cites exists (a bad edit once dropped the Results section and left a dangling link)."""
    import re

    readme = (ROOT.parent / "README.md").read_text()
    headings = [line for line in readme.splitlines() if line.startswith("#")]
    anchors = {_anchor(h) for h in headings}
    for section in ("Two commands", "Results", "Benchmarks", "Known gaps"):
        assert any(h.lstrip("#").strip() == section for h in headings), f"README lost its '{section}' section"
    missing = [a for a in re.findall(r"\]\(#([^)]+)\)", readme) if a not in anchors]
    assert not missing, f"README links to sections it does not have: {missing}"
    cited = set(re.findall(r"bench/results/[\w.\-/]+\.(?:md|json)", readme))
    absent = sorted(c for c in cited if not (ROOT.parent / c).exists())
    assert not absent, f"README cites results files that do not exist: {absent}"


def test_benchmark_scripts_end_a_users_mistake_in_one_line(tmp_path):
    """Every bench/*.py runs its main through _common.run_main, which turns a UserError (missing assets, a mistyped
    --set key) into one line and exit status 2, as the `pirl` command does; a bug keeps its traceback."""
    bench = ROOT.parent / "bench"
    unguarded = [p.name for p in bench.glob("*.py") if p.name != "_common.py"
                 and 'if __name__ == "__main__":\n    run_main(main)\n' not in p.read_text()]
    assert not unguarded, unguarded
    script = tmp_path / "bench_x.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(bench)!r})\nfrom _common import run_main\n"
                      "from pirl.errors import InputError\n"
                      "def main():\n    raise InputError('unknown task foo: pass one of bar')\n"
                      "def bug():\n    raise KeyError('x')\n"
                      "run_main(bug if sys.argv[1:] else main)\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "bench_x.py: error: unknown task foo: pass one of bar", r.stderr
    r = subprocess.run([sys.executable, str(script), "bug"], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" in r.stderr and "KeyError" in r.stderr
