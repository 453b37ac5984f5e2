"""Human and CI outputs rendered from report.json: report.md, report.html, junit.xml, model-card.md
(and, through `edgefair.report`, the terminal summary and report.txt).

Every renderer is a pure function `report: dict -> str` that only reads the report (schema_version
1, see DESIGN.md). The helpers they share, re-exported here, are split by what they do: `units`
(a number reads the same everywhere: rates as percent, changes of rates and every fraction-valued
gate in percentage points ("pp"), None as an en dash, CIs as "lo–hi"), `reading` (steps, gate
entries, the largest harm, the frontier, the last release), `md_escape` and `paths`; the page's
SVG charts are in `charts`.

Gate entries are read as written by `edgefair.gates`: `{gate, group, where, value, ci, threshold,
status, decision, reason, n, p_holm, min_detectable, exceeds, direction}`. `value` is the observed
harm (larger is worse) for `direction = "max"` gates and the score itself (agreement, cosine) for
`direction = "min"` ones. No renderer decides anything: pass/fail/undecided, p-values and the
"beyond the limit" flag are read from the gate entries, never recomputed.

Everything that comes from the user (group keys, step names, paths, warnings) is escaped by the
renderer that prints it: `md_code`/`md_text` for Markdown, `html.esc` for HTML.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..gates import GATE_TEXT, LOWER_LIMIT_GATES, SCOPE_GATES  # noqa: F401  (re-exported)
from ..io import write_text
from .units import (  # noqa: F401  (the renderers, report.py and tune.py import them from here)
    DASH,
    PCT_GATES,
    PP_GATES,
    SHORT,
    UNDECIDED_WHY,
    UNITS_NOTE,
    confidence,
    confidence_label,
    dig,
    fmt_ci,
    fmt_detectable,
    fmt_gate,
    fmt_gate_ci,
    fmt_limit,
    fmt_mb,
    fmt_ms,
    fmt_num,
    fmt_observed,
    fmt_pct,
    fmt_pp,
    gate_short,
    gate_unit,
    gate_words,
    is_lower_limit,
    status_text,
    who,
)
from .reading import (  # noqa: F401  (the renderers, report.py and tune.py import them from here)
    PreviousRow,
    STATUS_ICON,
    baseline_step,
    describe_gate,
    exceeded,
    extreme,
    failed_steps,
    failing_gates,
    fmt_ratio,
    focus_step,
    frontier_points,
    gate_counts,
    gate_sort_key,
    gated_names,
    gates_cell,
    group_gates,
    harm_ratio,
    harm_sentence,
    insufficient_groups,
    insufficient_summary,
    is_embedding,
    is_labelled,
    largest_harm,
    latency_ratio,
    metric_cell,
    metric_columns,
    no_failure_note,
    ok_groups,
    previous_release,
    rule_text,
    scope_gates,
    selected_step,
    step_by_index,
    step_result,
    steps,
    steps_applied,
    thresholds,
    undecided_count,
    undecided_note,
    warning_gates,
    why_failed,
    worst_gate,
    worst_harm,
)
from .md_escape import (  # noqa: F401  (the renderers, report.py and tune.py import them from here)
    md_code,
    md_row,
    md_table,
    md_text,
)
from .paths import (  # noqa: F401  (the renderers, report.py and tune.py import them from here)
    is_absolute,
    local_prefixes,
    portable_path,
    recipe_dir,
    without_local_dirs,
)

# Output file names in the output folder (DESIGN.md, "Output folder").
FILES = {
    "markdown": "report.md",
    "html": "report.html",
    "junit": "junit.xml",
    "model_card": "model-card.md",
}


def render_all(out_dir: str | os.PathLike, report: dict[str, Any]) -> dict[str, Path]:
    """Render the four human/CI outputs into `out_dir`, each written atomically. Returns their paths.

    Everything is rendered before anything is written, so a renderer bug leaves no partial set.
    """
    texts = {
        FILES["markdown"]: render_markdown(report),
        FILES["html"]: render_html(report),
        FILES["junit"]: render_junit(report),
        FILES["model_card"]: render_model_card(report),
    }
    out = Path(out_dir)
    paths = {}
    for name, text in texts.items():
        write_text(out / name, text)
        paths[name] = out / name
    return paths


from .html import render_html  # noqa: E402  (the renderers import the helpers above)
from .junit import render_junit  # noqa: E402
from .markdown import render_markdown  # noqa: E402
from .model_card import render_model_card  # noqa: E402

__all__ = ["render_all", "render_html", "render_junit", "render_markdown", "render_model_card"]
