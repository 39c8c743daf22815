//! A fixed pool of named threads for blocking work (argon2 hashing, database transactions), so
//! that such work never runs on the proxy's async workers. Each thread keeps its own reusable
//! state; callers await the result from any runtime, or block for it where no runtime runs.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// The pool has stopped (its threads are gone); the work did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the worker pool has stopped")]
pub struct PoolClosed;

pub struct Pool<S> {
    jobs: Option<mpsc::Sender<Job<S>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl<S: 'static> Pool<S> {
    /// Start `threads` threads named `{name}-{i}`. Each runs `init` once, on itself, for its
    /// state, then `after` on that state after every job. The threads end when the pool is
    /// dropped and the queue is empty.
    pub fn start(
        name: &str,
        threads: usize,
        init: impl Fn() -> S + Send + Sync + 'static,
        after: fn(&mut S),
    ) -> std::io::Result<Pool<S>> {
        let (jobs, queue) = mpsc::channel::<Job<S>>();
        let queue = Arc::new(Mutex::new(queue));
        let init = Arc::new(init);
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let (queue, init) = (queue.clone(), init.clone());
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    let mut state = init();
                    loop {
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&mut state),
                            Err(_) => return, // the pool is gone
                        }
                        after(&mut state);
                    }
                })?;
            handles.push(handle);
        }
        Ok(Pool {
            jobs: Some(jobs),
            threads: handles,
        })
    }

    fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut S) -> T + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<T>, PoolClosed> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job<S> = Box::new(move |state| {
            let _ = reply.send(work(state));
        });
        self.jobs
            .as_ref()
            .ok_or(PoolClosed)?
            .send(job)
            .map_err(|_| PoolClosed)?;
        Ok(answer)
    }

    /// Run `work` on a pool thread and wait for its result without blocking the caller's
    /// runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut S) -> T + Send + 'static,
    ) -> Result<T, PoolClosed> {
        self.submit(work)?.await.map_err(|_| PoolClosed)
    }

    /// Run `work` on a pool thread and block this thread until it is done (start-up, shutdown,
    /// command-line tools: no async runtime there).
    pub fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut S) -> T + Send + 'static,
    ) -> Result<T, PoolClosed> {
        self.submit(work)?.blocking_recv().map_err(|_| PoolClosed)
    }
}

impl<S> Drop for Pool<S> {
    /// Let the threads finish what is queued, and wait for them: whatever the jobs hold (a
    /// database file, say) is released when the pool is gone.
    fn drop(&mut self) {
        drop(self.jobs.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_the_pool_with_their_thread_state() {
        let pool = Pool::start("test-pool", 2, || 0u32, |n| *n += 1).unwrap();
        let names: Vec<String> = (0..4)
            .map(|_| {
                pool.run_blocking(|_| std::thread::current().name().unwrap_or("").to_string())
                    .unwrap()
            })
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with("test-pool-")),
            "{names:?}"
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let seen = runtime.block_on(pool.run(|n| *n)).unwrap();
        assert!(seen <= 4, "the after hook counted jobs per thread: {seen}");
    }
}
