"""torch_dlbasics: the techniques of *Deep Learning from Scratch*, chapter 6, as PyTorch parts."""

__version__ = "0.1.0"
