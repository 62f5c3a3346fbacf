"""The LICENSE file at the repository root is the licence pyproject.toml declares."""

from __future__ import annotations

import re

from tests.conftest import REPO


def test_license_file_matches_pyproject():
    declared = re.search(r'^license = \{ text = "([^"]+)" \}', (REPO / "pyproject.toml").read_text(), re.M)[1]
    text = (REPO / "LICENSE").read_text()
    assert declared == "Apache-2.0"
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text and "Copyright 2026 co2s developers" in text
