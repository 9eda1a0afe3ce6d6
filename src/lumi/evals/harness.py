"""``LumiLM``: any Lumi model and tokenizer as an lm-evaluation-harness language model.

    model, tokenizer = lumi.run.load_run_model("runs/llama-micro")
    lm = LumiLM(model, tokenizer, batch_size=16)
    lm_eval.simple_evaluate(model=lm, tasks=["piqa"])

Every request is scored as a Lumi document, which starts with the separator: a context is fed as
[sep] + encode(context), an empty context as [sep], and a rolling (perplexity) text as
[sep] + encode(text). The continuation's tokens are lm-eval's split: encode(context + continuation)
minus the tokens of encode(context) (trailing spaces of the context move to the continuation).

The model only has to honour the Lumi contract, ``model(tokens[B, T]) -> logits[B, T, V]`` with
position t depending on tokens 0..t; that is what makes right padding safe, so requests are sorted by
length and scored one padded batch per forward. Inputs longer than ``max_length`` keep their last
``max_length`` tokens, as lm-eval's Hugging Face backend does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lumi.data.tokenizers import Tokenizer
from lumi.errors import LumiError
from lumi.generate import stream
from lumi.models.base import LumiModel

try:
    from lm_eval import utils as lm_eval_utils
    from lm_eval.api.model import TemplateLM
except ImportError:  # pragma: no cover - depends on the installation
    raise LumiError(
        "zero-shot tasks need lm-evaluation-harness: pip install 'lumi-lab[eval]' (or pip install lm-eval)"
    ) from None

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048  # for models without a maximum context (RoPE, recurrences)
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until
# A request as TemplateLM hands it to _loglikelihood_tokens: (strings or None, context ids, continuation ids).
TokenRequest = tuple[Any, list[int], list[int]]


class LumiLM(TemplateLM):
    """lm-eval language model over a Lumi ``model`` and its ``tokenizer`` (bytes, BPE or a plugin's)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise LumiError(f"batch_size must be >= 1, got {batch_size}")
        self._device = torch.device(device)
        self.model = model.to(self._device)
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        max_context = model.max_context() if isinstance(model, LumiModel) else None
        self.max_length = int(max_length or max_context or DEFAULT_MAX_LENGTH)
        if self.max_length < 2:
            raise LumiError(f"max_length must be >= 2, got {self.max_length}")
        if max_context is not None and self.max_length > max_context:
            raise LumiError(
                f"max_length {self.max_length} is longer than the model's maximum context {max_context}"
            )
        self.max_gen_toks = DEFAULT_MAX_GEN_TOKS

    # -- tokenization -----------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.sep_id)

    @property
    def prefix_token_id(self) -> int:
        return int(self.tokenizer.sep_id)

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.spec)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """The tokenizer's ids of ``string`` (UTF-8 bytes for the bytes tokenizer); no separator added."""
        return list(self.tokenizer.encode(string))

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens))

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split of (context, continuation), with the document separator in front of the context."""
        context_enc, continuation_enc = super()._encode_pair(context, continuation)
        return [self.prefix_token_id, *context_enc], continuation_enc

    # -- scoring ----------------------------------------------------------------------------------
    def _loglikelihood_tokens(
        self, requests: list[TokenRequest], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether greedy decoding gives it) per request,
        in the order given. Longest first, ``batch_size`` per forward, padded on the right."""
        from tqdm import tqdm

        results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][1]) + len(requests[i][2])))
        order = [i for i in order if requests[i][2]]  # an empty continuation has log-probability 0
        with (
            _eval_mode(self.model),
            tqdm(total=len(order), disable=disable_tqdm, desc="Scoring loglikelihood requests") as bar,
        ):
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                inputs = [self._input_window(requests[i][1], requests[i][2]) for i in batch]
                logits = self._forward_padded(inputs)
                for row, i in enumerate(batch):
                    continuation = requests[i][2]
                    end = len(inputs[row])
                    results[i] = _score(logits[row, end - len(continuation) : end], continuation)
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
                bar.update(len(batch))
        return results

    def _input_window(self, context: list[int], continuation: list[int]) -> list[int]:
        """The model's input: context + continuation without its last token, keeping the last max_length."""
        if not context:
            raise ValueError("a loglikelihood request needs at least one context token (the separator)")
        if len(continuation) > self.max_length:
            raise LumiError(
                f"a continuation of {len(continuation)} tokens does not fit the maximum length {self.max_length}"
            )
        return (context + continuation)[-(self.max_length + 1) : -1]

    def _forward_padded(self, inputs: list[list[int]]) -> torch.Tensor:
        """Logits [B, T, V] (float32) of the right-padded inputs; padding is the separator."""
        width = max(len(ids) for ids in inputs)
        x = torch.full((len(inputs), width), self.eot_token_id, dtype=torch.long)
        for row, ids in enumerate(inputs):
            x[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        with torch.no_grad():
            return self.model(x.to(self._device)).float()

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-probability of each whole text as a document: the separator, then every token scored once,
        in windows of ``max_length`` (lm-eval's rolling windows, one token of overlap context)."""
        windows: list[TokenRequest] = []
        owner: list[int] = []
        for index, request in enumerate(requests):
            (text,) = request.args
            pairs = lm_eval_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for context, continuation in map(lm_eval_utils.make_disjoint_window, pairs):
                windows.append((None, context, continuation))
                owner.append(index)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, scores, strict=True):
            totals[index] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # -- generation -------------------------------------------------------------------------------
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Continue each context (greedy unless ``do_sample``) through ``lumi.generate.stream``; stop at the
        first ``until`` string (cut off), at the separator, or after ``max_gen_toks`` tokens."""
        from tqdm import tqdm

        outputs = []
        for request in tqdm(requests, disable=disable_tqdm, desc="Generating"):
            context, gen_kwargs = request.args
            text = self.generate_one(context, gen_kwargs or {})
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", request.args, text)
        return outputs

    def generate_one(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        """The text generated after ``context`` under lm-eval's ``gen_kwargs`` (until, max_gen_toks,
        do_sample, temperature, top_k, top_p, seed); sampling is seeded (``seed``, default 0)."""
        gen_kwargs = dict(gen_kwargs)
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else [str(s) for s in until]
        max_gen_toks = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
        do_sample = bool(gen_kwargs.pop("do_sample", False))
        temperature = float(gen_kwargs.pop("temperature", 1.0 if do_sample else 0.0))
        top_k = gen_kwargs.pop("top_k", None)
        top_p = gen_kwargs.pop("top_p", None)
        seed = int(gen_kwargs.pop("seed", 0))
        if gen_kwargs:
            log.warning("LumiLM ignores the generation arguments %s", sorted(gen_kwargs))
        if not do_sample:
            temperature = 0.0
        # Room for the new tokens inside max_length, as lm-eval's Hugging Face backend leaves it.
        keep = max(self.max_length - max_gen_toks, 1)
        prompt = [self.prefix_token_id, *self.tok_encode(context)][-keep:]
        new: list[int] = []
        text = ""
        for token in stream(  # stream() decodes in eval mode, through the KV cache when the model has one
            self.model,
            prompt,
            max_gen_toks,
            temperature=temperature,
            top_k=None if top_k is None else int(top_k),
            top_p=None if top_p is None else float(top_p),
            seed=seed,
            stop_ids=[self.eot_token_id],
        ):
            if token == self.eot_token_id:
                break
            new.append(token)
            text = self.tokenizer.decode(new)
            cut = _first_stop(text, until)
            if cut is not None:
                return text[:cut]
        return text


def _score(logits: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
    """(sum of log-probabilities of ``continuation``, all greedy) from the logits [n, V] predicting it."""
    target = torch.tensor(continuation, dtype=torch.long, device=logits.device)
    logprobs = F.log_softmax(logits, dim=-1)
    total = logprobs.gather(-1, target[:, None]).squeeze(-1).double().sum()
    return float(total), bool((logprobs.argmax(dim=-1) == target).all())


def _first_stop(text: str, until: list[str]) -> int | None:
    """Index of the earliest occurrence of any non-empty ``until`` string in ``text``, or None."""
    hits = [text.find(s) for s in until if s]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else None


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the duration, then the model's previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
