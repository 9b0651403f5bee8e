"""Each public module's __all__ names exactly what it defines for users."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import natsreg

pytestmark = pytest.mark.pure

PUBLIC_MODULES = sorted(
    m.name
    for m in pkgutil.iter_modules(natsreg.__path__, "natsreg.")
    if not m.name.rsplit(".", 1)[1].startswith("_")
)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_every_public_name_the_module_defines(name: str) -> None:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    for exported in module.__all__:
        assert hasattr(module, exported), f"{name}.__all__ names missing {exported!r}"
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == name
    }
    assert defined <= set(module.__all__), (
        f"{name} defines but does not export: {sorted(defined - set(module.__all__))}"
    )


def test_the_package_exports_its_dozen_names() -> None:
    for exported in natsreg.__all__:
        assert not isinstance(getattr(natsreg, exported), types.ModuleType)
    assert "announce" in natsreg.__all__ and "Client" in natsreg.__all__


def test_every_public_module_is_an_attribute_after_a_plain_import() -> None:
    # As the docs write them: natsreg.metrics.serve(...) after `import natsreg`. A fresh
    # process, since this one has imported them all already.
    script = (
        "import natsreg\n"
        f"for name in {[m.removeprefix('natsreg.') for m in PUBLIC_MODULES]!r}:\n"
        "    assert isinstance(getattr(natsreg, name), type(natsreg)), name\n"
        "try:\n"
        "    natsreg.no_such_module\n"
        "except AttributeError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "module 'natsreg' has no attribute 'no_such_module'\n"


def test_the_readmes_testing_example_is_the_one_the_suite_runs() -> None:
    root = Path(__file__).resolve().parent.parent
    example = (root / "tests" / "test_testing_example.py").read_text()
    assert f"```python\n{example}```" in (root / "README.md").read_text()
