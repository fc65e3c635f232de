"""Client APIs other than OpenAI Chat Completions ("frontends"): one module per API pair.

Each module is pure translation, like the provider adapters: a client request in its own API's format
-> the internal OpenAI chat request every adapter takes, and the chat answer (body or stream chunks)
-> that API's answer. When the target speaks the client's API itself (Anthropic Messages to an
Anthropic provider), a pass-through module forwards the client's bytes with only the model rewritten.

    anthropic_messages        Anthropic Messages request -> OpenAI chat request (and its validation)
    anthropic_messages_reply  OpenAI chat answer / stream chunks -> Anthropic Messages answer / events
    anthropic_passthrough     Messages to an Anthropic-kind target: body and SSE bytes forwarded
    openai_responses          OpenAI Responses request -> OpenAI chat request (and its validation)
    openai_responses_reply    OpenAI chat answer / stream chunks -> Responses object / typed events
    openai_responses_passthrough  Responses to a kind = "openai" target: body and SSE bytes forwarded

proxy/frontend.py picks, per attempt, pass-through or translation by the target's adapter.
"""
