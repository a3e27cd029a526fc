"""The speed benchmark's rows (rates, cost relative to the VAE, fraction of the matmul peak) and their Markdown."""

from benchmarks import runs
from benchmarks.speed.jax_reference import JAX_LABEL
from benchmarks.speed.runners import FAST_PERCENTILE

# The paper's time relative to the VAE: Table 1 (ColorMNIST, conv) and Table 2 (CelebA).
PAPER = {
    "VAE": ("x1", "x1"),
    "AVAE": ("x1.5", "x2.2"),
    "SE^5": ("x4", "x3.1"),
    "SE^5-AVAE": ("x4.7", "x4.3"),
    "AVAE-SS": ("x1.5", "x2.2"),
}


def profile_markdown(result):
    lines = [
        "# Where a training step spends its time (TensorFlow profiler)",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; oneDNN kernels "
        f"{'on' if result['machine']['onednn'] else 'off'}. Without XLA: the self time of each op (its own "
        "kernel time, children excluded) over the profiled steps, as a share of the step's busy time (the "
        "profiler's idle time left out). With XLA: the time of the program's thunks by kind, intervals of a "
        "kind merged across threads (`xla_breakdown`): matmuls and convolutions are the thunks that run a dot "
        "or a convolution (with what XLA fused into them), random draws those that draw (with what is fused "
        "into them), the optimizer update those from the optimizer's ops. Thunks of different kinds can run "
        "side by side, each counted, so the kinds can add up to more than the program's time; `between "
        "thunks` is the program's time in none of them (launching, waiting for threads). The "
        "profiler slows the steps (each thunk is traced): both step times are given.",
        "",
    ]
    for entry in result["profiles"]:
        lines += [
            f"## {entry['model']}, {entry['arch']}, {entry['precision']}, XLA {entry['xla']}",
            "",
            f"{entry['profiled_steps']} steps, {entry['seconds_per_step'] * 1e3:.2f} ms per step under the "
            f"profiler, {entry['unprofiled_seconds_per_step'] * 1e3:.2f} without.",
            "",
        ]
        lines += _xla_lines(entry["xla_breakdown"]) if "xla_breakdown" in entry else _op_stats_lines(entry)
        lines.append("")
    return "\n".join(lines + runs.produced_by(result["command"]))


def _xla_lines(x):
    lines = ["| where | ms per step | share of the time in XLA programs |", "|---|---:|---:|"]
    for kind, ms in [*x["kinds_ms"].items(), ("between thunks", x["between_thunks_ms"])]:
        lines.append(f"| {kind} | {ms:.2f} | {100 * ms / x['in_programs_ms']:.1f} % |")
    outside = x["step_ms"] - x["in_programs_ms"]
    lines += [
        f"| in XLA programs, all | {x['in_programs_ms']:.2f} | 100 % |",
        f"| outside them (the execution's loop, data, callbacks) | {outside:.2f} | |",
    ]
    arithmetic = x["kinds_ms"]["matmuls"] + x["kinds_ms"]["convolutions"]
    if arithmetic:
        lines += [
            "",
            f"Were all but its matmuls and convolutions free, this step would run at most "
            f"{1e3 / arithmetic:.0f} steps/s (at {x['step_ms']:.2f} ms: {1e3 / x['step_ms']:.0f}).",
        ]
    return lines


def _op_stats_lines(entry):
    lines = [
        f"Op self time summed over threads: {entry['busy_ms_per_step']:.0f} ms per step.",
        "",
        "| op type | share of busy time |",
        "|---|---:|",
    ]
    lines += [f"| {op_type} | {100 * share:.1f} % |" for op_type, share in entry["by_type"][:10]]
    lines += ["", "| most expensive ops | type | share |", "|---|---|---:|"]
    lines += [f"| `{name}` | {op_type} | {100 * share:.1f} % |" for name, op_type, share in entry["top_ops"]]
    return lines


def summarise(runners, peak, batch_size):
    """One row per configuration: rates, the ratio to the VAE of its setting, FLOPs and the fraction of the peak."""
    vae = {r.key: r for r in runners if r.label in ("VAE", "VAE" + JAX_LABEL)}
    peak_gflops = peak.peak("float32")
    rows = []
    for runner in runners:
        rate = 1.0 / runner.fast_seconds()
        row = {
            "model": runner.label,
            "arch": runner.arch,
            "precision": runner.precision,
            "xla": runner.xla,
            "steps_per_execution": runner.steps_per_execution,
            "steps_per_s": rate,
            "mean_steps_per_s": runner.mean_rate(),
            "examples_per_s": rate * batch_size,
            "rounds": runner.rounds,
            "gflop_per_step": None if runner.flops is None else runner.flops / 1e9,
        }
        reference = vae.get(runner.key)
        if reference is not None:
            row["ratio_to_vae"] = runner.fast_seconds() / reference.fast_seconds()
        if runner.flops is not None:
            row["gflop_per_s"] = runner.flops * rate / 1e9
            row["fraction_of_matmul_peak"] = row["gflop_per_s"] / peak_gflops
        rows.append(row)
    jax_ratios = []
    for jax_row in (r for r in runners if r.label.endswith(JAX_LABEL)):
        label = jax_row.label[: -len(JAX_LABEL)]
        for runner in runners:
            if runner.label == label and runner.arch == "mlp" and runner.precision == "float32":
                jax_ratios.append(
                    {
                        "model": label,
                        "xla": runner.xla,
                        "steps_per_execution": runner.steps_per_execution,
                        "ratio": jax_row.fast_seconds() / runner.fast_seconds(),
                    }
                )
    return rows, jax_ratios


