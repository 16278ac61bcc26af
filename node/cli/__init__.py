"""The worker's commands: `node register|status|unbond|withdraw|serve` (`operator`, `serve`),
`model import|hash|info|generate` (`model`), `verify-stage` (`verify`), and `chain`: the shared
helpers that turn Settings + a keystore name into a connected, signing chain client."""
