"""Renderers (terminal summary, report.txt, report.md, report.html, junit.xml, model-card.md) on the
report.json of REAL runs of the tiny model: no hand-made gate entries.

The labelled run compresses twice: dynamic int8 (small changes, the model to ship) and structured
pruning of 75% of the channels without fine-tuning (large harms to every group, failed on evidence).
A tight accuracy limit makes some checks of the shipped model land beyond the limit undecided. One
group value is `<b>*x*</b>|`q``: Markdown and HTML markup, a table pipe and backticks, which every
report must print as text. The data sit in a subfolder of the recipe's, so the model card must
name them relative to the recipe and never by their absolute path.
"""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conftest import BASE_RECIPE, run_cli, write_recipe
from edgefair import render as R
from edgefair.render import (
    DASH,
    describe_gate,
    fmt_ci,
    fmt_detectable,
    fmt_gate,
    fmt_limit,
    fmt_observed,
    fmt_pct,
    fmt_pp,
    md_code,
    render_all,
    render_html,
    render_junit,
    render_markdown,
    render_model_card,
)
from edgefair.report import WIDTH, summary_lines, terminal_table

EVIL_VALUE = "<b>*x*</b>|`q`"
EVIL_GROUP = f"g={EVIL_VALUE}"
EVIL_SCRIPT = "<script>alert(1)</script>"
RENDERERS = (render_markdown, render_html, render_junit, render_model_card)

RECIPE = (BASE_RECIPE.replace('eval = "eval.npz"', 'eval = "data/eval.npz"')
          .replace('calibration = "calib.npz"', 'calibration = "data/calib.npz"')
          + "\n[gates]\nmax_group_accuracy_drop = 0.005\n")

STEPS = """
[[steps]]
kind = "quantize_dynamic"

[[steps]]
name = "cut_75"
kind = "prune"
input = "baseline"
sparsity = 0.75
structured = true
"""


