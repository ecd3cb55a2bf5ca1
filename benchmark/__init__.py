"""LLM-Testing: Locust-based load tests and GSM8K accuracy for OpenAI-compatible LLM servers."""

__version__ = "0.1.0"
