"""cellsynth.training: PyTorch models (scRDiT DiT), DDPM training and the reference sampler."""
