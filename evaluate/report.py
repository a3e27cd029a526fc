"""Writing results: robustness.json, a Markdown table, PNG plots and the side-by-side comparison."""

import json
import math
import os

import numpy as np

from zoo import model_dir


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def epsilon_key(epsilon):
    """The JSON key of an attack radius: '0', '0.1', '0.2', ..."""
    return f"{float(epsilon):g}"


def write_json(result, path):
    """Strict JSON (NaN and infinities become null), written atomically."""
    model_dir.write_json(path, _finite(result), allow_nan=False, default=_jsonable)


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def _percent(value):
    return "n/a" if value is None else f"{100.0 * value:.1f}"


def _number(value, digits=3):
    if value is None:
        return "n/a"
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def _epsilons(result):
    keys = set()
    for per_epsilon in (result.get("adversarial_accuracy") or {}).values():
        keys.update(per_epsilon)
    return sorted(keys, key=float)


def accuracy_table(result):
    """Worst-case accuracy (%) per task and epsilon: the headline table."""
    accuracy = result.get("adversarial_accuracy")
    if not accuracy:
        return "_adversarial accuracy not computed_\n"
    epsilons = _epsilons(result)
    lines = [
        "| task | " + " | ".join(f"eps={e}" for e in epsilons) + " |",
        "|---|" + "---|" * len(epsilons),
    ]
    for task, per_epsilon in accuracy.items():
        lines.append(f"| {task} | " + " | ".join(_percent(per_epsilon.get(e)) for e in epsilons) + " |")
    return "\n".join(lines) + "\n"


def is_cascade(result):
    """Whether the per-attack accuracy is cumulative: the attacks ran as AutoAttack's cascade."""
    return bool(result.get("settings", {}).get("cascade"))


def attacks_phrase(budgets, cascade):
    """How the accuracy was measured, for a sentence: the worst case over the attacks in `budgets`, or one alone."""
    attacks = ", ".join(budgets)
    if len(budgets) == 1:
        return f"{attacks} only (a quick check, not a worst case)"
    return f"worst case per example over {attacks} (L-inf, pixels in [0, 1])" + (
        ", run as AutoAttack's cascade (each attack only on the examples every earlier one left correct)"
        if cascade
        else ""
    )


def per_attack_table(result):
    """Accuracy (%) of each attack alone (of the cascade so far, `+ attack`), and the worst case, a row each."""
    per_attack = result.get("adversarial_accuracy_per_attack")
    if not per_attack:
        return ""
    cascade = is_cascade(result)
    epsilons = [e for e in _epsilons(result) if float(e) > 0]
    lines = [
        "| task | attack | " + " | ".join(f"eps={e}" for e in epsilons) + " |",
        "|---|---|" + "---|" * len(epsilons),
    ]
    for task, attacks in per_attack.items():
        for i, (attack, per_epsilon) in enumerate(attacks.items()):
            name = f"+ {attack}" if cascade and i else attack
            lines.append(f"| {task} | {name} | " + " | ".join(_percent(per_epsilon.get(e)) for e in epsilons) + " |")
        worst = result["adversarial_accuracy"][task]
        lines.append(
            f"| {task} | **worst case** | " + " | ".join(f"**{_percent(worst.get(e))}**" for e in epsilons) + " |"
        )
    return "\n".join(lines) + "\n"


def describe_budget(attack, budget):
    """One Markdown list item: an attack's implementation and effort, as robustness.json records it."""
    skip = budget.get("skipped_tasks")
    skipped = f"; skipped for {', '.join(f'{t} ({why})' for t, why in skip.items())}" if skip else ""
    if attack == "pgd":
        effort = f"{budget['steps']} steps x {budget['restarts']} restarts"
    elif attack.startswith("apgd"):
        targets = f" x {budget['target_classes']} target classes" if budget.get("targeted") else ""
        effort = f"{budget['iterations']} iterations x {budget['restarts']} restarts{targets}, loss {budget['loss']}"
    else:
        effort = f"{budget.get('queries')} queries x {budget.get('restarts')} restarts"
    return f"- `{attack}`: {budget['implementation']}, {effort}{skipped}\n"


def format_radius(value, max_radius):
    """A radius median for tables: null means more than half unbroken at the largest radius searched."""
    return f"> {max_radius:g}" if value is None else _number(value, 4)


