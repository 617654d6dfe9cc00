"""The edge's invocations, many over one InvokeStream to the controller.

A unary gRPC call costs the edge and the controller each a call set-up, and more wake-ups,
than a message on a stream that is already open (measured here: 0.37-0.5 ms against 0.2 ms
a round trip, and a third more calls per second). Calls that queue up while a message is
being written go in the next message together, and the controller sends results back the
same way. The stream opens on first use and again after it breaks; calls under way when it
breaks fail as UNAVAILABLE, as a unary call to a controller going away would.
"""
from __future__ import annotations

import asyncio
import itertools

import grpc

from proto import squall_pb2 as pb
from proto import squall_pb2_grpc as pb_grpc

_CODES = {status.value[0]: status for status in grpc.StatusCode}


class CallFailed(Exception):
    """The controller's answer to one call: a gRPC status other than OK."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvokeStream:
    def __init__(self, stub: pb_grpc.SquallStub):
        self._stub = stub
        self._call = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._writing = asyncio.Lock()   # a stream takes one write at a time
        self._queued: list[pb.InvokeCall] = []   # calls waiting for the next write
        self._readers: set[asyncio.Task] = set()

    async def invoke(self, request: pb.InvokeRequest, authorization: str | None, timeout_s: float) -> pb.InvokeReply:
        call_id = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._pending[call_id] = answer
        self._queued.append(pb.InvokeCall(id=call_id, authorization=authorization or "", request=request))
        try:
            try:
                await self._write_queued()
            except asyncio.CancelledError:   # its caller went away: if it was not sent, it never is
                self._queued = [c for c in self._queued if c.id != call_id]
                raise
            try:
                result = await asyncio.wait_for(answer, timeout_s)
            except asyncio.TimeoutError:
                raise CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer in time") from None
        finally:
            self._pending.pop(call_id, None)
        if result.code:
            raise CallFailed(_CODES.get(result.code, grpc.StatusCode.UNKNOWN), result.details)
        return result.reply

    async def _write_queued(self) -> None:
        async with self._writing:
            # Whoever gets to write takes every call queued meanwhile: under load, one message
            # (and one wake-up of each side) carries many. Empty: an earlier writer took this
            # call along.
            if not self._queued:
                return
            calls, self._queued = self._queued, []
            call = self._open()
            try:
                await call.write(pb.InvokeCalls(calls=calls))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                # Each caller, this one too, hears it from its answer (raised here as well, this
                # caller's answer would hold a failure nobody saw, which asyncio logs as an error).
                self._broken(call, str(exc))

    def _open(self):
        if self._call is None:
            self._call = self._stub.InvokeStream()
            reader = asyncio.create_task(self._read(self._call))
            self._readers.add(reader)
            reader.add_done_callback(self._readers.discard)
        return self._call

    async def _read(self, call) -> None:
        try:
            async for results in call:
                for result in results.results:
                    answer = self._pending.get(result.id)
                    if answer is not None and not answer.done():
                        answer.set_result(result)
        except grpc.aio.AioRpcError:
            pass
        finally:
            self._broken(call)

    def _broken(self, call, why: str = "the controller's stream ended") -> None:
        """The stream ended: the next call opens another; the calls it carried fail (those
        still queued go on the next one). (If it had ended already, they failed then.)"""
        if self._call is not call:
            return
        self._call = None
        call.cancel()
        unsent = {c.id for c in self._queued}
        for call_id, answer in self._pending.items():
            if call_id not in unsent and not answer.done():
                answer.set_exception(CallFailed(grpc.StatusCode.UNAVAILABLE, why))

    async def close(self) -> None:
        self._queued.clear()   # nothing more is sent: every call under way fails
        if self._call is not None:
            self._broken(self._call)
        for reader in list(self._readers):
            reader.cancel()
