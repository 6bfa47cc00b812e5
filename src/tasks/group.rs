//! Group commit: requests that arrive while a transaction commits wait in a bounded queue and go
//! together in the next transaction. A committer takes the first waiting request at once (no added
//! wait when idle) and with it whatever queued meanwhile, up to the batch size; under load the batches
//! grow by themselves, so one durable commit (and one update of a busy account row) serves many
//! requests. Nobody is answered before the commit of its batch.
//!
//! Each committer has its own queue, and a request names its queue by a shard key (the account, for
//! work that updates the account's row): all the work of one account goes to one committer, so its
//! batches are as large as they can be and two committers never wait for each other's lock on the
//! row; different accounts commit side by side.
//!
//! A batch that fails (a constraint, text the database refuses, a deadlock) is committed again one
//! request at a time, so only the request at fault fails. Used by the creates ([`super::batch`]) and
//! the settlements ([`super::settle`]).

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::error::Error;
use crate::files::FileStore;
use crate::monitoring;
use crate::store::Db;

/// Commits one batch in one transaction: one answer per request, in order.
pub type CommitFn<I, A> = Arc<dyn Fn(Vec<Arc<I>>) -> BoxFuture<'static, sqlx::Result<Vec<A>>> + Send + Sync>;

/// Commits one batch with the database and the file store (see [`Group::with_store`]).
pub type StoreCommit<I, A> = for<'a> fn(&'a Db, &'a FileStore, &'a [&'a I]) -> BoxFuture<'a, sqlx::Result<Vec<A>>>;

/// The sizes of a group and what it does when its queue is full.
#[derive(Debug, Clone, Copy)]
pub struct GroupSettings {
    /// What the metrics call it (`work` label): `create`, `settle`.
    pub name: &'static str,
    /// Most requests in one transaction.
    pub max_batch: usize,
    /// Most requests waiting (over all committers' queues).
    pub queue: usize,
    /// Batches committing at once, each from its own queue.
    pub committers: usize,
}

impl GroupSettings {
    /// These settings for a group writing to `db`: one committer on SQLite, which has one writer.
    pub fn for_db(self, db: &Db) -> GroupSettings {
        match db {
            Db::Sqlite(_) => GroupSettings { committers: 1, ..self },
            Db::Pg(_) => self,
        }
    }
}

struct Job<I, A> {
    item: Arc<I>,
    reply: oneshot::Sender<sqlx::Result<A>>,
}

/// The queues and their committers; the committers stop when the group is dropped and the queues
/// are empty.
pub struct Group<I, A> {
    senders: Vec<mpsc::Sender<Job<I, A>>>,
    name: &'static str,
    _committers: TaskTracker,
}

impl<I: Send + Sync + 'static, A: Send + 'static> Group<I, A> {
    /// Starts the committers on the current runtime.
    pub fn start(settings: GroupSettings, commit: CommitFn<I, A>) -> Group<I, A> {
        let committers = settings.committers.max(1);
        let tracker = TaskTracker::new();
        let senders = (0..committers)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(settings.queue.div_ceil(committers).max(1));
                let committer = Committer {
                    receiver,
                    max_batch: settings.max_batch.max(1),
                    name: settings.name,
                    commit: Arc::clone(&commit),
                };
                tracker.spawn(committer.run());
                sender
            })
            .collect();
        tracker.close();
        Group { senders, name: settings.name, _committers: tracker }
    }

    /// A group whose batches `commit` writes to `db`, signing file links with `files` (starts,
    /// settlements): one committer on SQLite ([`GroupSettings::for_db`]).
    pub fn with_store(db: Db, files: FileStore, settings: GroupSettings, commit: StoreCommit<I, A>) -> Group<I, A> {
        let settings = settings.for_db(&db);
        Group::start(
            settings,
            Arc::new(move |batch: Vec<Arc<I>>| {
                let (db, files) = (db.clone(), files.clone());
                Box::pin(async move {
                    let batch: Vec<&I> = batch.iter().map(|item| &**item).collect();
                    commit(&db, &files, &batch).await
                })
            }),
        )
    }

    /// The queue of `shard`.
    fn queue(&self, shard: u64) -> &mpsc::Sender<Job<I, A>> {
        &self.senders[(shard % self.senders.len() as u64) as usize]
    }

    /// Queues `item` for the next batch of its shard's committer and waits for its answer (after the
    /// batch's commit); a full queue refuses it with `Overloaded` (a client can retry).
    pub async fn submit(&self, shard: u64, item: Arc<I>) -> Result<A, Error> {
        let closed = || Error::Unavailable("The gateway is shutting down; retry shortly.".into());
        let (reply, answer) = oneshot::channel();
        self.queue(shard).try_send(Job { item, reply }).map_err(|error| match error {
            TrySendError::Full(_) => {
                monitoring::group_refused(self.name);
                Error::Overloaded("Too many requests are waiting to be stored; retry in a second.".into())
            }
            TrySendError::Closed(_) => closed(),
        })?;
        Ok(answer.await.map_err(|_| closed())??)
    }

    /// Queues `item` in its shard's queue, waiting for room in a full queue (work that must be done,
    /// such as a settlement), and waits for its answer.
    pub async fn submit_waiting(&self, shard: u64, item: Arc<I>) -> sqlx::Result<A> {
        let (reply, answer) = oneshot::channel();
        self.queue(shard).send(Job { item, reply }).await.map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

struct Committer<I, A> {
    receiver: mpsc::Receiver<Job<I, A>>,
    max_batch: usize,
    name: &'static str,
    commit: CommitFn<I, A>,
}

impl<I, A> Committer<I, A> {
    async fn run(mut self) {
        while let Some(jobs) = self.take().await {
            self.commit(jobs).await;
        }
    }

    /// The first waiting request (waiting for one when none is), with whatever else is waiting, up
    /// to the batch size. `None` once the group is gone.
    async fn take(&mut self) -> Option<Vec<Job<I, A>>> {
        let receiver = &mut self.receiver;
        let first = receiver.recv().await?;
        let mut jobs = Vec::with_capacity(receiver.len().min(self.max_batch - 1) + 1);
        jobs.push(first);
        while jobs.len() < self.max_batch {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        monitoring::group_queue(self.name, receiver.len());
        Some(jobs)
    }

    async fn commit(&self, jobs: Vec<Job<I, A>>) {
        let started = Instant::now();
        let items: Vec<Arc<I>> = jobs.iter().map(|job| Arc::clone(&job.item)).collect();
        let answers = match (self.commit)(items.clone()).await {
            Ok(answers) if answers.len() == jobs.len() => answers.into_iter().map(Ok).collect(),
            Ok(_) => {
                let error = || sqlx::Error::Protocol("a batch answered a different number of requests".into());
                jobs.iter().map(|_| Err(error())).collect()
            }
            Err(error) if jobs.len() > 1 => {
                tracing::warn!(error = %error, size = jobs.len(), work = self.name, "batch failed; committing its requests one by one");
                let mut answers = Vec::with_capacity(jobs.len());
                for item in items {
                    answers.push((self.commit)(vec![item]).await.and_then(|mut answer| {
                        answer.pop().ok_or_else(|| sqlx::Error::Protocol("a batch of one answered nothing".into()))
                    }));
                }
                answers
            }
            Err(error) => vec![Err(error)],
        };
        monitoring::group_batch(self.name, jobs.len(), started);
        for (job, answer) in jobs.into_iter().zip(answers) {
            // A requester that is gone no longer waits; what was committed stands.
            let _ = job.reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Every request is answered, and a batch only holds requests of one shard's queue: the work of an
    /// account never commits in two committers at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_shard_commits_in_its_own_committer() {
        let batches: Arc<Mutex<Vec<Vec<u64>>>> = Arc::default();
        let seen = Arc::clone(&batches);
        let commit: CommitFn<u64, u64> = Arc::new(move |batch: Vec<Arc<u64>>| {
            let seen = Arc::clone(&seen);
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                let shards: Vec<u64> = batch.iter().map(|shard| **shard).collect();
                seen.lock().unwrap().push(shards.clone());
                Ok(shards.into_iter().map(|shard| shard * 10).collect())
            })
        });
        let settings = GroupSettings { name: "test", max_batch: 64, queue: 1024, committers: 3 };
        let group = Arc::new(Group::start(settings, commit));
        let requests = (0..300u64).map(|i| {
            let group = Arc::clone(&group);
            let shard = i % 7;
            async move { (shard, group.submit(shard, Arc::new(shard)).await) }
        });
        for (shard, answer) in futures_util::future::join_all(requests).await {
            assert_eq!(answer.expect("answered"), shard * 10);
        }
        let batches = batches.lock().unwrap();
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 300);
        assert!(batches.iter().any(|batch| batch.len() > 1), "requests waiting together commit together");
        for batch in batches.iter() {
            assert!(batch.iter().all(|shard| shard % 3 == batch[0] % 3), "one committer's queue per batch: {batch:?}");
        }
    }
}
