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

from node.runtime.executor import StageExecutor, generate_local
from node.runtime.shard import load_shard
from protocol.frames import (
    LEN,
    CloseReason,
    ErrorCode,
    Frame,
    Kind,
    close_body,
    make_frame,
    open_body,
    parse_error,
    parse_frame,
    parse_token,
    read_frame,
    token_body,
)
from protocol.identity import address_of_key, sign_digest
from protocol.messages import StageAssignment, encode_request
from protocol.rows import hidden_body
from protocol.tensors import encode_tensor

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
        tok = await _first_token_still_right(h, req, tiny_llama)
        assert tok.kind == Kind.TOKEN and tok.signer() == h.p.servers[1].address

    run(in_process_pipeline, tiny_llama, body)


async def _first_token_still_right(h, req, model):  # type: ignore[no-untyped-def]
    """Send the request's right rows to its last stage: the ring must yield the reference's first
    token (the session survived whatever was refused before)."""
    await h.send(h.hidden_frame(req, h.rows(req)))
    tok = await asyncio.wait_for(h.tokens.get(), 10)
    assert parse_token(tok.body) == (reference(model, 6).tokens[0], len(PROMPT), False)
    return tok


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


def test_malformed_tensor_payloads_in_hidden_frames_are_bad_messages(in_process_pipeline, tiny_llama):
    async def body(h):
        req = h.request(max_new_tokens=2)
        await h.send(h.open_frame(req))
        good = hidden_body(0, h.rows(req))
        bad_bodies = {
            "too short": b"\x00\x00",
            "magic": good[:4] + b"XXXX" + good[8:],
            "dtype code 99": good[:8] + bytes([99]) + good[9:],
            "ndim 9": good[:9] + bytes([9]) + good[10:],
            "truncated": good[:-10],
            "trailing": good + b"\x00" * 4,
            "(None, 256)": good[:4] + encode_tensor(torch.zeros(len(PROMPT), 256, 1)),
        }
        for what, junk in bad_bodies.items():
            f = make_frame(h.p.keys[0], Kind.HIDDEN, h.p.chain_id, req.rid, 0, req.epoch, 1, junk)
            e = await h.error(f)
            assert e.code == ErrorCode.BAD_MESSAGE and "HIDDEN" in e.message, (what, e.message)
        # The session is untouched: the right rows still give the right first token.
        await _first_token_still_right(h, req, tiny_llama)

    run(in_process_pipeline, tiny_llama, body)


def test_a_finished_request_cannot_be_reopened_by_replaying_its_open(in_process_pipeline, tiny_llama):
    async def body(h):
        req = h.request(max_new_tokens=1)
        opening = h.open_frame(req)
        await h.send(opening)
        await h.send(h.hidden_frame(req, h.rows(req)))
        tok = await asyncio.wait_for(h.tokens.get(), 10)
        assert parse_token(tok.body)[2] is True  # the only token: the last stage closed the session
        assert req.rid not in h.p.servers[1].sessions.sessions
        e = await h.error(opening)
        assert e.code == ErrorCode.REPLAY and "was closed on this stage" in e.message
        assert req.rid not in h.p.servers[1].sessions.sessions

    run(in_process_pipeline, tiny_llama, body)


def test_tokens_at_the_first_stage_must_be_the_last_stages_next_step(in_process_pipeline, tiny_llama):
    """The test plays the LAST stage against the real first stage: stage 0 runs the prompt, sends its
    rows to the test, and waits for a TOKEN; only the last stage's operator, at the next step and
    position, may give it one, exactly once."""
    async def body(h):
        p, s0 = h.p, h.p.servers[0]
        fake_last: asyncio.Queue = asyncio.Queue()

        async def last_stage(reader, writer):
            while (buf := await read_frame(reader, 2**22)) is not None:
                await fake_last.put(parse_frame(buf))

        fake = await asyncio.start_server(last_stage, "127.0.0.1", 0)
        base = p.request(len(PROMPT), 4)
        stages = [st.model_dump() for st in base.stages]
        stages[1].update(host="127.0.0.1", port=fake.sockets[0].getsockname()[1])
        req = type(base).model_validate({**base.model_dump(), "stages": stages})
        raw = encode_request(req)
        g_r, g_w = await asyncio.open_connection("127.0.0.1", s0.port)  # the gateway's link
        g_w.write(make_frame(p.gateway, Kind.OPEN, p.chain_id, req.rid, 0, req.epoch, 0,
                             open_body(raw, sign_digest(p.gateway, req.digest(raw)), PROMPT)).to_bytes())
        kinds = [(await asyncio.wait_for(fake_last.get(), 10)).kind for _ in range(2)]
        assert kinds == [Kind.OPEN, Kind.HIDDEN]
        r, w = await asyncio.open_connection("127.0.0.1", s0.port)  # where the test injects TOKENs
        first = reference(tiny_llama, 6).tokens[0]

        def token(key, step=0, pos=None, rid=req.rid, body=None):
            pos = len(PROMPT) if pos is None else pos
            return make_frame(key, Kind.TOKEN, p.chain_id, rid, step, req.epoch, 0,
                              body if body is not None else token_body(first, pos, False))

        async def refused(f):
            w.write(f.to_bytes())
            buf = await asyncio.wait_for(read_frame(r, 2**20), 10)
            reply = parse_frame(buf)
            assert reply.kind == Kind.ERROR and reply.signer() == s0.address
            return parse_error(reply.body)

        e = await refused(token(PrivateKey(b"\x55" * 32)))
        assert e.code == ErrorCode.BAD_SIGNATURE and p.servers[1].address in e.message
        e = await refused(token(p.keys[0]))  # registered, but not the last stage
        assert e.code == ErrorCode.BAD_SIGNATURE
        e = await refused(token(p.keys[1], step=3))
        assert e.code == ErrorCode.BAD_MESSAGE and "out of order" in e.message
        e = await refused(token(p.keys[1], pos=7))
        assert e.code == ErrorCode.BAD_MESSAGE and "position 7" in e.message
        e = await refused(token(p.keys[1], body=b"\x01" * 5))
        assert e.code == ErrorCode.BAD_MESSAGE and "TOKEN body" in e.message
        e = await refused(token(p.keys[1], rid=b"\x42" * 32))
        assert e.code == ErrorCode.UNKNOWN_SESSION
        good = token(p.keys[1])
        w.write(good.to_bytes())
        relayed = parse_frame(await asyncio.wait_for(read_frame(g_r, 2**20), 10))
        assert relayed.kind == Kind.TOKEN and relayed.signer() == p.servers[1].address
        nxt = await asyncio.wait_for(fake_last.get(), 10)
        assert (nxt.kind, nxt.step) == (Kind.HIDDEN, 1)  # the accepted token was fed back in
        e = await refused(good)
        assert e.code == ErrorCode.REPLAY and "step 0 already processed" in e.message
        g_w.write(make_frame(p.gateway, Kind.CLOSE, p.chain_id, req.rid, 1, req.epoch, 0,
                             close_body(CloseReason.CANCELLED)).to_bytes())
        for _ in range(100):
            if req.rid not in s0.sessions.sessions:
                break
            await asyncio.sleep(0.05)
        assert req.rid not in s0.sessions.sessions
        for writer in (w, g_w):
            writer.close()
        fake.close()

    run(in_process_pipeline, tiny_llama, body)
