"""avflow: audio-visual conditional flow matching in JAX/Flax (VisAH-FM and relatives)."""

__version__ = "0.1.0"
