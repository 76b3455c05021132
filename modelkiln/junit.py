"""JUnit XML for `kiln validate --junit`, so CI systems show each check as a test case."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from modelkiln.compare import describe


def write_junit(report: dict[str, Any], path: Path) -> None:
    cases: list[tuple[str, str | None]] = []
    for name, check in report["checks"].items():
        if name in ("golden", "reference") and "checks" in check:
            for i, sub in enumerate(check["checks"]):
                for output, result in sub["outputs"].items():
                    failure = None if result["passed"] else describe(result)
                    cases.append((f"{name}[{i}].{output}", failure))
        else:
            problems = check.get("problems") or check.get("failures") or []
            cases.append((name, None if check["passed"] else "; ".join(problems) or "failed"))
    suite = ET.Element(
        "testsuite",
        name=f"kiln validate {report['artifact']}",
        tests=str(len(cases)),
        failures=str(sum(f is not None for _, f in cases)),
    )
    for name, failure in cases:
        case = ET.SubElement(suite, "testcase", classname="modelkiln.validate", name=name)
        if failure is not None:
            ET.SubElement(case, "failure", message=failure)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
