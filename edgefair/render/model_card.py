"""model-card.md: a model card for the selected model, in the sections of Mitchell et al. (2019),
"Model Cards for Model Reporting" (FAT* '19, arXiv:1810.03993).

Every number comes from report.json; every pass/fail/undecided from the gate entries (the card
computes no significance of its own). What edgefair cannot know (intended use, training data) is
said to be unknown, with a pointer to where it belongs, never guessed. The card leaves the machine
it was made on: paths are relative to the recipe (or file names), never absolute; user-supplied
names are Markdown code spans.
"""

from __future__ import annotations

from typing import Any

from . import (
    DASH,
    baseline_step,
    confidence_label,
    dig,
    fmt_ci,
    fmt_detectable,
    fmt_gate_ci,
    fmt_limit,
    fmt_mb,
    fmt_ms,
    fmt_num,
    fmt_observed,
    fmt_pct,
    fmt_pp,
    fmt_ratio,
    gate_words,
    gates_cell,
    insufficient_groups,
    is_absolute,
    is_embedding,
    is_labelled,
    md_code,
    md_table,
    md_text,
    ok_groups,
    portable_path,
    rule_text,
    selected_step,
    steps,
    steps_applied,
    thresholds,
    who,
    without_local_dirs,
)
from .markdown import first_screen, step_groups

DATE_KEYS = ("created_at", "created", "date", "timestamp")
UNKNOWN = "_Not recorded by edgefair; take it from the original model's own documentation._"


def render_model_card(report: dict[str, Any]) -> str:
    """The model card (model-card.md) of the selected model, or of the baseline when none was selected."""
    step = selected_step(report)
    base = baseline_step(report)
    fallback = step is None
    if fallback:
        step = base
    ci_label = confidence_label(report)
    title = md_code(step.get("name")) if step else "(no model)"
    out = [f"# Model card: {title}", ""]
    if fallback:
        out += ["> **No compressed model was selected: no step passed every gate.** This card describes the "
                "uncompressed baseline for reference; do not ship a compressed step from this run.", ""]
    out += first_screen(report, ci_label, heading="##")
    if step is None:
        return _scrub(report, "\n".join(out + ["The report has no steps."]) + "\n")
    out += _details(report, step)
    out += _intended_use()
    out += _factors(report)
    out += _metrics(report)
    out += _eval_data(report)
    out += _training_data(report)
    out += _quantitative(report, step, base, ci_label)
    out += _ethics(report, step, ci_label)
    out += _caveats(report, step)
    return _scrub(report, "\n".join(out).rstrip() + "\n")


def _scrub(report: dict[str, Any], text: str) -> str:
    """A last guard: no absolute folder of this machine (recipe, data, home) survives in the card,
    e.g. inside a step warning; paths under the recipe's folder become relative to it."""
    return without_local_dirs(report, text)


def _details(report: dict[str, Any], step: dict[str, Any]) -> list[str]:
    src = report.get("source") or {}
    env = report.get("environment") or {}
    out = ["## Model Details", "",
           f"- **Model file:** {md_code(step.get('model'))} (sha256 {md_code(step.get('sha256', DASH))}, "
           f"{fmt_mb(step.get('size_bytes'))} MB), ONNX."]
    if src:
        out.append(f"- **Source:** {md_code(portable_path(report, src.get('spec')))} ({md_text(src.get('kind', DASH))}, "
                   f"sha256 {md_code(src.get('sha256', DASH))}).")
    parity = src.get("parity") or {}
    if parity:
        out.append(f"- **Export check:** on {md_text(parity.get('rows'))} rows the ONNX baseline matched the source model "
                   f"with max abs. difference {fmt_num(parity.get('max_abs_diff'), '.3g')} and top-class agreement "
                   f"{fmt_pct(parity.get('argmax_agreement'), 2)}.")
    chain = steps_applied(report, step)
    if chain:
        out.append("- **Compression applied** (in order, starting from the exported baseline):")
        settings = {s.get("name"): s for s in dig(report, "recipe", "resolved", "steps") or []}
        for s in chain:
            cfg = settings.get(s.get("name")) or {}
            shown = ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("name", "kind", "input") and v not in (None, [], {}))
            out.append(f"  - step {md_text(s.get('index'))} {md_code(s.get('name'))} ({md_text(s.get('kind'))})"
                       f"{': ' + md_code(shown) if shown else ''}")
    else:
        out.append("- **Compression applied:** none (the uncompressed ONNX export).")
    versions = ", ".join(f"{k} {env[k]}" for k in ("edgefair", "python", "torch", "onnx", "onnxruntime") if env.get(k))
    if versions:
        out.append(f"- **Software:** {md_text(versions)}.")
    date = next((report[k] for k in DATE_KEYS if report.get(k)), None)
    out.append(f"- **Date:** {md_text(date)}." if date else "- **Date:** not recorded in report.json.")
    out.append(f"- **Developers, license, citation:** {UNKNOWN}")
    recipe = report.get("recipe") or {}
    if recipe.get("path"):
        where = "" if is_absolute(str(recipe["path"])) else " (from the output folder)"
        out.append(f"- **Produced by:** `edgefair run` with recipe {md_code(portable_path(report, recipe['path']))}{where} "
                   f"(sha256 {md_code(recipe.get('sha256', DASH))}); the data paths below are relative to its folder.")
    return out + [""]


