"""Evaluations of Lumi models beyond bits per byte.

``lumi.evals.harness`` adapts any Lumi model and tokenizer to lm-evaluation-harness (``LumiLM``), and
``lumi.evals.tasks`` runs the zero-shot task suite (hellaswag, piqa, arc_easy, arc_challenge, winogrande,
lambada_openai) through lm-eval's own task definitions, from the Hugging Face hub or from local JSONL
files (``run_tasks``, ``load_tasks``). Both need the ``eval`` extra (``pip install 'lumi-lab[eval]'``);
the protocol and the file formats are in docs/eval.md.
"""
