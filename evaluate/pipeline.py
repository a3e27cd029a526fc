"""Runs the whole robustness protocol for one trained model; library code with explicit arguments.

`evaluate_model(model_dir, output_dir, settings, dataset=None, data_dir=None)`
loads `model_dir/model.keras`, runs the stages in `settings.stages` and writes
`output_dir/robustness.json`, `robustness.md` and the PNG plots. Progress goes
to `log` (print by default) while attacks run, with examples/s.
"""

import dataclasses
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from evaluate import ae_attacks, chains, fid, interface, margin, msssim, probes, report
from zoo import data as zoo_data
from zoo import training

STAGES = ("accuracy", "decoder", "ae_attacks", "margin", "chains")


class EvaluationError(ValueError):
    """Bad input to the evaluation: one clear sentence."""


@dataclasses.dataclass
class Settings:
    epsilons: tuple = (0.0, 0.1, 0.2)
    pgd_steps: int = 40
    restarts: int = 10
    num_examples: int = 1000
    batch_size: int = 100
    tasks: tuple = None  # None: every task of the dataset
    probe_train_examples: int = 10000
    probe_epochs: int = 30
    lambdas: tuple = (1.0, 3.0, 5.0)
    ae_attack_examples: int = 100
    ae_attack_trials: int = 10
    target_task: str = None  # None: the dataset's first task
    margin_examples: int = 100
    margin_r: float = None  # None: 0.1 * sqrt(pixels), an RMS pixel change of 0.1
    margin_samples: int = 128
    margin_search_steps: int = 8
    margin_min_radius: float = 1e-3
    margin_max_radius: float = 10.0
    chain_steps: int = 10
    chain_examples: int = 8
    fid_features: str = "auto"
    fid_cache_dir: str = None  # None: fid.default_cache_dir()
    fid_classifier_train_examples: int = 10000
    fid_classifier_epochs: int = 3
    stages: tuple = STAGES
    seed: int = 0
    download: bool = True

    def check(self):
        if any(not math.isfinite(e) or e < 0 for e in self.epsilons):
            raise EvaluationError(f"epsilons must be finite and >= 0, got {list(self.epsilons)}")
        if any(not math.isfinite(lam) or lam <= 0 for lam in self.lambdas):
            raise EvaluationError(f"lambdas must be finite and > 0, got {list(self.lambdas)}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise EvaluationError(f"unknown stage(s) {', '.join(unknown)}; choose from: {', '.join(STAGES)}")
        positive = ("pgd_steps", "restarts", "num_examples", "batch_size", "ae_attack_examples", "ae_attack_trials",
                    "margin_examples", "margin_samples", "chain_examples", "probe_train_examples", "probe_epochs")
        for name in positive:
            if getattr(self, name) < 1:
                raise EvaluationError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.margin_min_radius < self.margin_max_radius:
            raise EvaluationError("margin radii must satisfy 0 < margin_min_radius < margin_max_radius")
        if self.margin_r is not None and not self.margin_r > 0:
            raise EvaluationError(f"margin_r must be > 0, got {self.margin_r}")


def read_config(model_dir):
    path = os.path.join(model_dir, training.CONFIG_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_model(model_dir):
    if not os.path.isdir(model_dir):
        raise EvaluationError(f"model_dir {model_dir!r} does not exist")
    try:
        return training.load_model(model_dir)
    except FileNotFoundError as error:
        raise EvaluationError(str(error)) from None


def resolve_tasks(dataset, tasks):
    """The tasks to probe, checked against the dataset: {task: num_classes}."""
    spec = zoo_data.get_spec(dataset)
    if not spec.tasks:
        raise EvaluationError(f"dataset {dataset!r} has no classification task to probe")
    if not tasks:
        return dict(spec.tasks)
    missing = [t for t in tasks if t not in spec.tasks]
    if missing:
        raise EvaluationError(
            f"dataset {dataset!r} has no task {', '.join(repr(t) for t in missing)}; its tasks: {', '.join(spec.tasks)}"
        )
    return {t: spec.tasks[t] for t in tasks}


def load_arrays(dataset, split, num_examples, data_dir, download, batch_size=256):
    """Up to `num_examples` examples of a split as numpy: (images [n, H, W, C], {task: labels [n]})."""
    images, labels = [], {}
    for x, y in zoo_data.load(dataset, split, batch_size, data_dir=data_dir, take=num_examples, download=download):
        images.append(x.numpy())
        for task, values in y.items():
            labels.setdefault(task, []).append(values.numpy())
    if not images:
        raise EvaluationError(f"the {split!r} split of {dataset!r} is empty")
    return np.concatenate(images), {task: np.concatenate(v) for task, v in labels.items()}


def _seed(*parts):
    """A stateless shape-[2] seed from small integers."""
    value = 0
    for part in parts[1:]:
        value = (value * 1_000_003 + int(part)) % (2**31 - 1)
    return tf.constant([int(parts[0]) % (2**31 - 1), value], tf.int32)


class _Progress:
    """Prints `label: done/total examples, <extra>, N examples/s` at most every `every` seconds, and at the end."""

    def __init__(self, label, total, log, every=5.0):
        self.label, self.total, self.log, self.every = label, total, log, every
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, count, extra=""):
        self.done += count
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            self.log(f"{self.label}: {self.done}/{self.total} examples{extra}, {rate:.1f} examples/s")

    @property
    def seconds(self):
        return time.perf_counter() - self.start


def _stats(values):
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std())}