def _intended_use() -> list[str]:
    return ["## Intended Use", "",
            f"- **Primary intended uses and users:** {UNKNOWN}",
            "- This file is a compressed version of the source model, meant to replace it on the same task and inputs "
            "on a resource-limited device. It was checked only on the evaluation data described below; uses outside "
            "that data's population are not covered by this card.",
            "- **Out-of-scope uses:** " + UNKNOWN, ""]


def _factors(report: dict[str, Any]) -> list[str]:
    data = dig(report, "recipe", "resolved", "data") or {}
    values = dig(report, "data", "eval", "groups") or {}
    attrs = data.get("groups") or list(values)
    out = ["## Factors", ""]
    if not attrs:
        return out + ["No sensitive attributes were given (`[data] groups`): results are not disaggregated.", ""]
    for a in attrs:
        vals = values.get(a)
        out.append(f"- {md_code(a)}: " + (", ".join(md_code(v) for v in vals) if vals else DASH))
    out.append(f"- **Intersections** ({' & '.join(md_code(a) for a in attrs)}): "
               + ("evaluated." if data.get("intersections") else "not evaluated."))
    min_size = dig(report, "gates_applied", "min_group_size")
    if min_size is None:
        min_size = data.get("min_group_size")
    if min_size is not None:
        out.append(f"- **Minimum group size:** {md_text(min_size)} rows; smaller groups are reported as "
                   "insufficient data and are not checked by any gate.")
    s0 = (steps(report) or [{}])[0]
    groups = s0.get("groups") or {}
    if groups:
        out.append(f"- **Groups evaluated:** {len(ok_groups(s0))} of {len(groups)} had enough data.")
    env = report.get("environment") or {}
    if env.get("cpu"):
        out.append(f"- **Instrumentation:** latency was measured on {md_text(env['cpu'])} ({md_text(env.get('machine', DASH))}, "
                   f"{md_text(env.get('execution_provider', 'onnxruntime'))}); a target device may differ.")
    return out + [""]


def _metrics(report: dict[str, Any]) -> list[str]:
    ci_label = confidence_label(report)
    ev = dig(report, "recipe", "resolved", "evaluate") or {}
    out = ["## Metrics", "", "Units: rates in percent; their changes, and every limit on them, in percentage points (pp).", ""]
    if is_embedding(report):
        out.append("- The model outputs embeddings: quality is its **fidelity** to the uncompressed model, the "
                   "cosine similarity of each row's output vectors (mean and minimum per group).")
    elif is_labelled(report):
        out += ["- **Accuracy**, **true positive rate (TPR)**, **false positive rate (FPR)** and **selection rate** "
                "(share of rows predicted positive) overall and per group, and their change from the uncompressed "
                "baseline (step minus baseline). Binary tasks: of the positive class; multiclass: TPR and FPR are "
                "averaged over classes in the tables and gated per class.",
                f"- **Calibration:** expected calibration error (ECE, {md_text(ev.get('ece_bins', DASH))} equal-width "
                "confidence bins), Brier score and negative log-likelihood (NLL).",
                "- **Flip rate:** share of rows whose predicted class differs from the baseline's."]
    else:
        out += ["- The evaluation data has no labels: accuracy and calibration were **not measured**. Only fidelity "
                "to the baseline: agreement (share of rows with the same predicted class), flip rate (its complement) "
                "and cosine similarity of output vectors."]
    if ev.get("bootstrap"):
        out.append(f"- **Uncertainty:** {md_text(ci_label)}s. Paired rate changes use Tango's score interval, flip rates "
                   f"Clopper-Pearson's, ECE change and between-group gap growth the percentile interval of "
                   f"{md_text(ev['bootstrap'])} paired bootstrap resamples (seed {md_text(ev.get('seed', DASH))}).")
    limits = thresholds(report)
    if limits:
        out.append("- **Release gates (thresholds in force, defaults included):** "
                   + "; ".join(f"{md_text(gate_words(n))} {fmt_limit(n, t)}" for n, t in limits) + ".")
        out.append(f"- **How a gate decides:** {md_text(rule_text(report))}. _min_detectable_ is the smallest harm "
                   "that fails on evidence at a group's size: what the gate can see for that group.")
    return out + [""]


