"""Moving off a hosted model before its shutdown: distil it into an open model, gated against it.

``tuneloop migrate`` in five steps (docs/migrate-from-openai.md):

1. **plan** (``plan.py``) — the hosted model's shutdown date (``report.shutdown_dates``), the data the platform
   holds, the open base, and what each step will cost and take;
2. **harvest** (``harvest.py``) — the hosted model (the *teacher*, ``teacher.py``) answers the questions users
   really asked, masked, plus the golden questions and rewordings; resumable; then a dataset version whose
   manifest says which rows are the teacher's;
3. **train** — a LoRA on the open base with the local provider, registered as a candidate served by the open
   model server (``serving.py``);
4. **evaluate** (``gate.py``) — the candidate against the model it replaces, on the same suites, closed book and
   as served; it must not be worse beyond ``migrate.tolerance`` anywhere;
5. **switch** (``gate.py``) — a promotion (``tuneloop models rollback`` undoes it), and the hosted model stays a
   fallback until its shutdown date (``model_versions.fallback_until``; the gateway reads it).
"""
