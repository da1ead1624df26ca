"""Video-to-audio generation (VAFlow): the latent audio codec (`codec`), the DiT velocity field (`dit`), the video
prior (`prior`: the alignment VAE; `prior_losses`: its objective) and the model scales (`presets`)."""
