"""OpenVINO backend (entry point `openvino`): IR build, session, NNCF precisions, blob cache.

Public beyond the backend class: `no_telemetry` (scope for code that imports openvino or
nncf itself), `convert_direct` (OpenVINO's own conversion, the benchmark's yardstick) and
`default_cache_dir` (where compiled blobs go).
"""

from modelkiln.backends.openvino.backend import OpenVinoBackend
from modelkiln.backends.openvino.blob_cache import default_cache_dir
from modelkiln.backends.openvino.common import no_telemetry
from modelkiln.backends.openvino.direct import convert_direct, direct_runner
from modelkiln.backends.openvino.session import OpenVinoSession

__all__ = [
    "OpenVinoBackend",
    "OpenVinoSession",
    "convert_direct",
    "direct_runner",
    "default_cache_dir",
    "no_telemetry",
]