def _cell(value, fmt):
    return "-" if value is None else format(value, fmt)


def _rate(value):
    """Three significant digits: 36.8, 0.618."""
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def markdown(result):
    m, setup = result["machine"], result["setup"]
    lines = [
        "# Training speed",
        "",
        "Steps per second of each model's own `train_step` through `keras.Model.fit` (models built by "
        "`train.loop.build_model`), on the ColorMNIST training pipeline, timed by `train.callbacks.StepTimer`, "
        f"in {setup['rounds']} alternated rounds of about {setup['seconds']:g} s per configuration (at least one "
        f"execution). Batch {setup['batch_size']}, latent {setup['latent_dim']}, Adam. `steps/s`: from the "
        f"{FAST_PERCENTILE}th percentile of the timed step times (the machine is shared: the steps that ran while "
        "the process had the cores); `run mean`: all timed steps over their total time. `x VAE step`: the model's "
        "step time over the VAE's in the same setting. `GFLOP/step`: the step's matmul and convolution FLOPs "
        "counted on the traced step (PGD loops by their trip count); `% of peak`: GFLOP/step x steps/s over the "
        "best float32 matmul rate of this run."
        + (
            f" With XLA on, an execution's steps run unrolled in XLA programs of up to {setup['steps_per_xla_program']} "
            "steps (`train.xla_programs`), which draw their noise with ThreeFry."
            if "steps_per_xla_program" in setup
            else ""
        ),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}); bfloat16 {m['bfloat16']}; "
        f"{'GPUs: ' + ', '.join(m['gpus']) if m['gpus'] else 'no GPU'}; TensorFlow {m['tensorflow']}, "
        f"Keras {m['keras']}; oneDNN kernels {'on' if m.get('onednn') else 'off'}; `--precision=auto` picks "
        f"{m['auto_precision']} here. Load average (1 min) during the "
        f"run: {min(result['loads']):.1f}-{max(result['loads']):.1f} (the machine is shared)."
        + (
            " Other processes wanted more than all the cores throughout, so these rates are lower and noisier "
            "than on an idle machine."
            if min(result["loads"]) > m["cores"]
            else ""
        ),
        "",
        f"Matmul {setup['matmul_size']}^3, GFLOP/s per round: float32 "
        + ", ".join(f"{r['float32']:.1f}" for r in result["matmul_gflops"])
        + " (peak used below: "
        + f"{max(r['float32'] for r in result['matmul_gflops']):.1f}); bfloat16 "
        + ", ".join(f"{r['bfloat16']:.1f}" for r in result["matmul_gflops"])
        + ".",
        "",
        "| model | arch | precision | XLA | steps/execution | steps/s | steps/s (run mean) | examples/s | "
        "x VAE step | GFLOP/step | GFLOP/s | % of float32 matmul peak |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        fraction = row.get("fraction_of_matmul_peak")
        lines.append(
            f"| {row['model']} | {row['arch']} | {row['precision']} | {row['xla']} | {row['steps_per_execution']} | "
            f"{_rate(row['steps_per_s'])} | {_rate(row['mean_steps_per_s'])} | {_rate(row['examples_per_s'])} | "
            f"{_cell(row.get('ratio_to_vae'), '.2f')} | {_cell(row['gflop_per_step'], '.3f')} | "
            f"{_cell(row.get('gflop_per_s'), '.2f')} | {_cell(None if fraction is None else 100 * fraction, '.1f')} |"
        )
    lines += [
        "",
        "The paper's time relative to the VAE (Table 1, ColorMNIST conv / Table 2, CelebA): "
        + "; ".join(f"{label} {t1} / {t2}" for label, (t1, t2) in PAPER.items() if label != "VAE")
        + ".",
        "",
        "## JAX/Haiku reference (mlp, float32)",
        "",
    ]
    if result["jax_ratios"]:
        lines += [
            "Project steps/s over the JAX reference's (both from the fast step times, as above).",
            "",
            "| model | project setting (XLA, steps/execution) | project / JAX |",
            "| --- | --- | ---: |",
        ]
        for r in result["jax_ratios"]:
            lines.append(f"| {r['model']} | XLA {r['xla']}, {r['steps_per_execution']} | x{r['ratio']:.2f} |")
    else:
        lines.append(f"Not timed: {result['jax']}.")
    lines += ["", *runs.produced_by(result["command"])]
    return "\n".join(lines)
