"""The built-in model server (``tuneloop model-server``): transformers behind the OpenAI protocol.

protocol (wire models) → engine (models, adapters, one worker thread per model)
and decode (the token loop) → app (Flask routes). See docs/model-server.md.
"""
