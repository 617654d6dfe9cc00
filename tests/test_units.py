"""Unit tests of pure logic: no stack needed."""
from __future__ import annotations

import asyncio
import json

import pytest

from container_pool.container import PooledContainer, State, TRANSITIONS, InvalidTransition
from container_pool.pool import Outcome
from container_pool.proxy_client import ProxyReply
from controller import entities
from controller.auth import hash_key, make_subject, new_credentials, parse_basic
from invoker import records
from squall.config import LimitsConfig, SquallConfig
from squall.errors import BadRequest, Unauthenticated


def test_config_from_env_and_back():
    cfg = SquallConfig.from_env({"SQUALL_EDGE_PORT": "4000", "SQUALL_NATS_SERVERS": "nats://a:1, nats://b:2",
                                 "SQUALL_POOL_PAUSE_GRACE_S": "0.5"})
    assert cfg.edge.port == 4000
    assert cfg.nats.servers == ("nats://a:1", "nats://b:2")
    assert cfg.pool.pause_grace_s == 0.5
    assert SquallConfig.from_env(cfg.env()) == cfg


def test_config_rejects_bad_numbers():
    with pytest.raises(ValueError, match="SQUALL_EDGE_PORT"):
        SquallConfig.from_env({"SQUALL_EDGE_PORT": "many"})


def test_every_state_reaches_removed_and_nothing_leaves_it():
    assert TRANSITIONS[State.REMOVED] == frozenset()
    for state in State:
        if state not in (State.REMOVING, State.REMOVED):
            assert State.REMOVING in TRANSITIONS[state]


def test_transitions_are_enforced():
    c = PooledContainer(kind="python:3.11", memory_mb=256)
    for to in (State.INITIALIZING, State.BUSY, State.IDLE, State.PAUSED, State.BUSY, State.IDLE, State.REMOVING, State.REMOVED):
        c.move(to)
    with pytest.raises(InvalidTransition):
        c.move(State.BUSY)
    fresh = PooledContainer(kind="nodejs:18", memory_mb=256)
    with pytest.raises(InvalidTransition):
        fresh.move(State.BUSY)   # never run code that was not initialized


def test_names():
    assert entities.validate_name("hello") == "hello"
    assert entities.validate_name("pkg/hello", allow_package=True) == "pkg/hello"
    for bad in ("", "a/b/c", "bad$name", " lead", "x" * 257):
        with pytest.raises(BadRequest):
            entities.validate_name(bad, allow_package=True)


def test_build_action_defaults_limits_and_update():
    cfg = LimitsConfig()
    doc = entities.build_action("ns", "a", {"exec": {"kind": "nodejs:default", "code": "x"}}, None, cfg)
    assert doc["exec"]["kind"] == "nodejs:18" and doc["version"] == "0.0.1"
    assert doc["limits"] == {"timeout": 60000, "memory": 256, "logs": 10, "concurrency": 1}
    updated = entities.build_action("ns", "a", {"limits": {"memory": 512}}, doc, cfg)
    assert updated["version"] == "0.0.2" and updated["exec"] == doc["exec"] and updated["limits"]["memory"] == 512
    with pytest.raises(BadRequest, match="exceeds"):
        entities.build_action("ns", "a", {"exec": {"kind": "python:3", "code": "x"}, "limits": {"memory": 4096}}, None, cfg)
    with pytest.raises(BadRequest, match="exec undefined"):
        entities.build_action("ns", "a", {}, None, cfg)


def test_keys():
    uuid, key = new_credentials()
    subject = make_subject("guest", ("guest",), f"{uuid}:{key}")
    assert subject.key_hash == hash_key(subject.salt, key) and key not in subject.key_hash
    import base64
    assert parse_basic("Basic " + base64.b64encode(f"{uuid}:{key}".encode()).decode()) == (uuid, key)
    with pytest.raises(Unauthenticated):
        parse_basic("Bearer x")


def _outcome(status=200, body=b"{}", error=None, **kw):
    return Outcome(start="warm", error=error, run_reply=ProxyReply(status, body) if status else None, **kw)


