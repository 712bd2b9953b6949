"""μGPT: watch and measure a tiny GPT learn online, byte by byte."""

__version__ = "0.1.0"
