"""`kiln bench`: plan the configurations (`plan`), load the subjects (`subjects`), measure in
interleaved rounds (`measure`), render the report (`report`); `run.bench` drives them."""

from modelkiln.benchmark.run import bench

__all__ = ["bench"]