@pytest.mark.parametrize("outcome,code,text", [
    (_outcome(body=b'{"a": 1}'), records.SUCCESS, None),
    (_outcome(body=b'{"error": "x"}'), records.APPLICATION_ERROR, "x"),
    (_outcome(status=502, body=b'{"error": "The action did not return a dictionary."}'), records.DEVELOPER_ERROR, "dictionary"),
    (_outcome(body=b"[1]"), records.DEVELOPER_ERROR, "valid JSON"),
    (_outcome(body=b"not json"), records.DEVELOPER_ERROR, "valid JSON"),
    (_outcome(status=0, error="timeout"), records.DEVELOPER_ERROR, "time limits of 1000 milliseconds"),
    (_outcome(status=0, error="oom"), records.DEVELOPER_ERROR, "memory"),
    (_outcome(status=0, error="crashed"), records.DEVELOPER_ERROR, "exited unexpectedly"),
    (_outcome(status=0, error="init_failed", init_reply=ProxyReply(502, b'{"error": "bad code"}')), records.DEVELOPER_ERROR, "bad code"),
    (_outcome(body=b'{"big": "' + b"x" * 2000 + b'"}'), records.DEVELOPER_ERROR, "exceeded the allowed length"),
])
def test_interpret(outcome, code, text):
    resp = records.interpret(outcome, timeout_ms=1000, max_result_bytes=1000)
    assert resp["statusCode"] == code and resp["success"] is (code == records.SUCCESS)
    if text:
        assert text in json.dumps(resp["result"])


def test_file_log_source_reads_podman_and_docker_formats(tmp_path):
    from container_pool.logs import FileLogSource
    k8s = tmp_path / "ctr.log"
    k8s.write_text("2026-11-24T19:49:35.820681773+00:00 stdout F hello world\n"
                   "2026-11-24T19:49:35.820681774+00:00 stderr P long \n")
    source = FileLogSource(str(k8s))
    assert [(l.time, l.stream, l.text) for l in source.read()] == [
        ("2026-11-24T19:49:35.820681773Z", "stdout", "hello world")]
    with k8s.open("a") as f:
        f.write("2026-11-24T19:49:35.820681775+00:00 stderr F line\n2026-11-24T19:49:35.8")   # a line in flight
    assert [(l.stream, l.text) for l in source.read()] == [("stderr", "long line")]
    with k8s.open("a") as f:
        f.write("2+00:00 stdout F done\n")
    assert [l.text for l in source.read()] == ["done"]
    source.close()

    docker_log = tmp_path / "json.log"
    docker_log.write_text('{"log":"hi\\n","stream":"stdout","time":"2026-11-24T19:49:35.1Z"}\n')
    assert [(l.time, l.stream, l.text) for l in FileLogSource(str(docker_log)).read()] == [
        ("2026-11-24T19:49:35.1Z", "stdout", "hi")]


def test_throttles_refuse_with_openwhisk_messages():
    from controller.throttles import Throttles
    from squall.config import LimitsConfig
    from squall.errors import TooManyRequests
    t = Throttles(LimitsConfig(namespace_overrides=("small=2/1/1",)))
    t.admit_invoke("small")
    t.started("small", "a1")
    with pytest.raises(TooManyRequests, match=r"concurrent requests in flight \(count: 2, allowed: 1\)"):
        t.admit_invoke("small")
    t.finished("a1")
    t.admit_invoke("small")
    with pytest.raises(TooManyRequests, match=r"in the last minute \(count: 3, allowed: 2\)"):
        t.admit_invoke("small")
    t.admit_fire("small")
    with pytest.raises(TooManyRequests):
        t.admit_fire("small")
    for _ in range(50):   # others keep the generous defaults
        t.admit_invoke("guest")


def test_cron_schedules_match_like_crontab():
    import datetime as dt
    from controller.alarms import Cron
    from squall.errors import BadRequest
    every_5 = Cron.parse("*/5 * * * *")
    assert every_5.matches(dt.datetime(2026, 1, 1, 10, 15)) and not every_5.matches(dt.datetime(2026, 1, 1, 10, 16))
    weekdays_9 = Cron.parse("0 9 * * 1-5")
    assert weekdays_9.matches(dt.datetime(2026, 11, 23, 9, 0))        # a Monday
    assert not weekdays_9.matches(dt.datetime(2026, 11, 22, 9, 0))    # a Sunday
    assert Cron.parse("30 2 1,15 6 0").matches(dt.datetime(2025, 6, 15, 2, 30))   # Sunday the 15th
    for bad in ("* * * *", "61 * * * *", "a * * * *", "*/0 * * * *"):
        with pytest.raises(BadRequest):
            Cron.parse(bad)


