"""The two services a run starts for itself, started while the driver imports the flow.

Without a Prefect server (``PREFECT_API_URL``) and without a Ray address, a dubline command starts
Prefect's temporary API server (a subprocess: ~6 s of CPU to import the server and migrate its
database) and a private local Ray (``cluster.connect``: GCS and raylet processes, ~4 s). The flow
would start them one after the other, after the driver's own imports. ``start_early`` starts
Prefect's server in a background thread at the command's start, and ``EarlyServices.wait``
starts Ray while that server's process boots on another core; ``stop`` ends both together at exit.

Ray is started from the main thread: Ray's processes die with the thread that started them
(``PR_SET_PDEATHSIG``). It is started after Prefect's server process, which therefore does not
have the private cluster's token in its environment (``cluster.connect``). One exception: when
the port Prefect picked is taken by someone else before its server binds it, Prefect starts the
server again on another port, and that second process inherits the token. It is a process of the
same user (who alone can read its environment) and ends with the command.

Nothing here changes what runs: Prefect's own ``SubprocessASGIServer`` is the server the flow's
client finds (it is a per-process singleton), and the flow's ``cluster.connect`` finds Ray
already initialised.
"""

from __future__ import annotations

import atexit
import contextvars
import os
import threading
import time
from typing import Any


class EarlyServices:
    """Prefect's temporary server starting in the background, and the private Ray to start (see
    the module docstring)."""

    def __init__(self, prefect_server: bool, private_ray: bool):
        self._server: Any = None  # prefect.server.api.server.SubprocessASGIServer
        self._private_ray, self._ray_started = private_ray, False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if prefect_server:
            from prefect.server.api.server import SubprocessASGIServer

            self._server = SubprocessASGIServer()
            context = contextvars.copy_context()  # the caller's Prefect settings, e.g. temporary_settings
            self._thread = threading.Thread(target=context.run, args=(self._start_server,), name="start-prefect-server",
                                            daemon=True)
            self._thread.start()

    def _start_server(self) -> None:
        try:
            self._server.start()
        except BaseException as exc:  # raised in the main thread by ``wait``
            self._error = exc

    def wait(self, start_ray: bool = True) -> None:
        """Start the private Ray (once Prefect's server process exists; not when ``start_ray`` is
        False: the command is failing) and wait until Prefect's server answers. Raises what either
        start raised; from then on, what started here is stopped at exit by ``stop``."""
        try:
            if self._private_ray and start_ray:
                import ray

                from dubline.cluster.connect import connect

                while self._thread is not None and self._thread.is_alive() and self._server.server_process is None:
                    time.sleep(0.02)
                if not ray.is_initialized():  # e.g. the second flow of one command (``dubline demo``)
                    connect()
                    self._ray_started = True
            if self._thread is not None:
                self._thread.join()
            if self._error is not None:
                raise self._error
        finally:
            # Registered after Prefect's and Ray's own exit handlers, so it runs before them (last
            # in, first out) and they find nothing left to stop.
            atexit.register(self.stop)

    def stop(self) -> None:
        """Stop what started here: Prefect's server is told to stop first, so that it shuts down
        while Ray does (each would otherwise stop in its own exit handler, one after the other).
        No thread: none may start during the interpreter's exit (Python 3.12)."""
        server, ray_started = self._server, self._ray_started
        self._server, self._ray_started = None, False
        process = server.server_process if server is not None else None
        if process is not None and process.poll() is None:
            process.terminate()
        try:
            if ray_started:
                from dubline.cluster.connect import disconnect

                disconnect()
        finally:
            if server is not None:
                server.stop()  # waits for the process (kills it after 5 s)


def start_early(executor: str, ray_address: str | None) -> EarlyServices:
    """Start, in the background, what this command's flow will need and nobody else provides:
    Prefect's temporary server when no ``PREFECT_API_URL`` is set and Prefect's settings allow one
    (``PREFECT_SERVER_EPHEMERAL_ENABLED``, on in its default profile), and the private local Ray when
    ``executor`` is "ray" and no ``ray_address`` (nor ``$RAY_ADDRESS``) is given. Call after
    ``console.prepare_env`` (both read the environment it sets), and ``EarlyServices.wait`` before
    the flow runs (it starts Ray)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    private_ray = executor == "ray" and not (ray_address or os.environ.get("RAY_ADDRESS"))
    prefect_server = not PREFECT_API_URL.value() and bool(PREFECT_SERVER_EPHEMERAL_ENABLED.value())
    return EarlyServices(prefect_server=prefect_server, private_ray=private_ray)
