"""The node's compute: model checkpoints (`models/`: import, hashing, tiny test models, the reference
forward), shard loading for a layer range (`shard`), the stage executor (`executor`: prefill and
decode over layers [a, b) with per-request KV) and the box's hardware profile (`hardware`)."""