def _radius_and_masking(result):
    out = []
    radius = result.get("robustness_radius") or {}
    if radius:
        out.append(
            "\n### Robustness radius (L-inf, worst case)\n\nPer example, the smallest radius at which the "
            "worst case flips the probe (bisection on a fixed random subset; `radius.png` shows the "
            "distribution). Median over the examples classified correctly clean, and over all (radius 0 where "
            "the clean prediction is wrong).\n\n"
            "| task | median (correct clean) | median (all) | examples | wrong clean | unbroken at max radius "
            "| resolution |\n|---|---|---|---|---|---|---|\n"
        )
        for task, r in radius.items():
            out.append(
                f"| {task} | {format_radius(r.get('median_correct'), r['max_radius'])} | "
                f"{format_radius(r['median'], r['max_radius'])} | {r['examples']} | "
                f"{_percent(r['clean_wrong_fraction'])}% | {_percent(r['censored_fraction'])}% | "
                f"{_number(r['resolution'], 4)} |\n"
            )
    masking = result.get("gradient_masking")
    if masking:
        verdict = "**FLAGGED: possible gradient masking**" if masking["flagged"] else "not flagged"
        out.append(f"\n### Gradient-masking check: {verdict}\n\n")
        for task, m in masking["by_task"].items():
            checks = []
            free = {e: f for e, f in (m.get("gradient_free_only") or {}).items() if f is not None}
            if free:
                checks.append(
                    "broken by the gradient-free attack only: "
                    + ", ".join(f"{_percent(f)}% at eps={e}" for e, f in free.items())
                )
            else:
                checks.append("gradient-free vs gradient attacks not compared (the run lacks one kind)")
            if m.get("accuracy_at_large_radius") is not None:
                checks.append(
                    f"worst-case accuracy {_percent(m['accuracy_at_large_radius'])}% at eps={masking['large_radius']:g}"
                )
            reasons = f" **{'; '.join(m['reasons'])}**" if m["flagged"] else ""
            out.append(f"- {task}: {'; '.join(checks)} (tolerance {_percent(masking['tolerance'])}%).{reasons}\n")
    budgets = result.get("attack_budgets")
    if budgets:
        out.append("\nAttack budgets:\n\n" + "".join(describe_budget(a, b) for a, b in budgets.items()))
    return "".join(out)


