"""The bottom floor every Veriplex process shares: the data plane's frame format and tensor codec
(`frames`, `rows`, `tensors`), one signing identity (`identity`), keccak256 from the fastest
backend installed (`keccak`), the message types (`messages`: the pipeline request, stage
assignment, stage commitment, route, heartbeat), THE sampling rule (`sampling`), the typed
`Settings` (`settings`) and small net helpers (`net`).

It imports nothing of ours; loading it loads no torch (only `rows` and `tensors` need torch, and
only the processes that move tensors import them).
"""
