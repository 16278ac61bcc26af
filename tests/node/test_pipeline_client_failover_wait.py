"""The failover path waits for a replacement without stopping anyone else.

A stage dies mid-generation; the client's `replace` is a coroutine that takes a while to find the
replacement (as the gateway's does while the coordinator evicts the dead worker and its standby
loads the layers). Meanwhile another request, on the same event loop and through the same first
stage, keeps streaming tokens: the wait is an `await`, not a blocking call. Then the waiting
request resumes on the replacement and its greedy tokens equal the uninterrupted run's (the
other request's, on the same prompt), compared exactly, which is what failover promises.
"""

from __future__ import annotations

import asyncio

from protocol.identity import address_of_key
from protocol.messages import PipelineRequest, StageAssignment

PROMPT = list(range(5, 21))
NEW = 40
WAIT_S = 1.5


def test_a_slow_async_replacement_lets_other_requests_stream_and_then_resumes_exactly(
        in_process_pipeline) -> None:  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        p = await in_process_pipeline([(0, 4), (4, 8), (4, 8)]).start()
        try:
            stages = [StageAssignment(operator=address_of_key(k), host="127.0.0.1", port=s.port,
                                      start=a, end=b)
                      for (a, b), k, s in zip(p.ranges, p.keys, p.servers, strict=True)]

            def request(rid: str, second: StageAssignment) -> PipelineRequest:
                return PipelineRequest(chain_id=p.chain_id, request_id="0x" + rid * 32,
                                       gateway=address_of_key(p.gateway),
                                       stages=[stages[0], second], prompt_len=len(PROMPT),
                                       max_new_tokens=NEW)

            dead, spare = p.servers[1], stages[2]
            loop = asyncio.get_running_loop()
            window: list[float] = []
            waiting = asyncio.Event()

            async def replace(k: int, _r: PipelineRequest) -> StageAssignment:
                assert k == 1
                window.append(loop.time())
                waiting.set()
                await asyncio.sleep(WAIT_S)  # the coordinator heals meanwhile
                window.append(loop.time())
                return spare

            def on_token(i: int, _tok: int) -> None:
                if i == 2:
                    async def kill() -> None:
                        await dead.stop()
                        for s in list(dead.sessions.sessions.values()):
                            s.upstream.transport.abort()
                    loop.create_task(kill())

            client = p.client()
            a = asyncio.create_task(client.generate(request("a1", stages[1]), PROMPT,
                                                    replace=replace, on_token=on_token,
                                                    step_timeout_s=10))
            await asyncio.wait_for(waiting.wait(), 30)
            b = await client.generate(request("b2", spare), PROMPT, step_timeout_s=10)
            got_a = await asyncio.wait_for(a, 60)
            return got_a, b, window
        finally:
            await p.stop()

    a, b, window = asyncio.run(main())
    assert len(a.handovers) == 1 and a.handovers[0].stage == 1
    start, end = window
    during = [t for t in b.token_times if start < t < end]
    assert during, "no token of the other request arrived while the failover waited"
    assert a.tokens == b.tokens and len(a.tokens) == NEW
