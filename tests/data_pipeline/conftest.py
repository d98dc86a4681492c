"""Demo shard builds shared by the data_pipeline tests (built once per session from real data)."""
import pytest

from data_pipeline.demo import build_demo_shards


@pytest.fixture(scope="session")
def demo_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_shards")
    return {m: build_demo_shards(root / m, m) for m in ("dna", "protein", "molecules")}
