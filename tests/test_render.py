"""Renderers (report.md, report.html, junit.xml, model-card.md) on a real report.json.

`tests/data/report_sample.json` is the report of `edgefair run` on the bundled Adult recipe, trimmed
(per-group reliability bins and most disparity metrics dropped, floats to 6 significant digits).
It was written before gates were filled, so `with_gates` adds gate entries in the documented shape
from the report's own numbers, the way test reports are made here: by editing a real one.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from edgefair.render import (
    DASH,
    describe_gate,
    fmt_ci,
    fmt_pct,
    fmt_pp,
    render_all,
    render_html,
    render_junit,
    render_markdown,
    render_model_card,
)

SAMPLE = Path(__file__).parent / "data" / "report_sample.json"
EVIL = "<script>alert(1)</script>"
_RAW = json.loads(SAMPLE.read_text())


def sample() -> dict:
    return copy.deepcopy(_RAW)


def with_gates(report: dict, *, threshold: float = 0.01) -> dict:
    """Add max_group_accuracy_drop (decided on the CI's lower end, as `decision = "ci"`) and
    max_size_mb gates to every compressed step; insufficient groups get a `warn` gate."""
    for step in report["steps"]:
        gates = []
        if step["index"] > 0:
            for key, g in step["groups"].items():
                if g["status"] != "ok":
                    gates.append({"gate": "max_group_accuracy_drop", "group": key, "value": None, "ci": None,
                                  "threshold": threshold, "status": "warn", "reason": "insufficient data"})
                    continue
                lo, hi = g["accuracy_delta_ci"]
                drop_ci = [-hi, -lo]
                gates.append({"gate": "max_group_accuracy_drop", "group": key, "value": -g["accuracy_delta"],
                              "ci": drop_ci, "threshold": threshold,
                              "status": "fail" if drop_ci[0] > threshold else "pass"})
            gates.append({"gate": "max_size_mb", "group": None, "value": step["size_bytes"] / 1e6, "ci": None,
                          "threshold": 2.0, "status": "pass"})
        step["gates"] = gates
        step["passed"] = not any(g["status"] == "fail" for g in gates)
    passing = [s for s in report["steps"] if s["index"] > 0 and s["passed"]]
    if passing:
        chosen = passing[-1]
        report["verdict"] = "pass"
        report["selected"] = {"step": chosen["index"], "name": chosen["name"], "model": chosen["model"]}
    else:
        report["verdict"] = "fail"
        report["selected"] = None
    return report


def all_failed() -> dict:
    report = with_gates(sample(), threshold=-1.0)  # every measured group "drops" more than -100 points
    assert report["selected"] is None
    return report


def label_free() -> dict:
    """What a run without labels writes: fidelity fields only (shape taken from a real label-free run)."""
    report = sample()
    keep = {"n", "status", "reason", "agreement", "flip_rate", "cosine_mean", "cosine_min", "rel_error_mean",
            "flip_rate_ci", "flip_share_ratio"}
    report["data"]["eval"]["labelled"] = False
    for step in report["steps"]:
        step["overall"] = {k: v for k, v in step["overall"].items() if k in keep}
        step["groups"] = {key: {k: v for k, v in g.items() if k in keep} for key, g in step["groups"].items()}
        step["disparity"] = {scope: {k: v for k, v in d.items() if k in ("groups", "excluded", "agreement", "flip_rate")}
                             for scope, d in step["disparity"].items()}
    return report


def rename_group(report: dict, old: str, new: str) -> None:
    for step in report["steps"]:
        step["groups"] = {(new if k == old else k): v for k, v in step["groups"].items()}
        for g in step["gates"]:
            if g.get("group") == old:
                g["group"] = new


def everything() -> list[tuple[str, dict]]:
    return [("sample", sample()), ("gated", with_gates(sample())), ("all_failed", all_failed()),
            ("label_free", label_free()), ("label_free_gated", with_gates_label_free())]


def with_gates_label_free() -> dict:
    report = label_free()
    step = report["steps"][4]
    step["gates"] = [{"gate": "max_group_flip_rate", "group": "race=White", "value": 0.1434, "ci": [0.13, 0.15],
                      "threshold": 0.05, "status": "fail"}]
    step["passed"] = False
    report["verdict"], report["selected"] = "fail", {"step": 2, "name": "quantize_static", "model": "02-quantize_static.onnx"}
    return report


# ---- helpers ---------------------------------------------------------------------------------------

def test_number_formats():
    assert fmt_pp(-0.0226) == "-2.3"
    assert fmt_pp(-0.00001) == "+0.0"
    assert fmt_pp(None) == DASH
    assert fmt_pct(0.8547) == "85.5%"
    assert fmt_pct(None) == DASH
    assert fmt_ci([0.011, 0.034]) == "1.1–3.4"
    assert fmt_ci([-0.0405, -0.0226]) == "-4.0 to -2.3"
    assert fmt_ci(None) == DASH


def test_gate_in_words():
    gate = {"gate": "max_group_accuracy_drop", "group": "race=Black", "value": 0.023, "ci": [0.011, 0.034],
            "threshold": 0.01, "status": "fail"}
    assert describe_gate(gate, "95% CI") == "race=Black accuracy dropped 2.3 points (95% CI 1.1–3.4), limit 1.0"
    size = {"gate": "max_size_mb", "group": None, "value": 2.5, "ci": None, "threshold": 2.0, "status": "fail"}
    assert describe_gate(size) == "size 2.500 MB, limit 2.000 MB"
    unmeasured = {"gate": "max_group_accuracy_drop", "group": "sex=Male&race=Other", "value": None, "ci": None,
                  "threshold": 0.01, "status": "warn", "reason": "insufficient data"}
    assert describe_gate(unmeasured) == "sex=Male&race=Other not checked by max_group_accuracy_drop — insufficient data"
    odd = {"gate": "future_gate", "group": "sex=Male", "value": 3, "threshold": 1, "status": "warn", "reason": "why"}
    assert describe_gate(odd) == "future_gate [sex=Male]: value 3, limit 1 — why"


# ---- every renderer on every shape -----------------------------------------------------------------

@pytest.mark.parametrize("name,report", everything(), ids=[n for n, _ in everything()])
def test_every_renderer_accepts_every_shape(name, report):
    for render in (render_markdown, render_html, render_junit, render_model_card):
        text = render(copy.deepcopy(report))
        assert isinstance(text, str) and text.endswith("\n")
    ET.fromstring(render_junit(report))  # well-formed


def test_renderers_do_not_modify_the_report():
    report = with_gates(sample())
    before = json.dumps(report, sort_keys=True)
    for render in (render_markdown, render_html, render_junit, render_model_card):
        render(report)
    assert json.dumps(report, sort_keys=True) == before


# ---- markdown --------------------------------------------------------------------------------------

def test_markdown_verdict_then_failing_gates_then_steps():
    report = with_gates(sample())
    md = render_markdown(report)
    lines = md.splitlines()
    sel = report["selected"]
    assert lines[0].startswith("## edgefair: **PASS**") and f"step {sel['step']} `{sel['name']}`" in lines[0]
    assert md.index("### Failing gates") < md.index("### Warnings") < md.index("### Steps") < md.index("### Groups")
    white = report["steps"][4]["groups"]["race=White"]
    gate = next(g for g in report["steps"][4]["gates"] if g["group"] == "race=White")
    assert white["accuracy_delta_ci"][1] < -0.01 and gate["status"] == "fail"  # a real failure ...
    assert describe_gate(gate, "95% CI") in md  # ... listed in words
    assert "sex=Female&race=Other` (n=28)" in md and "too little data" in md
    undecided = [l for l in md.splitlines() if l.startswith("- ⚠️ `max_group_accuracy_drop` undecided")]
    assert len(undecided) == 1 and "`sex=Male&race=Other` (all steps)" in undecided[0]  # one line per gate
    assert len(lines) < 80


def test_markdown_step_table_numbers():
    report = sample()
    md = render_markdown(report)
    row = next(line for line in md.splitlines() if line.startswith("| 4 ✅ |"))
    s4, s0 = report["steps"][4], report["steps"][0]
    assert f"| {s4['size_bytes'] / 1e6:.3f} |" in row
    assert f"| {s4['latency']['p50_ms'] / s0['latency']['p50_ms']:.2f}× |" in row
    assert fmt_pct(s4["overall"]["accuracy"]) in row
    worst = min((g["accuracy_delta"], k) for k, g in s4["groups"].items() if g["status"] == "ok")
    assert f"{fmt_pp(worst[0])} ({worst[1]})" in row


def test_markdown_prefers_the_paired_latency_ratio():
    report = sample()
    report["steps"][2]["latency"].update(ratio_p50_vs_first=1.0823, ratio_p50_ci=[1.041, 1.12])
    row = next(line for line in render_markdown(report).splitlines() if line.startswith("| 2 |"))
    assert "| 1.08× (1.04–1.12) |" in row


def test_markdown_without_gate_results_says_nothing_was_checked():
    report = sample()  # the recipe has thresholds, the report no gate results
    md = render_markdown(report)
    assert "Gates are configured (max_group_accuracy_drop, " in md and "nothing was checked" in md
    assert "### Failing gates" not in md
    report["recipe"]["resolved"]["gates"] = {"decision": "ci", "on_insufficient": "warn"}
    assert "No gates were configured: nothing was checked." in render_markdown(report)
    assert "No gate failed." in render_markdown(with_gates(sample(), threshold=1.0))


def test_markdown_all_failed_has_no_selection_and_caps_the_list():
    md = render_markdown(all_failed())
    assert md.splitlines()[0] == "## edgefair: **FAIL** — no model selected"
    assert "more failing gates" in md and "no step was selected" in md
    assert len(md.splitlines()) < 80


def test_markdown_label_free_shows_fidelity():
    md = render_markdown(label_free())
    assert "| group | n | agreement | flip (95% CI) | cosine mean |" in md
    assert "no labels" in md
    assert "Δacc pp" not in md


def test_markdown_insufficient_only_at_some_steps():
    report = sample()
    report["steps"][4]["groups"]["race=Other"] = {"n": 68, "status": "insufficient_data", "reason": "CI too wide"}
    md = render_markdown(report)
    assert "`race=Other` (n=68, step 4)" in md


# ---- html ------------------------------------------------------------------------------------------

class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.starts: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.starts.append(tag)
        self.attrs += attrs


def test_html_escapes_every_user_string():
    report = with_gates(sample())
    rename_group(report, "race=Black", f"race={EVIL}")
    report["steps"][3]["name"] = f"prune{EVIL}"
    report["steps"][3]["warnings"].append(f"warn {EVIL}")
    report["recipe"]["path"] = f"/tmp/{EVIL}.toml"
    report["environment"]["cpu"] = EVIL
    page = render_html(report)
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;") >= 5
    tags = _Tags()
    tags.feed(page)
    assert "script" not in tags.starts


def test_html_is_self_contained_with_charts():
    page = render_html(with_gates(sample()))
    tags = _Tags()
    tags.feed(page)
    assert {"svg", "style", "table"} <= set(tags.starts)
    assert not {"script", "link", "img", "iframe"} & set(tags.starts)
    assert not [v for k, v in tags.attrs if k in ("src", "href")]
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    # every group of every step is in the page, and the SVGs are well-formed XML
    for step in sample()["steps"]:
        for key in step["groups"]:
            assert key.replace("&", "&amp;") in page
    svgs = [page[i:page.index("</svg>", i) + 6] for i in range(len(page)) if page.startswith("<svg", i)]
    assert len(svgs) == 2
    for svg in svgs:
        ET.fromstring(svg)
    assert "Failing gates" in page and "Reliability diagram" in page


def test_html_label_free_charts_flip_rate():
    page = render_html(label_free())
    assert "Flip rate per group" in page and "Accuracy change per group" not in page


def _svgs(page: str) -> list[str]:
    return [page[i:page.index("</svg>", i) + 6] for i in range(len(page)) if page.startswith("<svg", i)]


def test_html_folds_undecided_gates_per_step():
    report = with_gates(sample())
    page = render_html(report)
    warned = [(s, g) for s in report["steps"] for g in s["gates"] if g["status"] == "warn"]
    assert warned
    # one folded line per step with warn gates, not one loud bullet per gate result
    warnings = page[page.index("<h2>Warnings</h2>"):page.index("<h2>Steps</h2>")]
    assert warnings.count("<li>") == (sum(len(s.get("warnings") or []) for s in report["steps"])
                                      + len({k for s in report["steps"] for k, g in s["groups"].items()
                                             if g["status"] != "ok"}))
    assert warnings.count("<details>") == len({s["index"] for s, _ in warned})
    assert f"{len(warned)} gate results" in warnings


def test_html_chart_shows_every_group_legend_and_limit():
    report = with_gates(sample())
    sel = next(s for s in report["steps"] if s["index"] == report["selected"]["step"])
    chart = _svgs(render_html(report))[0]
    for key, g in sel["groups"].items():
        assert f">{key.replace('&', '&amp;')}</text>" in chart
    missing = [k for k, g in sel["groups"].items() if g["status"] != "ok"]
    assert missing and chart.count("too little data") == len(missing)
    assert "gate passed" in chart and "max_group_accuracy_drop limit (-1 pp)" in chart
    assert "accuracy change, step minus baseline (percentage points)" in chart
    # without gates the colours still have a legend
    assert "whole interval below 0" in _svgs(render_html(sample()))[0]


def test_html_reliability_legend_and_group_table_notes():
    page = render_html(with_gates(sample()))
    reliability = _svgs(page)[1]
    assert "perfect calibration" in reliability and "mean confidence in bin" in reliability
    assert "<line" in reliability.split("perfect calibration")[0].rsplit("(ECE", 1)[-1]  # swatch, not coloured text
    # an insufficient group's note spans the measurement columns instead of stretching one
    assert 'class="note" colspan="10"' in page


# ---- junit -----------------------------------------------------------------------------------------

def test_junit_counts_and_names():
    report = with_gates(sample())
    rename_group(report, "race=Black", f"race={EVIL}&x")
    root = ET.fromstring(render_junit(report))
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [s["name"] for s in report["steps"]]
    for suite, step in zip(suites, report["steps"]):
        cases = suite.findall("testcase")
        assert len(cases) == len(step["gates"]) == int(suite.get("tests"))
        n_fail = sum(g["status"] == "fail" for g in step["gates"])
        n_warn = sum(g["status"] == "warn" for g in step["gates"])
        assert int(suite.get("failures")) == n_fail == sum(c.find("failure") is not None for c in cases)
        assert int(suite.get("skipped")) == n_warn == sum(c.find("skipped") is not None for c in cases)
        for case, gate in zip(cases, step["gates"]):
            assert case.get("classname") == f"edgefair.{step['name']}"
            want = f"{gate['gate']}[{gate['group']}]" if gate["group"] else gate["gate"]
            assert case.get("name") == want
            if gate["status"] == "fail":
                assert case.find("failure").get("message") == describe_gate(gate, "95% CI")
    for attr in ("tests", "failures", "skipped"):
        assert int(root.get(attr)) == sum(int(s.get(attr)) for s in suites)
    assert int(root.get("failures")) > 0
    assert any(c.get("name") == f"max_group_accuracy_drop[race={EVIL}&x]" for c in root.iter("testcase"))


def test_junit_without_gates_notes_insufficient_groups():
    root = ET.fromstring(render_junit(sample()))
    assert root.get("tests") == "0" and len(root.findall("testsuite")) == 5
    note = root.find("testsuite").find("system-out").text
    assert "sex=Female&race=Other (n=28)" in note


# ---- model card ------------------------------------------------------------------------------------

SECTIONS = ["## Model Details", "## Intended Use", "## Factors", "## Metrics", "## Evaluation Data",
            "## Training Data", "## Quantitative Analyses", "## Ethical Considerations",
            "## Caveats and Recommendations"]


def test_model_card_sections_and_numbers_from_the_report():
    report = sample()
    card = render_model_card(report)
    positions = [card.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    step = report["steps"][4]
    assert step["sha256"] in card and report["data"]["eval"]["sha256"] in card
    assert f"n = {report['data']['eval']['n']}" in card
    assert "step 3 `prune` (prune): sparsity=0.5" in card  # the chain that produced prune-int8
    assert "step 4 `prune-int8` (quantize_static)" in card
    g = step["groups"]["race=Asian-Pac-Islander"]
    assert f"{fmt_pp(g['accuracy_delta'])} ({fmt_ci(g['accuracy_delta_ci'], signed=True)})" in card
    ethics = card[card.index("## Ethical Considerations"):card.index("## Caveats")]
    for key in ("sex=Female&race=Amer-Indian-Eskimo", "sex=Female&race=Other", "sex=Male&race=Other"):
        assert key in ethics
    assert "Hooker et al. 2020" in ethics and "lost accuracy significantly" in ethics
    assert "Date:** not recorded" in card  # the report has no date; none is made up


def test_model_card_without_selection_describes_the_baseline():
    card = render_model_card(all_failed())
    assert "No compressed model was selected" in card and "# Model card: `baseline`" in card
    assert "Compression applied:** none" in card


def test_model_card_label_free():
    card = render_model_card(label_free())
    assert "accuracy and calibration were **not measured**" in card
    assert "| group | n | agreement | flip rate | cosine mean |" in card


# ---- writing ---------------------------------------------------------------------------------------

def test_render_all_writes_four_files(tmp_path):
    report = with_gates(sample())
    paths = render_all(tmp_path, report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml", "model-card.md", "report.html", "report.md"]
    assert paths["report.md"].read_text(encoding="utf-8") == render_markdown(report)
