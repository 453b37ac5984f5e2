"""How often do the shipped release gates fail a build? False fails and detection by simulation.

    python benchmarks/gate_simulation.py [--builds 300] [--search-builds 300] [--n-boot 0] [--seed 0] [--jobs 2]

This simulates the rule edgefair ships, through the real path: per build, group masks
(``groups.group_masks``), labels, baseline and step probabilities go through
``stats.Evaluator(...).compare(step, base)``; the result is wrapped in a minimal report and judged
by ``gates.apply_gates`` with a ``recipe.GatesConfig(<one gate>, defaults=False, on_undecided=...)``
(confidence 0.95, min_group_size 50), once per ``on_undecided`` policy (warn, fail,
fail_if_observed) on the same statistics. A group *fails* when its gate entry has status ``fail``.

Data (one draw per build, seeded by ``(--seed, build)``): 9,239 rows in 8 cells of ``sex`` x
``race`` with fixed sizes and fixed numbers of positives (class 1):

    Female&White 2,961 (1,000 positive)   Male&White 4,039 (2,020)
    Female&Black   264 (132)              Male&Black   736 (300)
    Female&Asian   300 (150)              Male&Asian   539 (270)
    Female&Other    68 (34)               Male&Other   332 (166)

so the 14 groups (2 sexes, 4 races, 8 intersections) have 68, 264, 300, 332, 400, 539, 736, 839,
1,000, 2,961, 3,593, 4,039, 5,646 and 7,000 rows, all >= 50 and all tested. The baseline is right
on each row with probability 0.85 (``--base-accuracy``), independently of the label; confidences
are uniform in [0.55, 0.99] (they do not enter the accuracy or TPR gates). The step is the baseline
with some predictions flipped:

- ``identical``: no flip (the same model twice).
- ``null churn``: in every cell, baseline-correct and baseline-wrong rows are flipped with
  probabilities that give ``--churn`` / 2 of the cell's rows in expectation each way (2% churn,
  true accuracy and TPR change 0 in every group).
- ``k-row loss in G``: the null churn plus k extra correct -> wrong flips among G's rows (for the
  TPR gate: among G's positive rows). The k rows are the first k of a fixed random order per build,
  so the injections are nested in k and every build's outcome is monotone in k.
- ``half-limit drop everywhere``: the null churn plus, in every cell, baseline-correct rows flipped
  to wrong with probability such that the expected extra loss is half the accuracy limit (0.5% of
  the cell's rows at the default 1-point limit): a true harm within the limit in every group.

Accuracy and TPR decisions use only the paired counts (Tango's score interval and test), not the
bootstrap, so ``--n-boot`` defaults to 0 (it changes the time, not a single decision).

Run time: about 4 minutes on 2 busy cores with the defaults (1 minute without the search).

The search for "the smallest drop that fails >= 50% of builds" injects k rows into one group of
68, 264, 839 or 2,961 rows (on top of the churn) and bisects k on a grid of max(1, n / 1000) rows
(0.1 point), with the same builds at every k.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread per worker process

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefair import intervals as iv  # noqa: E402
from edgefair.gates import apply_gates  # noqa: E402
from edgefair.groups import group_masks  # noqa: E402
from edgefair.recipe import GatesConfig  # noqa: E402
from edgefair.stats import Evaluator, StatsConfig  # noqa: E402

POLICIES = ("warn", "fail", "fail_if_observed", "fail_if_significant")
CONFIDENCE = 0.95
MIN_GROUP_SIZE = 50
POSITIVE = 1

# (sex, race) -> (rows, positives)
CELLS = {
    ("Female", "White"): (2961, 1000), ("Male", "White"): (4039, 2020),
    ("Female", "Black"): (264, 132), ("Male", "Black"): (736, 300),
    ("Female", "Asian"): (300, 150), ("Male", "Asian"): (539, 270),
    ("Female", "Other"): (68, 34), ("Male", "Other"): (332, 166),
}
N_ROWS = sum(m for m, _ in CELLS.values())
# the groups the figures are about
G68, G264, G839, G1000, G2961 = ("sex=Female&race=Other", "sex=Female&race=Black", "race=Asian",
                                 "race=Black", "sex=Female&race=White")
TPR300, TPR1000 = "sex=Male&race=Black", "sex=Female&race=White"  # 300 and 1,000 positives
SEARCH = {68: G68, 264: G264, 839: G839, 2961: G2961}
TARGET_ID = {g: i for i, g in enumerate((G68, G264, G839, G1000, G2961, TPR300))}


# ---- data ------------------------------------------------------------------------------------------


def _attributes() -> dict[str, np.ndarray]:
    sex = np.concatenate([[s] * m for (s, _), (m, _) in CELLS.items()])
    race = np.concatenate([[r] * m for (_, r), (m, _) in CELLS.items()])
    return {"sex": sex, "race": race}


ATTRIBUTES = _attributes()
MASKS = group_masks(ATTRIBUTES, intersections=True)
CELL_OF_ROW = np.repeat(np.arange(len(CELLS)), [m for m, _ in CELLS.values()])
GROUP_N = {k: int(v.sum()) for k, v in MASKS.items()}
_CELL_START = np.cumsum([0] + [m for m, _ in CELLS.values()])[:-1]
GROUP_POS = {k: sum(p for start, (_, p) in zip(_CELL_START, CELLS.values()) if v[start]) for k, v in MASKS.items()}


@dataclass
class Build:
    """One build's evaluation set and baseline, and the null churn drawn on top of it."""

    seed: int
    index: int
    y: np.ndarray
    base_pred: np.ndarray
    base_correct: np.ndarray
    churn: np.ndarray  # rows flipped by the null churn
    conf: np.ndarray


