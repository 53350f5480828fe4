"""Every setting is documented in the README's configuration section, and nothing else is."""

from __future__ import annotations

import re
from pathlib import Path

from costsim_analytics.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def configuration_section() -> str:
    text = README.read_text()
    start = text.index("## Configuration")
    return text[start : text.index("\n## ", start + 1)]


def test_every_setting_is_in_the_configuration_section():
    section = configuration_section()
    missing = [
        f"COSTSIM_{name.upper()}"
        for name in Settings.model_fields
        if f"`COSTSIM_{name.upper()}`" not in section
    ]
    assert missing == []


def test_the_configuration_section_names_no_setting_that_does_not_exist():
    known = {f"COSTSIM_{name.upper()}" for name in Settings.model_fields}
    named = set(re.findall(r"`(COSTSIM_[A-Z0-9_]+)`", configuration_section()))
    # Client-side variables of the CLI are documented beside the server's.
    client = {
        n for n in named if n.startswith(("COSTSIM_TOKEN", "COSTSIM_CLIENT_", "COSTSIM_TARGET"))
    }
    assert named - known - client == set()
