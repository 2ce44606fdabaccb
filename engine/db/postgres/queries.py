"""Every statement the engine runs on PostgreSQL, by name (the same names as engine/db/sqlite/queries.py).

Parameters are written `?` (positional) or `:name` (named) as in the SQLite module; the connection turns
them into asyncpg's `$n`. Claims lock with `FOR UPDATE SKIP LOCKED`; `jobs.seq` orders the queue.
"""

# -- users -----------------------------------------------------------------------------------------------
USER_INSERT_IF_NEW = (
    "INSERT INTO users(id, platform, chat, created_at, last_active_at) VALUES (?,?,?,?,?) "
    "ON CONFLICT (id) DO NOTHING"
)
USER_TOUCH = "UPDATE users SET last_active_at=?, chat=COALESCE(?::bytea, chat) WHERE id=?"
USER_GET = "SELECT * FROM users WHERE id=?"
USER_SET_MODEL_RETENTION = "UPDATE users SET model_retention=? WHERE id=?"
USER_SET_MESSAGE_RETENTION = "UPDATE users SET message_retention=? WHERE id=?"
USER_LANGUAGES = "SELECT language, platform_language FROM users WHERE id=?"
USER_SET_LANGUAGE = "UPDATE users SET language=? WHERE id=?"
USER_SET_PLATFORM_LANGUAGE = "UPDATE users SET platform_language=? WHERE id=?"
# A worker writing results holds its job row (JOB_IS_CURRENT ... FOR UPDATE): the erase takes the
# user's job rows first, so it waits for those results and then deletes them too.
USER_ERASE_LOCK = "SELECT id FROM jobs WHERE user_id=? FOR UPDATE"
USER_ERASE = {  # table -> statement deleting one user's rows
    "sent_messages": "DELETE FROM sent_messages WHERE user_id=?",
    "deliveries": "DELETE FROM deliveries WHERE user_id=?",
    "outputs": "DELETE FROM outputs WHERE user_id=?",
    "deadlines": "DELETE FROM deadlines WHERE user_id=?",
    "jobs": "DELETE FROM jobs WHERE user_id=?",
    "adapters": "DELETE FROM adapters WHERE user_id=?",
    "photos": "DELETE FROM photos WHERE user_id=?",
    "consents": "DELETE FROM consents WHERE user_id=?",
    "admissions": "DELETE FROM admissions WHERE user_id=?",
    "users": "DELETE FROM users WHERE id=?",
}
USER_IDS = "SELECT id FROM users"

# -- consents ----------------------------------------------------------------------------------------------
CONSENT_CURRENT = (
    "SELECT policy_version, language, attested, given_at FROM consents WHERE user_id=? AND withdrawn_at IS NULL "
    "ORDER BY given_at DESC LIMIT 1"
)
CONSENT_WITHDRAW_ALL = "UPDATE consents SET withdrawn_at=? WHERE user_id=? AND withdrawn_at IS NULL"
CONSENT_INSERT = (
    "INSERT INTO consents(id, user_id, policy_version, language, attested, given_at) VALUES (?,?,?,?,?,?)"
)

# -- photos ------------------------------------------------------------------------------------------------
PHOTO_COUNT = "SELECT COUNT(*) AS n FROM photos WHERE user_id=?"
PHOTO_FINGERPRINTS = "SELECT id, fingerprint FROM photos WHERE user_id=?"
PHOTO_IDS = "SELECT id FROM photos WHERE user_id=? ORDER BY created_at"
PHOTO_INSERT = "INSERT INTO photos(id, user_id, fingerprint, width, height, created_at) VALUES (?,?,?,?,?,?)"
PHOTO_DELETE = "DELETE FROM photos WHERE id=?"

# -- adapters ----------------------------------------------------------------------------------------------
ADAPTER_LATEST = "SELECT * FROM adapters WHERE user_id=? ORDER BY created_at DESC LIMIT 1"
ADAPTER_IDS = "SELECT id FROM adapters WHERE user_id=?"
ADAPTER_INSERT = (
    "INSERT INTO adapters(id, user_id, token, losses, signature, created_at, last_used_at) "
    "VALUES (?,?,?,?,?,?,?)"
)
ADAPTER_TOUCH = "UPDATE adapters SET last_used_at=? WHERE id=?"
ADAPTER_DELETE = "DELETE FROM adapters WHERE id=?"

