"""Run a comparison end to end: checks, matched budgets, run directories, `lumi train` processes, report.

    results, files = run_comparison(spec, Path("compare/default"))

compare/<name>/ holds compare.yaml (the spec + resolved budgets: a re-run uses exactly the same
numbers), checks.json, configs/<arm>/seed-<k>.yaml, logs/<arm>/seed-<k>.log, runs/<arm>/seed-<k>/ and
the report. Re-running continues: finished runs are reused, interrupted ones resumed, nothing repeated.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lumi.compare.launchers import Launcher, LocalLauncher, make_launcher
from lumi.compare.plan import (
    ArmPlan,
    ModelFacts,
    measure_tokens_per_s,
    model_facts,
    plan_budgets,
    tokens_per_step,
    train_settings,
    validate_pairing,
)
from lumi.compare.runner import RunJob
from lumi.compare.spec import CompareSpec
from lumi.errors import LumiError
from lumi.io import coerce, read_yaml, write_json, write_yaml
from lumi.run import LOGGING_KEYS, Run, config_differences
from lumi.train.config import parse_budget

# Spec keys that may change between invocations without changing any run: more seeds, another
# threshold or baseline, a different parallelism, permission to train leaky arms.
NON_RUN_KEYS = ("name", "seeds", "threshold", "baseline", "jobs", "allow_leaky", "eval", "bench")
CHECK_SEQ_LEN = 32
REUSABLE = ("completed", "diverged")


def _log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


def _run_defining(d: dict[str, Any]) -> dict[str, Any]:
    """The spec keys that change runs. The baseline does too when the budgets are converted through it
    (--match flops with a step/token budget; a time budget with --match tokens|flops)."""
    kind = parse_budget(str(d.get("budget", "1steps"))).kind
    via_baseline = (d.get("match") == "flops" and kind != "flops") or (
        kind == "seconds" and d.get("match") != "time"
    )
    out = {k: v for k, v in d.items() if k not in NON_RUN_KEYS or (k == "baseline" and via_baseline)}
    if isinstance(out.get("train"), dict):  # live logging (train.logger, its tags) changes no run
        logging = {k.split(".", 1)[1] for k in LOGGING_KEYS}
        out["train"] = {k: v for k, v in out["train"].items() if k not in logging}
    return out


def open_comparison_dir(
    spec: CompareSpec, comp_dir: Path, force: bool, log: Callable[[str], None] = _log
) -> dict[str, Any] | None:
    """The saved compare.yaml when ``comp_dir`` holds this same comparison; None for a fresh directory.

    A different comparison is refused (its differing keys listed) unless ``force``, which moves it
    aside to <dir>.replaced-<time>: runs of different specs are never mixed.
    """

    if not comp_dir.exists() or (
        comp_dir.is_dir() and not any(p.name != ".lock" for p in comp_dir.iterdir())
    ):
        return None  # new, or only the lock file of a comparison killed before it wrote anything
    saved_path = comp_dir / "compare.yaml"
    if not saved_path.is_file():
        raise LumiError(
            f"{str(comp_dir)!r} exists but is not a lumi compare directory (no compare.yaml); "
            f"choose another --out or --name"
        )
    try:
        saved = read_yaml(saved_path, "comparison state")
    except LumiError as e:
        raise LumiError(f"{e}; move the directory away or use --force") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("spec"), dict):
        raise LumiError(f"{saved_path} has no spec; move the directory away or use --force")
    diffs = config_differences(_run_defining(saved["spec"]), _run_defining(spec.to_dict()))
    if not diffs:
        return saved
    if (
        not (comp_dir / "runs").exists() and not (comp_dir / "tune").exists()
    ):  # never trained: nothing to keep
        log(f"{comp_dir} held a comparison that never trained; replacing its spec ({'; '.join(diffs[:2])})")
        return None
    tune_diffs = [d for d in diffs if d.startswith("tune")]
    if tune_diffs and not force:  # its own line: tuning with another grid would mix two searches
        raise LumiError(
            f"{str(comp_dir)!r} was tuned differently ({'; '.join(tune_diffs[:2])}); its tuned lrs and "
            f"runs come from that search: re-run with the same --tune/--tune-grid, or use another "
            f"--name / --out, or --force to start fresh (the old directory is kept beside it)"
        )
    if not force:
        raise LumiError(
            f"{str(comp_dir)!r} holds a different spec ({'; '.join(diffs[:4])}"
            f"{' ...' if len(diffs) > 4 else ''}); runs of different comparisons are never mixed: "
            f"use another --name / --out, or --force to start fresh (the old directory is kept beside it)"
        )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    moved = comp_dir.with_name(f"{comp_dir.name}.replaced-{stamp}")
    comp_dir.rename(moved)
    log(f"--force: moved the previous comparison to {moved}")
    return None


def run_comparison(
    spec: CompareSpec,
    comp_dir: Path,
    force: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    make_plots: bool = True,
    log: Callable[[str], None] = _log,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Check, plan, train (or reuse) every arm x seed, then write the report. Returns (results, files)."""
    from lumi.lock import lock_directory

    comp_dir = Path(comp_dir)
    validate_pairing(spec)
    from lumi.train.loggers import require_logger

    require_logger(train_settings(spec).logger)  # once here, not once per child process
    launcher = make_launcher(spec.launcher, comp_dir)  # a missing submitit fails here, before any work
    saved = open_comparison_dir(spec, comp_dir, force, log)
    _load_plugins(spec)
    try:
        comp_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. --out below a regular file
        from lumi.errors import write_error_text

        raise LumiError(
            f"cannot create the comparison directory {comp_dir}: {write_error_text(e, comp_dir.parent)}"
        ) from None
    # One `lumi compare` per directory: a second one would train the same runs at once and report the
    # other's runs as failed. The lock is released when this process ends, however it ends.
    with lock_directory(comp_dir, "comparison directory"):
        return _run_locked(spec, comp_dir, saved, retry_failed, progress, make_plots, log, launcher)


