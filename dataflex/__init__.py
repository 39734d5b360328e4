"""dataflex: data-centric dynamic training of LLMs over LLaMA-Factory."""

__version__ = "0.1.0"
