"""The data plane of a worker: the stage server (`server`), KV sessions and admission (`sessions`),
the hidden-state store (`hidden_store`) and stored requests with their commitments
(`stored_requests`), the operator directory (`directory`), following the coordinator's assignments
(`follower`), and the callers' side of the wire (`client`: run a request through a pipeline;
`query`: ask a stage for its signed commitment; `fetch`: read its stored rows).

`client` and `query` load no torch: the gateway imports them."""
