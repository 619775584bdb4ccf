//! API keys: generation and hashing. Keys are shown once and stored as SHA-256.

use rand::Rng as _;
use sha2::{Digest, Sha256};

pub use crate::domain::Role;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A new random key, e.g. `cq_client_` followed by 43 base62 characters (~256 bits).
pub fn generate(role: Role) -> String {
    let mut rng = rand::rng();
    let body: String = (0..43).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("cq_{}_{body}", role.as_str())
}

/// The stored form of a key.
pub fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// The part of a key that may be displayed to identify it.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(14).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_carry_their_role_and_differ() {
        let a = generate(Role::Admin);
        let b = generate(Role::Admin);
        assert!(a.starts_with("cq_admin_"));
        assert_eq!(a.len(), "cq_admin_".len() + 43);
        assert_ne!(a, b);
        assert_ne!(hash(&a), hash(&b));
    }
}