def _batches(n, batch_size):
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def adversarial_accuracy(model, images, labels, train_images, train_labels, tasks, settings, log, timing):
    """{task: {epsilon: accuracy}}, the probes' clean accuracies and the probes {task: (W, b)}."""
    train_features = probes.encode_in_batches(model.encode_mean, train_images, settings.batch_size)
    clean_correct = probes.make_clean_correct(model.encode_mean)
    adversarial_correct = probes.make_adversarial_correct(model.encode_mean, settings.pgd_steps, settings.restarts)
    accuracy, probe_info, probe_weights = {}, {}, {}
    attacked, attack_seconds = 0, 0.0
    for t, (task, classes) in enumerate(tasks.items()):
        w, b = probes.train_linear_probe(
            train_features, train_labels[task], classes, epochs=settings.probe_epochs, seed=settings.seed
        )
        train_accuracy = float(np.mean(np.argmax(train_features @ w + b, axis=1) == train_labels[task]))
        probe_info[task] = {"classes": classes, "train_accuracy": train_accuracy, "train_examples": len(train_images)}
        log(f"[accuracy] probe {task}: train accuracy {train_accuracy:.3f} on {len(train_images)} examples")
        w, b = tf.constant(w), tf.constant(b)
        probe_weights[task] = (w, b)
        accuracy[task] = {}
        for e, epsilon in enumerate(settings.epsilons):
            progress = _Progress(f"[accuracy] {task} eps={epsilon:g}", len(images), log)
            correct = []
            for i, (lo, hi) in enumerate(_batches(len(images), settings.batch_size)):
                x = tf.constant(images[lo:hi])
                y = tf.constant(labels[task][lo:hi].astype(np.int32))
                if epsilon == 0:
                    ok = clean_correct(x, y, w, b)
                else:
                    seed = _seed(settings.seed, t, e, i)
                    ok = adversarial_correct(x, y, w, b, tf.constant(epsilon, tf.float32), seed)
                correct.append(ok.numpy())
                progress.update(hi - lo, f", accuracy so far {np.mean(np.concatenate(correct)):.3f}")
            if epsilon > 0:
                attacked += len(images)
                attack_seconds += progress.seconds
            accuracy[task][report.epsilon_key(epsilon)] = float(np.mean(np.concatenate(correct)))
    timing["adversarial_accuracy"] = {
        "seconds": attack_seconds,
        "examples_per_second": attacked / attack_seconds if attacked else None,
        "note": "PGD examples (each: steps x restarts gradient evaluations) per second, tracing included",
    }
    return accuracy, probe_info, probe_weights


