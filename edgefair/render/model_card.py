"""model-card.md: a model card for the selected model, in the sections of Mitchell et al. (2019),
"Model Cards for Model Reporting" (FAT* '19, arXiv:1810.03993).

Every number comes from report.json. What edgefair cannot know (intended use, training data) is
said to be unknown, with a pointer to where it belongs, never guessed.
"""

from __future__ import annotations

from typing import Any

from . import (
    DASH,
    dig,
    baseline_step,
    confidence_label,
    describe_gate,
    failing_gates,
    fmt_ci,
    fmt_mb,
    fmt_ms,
    fmt_num,
    fmt_pct,
    fmt_pp,
    fmt_ratio,
    insufficient_groups,
    is_labelled,
    ok_groups,
    selected_step,
    steps,
    steps_applied,
)

DATE_KEYS = ("created", "created_at", "date", "timestamp")  # report.json has no date field yet
UNKNOWN = "_Not recorded by edgefair; take it from the original model's own documentation._"


def render_model_card(report: dict[str, Any]) -> str:
    """The model card (model-card.md) of the selected model, or of the baseline when none was selected."""
    step = selected_step(report)
    base = baseline_step(report)
    fallback = step is None
    if fallback:
        step = base
    ci_label = confidence_label(report)
    title = f"`{_c(step.get('name'))}`" if step else "(no model)"
    out = [f"# Model card: {title}", ""]
    if fallback:
        out += ["> **No compressed model was selected: no step passed every gate.** This card describes the "
                "uncompressed baseline for reference; do not ship a compressed step from this run.", ""]
        for s, g in failing_gates(report)[:10]:
            out.append(f"> - step {s.get('index')} `{_c(s.get('name'))}`: {describe_gate(g, ci_label)}")
        out.append("")
    if step is None:
        return "\n".join(out + ["The report has no steps."]) + "\n"
    out += _details(report, step)
    out += _intended_use()
    out += _factors(report)
    out += _metrics(report)
    out += _eval_data(report)
    out += _training_data(report)
    out += _quantitative(report, step, base, ci_label)
    out += _ethics(report, step, ci_label)
    out += _caveats(report, step)
    return "\n".join(out).rstrip() + "\n"


def _details(report: dict[str, Any], step: dict[str, Any]) -> list[str]:
    src = report.get("source") or {}
    env = report.get("environment") or {}
    out = ["## Model Details", "",
           f"- **Model file:** `{_c(step.get('model'))}` (sha256 `{step.get('sha256', DASH)}`, "
           f"{fmt_mb(step.get('size_bytes'))} MB), ONNX."]
    if src:
        out.append(f"- **Source:** `{_c(src.get('spec'))}` ({src.get('kind', DASH)}, sha256 `{src.get('sha256', DASH)}`).")
    parity = src.get("parity") or {}
    if parity:
        out.append(f"- **Export check:** on {parity.get('rows')} rows the ONNX baseline matched the source model "
                   f"with max abs. difference {fmt_num(parity.get('max_abs_diff'), '.3g')} and top-class agreement "
                   f"{fmt_pct(parity.get('argmax_agreement'), 2)}.")
    chain = steps_applied(report, step)
    if chain:
        out.append("- **Compression applied** (in order, starting from the exported baseline):")
        settings = {s.get("name"): s for s in dig(report, "recipe", "resolved", "steps") or []}
        for s in chain:
            cfg = settings.get(s.get("name")) or {}
            shown = ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("name", "kind", "input") and v not in (None, [], {}))
            out.append(f"  - step {s.get('index')} `{_c(s.get('name'))}` ({s.get('kind')}){': ' + shown if shown else ''}")
    else:
        out.append("- **Compression applied:** none (the uncompressed ONNX export).")
    versions = ", ".join(f"{k} {env[k]}" for k in ("edgefair", "python", "torch", "onnx", "onnxruntime") if env.get(k))
    if versions:
        out.append(f"- **Software:** {versions}.")
    date = next((report[k] for k in DATE_KEYS if report.get(k)), None)
    out.append(f"- **Date:** {date}." if date else "- **Date:** not recorded in report.json.")
    out.append(f"- **Developers, license, citation:** {UNKNOWN}")
    recipe = report.get("recipe") or {}
    if recipe.get("path"):
        out.append(f"- **Produced by:** `edgefair run` with recipe `{_c(recipe['path'])}` (sha256 `{recipe.get('sha256', DASH)}`).")
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
        out.append(f"- **{_c(a)}**: " + (", ".join(f"`{_c(v)}`" for v in vals) if vals else DASH))
    out.append(f"- **Intersections** ({' & '.join(map(str, attrs))}): "
               + ("evaluated." if data.get("intersections") else "not evaluated."))
    if data.get("min_group_size") is not None:
        out.append(f"- **Minimum group size:** {data['min_group_size']} rows; smaller groups are reported as "
                   "insufficient data and are not checked by any gate.")
    s0 = (steps(report) or [{}])[0]
    groups = s0.get("groups") or {}
    if groups:
        out.append(f"- **Groups evaluated:** {len(ok_groups(s0))} of {len(groups)} had enough data.")
    env = report.get("environment") or {}
    if env.get("cpu"):
        out.append(f"- **Instrumentation:** latency was measured on {env['cpu']} ({env.get('machine', DASH)}, "
                   f"{env.get('execution_provider', 'onnxruntime')}); a target device may differ.")
    return out + [""]


