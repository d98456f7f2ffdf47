"""The study on ZeroMQ, in the seed's port layout, for clients outside dmnflow.

With ``publish: seed`` (or ``--publish``) the engine binds PUB sockets on loopback:
the coordinator's (5559) sends ``optimization_trial.<number>`` when a trial is handed out
(its values and the settings that make its graph), each worker slot's (5560-5562: the
trials running at once) ``optimization_progress.<number>`` with its intermediate values,
and the aggregator's (5563) ``optimization_result.<number>`` when it ends (state, values,
figures, reason). Each message is two frames: the topic, then a JSON object. A raw pyzmq
SUB reads them::

    sub = zmq.Context().socket(zmq.SUB)
    sub.connect("tcp://127.0.0.1:5563"); sub.subscribe(b"optimization_result.")
    topic, body = sub.recv_multipart(); result = json.loads(body)

PUB drops what no subscriber is connected for; the journal is the record, this is a view.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import zmq

from .schema import PublishSpec
from .study import TrialEvent, TuneError

__all__ = ["Feed"]


class Feed:
    """PUB sockets of the seed's layout, fed by an engine's trial events."""

    def __init__(self, spec: PublishSpec, study: str) -> None:
        self.study = study
        self.ctx = zmq.Context()
        self.sockets: list[zmq.Socket[Any]] = []
        try:
            self.coordinator = self._bind(spec.host, spec.coordinator)
            self.workers = [self._bind(spec.host, port) for port in spec.workers]
            self.aggregator = self._bind(spec.host, spec.aggregator)
        except zmq.ZMQError as exc:
            self.close()
            raise TuneError(f"cannot publish the study: {exc} (is another study or graph on the seed's ports "
                            "5559-5563?)") from None

    def _bind(self, host: str, port: int) -> zmq.Socket[Any]:
        sock = self.ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        self.sockets.append(sock)
        address = f"[{host}]" if ":" in host else host
        sock.bind(f"tcp://{address}:{port}")
        return sock

    def __call__(self, event: TrialEvent) -> None:
        body: dict[str, Any] = {"study": self.study, "trial": event.number}
        if event.kind == "started":
            sock, topic = self.coordinator, "optimization_trial"
            body.update(params=event.params, slot=event.slot)
        elif event.kind == "progress":
            sock, topic = self.workers[event.slot % len(self.workers)], "optimization_progress"
            body.update(step=event.step, value=event.value, slot=event.slot)
        elif event.kind == "running":  # how far the trial's graph is: fraction, eta_s, done/total unit
            sock, topic = self.workers[event.slot % len(self.workers)], "optimization_progress"
            body.update(event.figures, slot=event.slot)
        else:
            sock, topic = self.aggregator, "optimization_result"
            body.update(state=event.state, values=event.values, reason=event.reason, params=event.params,
                        figures=event.figures)
        data = json.dumps(_clean(body), default=str)
        with contextlib.suppress(zmq.Again):  # a subscriber that does not read loses messages, as on any PUB
            sock.send_multipart([f"{topic}.{event.number}".encode(), data.encode()], zmq.NOBLOCK)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.ctx.term()


def _clean(value: Any) -> Any:
    """Strict JSON: NaN and infinities become null, at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
