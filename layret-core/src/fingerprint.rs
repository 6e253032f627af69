//! Content fingerprints for cache keys: a fast, stable 64-bit hash of bytes, files and
//! tensors.
//!
//! The hash is layret's own and fixed (changing it would silently invalidate every cache on
//! disk, so a cache format that needs another one must change its version string instead):
//! 64-bit words are mixed four lanes at a time with multiply–rotate rounds, the tail and the
//! length are folded in, and a final avalanche spreads every input bit. It is not
//! cryptographic: it tells apart different weights, images and settings, not adversaries.

use std::io::Read;
use std::path::Path;

use burn::tensor::Tensor;

use crate::error::{Error, Result};

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;

fn round(acc: u64, v: u64) -> u64 {
    acc.wrapping_add(v.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// A streaming hasher: feed bytes with [`update`](Self::update) in any chunking (the result
/// only depends on the concatenated bytes), read the hash with [`finish`](Self::finish).
#[derive(Debug, Clone)]
pub struct Fingerprinter {
    lanes: [u64; 4],
    pending: Vec<u8>,
    len: u64,
}

impl Default for Fingerprinter {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprinter {
    /// A hasher with no input yet.
    pub fn new() -> Self {
        Self {
            lanes: [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)],
            pending: Vec::with_capacity(32),
            len: 0,
        }
    }

    fn block(&mut self, b: &[u8]) {
        for (lane, w) in self.lanes.iter_mut().zip(b.chunks_exact(8)) {
            let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            *lane = round(*lane, v);
        }
    }

    /// Feed `bytes`.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if !self.pending.is_empty() {
            let take = (32 - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() < 32 {
                return;
            }
            let p = std::mem::take(&mut self.pending);
            self.block(&p);
            self.pending = p;
            self.pending.clear();
        }
        let mut blocks = bytes.chunks_exact(32);
        for b in &mut blocks {
            self.block(b);
        }
        self.pending.extend_from_slice(blocks.remainder());
    }

    /// Feed a string with its length (so `("ab", "c")` and `("a", "bc")` differ).
    pub fn update_str(&mut self, s: &str) {
        self.update(&(s.len() as u64).to_le_bytes());
        self.update(s.as_bytes());
    }

    /// Feed a u64.
    pub fn update_u64(&mut self, v: u64) {
        self.update(&v.to_le_bytes());
    }

    /// The hash of everything fed so far.
    pub fn finish(&self) -> u64 {
        let [a, b, c, d] = self.lanes;
        let mut h = a
            .rotate_left(1)
            .wrapping_add(b.rotate_left(7))
            .wrapping_add(c.rotate_left(12))
            .wrapping_add(d.rotate_left(18));
        h = h.wrapping_add(self.len.wrapping_mul(P4));
        let mut tail = self.pending.chunks_exact(8);
        for w in &mut tail {
            let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            h = round(h, v)
                .rotate_left(27)
                .wrapping_mul(P1)
                .wrapping_add(P4);
        }
        for &byte in tail.remainder() {
            h = (h ^ (byte as u64).wrapping_mul(P4))
                .rotate_left(11)
                .wrapping_mul(P1);
        }
        avalanche(h)
    }
}

/// The fingerprint of `bytes`.
pub fn of_bytes(bytes: &[u8]) -> u64 {
    let mut f = Fingerprinter::new();
    f.update(bytes);
    f.finish()
}

/// The fingerprint of a file's whole content (read in 4 MiB chunks, never whole).
pub fn of_file(path: &Path) -> Result<u64> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut f = Fingerprinter::new();
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            return Ok(f.finish());
        }
        f.update(&buf[..n]);
    }
}

/// The fingerprint of a tensor's shape and f32 values (read back to the host).
pub fn of_tensor<const D: usize>(t: &Tensor<D>) -> Result<u64> {
    let mut f = Fingerprinter::new();
    for d in t.dims() {
        f.update_u64(d as u64);
    }
    for v in crate::host::to_f32_vec(t.clone(), "tensor")? {
        f.update(&v.to_bits().to_le_bytes());
    }
    Ok(f.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_does_not_change_the_hash() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = of_bytes(&data);
        for split in [0, 1, 7, 31, 32, 33, 500, 999, 1000] {
            let mut f = Fingerprinter::new();
            f.update(&data[..split]);
            f.update(&data[split..]);
            assert_eq!(f.finish(), whole, "split at {split}");
        }
        let mut f = Fingerprinter::new();
        for b in &data {
            f.update(std::slice::from_ref(b));
        }
        assert_eq!(f.finish(), whole);
    }

    #[test]
    fn values_are_fixed_and_inputs_are_told_apart() {
        // Fixed forever: caches on disk are named by these values.
        assert_eq!(of_bytes(b""), 0x9090_306c_6e91_ed59);
        assert_eq!(
            of_bytes(b"layret fingerprint v1, 40+ bytes of input"),
            0x94c1_11a6_1e65_f334
        );
        assert_ne!(of_bytes(b"a"), of_bytes(b"b"));
        assert_ne!(of_bytes(b"ab"), of_bytes(b"ba"));
        assert_ne!(of_bytes(&[0u8; 32]), of_bytes(&[0u8; 33]));
        let mut flips = 0;
        let base = of_bytes(&[0u8; 64]);
        for i in 0..64 {
            let mut d = [0u8; 64];
            d[i] = 1;
            flips += (of_bytes(&d) ^ base).count_ones();
        }
        // About half the output bits change per one-bit input change.
        assert!((20 * 64..44 * 64).contains(&flips), "{flips}");
        let (mut a, mut b) = (Fingerprinter::new(), Fingerprinter::new());
        a.update_str("ab");
        a.update_str("c");
        b.update_str("a");
        b.update_str("bc");
        assert_ne!(a.finish(), b.finish());
    }
}
