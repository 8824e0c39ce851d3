"""`s2s serve`: a real server process on 127.0.0.1 (a free port) with the toy model. Concurrent
requests get exactly `s2s translate`'s lines, merged into shared searches; bad requests get
their 4xx JSON error and the server goes on; SIGTERM ends it with exit 0. Every request has a
timeout; the server is killed if a test fails."""
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run: Path, *extra: str) -> tuple[str, subprocess.Popen]:
    """`s2s serve run` on a free loopback port, once /health says 200."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "s2s", "serve", str(run), "--port",
                             str(port), "--max-wait-ms", "20", "--threads", "1", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        try:
            if call(url, "GET", "/health")[0] == 200:
                return url, proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the server did not come up")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def server(toy_run):
    url, proc = start(toy_run, "--max-lines", "50", "--max-chars", "2000")
    yield url, proc
    stop(proc)


def call(url: str, method: str, path: str, body=None, raw: bytes | None = None
         ) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def translate_cli(run: Path, lines: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "s2s", "translate", str(run)], cwd=ROOT,
                         input="\n".join(lines).encode() + b"\n", capture_output=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode().splitlines()


def test_concurrent_requests_get_translate_s_lines(server, toy_run, toy_data):
    url, _ = server
    source = (toy_data / "test.src").read_text().splitlines()[:60] + ["", "a " * 80]
    requests = [source[i:i + 1 + i % 4] for i in range(0, len(source), 3)]  # 1-4 lines each
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda lines: call(url, "POST", "/translate",
                                                   {"text": lines}), requests))
    expected = dict(zip(source, translate_cli(toy_run, source)))
    for lines, (status, body) in zip(requests, answers):
        assert status == 200, body
        assert body["translations"] == [expected[line] for line in lines]
    status, info = call(url, "GET", "/info")
    assert status == 200 and info["cell"] == "lstm" and info["defaults"]["beam"] == 1


def test_scores_nbest_and_alignments(server):
    url, _ = server
    status, body = call(url, "POST", "/translate", {"text": ["a b c", ""], "beam": 3,
                                                    "nbest": 2})
    assert status == 200 and [len(item["nbest"]) for item in body["translations"]] == [2, 1]
    best = body["translations"][0]["nbest"]
    assert best[0]["score"] >= best[1]["score"]
    status, body = call(url, "POST", "/translate", {"text": ["a b c"], "alignments": True,
                                                    "length_penalty": "gnmt"})
    item = body["translations"][0]
    assert status == 200 and len(item["alignment"]) == len(item["target_pieces"])
    assert {"translation", "score", "log_prob", "source_pieces"} <= item.keys()


@pytest.mark.parametrize("raw, status, message", [
    (b'{"text": ["a b"', 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b'{"txt": ["a"]}', 422, "text: Field required"),
    (b'{"text": ["a"], "beams": 2}', 422, "beams: Extra inputs are not permitted"),
    (b'{"text": "a b"}', 422, "text"),
    (b'{"text": ["a"], "beam": 0}', 422, "beam 0 is not an integer >= 1"),
    (b'{"text": ["a"], "length_penalty": "huge"}', 422, "length_penalty 'huge' is not one of"),
    (b'{"text": ["a"], "nbest": 3}', 422, "nbest 3 needs beam >= 3"),
    (json.dumps({"text": ["a"] * 100_000}).encode(), 413, "100000 lines in one request"),
    (json.dumps({"text": ["a" * 3000]}).encode(), 413, "3000 characters in one request"),
])
def test_bad_requests_get_a_json_error_and_the_server_goes_on(server, raw, status, message):
    url, _ = server
    code, body = call(url, "POST", "/translate", raw=raw)
    assert code == status and message in body["error"], body
    assert call(url, "POST", "/translate", {"text": ["a b"]})[0] == 200


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(["text", "beam", "nbest", "scores",
                                                             "alignments", "top_p", "x"]),
                                            inner, max_size=4)), max_leaves=8)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=60)))
def test_any_body_is_answered_and_the_server_goes_on(server, raw):
    url, _ = server
    code, body = call(url, "POST", "/translate", raw=raw)
    assert code in (200, 400, 413, 422) and (code == 200) == ("error" not in body)
    if code == 200:
        assert len(body["translations"]) == len(json.loads(raw)["text"])


def test_a_slow_client_does_not_hold_up_the_others(server):
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as slow:
        slow.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 100\r\n\r\n{\"text\": [")  # and then nothing
        status, body = call(url, "POST", "/translate", {"text": ["a b c"]})
        assert status == 200 and len(body["translations"]) == 1


def test_concurrent_lines_share_searches_and_sigterm_exits_cleanly(server):
    url, proc = server
    with ThreadPoolExecutor(16) as pool:  # in flight together: the batcher merges them
        answers = list(pool.map(lambda i: call(url, "POST", "/translate",
                                               {"text": ["a b c d"] * (1 + i % 3)}), range(32)))
    assert all(status == 200 for status, _ in answers)
    served = call(url, "GET", "/info")[1]["served"]
    assert served["searches"] < served["requests"]  # lines of several requests shared searches
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    log_lines = [line for line in err.splitlines() if '"POST /translate"' in line]
    assert len(log_lines) >= 32 and all(" ms" in line for line in log_lines)


def test_requests_get_the_run_s_tuned_search_options_for_what_they_leave_out(toy_run, tmp_path):
    """RUN/serving.json (the recipe's tuned length penalty) fills what a request omits, as
    it does for `s2s translate RUN`; what a request gives wins."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    tuned = {"beam": 3, "length_penalty": "gnmt", "alpha": 1.4}
    (run / "serving.json").write_text(json.dumps({"checkpoint": "checkpoints/best.pt",
                                                  "search": tuned}))
    url, proc = start(run)
    try:
        text = ["a b c d e", "c a"]
        _, implicit = call(url, "POST", "/translate", {"text": text, "scores": True})
        _, explicit = call(url, "POST", "/translate", {"text": text, "scores": True, **tuned})
        _, plain = call(url, "POST", "/translate", {"text": text, "scores": True, "beam": 1,
                                                     "length_penalty": "none"})
        status, info = call(url, "GET", "/info")
    finally:
        stop(proc)
    assert implicit == explicit
    assert [t["score"] for t in implicit["translations"]] != \
        [t["score"] for t in plain["translations"]]
    assert status == 200 and {k: info["defaults"][k] for k in tuned} == tuned


def test_a_model_that_cannot_be_loaded_stops_the_server_with_one_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "s2s", "serve", str(tmp_path / "missing"),
                           "--port", str(free_port())], cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 1, proc.stderr
    assert f"error: cannot serve {tmp_path / 'missing'}: " in proc.stderr
    assert "Traceback" not in proc.stderr
