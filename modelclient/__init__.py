"""The floor that talks to model servers: one OpenAI-protocol client for the gateway and for evaluation.

It sits above ``config`` and below both ``server`` (the gateway asks the live model) and ``trainer``
(evaluation asks the candidate and the live model, the teacher drafts corrections), so neither of those
has to import the other. It knows nothing of the store. See docs/architecture.md.
"""
