"""Print the project's runtime requirements from pyproject.toml, one per line.

The images install dependencies in their own layer before the code, and torch comes
from the CPU wheel index, so the Dockerfiles need the list split: ``--without
torch`` for everything else, ``--only torch`` for the pinned torch line. Reading
pyproject keeps the list in one place.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def requirement_name(line: str) -> str:
    """The distribution name of a PEP 508 requirement, lower-cased."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line.strip())
    if match is None:
        raise ValueError(f"requirement {line!r} has no distribution name; fix it.")
    return match.group(0).lower()


def select(requirements: list[str], only: set[str], without: set[str]) -> list[str]:
    """Requirements named in ``only`` (all when empty), minus those in ``without``."""
    chosen = []
    for line in requirements:
        name = requirement_name(line)
        if (not only or name in only) and name not in without:
            chosen.append(line)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--without", action="append", default=[])
    parser.add_argument("--extra", action="append", default=[])
    args = parser.parse_args(argv)

    project = tomllib.loads(args.pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in args.extra:
        requirements += project["optional-dependencies"][extra]

    only = {name.lower() for name in args.only}
    without = {name.lower() for name in args.without}
    for line in select(requirements, only, without):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
