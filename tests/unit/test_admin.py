"""The admin channel without a run: run names (what `dmnflow swap NAME` finds is one run, so a
live run's name is never reused), and the server and client over a real socket, with a stand-in
for the supervisor: every request is answered, malformed ones refused, none stops the run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

import dmnflow
from dmnflow import ControlError, LaunchError
from dmnflow.runtime import protocol
from dmnflow.runtime.admin import RunInfo, ask, claim_run_name, run_status, send_command
from dmnflow.runtime.admin.server import AdminServer
from dmnflow.runtime.observer import Observer
from dmnflow.runtime.processes import RUN_DIR_PREFIX

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_dirs() -> Iterator[list[str]]:
    """Run directories made by the test (a live supervisor: this process), removed after it."""
    made: list[str] = []
    yield made
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def _run_dir(made: list[str], name: str | None = None) -> str:
    path = tempfile.mkdtemp(prefix=RUN_DIR_PREFIX)
    made.append(path)
    Path(path, "supervisor.pid").write_text(str(os.getpid()))
    Path(path, "plan.json").write_text(json.dumps({"graph": "g"}))
    if name is not None:
        Path(path, "name").write_text(name)
    return path


def test_a_free_name_is_taken_as_asked(run_dirs):
    mine = _run_dir(run_dirs)
    assert claim_run_name(mine, "doc-free-name", exact=True) == "doc-free-name"
    assert Path(mine, "name").read_text() == "doc-free-name"


def test_a_name_asked_for_that_a_live_run_has_is_refused(run_dirs):
    _run_dir(run_dirs, "doc-live")
    mine = _run_dir(run_dirs)
    with pytest.raises(LaunchError, match=rf"a run named 'doc-live' is running \(pid {os.getpid()}\).*--name"):
        claim_run_name(mine, "doc-live", exact=True)


def test_a_default_name_that_is_taken_gets_the_first_free_suffix(run_dirs, caplog):
    _run_dir(run_dirs, "doc-graph")
    _run_dir(run_dirs, "doc-graph-2")
    mine = _run_dir(run_dirs)
    assert claim_run_name(mine, "doc-graph", exact=False) == "doc-graph-3"
    assert Path(mine, "name").read_text() == "doc-graph-3"
    assert "this one is named 'doc-graph-3'" in caplog.text


def test_the_name_of_a_dead_run_is_free_again(run_dirs):
    dead = _run_dir(run_dirs, "doc-dead")
    Path(dead, "supervisor.pid").write_text("999999999")  # no such process
    assert claim_run_name(_run_dir(run_dirs), "doc-dead", exact=True) == "doc-dead"


# ---------------------------------------------------------------- the server and the client


class _Run:
    """The supervisor as the admin server sees it: states it reports, messages it was told."""

    name = "quick"

    def __init__(self, states: dict[str, str]) -> None:
        self.states = states
        self.told: list[tuple[Any, ...]] = []

    def state_of(self, instance: str) -> str:
        return self.states[instance]

    def tell_node(self, instance: str, *msg: Any) -> None:
        self.told.append((instance, *msg))

    def request_stop(self) -> None:
        self.told.append(("<run>", "stop"))


class _Channel:
    """An ``AdminServer`` on a socket in a fresh directory, and a DEALER to it."""

    def __init__(self, server: AdminServer) -> None:
        self.dir = tempfile.mkdtemp(prefix="dmnflow-admin-test-")  # short: ipc paths are bounded
        self.ctx = zmq.Context()
        self.server = server
        server.open(self.ctx, self.dir)
        self.client = self.ctx.socket(zmq.DEALER)
        self.client.setsockopt(zmq.LINGER, 0)
        self.client.connect(f"ipc://{self.dir}/{protocol.ADMIN_SOCKET}")

    def send(self, *frames: bytes) -> protocol.Answer | None:
        """Send ``frames``, let the server serve them; its answer, or None when it gave none."""
        self.client.send_multipart(list(frames))
        assert self.server.socket is not None and self.server.socket.poll(5000)
        self.server.serve()
        return self.receive(timeout_ms=300)

    def receive(self, timeout_ms: int = 5000) -> protocol.Answer | None:
        if not self.client.poll(timeout_ms):
            return None
        answer = protocol.decode_answer(self.client.recv())
        assert answer is not None
        return answer

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.ctx.term()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def plan(monkeypatch: pytest.MonkeyPatch) -> dmnflow.Plan:
    monkeypatch.chdir(ROOT)  # the graph's nodes import from the repository
    return dmnflow.compile_graph("graphs/quickstart.yaml")


@pytest.fixture
def channel(plan: dmnflow.Plan) -> Iterator[_Channel]:
    run = _Run({n.name: "running" for n in plan.nodes})
    made = _Channel(AdminServer(plan, Observer(plan), run, command_timeout_s=0.2))
    yield made
    made.close()


def test_status_names_the_run_and_the_state_of_every_instance(channel):
    channel.server.run.states["sink"] = "restarting"
    answer = channel.send(protocol.encode(protocol.STATUS))
    assert answer is not None and answer.ok
    assert answer.message == {"graph": "quickstart", "name": "quick", "pid": os.getpid(), "phase": "running",
                              "phase_detail": "",
                              "nodes": {"counter": "running", "scale": "running", "sink": "restarting"}}


@pytest.mark.parametrize("body", [
    b"\xc1 not msgpack",
    msgpack.packb({"status": 1}),  # not a list
    msgpack.packb([]),  # no verb
    msgpack.packb(["reboot"]),  # no such verb
    msgpack.packb([7, "x"]),  # a verb that is not text
    msgpack.packb(["status", "extra"]),  # the wrong arity
    msgpack.packb(["command", "scale", "swap"]),  # too few arguments
    msgpack.packb(["command", "scale", "swap", ["not", "a", "map"]]),  # the wrong type
    msgpack.packb(["snapshot", {1: "int keys"}]),  # a map whose keys are not text
    msgpack.packb(["tap", None]),
], ids=["garbage", "map", "empty", "unknown", "int-verb", "arity", "short", "type", "keys", "tap-none"])
def test_a_malformed_request_is_refused_with_an_answer_and_counted(channel, body):
    answer = channel.send(body)
    assert answer is not None and not answer.ok and "not a request dmnflow knows" in answer.message
    assert channel.server.junk == 1 and channel.server.run.told == []
    assert channel.send(protocol.encode(protocol.STATUS)).ok  # and the server still serves


def test_a_request_in_several_frames_is_junk_with_no_answer(channel):
    assert channel.send(protocol.encode(protocol.STATUS), b"more") is None
    assert channel.server.junk == 1
    assert channel.send(protocol.encode(protocol.STATUS)).ok


def test_a_command_goes_to_every_instance_and_is_answered_once_all_have(channel):
    assert channel.send(protocol.encode(protocol.COMMAND, "scale", "swap", {"path": "m.pt"})) is None  # pending
    [(target, verb, node, name, args, token)] = channel.server.run.told
    assert (target, verb, node, name, args) == ("scale", protocol.COMMAND, "scale", "swap", {"path": "m.pt"})
    channel.server.on_reply(token + 1, "scale", True, "someone else's")  # not this request: ignored
    channel.server.on_reply(token, "scale", True, {"loaded": "m.pt"})
    answer = channel.receive()
    assert answer == protocol.Answer(True, None, {"scale": [True, {"loaded": "m.pt"}]})
    assert channel.server.pending == {}


def test_a_command_for_no_node_or_a_node_not_running_is_refused(channel):
    answer = channel.send(protocol.encode(protocol.COMMAND, "nobody", "swap", {}))
    assert not answer.ok and "the run has no node 'nobody'; nodes: counter, scale, sink" in answer.message
    channel.server.run.states["scale"] = "restarting"
    answer = channel.send(protocol.encode(protocol.COMMAND, "scale", "swap", {}))
    assert not answer.ok and answer.message == "scale not running now (restarting)"
    assert channel.server.run.told == []


def test_stop_asks_the_run_to_drain_and_a_misspelt_node_gets_did_you_mean(channel):
    answer = channel.send(protocol.encode(protocol.STOP))
    assert answer is not None and answer.ok and answer.message == {"name": "quick", "pid": os.getpid()}
    assert channel.server.run.told == [("<run>", "stop")]
    answer = channel.send(protocol.encode(protocol.COMMAND, "scael", "swap", {}))
    assert answer.message == "the run has no node 'scael'; did you mean 'scale'? nodes: counter, scale, sink"


def test_a_node_that_never_answers_does_not_leave_the_client_waiting(channel):
    assert channel.send(protocol.encode(protocol.COMMAND, "scale", "swap", {})) is None
    channel.server.expire(float("inf"))
    answer = channel.receive()
    assert not answer.ok and answer.message == "no answer from scale in 0.2s" and answer.nodes == {}
    assert channel.server.pending == {}


class _Failing(Observer):
    def admin(self, verb: str, args: dict[str, Any], now: float) -> tuple[bool, Any]:
        if args.get("history"):
            raise RuntimeError("broken")
        return True, {"what": object()}  # msgpack cannot carry it


def test_an_observer_that_fails_or_answers_what_cannot_be_sent_is_still_answered(plan):
    channel = _Channel(AdminServer(plan, _Failing(plan), _Run({})))
    try:
        answer = channel.send(protocol.encode(protocol.SNAPSHOT, {"history": True}))
        assert not answer.ok and answer.message == "the run could not answer (RuntimeError: broken)"
        answer = channel.send(protocol.encode(protocol.SNAPSHOT, {}))
        assert not answer.ok and "could not encode its answer" in answer.message
    finally:
        channel.close()


def test_a_snapshot_before_the_first_report_says_the_run_is_starting(channel):
    answer = channel.send(protocol.encode(protocol.SNAPSHOT, {"history": False}))
    assert not answer.ok and "still starting" in answer.message


@contextlib.contextmanager
def _fake_run(reply: bytes | None) -> Iterator[tuple[RunInfo, list[list[Any] | None]]]:
    """A ROUTER where a run's admin socket would be, answering ``reply`` to one request."""
    folder = tempfile.mkdtemp(prefix="dmnflow-admin-test-")
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"ipc://{folder}/{protocol.ADMIN_SOCKET}")
    seen: list[list[Any] | None] = []

    def serve() -> None:
        if router.poll(5000):
            frames = router.recv_multipart()
            seen.append(protocol.decode(frames[1], protocol.ADMIN))
            if reply is not None:
                router.send_multipart([frames[0], reply])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield RunInfo("fake", os.getpid(), "g", folder), seen
    finally:
        thread.join(10)
        router.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("reply", [b"\xc1", msgpack.packb([True, None]), msgpack.packb([1, None, {}]),
                                   msgpack.packb([True, None, {"a": "not [ok, result]"}])],
                         ids=["garbage", "two", "int-ok", "per-node"])
def test_an_answer_that_is_not_one_is_a_clear_control_error(reply):
    wrong = "run 'fake' .* answered 'status' with something that is not an answer"
    with _fake_run(reply) as (run, _), pytest.raises(ControlError, match=wrong):
        run_status(run, timeout_s=5)


def test_the_client_sends_the_protocols_requests_and_reads_its_answers():
    answer = protocol.Answer(False, "refused", {"scale": [False, "no such model"]})
    with _fake_run(protocol.encode_answer(answer)) as (run, seen):
        assert send_command(run, "scale", "swap", {"path": "m.pt"}, timeout_s=5) == answer
    assert seen == [["command", "scale", "swap", {"path": "m.pt"}]]


def test_a_run_that_does_not_answer_is_a_control_error():
    with _fake_run(None) as (run, _), pytest.raises(ControlError, match="did not answer within 0s; it may have ended"):
        ask(run, protocol.STATUS, timeout_s=0.2)
