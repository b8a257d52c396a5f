"""The package installs as users get it: console script, version, and shipped recipes and cards."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from configparser import ConfigParser
from pathlib import Path

import pytest

import merge_proxy
from merge_proxy import resources
from merge_proxy.errors import ResourceError

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(sys.executable).parent


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)


def test_console_script_version_and_help():
    version = run([str(SCRIPTS / "merge-proxy"), "--version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"merge-proxy {merge_proxy.__version__}"
    helptext = run([str(SCRIPTS / "merge-proxy"), "--help"])
    assert helptext.returncode == 0
    assert "demo" in helptext.stdout


def test_no_subcommand_prints_help_and_fails():
    proc = run([str(SCRIPTS / "merge-proxy")])
    assert proc.returncode == 2
    assert "usage: merge-proxy" in proc.stdout


def test_top_level_import_stays_light():
    """The CLI and lmms-eval's entry point import merge_proxy; it must not drag torch in."""
    code = "import sys, merge_proxy, merge_proxy.cli, merge_proxy.resources; merge_proxy.cli.build_parser(); " \
           "print(sorted(m for m in ('torch','transformers','lmms_eval','llamafactory','vllm') if m in sys.modules))"
    proc = run([sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_shipped_resources_in_checkout():
    assert "demo" in resources.list_recipes()
    assert "expert" in resources.list_card_templates()
    assert resources.recipe_path("demo").read_text(encoding="utf-8").strip()
    with pytest.raises(ResourceError, match="no shipped recipe named 'nope'.*demo"):
        resources.recipe_path("nope")


def test_non_editable_install_finds_recipes_and_cards(tmp_path: Path):
    """A wheel install (not the editable checkout) carries recipes/ and hub_cards/ as package data."""
    wheel_dir = tmp_path / "wheels"
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheel_dir), str(REPO_ROOT)]
    )
    assert built.returncode == 0, built.stderr
    wheels = list(wheel_dir.glob("merge_proxy-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as whl:  # the license the metadata declares travels with the code
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in whl.namelist())

    env_dir = tmp_path / "fresh-venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    target = tmp_path / "site"
    installed = run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(target), str(wheels[0])]
    )
    assert installed.returncode == 0, installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import merge_proxy, merge_proxy.resources as r; "
        "print(merge_proxy.__file__); print(r.list_recipes()); print(r.list_card_templates()); "
        "print(len(r.recipe_path('demo').read_text()) > 0, len(r.card_template('expert')) > 0); "
        "import merge_proxy.cli, pkgutil; merge_proxy.cli.build_parser(); "
        "print(sorted(m.name for m in pkgutil.walk_packages(merge_proxy.__path__, 'merge_proxy.') if m.ispkg)); "
        "import merge_proxy.tasks as t; print(sorted(p.name for p in t.tasks_dir().iterdir() if p.suffix in "
        "('.yaml', '.py')))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    proc = run([str(env_dir / "bin" / "python"), "-c", code], cwd=elsewhere, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(str(target)), lines[0]
    assert "demo" in lines[1]
    assert "expert" in lines[2]
    assert lines[3] == "True True"
    source_packages = sorted(
        "merge_proxy." + str(p.parent.relative_to(REPO_ROOT / "plugin" / "merge_proxy")).replace("/", ".")
        for p in (REPO_ROOT / "plugin" / "merge_proxy").rglob("__init__.py") if p.parent.name != "merge_proxy"
    )
    assert lines[4] == str(sorted([*source_packages, "merge_proxy.hub_cards", "merge_proxy.recipes"]))
    # the lmms-eval tasks of the paper recipes: YAML files beside the module their !function entries load
    shipped = sorted(p.name for p in (REPO_ROOT / "plugin" / "merge_proxy" / "tasks").iterdir() if p.suffix in (".yaml", ".py"))
    assert lines[5] == str(shipped) and "cv_bench_2d_count.yaml" in shipped and "paper_metrics.py" in shipped


def test_the_pinned_stack_is_inside_the_ranges_users_get():
    """CI tests constraints.txt; users install setup.cfg's ranges: a pin outside them is a stack no
    user gets, and a range that excludes what CI tests is untested."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.split("#", 1)[0].strip()
    cfg = ConfigParser()
    cfg.read(REPO_ROOT / "setup.cfg")
    declared = [cfg["options"]["install_requires"]] + [v for k, v in cfg["options.extras_require"].items() if k != "vllm"]
    checked = []
    for block in declared:
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            req = Requirement(line)
            pinned = pins.get(canonicalize_name(req.name))
            if pinned is not None:
                assert req.specifier.contains(pinned, prereleases=True), f"{req} excludes the pinned {pinned}"
                checked.append(req.name)
    assert {"torch", "torchaudio", "transformers", "peft", "llamafactory", "lmms-eval"} <= set(checked)


def test_readme_links_to_files_that_exist():
    import re

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", readme) if "://" not in t and not t.startswith("#")]
    assert targets, "the README links no local file: the pattern is wrong"
    assert [t for t in targets if not (REPO_ROOT / t.split("#")[0]).exists()] == []
