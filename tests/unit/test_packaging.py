"""The wheel lists its packages by hand (the import name differs from the folder): keep the
list complete, or a non-editable install (the Docker image) would miss modules."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_in_the_wheel():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    found = {
        "costsim_analytics" + ".".join(("", *p.parent.relative_to(REPO / "service").parts))
        for p in (REPO / "service").rglob("__init__.py")
        if "_generated" not in p.parts
    }
    found |= {
        "costsim_analytics.migrations"
        + ".".join(("", *p.parent.relative_to(REPO / "migrations").parts))
        for p in (REPO / "migrations").rglob("__init__.py")
    }
    assert found - declared == set()
