-- portcullis schema, version 2: the counters every replica shares (the login guard and the
-- limits of account operations), so that a lockout holds on every replica and survives a
-- replica's restart.

-- Failed logins per account (the SHA-256 of the lower-cased address, never the address).
CREATE TABLE login_failures (
    account       text PRIMARY KEY,
    count         integer NOT NULL,
    last_failure  bigint NOT NULL,
    blocked_until bigint NOT NULL
);
CREATE INDEX login_failures_last ON login_failures (last_failure);

-- GCRA state per limited key (SHA-256 of scope and key): the theoretical arrival time, ms.
CREATE TABLE limit_state (
    key    text PRIMARY KEY,
    tat_ms bigint NOT NULL
);
CREATE INDEX limit_state_tat ON limit_state (tat_ms);
