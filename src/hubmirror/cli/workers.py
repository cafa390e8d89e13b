"""`hubmirror serve --workers N`: a supervisor process and N forked server processes.

The supervisor binds the listening sockets once, one set per worker with SO_REUSEPORT, and forks
the workers; each inherits and accepts on its own set, and the kernel spreads new connections over
the sets by a hash of their addresses. One shared socket was measured against it on two cores:
asyncio accepts every pending connection at each wakeup, so in half the runs the first worker awake
took all 16 connections of the benchmark's burst and the other sat idle (median HEAD rate 5,550/s
against 6,970/s, no better than one worker's 5,380/s). The price: a worker whose event loop is
stuck holds up its share of new connections, which a shared socket would hand to another. The
supervisor keeps every set open, so connections that reach the set of a worker being restarted
wait for its successor instead of being refused.

Each worker opens its own catalog, store and coordinator and builds its own app after the fork:
the supervisor holds nothing but sockets, pipes and signal handlers, so no database engine, thread
or event loop is ever shared across a fork.

The supervisor:

* restarts a worker that dies, after a backoff that doubles while the worker keeps dying young;
* gives up when a worker fails to start `START_ATTEMPTS` times in a row (a bad setting, an
  unreadable catalog): it stops the others and raises the worker's error, which the CLI prints;
* on SIGTERM or SIGINT sends SIGTERM to every worker, which stops as `hubmirror serve` does
  alone (aiohttp's graceful shutdown: in-flight requests get up to a minute), then returns. A
  second signal (a second or more after the first), or `STOP_GRACE` running out, kills them.

Each worker shares a socket pair with the supervisor: the worker writes "ready" or its startup
error on it, and sees end-of-file there when the supervisor is gone (killed with SIGKILL, say),
whereupon it stops: no orphaned server keeps the port.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, HubMirrorError

log = logging.getLogger("hubmirror.workers")

START_ATTEMPTS = 3  # consecutive failed starts of one worker before the server gives up
BACKOFF_FIRST = 0.5  # seconds before the first restart; doubles while a worker keeps dying
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a worker that served this long before dying is restarted at BACKOFF_FIRST again
STOP_GRACE = 65.0  # aiohttp's shutdown_timeout (60 s) and a margin, then SIGKILL

_READY = b"R"
_FAILED = b"E"

StartupHook = Callable[[Any], Awaitable[None]]
# Runs in a worker: open the services, build the app, append `on_startup` to the app's startup
# hooks and serve on the sockets until a graceful exit (web.run_app(..., sock=sockets,
# handle_signals=False): the hook installs the worker's own handlers).
Target = Callable[[list[socket.socket], StartupHook], None]


def listen(host: str, port: int, count: int, backlog: int = 128) -> list[list[socket.socket]]:
    """`count` sets of listening sockets sharing the port (SO_REUSEPORT), each on every address
    `host` resolves to, bound as asyncio's create_server binds them (SO_REUSEADDR, IPV6_V6ONLY):
    --workers 1 and N listen on the same addresses.

    Any process of the same user that sets SO_REUSEPORT may join such a group: a second server
    started on the port by mistake would take a share of the connections, silently. So each
    address is first bound without it, which fails while anything listens there."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    addrs = list({addr: (family, kind, proto) for family, kind, proto, _name, addr in infos}.items())
    out: list[list[socket.socket]] = []
    opened: list[socket.socket] = []

    def bind(addr: Any, family: int, kind: int, proto: int, reuse_port: bool) -> socket.socket:
        s = socket.socket(family, kind, proto)
        opened.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(addr)
        return s

    try:
        for addr, (family, kind, proto) in addrs:
            bind(addr, family, kind, proto, False).close()  # in use? (by any process, whatever it set)
        for _ in range(count):
            out.append([])
            for addr, (family, kind, proto) in addrs:
                s = bind(addr, family, kind, proto, True)
                s.listen(backlog)
                out[-1].append(s)
    except OSError as e:
        for s in opened:
            s.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return out