def draw(seed: int, index: int, *, base_accuracy: float, churn: float) -> Build:
    rng = np.random.default_rng([seed, index])
    y = np.zeros(N_ROWS, dtype=np.int64)
    start = 0
    for m, positives in CELLS.values():
        y[start + rng.permutation(m)[:positives]] = 1
        start += m
    base_correct = rng.random(N_ROWS) < base_accuracy
    base_pred = np.where(base_correct, y, 1 - y)
    u = rng.random(N_ROWS)
    flip = np.zeros(N_ROWS, dtype=bool)
    for c, (m, _) in enumerate(CELLS.values()):  # equal expected correct->wrong and wrong->correct flips per cell
        rows = CELL_OF_ROW == c
        half = churn * m / 2
        n_c, n_w = (rows & base_correct).sum(), (rows & ~base_correct).sum()
        flip |= rows & np.where(base_correct, u < half / max(n_c, 1), u < half / max(n_w, 1))
    return Build(seed, index, y, base_pred, base_correct, flip, rng.uniform(0.55, 0.99, N_ROWS))


def loss_order(b: Build, group: str, *, positives_only: bool = False) -> np.ndarray:
    """A fixed random order of the group's rows that an extra correct -> wrong flip may hit."""
    eligible = MASKS[group] & b.base_correct & ~b.churn
    if positives_only:
        eligible &= b.y == POSITIVE
    rows = np.flatnonzero(eligible)
    return rows[np.random.default_rng([b.seed, b.index, 1000 + TARGET_ID[group]]).permutation(len(rows))]


def with_loss(b: Build, group: str, k: int, *, positives_only: bool = False) -> np.ndarray:
    rows = loss_order(b, group, positives_only=positives_only)
    if k > len(rows):
        raise ValueError(f"{group}: cannot inject {k} losses, only {len(rows)} eligible rows")
    flip = b.churn.copy()
    flip[rows[:k]] = True
    return flip


def with_drop_everywhere(b: Build, drop: float) -> np.ndarray:
    """Null churn plus a true accuracy drop of ``drop`` (expected) in every cell, hence every group."""
    u = np.random.default_rng([b.seed, b.index, 2000]).random(N_ROWS)
    flip = b.churn.copy()
    eligible = b.base_correct & ~b.churn
    for c, (m, _) in enumerate(CELLS.values()):
        rows = (CELL_OF_ROW == c) & eligible
        flip |= rows & (u < drop * m / max(rows.sum(), 1))
    return flip


# ---- the real path: Evaluator -> report -> apply_gates ----------------------------------------------


def _probs(pred: np.ndarray, conf: np.ndarray) -> np.ndarray:
    return np.stack([np.where(pred == 0, conf, 1 - conf), np.where(pred == 1, conf, 1 - conf)], axis=1)


def _entry(index: int, name: str, stats: dict) -> dict:
    return {"index": index, "name": name, "model": f"{index:02d}-{name}.onnx", "size_bytes": 1_000_000,
            "latency": None, "overall": stats["overall"], "groups": stats["groups"], "disparity": stats["disparity"]}


