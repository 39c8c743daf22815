//! Group commit for the audit log on PostgreSQL: concurrent writers hand their events to one
//! task, which inserts everything waiting in one statement and one commit, then answers each
//! writer. Every caller still returns only once its events are committed; under load one
//! commit (and one fsync) serves many requests instead of one each.

use super::{db_err, outcome_name, pool_err};
use crate::store::models::AuditEvent;
use crate::store::StoreError;
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<(), String>>;

/// Most events in one commit.
const MAX_BATCH: usize = 1000;

pub struct AuditWriter {
    queue: mpsc::UnboundedSender<(Vec<AuditEvent>, Reply)>,
}

impl AuditWriter {
    /// Start the writer task on `runtime`; it ends when the writer is dropped.
    pub fn start(runtime: &tokio::runtime::Handle, pool: Pool) -> AuditWriter {
        let (queue, incoming) = mpsc::unbounded_channel();
        runtime.spawn(write(pool, incoming));
        AuditWriter { queue }
    }

    /// Append `events` durably, together with whatever other writers are waiting.
    pub async fn append(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Storage("the audit writer has stopped".into());
        self.queue.send((events, reply)).map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(StoreError::Unavailable)
    }
}

async fn write(pool: Pool, mut incoming: mpsc::UnboundedReceiver<(Vec<AuditEvent>, Reply)>) {
    while let Some(first) = incoming.recv().await {
        let mut batch = vec![first];
        let mut count = batch[0].0.len();
        while count < MAX_BATCH {
            match incoming.try_recv() {
                Ok(more) => {
                    count += more.0.len();
                    batch.push(more);
                }
                Err(_) => break,
            }
        }
        let events: Vec<&AuditEvent> = batch.iter().flat_map(|(e, _)| e.iter()).collect();
        let result = insert(&pool, &events).await.map_err(|e| e.to_string());
        for (_, reply) in batch {
            let _ = reply.send(result.clone());
        }
    }
}

async fn insert(pool: &Pool, events: &[&AuditEvent]) -> Result<(), StoreError> {
    let client = pool.get().await.map_err(pool_err)?;
    let at: Vec<i64> = events.iter().map(|e| e.at).collect();
    let kind: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let outcome: Vec<&str> = events.iter().map(|e| outcome_name(e.outcome)).collect();
    let user_id: Vec<Option<&str>> = events.iter().map(|e| e.user_id.as_deref()).collect();
    let actor: Vec<Option<&str>> = events.iter().map(|e| e.actor.as_deref()).collect();
    let request_id: Vec<&str> = events.iter().map(|e| e.request_id.as_str()).collect();
    let client_ip: Vec<&str> = events.iter().map(|e| e.client_ip.as_str()).collect();
    let detail: Vec<Option<&str>> = events.iter().map(|e| e.detail.as_deref()).collect();
    // One statement: the events keep their order in the sequence.
    client
        .execute(
            "INSERT INTO audit_events (at, kind, outcome, user_id, actor, request_id, client_ip,
                 detail)
             SELECT a, b, c, d, f, g, h, i
             FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[],
                 $6::text[], $7::text[], $8::text[]) WITH ORDINALITY AS e(a, b, c, d, f, g, h, i, n)
             ORDER BY n",
            &[
                &at,
                &kind,
                &outcome,
                &user_id,
                &actor,
                &request_id,
                &client_ip,
                &detail,
            ],
        )
        .await
        .map_err(db_err)?;
    Ok(())
}
