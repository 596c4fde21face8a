"""The two services a run starts for itself, started while the driver imports the flow.

Without a Prefect server (``PREFECT_API_URL``) and without a Ray address, a dubline command starts
Prefect's temporary API server (a subprocess: ~6 s of CPU to import the server and migrate its
database) and a private local Ray (``cluster.connect``: GCS and raylet processes, ~4 s). The flow
would start them one after the other, after the driver's own imports. ``start_early`` starts
Prefect's server in a background thread at the command's start, and ``EarlyServices.wait``
starts Ray while that server's process boots on another core; ``stop`` ends both at once at exit.

Ray is started from the main thread: Ray's processes die with the thread that started them
(``PR_SET_PDEATHSIG``). It is started after Prefect's server process, which therefore never sees
the private cluster's token in its environment (``cluster.connect``).

Nothing here changes what runs: Prefect's own ``SubprocessASGIServer`` is the server the flow's
client finds (it is a per-process singleton), and the flow's ``cluster.connect`` finds Ray
already initialised.
"""

from __future__ import annotations

import atexit
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
            self._thread = threading.Thread(target=self._start_server, name="start-prefect-server", daemon=True)
            self._thread.start()

    def _start_server(self) -> None:
        try:
            self._server.start()
        except BaseException as exc:  # raised in the main thread by ``wait``
            self._error = exc

    def wait(self) -> None:
        """Start the private Ray (once Prefect's server process exists) and wait until Prefect's
        server answers. Raises what either start raised; from then on, what started here is
        stopped at exit by ``stop``."""
        try:
            if self._private_ray:
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
        """Stop what started here: Prefect's server and Ray at the same time (each would otherwise
        stop in its own exit handler, one after the other)."""
        stopping = None
        if self._server is not None:
            stopping = threading.Thread(target=self._server.stop, name="stop-prefect-server")
            stopping.start()
        if self._ray_started:
            from dubline.cluster.connect import disconnect

            disconnect()
        if stopping is not None:
            stopping.join()
        self._server, self._ray_started = None, False


def start_early(executor: str, ray_address: str | None) -> EarlyServices:
    """Start, in the background, what this command's flow will need and nobody else provides:
    Prefect's temporary server when no ``PREFECT_API_URL`` is set, and the private local Ray when
    ``executor`` is "ray" and no ``ray_address`` (nor ``$RAY_ADDRESS``) is given. Call after
    ``console.prepare_env`` (both read the environment it sets), and ``EarlyServices.wait`` before
    the flow runs (it starts Ray)."""
    from prefect.settings import PREFECT_API_URL

    private_ray = executor == "ray" and not (ray_address or os.environ.get("RAY_ADDRESS"))
    return EarlyServices(prefect_server=not PREFECT_API_URL.value(), private_ray=private_ray)
