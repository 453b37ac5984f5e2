"""junit.xml: gates as test results for CI dashboards. One <testsuite> per step, one <testcase> per
gate x group; a failed gate is a <failure>, a warned gate (e.g. too little data) is <skipped>.
Built with ElementTree so every name and message is escaped correctly."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from . import confidence_label, describe_gate, insufficient_groups, steps


def render_junit(report: dict[str, Any]) -> str:
    """The gate results of every step as JUnit XML (junit.xml)."""
    ci_label = confidence_label(report)
    root = ET.Element("testsuites", name="edgefair")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for step in steps(report):
        suite = _suite(step, ci_label)
        root.append(suite)
        for k in totals:
            totals[k] += int(suite.get(k, "0"))
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", "0")
    root.set("skipped", str(totals["skipped"]))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _suite(step: dict[str, Any], ci_label: str) -> ET.Element:
    name = str(step.get("name"))
    suite = ET.Element("testsuite", name=name)
    props = ET.SubElement(suite, "properties")
    for key in ("index", "kind", "input", "model", "sha256", "size_bytes"):
        if step.get(key) is not None:
            ET.SubElement(props, "property", name=key, value=str(step[key]))
    counts = {"tests": 0, "failures": 0, "skipped": 0}
    for gate in step.get("gates") or []:
        # a stable name per gate and group (the class in `where` is the worst one of this run: it is in the message)
        case_name = f"{gate.get('gate')}[{gate['group']}]" if gate.get("group") else str(gate.get("gate"))
        case = ET.SubElement(suite, "testcase", classname=f"edgefair.{name}", name=case_name, time="0")
        counts["tests"] += 1
        words = describe_gate(gate, ci_label)
        status = gate.get("status")
        if status == "fail":
            counts["failures"] += 1
            fail = ET.SubElement(case, "failure", message=words, type=str(gate.get("gate")))
            fail.text = _detail(gate)
        elif status == "warn":  # undecided: the data could not tell (see min_detectable in the message)
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", message=words)
        elif status != "pass":
            ET.SubElement(case, "system-out").text = f"unknown gate status {status!r}: {words}"
    notes = []
    short = insufficient_groups(step)
    if short:
        notes.append("insufficient data (not checked by any gate): "
                     + ", ".join(f"{k} (n={g.get('n')})" for k, g in short.items()))
    notes += [f"warning: {w}" for w in step.get("warnings") or []]
    if not step.get("gates"):
        notes.append("no gates were evaluated for this step")
    if notes:
        ET.SubElement(suite, "system-out").text = "\n".join(notes)
    for k, v in counts.items():
        suite.set(k, str(v))
    suite.set("errors", "0")
    seconds = step.get("seconds")
    suite.set("time", f"{seconds:.3f}" if isinstance(seconds, (int, float)) else "0")
    return suite


def _detail(gate: dict[str, Any]) -> str:
    keys = ("gate", "group", "where", "value", "ci", "threshold", "status", "decision", "reason", "n", "p_holm",
            "min_detectable", "exceeds")
    return "\n".join(f"{k}: {gate.get(k)}" for k in keys if k in gate)
