"""Serving: `zhen serve` under concurrent clients, against offline batched calls on the same sentences.

    python bench/bench_serve.py                       # 2,000 requests from 32 clients → bench/results/serve.md
    python bench/bench_serve.py --requests 200 --clients 8 --rounds 2 --write ""     # a quick look

One run, on 127.0.0.1 only, bounded in requests (--requests) and time (--max-seconds a round):

1. sentences: the Chinese side of Tatoeba's dev set (short everyday sentences); request i sends sentence i mod n;
2. `zhen serve --port 0` starts as a process of its own (the offline translator's model, beam and precision); its
   resident memory (VmRSS);
3. idle latency: --idle requests of one short sentence (我爱你), one after another, on an otherwise idle server;
4. --rounds rounds, each over its share of the requests, alternating the two ways of translating them:
   - offline: one `Translator.translate` call over the round's sentences (repeats included) in this process,
     timed (wall clock and CPU), the faster of two passes; its translations are what every served answer must
     equal;
   - offline in calls of --clients sentences, in request order: the largest batches that many closed-loop
     clients (each waits for its answer) can give a server, so the ceiling of what batching can reach;
   - served: --clients concurrent clients (asyncio + aiohttp, keep-alive connections), each sending one
     sentence a request until the round's requests are sent: wall clock, latencies, the server's CPU seconds
     (/proc) and its model calls (its own Prometheus metrics).
   On a shared machine other load comes and goes and only ever adds time; alternating in rounds and comparing
   the best round of each (as bench_translate.py does) compares the two under the same conditions, and each
   round's own ratio is reported too. The offline passes count the decoder's steps and rows: the two ways do the
   same rows in different numbers of steps, and fitting seconds = a·steps + b·rows to them gives the fixed cost
   a of a step, which is what small batches pay more often. Each phase starts after --settle seconds of rest:
   here an offline pass run right after a served phase ran at a fraction of the speed of one run a few seconds
   later, which would flatter the server. (aiohttp: its client costs a fraction of a millisecond of CPU a
   request, httpx's several, which on 2 cores would be taken from the server being measured.)
5. every answer checked: status 200 and the offline translation; wrong and lost (error, timeout) answers counted;
6. the server's memory after; then SIGTERM, and its exit status;
7. the report: machine, versions, command, date, and the other load on the machine before and after.

Targets (issue #15): at 32 clients the server reaches >= 70% of the offline sentences/s; the idle p99 is <= 150 ms;
no wrong or lost answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SENTENCES = ROOT.parent / "shared" / "data" / "tatoeba" / "dev.tsv"
IDLE_SENTENCE = "我爱你"


@dataclass
class Phase:
    """One timed phase of requests: latencies (s) and what went wrong."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    sentences: int = 0
    wrong: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank: the smallest value with at least q% of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n·q/100), at least 1
    return ordered[int(rank) - 1]


def read_sentences(path: Path, limit: int) -> list[str]:
    """The first column of a TSV (or whole lines of a text file), non-empty, at most `limit`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    sentences = [line.split("\t")[0].strip() for line in lines]
    return [s for s in sentences if s][:limit]


@dataclass
class Offline:
    """One timed `Translator.translate` call over all the requests' sentences."""

    seconds: float  # wall clock
    cpu: float  # CPU seconds of this process (all its threads)
    sentences: int
    steps: int = 0  # decoder steps of the pass (each: one token for every row still being decoded)
    rows: int = 0  # rows of those steps, summed (a sentence has `beam` rows while it is decoded)

    @property
    def rate(self) -> float:
        return self.sentences / self.seconds


@contextlib.contextmanager
def counting_steps(model) -> Iterator[dict[str, int]]:
    """Count the model's decoder steps and their rows while the context is open."""
    counts = {"steps": 0, "rows": 0}
    original = model.decode_step

    def decode_step(tokens, cache):
        counts["steps"] += 1
        counts["rows"] += tokens.size(0)
        return original(tokens, cache)

    model.decode_step = decode_step  # an attribute of this instance, over the class's method
    try:
        yield counts
    finally:
        del model.decode_step


