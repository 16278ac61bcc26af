"""The off-chain scheduler: a pure core (phase-1 allocation, exact reference, phase-2 routing,
dynamics, simulator) and the coordinator service (`service/`) that does the IO around it. The
client-facing gateway is its own package, `gateway`, one floor up.

Pure modules take frozen snapshots and return frozen plans — no sockets, clocks or unseeded
randomness: `model` (types, canonical snapshot hash), `schema` (JSON documents, plan invariants;
see SCHEMAS.md), `costs` (the shared performance model), `allocate` (phase 1: `group` forms
replicas, `choose` keeps no straggler replicas), `exact` (optimal
reference for small clusters), `route` (phase 2), `dynamics` (join/leave/heartbeats/rebalance),
`sim/` (catalogue, cluster generator, workloads, discrete-event engine, baselines), `cli`
(`veriplex sim …`).

Exceptions (all in `scheduler.errors`)::

    SchedulerError
    ├── InvalidInput    malformed or inconsistent document or argument
    ├── CannotPlace     not even one replica fits; `.shortfall` lists what is missing
    ├── InvalidPlan     an allocation breaks coverage/memory/membership; `.problems`
    └── NoRoute         no admissible chain of shards for a request right now
"""
