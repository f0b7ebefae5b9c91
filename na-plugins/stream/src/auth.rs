//! The connection handshake, without I/O: the accepting side speaks first with a
//! [`Challenge`] (the proof it demands and a fresh nonce); the dialling side answers with
//! its `Hello` (its listening address and a credential bound to that nonce and to the
//! address it dialled). Nothing else moves on a connection before the hello is accepted.
//!
//! ```text
//! Challenge  payload = version:u8 mode:u8 nonce[32]        (0 none, 1 munge, 2 key)
//! Hello      payload = from_len:u16 from to_len:u16 to credential[...]
//!            (from: the sender's listening address; to: the address it dialled)
//! Refused    payload = the reason, UTF-8 (then the acceptor stops reading)
//! credential: none  = empty
//!             munge = a MUNGE credential over nonce || dialled address
//!             key   = uid:u32 gid:u32 ngroups:u16 gid:u32* mac[32]
//!                     mac = HMAC-SHA256(key, "qs-auth-v1" || nonce || dialled address || claim)
//! ```

use hmac::{Hmac, Mac};
use na::{Address, Auth, Identity, MAX_GROUPS, Proof};
use sha2::Sha256;

use crate::munge;

/// Bytes of a challenge's nonce.
pub const NONCE_LEN: usize = 32;
const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
const DOMAIN: &[u8] = b"qs-auth-v1";

/// The accepting side's first frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// [`Auth::code`] of the proof demanded.
    pub mode: u8,
    /// Fresh random bytes that every credential must cover.
    pub nonce: [u8; NONCE_LEN],
}

impl Challenge {
    /// A challenge for `auth` with a nonce from the OS.
    pub fn new(auth: &Auth) -> Result<Challenge, String> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| format!("getrandom: {e}"))?;
        Ok(Challenge {
            mode: auth.code(),
            nonce,
        })
    }

    /// The frame payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![VERSION, self.mode];
        v.extend_from_slice(&self.nonce);
        v
    }

    /// Parses a payload; `None` when malformed or of another version.
    pub fn decode(p: &[u8]) -> Option<Challenge> {
        let (&[v, mode], rest) = p.split_first_chunk::<2>()?;
        (v == VERSION && mode <= 2 && rest.len() == NONCE_LEN).then(|| Challenge {
            mode,
            nonce: rest.try_into().expect("length checked"),
        })
    }
}

/// Encodes a hello payload.
pub fn encode_hello(from: &Address, to: &Address, credential: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + credential.len());
    for a in [from.to_string(), to.to_string()] {
        v.extend_from_slice(&(a.len() as u16).to_le_bytes());
        v.extend_from_slice(a.as_bytes());
    }
    v.extend_from_slice(credential);
    v
}

fn take_addr(p: &[u8]) -> Option<(Address, &[u8])> {
    let (n, rest) = p.split_first_chunk::<2>()?;
    let n = u16::from_le_bytes(*n) as usize;
    let addr = Address::parse(std::str::from_utf8(rest.get(..n)?).ok()?).ok()?;
    Some((addr, rest.get(n..)?))
}

/// Decodes a hello payload into the sender's address, the address it dialled, and its
/// credential.
pub fn decode_hello(p: &[u8]) -> Option<(Address, Address, &[u8])> {
    let (from, rest) = take_addr(p)?;
    let (to, cred) = take_addr(rest)?;
    Some((from, to, cred))
}

/// What the dialling side shows for `ch`, having dialled `dialled`, acting as `me`.
pub fn credential(
    auth: &Auth,
    ch: &Challenge,
    dialled: &Address,
    me: &Identity,
) -> Result<Vec<u8>, String> {
    match ch.mode {
        0 => Ok(Vec::new()),
        1 => munge::encode(&bound(&ch.nonce, dialled)),
        _ => match auth {
            Auth::Key(key) => {
                let claim = encode_claim(me);
                let mut out = claim.clone();
                out.extend_from_slice(
                    &mac(key, &ch.nonce, dialled, &claim).finalize().into_bytes(),
                );
                Ok(out)
            }
            _ => Err(format!(
                "{dialled} demands a shared key: set QS_AUTH=key:FILE (or the program's --auth)"
            )),
        },
    }
}

/// Checks a hello's credential under the accepting side's `auth` and challenge `nonce`,
/// for a connection that dialled `me`. `Ok(None)`: anonymous (no proof demanded).
pub fn verify(
    auth: &Auth,
    nonce: &[u8; NONCE_LEN],
    me: &Address,
    cred: &[u8],
) -> Result<Option<Identity>, String> {
    match auth {
        Auth::None => Ok(None),
        Auth::Munge => {
            let text = std::str::from_utf8(cred).map_err(|_| "malformed MUNGE credential")?;
            let (uid, gid, payload) = munge::decode(text)?;
            if payload != bound(nonce, me) {
                return Err("MUNGE credential made for another connection".into());
            }
            Ok(Some(Identity {
                uid,
                gid,
                groups: crate::users::groups_of(uid, gid),
                proof: Proof::Munge,
            }))
        }
        Auth::Key(key) => {
            let split = cred
                .len()
                .checked_sub(MAC_LEN)
                .ok_or("credential too short")?;
            let (claim, tag) = cred.split_at(split);
            mac(key, nonce, me, claim)
                .verify_slice(tag)
                .map_err(|_| "shared-key proof does not verify")?;
            let mut id = decode_claim(claim).ok_or("malformed identity claim")?;
            id.proof = Proof::SharedKey;
            Ok(Some(id))
        }
    }
}

