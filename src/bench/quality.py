"""The quality benchmark: SSLKD against its alternatives on enough nodules to tell.

Order (most important first, so that a run cut short still answers the main question):
1. the references that need no training, on every set;
2. the default set: every arm of ``MAIN_ARMS`` at the first seed (every default-set arm is
   scored on the second hold-out batch too, and the report pools both batches); each of
   ``SCORED_ON_SHIFTED`` also scored on every shifted set (without retraining) as soon as
   it exists, and the throughput of a teacher, the ensemble and the student once the SSLKD
   student exists;
3. the learning curve: fine-only and SSLKD at other fine-mask fractions (the mission's
   question: do coordinates help most when fine masks are scarcest?);
4. each shifted set: the SSL recipe trained and scored on it;
5. the key arms (``SECOND_SEED_ARMS``) and the learning curve's scarcest point at the other
   seeds.
Steps 2-5 are ``PARTS``: a run may do some of them (``--part``), so that two processes (or
machines sharing the folder) can split the protocol. Give each process other parts: a step
finished by anyone is skipped, but nothing stops two processes training the same arm at once.
Then ``report.md``, the CSVs and the figures are written from everything scored so far
(``bench/quality.py --report-only`` writes them from a run in progress).
"""
from __future__ import annotations

import pandas as pd

from src.bench import report as rep
from src.bench.protocol import (DEFAULT, MAIN_ARMS, SCORED_ON_SHIFTED, SECOND_BATCH, SECOND_SEED_ARMS, SSL,
                                SSLKD, learning_curve_arms)
from src.bench.runner import REFERENCES, UNPROMPTED, BenchRun, write_pseudo_quality
from src.data.groups import GROUPS
from src.errors import DataError
from src.utils import atomic_to_csv, atomic_write_text

ON_DEFAULT = " (trained on default)"
ATTACHED = "attached (pleural + vascular)"
SHIFT_GROUPINGS = ("texture", "attachment")   # kinds a shift may hurt unequally: faint, or touching wall/vessel
PARTS = ("main", "curve", "shifted", "seeds")


def train_and_score(run: BenchRun, cond, arms: dict, names, seed: int) -> None:
    for name in names:
        arm = arms[name]
        ctx = run.train(cond, arm, seed, teachers=arms.get(arm.teachers))
        run.score_arm(cond, arm, seed, ctx)
        if cond is DEFAULT and run.budget.second_batch_scans:   # more hold-out nodules, pooled in the report
            run.score_arm(cond, arm, seed, ctx, on=SECOND_BATCH)
        if arm.kind == "student":
            write_pseudo_quality(run, cond, seed, ctx, arm.teachers)


def run_quality(run: BenchRun, parts: tuple[str, ...] = PARTS) -> str:
    """Train and score the protocol's ``parts`` (skipping what is done), then the report."""
    budget = run.budget
    run.claim_folder()
    arms = {a.name: a for a in MAIN_ARMS if not budget.arms or a.name in budget.arms}
    for cond in budget.conditions():
        run.prepare(cond)

    seed0 = budget.seeds[0]
    for cond in budget.conditions():   # no training: first
        run.score_references(cond)
    for name in arms if "main" in parts else ():
        train_and_score(run, DEFAULT, arms, [name], seed0)
        if name in SCORED_ON_SHIFTED:   # the default set's model on every shifted set, as soon as it exists
            ctx = run.context(DEFAULT, arms[name], seed0)
            for cond in budget.shifted:
                run.score_arm(DEFAULT, arms[name], seed0, ctx, label=name + ON_DEFAULT, on=cond)
        if name == SSLKD and SSL in arms:   # throughput, once both exist (nothing else runs then)
            run.speed(run.context(DEFAULT, arms[SSL], seed0), run.context(DEFAULT, arms[SSLKD], seed0))

    for fraction in budget.learning_curve if "curve" in parts else ():
        curve = {a.name: a for a in learning_curve_arms(fraction)}
        train_and_score(run, DEFAULT, curve, list(curve), seed0)

    for cond in budget.shifted if "shifted" in parts else ():
        train_and_score(run, cond, arms, budget.shifted_arms, seed0)

    for seed in budget.seeds[1:] if "seeds" in parts else ():  # last: other seeds only narrow the CIs
        train_and_score(run, DEFAULT, arms, [a for a in SECOND_SEED_ARMS if a in arms], seed)
        if budget.learning_curve:   # the scarcest fine masks: where the coordinates should help most
            curve = {a.name: a for a in learning_curve_arms(min(budget.learning_curve))}
            train_and_score(run, DEFAULT, curve, list(curve), seed)

    text = report_so_far(run)
    run.log(f"report -> {run.out / 'report.md'}")
    return text


