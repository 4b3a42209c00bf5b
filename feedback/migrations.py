"""Named, append-only schema migrations (sqlite-utils ``Migrations``).

A migration's function name is its identity: once shipped it is never edited,
only followed by a new one. ``open_db`` applies whatever is pending wherever the
database is opened, never inside a request handler. ``docs/schema.md`` is
generated from the migrated schema and ``tests/test_schema_doc.py`` fails when it
drifts (regenerate with ``python -m feedback.schema_doc``).

Design notes that shaped the tables:
- every assistant message carries ``model_version_id``: the loop ranks and
  retrains per model version, so an answer must know who wrote it;
- ``feedback`` is unique on (message_id, voter_ref): a voter changes a vote, it
  cannot stuff the ballot;
- a failed turn is stored on purpose (``error`` set, empty content) rather than
  leaving a user message without an answer.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from feedback.text import question_key

MIGRATIONS = Migrations("tuneloop")


@MIGRATIONS()
def m001_core(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL DEFAULT 'secret' CHECK (kind IN ('secret', 'publishable')),
            created_at TEXT NOT NULL,
            revoked_at TEXT
        )
        """
    )
    db.execute(
        """
        CREATE TABLE model_versions (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            provider TEXT NOT NULL,
            base_model TEXT NOT NULL,
            base_url TEXT,
            adapter_path TEXT,
            training_run_id TEXT,
            status TEXT NOT NULL CHECK (status IN ('candidate', 'live', 'canary', 'retired', 'rejected', 'standby')),
            traffic_weight REAL NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            promoted_at TEXT,
            retired_at TEXT,
            notes TEXT
        )
        """
    )
    # At most one live version at a time, enforced by the database itself.
    db.execute("CREATE UNIQUE INDEX model_versions_one_live ON model_versions(status) WHERE status = 'live'")
    db.execute(
        """
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            api_key_id TEXT REFERENCES api_keys(id),
            user_ref TEXT,
            source TEXT NOT NULL DEFAULT 'api',
            metadata TEXT NOT NULL DEFAULT '{}'
        )
        """
    )
    db.execute(
        """
        CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            model_version_id TEXT REFERENCES model_versions(id),
            created_at TEXT NOT NULL,
            latency_ms REAL,
            tokens_in INTEGER,
            tokens_out INTEGER,
            finish_reason TEXT,
            error TEXT,
            UNIQUE (conversation_id, seq)
        )
        """
    )
    db.execute("CREATE INDEX messages_version_time ON messages(model_version_id, created_at)")
    db.execute("CREATE INDEX messages_created ON messages(created_at)")
    db.execute(
        """
        CREATE TABLE feedback (
            id TEXT PRIMARY KEY,
            message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            voter_ref TEXT NOT NULL,
            rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),
            reason TEXT,
            comment TEXT,
            correction TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            UNIQUE (message_id, voter_ref)
        )
        """
    )
    db.execute("CREATE INDEX feedback_created ON feedback(created_at)")
    # Instance-wide secrets (feedback-token signing key) shared by every gateway on this database.
    db.execute(
        """
        CREATE TABLE instance_secrets (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            created_at TEXT NOT NULL
        )
        """
    )