# -- outputs -----------------------------------------------------------------------------------------------
OUTPUT_INSERT = (
    "INSERT INTO outputs(id, user_id, job_id, preset, position, faces, likeness, below_minimum, created_at) "
    "VALUES (?,?,?,?,?,?,?,?,?)"
)
OUTPUT_IDS_OF_JOB = "SELECT id FROM outputs WHERE job_id=? ORDER BY position"
OUTPUT_SCORES_OF_JOB = (
    "SELECT id, faces, likeness, below_minimum FROM outputs WHERE job_id=? ORDER BY position"
)
OUTPUT_COUNT = "SELECT COUNT(*) AS n FROM outputs WHERE user_id=?"
OUTPUT_DELETE = "DELETE FROM outputs WHERE id=?"

# -- deliveries (the outbox) -------------------------------------------------------------------------------
DELIVERY_ADD = (
    "INSERT INTO deliveries(id, user_id, job_id, kind, state, created_at) "
    "VALUES (?,?,?,?,'pending',?) ON CONFLICT (job_id) DO NOTHING"
)
DELIVERY_PENDING = (
    "SELECT d.* FROM deliveries d JOIN users u ON u.id = d.user_id "
    "WHERE d.state='pending' AND u.platform=? AND d.not_before <= ? ORDER BY d.created_at"
)
DELIVERY_RETRY_ALL_NOW = "UPDATE deliveries SET not_before=0 WHERE state='pending'"
DELIVERY_ATTEMPTS = "SELECT attempts FROM deliveries WHERE id=?"
DELIVERY_BACK_OFF = "UPDATE deliveries SET attempts=?, state=?, not_before=? WHERE id=?"
DELIVERY_SENT = "UPDATE deliveries SET state='sent', sent_at=?, attempts=attempts+1 WHERE id=?"
DELIVERY_PART_SENT = "UPDATE deliveries SET parts_sent=? WHERE id=? AND parts_sent<? AND state='pending'"

# -- messages the bot sent ---------------------------------------------------------------------------------
MESSAGE_INSERT = (
    "INSERT INTO sent_messages(id, user_id, message_id, job_id, kind, sent_at) VALUES (?,?,?,?,?,?)"
)
MESSAGE_PROGRESS_OF_JOB = "SELECT message_id FROM sent_messages WHERE job_id=? AND kind='progress'"
MESSAGE_IDS_OF_USER = "SELECT message_id FROM sent_messages WHERE user_id=?"
MESSAGE_RESULTS_OF_USER = "SELECT id, sent_at FROM sent_messages WHERE user_id=? AND kind='result'"
MESSAGE_TARGET = (
    "SELECT m.message_id, u.platform FROM sent_messages m JOIN users u ON u.id = m.user_id "
    "WHERE m.id=? AND m.user_id=?"
)
MESSAGE_DELETE = "DELETE FROM sent_messages WHERE id=?"

# -- deadlines ---------------------------------------------------------------------------------------------
DEADLINE_SET = (
    "INSERT INTO deadlines(id, user_id, kind, ref_id, due_at) VALUES (?,?,?,?,?) "
    "ON CONFLICT(kind, ref_id) DO UPDATE SET due_at=excluded.due_at"
)
DEADLINE_CLEAR = "DELETE FROM deadlines WHERE kind=? AND ref_id=?"
DEADLINE_DUE = "SELECT user_id, kind, ref_id FROM deadlines WHERE due_at <= ? ORDER BY due_at"
DEADLINE_NEXT = "SELECT MIN(due_at) AS due FROM deadlines"
DEADLINE_FIRST_OF_USER = "SELECT MIN(due_at) AS due FROM deadlines WHERE user_id=? AND kind=?"