def decoder_quality(model, images, extractor, settings, log):
    """MSE of test reconstructions, FID of prior samples and of reconstructions."""
    encode_decode = tf.function(lambda x: model.decode(model.encode_mean(x)))
    reconstructions = np.concatenate(
        [encode_decode(tf.constant(images[lo:hi])).numpy() for lo, hi in _batches(len(images), settings.batch_size)]
    )
    squared = np.square(reconstructions.astype(np.float64) - images)
    mse = {
        "per_pixel": float(squared.mean()),
        "per_image_sum": float(squared.reshape(len(images), -1).sum(axis=1).mean()),
        "examples": len(images),
    }
    log(f"[decoder] test MSE per pixel {mse['per_pixel']:.5f}, per image (sum) {mse['per_image_sum']:.2f}")
    fid_samples, note = None, None
    fid_reconstructions = fid.fid(extractor, images, reconstructions)
    if model.sample_prior is not None:
        decode = tf.function(model.decode)
        samples = np.concatenate(
            [
                decode(model.sample_prior(hi - lo, _seed(settings.seed, 77, lo))).numpy()
                for lo, hi in _batches(len(images), settings.batch_size)
            ]
        )
        fid_samples = fid.fid(extractor, images, samples)
        log(f"[decoder] FID samples {fid_samples:.3f}, reconstructions {fid_reconstructions:.3f} "
            f"({len(images)} images)")  # fmt: skip
    else:
        note = "the model has no prior to sample from: 'fid' is not computed, see 'fid_reconstructions'"
        log(f"[decoder] FID reconstructions {fid_reconstructions:.3f}; {note}")
    return mse, fid_samples, fid_reconstructions, note


def _attack_pairs(labels, n_pool, settings, rng):
    """Per trial, a random set of examples and, for each, a target of another class of target_task."""
    per_trial = min(settings.ae_attack_examples, n_pool)
    sources, targets = [], []
    for _ in range(settings.ae_attack_trials):
        chosen = rng.choice(n_pool, size=per_trial, replace=False)
        for i in chosen:
            others = np.flatnonzero(labels != labels[i])
            if len(others) == 0:
                others = np.setdiff1d(np.arange(n_pool), [i]) if n_pool > 1 else np.array([i])
            targets.append(int(rng.choice(others)))
        sources.extend(int(i) for i in chosen)
    return np.array(sources), np.array(targets), per_trial


def autoencoder_attacks(model, images, labels, target_task, settings, log, timing, probe=None):
    """The latent-space and maximum-damage attacks over trials and lambdas.

    With `probe` (W, b), the linear probe of `target_task`, the latent attack also reports the downstream
    accuracy, clean and on the attacked codes, as the robust GMM-DAE paper's Table 3.
    """
    rng = np.random.default_rng(settings.seed)
    sources, targets, per_trial = _attack_pairs(labels[target_task], len(images), settings, rng)
    results = {}
    for a, kind in enumerate(ae_attacks.ATTACKS):
        classify = None if probe is None or kind != "latent" else (lambda z: tf.matmul(z, probe[0]) + probe[1])
        run = ae_attacks.make_attack(
            kind, model.encode_mean, model.decode, settings.pgd_steps, settings.restarts, classify=classify
        )
        downstream = {}
        by_lambda = {}
        start = time.perf_counter()
        for l, lam in enumerate(settings.lambdas):
            progress = _Progress(f"[ae_attacks] {kind} lambda={lam:g}", len(sources), log)
            collected = {}
            for i, (lo, hi) in enumerate(_batches(len(sources), settings.batch_size)):
                out = run(
                    tf.constant(images[sources[lo:hi]]),
                    tf.constant(images[targets[lo:hi]]),
                    tf.constant(lam, tf.float32),
                    _seed(settings.seed, 100 + a, l, i),
                )
                for key, value in out.items():
                    collected.setdefault(key, []).append(value.numpy())
                progress.update(hi - lo, f", loss so far {np.mean(np.concatenate(collected['loss'])):.3f}")
            predictions = {key: np.concatenate(collected.pop(key)) for key in ae_attacks.PREDICTIONS if key in collected}
            if predictions:
                true_class = labels[target_task][sources]
                downstream["clean"] = float(np.mean(predictions["clean_prediction"] == true_class))
                downstream.setdefault("by_lambda", {})[report.epsilon_key(lam)] = float(
                    np.mean(predictions["adversarial_prediction"] == true_class)
                )
            per_trial_means = {
                key: np.concatenate(values).reshape(settings.ae_attack_trials, per_trial).mean(axis=1)
                for key, values in collected.items()
            }
            by_lambda[report.epsilon_key(lam)] = {key: _stats(means) for key, means in per_trial_means.items()}
        seconds = time.perf_counter() - start
        timing[f"{kind}_attack"] = {
            "seconds": seconds,
            "examples_per_second": len(sources) * len(settings.lambdas) / seconds,
        }
        results[f"{kind}_attack"] = {
            "reference": "target" if kind == "latent" else "input",
            "objective": (
                "min ||z(x + d) - z(x_t)||_2, ||d||_2 <= lambda" if kind == "latent"
                else "max ||dec(z(x + d)) - dec(z(x))||_2, ||d||_2 <= lambda"
            ),  # fmt: skip
            "target_task": target_task if kind == "latent" else None,
            "metrics": list(ae_attacks.METRICS) + ["perturbation_l2"],
            "examples_per_trial": per_trial,
            "trials": settings.ae_attack_trials,
            "by_lambda": by_lambda,
        }
        if downstream:
            results[f"{kind}_attack"]["downstream_accuracy"] = dict(
                downstream, task=target_task, classifier="linear probe on the encoder mean (accuracy stage)"
            )
    return results["latent_attack"], results["max_damage_attack"]