def report_so_far(run: BenchRun) -> str:
    """The report from everything scored in ``run.out`` (by this run, earlier ones or a run
    in progress): every score written, the OOF spread of every scored teacher arm, the speed
    if measured."""
    tables = {p: pd.read_csv(p) for p in sorted((run.out / "scores").glob("*/*/*.csv"))}
    # scored before the sphere fallback: another rule, rescored by the next run (BenchRun.scored)
    stale = [p for p, t in tables.items() if "sphere_fallback" not in t]
    tables = {p: t for p, t in tables.items() if p not in stale}
    if not tables:
        raise DataError(f"{run.out / 'scores'}: nothing scored yet" + (f" under the current rule ({len(stale)} "
                        "file(s) from before the sphere fallback: a run rescores them)" if stale else ""))
    for p in stale:
        run.log(f"not in the report: {p.relative_to(run.out)} (scored before the sphere fallback; a run rescores it)")
    rows = pd.concat(tables.values(), ignore_index=True)
    arms = [*MAIN_ARMS, *(a for f in run.budget.learning_curve for a in learning_curve_arms(f))]
    folds_rows = []
    for cond in (c for c in run.budget.conditions() if not c.holdout_only):
        for seed in run.budget.seeds:
            for arm in arms:
                if arm.kind != "teachers" or not (run.scores_path(cond, seed, arm.name)).is_file():
                    continue
                ctx = run.context(cond, arm, seed)
                folds_rows.append(run.oof_folds(ctx).assign(condition=cond.name, seed=seed, model=arm.name))
    folds = pd.concat(folds_rows, ignore_index=True) if folds_rows else pd.DataFrame()
    speed = pd.read_csv(run.out / "speed.csv") if (run.out / "speed.csv").is_file() else pd.DataFrame()
    return write_report(run, rows, folds, _pseudo_tables(run), speed)


def pool_hold_out_batches(rows: pd.DataFrame) -> pd.DataFrame:
    """The second hold-out batch's scores counted as the default set's (the same generator and
    settings, patients no model saw), tagged with their batch (1: a condition's own hold-out)."""
    second = rows["condition"] == SECOND_BATCH.name
    return rows.assign(condition=rows["condition"].mask(second, DEFAULT.name), hold_out_batch=second + 1)


def _pseudo_tables(run: BenchRun) -> pd.DataFrame:
    # pseudo/<condition>/seed<k>/<teachers>.csv (older runs' pseudo/<condition>/seed<k>.csv
    # held whichever student came last, under no teacher's name: not read)
    paths = sorted((run.out / "pseudo").glob("*/*/*.csv"))
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True) if paths else pd.DataFrame()


# ----------------------------------------------------------------------------- report