# -- jobs (the queue) --------------------------------------------------------------------------------------
JOB_INSERT = (
    "INSERT INTO jobs(id, user_id, kind, payload, state, max_attempts, not_before, created_at) "
    "VALUES (?,?,?,?,'queued',?,?,?)"
)
JOB_GET = "SELECT * FROM jobs WHERE id=?"
JOB_SET_METADATA = "UPDATE jobs SET metadata=? WHERE id=?"
JOB_ACTIVE_OF_USER = "SELECT * FROM jobs WHERE user_id=? AND state IN ('queued','running') ORDER BY seq"
# The next job: each user's oldest active job only (one running job per user, in order), queued and due
# or running with an expired lease, of a kind this worker takes (`:kinds` is ',train,generate,' or '*'); the user
# served least recently first (round robin).
# Rows another worker is claiming right now are skipped, not waited for.
JOB_NEXT = """
    SELECT j.* FROM jobs j
    WHERE j.seq = (SELECT MIN(k.seq) FROM jobs k
                   WHERE k.user_id = j.user_id AND k.state IN ('queued','running'))
      AND ((j.state = 'queued' AND j.not_before <= :now)
           OR (j.state = 'running' AND j.lease_until < :now))
      AND (:kinds = '*' OR strpos(:kinds, ',' || j.kind || ',') > 0)
    ORDER BY (SELECT COALESCE(MAX(s.started_at), 0) FROM jobs s WHERE s.user_id = j.user_id), j.seq
    LIMIT 1
    FOR UPDATE OF j SKIP LOCKED
"""
JOB_FAIL_ABANDONED = "UPDATE jobs SET state='failed', error=?, finished_at=?, lease_until=NULL WHERE id=?"
JOB_LEASE = (
    "UPDATE jobs SET state='running', attempts=attempts+1, lease_until=?, worker=?, started_at=?, "
    "error=NULL WHERE id=?"
)
JOB_HEARTBEAT = (
    "UPDATE jobs SET lease_until=?, progress=?, stage=? WHERE id=? AND state='running' AND attempts=?"
)
# Locks the row until the results' transaction ends: a takeover of an expired lease (which skips locked
# rows) or a cancellation waits, so results are written only while this attempt owns the job.
JOB_IS_CURRENT = "SELECT 1 FROM jobs WHERE id=? AND state='running' AND attempts=? FOR UPDATE"
JOB_FINISH = (
    "UPDATE jobs SET state='done', progress=1, stage='done', finished_at=?, lease_until=NULL "
    "WHERE id=? AND state='running' AND attempts=?"
)
JOB_STARTED_AT = "SELECT started_at FROM jobs WHERE id=?"
JOB_FAIL = (
    "UPDATE jobs SET state=?, error=?, not_before=?, lease_until=NULL, "
    "finished_at=CASE WHEN ?::text='failed' THEN ?::float8 ELSE NULL END "
    "WHERE id=? AND state='running' AND attempts=?"
)
JOB_RELEASE = (
    "UPDATE jobs SET state='queued', attempts=attempts-1, lease_until=NULL, worker=NULL "
    "WHERE id=? AND state='running' AND attempts=?"
)
JOB_CANCEL = (
    "UPDATE jobs SET state='cancelled', lease_until=NULL, finished_at=? "
    "WHERE id=? AND user_id=? AND state IN ('queued','running')"
)
JOB_CANCEL_ALL_OF_USER = (
    "UPDATE jobs SET state='cancelled', lease_until=NULL, finished_at=? "
    "WHERE user_id=? AND state IN ('queued','running')"
)
JOB_EXPIRE = (
    "UPDATE jobs SET state='cancelled', error='expired', lease_until=NULL "
    "WHERE id=? AND state IN ('queued','running')"
)
JOB_AHEAD = (
    "SELECT kind, state, progress FROM jobs WHERE state IN ('queued','running') "
    "AND seq < (SELECT seq FROM jobs WHERE id=?)"
)
JOB_RUNNING_WITH_PROGRESS_MESSAGE = (
    "SELECT j.id, j.user_id, j.progress, j.stage, m.message_id FROM jobs j "
    "JOIN sent_messages m ON m.job_id = j.id AND m.kind='progress' "
    "JOIN users u ON u.id = j.user_id WHERE u.platform=? AND j.state='running'"
)
DURATION_INSERT = "INSERT INTO job_durations(kind, seconds, finished_at) VALUES (?,?,?)"
DURATION_MEAN = (
    "SELECT AVG(seconds) AS mean FROM (SELECT seconds FROM job_durations WHERE kind=? "
    "ORDER BY finished_at DESC LIMIT 20) AS recent"
)