def robustness_margin(model, images, settings, log, timing, output_dir):
    """The Camuto et al. bound and the empirical margin on a fixed random subset of the test pool."""
    rng = np.random.default_rng(settings.seed + 1)
    chosen = np.sort(rng.choice(len(images), size=min(settings.margin_examples, len(images)), replace=False))
    x_all = images[chosen]
    pixels = int(np.prod(images.shape[1:]))
    r = settings.margin_r if settings.margin_r is not None else 0.1 * math.sqrt(pixels)
    # A deterministic encoder has no stddev or one that is zero (e.g. a point-mass posterior): then
    # r-robustness needs no sampling and the bound does not apply.
    stochastic = model.stddev is not None and float(np.max(model.stddev(tf.constant(x_all[:8])))) > 0
    reason = None
    if model.stddev is None:
        reason = "the model has no posterior standard deviation (deterministic encoder)"
    elif not stochastic:
        reason = "the posterior standard deviation is zero (deterministic encoder)"
    samples = settings.margin_samples if stochastic else 1
    robust_at = tf.function(
        margin.make_robust_at(
            model.encode_mean, model.decode, model.stddev if stochastic else None, r, samples, settings.pgd_steps,
            settings.restarts,
        ),
        reduce_retracing=True,
    )

    @tf.function(reduce_retracing=True, autograph=False)  # plain Python control flow only
    def clean_statistics(x, seed):
        z = model.encode_mean(x)
        sd = model.stddev(x) if stochastic else None
        p = margin.robust_probability(model.decode, z, sd, model.decode(z), r, samples, seed)
        min_sd = tf.reduce_min(sd, axis=1) if stochastic else tf.zeros(tf.shape(x)[:1])
        return p, min_sd, margin.jacobian_frobenius(model.encode_mean, x)

    p_all, min_sd_all, jac_all, lo_all, hi_all = [], [], [], [], []
    progress = _Progress("[margin] bisection", len(x_all), log)
    for i, (lo, hi) in enumerate(_batches(len(x_all), settings.batch_size)):
        x = tf.constant(x_all[lo:hi])
        sample_seed = _seed(settings.seed, 200, i)  # the same posterior noise at x and at every x + d
        p, min_sd, jac = (v.numpy() for v in clean_statistics(x, sample_seed))
        bracket = margin.empirical_margin(
            robust_at, x, p > 0.5, settings.margin_min_radius, settings.margin_max_radius,
            settings.margin_search_steps, _seed(settings.seed, 300, i), sample_seed,
        )  # fmt: skip
        p_all.append(p)
        min_sd_all.append(min_sd)
        jac_all.append(jac)
        lo_all.append(bracket[0])
        hi_all.append(bracket[1])
        progress.update(hi - lo)
    p, min_sd, jac = np.concatenate(p_all), np.concatenate(min_sd_all), np.concatenate(jac_all)
    lo, hi = np.concatenate(lo_all), np.concatenate(hi_all)
    timing["margin"] = {"seconds": progress.seconds, "examples_per_second": len(x_all) / progress.seconds}
    if reason is None and not np.any(min_sd > 0):
        reason = "the posterior standard deviation is zero for every example"
    bound_info = {"applicable": reason is None, "reason": reason}
    per_example = {
        "p_clean": p.tolist(),
        "min_stddev": min_sd.tolist(),
        "jacobian_frobenius": jac.tolist(),
        "empirical_lo": lo.tolist(),
        "empirical_hi": [None if np.isinf(h) else float(h) for h in hi],
    }
    result = {
        "r": r,
        "r_rule": "given" if settings.margin_r is not None else "0.1 * sqrt(number of pixel values) (RMS change 0.1)",
        "norm": "l2",
        "examples": len(x_all),
        "samples": samples,
        "clean_robust_fraction": float(np.mean(p > 0.5)),
        "p_clean_mean": float(np.mean(p)),
        "jacobian_frobenius_median": float(np.median(jac)),
        "empirical": {
            "median_lo": float(np.median(lo)),
            "median_hi": float(np.median(hi)) if np.isfinite(np.median(hi)) else None,
            "censored_fraction": float(np.mean(np.isinf(hi))),
            "broken_at_min_radius_fraction": float(np.mean((hi == settings.margin_min_radius))),
            "min_radius": settings.margin_min_radius,
            "max_radius": settings.margin_max_radius,
            "search_steps": settings.margin_search_steps,
            "attack": "L2 PGD maximising ||g(mu(x + d)) - g(mu(x))||_2; r-robust if p > 1/2 at x + d",
        },
        "bound": bound_info,
        "bound_holds": "bound <= the smallest radius at which the attack broke r-robustness (hi)",
    }
    if reason is None:
        bound = np.maximum(margin.margin_bound(min_sd, margin.clip_probability(p, samples), jac).numpy(), 0.0)
        holds = bound <= hi
        bound_info.update({"median": float(np.median(bound)), "mean": float(np.mean(bound))})
        result["bound_holds_fraction"] = float(np.mean(holds))
        positive = bound > 0  # examples r-robust unperturbed, where the bound says something
        bound_info["positive_fraction"] = float(np.mean(positive))
        result["bound_holds_fraction_where_positive"] = float(np.mean(holds[positive])) if positive.any() else None
        per_example["bound"] = bound.tolist()
        report.plot_margin(bound, lo, hi, os.path.join(output_dir, "margin.png"))
        log(f"[margin] r={r:.3f}: bound median {bound_info['median']:.4g}, empirical margin median "
            f"{result['empirical']['median_lo']:.4g}, bound holds for "
            f"{100 * result['bound_holds_fraction']:.0f}%")  # fmt: skip
    else:
        result["bound_holds_fraction"] = None
        log(f"[margin] r={r:.3f}: bound skipped ({reason}); empirical margin median "
            f"{result['empirical']['median_lo']:.4g}")  # fmt: skip
    result["per_example"] = per_example
    return result


