//! `RunSecret`: the secret that the processes of one run share, and the challenge-response that
//! proves it on a socket. The side that accepts a connection sends a fresh random nonce; the side
//! that connected answers `HMAC-SHA256(secret, context || nonce || claim)`. A stranger, a stale
//! worker of another run or garbage bytes fail the check, and the secret never crosses the wire.

use sha2::{Digest, Sha256};

/// Bytes of a challenge nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a proof (HMAC-SHA256).
pub const PROOF_LEN: usize = 32;

/// A run's shared secret (32 bytes; derived from whatever text the run was given).
#[derive(Clone, PartialEq, Eq)]
pub struct RunSecret([u8; 32]);

impl std::fmt::Debug for RunSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunSecret(..)")
    }
}

impl RunSecret {
    /// A fresh random secret (from the operating system's generator via `rand`).
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The secret a text stands for (e.g. `ROTOR_RUN_SECRET`): its SHA-256. `None` when empty.
    pub fn from_text(text: &str) -> Option<Self> {
        let t = text.trim();
        (!t.is_empty()).then(|| Self(Sha256::digest(t.as_bytes()).into()))
    }

    /// The secret as 64 hex digits (what a launcher hands its workers, or a store carries).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses [`RunSecret::to_hex`]'s form.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }

    /// A fresh challenge.
    pub fn nonce() -> [u8; NONCE_LEN] {
        rand::random()
    }

    /// The answer to `nonce` for a connection of kind `context` claiming `claim` (e.g. a rank).
    pub fn proof(&self, context: &[u8], nonce: &[u8], claim: &[u8]) -> [u8; PROOF_LEN] {
        let mut msg = Vec::with_capacity(context.len() + nonce.len() + claim.len() + 2);
        msg.extend_from_slice(context);
        msg.push(0);
        msg.extend_from_slice(nonce);
        msg.push(0);
        msg.extend_from_slice(claim);
        hmac_sha256(&self.0, &msg)
    }

    /// Checks an answer in time independent of where it differs.
    pub fn verify(&self, context: &[u8], nonce: &[u8], claim: &[u8], proof: &[u8]) -> bool {
        let want = self.proof(context, nonce, claim);
        proof.len() == PROOF_LEN && want.iter().zip(proof).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
    }
}

/// HMAC-SHA256 (RFC 2104) with a key of at most one block.
fn hmac_sha256(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2_with_a_padded_key() {
        // RFC 4231 test case 2 (key "Jefe", zero-padded to 32 bytes gives the same HMAC: keys
        // shorter than a block are zero-padded to 64 bytes either way).
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex(&hmac_sha256(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn proofs_check_secret_nonce_and_claim() {
        let s = RunSecret::random();
        let n = RunSecret::nonce();
        let p = s.proof(b"ring", &n, b"1");
        assert!(s.verify(b"ring", &n, b"1", &p));
        assert!(!s.verify(b"ring", &n, b"2", &p));
        assert!(!s.verify(b"store", &n, b"1", &p));
        assert!(!s.verify(b"ring", &RunSecret::nonce(), b"1", &p));
        assert!(!RunSecret::random().verify(b"ring", &n, b"1", &p));
        assert!(!s.verify(b"ring", &n, b"1", &p[..31]));
        assert_eq!(RunSecret::from_hex(&s.to_hex()), Some(s.clone()));
        assert_eq!(RunSecret::from_hex("zz"), None);
        assert_eq!(RunSecret::from_text("  "), None);
        assert_eq!(RunSecret::from_text("a b"), RunSecret::from_text(" a b\n"));
    }
}
