-- The audit log (issue 20): every action that changes money or access, with who did it, the request,
-- and the values before and after. Written in the transaction of the change it records, so it holds
-- exactly the changes that committed. Never a key, secret, password hash or token (see src/audit.rs).
CREATE TABLE audit_log (
    id                 BIGSERIAL PRIMARY KEY,
    action             TEXT NOT NULL,
    -- Who: an account through its session, a key, an admin session, the CLI, or the gateway itself.
    actor_kind         TEXT NOT NULL CHECK (actor_kind IN ('account', 'key', 'admin', 'cli', 'system')),
    actor_id           TEXT,
    -- The visible prefix of the key that acted (or that the acting session signed in with).
    actor_key_prefix   TEXT,
    -- What: the account changed, and the key, order or code batch when there is one.
    target_account_id  BIGINT,
    target_id          TEXT,
    request_id         TEXT,
    before             JSONB,
    after              JSONB,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_action ON audit_log (action, id DESC);
CREATE INDEX audit_log_account ON audit_log (target_account_id, id DESC);
CREATE INDEX audit_log_actor ON audit_log (actor_kind, actor_id, id DESC);
CREATE INDEX audit_log_created ON audit_log (created_at);
