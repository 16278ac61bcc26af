"""The embedded local chain: py-evm behind a standard Ethereum JSON-RPC server, state in SQLite.

Run it with ``veriplex devnet up``; start one from tests with `devnet.process.running_devnet`.
Modules: `store` (the SQLite file and its lock), `kvstore` (py-evm's key-value DB over it),
`chain` (mining, snapshots, time), `txpool` (admission checks), `execution` (eth_call and
eth_estimateGas), `params` (parameter validation), `rpc` (the methods), `filters`,
`subscriptions` (WebSocket eth_subscribe), `serialize`, `server` (HTTP/WebSocket, startup,
shutdown), `accounts` (dev keys from the mnemonic), `cli`, `testing`.

Errors (all in `devnet.errors`)::

    DevnetError
    ├── DevnetLocked        another devnet process holds the database
    ├── StoreError          the database is unusable or belongs to another chain id
    └── RpcError            a JSON-RPC error answer (code, message, data)
        ├── ParseError (-32700), InvalidRequest (-32600), MethodNotFound (-32601),
        ├── InvalidParams (-32602), ServerError (-32000)
        └── ExecutionReverted (3, data = revert bytes)
"""
