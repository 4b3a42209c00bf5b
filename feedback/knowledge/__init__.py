"""The knowledge base: entries users' answers are grounded in, how they are found, and how they are shown
to a model. Approved corrections land here at once; the next retrain consolidates them into the model.

- ``prompt`` — the context block exactly as the gateway, the evaluation's *as served* view and the starter
  model's training all render it (one function, so the three can never drift apart).
"""