class Judge:
    """One build's Evaluator and baseline. ``report`` runs the statistics of one step (the baseline
    with ``flip`` rows flipped); ``__call__`` judges reports with the given gates, every policy."""

    def __init__(self, b: Build, n_boot: int) -> None:
        self.b = b
        self.ev = Evaluator(MASKS, b.y, N_ROWS, StatsConfig(n_boot=n_boot, seed=b.index, min_group_size=MIN_GROUP_SIZE,
                                                            positive_label=POSITIVE))
        self.base = self.ev.model(_probs(b.base_pred, b.conf))
        self.base_entry = _entry(0, "baseline", self.ev.compare(self.base))

    def report(self, flip: np.ndarray) -> dict:
        step_pred = np.where(flip, 1 - self.b.base_pred, self.b.base_pred)
        stats = self.ev.compare(self.ev.model(_probs(step_pred, self.b.conf)), self.base)
        return {"steps": [self.base_entry, _entry(1, "step", stats)], "data": {"eval": {"labelled": True}}}

    def __call__(self, jobs: dict[str, tuple[dict, list[tuple[str, float]]]]) -> dict[str, dict]:
        """name -> (report, gates) to name -> {(gate, limit, policy): {group: (status, decision)}};
        each gate is applied on its own (its own Holm family)."""
        out = {}
        for name, (report, gates) in jobs.items():
            out[name] = {}
            for gate, limit in gates:
                for policy in POLICIES:
                    cfg = GatesConfig(**{gate: limit}, defaults=False, on_undecided=policy)
                    apply_gates(report, cfg, confidence=CONFIDENCE, min_group_size=MIN_GROUP_SIZE,
                                positive_label=POSITIVE, output="logits", select=None)
                    entries = [e for e in report["steps"][1]["gates"] if e["gate"] == gate]
                    out[name][(gate, limit, policy)] = {e["group"]: (e["status"], e["decision"]) for e in entries}
        return out


# ---- scenarios -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    seed: int
    n_boot: int
    base_accuracy: float
    churn: float
    limit: float  # accuracy gate
    tpr_limits: tuple[float, ...]


def main_scenarios(args: tuple[Settings, int]) -> dict:
    """Every fixed scenario on one build: scenario -> (gate, limit, policy) -> {group: (status, decision)}."""
    s, index = args
    b = draw(s.seed, index, base_accuracy=s.base_accuracy, churn=s.churn)
    acc = [("max_group_accuracy_drop", s.limit)]
    tpr = [("max_group_tpr_drop", t) for t in s.tpr_limits]
    judge = Judge(b, s.n_boot)
    return judge({
        "identical": (judge.report(np.zeros(N_ROWS, dtype=bool)), acc + tpr),
        "null": (judge.report(b.churn), acc + tpr),
        "loss5_68": (judge.report(with_loss(b, G68, 5)), acc),
        "drop3_1000": (judge.report(with_loss(b, G1000, round(0.03 * GROUP_N[G1000]))), acc),
        "half_everywhere": (judge.report(with_drop_everywhere(b, s.limit / 2)), acc),
        "tpr3_300": (judge.report(with_loss(b, TPR300, round(0.03 * GROUP_POS[TPR300]), positives_only=True)), tpr),
        "tpr3_1000": (judge.report(with_loss(b, TPR1000, round(0.03 * GROUP_POS[TPR1000]), positives_only=True)), tpr),
    })


def search_task(args: tuple[Settings, int, list[tuple[int, int]]]) -> dict:
    """For one build: (size, k) -> {policy: whether the size's group fails} with k rows lost in it."""
    s, index, requests = args
    b = draw(s.seed, index, base_accuracy=s.base_accuracy, churn=s.churn)
    judge = Judge(b, s.n_boot)
    gate = ("max_group_accuracy_drop", s.limit)
    res = judge({(size, k): (judge.report(with_loss(b, SEARCH[size], k)), [gate]) for size, k in requests})
    return {(size, k): {p: r[(*gate, p)][SEARCH[size]][0] == "fail" for p in POLICIES} for (size, k), r in res.items()}