def _run_locked(
    spec: CompareSpec,
    comp_dir: Path,
    saved: dict[str, Any] | None,
    retry_failed: bool,
    progress: bool,
    make_plots: bool,
    log: Callable[[str], None],
    launcher: Launcher | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    from lumi.compare.report import write_report
    from lumi.compare.results import collect_results
    from lumi.io import json_safe

    state: dict[str, Any] = dict(saved or {})
    state["spec"] = spec.to_dict()
    write_yaml(comp_dir / "compare.yaml", state)
    seeds_text = f"seeds auto:{spec.seeds_max}" if spec.seeds_max is not None else f"{len(spec.seeds)} seeds"
    log(
        f"comparison {spec.name!r} in {comp_dir}: {len(spec.arms)} arms x {seeds_text}, budget "
        f"{spec.budget}, matched {spec.match}"
    )

    data_dirs = _prepare_data(spec, progress, log)
    vocab = {tok: d.vocab_size for tok, d in data_dirs.items()}
    fingerprints = {tok: d.fingerprint() for tok, d in data_dirs.items()}
    for tok, old in (state.get("data_fingerprints") or {}).items():
        trained = (comp_dir / "runs").exists() or (comp_dir / "tune").exists()
        if tok in fingerprints and fingerprints[tok] != old and trained:
            raise LumiError(
                f"the prepared data for {spec.data['corpus']} / {tok} changed since this comparison's "
                f"runs were trained (were corpus files edited?); mixing them would compare different "
                f"data: use --force to start fresh (the old comparison is kept beside it)"
            )
    state["data_fingerprints"] = fingerprints
    checks = _run_checks(spec, comp_dir, vocab, log)

    settings = train_settings(spec)
    seq_len = settings.seq_len
    facts = {a.label: model_facts(a, vocab[spec.tokenizer_of(a)], seq_len) for a in spec.arms}
    tps = tokens_per_step(spec)
    jobs = min(spec.jobs, len(spec.arms) * len(spec.seeds))
    threads = max(1, _cpu_count() // max(1, jobs))
    if state.get("plans") and set(state["plans"]) == {a.label for a in spec.arms}:
        plans = {k: ArmPlan(**v) for k, v in state["plans"].items()}  # same spec: exactly the same budgets
    else:
        probe = None
        if spec.budget.is_time and spec.match != "time":
            base = spec.arm(spec.baseline)
            log(
                f"measuring {spec.baseline}'s throughput to convert the {spec.budget} budget into "
                f"{spec.match} ({threads} threads) ..."
            )
            probe = measure_tokens_per_s(
                base, vocab[spec.tokenizer_of(base)], seq_len, settings.batch_size, threads
            )
            log(f"  {probe:,.0f} tokens/s -> {probe * spec.budget.value:,.0f} tokens")
        plans = {p.label: p for p in plan_budgets(spec, facts, tps, probe)}
        state["probe_tokens_per_s"] = probe
        state["plans"] = {k: p.to_dict() for k, p in plans.items()}
    state["facts"] = {k: f.to_dict() for k, f in facts.items()}
    write_yaml(comp_dir / "compare.yaml", state)
    _log_plans(spec, plans, facts, log)

    notes = []
    if spec.match == "time" and jobs > 1:
        notes.append(
            f"time-matched with {jobs} runs in parallel: each run's throughput depends on what ran beside it"
        )
    tokenizers = sorted({spec.tokenizer_of(a) for a in spec.arms})
    if len(tokenizers) > 1:
        notes.append(
            f"arms use different tokenizers ({', '.join(tokenizers)}): their token counts are not the same "
            f"amount of text (compare FLOPs and BPB), and a seed fixes each arm's initialisation and "
            f"sampling but not the same text per step, so pairing removes less noise"
        )
    env = {"threads_per_run": threads, "jobs": jobs, "cpus": _cpu_count(), "python": sys.version.split()[0]}

    # Equal tuning effort: each arm's lr is chosen on the tuning split before any final run; the final runs
    # use run_spec (the spec with each arm's chosen optimizer settings).
    run_spec = copy.deepcopy(spec)  # its seeds grow with seeds: auto; the caller's spec stays as requested
    tuning = None
    if spec.tune:
        from lumi.compare.tune import run_tuning

        tuning = run_tuning(spec, comp_dir, data_dirs, plans, threads, jobs, retry_failed, progress, log)
        state["tuning"] = tuning
        write_yaml(comp_dir / "compare.yaml", state)
        for arm in run_spec.arms:
            arm.optim = dict(tuning["arms"][arm.label]["optim"])
            log(
                f"  {arm.label}: {tuning['param']} = {tuning['arms'][arm.label]['chosen']:g} (tuning-split BPB "
                f"{tuning['arms'][arm.label]['chosen_tune_bpb']:.4f})"
            )

    # Seeds: a fixed list, or (seeds: auto) rounds of one more seed per arm until the stop rule holds.
    plan_dicts = {k: {**p.to_dict(), **facts[k].to_dict()} for k, p in plans.items()}
    rounds: list[dict[str, Any]] = []
    while True:
        if launcher is not None:  # cluster jobs of an earlier invocation finish before runs are scheduled
            launcher.wait_for_earlier(log)
        run_list = _schedule(run_spec, comp_dir, data_dirs, plans, threads, retry_failed, log)
        reused = len(spec.arms) * len(run_spec.seeds) - len(run_list)
        interrupted = execute_jobs(
            run_list, jobs, {k: p.steps for k, p in plans.items()}, reused, progress, log, launcher
        )
        results = collect_results(run_spec, comp_dir, checks=checks, plans=plan_dicts, env=env, notes=notes)
        if spec.seeds_max is None or interrupted:
            break
        stop, reason = _auto_round(results, run_spec, rounds)
        log(
            f"seeds auto: {len(run_spec.seeds)} seeds: "
            + "; ".join(
                _decision_text(a, rounds[-1]["decisions"])
                for a in results["arms"]
                if a["label"] in rounds[-1]["decisions"]
            )
            + (f" -> stop ({reason})" if stop else " -> one more seed")
        )
        if stop:
            break
        run_spec.seeds = list(range(len(run_spec.seeds) + 1))
    if spec.eval and not interrupted:  # extra evaluations of every finished run, then paired like the BPB
        from lumi.compare.evals import run_evals

        runs = [
            (comp_dir / "runs" / a.dirname / f"seed-{s}", list(a.files))
            for a in run_spec.arms
            for s in run_spec.seeds
        ]
        run_evals(spec.eval, runs, log)
        results = collect_results(run_spec, comp_dir, checks=checks, plans=plan_dicts, env=env, notes=notes)
    if spec.bench and not interrupted:  # inference speed of each arm's seed-0 model, beside its BPB
        from lumi.compare.bench import bench_arms

        first_seed = run_spec.seeds[0]
        arm_runs = [
            (a.label, comp_dir / "runs" / a.dirname / f"seed-{first_seed}", list(a.files))
            for a in run_spec.arms
        ]
        results["bench"] = bench_arms(arm_runs, seq_len, _cpu_count(), log)  # the runs are done: every core
    if spec.seeds_max is not None:
        _attach_auto(results, spec, rounds, interrupted)
    results["spec"] = json_safe(spec.to_dict())  # the requested spec (run_spec carries the tuned lrs)
    if tuning is not None:
        results["tuning"] = json_safe(tuning)
    files = write_report(results, comp_dir, make_plots=make_plots)
    if interrupted:
        done = sum(r["status"] in REUSABLE for a in results["arms"] for r in a["runs"])
        log(
            f"interrupted: {done} of {len(spec.arms) * len(run_spec.seeds)} runs finished; partial report in "
            f"{files['report']}; re-run the same command to resume"
        )
        raise KeyboardInterrupt
    return results, files


def execute_jobs(
    run_list: list[RunJob],
    jobs: int,
    total_steps: dict[str, int | None],
    reused: int,
    progress: bool,
    log: Callable[[str], None],
    launcher: Launcher | None = None,
) -> bool:
    """Run the jobs with the live display (on ``launcher``: the local pool unless given); True when
    interrupted (Ctrl-C / SIGTERM: local children checkpointed, cluster jobs keep running)."""
    if not run_list:
        return False
    from lumi.compare.display import CompareDisplay

    display = CompareDisplay(run_list, total_steps, reused, enabled=progress)

    def ended(job: RunJob) -> None:
        _mark_killed(job, log)  # first, so the display and the report see the recorded status
        display.finished(job)

    try:
        (launcher or LocalLauncher()).run(run_list, jobs, display.started, ended, display.tick)
    except KeyboardInterrupt:
        return True
    finally:
        display.close()
    return False


def _auto_round(results: dict[str, Any], spec: CompareSpec, rounds: list[dict[str, Any]]) -> tuple[bool, str]:
    """Record this round's decisions (anytime-valid: see lumi.compare.sequential); (stop?, why)."""
    from lumi.compare.sequential import round_decisions

    assert spec.seeds_max is not None  # called for seeds: auto only
    decisions = round_decisions(results["arms"], spec.threshold)
    rounds.append({"seeds": len(spec.seeds), "decisions": decisions})
    if all(d != "undecided" for d in decisions.values()):
        return True, "every arm decided"
    if len(spec.seeds) >= spec.seeds_max:
        return True, f"reached the maximum of {spec.seeds_max} seeds"
    return False, ""


def _decision_text(arm: dict[str, Any], decisions: dict[str, str]) -> str:
    """'multiscale undecided (Δ -0.0675, anytime-valid interval [-0.1973, 0.0622])'."""
    vs = arm.get("vs_baseline") or {}
    lo, hi, mean = vs.get("cs_low"), vs.get("cs_high"), vs.get("mean_diff")
    interval = f"[{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else "unbounded"
    delta = f"Δ {mean:+.4f}, " if mean is not None else ""
    return f"{arm['label']} {decisions[arm['label']]} ({delta}anytime-valid interval {interval})"


def _attach_auto(
    results: dict[str, Any], spec: CompareSpec, rounds: list[dict[str, Any]], interrupted: bool
) -> None:
    """The stop rule, every round's decisions and the stop reason, in results.json and on each arm."""
    from lumi.compare.sequential import SeedsRule

    assert spec.seeds_max is not None  # called for seeds: auto only
    last: dict[str, Any] = rounds[-1] if rounds else {"seeds": len(results.get("seeds", [])), "decisions": {}}
    if interrupted:
        reason = "interrupted: re-run the same command to continue deciding"
    elif all(d != "undecided" for d in last["decisions"].values()):
        reason = "every arm decided"
    else:
        reason = f"reached the maximum of {spec.seeds_max} seeds"
    results["seeds_rule"] = {
        **SeedsRule(spec.seeds_max).to_dict(),
        "rounds": rounds,
        "stopped_after": last["seeds"],
        "stop_reason": reason,
    }
    for a in results["arms"]:
        if not a.get("is_baseline"):
            a["sequential"] = {
                "decision": last["decisions"].get(a["label"], "undecided"),
                "seeds": last["seeds"],
                "reason": reason,
            }


# -- steps -------------------------------------------------------------------------------------------


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _load_plugins(spec: CompareSpec) -> None:
    """Import plugin files and resolve every arm's model config now, so a typo fails before any work."""
    from lumi.models.registry import load_model_file, make_config

    for arm in spec.arms:
        arm.files = [str(Path(f).expanduser().resolve()) for f in arm.files]
        for f in arm.files:
            load_model_file(f)
        try:
            make_config(arm.name, arm.preset, arm.overrides)
        except LumiError as e:
            raise LumiError(f"arm {arm.label!r}: {e}") from None


# A child ended by an interrupt (ours, forwarded from Ctrl-C / SIGTERM, or the user's): 130 from lumi's
# handler, or death by SIGINT / SIGTERM when it came before the handler was installed.
INTERRUPTED_CODES = (130, -signal.SIGINT, -signal.SIGTERM)


def _mark_killed(job: RunJob, log: Callable[[str], None]) -> None:
    """A child that ended without a final status is recorded: `interrupted` when an interrupt ended it (it
    resumes, or restarts when it had no checkpoint yet), else `failed` with how it ended and its log."""
    run = Run(job.run_dir)
    if job.returncode in (None, 0) or run.status() not in (None, "running", "unknown"):
        return
    if job.returncode in INTERRUPTED_CODES:
        status, error = (
            "interrupted",
            f"stopped by an interrupt before it wrote a final status; see {job.log_path}",
        )
    else:
        if job.returncode < 0:
            name = signal.Signals(-job.returncode).name if -job.returncode in signal.valid_signals() else "?"
            how = f"was killed by signal {-job.returncode} ({name})"
        else:
            how = f"exited with code {job.returncode}"
        status, error = "failed", f"lumi train {how} without writing a final status; see {job.log_path}"
    run.mark(status, error)
    log(f"{job.key}: {error}")


def _prepare_data(spec: CompareSpec, progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """tokenizer spec -> PreparedData, prepared (or reused) once, before any run starts."""
    from lumi.data.prepare import load_prepared, prepare

    out: dict[str, Any] = {}
    for arm in spec.arms:
        tok = spec.tokenizer_of(arm)
        if tok in out:
            continue
        if spec.data.get("dir") and tok == spec.data["tokenizer"]:
            out[tok] = load_prepared(Path(spec.data["dir"]))
            if out[tok].tokenizer.spec != tok:
                raise LumiError(
                    f"--data {spec.data['dir']} holds {out[tok].tokenizer.spec} shards, but the comparison's "
                    f"tokenizer is {tok}; pass --tokenizer {out[tok].tokenizer.spec} or another --data"
                )
        else:
            out[tok] = prepare(spec.data["corpus"], tok, progress=progress, log=log)
        log(f"data: {spec.data['corpus']} / {tok}: vocabulary {out[tok].vocab_size}, {out[tok].directory}")
    return out


def _definition_hash(arm, vocab_size: int, probe_lengths: list[int]) -> str:
    """What a check result depends on: the arm, the vocabulary, the probed lengths, the model and check
    code, plugin files."""
    import lumi

    h = hashlib.sha256(
        json.dumps(
            [arm.name, arm.preset, arm.overrides, vocab_size, CHECK_SEQ_LEN, probe_lengths, lumi.__version__],
            sort_keys=True,
            default=str,
        ).encode()
    )
    root = Path(lumi.__file__).parent
    for path in sorted([*root.glob("models/*.py"), *root.glob("check/*.py")]) + [Path(f) for f in arm.files]:
        h.update(path.read_bytes())
    return h.hexdigest()


def _run_checks(
    spec: CompareSpec, comp_dir: Path, vocab: dict[str, int], log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """`lumi check` on every arm (cached by definition), its causality probes also at the comparison's
    training (= evaluation) length. Refuses leaky arms unless spec.allow_leaky."""
    from lumi.check.runner import run_checks

    probe_lengths = [train_settings(spec).seq_len]

    cache_path = comp_dir / "checks.json"
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except ValueError:
        cache = {}
    checks: dict[str, dict[str, Any]] = {}
    for arm in spec.arms:
        key = _definition_hash(arm, vocab[spec.tokenizer_of(arm)], probe_lengths)
        if key in cache:
            report = cache[key]
        else:
            log(
                f"lumi check {arm.label} ({arm.spec()}, vocab {vocab[spec.tokenizer_of(arm)]}, causality also at "
                f"T={probe_lengths[0]}) ..."
            )
            report = run_checks(
                arm.name,
                arm.preset,
                arm.overrides,
                vocab_size=vocab[spec.tokenizer_of(arm)],
                seq_len=CHECK_SEQ_LEN,
                extra_lengths=probe_lengths,
            ).to_dict()
            cache[key] = report
            write_json(cache_path, cache)
        checks[arm.label] = report
        failed = [r for r in report["results"] if not r["passed"]]
        leaks = [r for r in failed if r["name"].startswith("causality")]
        if not failed:
            log(f"  {arm.label}: {len(report['results'])}/{len(report['results'])} checks passed")
        elif leaks and not spec.allow_leaky:
            raise LumiError(
                f"arm {arm.label!r} failed lumi check: {leaks[0]['name']}: {leaks[0]['detail']}. A model "
                f"that sees the future has a meaningless BPB, so nothing was trained; fix the model "
                f"(`lumi check {arm.name}{' --preset ' + arm.preset if arm.preset else ''}`), or pass "
                f"--allow-leaky to train it anyway (it then gets no verdict, and runs whose trained "
                f"weights leak are marked LEAK)"
            )
        else:
            log(
                f"  WARNING {arm.label}: failed "
                + "; ".join(f"{r['name']}: {r['detail']}" for r in failed)
                + " — training it anyway; it gets no verdict"
            )
    return checks


def _log_plans(
    spec: CompareSpec, plans: dict[str, ArmPlan], facts: dict[str, ModelFacts], log: Callable[[str], None]
) -> None:
    for arm in spec.arms:
        p, f = plans[arm.label], facts[arm.label]
        what = (
            f"{p.steps} steps, {p.tokens:,} tokens, {p.flops:.3g} FLOPs" if p.steps is not None else p.budget
        )
        log(
            f"  {arm.label}: {f.params:,} params ({f.non_embedding_params:,} non-embedding), "
            f"{f.flops_per_token:.3g} FLOPs/token -> {what}"
        )


def run_config(
    spec: CompareSpec, arm, seed: int, plan: ArmPlan, data_dir: Path, threads: int
) -> dict[str, Any]:
    """The `lumi train` config of one run: shared settings, the arm's model and optim, seed, matched budget.

    With live logging (train.logger), the run is tagged with its arm, seed and comparison (after any
    train.logger_tags of the spec), so a dashboard groups a comparison's runs."""
    from lumi.train.config import TrainConfig

    train = dict(spec.train)
    if train.get("logger") not in (None, "none"):
        given = coerce(train.get("logger_tags") or [], list, f"comparison {spec.name!r}: train.logger_tags")
        tags = [*given, arm.label, f"seed-{seed}", spec.name]
        train["logger_tags"] = list(dict.fromkeys(str(t) for t in tags))

    raw = {
        "name": f"{spec.name}/{arm.dirname}/seed-{seed}",
        "model": {
            "name": arm.name,
            "preset": arm.preset,
            "overrides": dict(arm.overrides),
            "files": list(arm.files),
        },
        "data": {"corpus": spec.data["corpus"], "tokenizer": spec.tokenizer_of(arm), "dir": str(data_dir)},
        "optim": {**spec.optim, **arm.optim},
        # `lumi check` already probed the arm at this length (_run_checks), so the child skips its own
        # pre-training probe; it still audits its final weights. allow_leaky mirrors --allow-leaky.
        "train": {
            **train,
            "seed": seed,
            "budget": plan.budget,
            "threads": threads,
            "causality_preflight": False,
            "allow_leaky": bool(spec.allow_leaky),
        },
    }
    return TrainConfig.from_dict(raw, f"comparison {spec.name!r}, arm {arm.label!r}").to_dict()


def _schedule(
    spec: CompareSpec,
    comp_dir: Path,
    data: dict[str, Any],
    plans: dict[str, ArmPlan],
    threads: int,
    retry_failed: bool,
    log: Callable[[str], None],
) -> list[RunJob]:
    """Seed-major list of runs still to do; finished ones are reused, interrupted ones resumed."""
    todo: list[RunJob] = []
    counts = new_counts()
    for seed in spec.seeds:
        for arm in spec.arms:
            cfg = run_config(
                spec,
                arm,
                seed,
                plans[arm.label],
                Path(data[spec.tokenizer_of(arm)].directory).resolve(),
                threads,
            )
            cfg_path = comp_dir / "configs" / arm.dirname / f"seed-{seed}.yaml"
            run_dir = comp_dir / "runs" / arm.dirname / f"seed-{seed}"
            job = RunJob(
                arm.label, seed, run_dir, cfg_path, comp_dir / "logs" / arm.dirname / f"seed-{seed}.log"
            )
            if needs_training(job, cfg, retry_failed, counts, log):
                todo.append(job)
    log(
        "runs: "
        + ", ".join(f"{n} {what}" for what, n in counts.items() if n or what in ("reused", "to train"))
    )
    return todo


def new_counts() -> dict[str, int]:
    return {"reused": 0, "resumed": 0, "to train": 0, "failed (kept; --retry-failed runs them again)": 0}


def needs_training(
    job: RunJob, cfg: dict[str, Any], retry_failed: bool, counts: dict[str, int], log: Callable[[str], None]
) -> bool:
    """Write the job's config; True when it must (re)train or resume, False when its finished run is reused.

    A run trained with another config (thread count excepted) is refused: it is never silently reused.
    """
    job.config_path.parent.mkdir(parents=True, exist_ok=True)
    write_yaml(job.config_path, cfg)
    run_dir = job.run_dir
    run = Run(run_dir)
    status = run.status()
    if status is not None:
        saved = read_yaml(run.config_path, "run config") if run.config_path.is_file() else None
        if isinstance(saved, dict):
            # Keys that do not change what a run trains: its threads, the leak probes around training
            # (runs from before the probes existed lack the causality keys and are still reused), and live
            # logging (train.logger, train.logger_tags: the tags name the arm, seed and comparison).
            same = (
                "train.threads:",
                "train.allow_leaky:",
                "train.causality_",
                *(f"{k}:" for k in LOGGING_KEYS),
            )
            diffs = [d for d in config_differences(saved, cfg) if not d.startswith(same)]
            if diffs:
                raise LumiError(
                    f"run {run_dir} was trained with a different config ({'; '.join(diffs[:3])}) "
                    f"although the comparison's spec is the same (moved data or plugin files?); "
                    f"it cannot be reused or resumed: move it away to retrain it, or use "
                    f"another --out"
                )
    if status in REUSABLE:
        counts["reused"] += 1
        return False
    if status == "failed" and not retry_failed:
        counts["failed (kept; --retry-failed runs them again)"] += 1
        return False
    if status == "failed":
        _move_aside(run_dir, ".failed", log)
    elif run_dir.exists():
        if run.latest_checkpoint() is not None:
            job.resume = True
            counts["resumed"] += 1
            return True
        _move_aside(run_dir, ".incomplete", log)  # killed before its first checkpoint: start over
    counts["to train"] += 1
    return True


def _move_aside(run_dir: Path, suffix: str, log: Callable[[str], None]) -> None:
    target = run_dir.with_name(run_dir.name + suffix)
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}{suffix}-{n}")
    shutil.move(str(run_dir), str(target))
    log(f"kept the previous {run_dir.name} as {target.name}")