def _ae_attack_table(attack):
    if not attack:
        return "_not computed_\n"
    lambdas = list(attack["by_lambda"])
    lines = ["| metric | " + " | ".join(f"lambda={lam}" for lam in lambdas) + " |", "|---|" + "---|" * len(lambdas)]
    for metric in attack["metrics"]:
        cells = []
        for lam in lambdas:
            stats = attack["by_lambda"][lam][metric]
            cells.append(f"{_number(stats['mean'])} +- {_number(stats['std'])}")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(result):
    """The Markdown report of one model's robustness.json."""
    settings = result.get("settings", {})
    out = [f"# Robustness of `{result['model']}` on `{result['dataset']}`\n\n"]
    if result.get("model_dir"):
        out.append(f"Model directory: `{result['model_dir']}`\n")
    budgets = result.get("attack_budgets") or {}
    if budgets:
        how = attacks_phrase(budgets, is_cascade(result))
        how += "; the numbers quoted are this worst case" if len(budgets) > 1 else ""
    else:  # a robustness.json written before the attack ensemble
        how = f"L-inf PGD ({settings.get('pgd_steps')} steps, {settings.get('restarts')} restarts)"
    out.append(
        f"\n## Downstream adversarial accuracy (%)\n\nLinear probes on f_mu, {how}; "
        f"{settings.get('num_examples')} {settings.get('split', 'test')} examples.\n\n"
    )
    out.append(accuracy_table(result))
    table = per_attack_table(result)
    if table:
        out.append(
            "\nIn AutoAttack's cascade, each attack only on the examples every earlier one left correct (the "
            "accuracy after it and every attack above it):\n\n"
            if is_cascade(result)
            else "\nEach attack alone:\n\n"
        )
        out.append(table)
    out.append(_radius_and_masking(result))
    mse = result.get("mse") or {}
    features = result.get("fid_features") or {}
    out.append("\n## Decoder quality\n\n")
    out.append("| MSE per pixel | MSE per image (sum) | FID samples | FID reconstructions | FID features |\n")
    out.append("|---|---|---|---|---|\n")
    out.append(
        f"| {_number(mse.get('per_pixel'), 5)} | {_number(mse.get('per_image_sum'))} | {_number(result.get('fid'))} | "
        f"{_number(result.get('fid_reconstructions'))} | {features.get('kind', 'n/a')} |\n"
    )
    for key, title in (("latent_attack", "Latent-space attack"), ("max_damage_attack", "Maximum-damage attack")):
        attack = result.get(key)
        reference = f" (reference image: {attack['reference']})" if attack else ""
        ms_ssim = settings.get("ms_ssim") or {}
        out.append(
            f"\n## {title}{reference}\n\nL2 PGD, mean +- std over trials. ms_ssim_ref_vs_adv_recon = "
            "MS-SSIM(x_r, x~_a), ms_ssim_input_vs_adv_input = MS-SSIM(x, x_a), ms_ssim_ref_recon_vs_adv_recon = "
            f"MS-SSIM(x~_r, x~_a) (MS-SSIM: {ms_ssim.get('scales')} scales, {ms_ssim.get('filter_size')}x"
            f"{ms_ssim.get('filter_size')} window).\n\n"
        )
        out.append(_ae_attack_table(attack))
    margin = result.get("margin")
    out.append("\n## Margin of robustness (L2)\n\n")
    if margin:
        bound = margin.get("bound") or {}
        empirical = margin.get("empirical") or {}
        out.append("| r | p(r-robust, clean) | bound median | empirical margin median | bound holds |\n")
        out.append("|---|---|---|---|---|\n")
        out.append(
            f"| {_number(margin.get('r'))} | {_number(margin.get('clean_robust_fraction'))} | "
            f"{_number(bound.get('median'), 4) if bound.get('applicable') else 'n/a'} | "
            f"{_number(empirical.get('median_lo'), 4)} | "
            f"{_number(margin.get('bound_holds_fraction')) if bound.get('applicable') else 'n/a'} |\n"
        )
        if not bound.get("applicable"):
            out.append(f"\nBound: {bound.get('reason')}\n")
        if empirical.get("attack"):
            out.append(f"\nEmpirical margin attack: {empirical['attack']}.\n")
    else:
        out.append("_not computed_\n")
    chain = result.get("chain_drift")
    out.append("\n## Encode-decode chain drift\n\n")
    if chain:
        out.append(
            f"mean ||z_k - z_0|| after k = {chain['steps']} steps: {_number(chain['final'])} "
            f"(per step: {', '.join(_number(d) for d in chain['per_step'])})\n"
        )
    else:
        out.append("_not computed_\n")
    timing = result.get("timing") or {}
    if timing:
        out.append("\n## Timing\n\n| stage | seconds | examples/s |\n|---|---|---|\n")
        for stage, t in timing.items():
            out.append(f"| {stage} | {_number(t.get('seconds'))} | {_number(t.get('examples_per_second'))} |\n")
    return "".join(out)


def _grid(n, columns=4):
    columns = min(columns, n)
    return int(math.ceil(n / columns)), columns


def _task_panels(results, labels, key, path, line, xlabel, ylabel, marker=None):
    """One panel per task of `results[i][key]`, one line per result: `line(per_task) -> (x, y)` in %."""
    labels = labels or [r["model"] for r in results]
    tasks = list(dict.fromkeys(task for r in results for task in (r.get(key) or {})))
    if not tasks:
        return None
    plt = _pyplot()
    rows, columns = _grid(len(tasks))
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for result, label in zip(results, labels):
            per_task = (result.get(key) or {}).get(task)
            if per_task:
                ax.plot(*line(per_task), marker=marker, label=label)
        ax.set_title(task)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    with model_dir.atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
    return path


def plot_accuracy(results, path, labels=None):
    """Accuracy vs epsilon, one panel per task, one line per result (AVAE paper, Figure 5 right column)."""

    def line(per_epsilon):
        epsilons = sorted(per_epsilon, key=float)
        return [float(e) for e in epsilons], [100.0 * per_epsilon[e] for e in epsilons]

    return _task_panels(
        results,
        labels,
        "adversarial_accuracy",
        path,
        line,
        "attack radius epsilon (L-inf)",
        "adversarial accuracy (%)",
        marker="o",
    )


