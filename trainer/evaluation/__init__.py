"""Evaluation: candidate versus live model on the test split, the approved corrections and the golden set.

``metrics.py`` scores an answer against its reference (exact match, token F1,
ROUGE-L, chrF; Korean-aware), ``suites.py`` gathers the questions, ``judge.py``
is the optional LLM judge, and ``run.py`` asks both models, scores and stores
the result (``evaluate``). The gate that acts on it is ``trainer.gate``, which
uses ``metrics`` — so this package imports nothing eagerly, to keep that one-way.
"""
