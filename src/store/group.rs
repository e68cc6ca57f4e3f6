//! Group commit: one writer thread per process that commits every write
//! waiting in one transaction ([`super::Store::commit_group`]).
//!
//! Under `synchronous=FULL` each commit costs an fsync; committing one
//! request at a time would cap a worker at the disk's fsync rate. Instead
//! requests queue here; the thread takes the first, then everything that
//! arrived meanwhile (up to [`MAX_GROUP`]), commits them together, and only
//! then answers each. Nobody is answered before its row is durable, and a
//! failed commit answers every request of the group with the error, so
//! nothing is acknowledged that is not stored. While one group is being
//! committed the next one gathers, so under load groups grow by themselves
//! and with one request at a time nothing waits for a timer.

use std::time::SystemTime;

use tokio::sync::oneshot;

use super::{Keyed, Store, StoreError};
use crate::image::NewImage;

/// The most writes committed in one transaction.
pub const MAX_GROUP: usize = 256;

/// One write: a plain insert, or an insert under an `Idempotency-Key`.
#[derive(Debug, Clone)]
pub enum Write {
    Plain(NewImage),
    Keyed {
        image: NewImage,
        key: String,
        body: Vec<u8>,
    },
}

type Job = (Write, oneshot::Sender<Result<Keyed, StoreError>>);

/// The handle to a process's writer thread; cheap to clone.
#[derive(Clone)]
pub struct GroupWriter {
    jobs: std::sync::mpsc::Sender<Job>,
    groups: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl GroupWriter {
    /// Starts the writer thread for `store`. It ends when every handle is gone.
    pub fn start(store: Store) -> GroupWriter {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let groups = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = groups.clone();
        std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match queue.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    commit(&store, group);
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .expect("spawning the group-commit thread");
        GroupWriter { jobs, groups }
    }

    /// How many groups (transactions) have been committed or refused.
    pub fn groups(&self) -> u64 {
        self.groups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues `write` and waits until it is committed (or refused).
    pub async fn write(&self, write: Write) -> Result<Keyed, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send((write, answer))
            .map_err(|_| StoreError::Busy("the writer thread has stopped".into()))?;
        answered
            .await
            .map_err(|_| StoreError::Busy("the writer thread has stopped".into()))?
    }
}

fn commit(store: &Store, group: Vec<Job>) {
    let (writes, answers): (Vec<Write>, Vec<_>) = group.into_iter().unzip();
    match store.commit_group(&writes, SystemTime::now()) {
        Ok(results) => {
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(result);
            }
        }
        Err(error) => {
            for answer in answers {
                let _ = answer.send(Err(error.for_another()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn image(title: &str) -> NewImage {
        NewImage::parse(&serde_json::json!({"title": title, "alt_text": "", "url": "/x"})).unwrap()
    }

    #[test]
    fn a_group_keeps_each_writes_own_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("g.db"), &StoreOptions::default()).unwrap();
        let keyed = |title: &str, key: &str| Write::Keyed {
            image: image(title),
            key: key.into(),
            body: title.as_bytes().to_vec(),
        };
        let writes = [
            Write::Plain(image("plain")),
            keyed("first", "k1"),
            keyed("first", "k1"),
            keyed("other body", "k1"),
            keyed("second", "k2"),
        ];
        let results = store.commit_group(&writes, SystemTime::now()).unwrap();
        let outcome: Vec<String> = results
            .into_iter()
            .map(|r| match r.unwrap() {
                Keyed::Stored(i) => format!("stored {} #{}", i.title, i.id),
                Keyed::Replayed(i) => format!("replayed {} #{}", i.title, i.id),
                Keyed::Conflict => "conflict".into(),
            })
            .collect();
        assert_eq!(
            outcome,
            [
                "stored plain #4",
                "stored first #5",
                "replayed first #5",
                "conflict",
                "stored second #6"
            ]
        );
        let titles: Vec<String> = store
            .list_images()
            .unwrap()
            .into_iter()
            .map(|i| i.title)
            .collect();
        assert_eq!(titles[3..], ["plain", "first", "second"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_each_is_stored_once() {
        const WRITES: usize = 200;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("g.db"), &StoreOptions::default()).unwrap();
        let writer = GroupWriter::start(store.clone());
        let tasks: Vec<_> = (0..WRITES)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(
                    async move { writer.write(Write::Plain(image(&format!("w{n}")))).await },
                )
            })
            .collect();
        let mut ids = Vec::new();
        for task in tasks {
            match task.await.unwrap().unwrap() {
                Keyed::Stored(image) => ids.push(image.id),
                other => panic!("{other:?}"),
            }
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), WRITES);
        let stored = store.list_images().unwrap();
        assert_eq!(stored.len(), WRITES + 3);
        let groups = writer.groups();
        assert!(
            groups < WRITES as u64 / 2,
            "{groups} commits for {WRITES} writes"
        );
    }
}
