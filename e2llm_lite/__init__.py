"""e2llm_lite: serve a real tiny LLM on emulated heterogeneous edge/fog devices, the E2LLM way."""

__version__ = "0.1.0"
