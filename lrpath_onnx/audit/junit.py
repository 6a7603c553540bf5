"""junit.xml in the shape CI systems read natively (Jenkins, GitLab, GitHub test reporters):
one <testsuite> per check, one <testcase> per image, a <failure> where the check failed."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

from .config import CHECKS


def _seconds(record: dict) -> float:
    """The time spent on one image (its share of its batch)."""
    return float(record.get("timings_s", {}).get("total", 0.0))


def junit_xml(records: list[dict], model: str, thresholds: dict) -> str:
    """The XML text for ``records`` (audit.json's per-image entries)."""
    root = ET.Element("testsuites", name=f"lrpath audit {model}")
    total = failed = 0
    elapsed = 0.0
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    for check in CHECKS:
        cases = [(r, r["checks"][check]) for r in records if check in r["checks"]]
        if not cases:
            continue
        n_fail = sum(not c["passed"] for _, c in cases)
        t = sum(_seconds(r) for r, _ in cases)
        suite = ET.SubElement(root, "testsuite", name=f"lrpath.audit.{check}", tests=str(len(cases)),
                              failures=str(n_fail), errors="0", skipped="0", time=f"{t:.3f}",
                              timestamp=stamp, hostname=socket.gethostname())
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="model", value=model)
        ET.SubElement(props, "property", name="threshold", value=str(thresholds.get(check)))
        for r, c in cases:
            case = ET.SubElement(suite, "testcase", classname=f"lrpath.audit.{check}", name=r["image"],
                                 time=f"{_seconds(r):.3f}", file=r["source"])
            if not c["passed"]:
                fail = ET.SubElement(case, "failure", type=f"{check}_check", message=c["message"])
                fail.text = f"{check} check failed for {r['source']}: {c['message']} (threshold {c['threshold']})"
            else:
                ET.SubElement(case, "system-out").text = c["message"]
        total += len(cases)
        failed += n_fail
        elapsed += t
    root.set("tests", str(total))
    root.set("failures", str(failed))
    root.set("errors", "0")
    root.set("time", f"{elapsed:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