@MIGRATIONS()
def m002_question_keys(db: Database) -> None:
    # Ranking groups answers by the normalized question they replied to. Computing
    # that key per report meant joining every answer to its question and running
    # Python over the text; stored on the answer row, it is read from one covering
    # index instead (bench/analytics.py, docs/benchmarks.md).
    db.execute("ALTER TABLE messages ADD COLUMN question_key TEXT")
    rows = db.execute(
        """SELECT a.rowid, u.content FROM messages a
           JOIN messages u ON u.conversation_id = a.conversation_id AND u.seq = a.seq - 1
           WHERE a.role = 'assistant'"""
    ).fetchall()
    db.conn.executemany(
        "UPDATE messages SET question_key = ? WHERE rowid = ?", [(question_key(text), rowid) for rowid, text in rows]
    )
    # Covering for the per-question counts and the report's latency percentiles. It
    # starts with the old index's two columns, so that one is dead weight on every insert.
    db.execute("DROP INDEX messages_version_time")
    db.execute(
        "CREATE INDEX messages_version_time_question"
        " ON messages(model_version_id, created_at, question_key, error, latency_ms)"
    )
    # Each vote carries a copy of what it rated: the answer's version, time and question
    # key. Joining 300k votes to their answers by text id cost ~1 s per report at 1M turns;
    # with the copy, counting votes per question, version and week is an index range scan.
    # A trigger fills it, so every writer of feedback (ratings.py, imports) gets it; an
    # answer's version, time and question never change after it is written.
    for column in ("model_version_id", "answered_at", "question_key"):
        db.execute(f"ALTER TABLE feedback ADD COLUMN {column} TEXT")
    db.execute(
        """CREATE TRIGGER feedback_copy_answer AFTER INSERT ON feedback BEGIN
               UPDATE feedback SET (model_version_id, answered_at, question_key) =
                   (SELECT model_version_id, created_at, question_key FROM messages WHERE id = NEW.message_id)
               WHERE rowid = NEW.rowid;
           END"""
    )
    db.execute(
        """UPDATE feedback SET (model_version_id, answered_at, question_key) =
               (SELECT model_version_id, created_at, question_key FROM messages WHERE id = feedback.message_id)"""
    )
    db.execute(
        "CREATE INDEX feedback_version_answered ON feedback(model_version_id, answered_at, question_key, rating)"
    )


@MIGRATIONS()
def m003_review_and_datasets(db: Database) -> None:
    # The review queue: a worst-answered question waits here until a person approves
    # a corrected answer (or rejects it). Only approved rows ever reach training data;
    # thumbs-down answers are evidence, never targets.
    db.execute(
        """
        CREATE TABLE review_items (
            id TEXT PRIMARY KEY,
            question TEXT NOT NULL,
            question_key TEXT NOT NULL,
            origin TEXT NOT NULL DEFAULT 'ranking' CHECK (origin IN ('ranking', 'import', 'manual')),
            model_version_id TEXT,  -- no foreign key: removing demo versions must not trip on the queue
            evidence TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')),
            answer TEXT,
            answer_source TEXT CHECK (answer_source IN ('reviewer', 'teacher', 'user')),
            draft TEXT,
            draft_model TEXT,
            reviewer TEXT,
            note TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            decided_at TEXT,
            CHECK (status != 'approved' OR (answer IS NOT NULL AND length(trim(answer)) > 0))
        )
        """
    )
    # Collecting every week must not queue a question that is already waiting or already
    # fixed; the database itself refuses a second open item for the same question.
    db.execute(
        "CREATE UNIQUE INDEX review_items_one_open ON review_items(question_key)"
        " WHERE status IN ('pending', 'approved')"
    )
    db.execute("CREATE INDEX review_items_status ON review_items(status, created_at)")
    # Company FAQ files imported with `tuneloop dataset import`; the newest is the base
    # dataset every build starts from (unless dataset.base_file names one).
    db.execute(
        """
        CREATE TABLE dataset_bases (
            id TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            original_name TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            rows INTEGER NOT NULL,
            created_at TEXT NOT NULL
        )
        """
    )
    # Built training sets. The files and the manifest (with per-row lineage) live in
    # `path`; the row says which version it is and fingerprints it.
    db.execute(
        """
        CREATE TABLE datasets (
            id TEXT PRIMARY KEY,
            version INTEGER NOT NULL UNIQUE,
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            counts TEXT NOT NULL DEFAULT '{}',
            manifest_path TEXT NOT NULL,
            params TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL
        )
        """
    )


