"""Bounded load probe of issue 15: while each attack runs, does `/healthz` answer within 0.5 s, does a
legitimate realtime session complete its turn, and does the server's memory stay bounded?

One live server runs on loopback in its own process (`voxline serve`, embedded preset: the packaged models),
configured as the issue's prober had it: keys `k1,k2`, `VOXLINE_MAX_SESSIONS=8`, 4 sessions per key,
`VOXLINE_ALLOWED_ORIGINS=http://good.example`. For each attack of `bench/security_attacks.py` in turn:

- a sidecar process (so the attacker's own CPU work and GIL do not delay it) GETs `/healthz` every 100 ms
  and, 0.3 s into the attack, opens a realtime session with key k1 that asks one text question
  (`conversation.item.create` input_text + `response.create`, text output, 24 tokens at most) and waits
  for `response.done` with status `completed`;
- the server's RSS (/proc/PID/status) is read before and after, and sampled every 50 ms for the peak;
- the server's log growth is measured (an attack that floods the log is a defect too).

One row per attack: how the server refused it, /healthz max and p95, whether the concurrent turn completed
(and in how long), RSS before → after (peak), and PASS/FAIL against the goals: /healthz max < 0.5 s, the
turn completed, RSS peak growth < 300 MB, and the attack refused. Nothing is asserted.

    .venv/bin/python -m bench.security_probe --quick
    .venv/bin/python -m bench.security_probe --attacks flac_bomb,csrf_post
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT, machine, pct, today
from bench.load import Server

HEALTHZ_EVERY_S = 0.1
HEALTHZ_LIMIT_S = 0.5
RSS_GROWTH_LIMIT_MB = 300.0
TURN_TIMEOUT_S = 60.0
TURN_DELAY_S = 0.3  # the legitimate session starts once the attack is under way
SERVER_ENV = {
    "VOXLINE_API_KEYS": "k1,k2",
    "VOXLINE_MAX_SESSIONS": "8",
    "VOXLINE_MAX_SESSIONS_PER_KEY": "4",
    "VOXLINE_ALLOWED_ORIGINS": "http://good.example",
}
LEGIT_KEY = "k1"


# ---- the server ------------------------------------------------------------------------------------------------
class ProbeServer(Server):
    """bench.load's server process, with the probe's settings and the default (info) log level, so that an
    attack which floods the log shows up in the log's growth."""

    def __init__(self, log_dir: Path, root: Path, n: int = 1):
        from audio_server.live import free_port

        self.log_path = log_dir / f"server-{n}.log"
        self.log = open(self.log_path, "w")
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = {**os.environ, **SERVER_ENV, "PYTHONPATH": str(root)}  # the code of `root`, not the probe's checkout
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "audio_server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def log_bytes(self) -> int:
        self.log.flush()
        return self.log_path.stat().st_size

    def reset_peak(self) -> bool:
        """Start VmHWM (peak RSS) afresh (Linux: `5` to /proc/PID/clear_refs); False where not allowed."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def peak_mb(self) -> float | None:
        try:
            for line in open(f"/proc/{self.pid}/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None


class RssSampler:
    """The server's RSS every 50 ms while the attack runs (VmHWM as well where it can be reset)."""

    def __init__(self, server: ProbeServer):
        self.server = server
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        self.hwm_reset = self.server.reset_peak()
        self.before = self.server.rss_mb() or 0.0
        self.peak = self.before
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.server.rss_mb() or 0.0)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.hwm_reset:
            self.peak = max(self.peak, self.server.peak_mb() or 0.0)


# ---- the sidecar: /healthz and one legitimate turn -------------------------------------------------------------
async def legit_turn(ws_base: str, key: str) -> tuple[bool, float, str]:
    """One realtime text turn with `key` → (completed, seconds from connect to response.done, detail)."""
    import websockets

    t0 = time.perf_counter()
    try:
        # No keepalive pings: a frozen server then shows as a turn that timed out, not as a ping timeout.
        async with websockets.connect(ws_base + "/v1/realtime?model=gpt-realtime", max_size=None, open_timeout=30,
                                      ping_interval=None, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            await ws.send(json.dumps({"type": "session.update", "session": {
                "type": "realtime", "output_modalities": ["text"], "max_output_tokens": 24,
                "instructions": "You are a voice assistant. Answer in one short sentence."}}))
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "What colour is the sky on a clear day?"}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            while True:
                remaining = TURN_TIMEOUT_S - (time.perf_counter() - t0)
                event = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, remaining)))
                if event.get("type") == "error":
                    return False, time.perf_counter() - t0, f"error {event['error'].get('code')}"
                if event.get("type") == "response.done":
                    status = event["response"]["status"]
                    return status == "completed", time.perf_counter() - t0, status
    except websockets.InvalidStatus as exc:
        return False, time.perf_counter() - t0, f"refused HTTP {exc.response.status_code}"
    except (TimeoutError, asyncio.TimeoutError):
        return False, time.perf_counter() - t0, "timed out"
    except Exception as exc:  # the connection went away
        return False, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"[:80]


