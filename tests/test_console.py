"""s2s.console: messages go through the `s2s` logger, warnings are prefixed, and while a tqdm
bar is shown they are written through tqdm.write (so the bar is not broken)."""
from __future__ import annotations

import io
import logging
import sys

import pytest

from s2s import console


@pytest.fixture
def fresh_logger():
    log = logging.getLogger("s2s")
    saved = log.handlers[:], log.level, log.propagate
    log.handlers[:] = []
    yield log
    log.handlers[:], log.level, log.propagate = saved


def test_lines_and_prefixes(fresh_logger, monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)  # looked up per message
    console.install()
    fresh_logger.info("step 1")
    fresh_logger.warning("disk is full")
    assert err.getvalue() == "step 1\nwarning: disk is full\n"


def test_other_handlers_stay_and_install_is_idempotent(fresh_logger):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    fresh_logger.addHandler(handler)
    console.install()
    console.install()
    fresh_logger.warning("x")
    ours = [h for h in fresh_logger.handlers if isinstance(h, console._Handler)]
    assert handler in fresh_logger.handlers and len(ours) == 1 and len(records) == 1
    console.install(replace=True)  # the `s2s` command owns its process
    assert handler not in fresh_logger.handlers


def test_messages_go_through_tqdm_while_a_bar_is_shown(fresh_logger, monkeypatch):
    from tqdm import tqdm

    written = []
    monkeypatch.setattr(tqdm, "write", classmethod(lambda cls, s, file=None: written.append(s)))
    console.install()
    with tqdm(total=3, disable=False):
        fresh_logger.warning("during the bar")
    assert written == ["warning: during the bar"]
