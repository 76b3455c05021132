"""The `kserve` package's own ModelServer around a modelkiln session, as a subject of
`serve_load.py` (run with a Python that has kserve and modelkiln installed).

The model is written the way KServe's docs show a custom predictor: a `kserve.Model` whose
synchronous `predict` runs the session (KServe calls it on its event loop). It speaks v2
over HTTP (binary tensors included); gRPC is off.

    PYTHON benchmarks/kserve_subject.py ARTIFACT [--port 0]
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import kserve
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

import modelkiln


class KilnModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, artifact: Path) -> None:
        super().__init__(name)
        self.session = modelkiln.load(artifact)
        self.ready = True

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        outputs = []
        for name, value in self.session.run(feeds).items():
            output = InferOutput(name=name, shape=list(value.shape), datatype="FP32")
            output.set_data_from_numpy(value, binary_data=True)
            outputs.append(output)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args, _ = parser.parse_known_args()
    port = args.port
    if port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    model = KilnModel(args.artifact.resolve().name, args.artifact)
    sys.stderr.write(f"listening on http://127.0.0.1:{port} (kserve ModelServer)\n")
    sys.stderr.flush()
    sys.argv = sys.argv[:1]  # kserve parses the command line itself
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1).start([model])


if __name__ == "__main__":
    main()