def _metrics(report: dict[str, Any]) -> list[str]:
    ci_label = confidence_label(report)
    ev = dig(report, "recipe", "resolved", "evaluate") or {}
    gates = {k: v for k, v in (dig(report, "recipe", "resolved", "gates") or {}).items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out = ["## Metrics", ""]
    if is_labelled(report):
        out += ["- **Accuracy** overall and per group, and its change from the uncompressed baseline "
                "(step minus baseline; negative = the group lost accuracy).",
                f"- **Expected calibration error (ECE)** with {ev.get('ece_bins', DASH)} equal-width confidence bins.",
                "- **McNemar's exact test** per group on the rows the baseline and the compressed model got right "
                "or wrong, with Holm's correction across groups."]
    else:
        out += ["- The evaluation data has no labels: accuracy and calibration were **not measured**. Only fidelity "
                "to the baseline: agreement (share of rows with the same predicted class) and cosine similarity "
                "of output vectors."]
    out.append("- **Flip rate:** share of rows whose predicted class differs from the baseline's.")
    if ev.get("bootstrap"):
        out.append(f"- **Uncertainty:** {ci_label}s (percentile) from "
                   f"{ev['bootstrap']} paired bootstrap resamples (seed {ev.get('seed', DASH)}), stratified by group; "
                   "accuracy-change and flip-rate intervals are widened to at least Newcombe's paired score and "
                   "Clopper-Pearson intervals, so a group with no flipped predictions does not get a zero-width interval.")
    if gates:
        out.append("- **Release thresholds (gates):** " + ", ".join(f"`{k}` = {v}" for k, v in gates.items())
                   + (f" (decision rule: {dig(report, 'recipe', 'resolved', 'gates', 'decision')})"
                      if dig(report, "recipe", "resolved", "gates", "decision") else "") + ".")
    return out + [""]


def _eval_data(report: dict[str, Any]) -> list[str]:
    data = report.get("data") or {}
    out = ["## Evaluation Data", ""]
    for role, what in (("eval", "Evaluation"), ("calibration", "Calibration (inputs for static quantization)")):
        d = data.get(role)
        if d:
            out.append(f"- **{what}:** `{_c(d.get('path'))}`, sha256 `{d.get('sha256', DASH)}`, n = {d.get('n', DASH)}"
                       f"{', labelled' if d.get('labelled') else ', no labels'}.")
    if len(out) == 2:
        out.append("Not recorded in report.json.")
    return out + [""]


def _training_data(report: dict[str, Any]) -> list[str]:
    train = dig(report, "data", "train")
    out = ["## Training Data", "",
           "edgefair does not describe the original model's training data. " + UNKNOWN.strip("_")]
    if train:
        tuned = [s for s in steps_applied(report, selected_step(report) or {}) if dig(s, "details", "finetune")]
        what = ("Recovery fine-tuning after structured pruning (" + ", ".join(f"step {s['index']} `{_c(s['name'])}`" for s in tuned)
                + ") trained on") if tuned else "A training file was given to edgefair but not used by the selected model's steps:"
        out.append(f"{what} `{_c(train.get('path'))}` (sha256 `{train.get('sha256', DASH)}`, n = {train.get('n', DASH)}).")
    return out + [""]


def _quantitative(report: dict[str, Any], step: dict[str, Any], base: dict[str, Any] | None,
                  ci_label: str) -> list[str]:
    labelled = is_labelled(report)
    ov, bov = step.get("overall") or {}, (base or {}).get("overall") or {}
    out = ["## Quantitative Analyses", ""]
    lat, blat = step.get("latency") or {}, (base or {}).get("latency") or {}
    out += ["| | baseline | this model | change |", "|---|---|---|---|"]
    if labelled:
        out.append(f"| accuracy ({ci_label}) | {fmt_pct(bov.get('accuracy'))} ({fmt_ci(bov.get('accuracy_ci'))}) | "
                   f"{fmt_pct(ov.get('accuracy'))} ({fmt_ci(ov.get('accuracy_ci'))}) | "
                   f"{fmt_pp(ov.get('accuracy_delta'))} pp ({fmt_ci(ov.get('accuracy_delta_ci'), signed=True)}) |")
        out.append(f"| ECE | {fmt_num(bov.get('ece'), '.4f')} | {fmt_num(ov.get('ece'), '.4f')} | "
                   f"{fmt_num(ov.get('ece_delta'), '+.4f')} |")
    out.append(f"| flip rate vs baseline | {DASH} | {fmt_pct(ov.get('flip_rate'), 2)} | |")
    out.append(f"| size MB | {fmt_mb((base or {}).get('size_bytes'))} | {fmt_mb(step.get('size_bytes'))} | |")
    out.append(f"| latency p50 / p95 ms | {fmt_ms(blat.get('p50_ms'))} / {fmt_ms(blat.get('p95_ms'))} | "
               f"{fmt_ms(lat.get('p50_ms'))} / {fmt_ms(lat.get('p95_ms'))} | "
               f"{fmt_ratio(step, base)} p50 |")
    out.append("")
    out += [f"Disaggregated by group (change = this model minus the uncompressed baseline; {ci_label} in brackets):", ""]
    bgroups = (base or {}).get("groups") or {}
    if labelled:
        out += ["| group | n | baseline accuracy | accuracy | Δ accuracy pp | ECE | Δ ECE pp | flip rate | McNemar p (Holm) |",
                "|---|---|---|---|---|---|---|---|---|"]
    else:
        out += ["| group | n | agreement | flip rate | cosine mean |", "|---|---|---|---|---|"]
    for key, g in (step.get("groups") or {}).items():
        n = fmt_num(g.get("n"), "d")
        if g.get("status") != "ok":
            out.append(f"| `{_c(key)}` | {n} | insufficient data | | | | | | |" if labelled
                       else f"| `{_c(key)}` | {n} | insufficient data | | |")
            continue
        if labelled:
            b = bgroups.get(key) or {}
            out.append(
                f"| `{_c(key)}` | {n} | {fmt_pct(b.get('accuracy'))} | {fmt_pct(g.get('accuracy'))} ({fmt_ci(g.get('accuracy_ci'))}) | "
                f"{fmt_pp(g.get('accuracy_delta'))} ({fmt_ci(g.get('accuracy_delta_ci'), signed=True)}) | "
                f"{fmt_num(g.get('ece'), '.3f')} | {fmt_pp(g.get('ece_delta'), 2)} | "
                f"{fmt_pct(g.get('flip_rate'), 2)} | {fmt_num(g.get('mcnemar_p_holm'), '.3g')} |")
        else:
            out.append(f"| `{_c(key)}` | {n} | {fmt_pct(g.get('agreement'), 2)} | "
                       f"{fmt_pct(g.get('flip_rate'), 2)} ({fmt_ci(g.get('flip_rate_ci'), digits=2)}) | "
                       f"{fmt_num(g.get('cosine_mean'), '.4f')} |")
    out.append("")
    disp = step.get("disparity") or {}
    if labelled and any((d.get("accuracy") or {}).get("gap") is not None for d in disp.values()):
        out += ["Accuracy gap between the best and worst group:", "",
                f"| attribute | gap (this model) pp | worst group | growth vs baseline pp ({ci_label}) |", "|---|---|---|---|"]
        for scope, d in disp.items():
            acc = d.get("accuracy") or {}
            out.append(f"| `{_c(scope)}` | {fmt_pp(acc.get('gap'), signed=False)} | `{_c(acc.get('worst_group'))}` | "
                       f"{fmt_pp(d.get('accuracy_gap_growth'))} ({fmt_ci(d.get('accuracy_gap_growth_ci'), signed=True)}) |")
        out.append("")
    gates = step.get("gates") or []
    if gates:
        c = {k: sum(1 for g in gates if g.get("status") == k) for k in ("pass", "fail", "warn")}
        out.append(f"Release gates on this model: {c['pass']} passed, {c['fail']} failed, {c['warn']} warned.")
        out += [f"- {g.get('status')}: {describe_gate(g, ci_label)}" for g in gates if g.get("status") != "pass"]
        out.append("")
    return out


def _ethics(report: dict[str, Any], step: dict[str, Any], ci_label: str) -> list[str]:
    out = ["## Ethical Considerations", ""]
    short = insufficient_groups(step)
    if short:
        out.append("**Groups with too little data to evaluate** (no claim is made about them; the model may "
                   "behave worse for them than for anyone measured):")
        out += [f"- `{_c(k)}`: n = {g.get('n', DASH)}{' — ' + str(g['reason']) if g.get('reason') else ''}"
                for k, g in short.items()]
        out.append("")
    alpha = _alpha(report)
    if is_labelled(report) and alpha is not None:
        hurt = [(k, g) for k, g in ok_groups(step).items()
                if isinstance(g.get("mcnemar_p_holm"), (int, float)) and g["mcnemar_p_holm"] < alpha
                and isinstance(g.get("accuracy_delta"), (int, float)) and g["accuracy_delta"] < 0]
        if hurt:
            out.append(f"**Groups that lost accuracy significantly** (Holm-corrected McNemar p < {alpha:g}):")
            out += [f"- `{_c(k)}`: {fmt_pp(g['accuracy_delta'])} points ({ci_label} "
                    f"{fmt_ci(g.get('accuracy_delta_ci'), signed=True)}), p = {fmt_num(g['mcnemar_p_holm'], '.3g')}"
                    for k, g in hurt]
        else:
            out.append(f"No group lost accuracy significantly (Holm-corrected McNemar p < {alpha:g}) against the baseline.")
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
                   f"({lat.get('threads', DASH)} thread(s), batch {lat.get('batch_size', DASH)}, {lat.get('runs', DASH)} runs); "
                   "measure on the target device with `edgefair probe`.")
    if not is_labelled(report):
        out.append("- Without labels, agreement with the baseline is the only quality evidence: a model that "
                   "agrees with a biased baseline inherits its bias.")
    if insufficient_groups(step):
        out.append("- Collect more evaluation data for the groups listed as insufficient before relying on this "
                   "model for them.")
    for s in steps_applied(report, step):
        out += [f"- Step `{_c(s.get('name'))}`: {w}" for w in s.get("warnings") or []]
    return out + [""]


def _alpha(report: dict[str, Any]) -> float | None:
    conf = dig(report, "recipe", "resolved", "evaluate", "confidence")
    return 1 - conf if isinstance(conf, (int, float)) else None


def _c(s: Any) -> str:
    """Text for inside backticks / table cells."""
    return str(s).replace("`", "'").replace("\n", " ").replace("|", "\\|")
