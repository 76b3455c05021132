"""Target checks every backend's `check` shares, so refusals read the same whatever the
backend (built-in or a plugin)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from modelkiln.errors import UserInputError

if TYPE_CHECKING:
    from modelkiln.targets import Target


def listing(items: Iterable[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def check_options(target: Target, backend: str, known: Iterable[str]) -> None:
    """Refuse target options the backend does not know, naming the ones it does."""
    known = sorted(known)
    unknown = sorted(set(target.options) - set(known))
    if unknown:
        raise UserInputError(
            f"target '{target.name}': {backend} does not know option(s) "
            f"{', '.join(unknown)}; it knows {', '.join(known) or 'none'}"
        )


def check_precision(target: Target, backend: str, supported: Sequence[str]) -> None:
    if target.precision not in supported:
        raise UserInputError(
            f"target '{target.name}': {backend} builds {listing(supported)} only so far, "
            f"not {target.precision}"
        )


def check_device(
    target: Target,
    backend: str,
    devices: Iterable[str],
    available: bool = False,
    ignore_case: bool = False,
) -> None:
    """`available=True`: `devices` are what this machine has, not all the backend knows."""
    devices = list(devices)
    fold = str.lower if ignore_case else str
    if fold(target.device) not in {fold(d) for d in devices}:
        where, label = (" on this machine", "available") if available else ("", "known")
        raise UserInputError(
            f"target '{target.name}': {backend} has no device '{target.device}'{where}; "
            f"{label}: {', '.join(devices) or 'none'}"
        )


def option_choice(
    target: Target, key: str, choices: Sequence[str], default: str, ignore_case: bool = False
) -> str:
    """A string option that must be one of `choices`; returns it spelled as in `choices`."""
    value = target.options.get(key, default)
    if isinstance(value, str):
        for choice in choices:
            if value == choice or (ignore_case and value.upper() == choice.upper()):
                return choice
    raise UserInputError(
        f"target '{target.name}': {key} {value!r} is not one of {', '.join(choices)}"
    )


def option_whole_number(target: Target, key: str, default: int, minimum: int = 0) -> int:
    value = target.options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserInputError(
            f"target '{target.name}': {key} must be a whole number >= {minimum}, got {value!r}"
        )
    return value


def option_flag(target: Target, key: str, default: bool) -> bool:
    value = target.options.get(key, default)
    if not isinstance(value, bool):
        raise UserInputError(f"target '{target.name}': {key} must be true or false, got {value!r}")
    return value
