"""What tests and benches share: chain helpers, the verification world, the lab and attack
harnesses, the gateway and stage process harnesses. Never imported by product packages."""
