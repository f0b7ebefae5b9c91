//! Credentials that need another process to check them (MUNGE: a round trip to `munged`,
//! then the user database for groups, which may be remote) are checked on a thread of
//! their own, never on the progress thread: a stalled `munged` or directory server delays
//! the hellos waiting for it, not the peers already connected. The connection is not read
//! meanwhile; the verdict comes back through [`Verifier::take`] and a wake-up.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use crate::bell::Bell;
use na::{Address, Auth, Identity, PeerId};

use crate::auth::{self, NONCE_LEN};
use crate::lock;

/// Hellos waiting for their verdict, at most (past it, new ones are refused at once).
pub const MAX_PENDING: usize = 64;

/// A hello's credential to check.
pub struct Job {
    /// The connection it came on.
    pub peer: PeerId,
    /// The address the peer says it listens on.
    pub from: Address,
    /// Our address, as the peer dialled it.
    pub to: Address,
    /// Our challenge's nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The credential.
    pub cred: Vec<u8>,
}

/// A checked hello: who the peer is, or why not.
pub struct Verdict {
    /// The connection.
    pub peer: PeerId,
    /// The address the peer says it listens on.
    pub from: Address,
    /// The identity proven, or the reason for refusing.
    pub result: Result<Option<Identity>, String>,
}

/// The checking thread, started at the first job.
pub struct Verifier {
    auth: Auth,
    bell: Arc<Bell>,
    tx: Mutex<Option<SyncSender<Job>>>,
    done: Arc<Done>,
}

#[derive(Default)]
struct Done {
    verdicts: Mutex<VecDeque<Verdict>>,
    /// Some verdicts wait (read without a lock on every progress pass).
    any: AtomicBool,
}

impl Verifier {
    /// Checks credentials of `auth` and rings `bell` with each verdict.
    pub(crate) fn new(auth: Auth, bell: Arc<Bell>) -> Verifier {
        Verifier {
            auth,
            bell,
            tx: Mutex::new(None),
            done: Arc::default(),
        }
    }

    /// Queues `job`; if too many are waiting or no thread can start, gives back the
    /// peer's address and why.
    pub fn submit(&self, job: Job) -> Result<(), (Address, &'static str)> {
        let mut tx = lock(&self.tx);
        if tx.is_none() {
            let (t, rx) = sync_channel(MAX_PENDING);
            let (auth, bell, done) = (self.auth.clone(), self.bell.clone(), self.done.clone());
            let spawned = std::thread::Builder::new()
                .name("qs-verify".into())
                .spawn(move || run(&auth, &rx, &bell, &done));
            if spawned.is_err() {
                return Err((job.from, "cannot start the credential checker"));
            }
            *tx = Some(t);
        }
        let t = tx.as_ref().expect("started above");
        t.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) => (j.from, "too many handshakes in progress; try again"),
            TrySendError::Disconnected(j) => (j.from, "the credential checker stopped"),
        })
    }

    /// Verdicts reached since the last call.
    pub fn take(&self) -> Vec<Verdict> {
        if !self.done.any.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        lock(&self.done.verdicts).drain(..).collect()
    }
}

fn run(auth: &Auth, rx: &Receiver<Job>, bell: &Bell, done: &Done) {
    while let Ok(j) = rx.recv() {
        let result = auth::verify(auth, &j.nonce, &j.to, &j.cred);
        lock(&done.verdicts).push_back(Verdict {
            peer: j.peer,
            from: j.from,
            result,
        });
        done.any.store(true, Ordering::Release);
        bell.ring();
    }
}
