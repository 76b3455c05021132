"""A `kiln serve` subprocess for tests: started on a free port, its stderr collected, stopped
with SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as triton_http

LISTENING = re.compile(r"listening on http://(\S+?):(\d+) ")


class Server:
    def __init__(self, *artifacts: Path, args: tuple[str, ...] = (), timeout: float = 90) -> None:
        command = [sys.executable, "-m", "modelkiln.cli", "serve", *map(str, artifacts)]
        self.proc = subprocess.Popen(
            [*command, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("kiln serve did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = LISTENING.search(line)
            if match:
                self.url = f"{match.group(1)}:{match.group(2)}"
                self._listening.set()

    def client(self, **kwargs: Any) -> triton_http.InferenceServerClient:
        return triton_http.InferenceServerClient(self.url, **kwargs)

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(5)
        return code


def infer_inputs(feeds: dict[str, np.ndarray], binary: bool = True) -> list[triton_http.InferInput]:
    inputs = []
    for name, value in feeds.items():
        tensor = triton_http.InferInput(
            name, list(value.shape), triton_http.np_to_triton_dtype(value.dtype)
        )
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
    return inputs
