"""The wheel must hold every package of the source tree: an editable install (the README's) finds folders that a
plain `pip install .` would leave out, so a package missing from pyproject.toml breaks only the latter."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _packages_in_tree(config: dict) -> set[str]:
    dirs = config["package-dir"]
    found = set()
    for package, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "weights" in rel.parts:
                continue
            found.add(".".join([package, *rel.parts]))
    return found


def test_every_package_folder_is_listed_for_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    missing = _packages_in_tree(config) - listed
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}"
    assert {"probekit.cli", "probekit.extractors", "probekit.probes", "probekit.reports"} <= listed
