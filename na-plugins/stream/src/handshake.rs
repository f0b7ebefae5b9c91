//! The handshake of the stream core, the I/O around [`crate::auth`]: a dialled
//! connection answers the acceptor's challenge with its hello; an accepted one checks the
//! hello's credential (here, or on the checker's thread for MUNGE, see [`crate::verify`])
//! and accepts the peer or tells it why not.

use std::sync::atomic::Ordering;

use na::{Auth, NaError, NaResult};

use crate::auth::{self, Challenge};
use crate::conn::{Conn, OutFrame};
use crate::frame::{Header, Kind};
use crate::{StreamPlugin, lock, users, verify};

impl StreamPlugin {
    /// A dialled connection's first frame: answer the challenge with our hello, or stop
    /// on a refusal.
    pub(crate) fn on_challenge(&self, conn: &Conn, h: Header, p: &[u8]) -> NaResult<()> {
        let to = conn
            .remote
            .get()
            .cloned()
            .expect("dialled connections know their address");
        let ch = match h.kind {
            Kind::Challenge => Challenge::decode(p)
                .ok_or_else(|| NaError::PeerMisbehaved(format!("{to}: malformed challenge")))?,
            Kind::Refused => {
                let why = String::from_utf8_lossy(&p[..p.len().min(512)]).into_owned();
                return Err(NaError::AccessDenied(format!("{to} refused us: {why}")));
            }
            _ => return Err(NaError::PeerMisbehaved(format!("{to}: no challenge"))),
        };
        let cred = auth::credential(&self.cfg.auth, &ch, &to, &users::own_identity())
            .map_err(NaError::AccessDenied)?;
        let hello = auth::encode_hello(self.net.self_addr(), &to, &cred);
        let f = conn.greet(OutFrame::new(Kind::Hello, 0, hello, None), &self.mem);
        self.after_flush(conn, f);
        Ok(())
    }

    /// An accepted connection's hello: verify its credential (or take the kernel's word),
    /// or tell the peer why not and close.
    pub(crate) fn on_hello(&self, conn: &Conn, p: &[u8]) -> NaResult<()> {
        let hello = auth::decode_hello(p).filter(|(from, to, _)| {
            from.plugin() == self.net.name() && to.plugin() == self.net.name()
        });
        let Some((from, to, cred)) = hello else {
            return Err(NaError::PeerMisbehaved(
                "Hello carries no address of this transport".into(),
            ));
        };
        let verdict = match conn.wire.peer_identity() {
            Some(id) => Ok(Some(id)),
            None if !self.net.is_self(&to) => Err(format!("{to} is not this endpoint")),
            None if matches!(self.cfg.auth, Auth::Munge) => {
                // Checked by munged and the user database: off this thread.
                let job = verify::Job {
                    peer: conn.peer,
                    from,
                    to,
                    nonce: conn.nonce,
                    cred: cred.to_vec(),
                };
                conn.verifying.store(true, Ordering::Release);
                match self.verifier.submit(job) {
                    Ok(()) => return Ok(()),
                    Err((from, why)) => {
                        conn.verifying.store(false, Ordering::Release);
                        return self.finish_hello(conn, from, Err(why.into()));
                    }
                }
            }
            None => auth::verify(&self.cfg.auth, &conn.nonce, &to, cred),
        };
        self.finish_hello(conn, from, verdict)
    }

    /// Applies the credential checker's verdicts, and reads on behind the hellos accepted.
    pub(crate) fn apply_verdicts(&self) {
        for v in self.verifier.take() {
            let Ok(conn) = self.conn(v.peer) else {
                continue;
            };
            conn.verifying.store(false, Ordering::Release);
            let r = self.finish_hello(&conn, v.from, v.result).and_then(|()| {
                let mut rs = lock(&conn.read);
                self.drain_frames(&conn, &mut rs)
            });
            match r {
                Ok(()) => {
                    self.unread.insert(conn.peer);
                }
                Err(e) => self.close_conn(conn.peer, e),
            }
        }
    }

    /// Accepts a peer whose hello proved `verdict`, or tells it why not.
    fn finish_hello(
        &self,
        conn: &Conn,
        from: na::Address,
        verdict: Result<Option<na::Identity>, String>,
    ) -> NaResult<()> {
        match verdict {
            Ok(id) => {
                tracing::debug!(peer = conn.peer.0, %from, identity = ?id, "hello accepted");
                let _ = conn.identity.set(id);
                let _ = conn.remote.set(from);
                Ok(())
            }
            Err(why) => {
                tracing::warn!(peer = conn.peer.0, %from, %why, "{}: refused a peer", self.net.name());
                let f = OutFrame::new(Kind::Refused, 0, why.clone().into_bytes(), None);
                self.send_frames(conn, vec![f]);
                Err(NaError::AccessDenied(why))
            }
        }
    }
}
