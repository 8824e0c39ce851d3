"""Benchmark `s2s serve` on 127.0.0.1: CLIENTS concurrent clients x REQUESTS requests of 1-4
lines against one client sending the same requests one after another; every line checked
against `s2s translate` (greedy); bad requests; SIGTERM. Prints one JSON line.

    python tools/bench_serve.py RUN --source test.en [--clients 16 --requests 15 --threads 2]
"""
import argparse
import json
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def call(url, body=None, raw=None, path="/translate", timeout=120):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data if path == "/translate" else None,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--source", required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="more `s2s serve` options")
    args = parser.parse_args()
    lines = open(args.source, encoding="utf-8").read().splitlines()
    rng = random.Random(1)
    requests = []
    for _ in range(args.clients * args.requests):
        start = rng.randrange(len(lines))
        requests.append(lines[start:start + rng.randint(1, 4)] or lines[:1])
    needed = sorted({line for r in requests for line in r})
    ref = subprocess.run([sys.executable, "-m", "s2s", "translate", args.model, "--threads",
                          str(args.threads)], input="\n".join(needed).encode() + b"\n",
                         capture_output=True, check=True).stdout.decode().splitlines()
    expected = dict(zip(needed, ref))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "s2s", "serve", args.model, "--port",
                             str(port), "--threads", str(args.threads), *args.extra],
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if call(url, path="/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    result = {"cpu": None, "clients": args.clients, "requests": len(requests),
              "lines": sum(map(len, requests))}
    try:
        from s2s.ops.runtime import cpu_kind

        result["cpu"] = cpu_kind()
    except ImportError:
        pass

    def run(batch):
        return [call(url, {"text": r}) for r in batch]

    call(url, {"text": lines[:8]})  # warm-up
    started = time.perf_counter()
    sequential = run(requests)
    result["sequential_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        parts = list(pool.map(run, [requests[i::args.clients] for i in range(args.clients)]))
    result["concurrent_s"] = round(time.perf_counter() - started, 2)
    concurrent = [None] * len(requests)
    for i, part in enumerate(parts):
        concurrent[i::args.clients] = part
    result["speedup"] = round(result["sequential_s"] / result["concurrent_s"], 2)
    for name, answers in (("sequential", sequential), ("concurrent", concurrent)):
        ok = [a for a in answers if a[0] == 200]
        same = total = 0
        for r, (status, body) in zip(requests, answers):
            if status == 200:
                got = body["translations"]
                same += sum(g == expected[line] for g, line in zip(got, r))
                total += len(r)
        result[f"{name}_failed"] = len(answers) - len(ok)
        result[f"{name}_identical_lines"] = round(same / max(total, 1), 4)
    bad = {"malformed JSON": call(url, raw=b'{"text": ["a"')[0],
           "100,000 lines": call(url, {"text": ["a"] * 100_000})[0],
           "no text": call(url, {"texts": ["a"]})[0]}
    result["bad_requests"] = bad
    result["serving_after_bad"] = call(url, {"text": ["A dog."]})[0]
    served = call(url, path="/info")[1].get("served")
    result["served"] = served
    started = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    result["sigterm_exit"], result["sigterm_s"] = proc.returncode, round(
        time.perf_counter() - started, 2)
    result["traceback_in_log"] = "Traceback" in err
    print(json.dumps(result))


if __name__ == "__main__":
    main()
