"""Taking a trained run out of Lumi: Hugging Face export (hf), a self-contained Lumi directory (bundle),
and compressed quantised artifacts (pack, quant). The verbs are `lumi export`, `lumi pack`, `lumi unpack`."""