def _eval_data(report: dict[str, Any]) -> list[str]:
    data = report.get("data") or {}
    out = ["## Evaluation Data", ""]
    for role, what in (("eval", "Evaluation"), ("calibration", "Calibration (inputs for static quantization)")):
        d = data.get(role)
        if d:
            out.append(f"- **{what}:** {md_code(portable_path(report, d.get('path')))}, sha256 {md_code(d.get('sha256', DASH))}, "
                       f"n = {md_text(d.get('n', DASH))}{', labelled' if d.get('labelled') else ', no labels'}.")
    if len(out) == 2:
        out.append("Not recorded in report.json.")
    return out + [""]


def _training_data(report: dict[str, Any]) -> list[str]:
    train = dig(report, "data", "train")
    out = ["## Training Data", "",
           "edgefair does not describe the original model's training data. " + UNKNOWN.strip("_")]
    if train:
        tuned = [s for s in steps_applied(report, selected_step(report) or {}) if dig(s, "details", "finetune")]
        what = ("Recovery fine-tuning after structured pruning ("
                + ", ".join(f"step {md_text(s['index'])} {md_code(s['name'])}" for s in tuned)
                + ") trained on") if tuned else "A training file was given to edgefair but not used by the selected model's steps:"
        out.append(f"{what} {md_code(portable_path(report, train.get('path')))} (sha256 {md_code(train.get('sha256', DASH))}, "
                   f"n = {md_text(train.get('n', DASH))}).")
    return out + [""]


def _quantitative(report: dict[str, Any], step: dict[str, Any], base: dict[str, Any] | None,
                  ci_label: str) -> list[str]:
    labelled = is_labelled(report) and not is_embedding(report)
    ov, bov = step.get("overall") or {}, (base or {}).get("overall") or {}
    out = ["## Quantitative Analyses", ""]
    lat, blat = step.get("latency") or {}, (base or {}).get("latency") or {}
    rows = []
    if labelled:
        rows.append([f"accuracy ({md_text(ci_label)})", f"{fmt_pct(bov.get('accuracy'))} ({fmt_ci(bov.get('accuracy_ci'))})",
                     f"{fmt_pct(ov.get('accuracy'))} ({fmt_ci(ov.get('accuracy_ci'))})",
                     f"{fmt_pp(ov.get('accuracy_delta'))} pp ({fmt_ci(ov.get('accuracy_delta_ci'), signed=True)})"])
        for field, title, d in (("tpr", "TPR", 1), ("fpr", "FPR", 1), ("selection_rate", "selection rate", 1), ("ece", "ECE", 2)):
            # ECE is a few percent: two decimals, so that its change and the two values agree
            rows.append([title, fmt_pct(bov.get(field), d), fmt_pct(ov.get(field), d),
                         f"{fmt_pp(ov.get(f'{field}_delta'), d)} pp"])
        for field, title in (("brier", "Brier score"), ("nll", "NLL")):
            rows.append([title, fmt_num(bov.get(field), ".4f"), fmt_num(ov.get(field), ".4f"), fmt_num(ov.get(f"{field}_delta"), "+.4f")])
    elif ov.get("cosine_mean") is not None:
        rows.append(["cosine to the baseline (mean / min)", DASH, f"{fmt_num(ov.get('cosine_mean'), '.4f')} / "
                     f"{fmt_num(ov.get('cosine_min'), '.4f')}", ""])
    if not is_embedding(report):
        rows.append(["flip rate vs baseline", DASH, fmt_pct(ov.get("flip_rate"), 2), ""])
    rows.append(["size MB", fmt_mb((base or {}).get("size_bytes")), fmt_mb(step.get("size_bytes")), ""])
    rows.append(["latency p50 / p95 ms", f"{fmt_ms(blat.get('p50_ms'))} / {fmt_ms(blat.get('p95_ms'))}",
                 f"{fmt_ms(lat.get('p50_ms'))} / {fmt_ms(lat.get('p95_ms'))}", f"{fmt_ratio(step, base)} p50"])
    out += md_table(["", "baseline", "this model", "change"], rows) + [""]
    if step.get("index", 0) > 0:
        out += [f"Disaggregated by group: each rate with its change from the uncompressed baseline in brackets, then "
                f"every gate check on the group (✅ pass, ❌ fail, ⚠️ undecided): observed harm, {md_text(ci_label)}, and "
                "_det._ = min_detectable, the smallest harm that fails on evidence at the group's size (– : none can).", ""]
    else:
        out += ["Disaggregated by group:", ""]
    out += step_groups(report, step, ci_label)
    gates = step.get("gates") or []
    if gates:
        out.append(f"Release gates on this model: {md_text(gates_cell(step))}.")
        out.append("")
    return out


