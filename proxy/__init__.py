"""llm-gateway: an OpenAI-compatible reverse proxy for LLM APIs."""