def offline_anchor(translator, sentences: list[str], chunk: int = 0, passes: int = 2) -> tuple[Offline, list[str]]:
    """The fastest of `passes` timed passes over `sentences`: one `translate` call, or (chunk > 0) one call per
    `chunk` sentences in their order; and the translations, which every pass must agree on. (The first pass
    also warms up whatever the model caches per shape.)"""
    best, translations = None, None
    chunk = chunk or len(sentences)
    for _ in range(passes):
        with counting_steps(translator.model) as counts:
            start, cpu = time.perf_counter(), time.process_time()
            result = [t for i in range(0, len(sentences), chunk)
                      for t in translator.translate(sentences[i : i + chunk])]
            timed = Offline(time.perf_counter() - start, time.process_time() - cpu, len(sentences), **counts)
        assert translations is None or result == translations, "offline translation changed between passes"
        best, translations = min(best or timed, timed, key=lambda o: o.seconds), result
    return best, translations


def start_server(model: str | None, beam: int | None, precision: str | None,
                 extra: str = "") -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "zhen", "serve", "--port", "0", "--log-level", "warning"]
    command += (["--model", model] if model else []) + (["--beam", str(beam)] if beam else [])
    command += (["--precision", precision] if precision else []) + shlex.split(extra)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = process.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
    if not match:
        process.kill()
        raise SystemExit(f"bench_serve: the server did not start: {line!r}")
    return process, match.group(1)


def resident_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def send(session, url: str, sentence: str, expected: str, phase: Phase) -> None:
    start = time.perf_counter()
    try:
        async with session.post(url + "translate", json={"q": sentence, "source": "zh", "target": "en"}) as response:
            status, answer = response.status, await response.json(content_type=None)
    except Exception as error:  # a timeout, a dropped connection, a body that is not JSON: a lost answer
        phase.lost.append(f"{sentence}: {type(error).__name__} {error}")
        return
    phase.latencies.append(time.perf_counter() - start)
    if status != 200:
        phase.lost.append(f"{sentence}: HTTP {status} {answer}")
    elif answer.get("translatedText") != expected:
        phase.wrong.append(f"{sentence}: {answer.get('translatedText')!r} != {expected!r}")
    else:
        phase.sentences += 1


def session(clients: int):
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                 timeout=aiohttp.ClientTimeout(total=120))


async def idle_latency(url: str, count: int, expected: str) -> Phase:
    phase, warm_up = Phase(), Phase()
    async with session(1) as client:
        for _ in range(5):  # connection and first-request warm-up, not measured
            await send(client, url, IDLE_SENTENCE, expected, warm_up)
        start = time.perf_counter()
        for _ in range(count):
            await send(client, url, IDLE_SENTENCE, expected, phase)
    phase.seconds = time.perf_counter() - start
    return phase


async def load(url: str, sentences: list[str], expected: list[str], clients: int, max_seconds: float) -> Phase:
    """`clients` concurrent clients send sentences[i] for i = 0, 1, … until all are sent or time is up."""
    phase = Phase()
    next_index = iter(range(len(sentences)))
    deadline = time.monotonic() + max_seconds

    async def client_loop(client) -> None:
        for i in next_index:  # shared: each request index is taken by exactly one client
            if time.monotonic() > deadline:
                phase.lost.append(f"{sentences[i]}: not sent, --max-seconds reached")
                continue
            await send(client, url, sentences[i], expected[i], phase)

    async with session(clients) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        phase.seconds = time.perf_counter() - start
    return phase


def batch_totals(url: str) -> tuple[float, float]:
    """The server's model calls so far and the seconds they took (its Prometheus metrics)."""
    import urllib.request

    text = urllib.request.urlopen(url + "metrics", timeout=30).read().decode()
    count = float(re.search(r"^zhen_batch_duration_seconds_count (\S+)$", text, re.M).group(1))
    seconds = float(re.search(r"^zhen_batch_duration_seconds_sum (\S+)$", text, re.M).group(1))
    return count, seconds