def smallest_failing_drops(pool, s: Settings, builds: int, log) -> dict[tuple[int, str], tuple[int, float] | None]:
    """Per (size, policy): the smallest k (on the grid) failing the group in >= 50% of builds, and that rate."""
    step = {n: max(1, round(n / 1000)) for n in SEARCH}
    cap = {n: int(0.5 * n) // step[n] for n in SEARCH}  # grid index limit: a 50-point drop
    guess = {n: int(np.ceil(iv.smallest_failing_loss(n, s.limit, (1 - CONFIDENCE) / len(MASKS)) * n / step[n]))
             for n in SEARCH}
    rates: dict[tuple[int, int], dict[str, float]] = {}  # (size, grid index) -> policy -> rate
    todo = {(n, j) for n in SEARCH for j in (0, guess[n])}
    rounds = 0
    while todo:
        rounds += 1
        reqs = sorted(todo)
        tasks = [(s, i, [(n, j * step[n]) for n, j in reqs]) for i in range(builds)]
        totals = {r: dict.fromkeys(POLICIES, 0) for r in reqs}
        for res in pool.imap_unordered(search_task, tasks, chunksize=max(1, builds // 16)):
            for (n, k), fails in res.items():
                for p, f in fails.items():
                    totals[(n, k // step[n])][p] += f
        for r in reqs:
            rates[r] = {p: v / builds for p, v in totals[r].items()}
        log(f"  search round {rounds}: {len(reqs)} (size, k) points")
        todo = set()
        for n in SEARCH:
            for p in POLICIES:
                seen = sorted(j for (m, j) in rates if m == n)
                hit = [j for j in seen if rates[(n, j)][p] >= 0.5]
                hi = min(hit) if hit else None
                lo = max([j for j in seen if rates[(n, j)][p] < 0.5 and (hi is None or j < hi)], default=-1)
                if hi is None:
                    if max(seen) < cap[n]:
                        todo.add((n, min(cap[n], 2 * max(seen) + 1)))
                elif hi - lo > 1:
                    todo.add((n, (lo + hi) // 2))
    out = {}
    for n in SEARCH:
        for p in POLICIES:
            hit = sorted(j for (m, j) in rates if m == n and rates[(m, j)][p] >= 0.5)
            out[(n, p)] = None if not hit else (hit[0] * step[n], rates[(n, hit[0])][p])
    return out


# ---- summary ---------------------------------------------------------------------------------------


def share(results: list[dict], scenario: str, gates: tuple | list[tuple], policy: str, test) -> float:
    """Share of builds in which ``test`` holds for one gate's groups, or (a list of gates) for any of them."""
    gates = gates if isinstance(gates, list) else [gates]
    return float(np.mean([any(bool(test(r[scenario][(*g, policy)])) for g in gates) for r in results]))


def any_fail(groups: dict) -> bool:
    return any(status == "fail" for status, _ in groups.values())


def fails(group: str):
    return lambda groups: groups[group][0] == "fail"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=300, help="simulated builds per fixed scenario")
    parser.add_argument("--search-builds", type=int, default=None,
                        help="builds per point of the smallest-failing-drop search (default: --builds; 0 skips it)")
    parser.add_argument("--n-boot", type=int, default=0,
                        help="bootstrap replicates per evaluation (accuracy and TPR gates do not use them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--churn", type=float, default=0.02, help="share of rows flipped, half each way, true change 0")
    parser.add_argument("--base-accuracy", type=float, default=0.85)
    parser.add_argument("--limit", type=float, default=0.01, help="max_group_accuracy_drop")
    parser.add_argument("--tpr-limits", type=float, nargs="+", default=[0.02, 0.03], help="max_group_tpr_drop values")
    args = parser.parse_args(argv)
    search_builds = args.builds if args.search_builds is None else args.search_builds
    s = Settings(args.seed, args.n_boot, args.base_accuracy, args.churn, args.limit, tuple(args.tpr_limits))

    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(args.jobs) as pool:
        results = list(pool.imap(main_scenarios, [(s, i) for i in range(args.builds)], chunksize=max(1, args.builds // 32)))
        log(f"fixed scenarios: {args.builds} builds")
        search = smallest_failing_drops(pool, s, search_builds, log) if search_builds else {}
    wall = time.perf_counter() - t0

    acc = ("max_group_accuracy_drop", args.limit)
    big = [g for g, n in GROUP_N.items() if n >= 200]
    half = 100 * args.limit / 2
    print(f"edgefair gates, decision = ci, confidence {CONFIDENCE}, min_group_size {MIN_GROUP_SIZE}; "
          f"{args.builds} builds (seed {args.seed}), 14 groups of 68-7,000 rows, baseline accuracy "
          f"{args.base_accuracy:.0%}, churn {args.churn:.0%}, n_boot {args.n_boot}")
    print(f"accuracy gate: max_group_accuracy_drop = {args.limit}; TPR gate: max_group_tpr_drop = "
          + " / ".join(str(t) for t in args.tpr_limits) + "\n")

    rows = [
        ("a. null churn: any group fails (target <= 5%)", "null", acc, any_fail),
        ("b. identical model: any group >= 200 rows undecided (target 0)", "identical", acc,
         lambda g: any(g[k][1] == "undecided" for k in big)),
        ("b. identical model: any group fails", "identical", acc, any_fail),
        (f"d. 5-row loss in {G68} (68 rows, 7.4 pt): it fails", "loss5_68", acc, fails(G68)),
        (f"e. 3-pt drop (30 rows) in {G1000} (1,000 rows): it fails (target >= 90%)", "drop3_1000", acc, fails(G1000)),
        (f"f. true {half:g}-pt drop in every group: any group fails", "half_everywhere", acc, any_fail),
    ]
    for n, g in ((68, G68), (264, G264), (839, G839), (1000, G1000), (2961, G2961)):
        rows.append((f"f. true {half:g}-pt drop in every group: {g} ({n:,} rows) fails", "half_everywhere", acc, fails(g)))
    for t in args.tpr_limits:
        tg = ("max_group_tpr_drop", t)
        rows += [
            (f"g. TPR {t}: null churn: any group fails", "null", tg, any_fail),
            (f"a+g. null churn: any group fails accuracy {args.limit} or TPR {t}", "null", [acc, tg], any_fail),
            (f"g. TPR {t}: identical model: any group fails", "identical", tg, any_fail),
            (f"g. TPR {t}: 3-pt TPR drop (9 rows) in {TPR300} (300 positives): it fails", "tpr3_300", tg, fails(TPR300)),
            (f"g. TPR {t}: 3-pt TPR drop (30 rows) in {TPR1000} (1,000 positives): it fails", "tpr3_1000", tg, fails(TPR1000)),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'figure':<{width}} | " + " | ".join(f"{p:>16}" for p in POLICIES) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * 17 + ":" for _ in POLICIES) + "|")
    for label, scenario, gate, test in rows:
        print(f"| {label:<{width}} | " + " | ".join(f"{pct(share(results, scenario, gate, p, test)):>16}" for p in POLICIES) + " |")

    # which groups an identical model leaves undecided (deterministic: no discordant row in any build)
    ident = results[0]["identical"]
    for gate, unit, size in [(acc, "rows", GROUP_N)] + [(("max_group_tpr_drop", t), "positives", GROUP_POS) for t in args.tpr_limits]:
        und = sorted((size[k], k) for k, (_, d) in ident[(*gate, "warn")].items() if d == "undecided")
        print(f"\nidentical model, {gate[0]} = {gate[1]}: undecided groups ({unit}): "
              + (", ".join(f"{k} ({n})" for n, k in und) or "none"))
    z2 = iv.z_value(CONFIDENCE) ** 2
    print(f"(with no discordant row the upper bound is z^2/(n+z^2): within {args.limit} needs n >= "
          f"{int(np.ceil(z2 * (1 - args.limit) / args.limit))}"
          + "".join(f", within {t} n >= {int(np.ceil(z2 * (1 - t) / t))}" for t in args.tpr_limits) + ")")

    if search:
        print(f"\nsmallest accuracy drop (rows injected on top of the churn, grid max(1, n/1000) rows) that fails the group "
              f"in >= 50% of {search_builds} builds; 'analytic' = min_detectable (no churn, Bonferroni level 0.05/14):")
        print("| n | group | analytic | " + " | ".join(POLICIES) + " |")
        print("|---:|---|---:|" + "---:|" * len(POLICIES))
        for n, g in SEARCH.items():
            md = iv.smallest_failing_loss(n, args.limit, (1 - CONFIDENCE) / len(MASKS))
            cells = []
            for p in POLICIES:
                hit = search[(n, p)]
                cells.append("none up to 50 pt" if hit is None else f"{100 * hit[0] / n:.1f} pt ({hit[0]} rows, {pct(hit[1])})")
            print(f"| {n:,} | {g} | {100 * md:.1f} pt | " + " | ".join(cells) + " |")
    print(f"\nwall time {wall:.0f} s ({args.jobs} worker processes)")


if __name__ == "__main__":
    main()