async def _sidecar(base: str, conn) -> dict:
    import httpx

    latencies: list[float] = []
    failures = 0
    stop = asyncio.Event()

    async def healthz() -> None:
        nonlocal failures
        async with httpx.AsyncClient(timeout=30) as http:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    ok = (await http.get(base + "/healthz")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - t0
                latencies.append(took)
                failures += not ok
                await asyncio.sleep(max(0.0, HEALTHZ_EVERY_S - took))

    prober = asyncio.create_task(healthz())
    await asyncio.sleep(0.3)  # a baseline before the attack starts
    conn.send("ready")
    await asyncio.to_thread(conn.recv)  # "go": the attack has started
    await asyncio.sleep(TURN_DELAY_S)
    turn = await legit_turn("ws" + base[4:], LEGIT_KEY)
    await asyncio.to_thread(conn.recv)  # "stop": the attack is over
    await asyncio.sleep(0.5)  # what the server still does after the attacker is gone counts too
    stop.set()
    await prober
    return {"latencies": latencies, "failures": failures, "turn": turn}


def sidecar_main(base: str, conn) -> None:
    conn.send(asyncio.run(_sidecar(base, conn)))


# ---- one attack ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    attack: str
    refused: str
    was_refused: bool
    healthz_max_s: float
    healthz_p95_s: float
    healthz_failures: int
    turn_ok: bool
    turn_s: float
    turn_detail: str
    rss_before: float
    rss_after: float
    rss_peak: float
    log_kb: float
    wall_s: float

    @property
    def failed_goals(self) -> list[str]:
        failed = []
        if self.healthz_max_s >= HEALTHZ_LIMIT_S or self.healthz_failures:
            failed.append("healthz")
        if not self.turn_ok:
            failed.append("turn")
        if self.rss_peak - self.rss_before >= RSS_GROWTH_LIMIT_MB:
            failed.append("rss")
        if not self.was_refused:
            failed.append("not refused")
        return failed


def run_attack(name: str, server: ProbeServer, target, budget_s: float) -> Row:
    from bench.security_attacks import ATTACKS, Outcome

    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    side = ctx.Process(target=sidecar_main, args=(server.base, theirs), daemon=True)
    side.start()
    if not ours.poll(120):
        raise SystemExit("the sidecar did not start")
    ours.recv()
    log_before = server.log_bytes()
    t0 = time.perf_counter()
    with RssSampler(server) as rss:
        ours.send("go")
        try:
            outcome = asyncio.run(ATTACKS[name](target, budget_s))
        except Exception as exc:  # the attack could not run to its end: say how, keep probing the rest
            outcome = Outcome(note=f"attack raised {type(exc).__name__}: {exc}"[:120])
        ours.send("stop")
        result = ours.recv() if ours.poll(TURN_TIMEOUT_S + 60) else None
        time.sleep(1.0)  # let freed memory settle before "after"
        after = server.rss_mb() or 0.0
    wall = time.perf_counter() - t0
    side.join(10)
    if result is None:
        result = {"latencies": [float("inf")], "failures": 1, "turn": (False, float("inf"), "sidecar hung")}
    lat = result["latencies"] or [float("inf")]
    ok, turn_s, detail = result["turn"]
    return Row(name, outcome.summary(), outcome.refused, max(lat), pct(lat, 95), result["failures"], ok, turn_s,
               detail, rss.before, after, rss.peak, (server.log_bytes() - log_before) / 1024, wall)


# ---- report --------------------------------------------------------------------------------------------------
HEADER = ("| attack | refused how | /healthz max / p95 (ms) | concurrent turn | RSS before → after (peak), MB "
          "| log | result |\n|---|---|---|---|---|---|---|")


def format_row(r: Row) -> str:
    turn = f"yes, {r.turn_s:.1f} s" if r.turn_ok else f"**no** ({r.turn_detail}, {r.turn_s:.1f} s)"
    health = f"{1000 * r.healthz_max_s:.0f} / {1000 * r.healthz_p95_s:.0f}"
    if r.healthz_failures:
        health += f" ({r.healthz_failures} failed)"
    failed = r.failed_goals
    verdict = "PASS" if not failed else "**FAIL** (" + ", ".join(failed) + ")"
    return (f"| {r.attack} | {r.refused.replace('|', '/')} | {health} | {turn} | "
            f"{r.rss_before:.0f} → {r.rss_after:.0f} ({r.rss_peak:.0f}, +{r.rss_peak - r.rss_before:.0f}) | "
            f"{r.log_kb:.0f} KB | {verdict} |")


def main(argv: list[str] | None = None) -> int:
    from bench.security_attacks import ATTACKS, Target, flac_bomb_bytes

    ap = argparse.ArgumentParser(prog="python -m bench.security_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--attacks", default="", help=f"comma-separated, of: {', '.join(ATTACKS)} (default all)")
    ap.add_argument("--quick", action="store_true", help="4 s per attack instead of 10 (sizes unchanged)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the server log (default: a temp dir)")
    ap.add_argument("--server-root", type=Path, default=ROOT,
                    help="checkout whose code the server runs (e.g. a `git worktree` of a commit; default this one)")
    args = ap.parse_args(argv)
    names = [n for n in args.attacks.split(",") if n] or list(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        ap.error(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
    budget = 4.0 if args.quick else 10.0
    out = args.out or Path(tempfile.mkdtemp(prefix="voxline-security-probe-"))
    out.mkdir(parents=True, exist_ok=True)
    cache = ROOT / "artifacts" / "security_probe"
    if "flac_bomb" in names:
        flac_bomb_bytes(cache)  # built before the server is timed, not during the attack

    root = args.server_root.resolve()
    code = describe_checkout(root)
    print(f"server code: {root} at {code}", flush=True)
    rows: list[Row] = []
    notes: list[str] = []
    server = start_server(out, root, 1)
    try:
        target = Target(server.base, cache)
        rows.append(run_baseline(server, target))
        print(HEADER.split("\n")[0], flush=True)
        print(format_row(rows[-1]), flush=True)
        start_rss = rows[-1].rss_before
        for name in names:
            rows.append(run_attack(name, server, target, budget))
            print(format_row(rows[-1]), flush=True)
            left = server.rss_mb()
            dead = server.proc.poll() is not None
            if dead or left is None or left - start_rss >= RSS_GROWTH_LIMIT_MB:
                # One attack's leftovers (memory the allocator keeps, a wedged loop) would hide the next one's.
                why = f"exited ({server.proc.returncode})" if dead else f"RSS {left or 0:.0f} MB (started at {start_rss:.0f})"
                notes.append(f"server restarted after {name}: {why}")
                print(f"-- {notes[-1]}", flush=True)
                server.stop()
                server = start_server(out, root, len(notes) + 1)
                target = Target(server.base, cache)
                start_rss = server.rss_mb() or start_rss
    finally:
        server.stop()
    print()
    print(report(rows, args.quick, budget, code, notes))
    return 0


def start_server(out: Path, root: Path, n: int) -> ProbeServer:
    t0 = time.perf_counter()
    server = ProbeServer(out, root, n)
    server.wait_ready()
    # The first turn loads what a first turn loads (engine warm-up): not an attack's cost.
    asyncio.run(legit_turn("ws" + server.base[4:], LEGIT_KEY))
    print(f"server ready in {time.perf_counter() - t0:.0f} s (pid {server.pid}, log {server.log_path})", flush=True)
    return server


def describe_checkout(root: Path) -> str:
    """`<commit> (<subject>)`, with ` + uncommitted changes` when the work tree differs from it."""
    try:
        head = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h (%s)"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes" if dirty else "")


def run_baseline(server: ProbeServer, target) -> Row:
    """The same measurement with no attack: what the machine gives at rest."""
    from bench.security_attacks import ATTACKS, Outcome

    async def nothing(t, budget_s):
        await asyncio.sleep(budget_s)
        return Outcome(Counter({"—": 1}), refused=True)

    ATTACKS["(no attack)"] = nothing
    try:
        return run_attack("(no attack)", server, target, 2.0)
    finally:
        del ATTACKS["(no attack)"]


def report(rows: list[Row], quick: bool, budget: float, code: str, notes: list[str]) -> str:
    lines = [f"### Security load probe ({today()}, {machine()})", "",
             f"`python -m bench.security_probe{' --quick' if quick else ''}`, server code {code}: one `voxline serve` "
             "process on loopback (embedded preset: the packaged Whisper base, Qwen2.5-Coder-0.5B, Piper joe, Silero "
             "VAD), keys `k1,k2`, `VOXLINE_MAX_SESSIONS=8`, 4 sessions per key, "
             f"`VOXLINE_ALLOWED_ORIGINS=http://good.example`. Each attack (key k2) runs for up to {budget:g} s or "
             "until its fixed work is done; meanwhile a sidecar process GETs `/healthz` every 100 ms and a key-k1 "
             "realtime session asks one text question (24 tokens at most). Goals: /healthz max < 0.5 s, the turn "
             "completes, RSS peak growth < 300 MB, the attack refused. The machine's 2 cores are shared with other "
             "work: latencies are noisy.", "", HEADER]
    lines += [format_row(r) for r in rows]
    if notes:
        lines += ["", "Restarts (so that one attack's leftovers do not hide the next one's): " + "; ".join(notes) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
