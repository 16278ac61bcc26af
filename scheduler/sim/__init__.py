"""Cluster simulator: GPU/region/model catalogue, cluster generator, workloads, the discrete-event
engine and the baseline policies it compares our plans with. Pure: seeded RNGs, no clocks, no IO
beyond what the CLI passes in."""
