"""Protocol-buffer text format, written by hand for Triton's config.pbtxt (no dependency on
Triton's generated message classes): messages are ordered (field, value) pairs."""

from __future__ import annotations

from typing import Any


class Token(str):
    """An enum value, written bare (TYPE_FP32, KIND_CPU)."""


class Message(tuple[tuple[str, Any], ...]):
    """A protobuf message in text format: (field, value) pairs in the order written."""


def message(*fields: tuple[str, Any]) -> Message:
    return Message(fields)


def _scalar(value: Any) -> str:
    if isinstance(value, Token):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):  # printable ASCII as is, everything else as octal bytes
        chars = (
            "\\" + chr(b) if chr(b) in '"\\' else chr(b) if 32 <= b < 127 else f"\\{b:03o}"
            for b in value.encode()
        )
        return '"' + "".join(chars) + '"'
    raise TypeError(f"no text format for {value!r}")


def format_message(msg: Message, indent: int = 0) -> list[str]:
    """Lines of `msg` in protobuf text format, two spaces per level, lists as `[ ... ]`."""
    pad, lines = "  " * indent, []
    for key, value in msg:
        if isinstance(value, Message):
            lines += [f"{pad}{key} {{", *format_message(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], Message):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                comma = "," if i < len(value) - 1 else ""
                lines += [f"{pad}  {{", *format_message(item, indent + 2), f"{pad}  }}{comma}"]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            items = ", ".join(_scalar(v) for v in value)
            lines.append(f"{pad}{key}: [ {items} ]" if items else f"{pad}{key}: [ ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines
