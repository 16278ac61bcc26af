"""Bad input on the data plane: every malformed, unsigned, misaddressed or replayed frame gets a clear
ERROR and the node keeps serving — each test ends with a real generation through the same servers.

The test plays stage 0 itself (it holds stage 0's operator key and listens where the last stage sends
its TOKENs), so it can hand the real stage 1 any frame it likes.
"""

from __future__ import annotations

import asyncio
import functools
import struct

import torch
from coincurve import PrivateKey

from node.dataplane import read_frame
from node.executor import StageExecutor, generate_local
from node.protocol import (
    LEN,
    ErrorCode,
    Frame,
    Kind,
    StageAssignment,
    address_of_key,
    encode_request,
    hidden_body,
    make_frame,
    open_body,
    parse_error,
    parse_frame,
    parse_token,
    sign_digest,
)
from node.shard import load_shard

PROMPT = list(range(5, 25))
RANGES = [(0, 4), (4, 8)]


@functools.cache
def reference(model, n):
    return generate_local([StageExecutor(load_shard(model, a, b)) for a, b in RANGES], PROMPT, n)


class Harness:
    """A real 2-stage pipeline plus a fake stage 0 (the test) talking to the real stage 1."""

    def __init__(self, p):
        self.p = p
        self.tokens: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self):
        await self.p.start()
        self.fake0 = await asyncio.start_server(self._fake_stage0, "127.0.0.1", 0)
        self.fake0_port = self.fake0.sockets[0].getsockname()[1]
        self.r, self.w = await asyncio.open_connection("127.0.0.1", self.p.servers[1].port)
        return self

    async def __aexit__(self, *exc):
        self.w.close()
        self.fake0.close()
        await self.p.stop()

    async def _fake_stage0(self, reader, writer):
        while (buf := await read_frame(reader, 2**20)) is not None:
            await self.tokens.put(parse_frame(buf))

    def request(self, max_new_tokens=4, **kw):
        req = self.p.request(len(PROMPT), max_new_tokens, **kw)
        stages = list(req.stages)
        stages[0] = StageAssignment(operator=stages[0].operator, host="127.0.0.1",
                                    port=self.fake0_port, start=0, end=4)
        return type(req).model_validate({**req.model_dump(), "stages": [s.model_dump() for s in stages]})

    def open_frame(self, req, signer=None, gateway=None, stage=1, chain_id=None) -> Frame:
        raw = encode_request(req)
        gsig = sign_digest(gateway or self.p.gateway, req.digest(raw))
        return make_frame(signer or self.p.keys[0], Kind.OPEN, chain_id or self.p.chain_id, req.rid,
                          0, req.epoch, stage, open_body(raw, gsig, PROMPT))

    def rows(self, req, dtype=torch.float32, width=None):
        """Stage 0's real output rows for the prompt (or zeros of another width)."""
        ex = StageExecutor(load_shard(self.p.model, 0, 4))
        out = ex.run(torch.tensor(PROMPT), logits="none").hidden
        if width is not None:
            out = torch.zeros(len(PROMPT), width)
        return out.to(dtype)

    def hidden_frame(self, req, rows, step=0, start=0, signer=None) -> Frame:
        return make_frame(signer or self.p.keys[0], Kind.HIDDEN, self.p.chain_id, req.rid, step,
                          req.epoch, 1, hidden_body(start, rows))

    async def send(self, data: bytes | Frame) -> None:
        self.w.write(data.to_bytes() if isinstance(data, Frame) else data)
        await self.w.drain()

    async def reply(self, reader=None) -> Frame:
        buf = await asyncio.wait_for(read_frame(reader or self.r, 2**20), 10)
        assert buf is not None, "the server hung up instead of answering"
        return parse_frame(buf)

    async def error(self, data, reader=None):
        await self.send(data)
        f = await self.reply(reader)
        assert f.kind == Kind.ERROR, f.kind
        assert f.signer() == self.p.servers[1].address  # errors are signed by the node too
        return parse_error(f.body)

    async def still_serves(self, tiny_llama) -> None:
        """A PING on the abused connection, then a whole generation through the real pipeline."""
        await self.send(make_frame(self.p.gateway, Kind.PING, self.p.chain_id, b"\x00" * 32))
        assert (await self.reply()).kind == Kind.PONG
        ref = reference(tiny_llama, 6)
        gen = await self.p.client().generate(self.p.request(len(PROMPT), 6), PROMPT, step_timeout_s=20)
        assert gen.tokens == ref.tokens


def run(in_process_pipeline, tiny_llama, body):
    async def main():
        async with Harness(in_process_pipeline(RANGES)) as h:
            await body(h)
            await h.still_serves(tiny_llama)

    asyncio.run(main())


def test_malformed_headers_get_bad_message_and_the_connection_stays_usable(in_process_pipeline, tiny_llama):
    async def body(h):
        good = make_frame(h.p.keys[0], Kind.PING, h.p.chain_id, b"\x00" * 32).to_bytes()[4:]
        bad_magic = b"XXXX" + good[4:]
        e = await h.error(LEN.pack(len(bad_magic)) + bad_magic)
        assert e.code == ErrorCode.BAD_MESSAGE and "magic" in e.message
        unknown_kind = good[:5] + bytes([99]) + good[6:]
        e = await h.error(LEN.pack(len(unknown_kind)) + unknown_kind)
        assert e.code == ErrorCode.BAD_MESSAGE and "unknown message kind 99" in e.message
        short = good[:40]
        e = await h.error(LEN.pack(len(short)) + short)
        assert e.code == ErrorCode.BAD_MESSAGE and "shorter than" in e.message
        lying = good + b"extra"
        e = await h.error(LEN.pack(len(lying)) + lying)
        assert e.code == ErrorCode.BAD_MESSAGE and "5" in e.message

    run(in_process_pipeline, tiny_llama, body)


def test_oversized_frame_is_refused_and_only_that_connection_is_closed(in_process_pipeline, tiny_llama):
    async def body(h):
        limit = h.p.servers[1].max_frame_bytes
        e = await h.error(LEN.pack(limit + 1))
        assert e.code == ErrorCode.TOO_LARGE and f"{limit + 1} bytes exceeds" in e.message
        assert await h.r.read() == b""  # this sender is cut off...
        h.r, h.w = await asyncio.open_connection("127.0.0.1", h.p.servers[1].port)  # ...others are not

    run(in_process_pipeline, tiny_llama, body)


def test_unsigned_or_wrongly_signed_opens_are_refused(in_process_pipeline, tiny_llama):
    async def body(h):
        req = h.request()
        f = h.open_frame(req)
        unsigned = Frame(f.kind, f.chain_id, f.request_id, f.step, f.epoch, f.stage, f.body)
        e = await h.error(unsigned)
        assert e.code == ErrorCode.BAD_SIGNATURE and "unsigned" in e.message
        stranger = PrivateKey(b"\x55" * 32)
        e = await h.error(h.open_frame(req, signer=stranger))
        assert e.code == ErrorCode.BAD_SIGNATURE
        assert address_of_key(stranger) in e.message and req.stages[0].operator in e.message
        e = await h.error(h.open_frame(req, gateway=stranger))
        assert e.code == ErrorCode.BAD_SIGNATURE and "not by its gateway" in e.message
        tampered = Frame(f.kind, f.chain_id, f.request_id, f.step, f.epoch, f.stage,
                         f.body[:-4] + struct.pack("<I", 7), f.signature)
        e = await h.error(tampered)
        assert e.code == ErrorCode.BAD_SIGNATURE
        e = await h.error(h.open_frame(req, chain_id=h.p.chain_id + 1))
        assert e.code == ErrorCode.BAD_SIGNATURE and "chain id" in e.message
        assert h.p.servers[1].sessions.sessions == {}

    run(in_process_pipeline, tiny_llama, body)


def test_open_naming_another_operator_for_this_stage_is_not_assigned(in_process_pipeline, tiny_llama):
    async def body(h):
        req = h.request()
        stages = [s.model_dump() for s in req.stages]
        stages[1]["operator"] = stages[0]["operator"]  # registered, but not this node
        other = type(req).model_validate({**req.model_dump(), "stages": stages})
        e = await h.error(h.open_frame(other))
        assert e.code == ErrorCode.NOT_ASSIGNED and h.p.servers[1].address in e.message
        unregistered = PrivateKey(b"\x66" * 32)
        stages[1]["operator"] = h.p.servers[1].address
        stages[0]["operator"] = address_of_key(unregistered)
        req2 = type(req).model_validate({**req.model_dump(), "stages": stages})
        e = await h.error(h.open_frame(req2, signer=unregistered))
        assert e.code == ErrorCode.BAD_SIGNATURE and "not an active registered operator" in e.message

    run(in_process_pipeline, tiny_llama, body)


