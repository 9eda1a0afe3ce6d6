"""lumi.evals: the lm-eval adapter (LumiLM) against direct computations, and the zero-shot task suite offline.

Everything runs on tiny models and the small task files in tests/data/tasks (written for these tests in
each dataset's schema); the Hugging Face hub is never contacted.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance

from lumi.data.tokenizers import BytesTokenizer, train_tokenizer
from lumi.errors import LumiError
from lumi.evals.harness import LumiLM
from lumi.evals.tasks import SUPPORTED, TASKS, load_tasks, read_task_file, run_tasks, task_manager
from lumi.generate import generate
from lumi.metrics.evaluate import evaluate_bpb
from lumi.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread", "offline")  # conftest: tiny models, one thread

DATA = Path(__file__).parent / "data" / "tasks"
LEARNABLE = DATA / "learnable"  # arc_easy.jsonl in the learnable format (see train_rule_model)
SEP = 256


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache, whatever the machine has; no bootstrap process pool."""
    import datasets
    import huggingface_hub.constants

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_hub"))
    monkeypatch.setenv("DISABLE_MULTIPROC", "1")


def nano(seed: int = 0, name: str = "llama", preset: str = "nano", vocab_size: int = 257):
    torch.manual_seed(seed)
    return build_model(name, preset, vocab_size=vocab_size).eval()


def ll_requests(pairs):
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def direct_loglikelihood(model, context_ids, continuation_ids):
    """Sum of log p(continuation) and greedy match, from one unpadded forward."""
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = F.log_softmax(model(ids[:, :-1]).float()[0], dim=-1)
    scored = logprobs[len(context_ids) - 1 :]
    target = torch.tensor(continuation_ids)
    total = float(scored.gather(-1, target[:, None]).double().sum())
    return total, bool((scored.argmax(-1) == target).all())


PAIRS = [
    ("Question: Which way is up?\nAnswer:", " the sky"),
    ("The kettle whistled, so she", " poured the tea into two cups."),
    ("", "An empty context is scored after the separator."),
    ("A", "b"),
    ("Héllo wörld — naïve café ", "😀 done"),  # multi-byte text; the trailing space moves to the continuation
]


# -- the adapter --------------------------------------------------------------------------------------
def test_loglikelihood_equals_a_direct_computation_batched_or_not():
    model, tok = nano(), BytesTokenizer()
    expected = []
    for context, continuation in PAIRS:
        n = len(context) - len(context.rstrip())
        context, continuation = context[: len(context) - n], context[len(context) - n :] + continuation
        expected.append(direct_loglikelihood(model, [SEP, *tok.encode(context)], tok.encode(continuation)))
    batched = LumiLM(model, tok, batch_size=16).loglikelihood(ll_requests(PAIRS), disable_tqdm=True)
    single = LumiLM(model, tok, batch_size=1).loglikelihood(ll_requests(PAIRS), disable_tqdm=True)
    for (want, want_greedy), (got, greedy), (one, one_greedy) in zip(expected, batched, single, strict=True):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-4)
        assert one == pytest.approx(want, rel=1e-5, abs=1e-4)
        assert greedy == want_greedy == one_greedy


def test_greedy_flag_is_true_for_the_argmax_continuation_and_false_otherwise():
    model, tok = nano(), BytesTokenizer()
    lm = LumiLM(model, tok, batch_size=4)
    context = [SEP, *tok.encode("Once upon a time")]
    greedy = generate(model, context, 3, temperature=0)
    other = [(greedy[0] + 1) % 256, *greedy[1:]]
    (_, is_greedy), (_, not_greedy) = lm._loglikelihood_tokens(
        [(None, context, greedy), (None, context, other)], disable_tqdm=True
    )
    assert is_greedy is True and not_greedy is False


def test_long_inputs_keep_their_last_max_length_tokens():
    model, tok = nano(), BytesTokenizer()
    lm = LumiLM(model, tok, batch_size=4, max_length=16)
    context, continuation = [SEP, *tok.encode("a context much longer than sixteen bytes")], tok.encode(" end")
    ((got, _),) = lm._loglikelihood_tokens([(None, context, continuation)], disable_tqdm=True)
    window = (context + continuation)[-17:]  # 16 inputs + the last target
    want, _ = direct_loglikelihood(model, window[: -len(continuation)], continuation)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-4)