def test_balancer_walks_from_home_with_a_coprime_step_and_respects_health_and_capacity():
    from controller.balancer import Balancer, _step_sizes
    assert _step_sizes(6) == [1, 5] and _step_sizes(5) == [1, 2, 3, 4] and _step_sizes(1) == [1]
    b = Balancer(4)
    assert b.choose("ns", "a", 256) is None                     # nobody heard from yet
    for i in range(4):
        b.heartbeat(i, capacity_mb=512, used_mb=0, in_flight=0)
    home = b.home("ns", "a")
    assert b.choose("ns", "a", 256) == home
    b.placed("x1", home, 256)
    b.placed("x2", home, 256)                                   # home is full now
    overflow = b.choose("ns", "a", 256)
    assert overflow is not None and overflow != home
    b.completed("x1", home, 0)
    assert b.choose("ns", "a", 256) == home                     # room again at home
    for _ in range(3):
        b.completed(f"f{_}", home, 3)                           # whisk errors in a row: unhealthy
    assert b.status(home) == "unhealthy" and b.choose("ns", "a", 256) != home
    b.completed("ok", home, 0)
    assert b.status(home) == "healthy"
    # Every invoker full: still placed (it waits in that invoker's queue), never dropped.
    for i in range(4):
        b.placed(f"big{i}", i, 512)
    assert b.choose("ns", "a", 256) in range(4)


def test_readme_configuration_reference_is_the_generated_one():
    from squall.config import REPO_ROOT
    from squall.settings_doc import BEGIN, END, markdown
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == markdown(), "README's settings table is stale: run python -m squall.settings_doc"


class _FakeRecordStore:
    """A stand-in for squall.store.Store in this unit test only: records what the Recorder asks
    of Cassandra, answers after a short delay, and fails on demand."""

    def __init__(self):
        self.singles: list[str] = []
        self.batches: list[list[str]] = []
        self.fail = False

    async def put_activation(self, record, doc):
        import asyncio
        await asyncio.sleep(0.01)
        if self.fail:
            raise ConnectionError("down")
        self.singles.append(record["activationId"])

    async def put_activations(self, pairs):
        import asyncio
        await asyncio.sleep(0.01)
        if self.fail:
            raise ConnectionError("down")
        self.batches.append([r["activationId"] for r, _ in pairs])


def test_recorder_batches_what_queues_up_and_fails_every_record_of_a_failed_batch():
    import asyncio
    from invoker.recorder import Recorder

    def rec(i, size=100):
        return {"activationId": f"a{i}"}, "x" * size

    async def scenario():
        store = _FakeRecordStore()
        recorder = Recorder(store, writers=1, max_records=10, max_bytes=5000)
        # Alone: written at once, as a single record.
        await recorder.put(*rec(0))
        assert store.singles == ["a0"] and store.batches == []
        # 25 at once: they queue up, and go in batches of at most 10.
        await asyncio.gather(*(recorder.put(*rec(i)) for i in range(1, 26)))
        assert store.singles == ["a0"]
        assert [len(b) for b in store.batches] == [10, 10, 5]
        assert sorted(sum(store.batches, []) + store.singles) == sorted(f"a{i}" for i in range(26))
        # Too big for a batch: on its own, whatever is queued.
        await recorder.put(*rec(99, size=3000))
        assert store.singles[-1] == "a99"
        # A failed batch fails each of its records (their writers retry).
        store.fail = True
        results = await asyncio.gather(*(recorder.put(*rec(i)) for i in range(100, 105)), return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)
        await recorder.close()

    asyncio.run(scenario())


def test_recorder_lets_records_gather_for_its_linger_and_times_only_the_write():
    import asyncio
    from invoker.recorder import Recorder

    async def scenario():
        store, writes = _FakeRecordStore(), []
        recorder = Recorder(store, writers=2, max_records=64, max_bytes=5000, linger_s=0.05, observe=writes.append)

        async def put_later(i: int, delay: float) -> None:
            await asyncio.sleep(delay)
            await recorder.put({"activationId": f"a{i}"}, "x" * 100)
        # Arriving 10 ms apart, within one linger: one batch, not one write each.
        await asyncio.gather(*(put_later(i, i * 0.01) for i in range(4)))
        assert store.batches == [["a0", "a1", "a2", "a3"]] and store.singles == []
        assert len(writes) == 4 and all(seconds < 0.05 for seconds in writes)   # the write, not the wait
        await recorder.close()
        # A quarter of a batch gathered: written at once, however long the linger.
        store = _FakeRecordStore()
        recorder = Recorder(store, writers=1, max_records=8, max_bytes=5000, linger_s=30)
        await asyncio.wait_for(asyncio.gather(*(put_later(i, 0) for i in range(2))), 5)
        assert store.batches == [["a0", "a1"]]
        await recorder.close()

    asyncio.run(scenario())


