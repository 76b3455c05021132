"""One error tree for everything a user can get wrong or a build can fail on.

The CLI maps `UserInputError` and `BackendUnavailable` to exit code 2 and every other
`ModelkilnError` to exit code 1. Anything that is not a `ModelkilnError` is a bug in modelkiln
and surfaces as a traceback so it gets fixed.
"""

from __future__ import annotations

import re
from typing import Any


class ModelkilnError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UserInputError(ModelkilnError):
    exit_code = 2


class CheckpointError(UserInputError):
    """The checkpoint is missing, unreadable, corrupt or of a kind we refuse to load."""


class UnknownTaskError(UserInputError):
    pass


class UnknownTargetError(UserInputError):
    pass


class UnknownBackendError(UserInputError):
    pass


class FeedError(UserInputError):
    """Inputs given to `Session.run` do not match the artifact's manifest."""


class ArtifactError(UserInputError):
    """The path is not a readable modelkiln artifact."""


class OutputExistsError(UserInputError):
    pass


class BackendUnavailable(ModelkilnError):
    exit_code = 2


class ExportError(ModelkilnError):
    """Tracing the model to ONNX failed."""


class BuildError(ModelkilnError):
    pass


class InferenceError(ModelkilnError):
    """The backend failed while running feeds that passed the manifest checks."""


class ValidationError(ModelkilnError):
    """Outputs differ from the reference; `report` holds every comparison made.

    `headline` is the message without the list of failures, for displays that list them
    one per line.
    """

    def __init__(self, headline: str, report: dict[str, Any] | None = None) -> None:
        self.headline = headline
        self.report = report or {}
        failures = self.report.get("failures") or []
        super().__init__(f"{headline}: {'; '.join(failures)}" if failures else headline)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
