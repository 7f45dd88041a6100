//! Page tokens: the key values of a page boundary, its direction and page size, serialised with
//! postcard, signed with HMAC-SHA256 and written as URL-safe base64.
//!
//! Layout (before base64): `version (1) | key id (1) | body | tag (32)`, where `body` is the
//! postcard form of [`Body`] and the tag is HMAC-SHA256 under the key `key id` over
//! `"diesel-budget page token" | version | key id | query fingerprint (32) | body`. The query
//! fingerprint is never sent: the server recomputes it from the query serving the page, so a
//! token only verifies against the query (SQL shape, bound filter values, key and value types)
//! that issued it.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The token format this version writes and reads.
pub(crate) const VERSION: u8 = 1;

/// Domain separation for the MAC.
const CONTEXT: &[u8] = b"diesel-budget page token";

/// Bytes of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;

/// The shortest secret a [`PageKeys`] accepts.
pub const MIN_SECRET_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The signing keys of page tokens: the current key signs (and verifies), previous keys only
/// verify, so a key can be rotated without breaking the tokens clients hold. Each key has a
/// one-byte id written into the token. `Debug` never shows a secret.
///
/// # Example
/// ```
/// use diesel_budget::page::PageKeys;
///
/// let keys = PageKeys::new(2, &[7u8; 32])?.with_previous(1, &[9u8; 32])?;
/// assert_eq!(keys.current_id(), 2);
/// assert!(PageKeys::new(1, b"too short").is_err());
/// # Ok::<(), diesel_budget::Error>(())
/// ```
#[derive(Clone)]
pub struct PageKeys {
    current: (u8, Keyed),
    previous: Vec<(u8, Keyed)>,
}

/// A key's HMAC state with the secret and the domain context already absorbed: each token then
/// costs a clone of it, not the two SHA-256 blocks of keying HMAC again.
#[derive(Clone)]
struct Keyed(HmacSha256);

impl Keyed {
    fn new(secret: &[u8]) -> Result<Self> {
        check_secret(secret)?;
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret).map_err(|_| {
            Error::InvalidArgument {
                name: "secret",
                reason: "not usable as an HMAC-SHA256 key".into(),
            }
        })?;
        mac.update(CONTEXT);
        Ok(Keyed(mac))
    }
}

impl fmt::Debug for PageKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageKeys")
            .field("current", &self.current.0)
            .field(
                "previous",
                &self.previous.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PageKeys {
    /// A ring whose current key is `secret` (at least [`MIN_SECRET_LEN`] bytes, from a secret
    /// store; never a constant in code) with id `id`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a secret shorter than 32 bytes.
    pub fn new(id: u8, secret: &[u8]) -> Result<Self> {
        Ok(PageKeys {
            current: (id, Keyed::new(secret)?),
            previous: Vec::new(),
        })
    }

    /// Adds a previous key: tokens it signed still verify; new tokens are signed with the
    /// current key.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a short secret or an id already in the ring.
    pub fn with_previous(mut self, id: u8, secret: &[u8]) -> Result<Self> {
        let keyed = Keyed::new(secret)?;
        if id == self.current.0 || self.previous.iter().any(|(p, _)| *p == id) {
            return Err(Error::InvalidArgument {
                name: "id",
                reason: "a key with this id is already in the ring".into(),
            });
        }
        self.previous.push((id, keyed));
        Ok(self)
    }

    /// The id of the key that signs new tokens.
    pub fn current_id(&self) -> u8 {
        self.current.0
    }

    fn keyed(&self, id: u8) -> Option<&Keyed> {
        if self.current.0 == id {
            return Some(&self.current.1);
        }
        self.previous.iter().find(|(p, _)| *p == id).map(|(_, k)| k)
    }
}

fn check_secret(secret: &[u8]) -> Result<()> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(Error::InvalidArgument {
            name: "secret",
            reason: format!("a page token key needs at least {MIN_SECRET_LEN} bytes"),
        });
    }
    Ok(())
}

/// What a token says: where the page starts, which way it goes, how large it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Body<V> {
    /// `true`: the rows before `values` (a previous page); `false`: the rows after.
    pub(crate) backward: bool,
    /// The page size the token was issued for.
    pub(crate) size: u64,
    /// The key values of the boundary row.
    pub(crate) values: V,
}

/// SHA-256 of the parts that identify a query; each part length-prefixed so parts cannot run
/// into each other.
pub(crate) fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The MAC of a token under `key`: context (already absorbed), header, query fingerprint; the
/// caller adds the payload.
fn mac(key: &Keyed, header: [u8; 2], fingerprint: &[u8; 32]) -> HmacSha256 {
    let mut mac = key.0.clone();
    mac.update(&header);
    mac.update(fingerprint);
    mac
}

/// Signs `body` for the query `fingerprint` with the current key.
pub(crate) fn encode<V: Serialize>(
    keys: &PageKeys,
    fingerprint: &[u8; 32],
    body: &Body<V>,
) -> Result<String> {
    let header = [VERSION, keys.current.0];
    // `header | payload | tag` in one buffer (a short key's token fits the first allocation).
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&header);
    let mut bytes = postcard::to_extend(body, bytes).map_err(|_| Error::InvalidArgument {
        name: "key value",
        reason: "the key value cannot be serialised into a page token".into(),
    })?;
    let mut m = mac(&keys.current.1, header, fingerprint);
    m.update(&bytes[2..]);
    bytes.extend_from_slice(&m.finalize().into_bytes());
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn invalid(reason: &'static str) -> Error {
    Error::InvalidPageToken { reason }
}