def _run(tiny: Path, root: Path, *, labelled: bool, steps: str) -> dict:
    """Run the tiny model on a copy of the shared eval data whose 'b' group is renamed EVIL_VALUE."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tiny.pt2").symlink_to(tiny / "tiny.pt2")
    (root / "data").mkdir()
    with np.load(tiny / "eval.npz") as f:
        data = {k: f[k] for k in f.files}
    data["g"] = np.where(data["g"] == "b", EVIL_VALUE, data["g"])
    if not labelled:
        del data["label"]
    np.savez(root / "data" / "eval.npz", **data)
    with np.load(tiny / "calib.npz") as f:
        np.savez(root / "data" / "calib.npz", **{k: f[k] for k in f.files})
    recipe = write_recipe(root / "r.toml", RECIPE + steps)
    out = root / "out"
    result = run_cli(["run", str(recipe), "--out", str(out), "--cache-dir", str(root.parent / "cache")])
    assert result.exit_code in (0, 1), result.output
    report = json.loads((out / "report.json").read_text())
    report["_output"], report["_out"], report["_root"] = result.output, str(out), str(root)
    return report


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory) -> dict:
    return _run(tiny, tmp_path_factory.mktemp("render") / "labelled", labelled=True, steps=STEPS)


@pytest.fixture(scope="module")
def label_free(tiny, tmp_path_factory) -> dict:
    return _run(tiny, tmp_path_factory.mktemp("render") / "label_free", labelled=False,
                steps='\n[[steps]]\nkind = "quantize_dynamic"\n')


def clean(report: dict) -> dict:
    return {k: v for k, v in copy.deepcopy(report).items() if not k.startswith("_")}


def first_screen_md(md: str) -> str:
    """report.md up to the context line ('---'): what a reviewer sees first."""
    return md.split("\n---\n", 1)[0]


def first_screen_html(page: str) -> str:
    return page[:page.index('<div class="scroll context">')]  # the context table follows the first screen


def first_screen_card(card: str) -> str:
    return card[:card.index("## Model Details")]


def outside_code_spans(md: str) -> str:
    """Markdown text with every code span removed (CommonMark: a run of n backticks to the next run of n)."""
    return re.sub(r"(`+)(.+?)(?<!`)\1(?!`)", "", md)


# ---- the runs are what the tests need --------------------------------------------------------------

def test_the_run_has_exceeded_checks_at_both_steps_and_a_selection(run):
    exceeded = run["gate_summary"]["exceeded"]
    assert {e["step"] for e in exceeded} == {1, 2}, exceeded  # the shipped model too (undecided)
    assert run["selected"]["name"] == "quantize_dynamic" and run["verdict"] == "pass"
    assert run["gate_summary"]["failed_steps"] == [2]
    assert any(e["group"] == EVIL_GROUP for e in exceeded)


# ---- first screen: verdict, model and why, thresholds, every exceeded check, failures, undecided ------

def test_markdown_first_screen_names_every_exceeded_check(run):
    md = render_markdown(clean(run))
    top = first_screen_md(md)
    assert top.startswith("## edgefair: **PASS** — ship step 1 `quantize_dynamic` (`01-quantize_dynamic.onnx`)")
    assert f"**Why this model:** {run['selected']['reason']}." in top
    for name, t in run["gates_applied"]["thresholds"].items():
        assert f"{R.gate_words(name)} {fmt_limit(name, t)}" in top  # "accuracy drop ≤ 0.5 pp"
    assert "accuracy drop ≤ 0.5 pp" in top
    rows = [line for line in top.splitlines() if line.startswith("| ") and "`" in line.split("|")[1]]
    exceeded = run["gate_summary"]["exceeded"]
    assert len(rows) == len(exceeded)
    for e, row in zip(exceeded, rows):  # in the summary's order, every number of the entry
        group = md_code(e["group"]).replace("|", "\\|")
        assert group in row and R.gate_words(e["gate"]) in row
        assert fmt_observed(e) in row and fmt_limit(e) in row and fmt_detectable(e) in row
        assert f"| {e['n']} |" in row and e["decision"] in row
    assert "### Failed steps (1)" in top and "step 2 `cut_75`: accuracy drop at" in top
    assert re.search(r"\d+ group checks undecided: too few rows to tell; see min\\_detectable", top)


def test_html_first_screen_names_every_exceeded_check(run):
    page = render_html(clean(run))
    top = first_screen_html(page)
    assert "PASS — ship step 1 <code>quantize_dynamic</code>" in top and run["selected"]["reason"] in top
    assert "accuracy drop <span class=\"n\">≤ 0.5 pp</span>" in top
    for e in run["gate_summary"]["exceeded"]:
        assert f"<code class=\"g\">{R.html.esc(e['group']).replace('&amp;', '&amp;<wbr>')}</code>" in top
    assert top.count("<tr class=\"fail\">") + top.count("<tr class=\"warn\">") == len(run["gate_summary"]["exceeded"])
    assert "Failed steps (1)" in top and "group checks undecided: too few rows to tell" in top


def test_first_screen_names_the_largest_harm_and_the_one_that_ships(run):
    """The largest harm of any step relative to its limit (here the pruned step's) and the largest at
    the model to ship, recomputed from the gate entries, on the first screen of every report."""
    def ratio(g):
        return g["value"] / g["threshold"]

    checks = [(s, g) for s in run["steps"][1:] for g in s["gates"] if g["gate"] in R.GATE_TEXT and g["value"] is not None]
    step, worst = max(checks, key=lambda sg: ratio(sg[1]))
    sel = next(s for s in run["steps"] if s["index"] == run["selected"]["step"])
    _, shipped = max(((s, g) for s, g in checks if s is sel), key=lambda sg: ratio(sg[1]))
    assert step["name"] == "cut_75" and sel is not step
    md, page, card = render_markdown(clean(run)), render_html(clean(run)), render_model_card(clean(run))
    for text, code in ((first_screen_md(md), md_code), (first_screen_card(card), md_code)):
        lead = next(line for line in text.splitlines() if line.startswith("**Largest harm:**"))
        assert f"{R.gate_words(worst['gate'])} {fmt_observed(worst)} at {code(worst['group'])}" in lead
        assert f"(step 2 `cut_75`): {ratio(worst):.1f}× its limit {fmt_limit(worst)}" in lead
        ships = next(line for line in text.splitlines() if line.startswith("**At the model to ship:**"))
        assert f"{fmt_observed(shipped)} at {code(shipped['group'])} (step {sel['index']} `{sel['name']}`)" in ships
    top = first_screen_html(page)
    assert top.index("<b>Largest harm:</b>") < top.index("<b>At the model to ship:</b>") < top.index("Thresholds in force")
    assert f"{R.html.esc(fmt_observed(worst))} at <code>{R.html.esc(worst['group'])}</code>" in top


def test_model_card_first_screen_names_every_exceeded_check(run):
    card = render_model_card(clean(run))
    top = first_screen_card(card)
    assert top.startswith("# Model card: `quantize_dynamic`\n\n## edgefair: **PASS**")
    for e in run["gate_summary"]["exceeded"]:
        assert md_code(e["group"]).replace("|", "\\|") in top
    assert "accuracy drop ≤ 0.5 pp" in top and "Failed steps (1)" in top


def test_terminal_summary_is_short_and_names_every_exceeded_check(run):
    text = terminal_table(clean(run))
    lines = text.splitlines()
    assert lines[0] == "verdict: PASS · ship step 1 quantize_dynamic (01-quantize_dynamic.onnx)"
    assert lines[1] == f"  why: {run['selected']['reason']}"
    assert max(len(line) for line in lines) <= WIDTH
    assert len(lines) < 80
    body = "\n".join(lines)
    assert "accuracy drop ≤ 0.5 pp" in body
    rest = iter(lines)  # the entries in the summary's order, each under its step and gate
    for e in run["gate_summary"]["exceeded"]:
        row = next(line for line in rest if line.startswith(f"      {R.who(e)} "))
        assert fmt_observed(e) in row and fmt_detectable(e) in row and f" {e['n']} " in row
    steps = [line for line in lines if re.match(r"^[> ] \[\d\] \S+ +[\d.]+ ", line)]  # name, size MB, ...
    assert [line.split("] ")[1].split()[0] for line in steps] == ["baseline", "quantize_dynamic", "cut_75"]
    assert steps[1].startswith("> [1] quantize_dynamic") and "FAIL" in steps[2]
    assert "group checks undecided: too few rows to tell; see min_detectable" in body
    assert "failed steps:" in body and "[2] cut_75: accuracy drop at" in body
    # what `edgefair run` printed is this summary (the per-group tables are in the files)
    assert lines[0] in run["_output"] and "per-group tables: report.md" in run["_output"]
    assert summary_lines(clean(run))[0] == "verdict: PASS  selected: step 1 (01-quantize_dynamic.onnx)"


def test_report_txt_in_full_has_every_group_of_every_step(run):
    text = terminal_table(clean(run), full=True)
    assert text.startswith(terminal_table(clean(run)))
    for step in run["steps"]:
        block = text[text.index(f"[{step['index']}] {step['name']} ({step['kind']})"):]
        for key in step["groups"]:
            assert f"    {key} " in block


# ---- min_detectable next to the observed harm, per group, in every report ---------------------------

def _group_gate_entries(run):
    step = next(s for s in run["steps"] if s["name"] == "cut_75")
    return step, [g for g in step["gates"] if g["group"] in step["groups"] and g["min_detectable"] is not None]


def test_min_detectable_in_every_group_gate_table(run):
    step, entries = _group_gate_entries(run)
    assert entries
    md, card, page = render_markdown(clean(run)), render_model_card(clean(run)), render_html(clean(run))
    section = md[md.index("<summary>step 2 <code>cut_75</code>"):]
    for g in entries:
        prefix = f"| {md_code(g['group']).replace('|', chr(92) + '|')} | {step['groups'][g['group']]['n']} | "
        row = next(line for line in section.splitlines() if line.startswith(prefix) and "det." in line)
        assert f"det. {fmt_detectable(g, unit=False)}" in row
    html_section = page[page.index("step 2 <code>cut_75</code>"):]
    for g in entries:
        assert f"<td class=\"n\">{R.html.esc(fmt_detectable(g))}</td>" in html_section
    # the card shows the selected model's table
    sel = next(s for s in run["steps"] if s["index"] == run["selected"]["step"])
    for g in sel["gates"]:
        if g["group"] in sel["groups"] and g["min_detectable"] is not None:
            assert f"det. {fmt_detectable(g, unit=False)}" in card


def test_group_min_detectable_matches_the_gate_entries(run):
    """The report's per-group min_detectable (what the gates saw) is what the tables show."""
    step, entries = _group_gate_entries(run)
    for g in entries:
        assert step["groups"][g["group"]]["min_detectable"][g["gate"]] == g["min_detectable"]


# ---- TPR / FPR / selection rate / Brier / NLL per group, every step ----------------------------------

def test_rates_and_calibration_per_group_at_every_step(run):
    md, page = render_markdown(clean(run)), render_html(clean(run))
    for head in ("| group | n | accuracy | TPR | FPR | selection rate | ECE | Brier | NLL | flip rate |",):
        assert md.count(head) == len(run["steps"]) - 1
    for step in run["steps"][1:]:
        g = step["groups"]["g=a"]
        cell = f"{fmt_pct(g['tpr'])} ({fmt_pp(g['tpr_delta'])})"
        assert cell in md
        assert f"{R.html.esc(fmt_pct(g['fpr']))} <span class=\"grp\">({R.html.esc(fmt_pp(g['fpr_delta']))})</span>" in page
        for field in ("brier", "nll"):
            assert f"{g[field]:.4f} ({g[field + '_delta']:+.4f})" in md
        assert fmt_pct(g["selection_rate"]) in md


# ---- escaping ---------------------------------------------------------------------------------------

def test_markdown_and_model_card_print_user_strings_as_text(run):
    for text in (render_markdown(clean(run)), render_model_card(clean(run))):
        assert EVIL_VALUE.replace("|", "\\|") in text  # inside code spans, pipes escaped for tables
        bare = outside_code_spans(text)
        assert "<b>" not in bare and "*x*" not in bare and "`q`" not in bare


def test_markdown_renders_group_names_as_text(run):
    markdown_it = pytest.importorskip("markdown_it")
    md = markdown_it.MarkdownIt("commonmark").enable("table")
    for text in (render_markdown(clean(run)), render_model_card(clean(run))):
        out = md.render(text)
        assert "<b>*x*" not in out and "&lt;b&gt;*x*&lt;/b&gt;|<code>" not in out
        assert "&lt;b&gt;*x*&lt;/b&gt;|`q`" in out  # the whole value, one code span, one cell


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.starts: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.starts.append(tag)
        self.attrs += attrs

    def handle_data(self, data):
        self.text.append(data)


def test_html_escapes_every_user_string(run):
    report = clean(run)
    report["steps"][2]["warnings"].append(f"warn {EVIL_SCRIPT}")
    report["recipe"]["path"] = f"/tmp/{EVIL_SCRIPT}.toml"
    report["environment"]["cpu"] = EVIL_SCRIPT
    report["selected"]["reason"] = EVIL_SCRIPT
    report["steps"][2]["name"] = f"{EVIL_SCRIPT}-{EVIL_VALUE}"  # in the selector, panels, charts, tables
    page = render_html(report)
    # the page's one script is edgefair's own (it opens folded sections for printing)
    assert page.lower().count("<script") == 1 and f"<script>{R.html.SCRIPT}</script>" in page
    assert EVIL_VALUE not in page
    assert page.count("&lt;script&gt;") >= 3 + 6  # the warning, the CPU, the reason, the step's name
    assert "<code>script&gt;.toml</code>" in page  # the recipe, by its file name (no local folder)
    tags = _Tags()
    tags.feed(page)
    assert tags.starts.count("script") == 1
    assert EVIL_VALUE in "".join(tags.text)  # shown as text
    # no <b> element has the group's text as content
    assert "<b>*x*" not in page


def _svgs(page: str) -> list[str]:
    return [page[i:page.index("</svg>", i) + 6] for i in range(len(page)) if page.startswith("<svg", i)]


def test_html_is_self_contained_with_charts(run):
    page = render_html(clean(run))
    tags = _Tags()
    tags.feed(page)
    assert {"svg", "style", "table", "input", "label"} <= set(tags.starts)
    assert not {"link", "img", "iframe", "object", "embed", "form"} & set(tags.starts)
    assert not [v for k, v in tags.attrs if k in ("src", "href", "action")]
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert "url(" not in page and "@import" not in page
    for svg in _svgs(page):
        ET.fromstring(svg)  # well-formed, entities included


# ---- charts: every gate at every step, latency, frontier, per-group reliability ----------------------

def _panel(page: str, index: int) -> str:
    start = page.index(f'<div class="panel p-{index}"')
    end = page.find('<div class="panel p-', start + 10)
    return page[start:page.index("</section>", start) if end < 0 else end]


def test_html_forest_plot_of_every_gate_at_every_step(run):
    """A forest plot per gate in force at every compressed step, each group's observed harm with its
    interval and min_detectable beside it, and the limit line; groups with too little data say so."""
    report = clean(run)
    page = render_html(report)
    names = [n for n in run["gates_applied"]["thresholds"]]
    for step in run["steps"][1:]:
        panel = _panel(page, step["index"])
        charts = _svgs(panel)
        assert len(charts) == len(names)
        for name, svg in zip(names, charts):
            assert f"{R.gate_words(name)} per group at step {step['index']}" in svg
            assert "limit " + R.html.esc(fmt_limit(name, run["gates_applied"]["thresholds"][name])) in svg
            for g in step["gates"]:
                if g["gate"] != name or g["value"] is None:
                    continue
                assert f">{R.html.esc(R.who(g))}</text>" in svg
                assert (f"{R.html.esc(fmt_observed(g))}</tspan>" in svg
                        and f"det. {R.html.esc(fmt_detectable(g, unit=False))}</tspan>" in svg)
                # a marker whose shape tells the gate's status, not only its colour
                shape = {"pass": "<circle", "warn": "<path", "fail": "<rect"}[g["status"]]
                assert re.search(shape + r"[^>]*><title>" + re.escape(R.html.esc(R.who(g))) + ":", svg)
            for key, grp in step["groups"].items():
                if grp["status"] != "ok":
                    assert f">{R.html.esc(key)}</text>" in svg and "n &lt; min_group_size" in svg


def test_html_step_selector_needs_no_script(run):
    """A radio button per compressed step, the model to ship checked; a CSS rule per step shows its
    panel; print shows every panel."""
    page = render_html(clean(run))
    radios = re.findall(r'<input type="radio" class="vh" name="forest-step" id="fs-(\d+)" value="\d+"( checked)?>', page)
    assert [int(i) for i, _ in radios] == [s["index"] for s in run["steps"][1:]]
    assert [int(i) for i, c in radios if c] == [run["selected"]["step"]]
    css = page[page.index("<style>"):page.index("</style>")]
    for step in run["steps"][1:]:
        i = step["index"]
        assert f"#fs-{i}:checked~.panels .p-{i}{{display:block}}" in css
        assert f'<label class="tab" for="fs-{i}">{i} {R.html.esc(step["name"])}' in page
    assert ".panel{display:none}" in css and "@media print" in css and ".panel{display:block!important" in css


def test_html_latency_frontier_and_reliability(run):
    report = clean(run)
    page = render_html(report)
    lat = page[page.index("<h2>Latency per step</h2>"):page.index("<h2>Reliability per group</h2>")]
    for step in run["steps"]:
        p50 = step["latency"]["p50_ms"]
        assert f"{R.fmt_ms(p50)} ms ({R.fmt_ms(step['latency']['p50_ci'][0])}–{R.fmt_ms(step['latency']['p50_ci'][1])})" in lat
    front = page[page.index("<h2>Latency against worst-group harm</h2>"):page.index('<section class="forest">')]
    for step in run["steps"][1:]:
        worst = max((g for g in step["gates"] if R.harm_ratio(g) is not None), key=R.harm_ratio)
        assert f"{R.harm_ratio(worst):.2f}×" in front and f"<code>{R.html.esc(step['name'])}</code>" in front
    assert R.harm_ratio({"gate": "max_group_tpr_drop", "value": 0.06, "threshold": 0.02}) == pytest.approx(3.0)
    assert R.harm_ratio({"gate": "min_group_agreement", "value": 0.9, "threshold": 0.95, "direction": "min"}) == pytest.approx(2.0)
    rel = page[page.index("<h2>Reliability per group</h2>"):page.index("<h2>Per-step details</h2>")]
    sel = next(s for s in run["steps"] if s["index"] == run["selected"]["step"])
    for key, g in sel["groups"].items():
        if g["status"] == "ok":
            assert f"<code>{R.html.esc(key)}</code> <span class=\"muted\">n={g['n']}, ECE " in rel
    assert rel.count('aria-label="reliability diagram') == 1 + len([g for g in sel["groups"].values() if g["status"] == "ok"])


def test_reports_use_no_absolute_local_path(run):
    report = clean(run)
    report["steps"][1]["warnings"].append(f"calibrated on {run['_root']}/data/calib.npz")  # a path inside a warning
    page, md = render_html(report), render_markdown(report)
    assert run["_root"] not in page and "<code>../r.toml</code>" in page and "<code>data/eval.npz</code>" in page
    assert run["_root"] not in md and "calibrated on calib.npz" in md and "calibrated on calib.npz" in page


def test_chart_colours_are_okabe_ito(run):
    """Every colour a chart fills or strokes with is Okabe-Ito's, white, or a neutral grey."""
    okabe_ito = {"#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"}
    neutral = {"#fff", "none", "#eaeef2", "#d0d7de", "#8c959f", "#f6f8fa", "#6e7781"}
    used = set()
    for svg in _svgs(render_html(clean(run))):
        used |= set(re.findall(r'(?:fill|stroke)="([^"]+)"', svg))
    assert used - neutral <= okabe_ito and {"#009E73", "#E69F00", "#D55E00"} <= used


# ---- paths and units in the model card ---------------------------------------------------------------

def test_model_card_has_no_absolute_paths(run):
    report = clean(run)
    report["steps"][1]["warnings"].append(f"calibrated on {run['_root']}/data/calib.npz")  # a path inside a warning
    card = render_model_card(report)
    assert run["_root"] not in card and str(Path(run["_root"]).parent) not in card
    assert not re.search(r"(?<![\w.`])/(tmp|home|root|work|Users)/", card)
    assert "`data/eval.npz`" in card and "`data/calib.npz`" in card and "calibrated on calib.npz" in card
    assert "recipe `../r.toml` (from the output folder)" in card
    assert "Evaluation Data" in card


def test_model_card_units_are_percent_and_points(run):
    card = render_model_card(clean(run))
    quant = card[card.index("## Quantitative Analyses"):card.index("## Ethical")]
    step = next(s for s in run["steps"] if s["index"] == run["selected"]["step"])
    ov = step["overall"]
    assert f"| ECE | {fmt_pct(run['steps'][0]['overall']['ece'], 2)} | {fmt_pct(ov['ece'], 2)} | {fmt_pp(ov['ece_delta'], 2)} pp |" in quant
    assert f"{fmt_pp(ov['accuracy_delta'])} pp ({fmt_ci(ov['accuracy_delta_ci'], signed=True)})" in quant
    assert "McNemar" not in card


# ---- one significance rule: the gate entries' ------------------------------------------------------

def test_renderers_compute_no_significance():
    src = "".join(p.read_text() for p in Path(R.__file__).parent.glob("*.py"))
    assert "mcnemar" not in src.lower()
    assert "alpha" not in src and "scipy" not in src


def test_renderers_follow_the_gate_decisions(run):
    """Flip one passing check of the shipped model to a failure, numbers untouched: every report says
    what the gate entry says, none re-derives it."""
    report = clean(run)
    sel = next(s for s in report["steps"] if s["index"] == report["selected"]["step"])
    g = next(g for g in sel["gates"] if g["status"] == "pass" and g["group"] == "h=x")
    g.update(status="fail", decision="fail")
    card = render_model_card(report)
    ethics = card[card.index("## Ethical Considerations"):]
    assert "Groups this model harms beyond a limit, as the gates decided" in ethics and "`h=x`" in ethics
    md = render_markdown(report)
    assert "❌" in next(line for line in md.splitlines() if line.startswith("| `h=x` |") and "det." in line)
    root = ET.fromstring(render_junit(report))
    case = next(c for c in root.iter("testcase") if c.get("name") == f"{g['gate']}[h=x]"
                and c.get("classname") == f"edgefair.{sel['name']}")
    assert case.find("failure") is not None


# ---- junit ------------------------------------------------------------------------------------------

def test_junit_counts_names_and_details(run):
    report = clean(run)
    root = ET.fromstring(render_junit(report))
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [s["name"] for s in report["steps"]]
    for suite, step in zip(suites, report["steps"]):
        cases = suite.findall("testcase")
        assert len(cases) == len(step["gates"]) == int(suite.get("tests"))
        assert int(suite.get("failures")) == sum(g["status"] == "fail" for g in step["gates"])
        assert int(suite.get("skipped")) == sum(g["status"] == "warn" for g in step["gates"])
        for case, gate in zip(cases, step["gates"]):
            assert case.get("name") == (f"{gate['gate']}[{gate['group']}]" if gate["group"] else gate["gate"])
            if gate["status"] == "fail":
                fail = case.find("failure")
                assert fail.get("message") == describe_gate(gate, "95% CI")
                assert f"min_detectable: {gate['min_detectable']}" in fail.text
    assert any(c.get("name") == f"max_group_accuracy_drop[{EVIL_GROUP}]" for c in root.iter("testcase"))


# ---- every shape --------------------------------------------------------------------------------------

def _no_selection(report: dict) -> dict:
    report = clean(report)
    for s in report["steps"][1:]:
        s["passed"] = False
    report["verdict"], report["selected"] = "fail", None
    report["gate_summary"]["failed_steps"] = [s["index"] for s in report["steps"][1:]]
    return report


def _old_schema(report: dict) -> dict:
    """A report.json written before gates_applied / gate_summary / min_detectable existed."""
    report = clean(report)
    report.pop("gates_applied"), report.pop("gate_summary")
    for s in report["steps"]:
        for g in s["gates"]:
            for k in ("decision", "n", "p_holm", "min_detectable", "exceeds", "direction", "where"):
                g.pop(k, None)
    return report


def test_every_renderer_accepts_every_shape(run, label_free):
    for report in (clean(run), _no_selection(run), _old_schema(run), clean(label_free), _no_selection(label_free)):
        for render in RENDERERS:
            text = render(copy.deepcopy(report))
            assert isinstance(text, str) and text.endswith("\n")
        ET.fromstring(render_junit(report))
        assert max(len(line) for line in terminal_table(report).splitlines()) <= WIDTH


def test_no_selection_says_so_first(run):
    report = _no_selection(run)
    assert render_markdown(report).startswith("## edgefair: **FAIL** — no model selected")
    card = render_model_card(report)
    assert "No compressed model was selected" in card and card.startswith("# Model card: `baseline`")
    assert terminal_table(report).startswith("verdict: FAIL · no model to ship")


def test_label_free_shows_fidelity(label_free):
    assert label_free["data"]["eval"]["labelled"] is False
    md = render_markdown(clean(label_free))
    assert "| group | n | agreement | flip rate | cosine mean |" in md and "TPR" not in md
    assert "agreement with the baseline ≥ 95.0%" in md
    card = render_model_card(clean(label_free))
    assert "accuracy and calibration were **not measured**" in card


def test_renderers_do_not_modify_the_report(run):
    report = clean(run)
    before = json.dumps(report, sort_keys=True)
    for render in RENDERERS:
        render(report)
    terminal_table(report, full=True)
    assert json.dumps(report, sort_keys=True) == before


def test_render_all_writes_four_files(run, tmp_path):
    report = clean(run)
    paths = render_all(tmp_path, report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml", "model-card.md", "report.html", "report.md"]
    assert paths["report.md"].read_text(encoding="utf-8") == render_markdown(report)


def test_report_command_reproduces_the_run_byte_for_byte(run, tmp_path):
    """`edgefair report DIR` re-renders every human file of DIR exactly as `edgefair run` wrote it:
    nothing in a report depends on the time, the machine or the folder it is rendered in."""
    import shutil

    out = tmp_path / "moved"  # another folder too
    shutil.copytree(run["_out"], out)
    files = ["report.md", "report.html", "model-card.md", "junit.xml", "report.txt"]
    before = {f: (out / f).read_bytes() for f in files}
    for f in files:
        (out / f).unlink()
    result = run_cli(["report", str(out)])
    assert result.exit_code == 0, result.output
    for f in files:
        assert (out / f).read_bytes() == before[f], f


def test_markdown_and_html_show_the_tune_frontier(run):
    """A tune report's frontier (computed by tune's own function on this real report), skipped and
    not-tried candidates, in report.md and report.html."""
    from edgefair.tune import frontier

    report = clean(run)
    report["frontier"] = frontier(report)
    report["skipped"] = [{"name": "static-int8-keep-float", "kind": "quantize_static",
                          "reason": f"calibration data has no group column {EVIL_VALUE}"}]
    report["not_tried"] = [{"name": n, "kind": "prune", "reason": "time budget of 5 s spent"} for n in ("s-25", "s-50")]
    md = render_markdown(report)
    section = md[md.index("### Frontier"):md.index("### Per-group results")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`" in line]
    ratios = [r["p50_ratio_vs_baseline"] for r in report["frontier"]]
    assert len(rows) == len(ratios)
    shown = [float(line.split(" | ")[3].rstrip("×")) for line in rows]
    assert shown == sorted(shown)  # fastest first
    cut = next(line for line in rows if "`cut_75`" in line)
    fail = next(g for g in run["steps"][2]["gates"] if g["status"] == "fail")
    assert f"❌ {R.gate_words(fail['gate'])} at {md_code(fail['group']).replace('|', chr(92) + '|')} {fmt_observed(fail)} >" in cut
    shipped = next(line for line in rows if "`quantize_dynamic`" in line)
    assert "✅ pass" in shipped and shipped.startswith("| 1 ✅ |")
    assert "- skipped `static-int8-keep-float` (quantize\\_static): calibration data has no group column" in section
    assert "- not tried (time budget of 5 s spent): `s-25`, `s-50`" in section
    assert EVIL_VALUE not in outside_code_spans(section)
    page = render_html(report)
    assert "<h3>Skipped candidates</h3>" in page and "<code>s-25</code>, <code>s-50</code>: time budget of 5 s spent" in page


def test_reports_show_the_change_vs_the_last_release(run, tmp_path):
    """`edgefair run --previous` (the labelled run as the release in the field): report.md and
    report.html show each group's change vs the last release's model with its interval, lost and
    gained rows, and the regression gate's decision and min_detectable."""
    root = Path(run["_root"])
    recipe = write_recipe(root / "r_prev.toml", RECIPE + "max_group_regression_vs_previous = 0.01\n" + STEPS)
    out = tmp_path / "out"
    result = run_cli(["run", str(recipe), "--out", str(out), "--cache-dir", str(root.parent / "cache"),
                      "--previous", run["_out"]])
    assert result.exit_code in (0, 1), result.output
    report = json.loads((out / "report.json").read_text())
    step = next(s for s in report["steps"] if s["index"] == report["selected"]["step"])
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    section = md[md.index("### Compared with the last release"):md.index("### Per-group results")]
    assert "measure: accuracy on the same 800 rows" in section
    assert f"Step {step['index']} `{step['name']}` against it" in section
    for key, v in step["vs_previous"]["groups"].items():
        row = next(line for line in section.splitlines() if line.startswith(f"| {md_code(key).replace('|', chr(92) + '|')} |"))
        if v["status"] != "ok":
            assert "fewer than min\\_group\\_size" in row
            continue
        assert f"| {fmt_pct(v['previous_rate'])} | {fmt_pct(v['rate'])} | {fmt_pp(v['change'])} ({fmt_ci(v['change_ci'], signed=True)}) |" in row
        gate = next(g for g in step["gates"] if g["gate"] == "max_group_regression_vs_previous" and g["group"] == key)
        assert f"det. {fmt_detectable(gate)}" in row and R.status_text(gate) in row
    html_section = page[page.index("<h2>Compared with the last release</h2>"):page.index("<h2>Latency against")]
    assert "<code class=\"g\">g=&lt;b&gt;*x*&lt;/b&gt;|`q`</code>" in html_section and EVIL_VALUE not in page
    assert "drop vs the last release" in page  # its forest plot, in points
    assert fmt_limit("max_group_regression_vs_previous", 0.01) == "≤ 1.0 pp"


# ---- helpers -------------------------------------------------------------------------------------------

def test_number_formats():
    assert fmt_pp(-0.0226) == "-2.3"
    assert fmt_pp(-0.00001) == "+0.0"
    assert fmt_pp(None) == DASH
    assert fmt_pct(0.8547) == "85.5%"
    assert fmt_ci([0.011, 0.034]) == "1.1–3.4"
    assert fmt_ci([-0.0405, -0.0226]) == "-4.0 to -2.3"
    assert fmt_gate("max_group_tpr_drop", 0.063) == "6.3 pp"
    assert fmt_gate("min_group_agreement", 0.93) == "93.0%"
    assert fmt_limit("min_group_agreement", 0.95) == "≥ 95.0%" and fmt_limit("max_group_tpr_drop", 0.03) == "≤ 3.0 pp"
    # rounding never hides that a value is beyond its limit
    assert fmt_observed({"gate": "max_group_tpr_drop", "value": 0.0304, "threshold": 0.03, "exceeds": True}) == "3.04 pp"
    assert fmt_detectable({"gate": "min_group_agreement", "min_detectable": 0.931, "direction": "min"}) == "≤ 93.1%"


def test_markdown_code_spans_hold_any_string():
    assert md_code("a`b") == "``a`b``"
    assert md_code("`x") == "`` `x ``"
    assert R.md_text("<b>*x*</b>") == "\\<b\\>\\*x\\*\\</b\\>"
    assert R.md_row([md_code("a|b")]) == "| `a\\|b` |"


def test_markdown_keeps_within_a_pull_request_comment(run, monkeypatch):
    import edgefair.render.markdown as markdown

    full = render_markdown(clean(run))
    assert len(full) <= markdown.MAX_CHARS and "<summary>step 2 <code>cut_75</code>" in full
    monkeypatch.setattr(markdown, "MAX_CHARS", len(full) - 1)
    short = render_markdown(clean(run))
    assert "<summary>step 2 <code>cut_75</code>" not in short and "per-group tables are in `report.html`" in short
    assert first_screen_md(short) == first_screen_md(full)  # the first screen never shrinks
