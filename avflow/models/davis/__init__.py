"""DAVIS and DAVIS-Flow: the Separation U-Net (`unet`), the visual encoder and its temporal transformer (`visual`),
the separator module (`separator`) and the model scales (`presets`)."""