@MIGRATIONS()
def m004_training_runs(db: Database) -> None:
    # One row per fine-tuning run, written before anything is submitted: a process
    # that restarts finds its runs here and resumes polling `external_job_id` (an
    # OpenAI job id, or the local worker's "pid:N") instead of training again.
    # `config_key` fingerprints provider + base model + hyperparameters, and the
    # database itself refuses a second queued-or-running run of one dataset and config.
    db.execute(
        """
        CREATE TABLE training_runs (
            id TEXT PRIMARY KEY,
            dataset_id TEXT NOT NULL REFERENCES datasets(id),
            provider TEXT NOT NULL,
            base_model TEXT NOT NULL,
            hyperparameters TEXT NOT NULL DEFAULT '{}',
            config_key TEXT NOT NULL,
            external_job_id TEXT,
            state TEXT NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            progress REAL,
            metrics TEXT NOT NULL DEFAULT '{}',
            output TEXT,
            work_dir TEXT,
            error TEXT,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            updated_at TEXT NOT NULL,
            candidate_version_id TEXT REFERENCES model_versions(id)
        )
        """
    )
    db.execute(
        "CREATE UNIQUE INDEX training_runs_one_active ON training_runs(dataset_id, config_key)"
        " WHERE state IN ('queued', 'running')"
    )
    db.execute("CREATE INDEX training_runs_state ON training_runs(state, created_at)")
    # The run log: the local worker's progress and evaluation losses, OpenAI's job
    # events. `external_id` is the provider's event id, unique per run, so polling
    # the same events twice stores them once.
    db.execute(
        """
        CREATE TABLE training_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES training_runs(id) ON DELETE CASCADE,
            created_at TEXT NOT NULL,
            level TEXT NOT NULL DEFAULT 'info' CHECK (level IN ('debug', 'info', 'warning', 'error')),
            message TEXT NOT NULL,
            data TEXT NOT NULL DEFAULT '{}',
            external_id TEXT
        )
        """
    )
    db.execute("CREATE INDEX training_events_run ON training_events(run_id, id)")
    db.execute(
        "CREATE UNIQUE INDEX training_events_external ON training_events(run_id, external_id)"
        " WHERE external_id IS NOT NULL"
    )


