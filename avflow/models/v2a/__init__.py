"""Video-to-audio generation (VAFlow): the latent audio codec (`codec`), the DiT velocity field (`dit`) and the
model scales (`presets`)."""
