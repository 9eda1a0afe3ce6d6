"""Lumi: a lab for compact language-model architecture research."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from lumi import register, LumiModel, ModelConfig` for plugin files, without
    # importing torch when only the CLI's --help is needed.
    if name in ("register", "LumiModel", "ModelConfig"):
        import lumi.models as models

        return getattr(models, name)
    if name == "load":  # lumi.load(DIR) -> (model, tokenizer) of a `lumi export --format lumi` directory
        from lumi.export.bundle import load

        return load
    raise AttributeError(name)