def rolling_bpb(lm: LumiLM, texts: list[str]) -> list[float]:
    requests = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(texts)]
    logprobs = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    return [-lp / (math.log(2) * len(text.encode("utf-8"))) for lp, text in zip(logprobs, texts, strict=True)]


def lumi_bpb(model, tok, text: str) -> float:
    """Lumi's own BPB of one document [sep] + encode(text), scored in one window."""
    tokens = np.asarray([tok.sep_id, *tok.encode(text)], dtype=np.int64)
    return evaluate_bpb(model, tokens, tok.token_bytes[tokens], len(tokens), 1, "cpu")["bpb"]


ROLLING_TEXTS = [
    "To be, or not to be: the rolling window scores every byte once.",
    "Short.",
    "Héllo wörld — naïve café, 😀 and 中文 cover several bytes per character.",
]


@pytest.mark.parametrize(
    ("name", "preset"), [("llama", "nano"), ("spacebyte", "nano")], ids=["llama", "spacebyte"]
)
def test_rolling_loglikelihood_agrees_with_lumi_bpb(name, preset):
    model, tok = nano(name=name, preset=preset), BytesTokenizer()
    got = rolling_bpb(LumiLM(model, tok, batch_size=8), ROLLING_TEXTS)  # one padded batch
    for text, bpb in zip(ROLLING_TEXTS, got, strict=True):
        assert bpb == pytest.approx(lumi_bpb(model, tok, text), rel=1e-6)


def test_rolling_loglikelihood_agrees_with_lumi_bpb_under_bpe():
    tok = train_tokenizer("bpe:320", [t * 20 for t in ROLLING_TEXTS])
    model = nano(vocab_size=tok.vocab_size)
    got = rolling_bpb(LumiLM(model, tok, batch_size=8), ROLLING_TEXTS)
    for text, bpb in zip(ROLLING_TEXTS, got, strict=True):
        assert bpb == pytest.approx(lumi_bpb(model, tok, text), rel=1e-6)


def test_rolling_windows_score_every_token_once():
    model, tok = nano(), BytesTokenizer()
    text = ROLLING_TEXTS[0]
    (full,) = LumiLM(model, tok).loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    (windowed,) = LumiLM(model, tok, max_length=8).loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (text,), 0)]
    )
    # Shorter windows see less context: a different number, but over the same targets.
    assert math.isfinite(windowed) and windowed != pytest.approx(full, rel=1e-6)
    uniform = LumiLM(ConstantModel(), tok, max_length=8)
    (flat,) = uniform.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert flat == pytest.approx(-len(text.encode()) * math.log(257), rel=1e-9)


