"""One module per system; each is `python -m benchmarks.runners.<name> ...` printing one JSON
line. `hf`: transformers generate, all in RAM. `accelerate_offload`: device_map="auto" with a
memory budget and an offload folder. `ours`: this project's engine."""

SYSTEMS = ("hf", "accelerate_offload", "ours")