def test_hidden_rows_for_an_unknown_session_are_refused(in_process_pipeline, tiny_llama):
    async def body(h):
        req = h.request()
        e = await h.error(h.hidden_frame(req, h.rows(req)))
        assert e.code == ErrorCode.UNKNOWN_SESSION and req.request_id[2:] in e.message

    run(in_process_pipeline, tiny_llama, body)


def test_wrong_shapes_dtypes_and_values_are_refused_then_good_rows_work(in_process_pipeline, tiny_llama):
    async def body(h):
        req = h.request(max_new_tokens=2)
        await h.send(h.open_frame(req))
        e = await h.error(h.hidden_frame(req, h.rows(req, width=100)))
        assert e.code == ErrorCode.BAD_MESSAGE and "(None, 256)" in e.message
        e = await h.error(h.hidden_frame(req, h.rows(req, dtype=torch.bfloat16)))
        assert e.code == ErrorCode.BAD_MESSAGE and "torch.bfloat16" in e.message
        nan = h.rows(req).clone()
        nan[3, 7] = float("nan")
        e = await h.error(h.hidden_frame(req, nan))
        assert e.code == ErrorCode.EXECUTION and "NaN" in e.message
        e = await h.error(h.hidden_frame(req, h.rows(req)[:2], start=5))
        assert e.code == ErrorCode.EXECUTION and "position 5" in e.message
        e = await h.error(h.hidden_frame(req, h.rows(req), signer=h.p.gateway))
        assert e.code == ErrorCode.BAD_SIGNATURE
        # After all that, the right rows produce the right token at the ring's end.
        await h.send(h.hidden_frame(req, h.rows(req)))
        tok = await asyncio.wait_for(h.tokens.get(), 10)
        assert tok.kind == Kind.TOKEN and tok.signer() == h.p.servers[1].address
        assert parse_token(tok.body) == (reference(tiny_llama, 6).tokens[0], len(PROMPT), False)

    run(in_process_pipeline, tiny_llama, body)


def test_replayed_steps_and_opens_are_refused(in_process_pipeline, tiny_llama):
    async def body(h):
        req = h.request(max_new_tokens=3)
        opening = h.open_frame(req)
        await h.send(opening)
        step0 = h.hidden_frame(req, h.rows(req))
        await h.send(step0)
        await asyncio.wait_for(h.tokens.get(), 10)
        e = await h.error(step0)
        assert e.code == ErrorCode.REPLAY and "step 0 already processed" in e.message
        e = await h.error(opening)
        assert e.code == ErrorCode.REPLAY and "epoch 0" in e.message
        e = await h.error(h.hidden_frame(req, h.rows(req)[:1], step=5, start=len(PROMPT)))
        assert e.code == ErrorCode.BAD_MESSAGE and "out of order" in e.message

    run(in_process_pipeline, tiny_llama, body)


def test_more_rows_than_the_request_reserved_are_refused(in_process_pipeline, tiny_llama):
    async def body(h):
        req = h.request(max_new_tokens=1)  # capacity: 21 positions
        await h.send(h.open_frame(req))
        e = await h.error(h.hidden_frame(req, torch.zeros(40, 256)))
        assert e.code == ErrorCode.BAD_MESSAGE and "40 rows; 1 to 21 allowed" in e.message

    run(in_process_pipeline, tiny_llama, body)


def test_garbage_open_bodies_are_bad_messages(in_process_pipeline, tiny_llama):
    async def body(h):
        req = h.request()
        for garbage in (b"", b"\x01\x02", b"\x00" * 200, b"\xff" * 200):
            f = make_frame(h.p.keys[0], Kind.OPEN, h.p.chain_id, req.rid, 0, 0, 1, garbage)
            e = await h.error(f)
            assert e.code == ErrorCode.BAD_MESSAGE and "OPEN" in e.message, garbage

    run(in_process_pipeline, tiny_llama, body)