def _ethics(report: dict[str, Any], step: dict[str, Any], ci_label: str) -> list[str]:
    out = ["## Ethical Considerations", ""]
    short = insufficient_groups(step)
    if short:
        out.append("**Groups with too little data to evaluate** (no claim is made about them; the model may "
                   "behave worse for them than for anyone measured):")
        out += [f"- {md_code(k)}: n = {md_text(g.get('n', DASH))}{' — ' + md_text(g['reason']) if g.get('reason') else ''}"
                for k, g in short.items()]
        out.append("")
    gates = [g for g in step.get("gates") or [] if g.get("group") not in (None, "")]
    if gates and step.get("index", 0) > 0:
        failed = [g for g in gates if g.get("status") == "fail"]
        beyond = [g for g in gates if g.get("exceeds") and g.get("status") != "fail"]
        if failed:
            out.append("**Groups this model harms beyond a limit, as the gates decided:**")
            out += [f"- {who(g, md_code)}: {md_text(gate_words(g.get('gate')))} {fmt_observed(g)} "
                    f"({md_text(ci_label)} {fmt_gate_ci(g.get('gate'), g.get('ci'))}), limit "
                    f"{fmt_limit(g)}; n = {md_text(g.get('n'))}, det. {fmt_detectable(g)}" for g in failed]
        else:
            out.append("No gate found a group harmed beyond its limit by this model.")
        if beyond:
            out.append("")
            out.append("**Observed beyond a limit, but too few rows to tell** (undecided; a larger evaluation set "
                       "would settle them):")
            out += [f"- {who(g, md_code)}: {md_text(gate_words(g.get('gate')))} {fmt_observed(g)}, limit {fmt_limit(g)}; "
                    f"n = {md_text(g.get('n'))}, fails on evidence only from {fmt_detectable(g)}" for g in beyond]
        out.append("")
    out += ["Compression can harm small and underrepresented groups more than overall accuracy shows "
            "(Hooker et al. 2020, \"Characterising Bias in Compressed Models\", arXiv:2010.03058). That is why the "
            "changes above are reported per group with confidence intervals rather than as one overall number.",
            "",
            "The group categories are those recorded in the evaluation data; they may not match how people "
            "identify themselves, and groups absent from the data were not evaluated.", ""]
    return out


def _caveats(report: dict[str, Any], step: dict[str, Any]) -> list[str]:
    lat = step.get("latency") or {}
    out = ["## Caveats and Recommendations", "",
           "- All measurements are on one evaluation set; intervals describe resampling uncertainty on that set, "
           "not shifts in the population the model will meet."]
    if lat:
        out.append(f"- Latency was measured with onnxruntime on the machine that ran edgefair "
                   f"({md_text(lat.get('threads', DASH))} thread(s), batch {md_text(lat.get('batch_size', DASH))}, "
                   f"{md_text(lat.get('runs', DASH))} runs); measure on the target device with `edgefair probe`.")
    if not is_labelled(report):
        out.append("- Without labels, agreement with the baseline is the only quality evidence: a model that "
                   "agrees with a biased baseline inherits its bias.")
    if insufficient_groups(step):
        out.append("- Collect more evaluation data for the groups listed as insufficient before relying on this "
                   "model for them.")
    for s in steps_applied(report, step):
        out += [f"- Step {md_code(s.get('name'))}: {md_text(w)}" for w in s.get("warnings") or []]
    return out + [""]