def machine_load() -> tuple[str, str]:
    """Load averages and the busiest processes now (other engineers' work shares this machine). `ps`, not one
    `top` snapshot: a single `top` pass has no interval to measure, shows 0% for all and lists by process id."""
    ps = subprocess.run(["ps", "-eo", "pid,pcpu,rss,etime,args", "--sort=-pcpu", "--cols", "150"],
                        capture_output=True, text=True).stdout.splitlines()
    return f"{os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} / {os.getloadavg()[2]:.2f}", "\n".join(ps[:7])


def versions() -> str:
    names = ["zhen", "torch", "starlette", "uvicorn", "prometheus-client", "aiohttp"]
    return f"Python {platform.python_version()}, " + ", ".join(f"{n} {installed(n)}" for n in names)


def installed(name: str) -> str:
    """A package's version, or "not installed" (the report is still written; the load phase needs aiohttp)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    match = re.search(r"model name\s*:\s*(.+)", info)
    return f"{match.group(1) if match else platform.processor()}, {os.cpu_count()} cores"


@dataclass
class Round:
    """One round: the same sentences offline and served."""

    offline: Offline
    chunked: Offline  # offline in calls of --clients sentences: the largest batches those clients can give a server
    served: Phase
    cpu: float  # server CPU seconds while serving them
    calls: float  # model calls the server made for them
    client_cpu: float = 0.0  # CPU seconds of this process (the clients) while they were served
    model_seconds: float = 0.0  # the time those model calls took (the server's metrics)

    @property
    def served_rate(self) -> float:
        return self.served.sentences / self.served.seconds if self.served.seconds else 0.0


@dataclass
class Run:
    command: str
    date: str
    clients: int
    idle: Phase
    rounds: list[Round]
    memory: tuple[float, float]  # server VmRSS MiB when warm, after the load
    exit_status: int
    load: tuple[tuple[str, str], tuple[str, str]]  # (load averages, busiest processes) before and after

    @property
    def busy(self) -> Phase:
        """All the served rounds as one phase (their latencies and problems)."""
        phases = [r.served for r in self.rounds]
        return Phase(sum(p.seconds for p in phases), [x for p in phases for x in p.latencies],
                     sum(p.sentences for p in phases), [x for p in phases for x in p.wrong],
                     [x for p in phases for x in p.lost])


def one_round(args: argparse.Namespace, translator, url: str, pid: int, sentences: list[str]) -> Round:
    time.sleep(args.settle)
    offline, expected = offline_anchor(translator, sentences)
    time.sleep(args.settle)
    chunked, same = offline_anchor(translator, sentences, chunk=args.clients)
    if same != expected:  # then no served answer could be checked against one offline translation
        changed = sum(a != b for a, b in zip(same, expected, strict=True))
        raise SystemExit(f"bench_serve: {changed} of {len(expected)} offline translations change with the batch they "
                         "are in, so served answers cannot be checked against them")
    time.sleep(args.settle)
    (calls, model), cpu, client = batch_totals(url), cpu_seconds(pid), time.process_time()
    served = asyncio.run(load(url, sentences, expected, args.clients, args.max_seconds))
    client = time.process_time() - client
    calls_after, model_after = batch_totals(url)
    return Round(offline, chunked, served, cpu_seconds(pid) - cpu, calls_after - calls, client, model_after - model)


def measure(args: argparse.Namespace, translator, requests: list[str]) -> dict:
    """Start the server, measure idle latency and the rounds, stop it with SIGTERM."""
    idle_expected = translator.translate([IDLE_SENTENCE])[0]
    translator.translate(requests[:8])  # warm-up of this process's model
    process, url = start_server(args.model, args.beam, args.precision, args.server_args)
    try:
        before = resident_mib(process.pid)
        idle = asyncio.run(idle_latency(url, args.idle, idle_expected))
        size = -(-len(requests) // args.rounds)
        rounds = [one_round(args, translator, url, process.pid, requests[i : i + size])
                  for i in range(0, len(requests), size)]
        after = resident_mib(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=120)
    return {"idle": idle, "rounds": rounds, "memory": (before, after), "exit_status": status}


def throughput_rows(run: Run) -> list[tuple[str, str, str]]:
    best_offline = max(r.offline.rate for r in run.rounds)
    best_served = max(r.served_rate for r in run.rounds)
    best_chunked = max(r.chunked.rate for r in run.rounds)
    ratios = sorted(r.served_rate / r.offline.rate for r in run.rounds)
    offline_cpu = 1000 * sum(r.offline.cpu for r in run.rounds) / sum(r.offline.sentences for r in run.rounds)
    served = run.busy
    server_cpu = 1000 * sum(r.cpu for r in run.rounds) / max(1, served.sentences)
    client_cpu = 1000 * sum(r.client_cpu for r in run.rounds) / max(1, served.sentences)
    rate = served.sentences / max(served.seconds, 1e-9)
    calls = sum(r.calls for r in run.rounds)
    met = {True: "met", False: "**not met**"}[best_served >= 0.7 * best_offline]
    return [
        ("offline: one `Translator.translate` call a round, sentences/s (each round)",
         " / ".join(f"{r.offline.rate:.1f}" for r in run.rounds) + f"; best {best_offline:.1f}", "the anchor"),
        (f"served: {run.clients} concurrent clients, one sentence a request, sentences/s (each round)",
         " / ".join(f"{r.served_rate:.1f}" for r in run.rounds) + f"; best {best_served:.1f} = "
         f"{100 * best_served / best_offline:.0f}% of the best offline", f">= 70%: {met}"),
        ("served / offline within each round", " / ".join(f"{100 * x:.0f}%" for x in ratios) + " (sorted)", ""),
        (f"offline in calls of {run.clients} sentences (the largest batches {run.clients} clients can give), "
         "sentences/s (each round)", " / ".join(f"{r.chunked.rate:.1f}" for r in run.rounds) +
         f"; best {best_chunked:.1f} = {100 * best_chunked / best_offline:.0f}% of the best offline", ""),
        ("CPU time a sentence: offline / server process (all of it: HTTP, JSON, batching, model)",
         f"{offline_cpu:.1f} / {server_cpu:.1f} ms", ""),
        ("CPU while serving: server + clients (this process: aiohttp, checks) a sentence; cores busy",
         f"{server_cpu:.1f} + {client_cpu:.1f} ms; {(server_cpu + client_cpu) * rate / 1000:.2f} of "
         f"{os.cpu_count()} cores", ""),
        ("sentences per model call when served (server metrics)",
         f"{served.sentences / calls:.1f} ({calls:.0f} calls)" if calls else "-", ""),
        ("model busy while served: its calls' time / the wall clock (each round)",
         " / ".join(f"{100 * r.model_seconds / r.served.seconds:.0f}%" if r.served.seconds else "-"
                    for r in run.rounds), ""),
        step_cost_row(run),
    ]


def step_cost_row(run: Run) -> tuple[str, str, str]:
    """Why calls of --clients sentences are slower: the same rows in more decoder steps. Fitting
    seconds = a·steps + b·rows to the two offline ways (all rounds) gives a step's fixed cost a."""
    def totals(passes: list[Offline]) -> tuple[float, int, int]:  # (seconds, steps, rows) over the rounds
        return sum(o.seconds for o in passes), sum(o.steps for o in passes), sum(o.rows for o in passes)

    (t1, s1, r1), (t2, s2, r2) = totals([r.offline for r in run.rounds]), totals([r.chunked for r in run.rounds])
    text = f"{s1} / {s2} steps for {r1} / {r2} rows"
    if s2 > s1 and r1:
        a = (t2 - t1) / (s2 - s1)
        b = (t1 - a * s1) / r1
        text += f"; seconds = {1000 * a:.2f} ms a step + {1000 * b:.3f} ms a row"
    return (f"decoder steps and rows, offline: one call / calls of {run.clients} (all rounds, whole calls)", text, "")


