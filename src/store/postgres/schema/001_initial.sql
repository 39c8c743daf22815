-- portcullis schema, version 1. Applied once, under an advisory lock, by the first replica
-- that starts; every statement here runs in one transaction.

CREATE TABLE users (
    id               text PRIMARY KEY,
    email            text NOT NULL,
    -- lower-cased, trimmed: unique regardless of case
    email_key        text NOT NULL CONSTRAINT users_email_unique UNIQUE,
    nickname         text NOT NULL,
    nickname_key     text NOT NULL CONSTRAINT users_nickname_unique UNIQUE,
    password_hash    text NOT NULL,
    passphrase_hash  text NOT NULL,
    customer_account text NOT NULL,
    role             text NOT NULL,
    locked           boolean NOT NULL,
    email_verified   boolean NOT NULL,
    created_at       bigint NOT NULL,
    updated_at       bigint NOT NULL,
    security_stamp   bigint NOT NULL
);
CREATE INDEX users_active_admins ON users (id) WHERE role = 'admin' AND NOT locked;

CREATE TABLE sessions (
    id         text PRIMARY KEY,
    user_id    text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    last_seen  bigint NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_last_seen ON sessions (last_seen);

CREATE TABLE verifications (
    token_hash text PRIMARY KEY,
    user_id    text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email      text NOT NULL,
    expires_at bigint NOT NULL
);

CREATE TABLE mail_queue (
    id              bigserial PRIMARY KEY,
    recipient       text NOT NULL,
    subject         text NOT NULL,
    body            text NOT NULL,
    attempts        integer NOT NULL,
    next_attempt_at bigint NOT NULL,
    -- a replica sending this mail holds it until then (unix seconds)
    claimed_until   bigint NOT NULL DEFAULT 0
);
CREATE INDEX mail_queue_due ON mail_queue (next_attempt_at);
