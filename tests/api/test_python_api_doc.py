"""docs/python-api.md runs as written."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"


@pytest.mark.slow
def test_python_api_session_runs_as_written(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "no python example in docs/python-api.md"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {"__name__": "__doc_example__"})
    assert (tmp_path / "session" / "run" / "best.ckpt").is_file()
    assert (tmp_path / "session" / "model" / "model.safetensors").is_file()
    assert any((tmp_path / "session" / "predictions").iterdir())
    assert len((tmp_path / "session" / "next" / "suggestions.txt").read_text().split()) == 4
