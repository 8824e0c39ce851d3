"""`s2s serve`: a REST translation service (FastAPI on uvicorn, the `serve` extra) with dynamic
batching.

- `GET /health`: 200 once the model is loaded, 503 before. `GET /info`: the model, its cell,
  vocabulary sizes, versions and the default search options.
- `POST /translate` `{"text": ["...", ...], <search options>, "scores": false,
  "alignments": false}` -> `{"translations": [...]}`: one item per input line, in order; a
  string, or with `scores` / `alignments` / `nbest > 1` the object (or `{"nbest": [...]}`) that
  `s2s translate --output-scores` writes for the line. Search options have the names and
  defaults of `s2s translate`'s (s2s.options.SearchOptions).
- Dynamic batching: requests wait in one queue; the batcher takes what has arrived (up to
  `batch_size` lines, waiting at most `max_wait_ms` for more after the first), merges the lines
  of requests with the same search options into one search, runs it on a worker thread (the
  event loop keeps accepting) and hands each request exactly its own lines back.
- Bad requests get a JSON `{"error": ...}`: malformed JSON 400, a missing or badly typed field
  or an unknown one 422, a bad option value 422, more than `max_lines` lines or `max_chars`
  characters (or a body over `max_bytes`) 413. An empty or over-long line is translated as
  `s2s translate` does it (empty, or truncated); text that is not valid Unicode is replaced.
- One access-log line per request (client, method, path, status, lines, milliseconds) on the
  `s2s.serve` logger. SIGTERM/SIGINT: uvicorn stops accepting, finishes the requests in flight,
  and the process exits 0.
"""

import asyncio
import dataclasses
import json
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from s2s.errors import ConfigError, S2SError
from s2s.options import DEFAULTS, FIELDS, SearchOptions

log = logging.getLogger("s2s.serve")

# the search options a request may set (SearchOptions' fields less attention, which
# "alignments" asks for)
REQUEST_OPTIONS = [name for name in FIELDS if name != "attention"]
# their JSON types (values are checked by SearchOptions, as for `s2s translate`)
_TYPES = {name: {int: int, float: float, bool: bool, str: str}.get(type(FIELDS[name].default))
          for name in REQUEST_OPTIONS}
_TYPES["seed"] = int | None


@dataclass
class ServeConfig:
    batch_size: int = 64  # lines per search
    max_wait_ms: float = 5.0  # how long the batcher waits for more lines after the first
    max_lines: int = 1000  # per request
    max_chars: int = 200_000  # per request, all lines together
    max_bytes: int = 16 << 20  # request body
    precision: str = "auto"
    max_src_len: int | None = None  # None: the run's default (s2s.options.source_limit)


@dataclass
class _Job:
    lines: list[str]
    options: dict[str, Any]
    future: asyncio.Future
    results: list = field(default_factory=list)


def _clean(text: str) -> str:
    """One line of valid text: line breaks become spaces, unpaired surrogates are replaced."""
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return text.encode("utf-8", errors="replace").decode("utf-8")


class Batcher:
    """Merges the lines of concurrent requests into shared searches on one worker thread."""

    def __init__(self, translator, cfg: ServeConfig) -> None:
        self.translator, self.cfg = translator, cfg
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2s-search")
        self.searches = self.requests = self.lines = 0  # GET /info reports them

    async def translate(self, lines: list[str], options: dict[str, Any]) -> list[list[dict]]:
        job = _Job(lines, options, asyncio.get_running_loop().create_future())
        self.requests, self.lines = self.requests + 1, self.lines + len(lines)
        await self.queue.put(job)
        return await job.future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size, deadline = len(jobs[0].lines), loop.time() + self.cfg.max_wait_ms / 1000
            while size < self.cfg.batch_size:
                try:
                    job = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                except (asyncio.TimeoutError, TimeoutError):
                    break
                jobs.append(job)
                size += len(job.lines)
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:  # only requests with the same options can share a search
                groups.setdefault(tuple(sorted(job.options.items())), []).append(job)
            for same in groups.values():
                await self._search(loop, same)

    async def _search(self, loop, jobs: list[_Job]) -> None:
        lines = [line for job in jobs for line in job.lines]
        try:
            found = await loop.run_in_executor(self.executor, self._run, lines,
                                               jobs[0].options)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        start = 0
        for job in jobs:
            if not job.future.done():  # a client that went away has a cancelled future
                job.future.set_result(found[start:start + len(job.lines)])
            start += len(job.lines)

    def _run(self, lines: list[str], options: dict[str, Any]) -> list[list[dict]]:
        self.searches += 1
        return self.translator.search(lines, batch_size=self.cfg.batch_size,
                                      precision=self.cfg.precision,
                                      max_src_len=self.cfg.max_src_len, **options)

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def info(translator, where: str) -> dict[str, Any]:
    from s2s.training.state import versions

    cfg = translator.cfg
    return {"model": where, "cell": cfg.model.cell,
            "src_vocab_size": translator.tokenizer.src_vocab_size,
            "tgt_vocab_size": translator.tokenizer.tgt_vocab_size,
            "device": str(translator.device), "versions": versions(),
            "defaults": defaults(translator)}


def defaults(translator) -> dict[str, Any]:
    """The search options a request gets for what it leaves out: `s2s translate`'s defaults
    with the run's own (RUN/serving.json: the tuned length penalty) over them."""
    return {**dataclasses.asdict(DEFAULTS), **translator.search_defaults}


