"""The PostgreSQL schema, as versioned migrations (the `schema_version` table counts the ones applied).

Times are epoch seconds in DOUBLE PRECISION, sealed values BYTEA. `jobs.seq` gives the queue the order
SQLite's rowid gives it. Append a new string to add a migration; never edit one that has shipped.
"""

MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        platform TEXT NOT NULL,
        chat BYTEA,
        model_retention DOUBLE PRECISION,
        message_retention DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        last_active_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE consents (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        policy_version TEXT NOT NULL,
        attested TEXT NOT NULL,
        given_at DOUBLE PRECISION NOT NULL,
        withdrawn_at DOUBLE PRECISION
    );
    CREATE TABLE photos (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        fingerprint BYTEA NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE adapters (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        token TEXT NOT NULL,
        losses TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE jobs (
        seq BIGSERIAL UNIQUE,
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        not_before DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION,
        worker TEXT,
        progress DOUBLE PRECISION NOT NULL DEFAULT 0,
        stage TEXT NOT NULL DEFAULT '',
        error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION
    );
    CREATE INDEX jobs_state ON jobs(state, not_before);
    CREATE INDEX jobs_user ON jobs(user_id, seq);
    CREATE TABLE outputs (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        job_id TEXT NOT NULL,
        preset TEXT NOT NULL,
        position INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        delivered_at DOUBLE PRECISION
    );
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        job_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        sent_at DOUBLE PRECISION
    );
    CREATE TABLE sent_messages (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        message_id TEXT NOT NULL,
        job_id TEXT,
        kind TEXT NOT NULL,
        sent_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE deadlines (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        kind TEXT NOT NULL,
        ref_id TEXT NOT NULL,
        due_at DOUBLE PRECISION NOT NULL,
        UNIQUE(kind, ref_id)
    );
    CREATE INDEX deadlines_due ON deadlines(due_at);
    CREATE TABLE job_durations (
        kind TEXT NOT NULL,
        seconds DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE audit (
        id BIGSERIAL PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    )
    """,
    # 2: likeness (docs/likeness.md): the face signature kept with the model, each portrait's score, and
    # the job's raw candidate distances (never logged)
    """
    ALTER TABLE adapters ADD COLUMN signature BYTEA;
    ALTER TABLE outputs ADD COLUMN faces INTEGER;
    ALTER TABLE outputs ADD COLUMN likeness INTEGER;
    ALTER TABLE outputs ADD COLUMN below_minimum INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN metadata TEXT
    """,
    # 3: the outbox remembers how many parts of a delivery the platform accepted
    """
    ALTER TABLE deliveries ADD COLUMN parts_sent INTEGER NOT NULL DEFAULT 0
    """,
    # 4: running in public: admissions, invite codes, blocks, service flags, operator audit
    """
    CREATE TABLE admissions (
        user_id TEXT PRIMARY KEY,
        admitted_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE invites (
        id TEXT PRIMARY KEY,
        code_hash TEXT NOT NULL UNIQUE,
        uses_left INTEGER NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE blocks (
        ref TEXT PRIMARY KEY,
        blocked_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE service_flags (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    ALTER TABLE audit ADD COLUMN actor TEXT;
    CREATE INDEX jobs_user_kind ON jobs(user_id, kind, created_at)
    """,
    # 5: languages. users.language: the user's /language choice (NULL: none); users.platform_language: the
    # language their platform last reported; consents.language: the language of the policy text agreed to
    # (every consent before this was to the English text).
    """
    ALTER TABLE users ADD COLUMN language TEXT;
    ALTER TABLE users ADD COLUMN platform_language TEXT;
    ALTER TABLE consents ADD COLUMN language TEXT NOT NULL DEFAULT 'en'
    """,
]
