"""cellsynth bench: latency and throughput of generation on this machine (see run.py)."""