def write_report(run: BenchRun, rows: pd.DataFrame, folds: pd.DataFrame, pseudo: pd.DataFrame,
                 speed: pd.DataFrame) -> str:
    out, budget = run.out, run.budget
    rows = pool_hold_out_batches(rows)
    atomic_to_csv(rows, out / "per_nodule.csv", float_format="%.5g")
    atomic_to_csv(folds, out / "oof_folds.csv", float_format="%.5g")
    means = rep.per_nodule_means(rows)
    atomic_to_csv(means, out / "per_nodule_seed_means.csv", float_format="%.5g")
    scored = set(rows["model"])
    main_models = [m for m in [a.name for a in MAIN_ARMS] + [SSL + UNPROMPTED, SSLKD + UNPROMPTED] + list(REFERENCES)
                   if m in scored]
    lines = [f"# Quality benchmark ({budget.name}): `python bench/quality.py --budget {budget.name}`",
             "", f"Training seeds {list(budget.seeds)}; per-nodule Dice averaged over the seeds a model has, then "
             "over nodules; 95% CIs by bootstrap over nodules. Every model is scored on the same hold-out nodules "
             "through the one truth-free path (centre + diameter only).", ""]

    # 1. the default set (both hold-out batches)
    n_nod = means.loc[means["condition"] == DEFAULT.name, "nodule_uid"].nunique()
    lines += [f"## Default set: {n_nod} hold-out nodules", "", rep.markdown(rep.summary(rows, DEFAULT.name, main_models)), ""]
    batches = by_batch(rows, means, main_models)
    if "batch 2" in batches:
        lines += [f"### By hold-out batch (batch 2: {SECOND_BATCH.description}; scored, never trained on)", "",
                  rep.markdown(batches), ""]
    for by, grouping in GROUPS.items():
        lines += [f"### Dice by {grouping.title}", "",
                  rep.markdown(rep.breakdown(rows, DEFAULT.name, main_models, by)), ""]
    curve = [(f"{arm} @ {100 * f:g}%", f"fine only @ {100 * f:g}%") for f in budget.learning_curve for arm in (SSL, SSLKD)]
    pairs = [(SSLKD, other) for other in main_models if other != SSLKD] + [(SSL, "fine only"), (SSL, REFERENCES[0]),
                                                                          ("full supervision", "fine only"), *curve]
    pairs = [(a, b) for a, b in pairs if a in scored and b in scored]
    paired = pd.DataFrame([rep.paired_difference(means, DEFAULT.name, a, b) for a, b in pairs])
    atomic_to_csv(paired, out / "paired_differences.csv", float_format="%.5g")
    lines += ["### Paired per-nodule Dice differences (a - b), 95% bootstrap CI", "", rep.markdown(paired), ""]
    by_group = paired_by_group(means, [(a, b) for a, b in pairs if REFERENCES[1] in (a, b)])
    if not by_group.empty:
        atomic_to_csv(by_group, out / "paired_differences_by_group.csv", float_format="%.5g")
        lines += ["### The same against half-max, by attachment, size and texture", "", rep.markdown(by_group), ""]
    rep.bar_chart(rows, DEFAULT.name, main_models, out / "dice_by_arm.png",
                  f"default set, {n_nod} hold-out nodules")
    lines += ["![Dice by arm](dice_by_arm.png)", ""]

    # 2. OOF fold spread, pseudo-labels, speed
    if not folds.empty:
        spread = (folds.groupby(["condition", "seed", "model"], sort=False)["mean"]
                  .agg(folds="size", lowest="min", highest="max").reset_index())
        spread["spread"] = spread["highest"] - spread["lowest"]
        lines += ["## OOF Dice per fold (teacher arms)", "", rep.markdown(spread), ""]
    if not pseudo.empty:
        pq = pseudo.groupby(["condition", "seed", "teachers"], sort=False).agg(
            nodules=("dice_3d", "size"), pseudo_dice=("dice_3d", "mean"), sphere_dice=("sphere_dice", "mean")).reset_index()
        lines += ["## Pseudo-labels (each teacher arm's ensemble) against the withheld masks of coarse scans", "",
                  rep.markdown(pq), ""]
    if not speed.empty:
        lines += ["## Throughput (same run, CPU)", "", rep.markdown(speed.round(3)), ""]

    # 3. shifted conditions
    cond_rows = []
    for cond in budget.shifted:
        for model in [SSL, SSLKD, *REFERENCES, *[m + ON_DEFAULT for m in (SSL, SSLKD, "fine only", "full supervision")]]:
            mean, low, high = rep.mean_ci(means, cond.name, model)
            if pd.notna(mean):
                cond_rows.append(dict(condition=cond.name, model=model, dice=mean, ci_low=low, ci_high=high,
                                      nodules=int(((means["condition"] == cond.name) & (means["model"] == model)).sum())))
    if cond_rows:
        lines += ["## Shifted conditions: (a) trained on the condition; (b) the default set's models", "",
                  "; ".join(f"**{c.name}**: {c.description}" for c in budget.shifted), "",
                  rep.markdown(pd.DataFrame(cond_rows)), ""]
        atomic_to_csv(pd.DataFrame(cond_rows), out / "conditions.csv", float_format="%.5g")
        for cond in budget.shifted:
            models = [m for m in rows.loc[rows["condition"] == cond.name, "model"].unique()]
            for by in SHIFT_GROUPINGS:
                lines += [f"### {cond.name}: Dice by {GROUPS[by].title}", "",
                          rep.markdown(rep.breakdown(rows, cond.name, models, by)), ""]

    # 4. learning curve
    if budget.learning_curve:
        points = []
        for fraction in sorted({*budget.learning_curve, 0.2, 1.0}):
            pct = f"{100 * fraction:g}%"
            names = {family: family if fraction == 0.2 else f"{family} @ {pct}" for family in ("fine only", SSL, SSLKD)}
            if fraction == 1.0:
                names = {"fine only": "full supervision"}
            for family, model in names.items():
                mean, low, high = rep.mean_ci(means, DEFAULT.name, model)
                if pd.notna(mean):
                    points.append(dict(fraction=fraction, family=family, model=model, dice=mean, ci_low=low,
                                       ci_high=high))
        if not points:   # a report of a run in progress, before any arm of the curve is scored
            lines += ["## Learning curve (default set)", "", "No arm of the curve is scored yet.", ""]
        else:
            points = pd.DataFrame(points)
            atomic_to_csv(points, out / "learning_curve.csv", float_format="%.5g")
            refs = {name: rep.mean_ci(means, DEFAULT.name, name)[0] for name in REFERENCES[:2]}
            rep.learning_curve(points, refs, out / "learning_curve.png")
            lines += ["## Learning curve (default set)", "", rep.markdown(points), "",
                      "![learning curve](learning_curve.png)", ""]
    text = "\n".join(lines)
    atomic_write_text(out / "report.md", text)
    return text