@dataclass
class _Worker:
    """One of the N places; its process changes when it is restarted."""

    number: int
    pid: int = 0  # 0: no process now
    conn: socket.socket | None = None  # the supervisor's end of the socket pair
    ready_at: float | None = None
    start_failures: int = 0  # consecutive starts that ended before "ready"
    deaths: int = 0  # consecutive deaths after "ready", for the backoff
    restart_at: float | None = None
    error: tuple[int, str] | None = None  # (status, message) sent by a worker that failed to start
    stopping: bool = False


class Supervisor:
    def __init__(self, sockets: list[list[socket.socket]], target: Target,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.sockets = sockets  # a set per worker
        self.workers = [_Worker(i + 1) for i in range(len(sockets))]
        self.target = target
        self.on_ready = on_ready
        self._signals: list[tuple[int, float]] = []  # (signal, when) of each SIGTERM/SIGINT
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._all_ready_once = False
        self._failure: HubMirrorError | None = None

    # -- the supervisor -----------------------------------------------------------------------

    def run(self) -> None:
        """Start the workers and supervise them until a signal says stop; raises the error of a
        worker that could not start."""
        if threading.active_count() > 1:
            raise RuntimeError("the supervisor must not run threads: they would be shared across fork()")
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            for w in self.workers:
                self._spawn(w)
            self._loop()
        finally:
            self._stop_all()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self._sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            for group in self.sockets:
                for s in group:
                    s.close()
        if self._failure is not None:
            raise self._failure

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum != signal.SIGCHLD:
            self._signals.append((signum, time.monotonic()))  # the wakeup fd wakes the loop

    def _loop(self) -> None:
        while not self._signals and self._failure is None:
            now = time.monotonic()
            due = [w.restart_at for w in self.workers if w.restart_at is not None]
            timeout = max(0.0, min(due) - now) if due else None
            for key, _ in self._sel.select(timeout):
                if key.fd == self._wake_r:
                    self._drain_wakeup()
                else:
                    self._read(key.data)
            self._reap()
            now = time.monotonic()
            for w in self.workers:
                if w.restart_at is not None and w.restart_at <= now and not self._signals and self._failure is None:
                    w.restart_at = None
                    self._spawn(w)
        if self._signals:
            log.info("%s: stopping %d workers", _signal_name(self._signals[0][0]), len(self.workers))

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _spawn(self, w: _Worker) -> None:
        parent_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the worker process (its tests run it for real)
            parent_end.close()
            self._become_worker(w, child_end)
        child_end.close()
        w.pid, w.conn, w.ready_at, w.error, w.stopping = pid, parent_end, None, None, False
        parent_end.setblocking(False)
        self._sel.register(parent_end, selectors.EVENT_READ, w)
        log.debug("worker %d started (pid %d)", w.number, pid)

    def _read(self, w: _Worker) -> None:
        """What the worker sent: "ready", or its startup error just before it exits."""
        assert w.conn is not None
        data = b""
        try:
            while chunk := w.conn.recv(65536):
                data += chunk
        except OSError:  # BlockingIOError: nothing more for now
            pass
        if not data:  # end of file: the worker is exiting; _reap will see it
            self._sel.unregister(w.conn)
            return
        if data.startswith(_READY):
            w.ready_at = time.monotonic()
            w.start_failures = 0
            data = data[len(_READY):]
            if not self._all_ready_once and all(x.ready_at is not None for x in self.workers):
                self._all_ready_once = True
                if self.on_ready is not None:
                    self.on_ready()
        if data.startswith(_FAILED):
            try:
                status, message = json.loads(data[len(_FAILED):])
                w.error = (int(status), str(message))
            except ValueError:
                w.error = (500, "a worker failed to start")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = next((x for x in self.workers if x.pid == pid), None)
            if w is None:
                continue
            self._close_conn(w)
            w.pid = 0
            if w.stopping or self._signals:
                continue
            self._died(w, pid, os.waitstatus_to_exitcode(status))

    def _close_conn(self, w: _Worker) -> None:
        if w.conn is None:
            return
        if w.conn.fileno() in self._sel.get_map():
            self._read(w)  # whatever it wrote before it exited
            if w.conn.fileno() in self._sel.get_map():
                self._sel.unregister(w.conn)
        w.conn.close()
        w.conn = None

    def _died(self, w: _Worker, pid: int, code: int) -> None:
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with status {code}"
        now = time.monotonic()
        if w.ready_at is None:  # it never served: a failed start
            w.start_failures += 1
            status, message = w.error or (500, f"worker {how} before it was ready")
            if w.start_failures >= START_ATTEMPTS:
                err = HubMirrorError(message)
                err.status = status
                self._failure = err
                log.error("worker %d failed to start %d times in a row; stopping", w.number, w.start_failures)
                return
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (w.start_failures - 1))
            log.warning("worker %d (pid %d) failed to start: %s; trying again in %.1f s",
                        w.number, pid, message, delay)
        else:
            up = now - w.ready_at
            w.deaths = 1 if up >= STABLE_AFTER else w.deaths + 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (w.deaths - 1))
            log.warning("worker %d (pid %d) %s after serving for %.0f s; starting another in %.1f s",
                        w.number, pid, how, up, delay)
        w.restart_at = now + delay

    def _stop_all(self) -> None:
        """SIGTERM to every worker, then wait for them; SIGKILL after STOP_GRACE, or on another
        signal a second or more after the first (`timeout`, for one, signals the process and then
        its group: a duplicate, not an impatient user)."""
        for w in self.workers:
            w.restart_at = None
            if w.pid:
                w.stopping = True
                _kill(w.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        killed = False
        while any(w.pid for w in self.workers):
            if not killed and (time.monotonic() >= deadline or self._hurried()):
                log.warning("killing the workers that have not stopped")
                for w in self.workers:
                    if w.pid:
                        _kill(w.pid, signal.SIGKILL)
                killed = True
            for key, _ in self._sel.select(0.5):
                if key.fd == self._wake_r:
                    self._drain_wakeup()
                else:
                    self._read(key.data)
            self._reap()

    def _hurried(self) -> bool:
        return len(self._signals) > 1 and self._signals[-1][1] - self._signals[0][1] >= 1.0

    # -- a worker -----------------------------------------------------------------------------

    def _become_worker(self, w: _Worker, conn: socket.socket) -> None:  # pragma: no cover
        """The child side of the fork: leave the supervisor's handlers and descriptors behind,
        run the target, and never return into the supervisor's code."""
        code = 1
        ready = False
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # until the event loop handles it
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self._sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            for other in self.workers:
                if other.conn is not None:
                    other.conn.close()
                if other is not w:
                    for s in self.sockets[other.number - 1]:
                        s.close()

            async def on_startup(_app: Any) -> None:
                nonlocal ready
                import asyncio

                from aiohttp import web

                loop = asyncio.get_running_loop()
                stopping = False

                def stop() -> None:
                    nonlocal stopping
                    if not stopping:  # once: a second signal must not cut the graceful shutdown short
                        stopping = True
                        raise web.GracefulExit()

                def supervisor_gone() -> None:
                    loop.remove_reader(conn.fileno())
                    log.warning("worker %d: the supervisor is gone; stopping", w.number)
                    stop()

                loop.add_signal_handler(signal.SIGTERM, stop)
                loop.add_reader(conn.fileno(), supervisor_gone)
                conn.sendall(_READY)
                ready = True

            self.target(self.sockets[w.number - 1], on_startup)
            code = 0
        except HubMirrorError as e:
            if ready:
                log.error("worker %d: %s", w.number, e.message)
            else:
                _send_failure(conn, e.status, e.message)
        except Exception as e:  # noqa: BLE001 - reported to the supervisor, with a traceback once
            message = f"{e.__class__.__name__}: {e}"
            if ready or w.start_failures == 0:
                log.error("worker %d: %s\n%s", w.number, message, traceback.format_exc().rstrip())
            if not ready:
                _send_failure(conn, 500, message)
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _send_failure(conn: socket.socket, status: int, message: str) -> None:  # pragma: no cover
    try:
        conn.sendall(_FAILED + json.dumps([status, message]).encode())
    except OSError:
        pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def supervise(host: str, port: int, count: int, target: Target, on_ready: Callable[[], None] | None = None) -> None:
    """Bind host:port, run `count` workers on it until SIGTERM/SIGINT; `on_ready` is called once,
    when every worker has started."""
    Supervisor(listen(host, port, count), target, on_ready).run()
