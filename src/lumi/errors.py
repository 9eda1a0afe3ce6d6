"""Errors the user can fix. The CLI prints them as one line and exits with code 2."""


class LumiError(Exception):
    """A problem with the user's input (bad spec, missing file, invalid config value).

    The message must say what was wrong and what is accepted; the CLI prints it
    without a traceback and exits with code 2.
    """


def closest(name: str, choices: "list[str] | tuple[str, ...]") -> str:
    """A ' (did you mean X?)' hint for a misspelt name, or '' when nothing is close."""
    import difflib

    match = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
