"""Latent previews for the bundled IASA-mini: a linear latent-to-RGB map fitted to its VAE."""