def plot_ae_attacks(results, path, labels=None):
    """MS-SSIM(x_r, x~_a) of the latent attack and MS-SSIM(x~_r, x~_a) of the max-damage attack vs lambda."""
    plt = _pyplot()
    labels = labels or [r["model"] for r in results]
    panels = (
        ("latent_attack", "ms_ssim_ref_vs_adv_recon", "latent attack: MS-SSIM(x_t, x~_a) (lower = robust)"),
        ("max_damage_attack", "ms_ssim_ref_recon_vs_adv_recon", "max damage: MS-SSIM(x~, x~_a) (higher = robust)"),
    )
    if not any(r.get(key) for r in results for key, _, _ in panels):
        return None
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (key, metric, title) in zip(axes, panels):
        for result, label in zip(results, labels):
            attack = result.get(key)
            if not attack:
                continue
            lambdas = list(attack["by_lambda"])
            means = [attack["by_lambda"][lam][metric]["mean"] for lam in lambdas]
            stds = [attack["by_lambda"][lam][metric]["std"] for lam in lambdas]
            ax.errorbar([float(lam) for lam in lambdas], means, yerr=stds, marker="o", capsize=3, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("lambda (L2)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    with model_dir.atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
    return path


def plot_chain(images, path):
    """images [steps + 1, batch, H, W, C]: one row per example, x then its k-th decodings."""
    plt = _pyplot()
    steps, batch = images.shape[0], images.shape[1]
    figure, axes = plt.subplots(batch, steps, figsize=(1.0 * steps, 1.0 * batch), squeeze=False)
    for i in range(batch):
        for k in range(steps):
            image = np.clip(images[k, i], 0.0, 1.0)
            ax = axes[i, k]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("x" if k == 0 else f"k={k}", fontsize=8)
    figure.tight_layout(pad=0.1)
    with model_dir.atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
    return path


def plot_margin(bound, empirical_lo, empirical_hi, path):
    """Bound vs the empirical bracket per example (log-log)."""
    plt = _pyplot()
    bound = np.asarray(bound, float)
    lo = np.asarray(empirical_lo, float)
    hi = np.asarray(empirical_hi, float)
    keep = (bound > 0) & np.isfinite(hi) & (hi > 0)
    if not keep.any():
        return None
    figure, ax = plt.subplots(figsize=(4.2, 3.8))
    mid = np.sqrt(np.maximum(lo[keep], 1e-12) * hi[keep])
    ax.errorbar(bound[keep], mid, yerr=[mid - lo[keep], hi[keep] - mid], fmt="o", ms=3, alpha=0.6)
    low = min(bound[keep].min(), lo[keep][lo[keep] > 0].min() if (lo[keep] > 0).any() else hi[keep].min())
    high = max(bound[keep].max(), hi[keep].max())
    ax.plot([low, high], [low, high], "k--", lw=1, label="bound = margin")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bound  min sigma Phi^-1(p) / ||J||_F")
    ax.set_ylabel("empirical margin (attack bracket)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    with model_dir.atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
    return path


def plot_radius(result, path):
    """Distribution of the robustness radius per task: histogram, median marked, unbroken ones at the right."""
    radius = result.get("robustness_radius") or {}
    if not radius:
        return None
    plt = _pyplot()
    rows, columns = _grid(len(radius))
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    for ax, (task, r) in zip(axes.flat, radius.items()):
        top = r["max_radius"]
        censored = any(v is None for v in r["per_example"])
        values = np.array([top * 1.05 if v is None else v for v in r["per_example"]])
        # The axis ends just past the largest radius found, so small radii keep their resolution.
        upper = top * 1.1 if censored else max(float(values.max()) * 1.1, 4 * r["resolution"])
        ax.hist(values, bins=np.linspace(0, upper, 41), color="tab:blue", alpha=0.8)
        if r.get("median_correct") is not None:
            ax.axvline(
                r["median_correct"], color="k", ls="--", lw=1, label=f"median (correct clean) {r['median_correct']:.3f}"
            )
            ax.legend(fontsize=8)
        if censored:
            ax.axvline(top, color="tab:red", lw=1)
        ax.set_title(f"{task}" + (f" (right of red: unbroken at {top:g})" if censored else ""), fontsize=9)
        ax.set_xlabel("robustness radius (L-inf)")
        ax.set_ylabel("examples")
    for ax in list(axes.flat)[len(radius) :]:
        ax.axis("off")
    figure.tight_layout()
    with model_dir.atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
    return path


def plot_radius_comparison(results, path, labels=None):
    """Per task, the fraction of examples still robust at each radius (from the radius search), one line per model."""

    def line(radius):
        values = np.array([np.inf if v is None else v for v in radius["per_example"]])
        grid = np.linspace(0, radius["max_radius"], 101)
        return grid, [100.0 * np.mean(values > g) for g in grid]

    return _task_panels(
        results, labels, "robustness_radius", path, line, "radius eps (L-inf)", "examples with radius > eps (%)"
    )


_HEADLINE_AE_METRICS = (
    ("latent_attack", "ms_ssim_ref_vs_adv_recon"),
    ("max_damage_attack", "ms_ssim_ref_recon_vs_adv_recon"),
)


def comparison_markdown(results, labels):
    """One row per model: accuracy per task and epsilon, MSE, FID, attacks at the largest lambda, margin, drift."""
    epsilons = _epsilons(results[0])
    tasks = list(results[0].get("adversarial_accuracy") or {})
    header = ["model", "dataset"]
    header += [f"{task} eps={e}" for task in tasks for e in epsilons]
    radius_tasks = list(dict.fromkeys(task for r in results for task in (r.get("robustness_radius") or {})))
    header += ["attacks"] + [f"{task} radius median (correct clean)" for task in radius_tasks] + ["masking"]
    header += ["MSE/px", "FID", "latent MS-SSIM(x_t,x~_a)", "max-dmg MS-SSIM(x~,x~_a)", "margin median", "chain drift"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for result, label in zip(results, labels):
        row = [label, result.get("dataset", "")]
        accuracy = result.get("adversarial_accuracy") or {}
        row += [_percent((accuracy.get(task) or {}).get(e)) for task in tasks for e in epsilons]
        row.append(", ".join(result.get("attack_budgets") or {}) or "pgd")  # results older than the ensemble: PGD
        for task in radius_tasks:
            r = (result.get("robustness_radius") or {}).get(task)
            row.append("n/a" if not r else format_radius(r.get("median_correct"), r["max_radius"]))
        masking = result.get("gradient_masking")
        row.append("n/a" if not masking else "FLAGGED" if masking["flagged"] else "no")
        row.append(_number((result.get("mse") or {}).get("per_pixel"), 5))
        row.append(_number(result.get("fid")))
        for key, metric in _HEADLINE_AE_METRICS:
            attack = result.get(key)
            if attack:
                lam = list(attack["by_lambda"])[-1]
                row.append(f"{_number(attack['by_lambda'][lam][metric]['mean'])} (lambda={lam})")
            else:
                row.append("n/a")
        margin = result.get("margin") or {}
        row.append(_number((margin.get("empirical") or {}).get("median_lo"), 4))
        row.append(_number((result.get("chain_drift") or {}).get("final")))
        lines.append("| " + " | ".join(row) + " |")
    features = {(r.get("fid_features") or {}).get("kind") for r in results}
    note = ""
    if len(features) > 1:
        note = "\n**Warning:** these FIDs use different feature extractors and are not comparable.\n"
    what = (
        "Accuracy (%): the worst case per example over the attacks in the `attacks` column (see each model's "
        "robustness.md; numbers from different attack sets are not comparable); radius: median L-inf robustness "
        "radius; masking: the gradient-masking check.\n\n"
    )
    return "# Robustness comparison\n\n" + what + "\n".join(lines) + "\n" + note


def write_comparison(results, labels, output_dir):
    """comparison.md and comparison_{accuracy,ae_attacks,radius}.png in output_dir; returns the paths written."""
    os.makedirs(output_dir, exist_ok=True)
    paths = [os.path.join(output_dir, "comparison.md")]
    with model_dir.atomic_open(paths[0]) as f:
        f.write(comparison_markdown(results, labels))
    plots = (
        ("comparison_accuracy.png", plot_accuracy),
        ("comparison_ae_attacks.png", plot_ae_attacks),
        ("comparison_radius.png", plot_radius_comparison),
    )
    for name, plot in plots:
        written = plot(results, os.path.join(output_dir, name), labels)
        if written:
            paths.append(written)
    return paths