/// Checks and opens a token: size cap, base64, version, key id, MAC (constant time), then the
/// payload, which must decode to exactly one `Body<V>`.
pub(crate) fn decode<V: DeserializeOwned>(
    keys: &PageKeys,
    fingerprint: &[u8; 32],
    token: &str,
    max_len: usize,
) -> Result<Body<V>> {
    if token.len() > max_len {
        return Err(invalid("longer than the size cap"));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid("not URL-safe base64"))?;
    if bytes.len() < 2 + TAG_LEN {
        return Err(invalid("truncated"));
    }
    if bytes[0] != VERSION {
        return Err(invalid("unknown format version"));
    }
    let key = keys
        .keyed(bytes[1])
        .ok_or_else(|| invalid("signed by a key not in the ring"))?;
    let (signed, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    let payload = &signed[2..];
    let mut m = mac(key, [bytes[0], bytes[1]], fingerprint);
    m.update(payload);
    m.verify_slice(tag).map_err(|_| {
        invalid("signature does not match: another query, other filter values, another key, or a modified token")
    })?;
    match postcard::take_from_bytes::<Body<V>>(payload) {
        Ok((body, [])) => Ok(body),
        _ => Err(invalid("payload does not decode as this key's values")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> PageKeys {
        PageKeys::new(1, &[1u8; 32]).expect("key")
    }

    #[test]
    fn round_trip_and_every_single_bit_flip_is_refused() {
        let fp = fingerprint([b"q".as_slice()]);
        let body = Body {
            backward: false,
            size: 50,
            values: (17i64, 3i32),
        };
        let token = encode(&keys(), &fp, &body).expect("encode");
        assert_eq!(
            decode::<(i64, i32)>(&keys(), &fp, &token, 512).expect("decode"),
            body
        );
        let raw = URL_SAFE_NO_PAD.decode(&token).expect("b64");
        for bit in 0..raw.len() * 8 {
            let mut flipped = raw.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let t = URL_SAFE_NO_PAD.encode(&flipped);
            assert!(
                matches!(
                    decode::<(i64, i32)>(&keys(), &fp, &t, 512),
                    Err(Error::InvalidPageToken { .. })
                ),
                "bit {bit}"
            );
        }
        let other = fingerprint([b"r".as_slice()]);
        assert!(decode::<(i64, i32)>(&keys(), &other, &token, 512).is_err());
        assert!(decode::<(i64, i32)>(&keys(), &fp, &token, token.len() - 1).is_err());
        assert!(decode::<(i64, i32)>(&keys(), &fp, &token[..token.len() - 2], 512).is_err());
    }

    #[test]
    fn previous_keys_verify_and_unknown_ones_do_not() {
        let fp = fingerprint([b"q".as_slice()]);
        let body = Body {
            backward: true,
            size: 5,
            values: 9i32,
        };
        let old = PageKeys::new(1, &[1u8; 32]).expect("key");
        let token = encode(&old, &fp, &body).expect("encode");
        let rotated = PageKeys::new(2, &[2u8; 32])
            .expect("key")
            .with_previous(1, &[1u8; 32])
            .expect("key");
        assert_eq!(decode::<i32>(&rotated, &fp, &token, 512).expect("ok"), body);
        let dropped = PageKeys::new(2, &[2u8; 32]).expect("key");
        assert!(matches!(
            decode::<i32>(&dropped, &fp, &token, 512),
            Err(Error::InvalidPageToken { .. })
        ));
        // Same id, other secret: the MAC fails.
        let forged = PageKeys::new(1, &[3u8; 32]).expect("key");
        assert!(decode::<i32>(&forged, &fp, &token, 512).is_err());
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        fn keys() -> PageKeys {
            PageKeys::new(7, &[5u8; 32]).expect("key")
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any text at all: never a panic, never accepted (no key signs random bytes).
            #[test]
            fn arbitrary_text_is_refused(text in ".{0,200}") {
                let fp = fingerprint([b"q".as_slice()]);
                let r = decode::<(i64, Option<String>)>(&keys(), &fp, &text, 512);
                let refused = matches!(r, Err(Error::InvalidPageToken { .. }));
                prop_assert!(refused, "accepted");
            }

            /// Arbitrary bytes in base64 (past the base64 check): refused, never a panic.
            #[test]
            fn arbitrary_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
                let fp = fingerprint([b"q".as_slice()]);
                let text = URL_SAFE_NO_PAD.encode(&bytes);
                let r = decode::<(i32, String)>(&keys(), &fp, &text, 512);
                let refused = matches!(r, Err(Error::InvalidPageToken { .. }));
                prop_assert!(refused, "accepted");
            }

            /// Real tokens of random values round-trip, and every single-bit flip of them is
            /// refused.
            #[test]
            fn every_bit_flip_of_a_real_token_is_refused(
                a in any::<i64>(),
                b in proptest::option::of(".{0,20}"),
                backward in any::<bool>(),
                size in 1u64..10_000,
            ) {
                let fp = fingerprint([b"q".as_slice()]);
                let body = Body { backward, size, values: (a, b) };
                let token = encode(&keys(), &fp, &body).expect("encode");
                let back = decode::<(i64, Option<String>)>(&keys(), &fp, &token, 512).expect("decode");
                prop_assert_eq!(back, body);
                let raw = URL_SAFE_NO_PAD.decode(&token).expect("b64");
                for bit in 0..raw.len() * 8 {
                    let mut flipped = raw.clone();
                    flipped[bit / 8] ^= 1 << (bit % 8);
                    let t = URL_SAFE_NO_PAD.encode(&flipped);
                    let r = decode::<(i64, Option<String>)>(&keys(), &fp, &t, 512);
                    let refused = matches!(r, Err(Error::InvalidPageToken { .. }));
                    prop_assert!(refused, "bit {}", bit);
                }
            }
        }
    }
}
