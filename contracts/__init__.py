"""Vyper contracts of Veriplex and their Python face: build, deploy, typed client, errors.

The only package that talks to a chain through web3. Entry points: `contracts.build.compile_all`,
`contracts.deploy.deploy_all`, `contracts.manifest.manifest_is_live`, `contracts.client.Chain`;
the exception tree is rooted at `contracts.errors.ContractsError`. See contracts/README.md.
"""
