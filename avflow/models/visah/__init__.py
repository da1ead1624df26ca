"""VisAH and VisAH-FM: the hybrid U-Net (`hdemucs`) with the latent audio-visual transformer at its bottleneck
(`latent`), the network u (`network`), its conditioning and velocity (`highlighter`) and the model scales
(`presets`)."""
