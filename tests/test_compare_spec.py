"""Arms, specs and budget matching: parsing, labels, pairing rules, per-arm budgets (no training)."""

from __future__ import annotations

import pytest

from lumi.compare.arms import Arm, parse_arm
from lumi.compare.plan import ModelFacts, model_facts, plan_budgets, validate_pairing
from lumi.compare.spec import default_spec_dict, parse_seeds, spec_from_dict
from lumi.errors import LumiError


def test_parse_arm_forms():
    a = parse_arm("llama:micro+mlp=relu2+qk_norm=true")
    assert (a.name, a.preset, a.overrides) == ("llama", "micro", {"mlp": "relu2", "qk_norm": True})
    assert a.label == "llama:micro+mlp=relu2+qk_norm=true" and a.dirname == "llama-micro+mlp=relu2+qk_norm=true"
    b = parse_arm("relu2=llama:micro+mlp=relu2")
    assert (b.label, b.name, b.overrides) == ("relu2", "llama", {"mlp": "relu2"})
    assert parse_arm("llama").preset is None and parse_arm("llama").label == "llama"
    with pytest.raises(LumiError, match="FIELD=VALUE"):
        parse_arm("llama:micro+mlp")


def spec(**over):
    raw = {"arms": ["llama:nano", "llama:nano+mlp=relu2"], "budget": "100steps", "seeds": 2}
    raw.update(over)
    return spec_from_dict(raw, "test.yaml")


def test_spec_from_yaml_mapping_and_baseline():
    s = spec(arms=[{"model": "llama:nano", "label": "base"},
                   {"model": "llama", "preset": "nano", "overrides": {"mlp": "relu2"}}], baseline="llama:nano+mlp=relu2")
    assert [a.label for a in s.arms] == ["base", "llama:nano+mlp=relu2"]
    assert s.baseline == "llama:nano+mlp=relu2" and s.seeds == [0, 1]
    assert spec().baseline == "llama:nano"  # first arm by default
    default = spec_from_dict(default_spec_dict(), "default")
    assert default.name == "default" and len(default.arms) >= 2 and default.match == "tokens"


@pytest.mark.parametrize("raw, message", [
    ({"arms": ["llama:nano", "llama:nano"]}, "unique label"),
    ({"baseline": "nope"}, "not one of the arms"),
    ({"match": "params"}, "is not one of tokens, flops, time"),
    ({"seeds": 0}, "seeds must be >= 1"),
    ({"threshold": "big"}, "threshold must be a number"),
    ({"arms": []}, "non-empty list"),
    ({"bugdet": "1m"}, "did you mean 'budget'"),
    ({"arms": [{"model": "llama:nano", "overide": {}}]}, "did you mean 'overrides'"),
])
def test_bad_specs_name_the_problem(raw, message):
    with pytest.raises(LumiError, match=message):
        spec(**raw)


def test_parse_seeds():
    assert parse_seeds(3) == [0, 1, 2]
    assert parse_seeds("0,5,7") == [0, 5, 7]
    assert parse_seeds([4, 2]) == [4, 2]
    with pytest.raises(LumiError):
        parse_seeds("1,1")


def test_pairing_rules():
    s = spec(arms=["llama:nano", {"model": "llama:nano+mlp=relu2", "train": {"seq_len": 64}}])
    with pytest.raises(LumiError, match="paired design"):
        validate_pairing(s)
    with pytest.raises(LumiError, match="set by the comparison itself"):
        validate_pairing(spec(train={"seed": 3}))
    with pytest.raises(LumiError, match="final_eval=none"):
        validate_pairing(spec(train={"final_eval": "none"}))
    validate_pairing(spec(train={"seq_len": 64}))  # shared settings are fine


FACTS = {"llama:nano": ModelFacts(10_000, 6_000, 10_000, 1000.0),
         "llama:nano+mlp=relu2": ModelFacts(8_000, 4_000, 8_000, 2000.0)}


