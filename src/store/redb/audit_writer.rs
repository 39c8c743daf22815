//! Group commit for the audit log: concurrent writers hand their events to one writer thread,
//! which commits everything that is waiting in a single durable transaction and then answers
//! each writer. Every caller still returns only once its events are on disk; under load one
//! fsync serves many requests instead of one each.

use super::db::Db;
use crate::store::models::AuditEvent;
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<(), String>>;

pub struct AuditWriter {
    queue: Option<mpsc::Sender<(Vec<AuditEvent>, Reply)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuditWriter {
    /// Start the writer thread. Dropping the `AuditWriter` waits for it to finish, so the
    /// store is released when the writer is.
    pub fn start(store: Arc<Db>) -> std::io::Result<AuditWriter> {
        let (queue, incoming) = mpsc::channel::<(Vec<AuditEvent>, Reply)>();
        let thread = std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || {
                while let Ok(first) = incoming.recv() {
                    let mut batch = vec![first];
                    while let Ok(more) = incoming.try_recv() {
                        batch.push(more);
                    }
                    let events: Vec<AuditEvent> = batch
                        .iter_mut()
                        .flat_map(|(events, _)| std::mem::take(events))
                        .collect();
                    let result = store.append_audit(&events).map_err(|e| e.to_string());
                    for (_, reply) in batch {
                        let _ = reply.send(result.clone());
                    }
                }
            })?;
        Ok(AuditWriter {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Append `events` durably, together with whatever other writers are waiting.
    pub async fn append(&self, events: Vec<AuditEvent>) -> Result<(), String> {
        if events.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .as_ref()
            .ok_or_else(|| "the audit writer has stopped".to_string())?
            .send((events, reply))
            .map_err(|_| "the audit writer has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the audit writer has stopped".to_string())?
    }
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::models::{AuditFilter, AuditKind, Outcome};

    fn event(i: i64) -> AuditEvent {
        AuditEvent {
            seq: 0,
            at: 1_000 + i,
            kind: AuditKind::Verify,
            outcome: Outcome::Success,
            user_id: Some(format!("u{i}")),
            actor: None,
            request_id: "r".into(),
            client_ip: "127.0.0.1".into(),
            detail: None,
        }
    }

    #[test]
    fn concurrent_writers_all_land_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Db::open(
                &dir.path().join("main.redb"),
                &dir.path().join("audit.redb"),
            )
            .unwrap(),
        );
        let writer = Arc::new(AuditWriter::start(store.clone()).unwrap());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        runtime.block_on(async {
            let tasks: Vec<_> = (0..200)
                .map(|i| {
                    let writer = writer.clone();
                    tokio::spawn(
                        async move { writer.append(vec![event(i), event(i + 1000)]).await },
                    )
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        });
        let all = store
            .audit_events(&AuditFilter {
                user_id: None,
                kind: None,
                since: None,
                until: None,
                before_seq: None,
                limit: 10_000,
            })
            .unwrap();
        assert_eq!(all.len(), 400);
        let mut users: Vec<_> = all.iter().filter_map(|e| e.user_id.clone()).collect();
        users.sort();
        users.dedup();
        assert_eq!(users.len(), 400);
    }
}
