-- Console sessions ended by sign-out (issue 16): a session token is stateless, so a copy of it would
-- work until it expires; its id is kept here until then, and refused. Rows past `expires_at` are purged.
CREATE TABLE signed_out_sessions (
    -- The token's `jti`: ses_ + ULID.
    token_id    TEXT PRIMARY KEY,
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX signed_out_sessions_expires ON signed_out_sessions (expires_at);
