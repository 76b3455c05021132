"""Whether this machine can build a target, and if not, why (`kiln targets`)."""

from __future__ import annotations

from typing import Any

from modelkiln.backends.registry import get_backend, install_hint
from modelkiln.errors import ModelkilnError, UnknownBackendError
from modelkiln.precision.request import check_backend
from modelkiln.targets import load_target


def target_status(name_or_path: str) -> dict[str, Any]:
    """A target's settings plus `usable` and `reason` (None when usable)."""
    target = load_target(name_or_path)
    row: dict[str, Any] = {**target.to_json(), "usable": True, "reason": None}
    try:
        check_backend(get_backend(target.backend), target)
    except UnknownBackendError:
        row.update(
            usable=False,
            reason=f"backend '{target.backend}' is not installed "
            f"({install_hint(target.backend, target.device)})",
        )
    except ModelkilnError as exc:
        row.update(usable=False, reason=str(exc))
    return row