def encode_decode_chains(model, images, settings, output_dir, log):
    x = images[: settings.chain_examples]
    chain_images, latents = chains.encode_decode_chain(model.encode_mean, model.decode, x, settings.chain_steps)
    per_step = chains.drift(latents)
    report.plot_chain(chain_images, os.path.join(output_dir, "chain.png"))
    log(f"[chains] mean ||z_k - z_0|| after {settings.chain_steps} steps: {per_step[-1]:.4f}")
    return {"steps": settings.chain_steps, "examples": len(x), "per_step": per_step, "final": per_step[-1],
            "png": "chain.png"}  # fmt: skip


def evaluate_model(model_dir, output_dir, settings, dataset=None, data_dir=None, log=print):
    """Runs the protocol for the model in `model_dir`; writes and returns the result dict."""
    settings.check()
    config = read_config(model_dir)
    keras_model = load_model(model_dir)
    dataset = dataset or config.get("dataset")
    if not dataset:
        raise EvaluationError(f"no --dataset given and {model_dir!r} has no config.json naming one")
    try:
        spec = zoo_data.get_spec(dataset)
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    model_shape = tuple(getattr(keras_model, "image_shape", spec.image_shape))
    if model_shape != tuple(spec.image_shape):
        raise EvaluationError(
            f"the model takes {model_shape} images but dataset {dataset!r} has {tuple(spec.image_shape)} images"
        )
    tasks = resolve_tasks(dataset, settings.tasks)
    target_task = settings.target_task or next(iter(tasks))
    if target_task not in spec.tasks:
        raise EvaluationError(f"dataset {dataset!r} has no task {target_task!r}; its tasks: {', '.join(spec.tasks)}")
    model = interface.from_model(keras_model, name=config.get("model"))
    os.makedirs(output_dir, exist_ok=True)
    keras.utils.set_random_seed(settings.seed)

    images, labels = load_arrays(dataset, "test", settings.num_examples, data_dir, settings.download)
    log(f"evaluating {model.name} from {model_dir} on {len(images)} {dataset} test examples; "
        f"stages: {', '.join(settings.stages)}")  # fmt: skip
    timing = {}
    result = {
        "model": model.name,
        "model_dir": os.path.abspath(model_dir),
        "dataset": dataset,
        "adversarial_accuracy": None,
        "probes": None,
        "mse": None,
        "fid": None,
        "fid_reconstructions": None,
        "fid_features": None,
        "latent_attack": None,
        "max_damage_attack": None,
        "margin": None,
        "chain_drift": None,
    }
    probe_weights = {}
    if "accuracy" in settings.stages:
        train_images, train_labels = load_arrays(
            dataset, "train", settings.probe_train_examples, data_dir, settings.download
        )
        result["adversarial_accuracy"], result["probes"], probe_weights = adversarial_accuracy(
            model, images, labels, train_images, train_labels, tasks, settings, log, timing
        )
        del train_images, train_labels
    if "decoder" in settings.stages:
        try:
            extractor = fid.make_extractor(
                settings.fid_features, dataset, data_dir, settings.fid_cache_dir or fid.default_cache_dir(),
                settings.fid_classifier_train_examples, settings.fid_classifier_epochs, settings.seed,
                settings.download, log,
            )  # fmt: skip
        except ValueError as error:
            raise EvaluationError(str(error)) from None
        result["mse"], result["fid"], result["fid_reconstructions"], note = decoder_quality(
            model, images, extractor, settings, log
        )
        result["fid_features"] = dict(extractor.description, examples=len(images))
        if note:
            result["fid_note"] = note
    if "ae_attacks" in settings.stages:
        result["latent_attack"], result["max_damage_attack"] = autoencoder_attacks(
            model, images, labels, target_task, settings, log, timing, probe=probe_weights.get(target_task)
        )
    if "margin" in settings.stages:
        result["margin"] = robustness_margin(model, images, settings, log, timing, output_dir)
    if "chains" in settings.stages:
        result["chain_drift"] = encode_decode_chains(model, images, settings, output_dir, log)
    result["timing"] = timing
    result["settings"] = dict(
        dataclasses.asdict(settings),
        num_examples=len(images),
        requested_examples=settings.num_examples,
        tasks=list(tasks),
        target_task=target_task,
        data_dir=os.path.abspath(data_dir) if data_dir else None,
        attack="zoo.attacks.pgd",
        accuracy_attack="untargeted L-inf PGD, random start, restarts keep the worst case, pixels in [0, 1]",
        ms_ssim=msssim.describe(*spec.image_shape[:2]),
        stochastic_encoder=model.is_stochastic,
    )
    write_outputs(result, output_dir)
    return result


def write_outputs(result, output_dir):
    report.write_json(result, os.path.join(output_dir, report.JSON_FILE))
    with open(os.path.join(output_dir, report.TABLE_FILE), "w") as f:
        f.write(report.markdown(result))
    report.plot_accuracy([result], os.path.join(output_dir, "accuracy_vs_epsilon.png"))
    report.plot_ae_attacks([result], os.path.join(output_dir, "ae_attacks.png"))
