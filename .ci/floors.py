"""Print pip constraints pinning every direct dependency to its declared floor.

``python .ci/floors.py > floors.txt && pip install -c floors.txt -e '.[test]'`` installs
the lowest versions pyproject.toml allows, so CI proves each ``>=`` is a version natsreg
really works with (the newest-versions job cannot see a floor that is too low).
Reads [project] dependencies and the extras named on the command line (default: test).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(;.*)?$")


def floors(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    pins = []
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise SystemExit(f"cannot parse requirement {requirement!r}")
        name, _, specifiers, marker = match.groups()
        lower = re.search(r">=\s*([^,\s]+)", specifiers)
        if lower is None:
            raise SystemExit(f"{name} has no lower bound (>=) in pyproject.toml")
        pins.append(f"{name}=={lower.group(1)}{marker or ''}")
    return pins


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print("\n".join(floors(root / "pyproject.toml", sys.argv[1:] or ["test"])))