def rows(run: Run) -> list[tuple[str, str, str]]:
    """(measure, result, target) for the report's table."""
    idle_p50, idle_p99 = (percentile(run.idle.latencies, q) * 1000 for q in (50, 99))
    busy = run.busy
    busy_p50, busy_p99 = (percentile(busy.latencies, q) * 1000 for q in (50, 99))
    wrong, lost = len(busy.wrong) + len(run.idle.wrong), len(busy.lost) + len(run.idle.lost)
    mark = {True: "met", False: "**not met**"}
    return [
        *throughput_rows(run),
        (f"latency when served ({len(busy.latencies)} requests), p50 / p99", f"{busy_p50:.0f} / {busy_p99:.0f} ms",
         ""),
        (f"idle latency ({IDLE_SENTENCE}, {len(run.idle.latencies)} requests one at a time), p50 / p99",
         f"{idle_p50:.0f} / {idle_p99:.0f} ms", f"p99 <= 150 ms: {mark[idle_p99 <= 150]}"),
        ("answers wrong / lost", f"{wrong} / {lost}", f"0 / 0: {mark[wrong == lost == 0]}"),
        ("server memory (VmRSS) warm / after", f"{run.memory[0]:.0f} / {run.memory[1]:.0f} MiB", ""),
        ("server exit status after SIGTERM", str(run.exit_status), "0"),
    ]


