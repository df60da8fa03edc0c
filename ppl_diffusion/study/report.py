"""The study's outputs: CSV tables, PNG figures and a markdown report, all rendered from ``study.json``.

:func:`render` rewrites them from the dict alone; ``python -m ppl_diffusion.study.report DIR`` re-derives
what follows from the stored data (:func:`refresh`) and re-renders a finished study, without rerunning it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..plots import _figures, _save
from .fixed import ESS_RANGE, ess_flag

REFERENCES = ("stochastic-kl", "continuous")  # variance ratios are to the first of these in the table


def _T(meta: dict) -> str:
    return "∞ (continuous time)" if meta["T"] == 0 else str(meta["T"])


def write_csv(path: Path, rows: list[dict]) -> Path:
    """``rows`` (dicts with the keys of the first) as a CSV table at ``path``; list values joined by ``;``.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from ppl_diffusion.study.report import write_csv
    >>> with tempfile.TemporaryDirectory() as out:
    ...     path = write_csv(Path(out) / "rows.csv", [{"t": 1, "notes": ["a", "b"]}, {"t": 2, "notes": []}])
    ...     path.read_text().splitlines()
    ['t,notes', '1,a;b', '2,']
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0]) if rows else []
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (";".join(v) if isinstance(v, list) else v) for k, v in r.items()})
    return path


def _ess(row: dict) -> str:
    """arviz's ESS of a fixed-θ row, marked † when it departs from R (:func:`.fixed.ess_flag`)."""
    return f"{row['elbo_ess']:.0f}" + (" †" if ess_flag(row["elbo_ess"], row["replicates"]) else "")