def paired_by_group(means: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """Each pair's paired difference on the default set within every group of every grouping
    (the issue's targets are per class: attached nodules, the small size bins, ground glass),
    plus the juxta-pleural and juxta-vascular classes pooled as ``ATTACHED``."""
    sel = means[means["condition"] == DEFAULT.name]
    classes = [(by, label, sel[by] == label) for by, grouping in GROUPS.items() for label in grouping.labels
               if (sel[by] == label).any()]
    attached = sel["attachment"].isin(("juxta-pleural", "juxta-vascular"))
    if attached.any():
        classes.append(("attachment", ATTACHED, attached))
    return pd.DataFrame([{"grouping": by, "group": label, **rep.paired_difference(sel[members], DEFAULT.name, a, b)}
                         for a, b in pairs for by, label, members in classes])


def by_batch(rows: pd.DataFrame, means: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Mean Dice (nodules) per model on each hold-out batch of the default set: do they agree?"""
    batch_of = rows.drop_duplicates("nodule_uid").set_index("nodule_uid")["hold_out_batch"]
    sel = means[means["condition"] == DEFAULT.name]
    sel = sel.assign(hold_out_batch=sel["nodule_uid"].map(batch_of))
    return pd.DataFrame([{"model": model, **{f"batch {b}": f"{d.mean():.3f} ({d.size})"
                                             for b, d in sel[sel["model"] == model].groupby("hold_out_batch")["dice"]}}
                         for model in models])