def test_a_record_with_its_result_as_the_action_wrote_it_is_the_same_json():
    from squall.jsonbytes import as_sent
    body = b'{"items": [1, 2.5, {"a": "\\u00e9"}], "ok": true}'
    outcome = _outcome(body=body)
    resp = records.interpret(outcome, 1000, 1 << 20)
    raw = records.raw_result(outcome, resp)
    assert raw == body
    msg = records.pb.ActivationMessage(activation_id="a1", namespace="ns", name="act", user_namespace="ns")
    info = records.ActionInfo("ns", "act", "0.0.1", "python:3", {})
    record = records.record(msg, info, resp, outcome, 1, 2, raw)
    assert json.loads(records.encode(record, raw)) == json.loads(records.encode(record)) == record
    assert record["response"]["size"] == len(body)
    # The controller slices the result out where the invoker says it begins, or parses it out.
    from controller.waiters import Completed
    encoded = records.encode(record, raw)
    assert Completed(encoded, 0, records.result_at(encoded, raw)).result() == body
    assert json.loads(Completed(records.encode(record)).result()) == json.loads(body)
    assert Completed(records.encode(record)).status() == records.SUCCESS
    # Not passed on as written: an application error (rebuilt), UTF-16, a byte order mark.
    assert records.raw_result(_outcome(body=b'{"error": "no"}'), records.interpret(_outcome(body=b'{"error": "no"}'), 1000, 1 << 20)) is None
    assert not as_sent('{"a": 1}'.encode("utf-16")) and not as_sent('{"a": 1}'.encode("utf-8-sig"))
    assert as_sent(b' \n{"a": 1}')


def test_the_action_cache_reads_each_revision_once_and_keeps_the_most_recently_used_within_its_budget():
    """With a stand-in for the store (this unit test only) that counts its reads."""
    import asyncio
    from invoker.actions import ActionCache

    class Docs:
        def __init__(self):
            self.docs = {name: {"version": "0.0.1", "updated": 1, "exec": {"kind": "python:3", "code": "x" * 1000}}
                         for name in "abc"}
            self.reads: list[str] = []

        async def get_entity(self, namespace, collection, name):
            self.reads.append(name)
            return self.docs.get(name)

    async def scenario():
        store = Docs()
        cache = ActionCache(store, budget_bytes=5000)   # room for two of these actions (~2 KB each)
        a = await cache.get("ns", "a", "0.0.1@1")
        assert json.loads(a.init_body)["value"]["code"] == "x" * 1000
        assert await cache.get("ns", "a", "0.0.1@1") is a and store.reads == ["a"]   # once per revision
        store.docs["a"] = {**store.docs["a"], "version": "0.0.2", "updated": 2}
        assert (await cache.get("ns", "a", "0.0.2@2")).revision == "0.0.2@2" and store.reads == ["a", "a"]
        await cache.get("ns", "b", "0.0.1@1")
        await cache.get("ns", "a", "0.0.2@2")          # a is now the most recently used
        await cache.get("ns", "c", "0.0.1@1")          # over budget: b, the least recently used, goes
        assert len(cache) == 2
        store.reads.clear()
        await cache.get("ns", "a", "0.0.2@2")
        await cache.get("ns", "b", "0.0.1@1")
        assert store.reads == ["b"]
        assert await cache.get("ns", "missing", "0.0.1@1") is None
    asyncio.run(scenario())


class _StandInStreamCall:
    """Stand-in for a grpc.aio stream-stream call, for the unit test below only: records what is
    written (each write waits for `released`), and yields the results the test feeds it."""

    def __init__(self, broken: bool = False):
        self.written: list[list[int]] = []
        self.released = asyncio.Event()
        self._results: asyncio.Queue = asyncio.Queue()
        self._broken = broken   # as a call to a controller that is gone: every write fails

    async def write(self, message) -> None:
        if self._broken:
            raise asyncio.InvalidStateError("the call has ended")
        self.written.append([c.id for c in message.calls])
        await self.released.wait()

    def answer(self, *ids: int) -> None:
        from proto import squall_pb2 as pb
        self._results.put_nowait(pb.InvokeResults(results=[
            pb.InvokeResult(id=i, reply=pb.InvokeReply(activation_id=f"a{i}")) for i in ids]))

    def end(self) -> None:
        self._results.put_nowait(None)

    def cancel(self) -> None:
        self.end()

    def __aiter__(self):
        return self

    async def __anext__(self):
        result = await self._results.get()
        if result is None:
            raise StopAsyncIteration
        return result


