"""The export holds Python's cyclic collector back while it imports, loads and traces, and
leaves the collector as it found it."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from modelkiln.collection import Deferred

FACTORY = '''\
"""A module factory that notes whether cyclic collection was on while the model was built."""
import gc
from pathlib import Path

import torch


def make():
    Path(__file__).with_suffix(".gc").write_text(str(gc.isenabled()))
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3).eval(), {"input": torch.randn(2, 4)}, {"output_names": ["y"]}
'''


@pytest.fixture
def collector():
    """The collector on and nothing frozen, whatever the test leaves behind."""
    assert gc.get_freeze_count() == 0
    gc.enable()
    yield
    gc.unfreeze()
    gc.enable()


def test_paused_until_resume_then_frozen_then_released(collector) -> None:
    with Deferred() as collection:
        assert not gc.isenabled()
        survivor = [object()]
        collection.resume()
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0  # what existed at resume() is skipped from now on
        collection.resume()  # idempotent
        assert gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert survivor


def test_leaving_without_resume_restores_the_collector(collector) -> None:
    with pytest.raises(RuntimeError), Deferred():
        assert not gc.isenabled()
        raise RuntimeError("tracing failed")
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_disabled_collector_stays_disabled(collector) -> None:
    gc.disable()
    with Deferred() as collection:
        collection.resume()
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    assert not gc.isenabled()


def test_a_freeze_of_the_host_process_is_left_alone(collector) -> None:
    gc.freeze()
    frozen = gc.get_freeze_count()
    with Deferred() as collection:
        collection.resume()
        assert gc.isenabled() and gc.get_freeze_count() == frozen
    assert gc.get_freeze_count() == frozen  # not unfrozen by the export


def test_export_builds_the_model_without_collections(collector, tmp_path: Path) -> None:
    import modelkiln

    factory = tmp_path / "linear_factory.py"
    factory.write_text(FACTORY)
    result = modelkiln.export(f"{factory}:make", tmp_path / "out", use_cache=False)
    assert result.manifest.validation is not None and result.manifest.validation.passed
    assert factory.with_suffix(".gc").read_text() == "False"
    assert gc.isenabled() and gc.get_freeze_count() == 0
