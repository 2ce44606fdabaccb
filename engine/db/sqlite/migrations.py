"""The SQLite schema, as versioned migrations (`PRAGMA user_version` counts the ones applied).

Append a new string to add a migration; never edit one that has shipped.
"""

MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,              -- pseudonym: keyed hash of platform + platform user id
        platform TEXT NOT NULL,
        chat BLOB,                        -- sealed: where to deliver (platform chat id, user id)
        model_retention REAL,             -- user's own choice (seconds), NULL = operator default
        message_retention REAL,           -- user's own choice (seconds), NULL = operator default, 0 = off
        created_at REAL NOT NULL,
        last_active_at REAL NOT NULL
    );
    CREATE TABLE consents (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        policy_version TEXT NOT NULL,
        attested TEXT NOT NULL,
        given_at REAL NOT NULL,
        withdrawn_at REAL
    );
    CREATE TABLE photos (
        id TEXT PRIMARY KEY,              -- also the blob id of the encrypted face crop
        user_id TEXT NOT NULL REFERENCES users(id),
        fingerprint BLOB NOT NULL,        -- sealed: face embedding + perceptual hash
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE adapters (
        id TEXT PRIMARY KEY,              -- also the blob id of the encrypted LoRA
        user_id TEXT NOT NULL REFERENCES users(id),
        token TEXT NOT NULL,
        losses TEXT NOT NULL,             -- JSON list of floats, no personal data
        created_at REAL NOT NULL,
        last_used_at REAL NOT NULL
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        kind TEXT NOT NULL,               -- 'train' | 'generate'
        payload TEXT NOT NULL,            -- JSON, no personal data
        state TEXT NOT NULL,              -- queued | running | done | failed | cancelled
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        not_before REAL NOT NULL,
        lease_until REAL,
        worker TEXT,
        progress REAL NOT NULL DEFAULT 0,
        stage TEXT NOT NULL DEFAULT '',
        error TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX jobs_state ON jobs(state, not_before);
    CREATE TABLE outputs (
        id TEXT PRIMARY KEY,              -- also the blob id of the encrypted portrait
        user_id TEXT NOT NULL REFERENCES users(id),
        job_id TEXT NOT NULL,
        preset TEXT NOT NULL,
        position INTEGER NOT NULL,
        created_at REAL NOT NULL,
        delivered_at REAL
    );
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,              -- outbox: one row per finished job to send
        user_id TEXT NOT NULL REFERENCES users(id),
        job_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,               -- trained | portraits | failed
        state TEXT NOT NULL,              -- pending | sent | undeliverable
        attempts INTEGER NOT NULL DEFAULT 0,
        not_before REAL NOT NULL DEFAULT 0, -- retry backoff after a failed send
        created_at REAL NOT NULL,
        sent_at REAL
    );
    CREATE TABLE sent_messages (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        message_id TEXT NOT NULL,
        job_id TEXT,                      -- the job a progress message follows
        kind TEXT NOT NULL,               -- 'result' | 'progress'
        sent_at REAL NOT NULL
    );
    CREATE TABLE deadlines (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        kind TEXT NOT NULL,               -- photos | adapter | output | message | job
        ref_id TEXT NOT NULL,
        due_at REAL NOT NULL,
        UNIQUE(kind, ref_id)
    );
    CREATE INDEX deadlines_due ON deadlines(due_at);
    CREATE TABLE job_durations (          -- measured durations for ETAs, no user reference
        kind TEXT NOT NULL,
        seconds REAL NOT NULL,
        finished_at REAL NOT NULL
    );
    CREATE TABLE audit (                  -- what happened, never to whom
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    """,
    # 2: likeness (docs/likeness.md): the face signature kept with the model, each portrait's score, and
    # the job's raw candidate distances (never logged)
    """
    ALTER TABLE adapters ADD COLUMN signature BLOB;          -- sealed: mean face descriptor of the photos
    ALTER TABLE outputs ADD COLUMN faces INTEGER;            -- faces found in the portrait, NULL: not scored
    ALTER TABLE outputs ADD COLUMN likeness INTEGER;         -- 0-100, NULL: no face or no signature
    ALTER TABLE outputs ADD COLUMN below_minimum INTEGER NOT NULL DEFAULT 0;  -- 1: under the minimum
    ALTER TABLE jobs ADD COLUMN metadata TEXT;               -- JSON: every candidate's faces and distance
    """,
    # 3: the outbox remembers how many parts of a delivery the platform accepted, so a restart never
    #    repeats an acknowledged send
    """
    ALTER TABLE deliveries ADD COLUMN parts_sent INTEGER NOT NULL DEFAULT 0
    """,
    # 4: running in public: admissions, invite codes, blocks, service flags, operator audit
    """
    CREATE TABLE admissions (             -- users admitted by an invite code (no link to the code)
        user_id TEXT PRIMARY KEY,         -- pseudonym
        admitted_at REAL NOT NULL
    );
    CREATE TABLE invites (
        id TEXT PRIMARY KEY,
        code_hash TEXT NOT NULL UNIQUE,   -- keyed hash of the code (the code itself is never stored)
        uses_left INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE blocks (                 -- keyed by support reference: kept after /forget
        ref TEXT PRIMARY KEY,
        blocked_at REAL NOT NULL
    );
    CREATE TABLE service_flags (          -- operator switches, e.g. paused
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    ALTER TABLE audit ADD COLUMN actor TEXT;  -- the operator's pseudonym for operator actions
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
