"""Load on a local serve.py: N concurrent clients, each sending streaming chat requests one after another.

    python benchmarks/serve_load.py --ckpt outputs/<run> --clients 1,8       # starts serve.py, 1 then 8 clients
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 8  # a server already running

For each number of clients it prints requests/s, aggregate tokens/s (completion tokens of every request over the
phase's wall time), time to first token and whole-request latency (p50 and p95), and the errors; with several
numbers, each one's tokens/s against the first's. Only 127.0.0.1 / localhost / ::1 are accepted, and the load is
bounded: at most 64 clients, 100 requests each, and ``--time`` seconds per phase (then no new request starts).
Stdlib HTTP only, one thread per client.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ("127.0.0.1", "localhost", "::1")


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def one_request(host: str, port: int, body: bytes, headers: dict, timeout: float) -> tuple[float, float, int]:
    """(time to first token, latency, completion tokens) of one streaming chat completion; raises on any error."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        start = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read(300).decode(errors='replace')}")
        first, tokens, done = None, None, False
        while line := resp.readline():
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                done = True
                break
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
        if not done or tokens is None or first is None:
            raise RuntimeError("the stream ended without a token, usage or [DONE]")
        return first, time.perf_counter() - start, tokens
    finally:
        conn.close()


def phase(host: str, port: int, clients: int, requests: int, body: bytes, headers: dict, limit: float) -> dict:
    result = Result()
    deadline = time.perf_counter() + limit

    def client() -> None:
        for _ in range(requests):
            if time.perf_counter() > deadline:
                return
            try:
                ttft, latency, tokens = one_request(host, port, body, headers, timeout=limit)
            except Exception as e:  # counted and shown; the load goes on
                with result.lock:
                    result.errors.append(str(e)[:200])
                continue
            with result.lock:
                result.ttft.append(ttft)
                result.latency.append(latency)
                result.tokens += tokens

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "wall": wall, "done": len(result.latency), "tokens": result.tokens,
            "ttft": result.ttft, "latency": result.latency, "errors": result.errors}


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else (xs[0] if xs else float("nan"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, clients: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    source = f"ckpt={args.ckpt}" if args.ckpt else f"pretrained={args.pretrained}"
    cmd = [sys.executable, str(ROOT / "serve.py"), source, f"port={port}", f"max_concurrent={max(clients, 1)}",
           f"max_tokens={args.max_tokens}", f"max_tokens_limit={args.max_tokens}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    while (line := proc.stdout.readline()) and not line.startswith("serving"):  # printed once it listens
        lines.append(line)
    if not line:
        sys.exit(f"error: serve.py did not start:\n{''.join(lines[-10:])}")
    print(line.strip())
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its output from filling the pipe
    return proc, port


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="a running server on this machine, e.g. http://127.0.0.1:8000")
    src.add_argument("--ckpt", help="start serve.py with this checkpoint (one server, max_concurrent = most clients)")
    src.add_argument("--pretrained", help="start serve.py with these GPT-2 weights")
    p.add_argument("--clients", default="1,8", help="comma-separated numbers of concurrent clients (default 1,8)")
    p.add_argument("--requests", type=int, default=4, help="requests per client, one after another (default 4)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request (default 64)")
    p.add_argument("--prompt", default="Tell me a story about a lighthouse keeper.")
    p.add_argument("--time", type=float, default=120.0, help="seconds per phase at most (default 120)")
    p.add_argument("--api-key", default=None)
    args = p.parse_args()
    try:
        counts = [int(c) for c in args.clients.split(",")]
    except ValueError:
        sys.exit(f"error: --clients must be numbers separated by commas, got {args.clients!r}")
    if not all(1 <= c <= 64 for c in counts) or not 1 <= args.requests <= 100 or not 0 < args.time <= 600:
        sys.exit("error: --clients must be in 1..64, --requests in 1..100 and --time in (0, 600]")
    proc = None
    if args.url:
        url = urlparse(args.url)
        if url.hostname not in LOCAL or url.port is None:
            sys.exit(f"error: --url must be http://127.0.0.1:<port> (or localhost/::1), got {args.url}")
        host, port = url.hostname, url.port
    else:
        proc, port = start_server(args, max(counts))
        host = "127.0.0.1"
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    body = json.dumps({"messages": [{"role": "user", "content": args.prompt}], "max_tokens": args.max_tokens,
                       "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}).encode()
    try:
        one_request(host, port, body, headers, timeout=args.time)  # warm-up, not counted
        first_rate = None
        for n in counts:
            r = phase(host, port, n, args.requests, body, headers, args.time)
            rate = r["tokens"] / r["wall"]
            first_rate = first_rate or rate
            print(f"{n:3d} clients: {r['done']} requests in {r['wall']:.1f} s = {r['done'] / r['wall']:.2f} req/s, "
                  f"{rate:.1f} tokens/s aggregate ({rate / first_rate:.2f}x the first), "
                  f"TTFT p50 {1000 * pct(r['ttft'], 50):.0f} ms p95 {1000 * pct(r['ttft'], 95):.0f} ms, "
                  f"latency p50 {1000 * pct(r['latency'], 50):.0f} ms p95 {1000 * pct(r['latency'], 95):.0f} ms, "
                  f"{len(r['errors'])} errors")
            for e in sorted(set(r["errors"]))[:5]:
                print(f"     error: {e}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
