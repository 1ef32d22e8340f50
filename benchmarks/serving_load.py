"""The HTTP service under load and under attack, against real uvicorn processes on 127.0.0.1.

Builds a tiny grid run (visualbert-tiny, random weights: speed does not depend on them), starts
``memeguard serve`` twice (``--max-batch 32`` and ``--max-batch 1``) and measures, every loop bounded:

1. one client, image + text (multipart ``POST /v1/score``): p50 / p95 latency;
2. ``--clients`` concurrent clients for ``--seconds`` against each server: throughput, p50, p99, errors,
   the server's RSS growth after warm-up (the batched server must reach >= 3x the throughput) and the
   server's CPU time per request (user + system, all threads, from /proc): on a shared machine the
   throughput follows what the neighbours leave free, the CPU a request costs much less so;
   ``--concurrency-baseline`` adds ``--max-batch 1 --max-concurrency 2``, the unbatched server given as
   many scoring threads as the batched one has cores, to tell batching's gain from using both cores;
3. the attack set against the batched server, each timed to its 4xx while ``/readyz`` is polled:
   eight 1 x 39,000,000-pixel PNGs in one request, 32 x 10 MiB items, 100,000-deep JSON, a 5,000-digit
   integer, a lone surrogate, 300 stalled uploads; then the server's peak RSS.

    PYTHONPATH=src .venv/bin/python benchmarks/serving_load.py [--seconds 60] [--clients 32] [--threads 1]
        [--concurrency-baseline]

What bounds the ratio: batching amortises only the per-call work (the model forward and its Python
overhead: ~2.7 ms CPU for one meme, ~0.3 ms per meme in a batch of 32 for visualbert-tiny). Decoding
(~1.5 ms), grid features (~8 ms, their arithmetic fixed bit for bit by the stored features) and the HTTP
stack (~1 ms) are paid per meme either way, so on a CPU-bound machine the batched server needs only ~1.2x
less CPU per request; what is left is running a batch's per-meme work on both cores at once (GIL-free
decoding and numpy), worth up to ~2x more when the cores are free. ``benchmarks/serving.py`` shows the
per-stage split.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).parent))
from serving import make_run  # noqa: E402

HOST = "127.0.0.1"


def meme_jpegs(folder: Path, n: int) -> list[Path]:
    """Meme-like JPEGs (~550x500, a few tens of KB: photos with shapes, not incompressible noise)."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        width, height = (550, 500) if k % 2 else (600, 450)
        ramp = np.linspace(0, 1, width)[None, :, None] * rng.uniform(60, 200, size=3)
        pixels = np.clip(ramp + rng.normal(0, 6, size=(height, width, 3)) + 30, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = int(rng.integers(0, width - 100)), int(rng.integers(0, height - 100))
            draw.ellipse((x, y, x + 90, y + 90), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw.text((20, 20), f"WHEN THE MEME NUMBER {k}", fill=(255, 255, 255))
        path = folder / f"{k:03d}.jpg"
        image.save(path, quality=85)
        paths.append(path)
    return paths


def multipart(image: bytes, text: str | None) -> tuple[bytes, str]:
    """A ``POST /v1/score`` body; without ``text`` the server reads the caption from the image (OCR)."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="m.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n",
        *(
            [f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{text}\r\n'.encode()]
            if text is not None
            else []
        ),
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# ------------------------------------------------------------------------------------------ server


class Server:
    """``memeguard serve`` in a child process; stopped with SIGTERM (graceful) when done."""

    def __init__(
        self, run: Path, port: int, max_batch: int, threads: int, log: Path, concurrency: int = 1
    ) -> None:
        command = [
            sys.executable,
            "-m",
            "memeguard",
            "serve",
            "-m",
            str(run),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--threads",
            str(threads),
            "--max-batch",
            str(max_batch),
            "--max-concurrency",
            str(concurrency),
        ]
        self.port, self.log = port, log.open("wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited early; see {log}")
            try:
                if get(port, "/readyz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise SystemExit("the server did not become ready in 300 s")

    def rss_mb(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far, every thread included."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self.log.close()


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def post(
    connection: http.client.HTTPConnection, body: bytes, content_type: str, path: str
) -> tuple[int, float]:
    started = time.perf_counter()
    connection.request("POST", path, body=body, headers={"Content-Type": content_type})
    response = connection.getresponse()
    response.read()
    return response.status, time.perf_counter() - started


# ------------------------------------------------------------------------------------------ load


def single_client(port: int, bodies: list[tuple[bytes, str]], n: int) -> list[float]:
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    seconds = []
    for k in range(n):
        status, took = post(connection, *bodies[k % len(bodies)], "/v1/score")
        assert status == 200, status
        seconds.append(took)
    connection.close()
    return seconds


def load(port: int, bodies: list[tuple[bytes, str]], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads, each posting back to back on its own keep-alive connection until the deadline."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        connection = http.client.HTTPConnection(HOST, port, timeout=60)
        mine, failed, i = [], 0, k
        while time.monotonic() < deadline:
            try:
                status, took = post(connection, *bodies[i % len(bodies)], "/v1/score")
            except OSError:
                status, took = 0, 0.0
                connection = http.client.HTTPConnection(HOST, port, timeout=60)
            if status == 200:
                mine.append(took)
            else:
                failed += 1
            i += 1
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "per_s": len(latencies) / elapsed,
        "p50": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99": 1000 * float(np.percentile(latencies, 99)) if latencies else float("nan"),
    }


# ------------------------------------------------------------------------------------------ attacks


def raw_request(port: int, head: bytes, body: bytes, timeout: float = 10.0) -> tuple[int, float]:
    """Send ``head`` + ``body`` (as much as the server takes) and time the status line's arrival."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    started = time.perf_counter()
    try:
        sock.sendall(head)
        try:
            sock.sendall(body)
        except OSError:
            pass  # the server answered and closed before taking the whole body: that is the point
        status_line = sock.recv(64).split(b"\r\n", 1)[0]
        return int(status_line.split()[1]), time.perf_counter() - started
    finally:
        sock.close()


def headers(path: str, content_type: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def attack_long_pngs(port: int) -> tuple[int, float]:
    buffer = io.BytesIO()
    Image.new("L", (1, 39_000_000)).save(buffer, format="PNG")
    png = buffer.getvalue()
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{k}.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + png
        + b"\r\n"
        for k in range(8)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    print(f"  (eight 1x39,000,000 PNGs: a {len(body) / 1024:.0f} KB request)")
    return raw_request(
        port, headers("/v1/score/batch", f"multipart/form-data; boundary={boundary}", len(body)), body
    )


def attack_huge_items(port: int) -> tuple[int, float]:
    """32 items of 10 MiB base64 each, announced honestly (~448 MB); only the first 4 MiB are offered."""
    item = b'{"image_b64": "' + b"A" * (10 * 1024 * 1024) + b'", "text": "x"}'
    length = 12 + 32 * len(item) + 31 + 2
    return raw_request(
        port, headers("/v1/score/batch", "application/json", length), b'{"items": [' + item[: 4 << 20]
    )


def attack_json(port: int, body: bytes) -> tuple[int, float]:
    return raw_request(port, headers("/v1/score", "application/json", len(body)), body)


def attack_stalled(port: int, count: int = 300) -> tuple[list[int], list[float]]:
    """``count`` uploads that announce 100 KB, send 100 bytes and stall; time each one's answer."""
    socks, started = [], []
    for _ in range(count):
        sock = socket.create_connection((HOST, port), timeout=10)
        sock.sendall(headers("/v1/score", "application/json", 100_000) + b'{"image_b64": "' + b"A" * 85)
        socks.append(sock)
        started.append(time.perf_counter())
    statuses, seconds = [], []
    for sock, t0 in zip(socks, started, strict=True):
        try:
            line = sock.recv(64).split(b"\r\n", 1)[0]
            statuses.append(int(line.split()[1]))
        except (OSError, IndexError, ValueError):
            statuses.append(0)
        seconds.append(time.perf_counter() - t0)
        sock.close()
    return statuses, seconds


class ReadyPoller:
    """Polls /readyz every 50 ms in a thread; records its slowest answer and any failure."""

    def __init__(self, port: int) -> None:
        self.port, self.slowest, self.failures, self.polls = port, 0.0, 0, 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop_event.wait(0.05):
            started = time.perf_counter()
            try:
                ok = get(self.port, "/readyz", timeout=5)[0] == 200
            except OSError:
                ok = False
            self.slowest = max(self.slowest, time.perf_counter() - started)
            self.polls += 1
            self.failures += not ok

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far, every thread included."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()


def run_attacks(server: Server) -> list[tuple[str, str, str]]:
    port = server.port
    rows = []
    attacks = [
        ("eight 1x39,000,000-px PNGs", lambda: attack_long_pngs(port)),
        ("32 x 10 MiB items", lambda: attack_huge_items(port)),
        ("100,000-deep JSON", lambda: attack_json(port, b"[" * 100_000 + b"]" * 100_000)),
        (
            "5,000-digit integer",
            lambda: attack_json(port, b'{"image_b64": "aGk=", "n": ' + b"9" * 5000 + b"}"),
        ),
        ("lone surrogate", lambda: attack_json(port, b'{"image_b64": "aGk=", "text": "\\udc80"}')),
    ]
    for name, attack in attacks:
        status, seconds = attack()
        rows.append((name, str(status), f"{seconds:.3f}"))
    statuses, seconds = attack_stalled(port)
    kinds = ",".join(sorted({str(s) for s in statuses}))
    rows.append(("300 stalled uploads: median", kinds, f"{statistics.median(seconds):.3f}"))
    rows.append(("300 stalled uploads: slowest", kinds, f"{max(seconds):.3f}"))
    return rows


# ------------------------------------------------------------------------------------------ main


def mean_batch(port: int) -> float:
    """Memes per scoring batch so far, from the server's own /metrics."""
    text = get(port, "/metrics")[1].decode()
    total = {
        k: float(v)
        for k, v in (line.split() for line in text.splitlines() if line.startswith("memeguard_batch_memes_"))
    }
    return total.get("memeguard_batch_memes_sum", 0.0) / max(
        total.get("memeguard_batch_memes_count", 0.0), 1.0
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) + 2 for i in range(len(header))]
    for r in [header, *rows]:
        print(
            "".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="Duration of each load run.")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server.")
    parser.add_argument("--single", type=int, default=40, help="Requests for the single-client latency.")
    parser.add_argument("--ocr", type=int, default=10, help="Image-only requests (OCR); 0 skips them.")
    parser.add_argument(
        "--concurrency-baseline",
        action="store_true",
        help="Also load --max-batch 1 --max-concurrency 2 (one meme per batch, two batches at a time).",
    )
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "memes").mkdir()
        images = meme_jpegs(root / "memes", 16)
        run = make_run(root, images)
        bodies = [
            multipart(p.read_bytes(), f"when the meme number {k} is benchmarked")
            for k, p in enumerate(images)
        ]
        print(f"image + text requests: {statistics.mean(len(b) for b, _ in bodies) / 1024:.0f} KB on average")
        image_only = [multipart(p.read_bytes(), None) for p in images]
        configs = [(32, 1), (1, 1)] + ([(1, 2)] if args.concurrency_baseline else [])
        results = {}
        for max_batch, concurrency in configs:
            name = f"--max-batch {max_batch}" + (
                f" --max-concurrency {concurrency}" if concurrency > 1 else ""
            )
            log = root / f"server{max_batch}-{concurrency}.log"
            server = Server(run, free_port(), max_batch, args.threads, log, concurrency)
            try:
                single = single_client(server.port, bodies, args.single)
                load(server.port, bodies, args.clients, min(5.0, args.seconds))  # warm-up
                rss_before, cpu_before = server.rss_mb(), server.cpu_seconds()
                measured = load(server.port, bodies, args.clients, args.seconds)
                measured["cpu_ms"] = 1000 * (server.cpu_seconds() - cpu_before) / max(measured["requests"], 1)
                measured["rss_growth"] = server.rss_mb() - rss_before
                measured["mean_batch"] = mean_batch(server.port)
                measured["single_p50"] = 1000 * statistics.median(single)
                measured["single_p95"] = 1000 * float(np.percentile(single, 95))
                measured["load"] = os.getloadavg()[0]
                results[name] = measured
                if max_batch == 32:
                    ocr = single_client(server.port, image_only, args.ocr) if args.ocr else []
                    poller = ReadyPoller(server.port)
                    attack_rows = run_attacks(server)
                    poller.stop()
                    peak = server.rss_mb("VmHWM")
            finally:
                server.stop()
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    print(f"\nsingle client, image + text, POST /v1/score ({args.single} requests):")
    singles = [(name, f"{r['single_p50']:.1f}", f"{r['single_p95']:.1f}") for name, r in results.items()]
    table(("server", "p50 ms", "p95 ms"), singles)
    if ocr:
        print(f"\nsingle client, image only (the server reads the text: OCR), {len(ocr)} requests:")
        table(
            ("server", "p50 ms", "p95 ms"),
            [
                (
                    "--max-batch 32",
                    f"{1000 * statistics.median(ocr):.0f}",
                    f"{1000 * float(np.percentile(ocr, 95)):.0f}",
                )
            ],
        )
    print(f"\n{args.clients} concurrent clients for {args.seconds:.0f} s:")
    rows = [
        (
            name,
            f"{r['per_s']:.1f}",
            f"{r['p50']:.0f}",
            f"{r['p99']:.0f}",
            str(r["errors"]),
            f"{r['rss_growth']:+.1f}",
            f"{r['mean_batch']:.1f}",
            f"{r['cpu_ms']:.1f}",
            f"{r['load']:.1f}",
        )
        for name, r in results.items()
    ]
    header = ("server", "req/s", "p50 ms", "p99 ms", "errors", "RSS growth MB", "memes/batch", "CPU ms/req")
    table((*header, "load avg"), rows)
    batched, unbatched = results["--max-batch 32"], results["--max-batch 1"]
    print(
        f"throughput, batched vs --max-batch 1: {batched['per_s'] / unbatched['per_s']:.2f}x; "
        f"server CPU per request: {unbatched['cpu_ms'] / batched['cpu_ms']:.2f}x less"
    )
    print("\nattack set (batched server):")
    table(("attack", "status", "seconds to answer"), attack_rows)
    print(
        f"server peak RSS (VmHWM): {peak:.0f} MB; /readyz: {poller.polls} polls, {poller.failures} failed, "
        f"slowest {poller.slowest:.3f} s"
    )


if __name__ == "__main__":
    main()