class ConstantModel(torch.nn.Module):
    """Uniform over 257 ids at every position: any scored target costs ln 257."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*tokens.shape, 257)


# -- generation ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rule_model():
    return train_rule_model()


def test_generate_until_stops_at_the_until_string_and_matches_greedy_generate(rule_model):
    tok = BytesTokenizer()
    lm = LumiLM(rule_model, tok)
    context = "Question: The"
    ids = generate(rule_model, [SEP, *tok.encode(context)], 60, temperature=0, stop_ids=[SEP])
    reference = tok.decode(ids)  # e.g. " bag is green. Colour?\nAnswer: green" (the separator decodes to "")
    assert reference.index("Colour") > 5 and reference.index("\n") > reference.index("Colour")
    requests = [
        Instance("generate_until", {}, (context, {"until": ["Colour", "zzz"], "max_gen_toks": 60}), 0),
        Instance("generate_until", {}, (context, {"until": [], "max_gen_toks": 5}), 1),
        Instance("generate_until", {}, (context, {"until": "\n", "do_sample": False}), 2),
        Instance("generate_until", {}, (context, {"until": ["zzz"]}), 3),
    ]
    stopped, limited, newline, whole = lm.generate_until(requests, disable_tqdm=True)
    assert stopped == reference[: reference.index("Colour")]
    assert limited == reference[:5]
    assert newline == reference[: reference.index("\n")]
    assert whole == reference  # no stop string: up to the separator


def test_generate_until_stops_at_the_separator(rule_model):
    tok = BytesTokenizer()
    ids = generate(
        rule_model, [SEP, *tok.encode("Question: The hat is red. Colour?\nAnswer:")], 20, temperature=0
    )
    assert SEP in ids  # the model ends the document after the answer
    out = LumiLM(rule_model, tok).generate_one(
        "Question: The hat is red. Colour?\nAnswer:", {"until": ["zzz"]}
    )
    assert out == tok.decode(ids[: ids.index(SEP)]) == " red"


# -- tasks through lm-eval ----------------------------------------------------------------------------
def test_simple_evaluate_runs_all_six_tasks_from_local_files(monkeypatch, tmp_path):
    import lm_eval
    import lm_eval.evaluator

    monkeypatch.chdir(tmp_path)  # simple_evaluate runs `git describe` in the working directory
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda storage: None)  # ~3 s of system probes
    model, tok = nano(), BytesTokenizer()
    tasks = load_tasks(SUPPORTED, DATA)
    assert sorted(tasks) == sorted(SUPPORTED)
    out = lm_eval.simple_evaluate(
        model=LumiLM(model, tok),
        tasks=list(tasks.values()),
        task_manager=task_manager(),  # the default one indexes all of lm-eval's tasks (~10 s)
        bootstrap_iters=100,
        log_samples=False,
    )
    for name in SUPPORTED:
        metrics = out["results"][name]
        for metric in TASKS[name].metrics:
            assert metrics[f"{metric},none"] >= 0.0
            assert f"{metric}_stderr,none" in metrics
        assert out["n-samples"][name]["effective"] == len(read_task_file(name, DATA / f"{name}.jsonl"))
    assert out["results"]["lambada_openai"]["perplexity,none"] > 1.0
    mine = run_tasks(model, tok, "piqa,winogrande,arc_challenge", tasks_dir=DATA, bootstrap_iters=100)
    json.dumps(mine)  # JSON-serialisable as it is
    for name in ("piqa", "winogrande", "arc_challenge"):
        for key in ("acc,none", "acc_stderr,none"):
            assert mine["results"][name][key] == pytest.approx(out["results"][name][key])
        assert mine["chance"][name] == TASKS[name].chance
        assert mine["n_samples"][name] == out["n-samples"][name]["effective"]
    assert mine["items"] == sum(mine["n_samples"].values()) and mine["items_per_s"] > 0


def test_run_tasks_limit_scores_the_first_items_only():
    out = run_tasks(nano(), BytesTokenizer(), ["lambada_openai"], tasks_dir=DATA, limit=3, bootstrap_iters=0)
    assert out["n_samples"] == {"lambada_openai": 3}
    assert set(out["results"]["lambada_openai"]) >= {"acc,none", "perplexity,none"}
    assert out["chance"] == {"lambada_openai": 0.0}


COLOURS = ["red", "blue", "green", "pink"]
TRAIN_THINGS = ["cup", "hat", "car", "box", "kite", "sock", "lamp", "door", "ball", "bag", "pen", "bike"]


def rule_document(thing: str, colour: str) -> str:
    """The learnable format, as lm-eval's ARC prompt shows it: the answer is the colour the question states.
    tests/data/tasks/learnable/arc_easy.jsonl asks it about other things (rug, vase, ...)."""
    return f"Question: The {thing} is {colour}. Colour?\nAnswer: {colour}"


def train_rule_model(steps: int = 250, seed: int = 0):
    """llama:nano trained on a stream of rule documents (Adam, warm-up, linear decay): ~5 s on one core."""
    model, tok, rng = nano(seed), BytesTokenizer(), random.Random(seed)

    def row(length: int) -> list[int]:
        ids: list[int] = []
        while len(ids) < length:
            ids += [SEP, *tok.encode(rule_document(rng.choice(TRAIN_THINGS), rng.choice(COLOURS)))]
        return ids[:length]

    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 3e-3 * min(1.0, (step + 1) / 20) * (1 - step / steps)
        batch = torch.tensor([row(65) for _ in range(16)])
        loss = F.cross_entropy(model(batch[:, :-1]).reshape(-1, 257), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval()


def test_a_trained_model_beats_chance_and_a_random_one_does_not(rule_model):
    items = read_task_file("arc_easy", LEARNABLE / "arc_easy.jsonl")
    golds = [item["choices"]["text"][item["choices"]["label"].index(item["answerKey"])] for item in items]
    assert all(item["choices"]["text"] == COLOURS for item in items)
    # Every item offers the same choices and each is right equally often: a context-blind guess scores 0.25.
    assert all(golds.count(c) == len(items) // 4 for c in COLOURS)
    assert not {item["question"].split()[1] for item in items} & set(TRAIN_THINGS)  # held-out things only
    tok = BytesTokenizer()
    trained = run_tasks(rule_model, tok, ["arc_easy"], tasks_dir=LEARNABLE)["results"]["arc_easy"]["acc,none"]
    untrained = run_tasks(nano(1), tok, ["arc_easy"], tasks_dir=LEARNABLE)["results"]["arc_easy"]["acc,none"]
    assert trained >= 0.9
    assert untrained <= 0.5
    assert trained - untrained >= 0.4


# -- bad input ----------------------------------------------------------------------------------------
def test_unknown_task_lists_the_supported_ones_with_a_hint():
    with pytest.raises(
        LumiError, match=r"unknown task 'pica' \(did you mean 'piqa'\?\); supported: hellaswag"
    ):
        load_tasks(["pica"], DATA)
    with pytest.raises(LumiError, match="no task given"):
        load_tasks(" , ", DATA)


@pytest.mark.parametrize(
    ("name", "line", "message"),
    [
        ("piqa", {"goal": "g", "sol1": "a", "label": 0}, r"line 2: field 'sol2' is missing"),
        ("piqa", {"goal": "g", "sol1": "a", "sol2": "b", "label": "1"}, r"line 2: field 'label' must be 0"),
        (
            "hellaswag",
            {"activity_label": "x", "ctx_a": "y", "ctx_b": "", "endings": ["a", "b"], "label": "2"},
            r"line 2: field 'label' must be the index of the right ending, 0\.\.1",
        ),
        (
            "arc_easy",
            {"question": "q", "choices": {"text": ["a", "b"]}, "answerKey": "A"},
            r"line 2: field 'choices.label' is missing",
        ),
        (
            "arc_challenge",
            {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"},
            r"line 2: field 'answerKey' must be one of \['A', 'B'\]",
        ),
        (
            "winogrande",
            {"sentence": "No blank here.", "option1": "a", "option2": "b", "answer": "1"},
            r"line 2: field 'sentence' has no '_' blank",
        ),
        (
            "winogrande",
            {"sentence": "The _ fell.", "option1": "a", "option2": "b", "answer": 1},
            r"line 2: field 'answer' must be the string \"1\" or \"2\", got the number 1",
        ),
        ("lambada_openai", {"txt": "a b c"}, r"line 2: field 'text' is missing"),
        ("lambada_openai", ["not", "an", "object"], r"line 2: expected a JSON object"),
    ],
)
def test_bad_task_file_names_file_line_and_field(tmp_path, name, line, message):
    good = (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()[0]
    path = tmp_path / f"{name}.jsonl"
    path.write_text(good + "\n" + json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(LumiError, match=message) as err:
        load_tasks([name], tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_bad_task_files_invalid_json_missing_and_empty(tmp_path):
    (tmp_path / "piqa.jsonl").write_text('{"goal": "g",\n', encoding="utf-8")
    with pytest.raises(LumiError, match=r"piqa\.jsonl, line 1: not valid JSON"):
        load_tasks(["piqa"], tmp_path)
    with pytest.raises(
        LumiError, match=r"winogrande\.jsonl does not exist: --tasks-dir must hold winogrande\.jsonl"
    ):
        load_tasks(["winogrande"], tmp_path)
    (tmp_path / "hellaswag.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(LumiError, match="has no items"):
        load_tasks(["hellaswag"], tmp_path)


def test_without_tasks_dir_offline_is_a_clear_error():
    with pytest.raises(
        LumiError, match=r"could not load task 'piqa' from the Hugging Face hub .*--tasks-dir"
    ):
        load_tasks(["piqa"])
