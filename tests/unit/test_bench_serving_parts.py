"""`routenlp bench serving --only`: a part it does not know is refused before anything starts."""

from __future__ import annotations

import pytest

from routenlp_ray.bench.serving import run_serving_benchmark


@pytest.mark.parametrize("parts", [(), ("latency",), ("memory", "speed")])
def test_unknown_or_no_parts_are_refused_naming_them(parts: tuple[str, ...], tmp_path) -> None:
    with pytest.raises(ValueError, match="parts must be 'overhead' and/or 'memory'"):
        run_serving_benchmark("no-such-config.yaml", "no-such-data", str(tmp_path / "out.json"), apps=None,
                              parts=parts)
    assert not (tmp_path / "out.json").exists()