def report(run: Run) -> str:
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows(run))
    busy = run.busy
    problems = (busy.wrong + busy.lost + run.idle.wrong + run.idle.lost)[:20]
    checked = ("Answers that were wrong or lost:\n" + "\n".join(f"- {p}" for p in problems) if problems
               else "Every answer equalled the offline translation of its sentence.")
    (avg_before, top_before), (avg_after, top_after) = run.load
    return f"""# `zhen serve`: throughput and latency

Measured by `bench/bench_serve.py` (its docstring says what each phase does) in one run:

    {run.command}

Date: {run.date}. Machine: {cpu_name()}. {versions()}.

| measure | result | target |
|---|---|---|
{table}

{checked}

Other load on this machine (a shared 2-core VM), load averages over 1 / 5 / 15 minutes: {avg_before} before
the run, {avg_after} after it. The busiest processes before and after (`ps`: %CPU over each one's life so far):

```
{top_before}
```

```
{top_after}
```
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests in the load phase (default 2000)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--idle", type=int, default=200, help="requests in the idle-latency phase (default 200)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds alternating offline and served (default 4)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of rest before each offline and served "
                        "phase (default 3)")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop sending after this long in a round "
                        "(default 300)")
    parser.add_argument("--sentences", default=str(DEFAULT_SENTENCES), help="TSV or text file of Chinese sentences")
    parser.add_argument("--model", help="model directory (default: the shipped model)")
    parser.add_argument("--beam", type=int, help="beam size (default: the model's)")
    parser.add_argument("--precision", help="the server's and the offline translator's (default: the model's)")
    parser.add_argument("--server-args", default="", help="more arguments for zhen serve, e.g. '--threads 2'")
    parser.add_argument("--write", default=str(ROOT / "bench" / "results" / "serve.md"),
                        help="report file ('' : print only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from zhen.translator import Translator

    args = parse_args(argv)
    pool = read_sentences(Path(args.sentences), args.requests)
    requests = [pool[i % len(pool)] for i in range(args.requests)]
    load_before = machine_load()
    options = {key: value for key, value in (("beam", args.beam), ("precision", args.precision)) if value}
    translator = Translator.load(args.model, device="cpu", **options)
    measured = measure(args, translator, requests)
    command = "python bench/bench_serve.py " + " ".join(sys.argv[1:] if argv is None else argv)
    run = Run(command.strip(), datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), args.clients,
              load=(load_before, machine_load()), **measured)
    text = report(run)
    print(text)
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
    return 0 if not (run.busy.wrong or run.busy.lost or run.idle.wrong or run.idle.lost) else 1


if __name__ == "__main__":
    sys.exit(main())