def test_match_tokens_gives_every_arm_the_same_steps():
    plans = plan_budgets(spec(budget="6400 tokens"), FACTS, tokens_per_step=64)
    assert [(p.steps, p.tokens, p.budget) for p in plans] == [(100, 6400, "100steps")] * 2
    assert [p.flops for p in plans] == [6400 * 1000.0, 6400 * 2000.0]


def test_match_flops_scales_tokens_by_flops_per_token():
    # 100 steps of the baseline = 6400 tokens x 1000 FLOPs = 6.4e6 FLOPs; the 2x-cost arm gets 3200 tokens.
    plans = plan_budgets(spec(match="flops"), FACTS, tokens_per_step=64)
    assert [(p.steps, p.tokens) for p in plans] == [(100, 6400), (50, 3200)]
    assert plans[0].flops == plans[1].flops == 6.4e6
    direct = plan_budgets(spec(match="flops", budget="1.28e7flops"), FACTS, tokens_per_step=64)
    assert [p.steps for p in direct] == [200, 100]


def test_match_time_and_time_budget_conversion():
    plans = plan_budgets(spec(match="time", budget="2m"), FACTS, tokens_per_step=64)
    assert [(p.budget, p.steps) for p in plans] == [("120s", None)] * 2
    with pytest.raises(LumiError, match="needs a time budget"):
        plan_budgets(spec(match="time"), FACTS, tokens_per_step=64)
    # 2 minutes at a measured 640 tokens/s = 76,800 tokens = 1200 steps of 64.
    conv = plan_budgets(spec(budget="2m"), FACTS, tokens_per_step=64, probe_tokens_per_s=640.0)
    assert [p.steps for p in conv] == [1200, 1200]


def test_budget_too_small_to_evaluate():
    with pytest.raises(LumiError, match="too small to evaluate"):
        plan_budgets(spec(budget="3steps"), FACTS, tokens_per_step=64)
    with pytest.raises(LumiError, match="too small to evaluate"):
        plan_budgets(spec(match="time", budget="3s"), FACTS, tokens_per_step=64)


def test_model_facts_match_the_built_model():
    from lumi.models import build_model

    arm = Arm("llama", "nano", {"mlp": "relu2"})
    facts = model_facts(arm, vocab_size=300, seq_len=32)
    model = build_model("llama", "nano", {"mlp": "relu2"}, vocab_size=300)
    pc = model.param_counts()
    assert (facts.params, facts.non_embedding_params) == (pc.total, pc.non_embedding)
    assert facts.flops_per_token == model.flops_per_token(32)


def test_comparison_dir_refuses_a_different_spec_and_force_keeps_the_old_one(tmp_path):
    from lumi.compare.comparison import open_comparison_dir
    from lumi.io import write_yaml

    comp = tmp_path / "cmp"
    comp.mkdir()
    write_yaml(comp / "compare.yaml", {"spec": spec().to_dict()})
    (comp / "runs").mkdir()
    logs = []
    # Same spec (more seeds, another threshold): the directory is reused.
    assert open_comparison_dir(spec(seeds=5, threshold=0.01), comp, force=False, log=logs.append) is not None
    with pytest.raises(LumiError, match=r"different spec \(budget: '100steps' -> '200steps'\).*--force"):
        open_comparison_dir(spec(budget="200steps"), comp, force=False, log=logs.append)
    assert open_comparison_dir(spec(budget="200steps"), comp, force=True, log=logs.append) is None
    kept = list(tmp_path.glob("cmp.replaced-*"))
    assert not comp.exists() and len(kept) == 1 and (kept[0] / "runs").is_dir()
    assert "moved the previous comparison" in logs[-1]
    # A non-comparison directory is not silently taken over.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(LumiError, match="not a lumi compare directory"):
        open_comparison_dir(spec(), other, force=False, log=logs.append)


