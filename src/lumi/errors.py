"""Errors the user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import os


class LumiError(Exception):
    """A problem with the user's input (bad spec, missing file, invalid config value).

    The message must say what was wrong and what is accepted; the CLI prints it
    without a traceback and exits with code 2.
    """


def closest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' (did you mean X?)' hint for a misspelt name, or '' when nothing is close."""
    import difflib

    match = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def write_error_text(e: BaseException, where: str | os.PathLike[str] | None = None) -> str:
    """One line for a failed write: 'the disk is full' for ENOSPC (also when a library wraps it in its own
    exception, as safetensors and torch.save do: then ``where``'s free space decides), else the OS's
    message or the first line of the error."""
    import errno
    import shutil

    full = "the disk is full (No space left on device)"
    text = str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return full
    if any(s in text for s in ("No space left", "StorageFull", "code: 28,", "Disk quota exceeded")):
        return full
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if where is not None:
        try:
            if shutil.disk_usage(where).free < (1 << 20):  # torch.save says only "file write failed"
                return full
        except OSError:
            pass
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
