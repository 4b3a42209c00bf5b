"""The knowledge base: entries users' answers are grounded in, how they are found, and how they are shown
to a model. Approved corrections land here at once; the next retrain consolidates them into the model.

- ``prompt`` — the context block exactly as the gateway, the evaluation's *as served* view and the starter
  model's training all render it (one function, so the three can never drift apart).
- ``retrieval`` — finding the entries for a question (Korean or English, in other words): the in-memory
  :class:`~feedback.knowledge.retrieval.Retriever`, changed entry by entry, optionally fused with dense
  vectors; built from ``analysis`` (text → terms), ``synonyms`` (+ the bundled ``synonyms.txt``),
  ``sparse`` (the incremental TF-IDF index) and ``dense`` (the vectors). docs/retrieval.md.
"""
