"""``run_experiment.py``: serve a workload with one or several scheduling policies.

Composition root: everything is built here from the config, then handed to plain objects.

    workload  = test-split samples (prompt, TRUE response, token counts, generator)
                + arrivals (gamma | poisson | Azure trace replay, ``conf/workload``)
    predictor = instantiate(cfg.predictor.runtime)    (batched up-front pass when it reads text)
    per variant: policy + one Scheduler per worker + load balancer → Simulator → records

Run directory (``paths.output_dir``)::

    config.yaml  workload.parquet  [requests.parquet metrics.json]           single run
    variants/<name>/{requests.parquet, metrics.json, variant.json}            preset=compare
    seeds/<seed>/{workload.parquet, variants/..., comparison.md}              compare.seeds=[...]
    comparison.{md,csv} (with seeds)                                         mean ± 95% CI over seeds
    rates/<rate>/variants/<name>/...                                          sweep.rates_rps
    comparison.md  comparison.csv  plots/*.png                                compare / sweep

Every sample is served on the identical workload (same seed, requests and arrival times).
``worker.kind`` other than 'sim' dispatches to ``elis.serving.wallclock.run_variant`` (issue 5).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from elis.rng import make_rng
from elis.serving.cost_model import CostModel
from elis.serving.metrics import summarize
from elis.serving.prediction import PredictionService
from elis.serving.runtime import SCHED_KEYS, build_prediction_service, build_schedulers, simulate  # noqa: F401
from elis.serving.runtime import json_default as _json_default
from elis.serving.simulator import RequestTable
from elis.serving.prediction import predictor_stats

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------- workload
def load_samples(data_dir: str | Path, split: str) -> pd.DataFrame:
    """The ``split`` rows of ``<data_dir>/pairs`` (a saved ``datasets.DatasetDict``).

    Raises:
        FileNotFoundError: the dataset is missing (names the build command).
        KeyError: the split is missing (lists the available ones).
        ValueError: the split is empty.
    """
    import datasets

    p = Path(data_dir) / "pairs"
    if not p.exists():
        raise FileNotFoundError(
            f"no dataset at {p}; build it with `python build_dataset.py data={Path(data_dir).name}`"
        )
    dd = datasets.load_from_disk(str(p))
    if split not in dd:
        raise KeyError(f"split={split!r} not in {p}; available: {list(dd.keys())}")
    df = dd[split].to_pandas()
    if df.empty:
        raise ValueError(f"split {split!r} of {p} is empty")
    return df


def select_generators(samples: pd.DataFrame, generators) -> pd.DataFrame:
    """Keep only the rows answered by ``generators`` (all rows when it is None or empty).

    Raises:
        ValueError: a name not among the split's generators (lists the valid ones).
    """
    if not generators:
        return samples
    wanted = list(generators)
    known = set(samples["generator"].unique())
    unknown = [g for g in wanted if g not in known]
    if unknown:
        raise ValueError(f"generators={unknown} not in this split; valid: {sorted(known)}")
    return samples[samples["generator"].isin(wanted)].reset_index(drop=True)


def choose_rows(num_available: int, num_requests: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``num_requests`` samples: seeded shuffles, concatenated (cycled) when more are needed."""
    reps = -(-num_requests // num_available)
    return np.concatenate([rng.permutation(num_available) for _ in range(reps)])[:num_requests]


def make_arrivals(wl: DictConfig, num_requests: int, seed: int) -> tuple[np.ndarray, pd.DataFrame | None]:
    """Arrival times (s, sorted) from ``cfg.workload`` and, for traces, the trace rows used.

    Raises:
        ValueError: unknown ``workload.kind`` (lists valid ones) or a trace too short.
    """
    from elis.experiments import workload as wlmod

    rng = make_rng(seed, "arrivals")
    kind = wl.kind
    if kind == "gamma":
        return wlmod.gamma_arrivals(num_requests, float(wl.rate_rps), float(wl.cv), rng), None
    if kind == "poisson":
        return wlmod.poisson_arrivals(num_requests, float(wl.rate_rps), rng), None
    if kind == "trace":
        # Rows are sorted by time before the first start_row + N are taken (read_trace).
        start = int(wl.get("start_row", 0))
        df = wlmod.load_trace(wl.path, time_scale=wl.time_scale, max_rows=start + num_requests,
                              time_unit=wl.get("time_unit", "auto"), format=wl.get("format", "auto"))
        df = df.iloc[start : start + num_requests].reset_index(drop=True)
        if len(df) < num_requests:
            raise ValueError(f"trace {wl.path} has {len(df)} rows from start_row={start}; need {num_requests}")
        t = df["arrival_time_s"].to_numpy(dtype=np.float64)
        return t - t[0], df
    raise ValueError(f"workload.kind={kind!r} is not one of ['gamma', 'poisson', 'trace']")


def build_table(cfg: DictConfig) -> tuple[RequestTable, pd.DataFrame]:
    """The run's workload as a ``RequestTable`` plus a DataFrame saved as ``workload.parquet``."""
    n = int(cfg.num_requests)
    arrivals, trace = make_arrivals(cfg.workload, n, int(cfg.seed))
    if trace is not None and cfg.workload.get("use_trace_lengths", False):
        wl = pd.DataFrame(
            {
                "sample_id": [f"trace/{i}" for i in range(n)],
                "num_prompt_tokens": trace["num_prompt_tokens"].to_numpy(),
                "num_output_tokens": trace["num_output_tokens"].to_numpy(),
            }
        )
        prompts = responses = generators = None
    else:
        samples = select_generators(
            load_samples(Path(cfg.paths.data_dir) / cfg.data.name, cfg.split), cfg.get("generators")
        )
        rows = choose_rows(len(samples), n, make_rng(int(cfg.seed), "workload/requests"))
        s = samples.iloc[rows].reset_index(drop=True)
        wl = s[["sample_id", "num_prompt_tokens", "num_output_tokens"]].copy()
        prompts, responses = s["prompt"].tolist(), s["response"].tolist()
        generators = s["generator"].tolist()
    wl.insert(0, "request_id", [f"req-{i:07d}" for i in range(n)])
    wl.insert(1, "arrival_time_s", arrivals)
    table = RequestTable(
        arrival_time_s=arrivals,
        num_prompt_tokens=wl["num_prompt_tokens"].to_numpy(),
        num_output_tokens=wl["num_output_tokens"].to_numpy(),
        max_tokens=resolve_max_tokens(cfg),
        prompts=prompts,
        responses=responses,
        generators=generators,
    )
    return table, wl


def resolve_max_tokens(cfg: DictConfig) -> int:
    """``cfg.max_tokens``, or with ``max_tokens=null`` the model's context length
    (``worker.max_context_tokens``): each request is then capped at the context its prompt
    leaves by the scheduler's context rule.

    Raises:
        ValueError: ``max_tokens=null`` without ``worker.max_context_tokens``, or a value < 1.
    """
    v = cfg.get("max_tokens")
    if v is None:
        ctx = cfg.worker.get("max_context_tokens")
        if ctx is None:
            raise ValueError("max_tokens=null needs worker.max_context_tokens (the model's context length "
                             "bounds each request); set max_tokens=<int> or worker.max_context_tokens=<int>")
        v = ctx
    if not int(v) >= 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {v!r}")
    return int(v)


def warn_if_overloaded(wl: pd.DataFrame, cost_model: CostModel, max_batch_size: int,
                       num_workers: int, max_tokens: int | None = None) -> float | None:
    """Log a warning when the offered load exceeds the capacity the cost model implies.

    Offered rate = (N − 1) / (last − first arrival); capacity from
    ``estimate_capacity_rps`` with the workload's mean prompt and output tokens (each output
    capped at ``max_tokens``, what is actually generated), times the number of workers. Above it the queue grows for the whole run and JCT reflects run length
    more than scheduling. Returns the offered load as a fraction of capacity (None for < 2 requests).
    """
    from elis.serving.cost_model import estimate_capacity_rps

    t = wl["arrival_time_s"].to_numpy(dtype=np.float64)
    if len(t) < 2 or t[-1] <= t[0]:
        return None
    offered = (len(t) - 1) / (t[-1] - t[0])
    out_tokens = wl["num_output_tokens"].clip(upper=max_tokens) if max_tokens else wl["num_output_tokens"]
    capacity = num_workers * estimate_capacity_rps(
        cost_model, float(wl["num_prompt_tokens"].mean()), float(out_tokens.mean()), max_batch_size,
    )
    load = offered / capacity
    msg = "offered load %.3f req/s = %.2f x the estimated capacity %.3f req/s (cost model %s, %d worker(s))"
    if load > 1.0:
        log.warning(msg + ": the queue grows for the whole run; lower the rate, raise time_scale "
                    "or add workers", offered, load, capacity, cost_model.name, num_workers)
    else:
        log.info(msg, offered, load, capacity, cost_model.name, num_workers)
    return load


def workload_stats(wl: pd.DataFrame, cfg: DictConfig, load_fraction: float | None) -> dict:
    """The requested and the REALISED offered load of a workload (issue 12 item 7).

    ``offered_rate_rps`` = (N − 1) / (last − first arrival) — what the seeded arrivals actually
    offer (e.g. 12–60 Gamma arrivals at 0.2 req/s realise 0.28–0.30 with seed 0);
    ``requested_rate_rps`` = ``workload.rate_rps`` (None for trace replay, whose
    ``time_scale`` is reported instead); ``offered_load_fraction`` = realised rate / the cost
    model's estimated capacity (``warn_if_overloaded``).
    """
    t = wl["arrival_time_s"].to_numpy(dtype=np.float64)
    span = float(t[-1] - t[0]) if len(t) >= 2 else 0.0
    w = cfg.workload
    return {
        "seed": int(cfg.seed),
        "requested_rate_rps": float(w.rate_rps) if w.get("kind") != "trace" and w.get("rate_rps") is not None else None,
        "trace_time_scale": float(w.time_scale) if w.get("kind") == "trace" else None,
        "offered_rate_rps": (len(t) - 1) / span if span > 0 else None,
        "offered_load_fraction": load_fraction,
    }


def seeds_of(cfg: DictConfig) -> list[int | None]:
    """``compare.seeds`` (each seed re-draws arrivals, requests and predictor noise), else [None].

    Raises:
        ValueError: an empty list or duplicated seeds.
    """
    comp = cfg.get("compare")
    seeds = comp.get("seeds") if comp else None
    if seeds is None:
        return [None]
    seeds = [int(x) for x in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"compare.seeds must be a non-empty list of distinct integers, got {seeds}")
    return seeds


# ---------------------------------------------------------------------- one variant
def run_variant(cfg: DictConfig, sched: dict, table: RequestTable, prediction, cost_model, out_dir: Path) -> dict:
    """Run one variant into ``out_dir`` (requests.parquet, metrics.json); return its summary."""
    import hydra.utils

    out_dir.mkdir(parents=True, exist_ok=True)
    kind = cfg.worker.get("kind", "sim")
    if kind != "sim":
        from elis.serving import wallclock  # issue 5: real workers on the same scheduler

        return wallclock.run_variant(cfg, sched, table, prediction, cost_model, out_dir)
    reveal = cfg.worker.get("text_reveal", "chars")
    if reveal != "chars":
        raise ValueError(f"worker.text_reveal={reveal!r} is not one of ['chars']")
    lb = hydra.utils.instantiate(cfg.load_balancer)
    t0 = time.perf_counter()
    res = simulate(
        table, sched, num_workers=int(cfg.num_workers), max_batch_size=int(cfg.max_batch_size),
        window_tokens=int(cfg.window_tokens), cost_model=cost_model, load_balancer=lb,
        prediction=prediction, kv_capacity_tokens=cfg.worker.get("kv_capacity_tokens"),
        record_intervals=bool(cfg.record_intervals),
        reveal_text=prediction is not None and prediction.reads_text and not _precompute(cfg, prediction),
        max_context_tokens=cfg.worker.get("max_context_tokens"),
        path=str(cfg.worker.get("sim_path", "auto")),
    )
    res.records.to_parquet(out_dir / "requests.parquet", index=False)
    metrics = summarize(res.records)
    metrics.update({k: v for k, v in res.counters.items() if k != "wall_s"})
    metrics["sim_wall_s"] = res.counters["wall_s"]
    metrics["sim_requests_per_wall_s"] = len(table) / max(res.counters["wall_s"], 1e-9)
    metrics["variant"] = sched
    if prediction is not None:
        metrics.update(predictor_stats(prediction.predictor))  # e.g. embedding.num_truncated
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
    log.info(
        "%s/%s: jct_mean_s=%.3f p99=%.3f (%d requests, %.2f s wall)", sched["policy"], sched.get("mode"),
        metrics["jct_mean_s"] or float("nan"), metrics["jct_p99_s"] or float("nan"), len(table),
        time.perf_counter() - t0,
    )
    return metrics


def _precompute(cfg: DictConfig, prediction: PredictionService | None) -> bool:
    if prediction is None:
        return False
    flag = cfg.get("precompute_predictions", "auto")
    return prediction.reads_text if flag == "auto" else bool(flag)


# ---------------------------------------------------------------------- entry
SIZE_KEYS = ("num_requests", "max_tokens", "max_batch_size", "window_tokens", "num_workers")
ARTEFACT_KEYS = ("ckpt_path", "model_path", "path")


def validate_sizes(cfg: DictConfig) -> None:
    """Each of ``SIZE_KEYS`` must be an integer ≥ 1.

    Raises:
        UserError: naming the key and its value (``num_requests=0``, ``max_tokens=None``).
    """
    from elis.cli import UserError

    for key in SIZE_KEYS:
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{key}={v!r} is not allowed: {key} must be an integer >= 1")


def choose_predictor(candidates: list[tuple[str, Path | None]], fallback: str) -> tuple[str, str]:
    """``(name, reason)``: the first candidate whose artefact file exists, else ``fallback``."""
    for name, artefact in candidates:
        if artefact is not None and Path(artefact).is_file():
            return name, f"its trained artefact {artefact} exists"
    looked = ", ".join(str(a) for _, a in candidates if a is not None) or "nothing"
    return fallback, f"no trained predictor for this data (looked for {looked})"


def _artefact_of(cfg: DictConfig) -> Path | None:
    """The file whose existence means ``cfg.predictor`` is trained (None: nothing to look for)."""
    rt = cfg.predictor.get("runtime") or {}
    for k in ARTEFACT_KEYS:
        if rt.get(k):
            return Path(str(rt.get(k)))
    if rt.get("model_dir"):  # folder artefacts (gbdt): their metadata file
        return Path(str(rt.get("model_dir"))) / "meta.json"
    return None


def resolve_predictor(cfg: DictConfig) -> DictConfig:
    """Replace ``predictor=auto`` by the chosen option (``choose_predictor``); log which and why."""
    from elis.config import CONFIG_DIR

    p = cfg.get("predictor")
    if p is None or p.get("name") != "auto":
        return cfg
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    options = {}
    for name in list(p.candidates):
        trial = cfg.copy()
        trial.predictor = OmegaConf.load(CONFIG_DIR / "predictor" / f"{name}.yaml")
        options[name] = (trial.predictor, _artefact_of(trial))
    name, reason = choose_predictor([(n, a) for n, (_, a) in options.items()], str(p.fallback))
    cfg.predictor = options[name][0] if name in options else OmegaConf.load(
        CONFIG_DIR / "predictor" / f"{name}.yaml")
    if name in options:
        log.info("predictor=auto → %s: %s", name, reason)
    else:
        log.warning("predictor=auto → %s: %s; train one with `python train.py predictor=%s data=%s`",
                    name, reason, list(p.candidates)[0], cfg.data.name)
    cfg.predictor_choice = {"name": name, "reason": reason}
    return cfg


def ensure_dataset(cfg: DictConfig) -> None:
    """Build the small embedded default dataset when it is missing (any other is left to the user)."""
    if (Path(cfg.paths.data_dir) / cfg.data.name / "pairs").exists() or cfg.data.name != "embedded":
        return
    from elis.data.build import run as build_run

    log.info("data=embedded is not built yet; building it now (about a minute)")
    build_run(OmegaConf.create({"data": OmegaConf.to_container(cfg.data, resolve=False),
                                "paths": OmegaConf.to_container(cfg.paths, resolve=False),
                                "seed": cfg.seed, "task_name": "build_dataset"}))


def build_prediction(cfg: DictConfig, cost_model: CostModel, table: RequestTable) -> PredictionService | None:
    """Instantiate ``cfg.predictor.runtime`` and wrap it; precompute all steps when configured."""
    service = build_prediction_service(cfg, cost_model)
    if service is None:
        return None
    if _precompute(cfg, service):
        service.precompute(table.make_request(i) for i in range(len(table)))
    return service


def variants_of(cfg: DictConfig) -> list[tuple[str, dict]]:
    """``[(name, sched dict)]``: ``compare.variants`` merged over ``cfg.sched``, or ``cfg.sched`` alone."""
    base = {k: v for k, v in OmegaConf.to_container(cfg.sched, resolve=True).items() if k in SCHED_KEYS}
    comp = cfg.get("compare")
    if not comp:
        return [(f"{base['policy']}_{base.get('mode', 'windowed')}", base)]
    out = []
    for v in OmegaConf.to_container(comp.variants, resolve=True):
        v = dict(v)
        name = v.pop("name")
        unknown = sorted(set(v) - set(SCHED_KEYS))
        if unknown:
            raise ValueError(f"compare.variants[{name}] has unknown keys {unknown}; valid: {list(SCHED_KEYS)}")
        merged = {**base, **v}
        if v.get("policy", base.get("policy")) != base.get("policy") and "policy_params" not in v:
            merged.pop("policy_params", None)  # another policy's parameters do not carry over
        out.append((name, merged))
    return out


def compare_skip_reason(cfg: DictConfig, sched: dict, prediction) -> str | None:
    """Why a ``compare.variants`` entry cannot run with this predictor, or None.

    A comparison preset lists every policy; one that needs something the configured predictor
    does not give (``gittins`` needs ``predict_quantiles``: oracle, noisy_oracle, gbdt) is skipped
    with a WARNING and listed in ``skipped_variants.json`` instead of failing the whole run (e.g.
    ``make run`` with the learned MLP). A single policy (no ``compare``) still fails with the
    policy's own error naming the predictor.
    """
    if prediction is None or not cfg.get("compare") or len(cfg.compare.variants) < 2:
        return None  # no predictor at all: the policy's own error, as for a single run
    from elis.serving.policy import make_policy

    params = dict(sched.get("policy_params") or {})
    policy = make_policy(sched["policy"], **params)
    try:
        policy.validate_predictor(prediction)  # what the Scheduler checks, with the same object
    except ValueError as exc:
        return str(exc)
    return None


def run(cfg: DictConfig) -> dict:
    """Run the configured experiment; returns ``{variant_name: metrics}`` (+ ``output_dir``)."""
    import hydra.utils

    validate_sizes(cfg)
    ensure_dataset(cfg)
    cfg = resolve_predictor(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    cost_model: CostModel = hydra.utils.instantiate(cfg.cost_model)
    variants = variants_of(cfg)
    sweep = cfg.get("sweep")
    rates = list(sweep.rates_rps) if sweep else [None]
    results: dict = {"output_dir": str(out_dir)}
    skipped: dict[str, str] = {}
    for rate in rates:
        rcfg = cfg
        rdir = out_dir
        if rate is not None:
            rcfg = cfg.copy()
            OmegaConf.set_struct(rcfg, False)
            if rcfg.workload.kind == "trace":
                rcfg.workload.time_scale = float(rate)
            else:
                rcfg.workload.rate_rps = float(rate)
            rdir = out_dir / "rates" / f"{float(rate):g}"
        seeds = seeds_of(cfg)
        for seed in seeds:
            scfg, sdir = rcfg, rdir
            if seed is not None:
                scfg = rcfg.copy()
                OmegaConf.set_struct(scfg, False)
                scfg.seed = int(seed)
                sdir = rdir / "seeds" / str(int(seed))
            table, wl = build_table(scfg)
            load = warn_if_overloaded(wl, cost_model, int(scfg.max_batch_size), int(scfg.num_workers),
                                     int(scfg.max_tokens))
            wstats = workload_stats(wl, scfg, load)
            sdir.mkdir(parents=True, exist_ok=True)
            wl.to_parquet(sdir / "workload.parquet", index=False)
            prediction = build_prediction(scfg, cost_model, table)
            for name, sched in variants:
                reason = compare_skip_reason(cfg, sched, prediction)
                if reason is not None:  # counted and reported, never silently dropped
                    log.warning("variant %s skipped: %s", name, reason)
                    skipped[name] = reason
                    continue
                vdir = sdir if not cfg.get("compare") else sdir / "variants" / name
                m = run_variant(scfg, sched, table, prediction, cost_model, vdir)
                m.update(wstats)  # realised offered load next to the requested one
                (vdir / "metrics.json").write_text(json.dumps(m, indent=2, default=_json_default))
                (vdir / "variant.json").write_text(json.dumps({"name": name, **sched, "rate": rate, "seed": seed}))
                key = name if rate is None else f"{name}@{rate:g}"
                results[key if seed is None else f"{key}#s{int(seed)}"] = m
            if cfg.get("compare"):
                from elis.experiments.report import write_comparison

                write_comparison(sdir)
                if skipped:
                    with open(sdir / "comparison.md", "a") as fh:
                        fh.write("\n" + "".join(f"Skipped {n}: {r}\n" for n, r in skipped.items()))
        if seeds != [None]:
            from elis.experiments.report import write_seed_comparison

            write_seed_comparison(rdir)
    if skipped:
        (out_dir / "skipped_variants.json").write_text(json.dumps(skipped, indent=2))
    if cfg.get("plots", True):
        from elis.experiments.plots import plot_run

        plot_run(out_dir)
    if cfg.get("wandb"):
        log_to_wandb(cfg, out_dir, results)
    return results


def log_to_wandb(cfg: DictConfig, out_dir: Path, results: dict) -> None:
    """Log the finished run folder (config, metrics, comparison tables, plots) to W&B.

    Offline by default (``wandb.mode``); sync later with ``wandb sync <out_dir>/wandb/...``.
    """
    from elis.experiments.tracking import log_run_dir

    w = cfg.wandb
    log_run_dir(out_dir, project=w.get("project", "elis"), name=w.get("name"),
                mode=w.get("mode", "offline"), dir=out_dir, job_type="run_experiment")
