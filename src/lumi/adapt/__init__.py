"""`lumi adapt`: adapters on a frozen core (LoRA through HF peft, residual bricks, full fine-tuning), trained
on a new domain and judged by a domain-gain and a preservation gate over seeds (docs/adapt.md).

methods.py attaches / merges an adapter, domain.py splits and tokenizes the new corpus, runner.py trains and
scores, gates.py holds the statistics, directory.py the output format (and loads an adapted model for
`lumi eval` / `lumi generate`), report.py the tables.
"""
