"""The coordinator service: the IO shell around the scheduler's pure core (DESIGN §4).

It reads registered, staked, non-jailed nodes and the model from the chain (`chain_io`), keeps
the cluster's state in a pure, clock-free state machine fed events (`state.CoordinatorState`:
registry polls, signed heartbeats, ticks), runs phase 1 on start and whenever the dynamics decide,
publishes every allocation change as an epoch on the Scheduler contract, and serves an HTTP API
(`app`): `POST /heartbeat`, `GET /assignment/{operator}`, `POST /route`, `GET /status`,
`GET /snapshot`. Wire messages are frozen, versioned pydantic types with signed, domain-separated
digests (`messages`); `client` is the typed client for workers and the gateway. `veriplex
coordinator run` starts it (`cli`). The API is in README.md.

Exceptions (all in `protocol.api_errors`)::

    ServiceError
    ├── HeartbeatRejected     a heartbeat was refused; `.status` is the HTTP status to answer
    │   ├── MalformedMessage  not a valid heartbeat document (422)
    │   ├── BadSignature      signature missing, malformed, or not by the named operator (401)
    │   ├── UnknownOperator   the signer is not an active operator on the registry (403)
    │   ├── WrongChain        the heartbeat is bound to another chain id (400)
    │   ├── StaleMessage      timestamp too far from the coordinator's clock (400)
    │   └── Replay            sequence number not above the last one accepted (409)
    ├── NotReady              no epoch published yet, so no assignment or route (503)
    ├── ModelNotServed        a route was asked for a model this coordinator does not serve (404)
    └── ModelSpecError        the model's shape cannot be found or disagrees with the chain
"""
