"""Personal data has a lifecycle: retention, erasure and export on request (docs/privacy.md).

- ``subjects.py`` — whose data: a user (the API's ``user`` field, under every API key or one) or a conversation;
- ``texts.py`` — their own words, and how a copy of them is recognised anywhere;
- ``erase.py`` — erasure on request, through the store, the review queue, the knowledge base, the audit log's
  quotes, datasets, evaluation rows, reports and the disk (``evidence.py``, ``knowledge_base.py``,
  ``audit_quotes.py``, ``files.py``, ``disk.py``), with what already left the machine (``outside.py``);
- ``retention.py`` — the purge of what is older than ``privacy.retention_days`` (``expiry.py``), keeping the
  report's counts (``counts.py``) and approved corrections without personal data;
- ``export.py`` — everything stored about a person, as JSON;
- ``log.py`` — the erasure log: who asked, who ran it, when, how many rows of each kind — never the content.

Every deletion is a storage function taking ``db``; the one SQLite-specific step is
:func:`feedback.privacy.disk.wipe_sqlite_free_space`. Nothing is imported here, so the weekly report can read
``counts.py`` without loading the rest.
"""
