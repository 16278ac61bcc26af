"""The worker, by role.

- `runtime/`      models, shard loading, the stage executor, the hardware profile (torch lives here)
- `dataplane/`    the stage server, KV sessions and admission, the hidden-state store, stored requests
                  and their commitments, following the coordinator; the callers' side of the wire
                  (`client`, `query`: torch-free, the gateway imports them)
- `verification/` the verifier role: follow the Verification contract, re-execute jobs as ordinary
                  prefills, the stage check (`stage_check`), commit / reveal / open
- `coordinator`   the node's (and gateway's) typed client of the coordinator API: heartbeats, routes
- `wallet/`       keystores and the `wallet` commands
- `cli/`          `node …`, `model …`, `verify-stage`; `cli.chain` connects Settings + a keystore to a
                  signing chain client
- `build`         the one function that builds a running node from Settings + options

Imports only downward: protocol, contracts, verifier, devnet — never scheduler, gateway or audit.
"""