fn bound(nonce: &[u8; NONCE_LEN], addr: &Address) -> Vec<u8> {
    let mut v = nonce.to_vec();
    v.extend_from_slice(addr.to_string().as_bytes());
    v
}

fn mac(key: &[u8], nonce: &[u8; NONCE_LEN], addr: &Address, claim: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(DOMAIN);
    m.update(&bound(nonce, addr));
    m.update(claim);
    m
}

fn encode_claim(id: &Identity) -> Vec<u8> {
    let groups = &id.groups[..id.groups.len().min(u16::MAX as usize)];
    let mut v = Vec::with_capacity(10 + 4 * groups.len());
    v.extend_from_slice(&id.uid.to_le_bytes());
    v.extend_from_slice(&id.gid.to_le_bytes());
    v.extend_from_slice(&(groups.len() as u16).to_le_bytes());
    groups
        .iter()
        .for_each(|g| v.extend_from_slice(&g.to_le_bytes()));
    v
}

fn decode_claim(p: &[u8]) -> Option<Identity> {
    let u32_at = |i: usize| Some(u32::from_le_bytes(p.get(i..i + 4)?.try_into().ok()?));
    let n = u16::from_le_bytes(p.get(8..10)?.try_into().ok()?) as usize;
    if n > MAX_GROUPS || p.len() != 10 + 4 * n {
        return None;
    }
    Some(Identity {
        uid: u32_at(0)?,
        gid: u32_at(4)?,
        groups: (0..n).map(|i| u32_at(10 + 4 * i)).collect::<Option<_>>()?,
        proof: Proof::SharedKey,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr() -> Address {
        Address::parse("tcp://127.0.0.1:7000").unwrap()
    }

    fn me() -> Identity {
        Identity {
            uid: 1000,
            gid: 100,
            groups: vec![100, 27],
            proof: Proof::SharedKey,
        }
    }

    #[test]
    fn a_key_proof_verifies_and_carries_the_claim() {
        let key = Auth::Key(vec![7u8; 32].into());
        let ch = Challenge::new(&key).unwrap();
        let ch = Challenge::decode(&ch.encode()).unwrap();
        let cred = credential(&key, &ch, &addr(), &me()).unwrap();
        assert_eq!(verify(&key, &ch.nonce, &addr(), &cred).unwrap(), Some(me()));
    }

    #[test]
    fn a_key_proof_fails_under_another_key_nonce_address_or_claim() {
        let key = Auth::Key(vec![7u8; 32].into());
        let ch = Challenge::new(&key).unwrap();
        let cred = credential(&key, &ch, &addr(), &me()).unwrap();
        let other = Auth::Key(vec![8u8; 32].into());
        assert!(verify(&other, &ch.nonce, &addr(), &cred).is_err());
        let mut nonce = ch.nonce;
        nonce[0] ^= 1;
        assert!(verify(&key, &nonce, &addr(), &cred).is_err());
        let elsewhere = Address::parse("tcp://127.0.0.1:7001").unwrap();
        assert!(verify(&key, &ch.nonce, &elsewhere, &cred).is_err());
        // Claiming root with a proof made for uid 1000.
        let mut forged = cred.clone();
        forged[..4].copy_from_slice(&0u32.to_le_bytes());
        assert!(verify(&key, &ch.nonce, &addr(), &forged).is_err());
        assert!(verify(&key, &ch.nonce, &addr(), &[]).is_err());
    }

    #[test]
    fn a_key_challenge_without_a_key_names_the_setting() {
        let ch = Challenge::new(&Auth::Key(vec![1; 16].into())).unwrap();
        let e = credential(&Auth::None, &ch, &addr(), &me()).unwrap_err();
        assert!(e.contains("QS_AUTH=key:FILE"), "{e}");
    }

    #[test]
    fn anonymous_mode_verifies_to_no_identity() {
        let ch = Challenge::new(&Auth::None).unwrap();
        let cred = credential(&Auth::None, &ch, &addr(), &me()).unwrap();
        assert!(cred.is_empty());
        assert_eq!(verify(&Auth::None, &ch.nonce, &addr(), &cred), Ok(None));
    }

    #[test]
    fn hellos_round_trip_and_malformed_ones_are_none() {
        let from = Address::parse("tcp://127.0.0.1:1").unwrap();
        let h = encode_hello(&from, &addr(), b"cred");
        assert_eq!(decode_hello(&h), Some((from, addr(), &b"cred"[..])));
        assert_eq!(decode_hello(&[]), None);
        assert_eq!(decode_hello(&[200, 0, b't']), None);
        assert_eq!(Challenge::decode(&[1, 9]), None);
    }

    proptest! {
        /// Peer bytes never panic the handshake decoders or the key verifier.
        #[test]
        fn random_handshake_bytes_never_panic(p in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Challenge::decode(&p);
            let _ = decode_hello(&p);
            let _ = decode_claim(&p);
            let key = Auth::Key(vec![3u8; 16].into());
            prop_assert!(verify(&key, &[0; NONCE_LEN], &addr(), &p).is_err());
        }
    }
}
