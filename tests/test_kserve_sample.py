"""samples/kserve: the Containerfile and InferenceService agree with each other and with
`kiln serve` (probe routes, port, options), so the sample cannot drift from the server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from modelkiln.cli.serve import serve
from modelkiln.serve import LIVE_PATH, READY_PATH

yaml = pytest.importorskip("yaml")

SAMPLE = REPO / "samples" / "kserve"
KSERVE_PORT = 8080  # KServe's default container port


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


@pytest.fixture(scope="module")
def containerfile() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, args in instructions(SAMPLE / "Containerfile"):
        found.setdefault(name, []).append(args)
    return found


@pytest.fixture(scope="module")
def predictor() -> dict[str, Any]:
    document = yaml.safe_load((SAMPLE / "inferenceservice.yaml").read_text())
    assert document["apiVersion"] == "serving.kserve.io/v1beta1"
    assert document["kind"] == "InferenceService"
    return document["spec"]["predictor"]


def serve_options(args: list[str]) -> dict[str, Any]:
    """`kiln serve ARGS` parsed by the real command (nothing is started)."""
    assert args[:2] == ["kiln", "serve"], args
    return serve.make_context("serve", args[2:]).params


def image_command(containerfile: dict[str, list[str]]) -> list[str]:
    (entrypoint,), (cmd,) = containerfile["ENTRYPOINT"], containerfile["CMD"]
    return json.loads(entrypoint) + json.loads(cmd)  # exec form: JSON arrays


def test_image_runs_kiln_serve_on_all_interfaces(containerfile) -> None:
    options = serve_options(image_command(containerfile))
    assert options["host"] == "0.0.0.0"
    assert options["port"] == KSERVE_PORT
    (artifact,) = options["artifacts"]
    assert Path("/mnt/models") in artifact.parents
    assert containerfile["EXPOSE"] == [str(KSERVE_PORT)]


def test_image_is_slim_non_root_and_copies_only_the_wheel(containerfile) -> None:
    (base,) = containerfile["FROM"]
    assert re.fullmatch(r"(docker\.io/library/)?python:3\.\d+-slim", base), base
    assert containerfile["COPY"] == ["modelkiln-*.whl /tmp/wheels/"]
    assert "ADD" not in containerfile
    (run,) = containerfile["RUN"]
    assert '"${wheel}[serve,openvino]"' in run
    (user,) = containerfile["USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can check it


def test_inferenceservice_probes_port_and_resources(predictor, containerfile) -> None:
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    (port,) = container["ports"]
    assert port["containerPort"] == KSERVE_PORT
    assert container["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": KSERVE_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": LIVE_PATH, "port": KSERVE_PORT}
    assert str(container["resources"]["requests"]["cpu"]) == "2"
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert container["securityContext"]["runAsNonRoot"] is True

    # The manifest's args replace the image's CMD after its ENTRYPOINT.
    entrypoint = json.loads(containerfile["ENTRYPOINT"][0])
    options = serve_options(entrypoint + container["args"])
    assert (options["host"], options["port"], options["threads"]) == ("0.0.0.0", KSERVE_PORT, 2)
    (artifact,) = options["artifacts"]
    assert artifact == serve_options(image_command(containerfile))["artifacts"][0]

    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STORAGE_URI"].startswith("pvc://")  # mounted read-only at /mnt/models


def test_readme_explains_open_health_with_an_api_key() -> None:
    text = (SAMPLE / "README.md").read_text()
    assert "--api-key-file" in text and "--open-health" in text
    block = re.search(r'args: \[(.*?--open-health")\]', text, re.S)
    assert block is not None
    args = json.loads("[" + block.group(1).replace("\n", " ") + "]")
    options = serve_options(["kiln", "serve", *args])
    assert options["open_health"] is True and options["api_key_file"] is not None
