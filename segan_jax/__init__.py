"""segan_jax: DeepLabV3 + SegAN semantic segmentation in JAX/Flax."""