def test_an_arm_with_its_own_tokenizer_needs_flops_or_time_matching():
    arms = ["llama:nano", {"model": "llama:nano", "tokenizer": "bytes", "label": "bytes"}]
    s = spec(arms=arms, data={"corpus": "shakespeare", "tokenizer": "bpe:512"})
    assert [s.tokenizer_of(a) for a in s.arms] == ["bpe:512", "bytes"]
    assert s.to_dict()["arms"][1]["tokenizer"] == "bytes"
    with pytest.raises(LumiError, match="different tokenizers.*--match flops or time"):
        validate_pairing(s)
    flops = spec(arms=arms, match="flops")
    validate_pairing(flops)
    facts = {"llama:nano": ModelFacts(10_000, 6_000, 10_000, 1000.0), "bytes": ModelFacts(9_000, 8_000, 9_000, 500.0)}
    plans = plan_budgets(flops, facts, tokens_per_step=64)
    assert [(p.steps, p.tokens) for p in plans] == [(100, 6400), (200, 12800)]  # half the FLOPs/token: twice the tokens


def test_plugin_paths_are_absolute_and_run_directories_distinct(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = spec(arms=["llama:nano", {"model": "mine:nano", "files": ["my_arch.py"]}])
    assert s.arms[1].files == [str(tmp_path / "my_arch.py")]  # a re-run from here finds the same spec
    yaml_dir = tmp_path / "specs"
    s = spec_from_dict({"arms": ["llama:nano", {"model": "mine:nano", "files": ["my_arch.py"]}]}, "x.yaml",
                       base_dir=yaml_dir)
    assert s.arms[1].files == [str(yaml_dir / "my_arch.py")]  # relative to the YAML file
    with pytest.raises(LumiError, match="share the run directory runs/llama-nano"):
        spec(arms=["llama:nano", "llama-nano=llama:nano+mlp=relu2"])
    with pytest.raises(LumiError, match=r"arms\[1\]: .*FIELD=VALUE"):
        spec(arms=["llama:nano", "llama:nano+mlp"])
    with pytest.raises(LumiError, match="allow_leaky must be true or false"):
        spec(allow_leaky="no")
    with pytest.raises(LumiError, match="jobs must be a whole number"):
        spec(jobs=1.5)


def test_a_comparison_that_never_trained_takes_a_new_spec(tmp_path):
    from lumi.compare.comparison import open_comparison_dir
    from lumi.io import write_yaml

    comp = tmp_path / "cmp"
    comp.mkdir()
    write_yaml(comp / "compare.yaml", {"spec": spec().to_dict()})
    (comp / "checks.json").write_text("{}")
    logs = []
    assert open_comparison_dir(spec(budget="200steps"), comp, force=False, log=logs.append) is None
    assert "never trained" in logs[-1]


def test_changing_the_baseline_changes_flops_matched_runs(tmp_path):
    from lumi.compare.comparison import open_comparison_dir
    from lumi.io import write_yaml

    comp = tmp_path / "cmp"
    (comp / "runs").mkdir(parents=True)
    write_yaml(comp / "compare.yaml", {"spec": spec(match="flops").to_dict()})
    with pytest.raises(LumiError, match="baseline"):  # budgets were converted through the old baseline
        open_comparison_dir(spec(match="flops", baseline="llama:nano+mlp=relu2"), comp, force=False)
    write_yaml(comp / "compare.yaml", {"spec": spec().to_dict()})
    assert open_comparison_dir(spec(baseline="llama:nano+mlp=relu2"), comp, force=False) is not None


def test_a_child_killed_outright_is_recorded_as_failed_with_its_log(tmp_path):
    import json

    from lumi.compare.comparison import _mark_killed
    from lumi.compare.runner import RunJob

    run = tmp_path / "runs" / "a" / "seed-0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "running", "steps": 3}))
    job = RunJob("a", 0, run, tmp_path / "cfg.yaml", tmp_path / "logs" / "a" / "seed-0.log", returncode=-9)
    _mark_killed(job, log=lambda _: None)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] == 3
    assert "killed by signal 9" in summary["error"] and str(job.log_path) in summary["error"]
    # Ctrl-C (exit 130) before the child wrote its status is not a failure: the next run resumes it.
    (run / "summary.json").write_text(json.dumps({"status": "running"}))
    _mark_killed(RunJob("a", 0, run, job.config_path, job.log_path, returncode=130), log=lambda _: None)
    from lumi.run import Run

    assert Run(run).status() == "interrupted"
