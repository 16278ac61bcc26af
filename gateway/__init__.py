"""The OpenAI-compatible gateway: authenticates `vpx_` API keys against the Payments contract,
runs requests over data-plane pipelines picked by the coordinator, accounts tokens, returns a
`veriplex` receipt with every response, and settles the records on chain in batches that survive a
crash. Exceptions: `gateway.errors` (root `GatewayError`)."""
