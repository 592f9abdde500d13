//! The digest that names a feature order on the wire.
//!
//! The feature store's schema (`fingerprint` in its answers and
//! `x-mlmesh-feature-fingerprint`) and a model's input order
//! (`parameters.feature_fingerprint`) are named the same way, so a caller
//! that learnt an order once can check it is still the one in force without
//! the names: xxh3 (64-bit) of the names joined by newlines, as 16 lowercase
//! hex digits. Names never hold a newline (CSV header cells; model metadata
//! split on commas), so the joined form is unambiguous. A change detector,
//! not a secret.

use xxhash_rust::xxh3::Xxh3;

/// The fingerprint of `names` in this order.
pub fn feature_order<S: AsRef<str>>(names: &[S]) -> String {
    let mut h = Xxh3::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            h.update(b"\n");
        }
        h.update(name.as_ref().as_bytes());
    }
    format!("{:016x}", h.digest())
}

#[cfg(test)]
mod tests {
    use xxhash_rust::xxh3::xxh3_64;

    use super::*;

    #[test]
    fn the_digest_is_xxh3_of_the_names_joined_by_newlines() {
        let names = ["age", "tenure_months", "plan"];
        assert_eq!(
            feature_order(&names),
            format!("{:016x}", xxh3_64(b"age\ntenure_months\nplan"))
        );
        assert_eq!(feature_order(&names).len(), 16);
        let owned: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        assert_eq!(feature_order(&owned), feature_order(&names));
    }

    #[test]
    fn another_order_or_split_has_another_digest() {
        let base = feature_order(&["a", "b", "c"]);
        assert_ne!(base, feature_order(&["b", "a", "c"]));
        assert_ne!(base, feature_order(&["a", "bc"]));
        assert_ne!(base, feature_order(&["a", "b"]));
    }
}