# -- usage (quotas and admission) --------------------------------------------------------------------------
# Units in use: the user's jobs of a kind created since a time, except those cancelled or failed (a
# cancelled or failed job gives its unit back). Oldest first, for the renewal time.
USAGE_SINCE = (
    "SELECT created_at FROM jobs WHERE user_id=? AND kind=? AND created_at > ? "
    "AND state NOT IN ('cancelled','failed') ORDER BY created_at"
)
USAGE_QUEUED = "SELECT COUNT(*) AS n FROM jobs WHERE state='queued'"
USAGE_ACTIVE = "SELECT kind, state, progress FROM jobs WHERE state IN ('queued','running') ORDER BY seq"

# -- access: admissions, invites, blocks, service flags ----------------------------------------------------
ADMISSION_GET = "SELECT admitted_at FROM admissions WHERE user_id=?"
ADMISSION_ADD = "INSERT INTO admissions(user_id, admitted_at) VALUES (?,?) ON CONFLICT(user_id) DO NOTHING"
ADMISSION_IDS = "SELECT user_id AS id FROM admissions"
INVITE_INSERT = "INSERT INTO invites(id, code_hash, uses_left, expires_at, created_at) VALUES (?,?,?,?,?)"
INVITE_USE = "UPDATE invites SET uses_left=uses_left-1 WHERE code_hash=? AND uses_left > 0 AND expires_at > ?"
INVITE_PRUNE = "DELETE FROM invites WHERE uses_left <= 0 OR expires_at <= ?"
BLOCK_ADD = "INSERT INTO blocks(ref, blocked_at) VALUES (?,?) ON CONFLICT(ref) DO NOTHING"
BLOCK_REMOVE = "DELETE FROM blocks WHERE ref=?"
BLOCK_GET = "SELECT 1 AS blocked FROM blocks WHERE ref=?"
FLAG_GET = "SELECT value FROM service_flags WHERE name=?"
FLAG_SET = (
    "INSERT INTO service_flags(name, value, updated_at) VALUES (?,?,?) "
    "ON CONFLICT(name) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at"
)

# -- aggregates for operators and metrics (numbers only) ---------------------------------------------------
STATS_CONSENTED = "SELECT COUNT(DISTINCT user_id) AS n FROM consents WHERE withdrawn_at IS NULL"
STATS_MODELS = "SELECT COUNT(*) AS n FROM adapters"
STATS_JOBS_BY_STATE = (
    "SELECT kind, state, COUNT(*) AS n FROM jobs WHERE state IN ('queued','running') GROUP BY kind, state"
)
STATS_FAILED_SINCE = "SELECT COUNT(*) AS n FROM jobs WHERE state='failed' AND finished_at > ?"
STATS_DURATIONS = "SELECT seconds FROM job_durations WHERE kind=? ORDER BY finished_at DESC LIMIT 100"
STATS_DELIVERIES_PENDING = "SELECT COUNT(*) AS n FROM deliveries WHERE state='pending'"
STATS_DEADLINES_OVERDUE = "SELECT COUNT(*) AS n FROM deadlines WHERE due_at <= ?"
STATS_PING = "SELECT 1 AS ok"

# -- audit -------------------------------------------------------------------------------------------------
AUDIT_INSERT = "INSERT INTO audit(at, action, detail, actor) VALUES (?,?,?,?)"
AUDIT_OPERATOR_ACTIONS = (
    "SELECT at, action, detail, actor FROM audit WHERE actor IS NOT NULL ORDER BY id DESC LIMIT ?"
)


# -- export (/mydata): what is stored about one user, per table --------------------------------------------
EXPORT = {
    "consents": "SELECT policy_version, language, attested, given_at, withdrawn_at FROM consents WHERE user_id=?",
    "photos": "SELECT id, width, height, created_at FROM photos WHERE user_id=?",
    "adapters": "SELECT id, created_at, last_used_at, losses FROM adapters WHERE user_id=?",
    "outputs": "SELECT id, preset, faces, likeness, created_at, delivered_at FROM outputs WHERE user_id=?",
    "jobs": "SELECT id, kind, state, progress, stage, error, created_at, finished_at FROM jobs WHERE user_id=?",
    "deadlines": "SELECT kind, ref_id, due_at FROM deadlines WHERE user_id=?",
    "sent_messages": "SELECT kind, sent_at FROM sent_messages WHERE user_id=?",
    "admissions": "SELECT admitted_at FROM admissions WHERE user_id=?",
}

# -- wake-ups and exclusive runs ---------------------------------------------------------------------------
NOTIFY_JOBS = "SELECT pg_notify('likeness_jobs', '')"