def _g(x, spec=".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def fixed_theta_figure(rows: list[dict], path: Path, title: str) -> Path:
    """Variance of the ELBO estimate, of the gradient, and both efficiencies, per estimator (log scale)."""
    plt = _figures()
    names = [r["estimator"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 0.45 * len(rows) + 1.8), sharey=True)
    y = np.arange(len(rows))
    panels = [("elbo_sd", "sd of the ELBO estimate (nats / example)"),
              ("grad_total_variance", "tr Cov of the gradient"),
              ("grad_efficiency", "gradient efficiency 1 / (tr Cov × s)")]
    for ax, (key, label) in zip(axes, panels):
        vals = [max(r[key], 1e-300) for r in rows]
        ax.barh(y, vals, color=["C3" if r["family"] == "IWAE" else ("C0" if r["family"] == "full chain" else "C2")
                                for r in rows])
        ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    return _save(fig, path)


def per_t_figure(per_t_rows: list[dict], path: Path, title: str) -> Path:
    plt = _figures()
    t = np.array([r["t"] for r in per_t_rows])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    ax.plot(t, [r["var_mc"] for r in per_t_rows], label="Monte-Carlo step term", lw=1, color="C1")
    ax.plot(t, [r["var_kl"] for r in per_t_rows], label="analytic step term (closed-form KL)", lw=1, color="C0")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("Var of L_(t−1) at fixed x_0 (nats²), batch mean")
    ax.legend()
    ax = axes[1]
    ax.plot(t, [r["mean_kl"] for r in per_t_rows], label="E L_(t−1)", lw=1, color="C0")
    ax.plot(t, [math.sqrt(max(r["second_moment_kl"], 0)) for r in per_t_rows], label="√E[L_(t−1)²] (analytic)",
            lw=1, ls="--", color="C0")
    ax.plot(t, [math.sqrt(max(r["second_moment_mc"], 0)) for r in per_t_rows], label="√E[L_(t−1)²] (Monte Carlo)",
            lw=1, ls="--", color="C1")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("nats per example")
    ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def race_figure(rows: list[dict], path: Path, title: str) -> Path:
    plt = _figures()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    for i, name in enumerate(names):
        pts = sorted((r for r in rows if r["estimator"] == name), key=lambda r: r["point"])
        pts = [r for r in pts if r["point"] > 0]
        style = dict(marker="o", ms=3, lw=1.2, color=f"C{i}", label=name)
        axes[0].plot([r["train_seconds"] for r in pts], [r["bpd"] for r in pts], **style)
        axes[1].plot([r["step"] for r in pts], [r["bpd"] for r in pts], **style)
    for ax, label in zip(axes, ("training wall time (s)", "optimizer steps")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test bits/dim (full bound)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    return _save(fig, path)


def learned_schedule_lines(sched: dict) -> list[str]:
    """The report's learned-schedule section (:mod:`ppl_diffusion.study.schedule`) from its dict."""
    intro = (f"The same θ (denoiser) and the same endpoints γ_0, γ_1 throughout: the schedule's interior "
             f"({sched['interior']}) reset to its initialisation (seed {sched['seed']}), each continuous-time "
             f"estimator measured ({sched['replicates']} replicates), then the interior alone trained for "
             f"{sched['steps']} Adam steps (lr {sched['lr']:g}, batches of {sched['batch_size']} training examples) on "
             "the variance of the diffusion estimate (`ContinuousTimeELBO(schedule_objective=\"variance\")`), and "
             "measured again with the same replicate seeds. In continuous time the ELBO depends on the endpoints "
             "only, so the means must agree (z); the variance is what the interior changes. Variances of the "
             "batch-mean ELBO estimate (nats² per example), ± SE from the draws' fourth moment; the ratio's SE by "
             "the delta method.")
    header = ("| estimator | var, initial | var, trained | trained / initial | tr Cov(grad) trained / initial | "
              "ELBO trained − initial | z |")
    lines = ["## Learned schedule: the interior trained for variance", "", intro, "", header,
             "|:---|---:|---:|---:|---:|---:|---:|"]
    for c in sched["comparison"]:
        lines.append(f"| {c['estimator']} | {_g(c['var_initial'])} ± {_g(c['var_initial_se'], '.2g')} | "
                     f"{_g(c['var_trained'])} ± {_g(c['var_trained_se'], '.2g')} | {_g(c['ratio'])} ± "
                     f"{_g(c['ratio_se'], '.2g')} | {_g(c['grad_ratio'])} | {c['mean_difference']:.3f} ± "
                     f"{c['mean_difference_se']:.3f} | {c['z']:.2f} |")
    losses = sched.get("losses") or []
    if losses:
        lines += ["", f"−ELBO per example during the interior's training: {losses[0]:.3f} at the first step, "
                  f"{losses[-1]:.3f} at the last (one batch each; its expectation does not move)."]
    return lines + [""]


def markdown(study: dict) -> str:
    """The report, from the dict written to ``study.json``: a section for each of ``fixed_theta``, ``per_t``,
    ``race`` and ``learned_schedule`` the dict holds, after the ``meta`` header.

    :param dict study: the study's dict (:func:`~ppl_diffusion.study.run_study`'s).

    Example:

    >>> meta = dict(data="eight_gaussians", net="mlp", T=10, command="ppl-diffusion compare ...", machine="cpu",
    ...             torch="2", pyro="1", arviz="0", threads=1, date="2026-12-06", theta="fresh init", batch=4,
    ...             batch_from="test examples", num_parameters=1234)
    >>> from ppl_diffusion.study.report import markdown
    >>> markdown({"meta": meta}).splitlines()[0]
    '# Estimator study: eight_gaussians, mlp denoiser, T = 10'
    """
    meta, lines = study["meta"], []
    lines += [f"# Estimator study: {meta['data']}, {meta['net']} denoiser, T = {_T(meta)}", "",
              f"- Command: `{meta['command']}`",
              f"- Machine: {meta['machine']}; torch {meta['torch']}, pyro {meta['pyro']}, arviz {meta['arviz']}, "
              f"{meta['threads']} torch thread(s); date {meta['date']}",
              *([f"- Backend: NumPyro / {meta['device']} (every estimator and the race jit-compiled; the per-t "
                 "moments on the Pyro twin at the same θ; compile time is not counted in any timing)"]
                if meta.get("backend") == "numpyro" else []),
              f"- θ: {meta['theta']}; batch of {meta['batch']} {meta['batch_from']}; "
              f"{meta['num_parameters']:,} parameters", ""]
    fixed = study.get("fixed_theta")
    if fixed:
        rows = fixed["rows"]
        ref = next((r for name in REFERENCES for r in rows if r["estimator"] == name), None)
        lines += ["## At a fixed θ", "",
                  f"{fixed['replicates']} replicates of each ELBO estimate and of each gradient "
                  f"({fixed['full_chain_replicates']} for the full-chain estimators and IWAE). ELBO in nats per "
                  "example (batch mean); mean and sd of the R replicates, independent draws (each its own seed), so "
                  "MCSE = sd / √R; ESS is arviz's bulk ESS of the draws in `draws/<estimator>.nc`, a diagnostic of "
                  f"that independence (≈ R), marked † outside [{ESS_RANGE[0]:g} R, {ESS_RANGE[1]:g} R], where R "
                  "independent draws fall in fewer than 0.3 % of simulations (arviz caps it at R·log10 R). "
                  "Gradient: of the per-example loss, over all parameters. Efficiency = "
                  "1 / (variance × seconds per call). Ratios are to "
                  f"`{ref['estimator'] if ref else REFERENCES[0]}`.", "",
                  "| estimator | ELBO ± MCSE | sd | ESS | ms / estimate | ELBO eff. | var / ref | ms / grad | "
                  "tr Cov(grad) | SNR | grad eff. | grad var / ref |",
                  "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if r["bound"] != "ELBO":
                continue
            lines.append(
                f"| {r['estimator']} | {r['elbo_mean']:.3f} ± {r['elbo_mcse']:.3f} | {_g(r['elbo_sd'])} | "
                f"{_ess(r)} | {1e3 * r['loss_seconds']:.1f} | {_g(r['elbo_efficiency'])} | "
                f"{_g(r['elbo_sd'] ** 2 / ref['elbo_sd'] ** 2) if ref else 'n/a'} | {1e3 * r['grad_seconds']:.1f} | "
                f"{_g(r['grad_total_variance'])} | {_g(r['grad_snr'])} | {_g(r['grad_efficiency'])} | "
                f"{_g(r['grad_total_variance'] / ref['grad_total_variance']) if ref else 'n/a'} |")
        agree = fixed["agreement"]
        if agree.get("chi2") is not None:
            verdict = "agree" if agree["p_value"] > 1e-3 else "DISAGREE"
            lines += ["", f"Unbiased estimators, same ELBO: pooled {agree['pooled_elbo']:.3f} ± {agree['pooled_se']:.3f} "
                      f"nats/example; χ² = {agree['chi2']:.2f} on {agree['dof']} dof, p = {agree['p_value']:.3g}, "
                      f"max |z| = {max(abs(z) for z in agree['z'].values()):.2f}: the means {verdict}."]
        apart = [r for r in rows if r["bound"] != "ELBO"]
        if apart:
            lines += ["", "Reported apart, a different and tighter bound (IWAE ≥ ELBO):", "",
                      "| estimator | bound | value ± MCSE | sd | ESS | ms / estimate | ms / grad | tr Cov(grad) | SNR |",
                      "|:---|:---|---:|---:|---:|---:|---:|---:|---:|"]
            for r in apart:
                lines.append(f"| {r['estimator']} | {r['bound']} | {r['elbo_mean']:.3f} ± {r['elbo_mcse']:.3f} | "
                             f"{_g(r['elbo_sd'])} | {_ess(r)} | {1e3 * r['loss_seconds']:.1f} | "
                             f"{1e3 * r['grad_seconds']:.1f} | {_g(r['grad_total_variance'])} | {_g(r['grad_snr'])} |")
            for r in apart:
                ref = fixed.get("iwae_reference", {}).get(r["estimator"])
                if ref:
                    gap, se = r["elbo_mean"] - ref["elbo"], math.hypot(r["elbo_mcse"], ref["se"])
                    lines.append(f"\n{r['bound']} − ELBO = {gap:.3f} ± {se:.3f} nats/example on the same "
                                 f"{ref['examples']} examples (their ELBO {ref['elbo']:.3f} ± {ref['se']:.3f} from "
                                 "the full bound).")
        notes = [f"- {r['estimator']}: † {ess_flag(r['elbo_ess'], r['replicates'])}" for r in rows
                 if ess_flag(r["elbo_ess"], r["replicates"])]
        notes += [f"- {r['estimator']}: {n}" for r in rows for n in r["notes"]]
        if notes:
            lines += ["", *notes]
        lines += ["", "![fixed θ](fixed_theta.png)", ""]
    per_t = study.get("per_t")
    if per_t:
        lines += ["## Per t", "",
                  f"Variance of the step term L_(t−1) at each t, over the noise at fixed x_0 ({per_t['repeats']} draws "
                  "per example and t, mean over the batch): analytic (random only through x_t) against Monte "
                  "Carlo (also through x_(t−1)). Table in `per_t.csv`.", "", "![per t](per_t.png)", ""]
        pred = per_t.get("predicted")
        if pred:
            lines += ["Predicted from the per-t moments vs measured by the replicates (variance of the batch-mean "
                      "ELBO estimate, nats²):", "",
                      "| estimator | predicted | of which between-t | measured ± SE | measured / predicted |",
                      "|:---|---:|---:|---:|---:|"]
            for name, p in pred.items():
                between = p.get("between_t")
                se = p.get("measured_se")
                meas = _g(p.get("measured")) + ("" if se is None or se != se else f" ± {_g(se, '.2g')}")
                lines.append(f"| {name} | {_g(p['total'])} | {_g(between)} | {meas} | {_g(p.get('ratio'))} |")
            lines += ["", "The measured variances are sample variances of heavy-tailed draws; their SE is from "
                      "the draws' fourth moment."]
            lines.append("")
    race = study.get("race")
    if race:
        lines += ["## Training race", "",
                  f"Same initial weights, same batch order, {race['seconds']:g} s of training each, evaluated "
                  f"at {race['points']} doubling budgets on the first {race['eval_examples']} test examples (full "
                  f"bound, raw weights, same noise for every point). Adam lr {race['lr']:g}, no warm-up, gradient "
                  f"clipping {race['grad_clip']}, batch {race['batch_size']}.", "",
                  "| estimator | steps | steps / s | final bits/dim | ± SE |", "|:---|---:|---:|---:|---:|"]
        for name in race["estimators"]:
            last = max((r for r in race["rows"] if r["estimator"] == name), key=lambda r: r["point"])
            rate = last["step"] / last["train_seconds"] if last["train_seconds"] else float("nan")
            lines.append(f"| {name} | {last['step']} | {rate:.1f} | {last['bpd']:.4f} | {last['bpd_se']:.4f} |")
        lines += ["", "Time to reach a bits/dim (interpolated between evaluated points; “at most” when already "
                  "reached at the first point):", "",
                  "| target | estimator | seconds | steps | |", "|:---|:---|---:|---:|:---|"]
        for tgt in race["targets"]:
            for name, hit in tgt["times"].items():
                lines.append(f"| {tgt['label']} ({tgt['bpd']:.4f}) | {name} | {_g(hit['seconds'], '.1f')} | "
                             f"{_g(hit['step'], '.0f')} | {hit['bound']} |")
        lines += ["", "Speed-ups (time the slow estimator took to reach its final bits/dim, over the time the fast one "
                  "needed to reach it):", ""]
        for s in race["speedups"]:
            ratio = "n/a" if s["ratio"] is None else f"{s['ratio']:.1f}×"
            lines.append(f"- {s['fast']} vs {s['slow']}: {ratio} ({s['ratio_kind']}; {s['slow']} final "
                         f"{s['target_bpd']:.4f} bits/dim)")
        lines += ["", "![race](race.png)", ""]
    if study.get("learned_schedule"):
        lines += learned_schedule_lines(study["learned_schedule"])
    lines += ["## Files", "", ", ".join(["`study.json` (everything above)", *_files(study)]) + ", the figures.", ""]
    return "\n".join(lines)


def _files(study: dict) -> list[str]:
    """The tables :func:`render` writes for the sections ``study`` has, and the draws beside them."""
    files = {"fixed_theta": ["`fixed_theta.csv`"], "per_t": ["`per_t.csv`"], "race": ["`race.csv`", "`race_targets.csv`"]}
    names = [name for section, names in files.items() if section in study for name in names]
    if "fixed_theta" in study or study.get("learned_schedule"):  # their ELBO draws
        names.append("`draws/*.nc` (arviz InferenceData; `az.from_netcdf`)")
    return names


def render(study: dict, out: str | Path) -> Path:
    """Write the CSV tables, the figures and ``report.md`` of ``study`` (the dict of ``study.json``) to ``out``.

    :param dict study: the study's dict.
    :param out: the study's folder.
    :returns: the path of ``report.md``.

    Example:

    >>> meta = dict(data="eight_gaussians", net="mlp", T=10, command="ppl-diffusion compare ...", machine="cpu",
    ...             torch="2", pyro="1", arviz="0", threads=1, date="2026-12-06", theta="fresh init", batch=4,
    ...             batch_from="test examples", num_parameters=1234)
    >>> import tempfile
    >>> from ppl_diffusion.study.report import render
    >>> with tempfile.TemporaryDirectory() as out:
    ...     render({"meta": meta}, out).name
    'report.md'
    """
    out = Path(out)
    meta = study["meta"]
    title = f"{meta['data']}, {meta['net']}, T = {_T(meta)}"
    if "fixed_theta" in study:
        rows = study["fixed_theta"]["rows"]
        write_csv(out / "fixed_theta.csv", rows)
        fixed_theta_figure(rows, out / "fixed_theta.png", f"{title}: estimators at a fixed θ")
    if "per_t" in study:
        write_csv(out / "per_t.csv", study["per_t"]["rows"])
        per_t_figure(study["per_t"]["rows"], out / "per_t.png", f"{title}: the step term at each t")
    if "race" in study:
        race = study["race"]
        write_csv(out / "race.csv", race["rows"])
        write_csv(out / "race_targets.csv", [{"target": t["label"], "target_bpd": t["bpd"], "estimator": n, **hit}
                                             for t in race["targets"] for n, hit in t["times"].items()])
        race_figure(race["rows"], out / "race.png", f"{title}: training race, {race['seconds']:g} s each")
    path = out / "report.md"
    path.write_text(markdown(study))
    return path


def refresh(study: dict, out: str | Path) -> dict:
    """Recompute what derives from stored data, after a change to how it is derived: the race's targets
    and speed-ups from its rows; each fixed-θ row's MCSE (sd / √R) and ``elbo_var_se`` from its draws
    (``draws/*.nc``), and the agreement test from the rows; the predicted-vs-measured table's measured SEs.

    :param dict study: the study's dict, updated in place and returned.
    :param out: the study's folder (its ``draws/``).

    Example: a study with no section has nothing to re-derive.

    >>> meta = dict(data="eight_gaussians", net="mlp", T=10, command="ppl-diffusion compare ...", machine="cpu",
    ...             torch="2", pyro="1", arviz="0", threads=1, date="2026-12-06", theta="fresh init", batch=4,
    ...             batch_from="test examples", num_parameters=1234)
    >>> from ppl_diffusion.study.report import refresh
    >>> refresh({"meta": meta}, ".") == {"meta": meta}
    True
    """
    import dataclasses

    from .fixed import FixedThetaRow, mcse, pooled_agreement, variance_se
    from .race import summarise

    out = Path(out)
    if "race" in study:
        race = study["race"]
        race.update(summarise(race["rows"], race["estimators"], race.get("target")))
    fixed = study.get("fixed_theta", {})
    for row in fixed.get("rows", []):
        import arviz as az

        draws = az.from_netcdf(out / "draws" / f"{row['estimator']}.nc").posterior["elbo"].values
        row["elbo_mcse"] = mcse(draws)
        if row.get("elbo_var_se") is None or row["elbo_var_se"] != row["elbo_var_se"]:
            row["elbo_var_se"] = variance_se(draws)
    if fixed.get("rows"):
        fixed["agreement"] = pooled_agreement([FixedThetaRow(**row) for row in fixed["rows"]])
        fixed["rows"] = [dataclasses.asdict(FixedThetaRow(**row)) for row in fixed["rows"]]
    pred = study.get("per_t", {}).get("predicted", {})
    for name, p in pred.items():
        row = next((r for r in fixed.get("rows", []) if r["estimator"] == name), None)
        if row is not None:
            p["measured_se"] = row["elbo_var_se"]
    return study


__all__ = ["markdown", "refresh", "render", "write_csv"]


if __name__ == "__main__":  # python -m ppl_diffusion.study.report DIR ...: re-derive and re-render finished studies
    import json
    import sys

    for folder in sys.argv[1:]:
        path = Path(folder) / "study.json"
        study = refresh(json.loads(path.read_text()), folder)
        path.write_text(json.dumps(study, indent=2, default=float) + "\n")
        print(render(study, folder))

