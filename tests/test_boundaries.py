"""The seams stay honest: algorithms import no envs or policies; the point mass imports no policies."""

import subprocess
import sys


def _loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('pirl')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_algorithms_know_no_simulator_or_model():
    loaded = _loaded_after("pirl.algorithms")
    assert not any(m.startswith(("pirl.envs", "pirl.policies", "pirl.flow", "pirl.train")) for m in loaded), loaded


def test_point_mass_knows_no_policy():
    loaded = _loaded_after("pirl.envs.point_mass")
    assert not any(m.startswith(("pirl.policies", "pirl.algorithms", "pirl.flow", "pirl.train")) for m in loaded), loaded
