import subprocess
import sys

import pytest

from probekit.errors import UnknownNameError
from probekit.registries import ALL, EXTRACTORS
from probekit.lazy_registry import Registry

NO_TORCH = """
import sys
from click.testing import CliRunner
from probekit.cli import cli
for args in (["--help"], ["ls"], ["extract", "--help"], ["probe", "--help"]):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, (args, res.output)
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "timm", "h5py", "pandas") if m in sys.modules)
print(",".join(heavy))
"""


def test_help_and_ls_import_no_heavy_module():
    out = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at CLI start-up: {out.stdout.strip()}"


def test_every_registry_target_resolves():
    for registry in ALL.values():
        for entry in registry.entries():
            assert callable(entry.load()), entry.target


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownNameError) as err:
        EXTRACTORS.get("tiny-mmdit-randm")
    assert "Did you mean: tiny-mmdit-random" in str(err.value)


def test_duplicate_and_malformed_entries_are_refused():
    reg = Registry("thing")
    reg.register("a", "json:dumps", "x")
    with pytest.raises(ValueError):
        reg.register("a", "json:loads", "y")
    reg.register("b", "json", "no object")
    with pytest.raises(ValueError):
        reg.get("b").load()


def test_build_merges_defaults_and_overrides():
    reg = Registry("thing")
    reg.register("d", "builtins:dict", "dict", a=1, b=2)
    assert reg.build("d", b=3) == {"a": 1, "b": 3}
