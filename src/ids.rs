//! Random identifiers: task ids and request ids are UUID v4 strings, which is what the director and
//! bosh-cli expect (the CLI type-asserts task ids to strings; the director routes replies by UUID tokens).

use ring::rand::{SecureRandom, SystemRandom};

/// A fresh random UUID v4 in its canonical lowercase form.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    if SystemRandom::new().fill(&mut b).is_err() {
        // The kernel's RNG failing is not something a request can cause; fall back to time and
        // address entropy so an id is still unique within this process.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let addr = &b as *const _ as usize as u128;
        b = (t ^ (addr << 64)).to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_has_version_and_variant_bits() {
        let a = uuid_v4();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(a, uuid_v4());
    }
}
