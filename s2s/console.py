"""Console messages: every message goes through the `s2s` logger; `install` gives it one
handler on stderr that writes "warning: …" / "error: …" lines (info lines as they are) and
does not break tqdm progress bars (it writes through tqdm.write while tqdm is in use)."""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("s2s")


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                text = f"{record.levelname.lower()}: {text}"
            elif record.levelno < logging.INFO:
                text = f"debug: {text}"
            stream = sys.stderr  # looked up per message: tests and callers may swap it
            tqdm = sys.modules.get("tqdm")  # never imported here: translate's start-up stays light
            if tqdm is not None and getattr(tqdm, "tqdm", None) is not None \
                    and getattr(tqdm.tqdm, "_instances", None):
                tqdm.tqdm.write(text, file=stream)
            else:
                stream.write(text + "\n")
                stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def install(level: int = logging.INFO, *, replace: bool = False) -> None:
    """Route the `s2s` logger to stderr (once). Other handlers on it are kept unless `replace`
    (the `s2s` command owns its process)."""
    if replace:
        log.handlers[:] = []
    if not any(isinstance(h, _Handler) for h in log.handlers):
        log.addHandler(_Handler())
        log.propagate = False
    if log.level == logging.NOTSET or log.level > level:
        log.setLevel(level)
