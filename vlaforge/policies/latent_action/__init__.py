"""The latent action model (LAPA / LAPO): inverse dynamics over frame pairs through a discrete bottleneck
(quantizers.py: vq_ema, fsq, nsvq), a pixel forward model (model.py), its folder format (io.py), the
inspection images (inspect.py) and the latent-pretrained backbone's hand-over to BC (transfer.py)."""
