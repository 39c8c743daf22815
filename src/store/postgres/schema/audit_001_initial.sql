-- portcullis audit schema, version 1 (in the main database, or in its own).

CREATE TABLE audit_events (
    seq        bigserial PRIMARY KEY,
    at         bigint NOT NULL,
    kind       text NOT NULL,
    outcome    text NOT NULL,
    user_id    text,
    actor      text,
    request_id text NOT NULL,
    client_ip  text NOT NULL,
    detail     text
);
CREATE INDEX audit_events_at ON audit_events (at);
