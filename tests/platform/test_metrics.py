import json

import pytest

from vlaforge.platform.metrics import MetricsLogger


def test_jsonl_sink_namespaces_and_append(tmp_path):
    m = MetricsLogger(tmp_path)
    m.log({"train/loss": 1.5, "time/step_s": 0.1}, step=1)
    with pytest.raises(ValueError, match="must start with one of"):
        m.log({"loss": 1.0}, step=2)
    m.close()
    m = MetricsLogger(tmp_path, resume=True)  # a resumed run appends, never truncates
    m.log({"train/loss": 1.0}, step=2)
    m.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["train/loss"] == 1.5 and rows[1]["train/loss"] == 1.0