@MIGRATIONS()
def m005_evaluations_and_model_events(db: Database) -> None:
    # Candidate-versus-incumbent evaluations. Metrics per suite are small JSON; the
    # answers themselves (two per question, with per-row scores) go to a JSONL file
    # at `rows_path`, so the database stays small however large the golden set grows.
    # `passed`/`reasons` are the gate's verdict under the settings kept in `gate`.
    # Version ids carry no foreign key here or in model_events, as in review_items:
    # removing the demo's model version must not trip on its history.
    db.execute(
        """
        CREATE TABLE evaluations (
            id TEXT PRIMARY KEY,
            candidate_id TEXT NOT NULL,
            incumbent_id TEXT,
            dataset_id TEXT REFERENCES datasets(id),
            suites TEXT NOT NULL DEFAULT '[]',
            metrics TEXT NOT NULL DEFAULT '{}',
            rows_path TEXT,
            passed INTEGER CHECK (passed IN (0, 1)),
            reasons TEXT NOT NULL DEFAULT '[]',
            judge TEXT,
            gate TEXT NOT NULL DEFAULT '{}',
            params TEXT NOT NULL DEFAULT '{}',
            duration_s REAL,
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX evaluations_candidate ON evaluations(candidate_id, created_at)")
    db.execute("CREATE INDEX evaluations_created ON evaluations(created_at)")
    # What happened to each model version, in order. A status column alone cannot say
    # which version was live before the current one; this history can, which is what
    # makes rollback one command. For `promoted` and `rolled_back`, `version_id` is the
    # version that became live and `previous_live_id` the one it replaced.
    db.execute(
        """
        CREATE TABLE model_events (
            id TEXT PRIMARY KEY,
            version_id TEXT NOT NULL,
            event TEXT NOT NULL CHECK (event IN
                ('promoted', 'canary', 'rolled_back', 'retired', 'rejected', 'deployed', 'undeployed')),
            previous_live_id TEXT,
            evaluation_id TEXT REFERENCES evaluations(id),
            actor TEXT NOT NULL,
            reason TEXT,
            details TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX model_events_version ON model_events(version_id, event, created_at)")
    db.execute("CREATE INDEX model_events_created ON model_events(created_at)")


@MIGRATIONS()
def m006_pipeline_runs(db: Database) -> None:
    # One row per run of the loop (weekly collect + report, monthly or threshold retrain).
    # Every step's outcome is written before the next one starts, so a scheduler killed
    # mid-run resumes at the step it stopped; `context` carries the ids the steps made
    # (dataset, training run, candidate, evaluation), which is what keeps a resumed train
    # step from submitting a second training job.
    db.execute(
        """
        CREATE TABLE pipeline_runs (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('weekly', 'monthly', 'threshold', 'manual')),
            step TEXT,
            state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'skipped')),
            started_at TEXT NOT NULL,
            finished_at TEXT,
            error TEXT,
            context TEXT NOT NULL DEFAULT '{}',
            steps TEXT NOT NULL DEFAULT '[]'
        )
        """
    )
    db.execute("CREATE INDEX pipeline_runs_kind ON pipeline_runs(kind, started_at)")


@MIGRATIONS()
def m007_admin_sessions_and_signin_attempts(db: Database) -> None:
    # Admin browser sessions live here, not only in a signed cookie: a signed cookie stays
    # valid until it expires, so logging out could not end it (issue 14). The row holds a
    # hash of the session secret the cookie carries; logout sets ended_at.
    db.execute(
        """
        CREATE TABLE admin_sessions (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            ended_at TEXT,
            client TEXT
        )
        """
    )
    db.execute("CREATE INDEX admin_sessions_expires ON admin_sessions(expires_at)")
    # Sign-in attempts (login form, bearer token) reserved before the secret is checked and
    # deleted when it was right, so the rows are the failures of the window. Counted per
    # address and per account across every gateway process and host sharing the store.
    db.execute(
        """
        CREATE TABLE signin_attempts (
            id INTEGER PRIMARY KEY,
            scope TEXT NOT NULL CHECK (scope IN ('address', 'account')),
            key TEXT NOT NULL,
            at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX signin_attempts_key ON signin_attempts(scope, key, at)")
    db.execute("CREATE INDEX signin_attempts_at ON signin_attempts(at)")


@MIGRATIONS()
def m008_knowledge_base(db: Database) -> None:
    # The knowledge base answers are grounded in (feedback/knowledge/store.py). An entry is never
    # deleted, only retired, so every answer's lineage (message_sources) keeps pointing at it.
    # `questions` is a JSON list: the first is the one shown as the source, the rest are phrasings
    # learned from approved corrections or added by reviewers. `changed_seq` is the store's change
    # counter when the entry last changed: a gateway worker asks for `changed_seq > <what it has>`.
    db.execute(
        """
        CREATE TABLE kb_entries (
            id TEXT PRIMARY KEY,
            questions TEXT NOT NULL,
            answer TEXT NOT NULL,
            lang TEXT NOT NULL CHECK (lang IN ('ko', 'en')),
            source_kind TEXT NOT NULL CHECK (source_kind IN ('base', 'review', 'import', 'manual')),
            source_ref TEXT,
            state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'retired')),
            version INTEGER NOT NULL DEFAULT 1,
            changed_seq INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            updated_by TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX kb_entries_changed ON kb_entries(changed_seq)")
    db.execute("CREATE INDEX kb_entries_state ON kb_entries(state, updated_at)")
    # Every version of every entry, written in the same transaction as the change: who, when, why.
    db.execute(
        """
        CREATE TABLE kb_history (
            entry_id TEXT NOT NULL REFERENCES kb_entries(id),
            version INTEGER NOT NULL,
            questions TEXT NOT NULL,
            answer TEXT NOT NULL,
            lang TEXT NOT NULL,
            state TEXT NOT NULL,
            actor TEXT NOT NULL,
            reason TEXT,
            at TEXT NOT NULL,
            PRIMARY KEY (entry_id, version)
        )
        """
    )
    # The normalized keys (feedback/text.py question_key) of every active entry's questions. The
    # primary key is the rule "one active entry per question", kept by the database itself, and the
    # lookup an approval uses to find the entry of the same question.
    db.execute(
        """
        CREATE TABLE kb_question_keys (
            key TEXT PRIMARY KEY,
            entry_id TEXT NOT NULL REFERENCES kb_entries(id)
        )
        """
    )
    db.execute("CREATE INDEX kb_question_keys_entry ON kb_question_keys(entry_id)")
    # One row. `seq` is bumped in the same transaction as every entry change: the cheap number every
    # gateway worker polls. The base file imported on first start is recorded, so it is imported once
    # and never again over reviewers' edits.
    db.execute(
        """
        CREATE TABLE kb_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL DEFAULT 0,
            base_path TEXT,
            base_sha256 TEXT,
            seeded_at TEXT
        )
        """
    )
    db.execute("INSERT INTO kb_state (id, seq) VALUES (1, 0)")
    # Lineage: the entries each assistant message was given, best first, with their scores, written
    # in the same transaction as the turn — so a thumbs-down can be traced to the knowledge behind it.
    db.execute(
        """
        CREATE TABLE message_sources (
            message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            rank INTEGER NOT NULL,
            entry_id TEXT NOT NULL REFERENCES kb_entries(id),
            entry_version INTEGER NOT NULL,
            score REAL NOT NULL,
            PRIMARY KEY (message_id, rank)
        )
        """
    )
    db.execute("CREATE INDEX message_sources_entry ON message_sources(entry_id, rank)")
    # Which entry an approval upserted, and its version before (0: the approval created it), so
    # rejecting the item afterwards puts the entry back as it was.
    db.execute("ALTER TABLE review_items ADD COLUMN kb_entry_id TEXT REFERENCES kb_entries(id)")
    db.execute("ALTER TABLE review_items ADD COLUMN kb_entry_version_before INTEGER")


@MIGRATIONS()
def m009_accounts_and_audit_log(db: Database) -> None:
    # Named people instead of one shared token (issue 23). An account is matched by its e-mail address
    # (stored lowercased, so one person cannot hold two accounts by case); `sso_subject` binds it to one
    # identity at the provider ("<issuer> <sub>"), so an address reassigned there cannot take it over.
    # `password_hash` is an argon2id hash, NULL for single-sign-on-only accounts.
    db.execute(
        """
        CREATE TABLE users (
            id TEXT PRIMARY KEY,
            email TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('viewer', 'reviewer', 'admin')),
            password_hash TEXT,
            sso_subject TEXT UNIQUE,
            source TEXT NOT NULL DEFAULT 'cli' CHECK (source IN ('cli', 'admin', 'sso')),
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            disabled_at TEXT,
            last_signin_at TEXT,
            CHECK (email = lower(email))
        )
        """
    )
    # A session now belongs to an account (NULL: signed in with the admin token before any admin account
    # existed). Disabling the account or changing its role ends its open sessions in the same transaction.
    db.execute("ALTER TABLE admin_sessions ADD COLUMN user_id TEXT REFERENCES users(id)")
    db.execute("ALTER TABLE admin_sessions ADD COLUMN method TEXT NOT NULL DEFAULT 'token'")
    db.execute("CREATE INDEX admin_sessions_user ON admin_sessions(user_id, ended_at)")
    # One-time sign-in links (set a first password): the row keeps the SHA-256 of the link's secret only.
    db.execute(
        """
        CREATE TABLE signin_links (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT
        )
        """
    )
    # Who changed what, when: review decisions, knowledge-base edits and imports, promotions and rollbacks,
    # API keys, accounts. Append-only; `details` is JSON and never holds a secret (feedback/audit.py).
    db.execute(
        """
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            actor_name TEXT NOT NULL,
            actor_id TEXT,
            via TEXT NOT NULL CHECK (via IN ('web', 'api', 'cli', 'system')),
            action TEXT NOT NULL,
            target TEXT,
            details TEXT NOT NULL DEFAULT '{}'
        )
        """
    )
    db.execute("CREATE INDEX audit_log_at ON audit_log(at)")
    db.execute("CREATE INDEX audit_log_actor ON audit_log(actor, at)")
    db.execute("CREATE INDEX audit_log_action ON audit_log(action, at)")
    db.execute("CREATE INDEX audit_log_target ON audit_log(target, at)")


@MIGRATIONS()
def m010_rate_limit_counters(db: Database) -> None:
    # Rate-limit counters in the store, so every gunicorn worker and every gateway sharing the
    # database counts against one limit: per-worker counters accepted 119 of 200 requests against
    # 60/minute with 2 workers (issue 14). One row per limit and caller (fixed window): the count
    # and when its window ends; a row whose window ended starts over on its next hit.
    db.execute(
        """
        CREATE TABLE rate_limit_counters (
            key TEXT PRIMARY KEY,
            hits INTEGER NOT NULL,
            window_ends_at TEXT NOT NULL
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE INDEX rate_limit_counters_window ON rate_limit_counters(window_ends_at)")


@MIGRATIONS()
def m011_privacy_lifecycle(db: Database) -> None:
    # Personal data has a lifecycle (issue 21, feedback/privacy/). One row of state: whether an operator has
    # seen what the retention purge would delete (an upgrade never deletes before someone has: the purge refuses
    # until a dry run was seen, for at least the retention it would apply), and whether the file's free space
    # may still hold text deleted before `secure_delete` was on for every connection (then the next erasure
    # runs one VACUUM). A database with no conversation yet has nothing to lose and nothing in its free space.
    db.execute(
        """
        CREATE TABLE privacy_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            purge_seen_at TEXT,
            purge_seen_by TEXT,
            purge_seen_days INTEGER,
            last_purge_at TEXT,
            last_purge_cutoff TEXT,
            free_space_clean INTEGER NOT NULL DEFAULT 0 CHECK (free_space_clean IN (0, 1))
        )
        """
    )
    (existing,) = db.execute("SELECT COUNT(*) FROM (SELECT 1 FROM conversations LIMIT 1)").fetchone()
    if existing:
        db.execute("INSERT INTO privacy_state (id, free_space_clean) VALUES (1, 0)")
    else:
        db.execute(
            "INSERT INTO privacy_state (id, purge_seen_at, purge_seen_by, purge_seen_days, free_space_clean)"
            " VALUES (1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'a new database: nothing existed to lose', 1, 1)"
        )
    # The log of erasures on request and retention purges: who asked, who ran it, when, and how many rows of
    # each kind went — never the content. `subject` is a keyed hash of the user reference or conversation id
    # (a repeated request is recognisable; the person is not). `pending` holds the ids of what the store lost but
    # files (datasets, evaluation rows, reports) still had to follow, so a run stopped half-way is finished by
    # the next one; `left_machine` lists copies already outside this machine for the operator to act on.
    db.execute(
        """
        CREATE TABLE erasures (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('user', 'conversation', 'retention')),
            subject TEXT,
            scope TEXT,
            requested_by TEXT NOT NULL,
            run_by TEXT NOT NULL,
            run_by_name TEXT NOT NULL,
            via TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            state TEXT NOT NULL CHECK (state IN ('running', 'files_pending', 'done', 'failed')),
            counts TEXT NOT NULL DEFAULT '{}',
            left_machine TEXT NOT NULL DEFAULT '[]',
            disk TEXT NOT NULL DEFAULT '{}',
            pending TEXT NOT NULL DEFAULT '{}',
            error TEXT
        )
        """
    )
    db.execute("CREATE INDEX erasures_started ON erasures(started_at)")
    db.execute("CREATE INDEX erasures_state ON erasures(state)")
    # What the product still needs once the words are gone: answers, failed answers, ratings and thumbs-down
    # per model version and UTC hour, rolled up from the rows a purge or an erasure deletes. Hours, not weeks:
    # the weekly report adds them into whichever weeks its time zone makes. A vote counts in the hour its
    # answer was written, as the report counts it.
    db.execute(
        """
        CREATE TABLE activity_counts (
            model_version_id TEXT NOT NULL,
            hour TEXT NOT NULL,
            answers INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            ratings INTEGER NOT NULL DEFAULT 0,
            down INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (model_version_id, hour)
        )
        """
    )


@MIGRATIONS()
def m012_responses(db: Database) -> None:
    # /v1/responses (issue 20): a stored response names the turn that answered it, so GET /v1/responses/{id}
    # can rebuild it and previous_response_id can continue its conversation. The answer itself stays in
    # `messages` (one copy of every turn); this row keeps only what the Responses API echoes back that a
    # turn does not hold. Written after the turn, so both foreign keys hold, and erasing a conversation
    # takes its responses with it.
    db.execute(
        """
        CREATE TABLE responses (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            message_id TEXT NOT NULL UNIQUE REFERENCES messages(id) ON DELETE CASCADE,
            previous_response_id TEXT,
            instructions TEXT,
            max_output_tokens INTEGER,
            temperature REAL,
            top_p REAL,
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX responses_conversation ON responses(conversation_id)")


@MIGRATIONS()
def m013_model_version_server_key_and_fallback(db: Database) -> None:
    # A version served somewhere else than model.base_url may need another key: after `tuneloop migrate`
    # the open model's server must never be sent the hosted model's key, nor the other way round. And the
    # hosted model it replaced keeps answering as a fallback until its shutdown date.
    db.execute("ALTER TABLE model_versions ADD COLUMN api_key_env TEXT")
    db.execute("ALTER TABLE model_versions ADD COLUMN fallback_until TEXT")


@MIGRATIONS()
def m014_scheduler_state(db: Database) -> None:
    # The scheduler's own state moves into the store, so any number of scheduler processes on any number of
    # hosts share one schedule and one answer to "who leads" (trainer/scheduler.py):
    # - scheduler_jobs: APScheduler's jobs (the layout of its SQLAlchemy store). The pickled job state is
    #   kept as base64 text, not a BLOB: one column type on both engines, and `tuneloop db copy` carries it
    #   byte for byte like every other text column.
    # - scheduler_leader: one row, who took the leader lock last (host, pid, since) and, on PostgreSQL, the
    #   server process of the session holding it; `tuneloop scheduler status` shows it while the lock is held.
    postgres = getattr(db, "dialect", "sqlite") == "postgresql"
    text = 'text COLLATE "C"' if postgres else "TEXT"
    db.execute(
        f"""
        CREATE TABLE scheduler_jobs (
            id {text} PRIMARY KEY,
            next_run_time {"double precision" if postgres else "REAL"},
            job_state {text} NOT NULL
            {", rowid bigint GENERATED BY DEFAULT AS IDENTITY" if postgres else ""}
        )
        """
    )
    db.execute("CREATE INDEX scheduler_jobs_next ON scheduler_jobs(next_run_time)")
    integer = "bigint" if postgres else "INTEGER"
    db.execute(
        f"""
        CREATE TABLE scheduler_leader (
            id {integer} PRIMARY KEY CHECK (id = 1),
            host {text} NOT NULL,
            pid {integer} NOT NULL,
            started_at {text} NOT NULL,
            backend_pid {integer}
            {", rowid bigint GENERATED ALWAYS AS (id) STORED" if postgres else ""}
        )
        """
    )


@MIGRATIONS()
def m015_one_open_pipeline_run_per_kind(db: Database) -> None:
    # open_run resumes the open (pending or running) run of a kind or starts one; with schedulers and CLIs on
    # several hosts the store itself must refuse a second open run of one kind. A store that somehow holds more
    # than one keeps the newest open; the older ones are closed as failed, saying why.
    db.execute(
        """
        UPDATE pipeline_runs SET state = 'failed', finished_at = started_at,
            error = 'closed by migration m015: a newer run of this kind was open'
        WHERE state IN ('pending', 'running') AND EXISTS (
            SELECT 1 FROM pipeline_runs newer
            WHERE newer.kind = pipeline_runs.kind AND newer.state IN ('pending', 'running')
              AND (newer.started_at > pipeline_runs.started_at
                   OR (newer.started_at = pipeline_runs.started_at AND newer.rowid > pipeline_runs.rowid))
        )
        """
    )
    db.execute(
        "CREATE UNIQUE INDEX pipeline_runs_one_open ON pipeline_runs(kind) WHERE state IN ('pending', 'running')"
    )


@MIGRATIONS()
def m016_training_run_heartbeat(db: Database) -> None:
    # The local worker writes `heartbeat_at` every few seconds while it lives. A scheduler on another host
    # (after a leader change) cannot look for the worker's process; it judges the run by this age instead.
    text = 'text COLLATE "C"' if getattr(db, "dialect", "sqlite") == "postgresql" else "TEXT"
    db.execute(f"ALTER TABLE training_runs ADD COLUMN heartbeat_at {text}")


@MIGRATIONS()
def m017_report_answered_ok_index(db: Database) -> None:
    # The weekly report counts each version's answers that did not fail and samples their latencies, per week.
    # On SQLite messages_version_time_question covers that; on PostgreSQL it cannot hold the free-text error
    # column (an entry must fit in a page), so each week's count read every row from the table: 7.6 s for the
    # report at 1M turns. An index of the answers without an error holds what those queries read, on both
    # engines, so they are index-only scans (docs/benchmarks.md "PostgreSQL (issue 18)"). Rows with no version
    # (the users' messages, half the table) are left out.
    if getattr(db, "dialect", "sqlite") == "postgresql":  # feedback.db imports this module, not the reverse
        # rowid is the latency sample's spreading key; SQLite's is in every index already.
        columns = "(model_version_id, created_at) INCLUDE (latency_ms, rowid)"
    else:
        columns = "(model_version_id, created_at, latency_ms)"
    db.execute(
        f"CREATE INDEX messages_version_time_answered_ok ON messages{columns}"
        " WHERE error IS NULL AND model_version_id IS NOT NULL"
    )