def test_the_edge_stream_sends_calls_that_queue_up_together_and_resends_unsent_ones_after_a_break():
    import grpc
    from edge.stream import CallFailed, InvokeStream
    from proto import squall_pb2 as pb

    class Stub:
        def __init__(self):
            self.streams: list[_StandInStreamCall] = []

        def InvokeStream(self):
            self.streams.append(_StandInStreamCall())
            return self.streams[-1]

    async def until(condition) -> None:
        while not condition():
            await asyncio.sleep(0)

    async def scenario():
        stub = Stub()
        stream = InvokeStream(stub)
        invoke = lambda: asyncio.create_task(stream.invoke(pb.InvokeRequest(name="x"), None, 5))
        # The first call is written alone; the four that come while it is written go in one message.
        tasks = [invoke() for _ in range(5)]
        await until(lambda: stub.streams and stub.streams[0].written)
        first = stub.streams[0]
        first.released.set()
        await until(lambda: len(first.written) == 2)
        assert first.written == [[1], [2, 3, 4, 5]]
        first.answer(1, 2, 3, 4, 5)
        assert [r.activation_id for r in await asyncio.gather(*tasks)] == ["a1", "a2", "a3", "a4", "a5"]
        # The stream breaks while call 6 is being written and call 7 waits: 6 fails as UNAVAILABLE,
        # 7 goes on a new stream.
        first.released.clear()
        six = invoke()
        await until(lambda: len(first.written) == 3)
        seven = invoke()
        await asyncio.sleep(0)
        first.end()
        first.released.set()
        with pytest.raises(CallFailed) as failed:
            await six
        assert failed.value.code is grpc.StatusCode.UNAVAILABLE
        await until(lambda: len(stub.streams) == 2 and stub.streams[1].written)
        second = stub.streams[1]
        assert second.written == [[7]]
        second.released.set()
        second.answer(7)
        assert (await seven).activation_id == "a7"
        await stream.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_call_the_edge_stream_cannot_write_fails_once_and_leaves_no_unseen_failure():
    """The controller is gone: the write fails, the caller gets UNAVAILABLE, and no future is left
    holding the same failure unseen (asyncio logged each as "Future exception was never retrieved",
    an error line per refused call, while a controller restarted)."""
    import gc
    import grpc
    from edge.stream import CallFailed, InvokeStream
    from proto import squall_pb2 as pb

    class Stub:
        def InvokeStream(self):
            return _StandInStreamCall(broken=True)

    async def scenario() -> list:
        reported: list = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context["message"]))
        stream = InvokeStream(Stub())
        for _ in range(3):
            try:
                await stream.invoke(pb.InvokeRequest(name="x"), None, 5)
            except CallFailed as exc:
                assert exc.code is grpc.StatusCode.UNAVAILABLE
            else:
                raise AssertionError("a write to a broken stream succeeded")
        await stream.close()
        gc.collect()
        await asyncio.sleep(0)
        return reported

    assert asyncio.run(scenario()) == []


def test_up_restarts_a_running_stack_only_for_a_shape_it_is_not_in(tmp_path, monkeypatch):
    """`make test` after `make up`: more invokers or edge workers than run restart Squall's own
    processes; other network namespaces restart everything; the same or a smaller shape nothing.
    (Pid files of this very process stand for running components; stopping is recorded, not done.)"""
    from squall import stack
    layout = stack.Layout(tmp_path)
    layout.run.mkdir(parents=True)
    for name in ("podman", "nats", "cassandra", "controller", "invoker0", "edge"):
        layout.pid_file(name).write_text(str(__import__("os").getpid()))
    (tmp_path / "secrets.json").write_text(json.dumps({"guest_auth": "a:b", "nats_user": "u", "nats_password": "p"}))
    stopped: list[str] = []
    monkeypatch.setattr(stack, "stop", lambda layout, name, timeout=0: stopped.append(name))
    monkeypatch.setattr(stack, "down", lambda: stopped.append("everything"))
    monkeypatch.delenv("SQUALL_INVOKER_NETNS_SUBNET", raising=False)

    def reshape(env: dict[str, str]) -> SquallConfig:
        stopped.clear()
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return stack._reshape(SquallConfig.from_env({"SQUALL_PATHS_STATE_DIR": str(tmp_path), **env}), layout)

    assert reshape({}).controller.invokers == 1 and stopped == []
    cfg = reshape({"SQUALL_CONTROLLER_INVOKERS": "2", "SQUALL_EDGE_WORKERS": "2"})
    assert (cfg.controller.invokers, cfg.edge.workers, cfg.invoker.netns_subnet) == (2, 2, "")
    assert stopped == ["edge", "invoker0", "controller"]   # not podman, NATS or Cassandra
    cfg = reshape({"SQUALL_INVOKER_NETNS_SUBNET": "10.231.0.0/24"})
    assert cfg.invoker.netns_subnet == "10.231.0.0/24" and stopped == ["everything"]