def build_app(load, cfg: ServeConfig, where: str = "model", on_error=None):
    """The FastAPI app. `load()` returns the Translator; it runs on a thread at start-up (the
    server answers /health with 503 until it is done). If it fails, /health says 503 with the
    error and `on_error(message)` is called (s2s serve then stops, exit 1)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import ConfigDict, create_model
    from starlette.exceptions import HTTPException

    state: dict[str, Any] = {"batcher": None, "error": None, "info": None}

    def loaded() -> None:
        try:
            translator = load()
            state["info"] = info(translator, where)
            state["translator"] = translator
        except S2SError as exc:
            state["error"] = str(exc)
            (on_error or (lambda m: log.error("cannot load the model: %s", m)))(str(exc))

    async def start() -> None:
        await asyncio.to_thread(loaded)
        if state.get("translator") is not None:
            state["batcher"] = Batcher(state["translator"], cfg)
            await state["batcher"].run()

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(start())  # serving at once: /health is 503 until loaded
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        if state["batcher"] is not None:
            state["batcher"].close()

    fields = {name: (_TYPES[name], FIELDS[name].default) for name in REQUEST_OPTIONS}
    Body = create_model("TranslateRequest", __config__=ConfigDict(extra="forbid"),  # noqa: N806
                        text=(list[str], ...), scores=(bool, False), alignments=(bool, False),
                        **fields)

    app = FastAPI(title="s2s", summary="recurrent neural machine translation",
                  description=__doc__, lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = exc.errors()
        try:
            json.loads(await request.body())
        except ValueError:  # also bytes that are not UTF-8
            return error(400, "the body is not valid JSON: send {\"text\": [\"...\"]}")
        shown = "; ".join(f"{'.'.join(str(x) for x in p.get('loc', ())[1:]) or 'body'}: "
                          f"{p.get('msg')}" for p in problems[:5])
        return error(422, shown)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.middleware("http")
    async def access_log(request: Request, call_next):
        started = time.perf_counter()
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > cfg.max_bytes:
            response = error(413, f"the body has {size} bytes, more than the server's "
                                  f"--max-bytes {cfg.max_bytes}")
        else:
            response = await call_next(request)
        lines = getattr(request.state, "lines", 0)
        log.info('%s "%s %s" %d %d lines %.1f ms', request.client.host if request.client else "-",
                 request.method, request.url.path, response.status_code, lines,
                 (time.perf_counter() - started) * 1000)
        return response

    @app.get("/health")
    async def health():
        if state["batcher"] is None:
            return error(503, state["error"] or "loading the model")
        return {"status": "ok"}

    @app.get("/info")
    async def model_info():
        if state["info"] is None or state["batcher"] is None:
            return error(503, state["error"] or "loading the model")
        b = state["batcher"]
        return {**state["info"], "served": {"requests": b.requests, "lines": b.lines,
                                            "searches": b.searches}}

    @app.post("/translate")
    async def translate(body: Body, request: Request):  # type: ignore[valid-type]
        batcher = state["batcher"]
        if batcher is None:
            return error(503, state["error"] or "loading the model")
        text = body.text
        request.state.lines = len(text)
        if len(text) > cfg.max_lines:
            return error(413, f"{len(text)} lines in one request; the server takes at most "
                              f"--max-lines {cfg.max_lines}: split it")
        chars = sum(len(line) for line in text)
        if chars > cfg.max_chars:
            return error(413, f"{chars} characters in one request; the server takes at most "
                              f"--max-chars {cfg.max_chars}: split it")
        given = {name: getattr(body, name) for name in REQUEST_OPTIONS
                 if name in body.model_fields_set}
        options = {**state["info"]["defaults"], **given, "attention": body.alignments}
        try:
            SearchOptions(**options)
            if options["nbest"] > options["beam"] and not options["sampling"]:
                raise ConfigError(f"nbest {options['nbest']} needs beam >= {options['nbest']} "
                                  f"(or sampling)")
        except ConfigError as exc:
            return error(422, str(exc))
        found = await batcher.translate([_clean(line) for line in text], options)
        detailed = body.scores or body.alignments or options["nbest"] > 1
        if not detailed:
            return {"translations": [items[0]["translation"] for items in found]}
        out = [{"nbest": items} if options["nbest"] > 1 else items[0] for items in found]
        return {"translations": out}

    return app


def serve(load, cfg: ServeConfig, host: str, port: int, where: str) -> None:
    """Run the service until SIGTERM/SIGINT (uvicorn's graceful shutdown)."""
    import uvicorn

    failed: list[str] = []
    server: list = []

    def stop(message: str) -> None:  # the model cannot be loaded: nothing to serve
        failed.append(message)
        server[0].should_exit = True

    app = build_app(load, cfg, where, on_error=stop)
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None,
                            timeout_graceful_shutdown=15, lifespan="on")
    server.append(uvicorn.Server(config))
    # uvicorn shuts down gracefully on SIGTERM, then sends the signal again to the handler it
    # found: with this one the process then exits 0 instead of dying of SIGTERM
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server[0].run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed:
        raise S2SError(f"cannot serve {where}: {failed[0]}")


def main(models: list[str], host: str, port: int, cfg: ServeConfig, threads: int,
         device: str) -> None:
    """`s2s serve`: load MODELS (on a thread, after the server is up) and serve them."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise S2SError(f"s2s serve needs FastAPI and uvicorn ({exc}); install them with "
                       f"pip install 's2s[serve]'") from None
    from s2s.ops.runtime import set_threads, tune_allocator
    from s2s.translate import Translator

    set_threads(threads)
    tune_allocator()
    where = " ".join(models)
    log.info("serving %s on http://%s:%d (API: /docs)", where, host, port)
    serve(lambda: Translator.from_run(models, device=device), cfg, host, port, where)
