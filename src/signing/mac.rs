//! The fixed-cost parts of a signature, kept small because most webhook
//! bodies are under 1 KiB and these costs are paid once per signature:
//! a pre-keyed HMAC-SHA256 on SHA-256's compression function, the decimal
//! timestamp, and base64 of fixed-size outputs.
//!
//! The HMAC is RFC 2104 built on `sha2::compress256` (which picks SHA-NI or
//! the ARMv8 SHA instructions at run time) rather than on `hmac::Hmac`: each
//! signature copies two 32-byte states instead of the whole generic MAC
//! state, and the outer hash is one block assembled on the stack. Tests check
//! it against the `hmac` crate for every length that changes the padding.

use std::slice;

use sha2::compress256;
use sha2::digest::block_buffer::{BlockBuffer, Eager};
use sha2::digest::consts::U64;
use sha2::digest::generic_array::GenericArray;
use sha2::{Digest as _, Sha256};

/// SHA-256 block size.
pub(super) const BLOCK_LEN: usize = 64;

/// Length of an HMAC-SHA256 output.
pub(super) const MAC_LEN: usize = 32;

type Block = GenericArray<u8, U64>;

/// SHA-256 initial state (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// HMAC-SHA256 with the key already absorbed: the SHA-256 states after the
/// inner (`key ^ 0x36`) and outer (`key ^ 0x5c`) key blocks.
///
/// The states are as secret as the key; there is no `Debug`.
#[derive(Clone)]
pub(super) struct KeyedMac {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl KeyedMac {
    pub(super) fn new(key: &[u8]) -> KeyedMac {
        let mut padded = [0u8; BLOCK_LEN];
        if key.len() > BLOCK_LEN {
            padded[..MAC_LEN].copy_from_slice(&Sha256::digest(key));
        } else {
            padded[..key.len()].copy_from_slice(key);
        }
        let absorb = |xor: u8| {
            let mut block = Block::default();
            for (b, k) in block.iter_mut().zip(padded) {
                *b = k ^ xor;
            }
            let mut state = IV;
            compress256(&mut state, slice::from_ref(&block));
            state
        };
        KeyedMac {
            inner: absorb(0x36),
            outer: absorb(0x5c),
        }
    }

    /// The MAC of `a ‖ b ‖ body`.
    #[inline]
    pub(super) fn mac3(&self, a: &[u8], b: &[u8], body: &[u8]) -> [u8; MAC_LEN] {
        let mut out = [0u8; MAC_LEN];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.mac3_words(a, b, body)) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// The MAC of `{id}.{ts}.{body}` as SHA-256's eight big-endian words.
    ///
    /// The common case (an id of at most 48 bytes and a timestamp of at
    /// most 13 digits) is assembled with fewer copies and stores than
    /// [`KeyedMac::mac3_words`]: the timestamp is formatted in a register
    /// and written with its padding zeros in one 16-byte piece, with no
    /// buffer of its own and no copy out of one. The compression reads its
    /// first block back only once those stores have left the store buffer
    /// (its 16-byte loads straddle several of them), so they sit on every
    /// signature's critical path. Other inputs take
    /// [`KeyedMac::mac3_words`].
    ///
    /// Out of line: inlined into each caller it measured 2-3 % slower at
    /// 64 B and 1 KiB.
    #[inline(never)]
    pub(super) fn mac_v1_words(&self, id: &[u8], ts: i64, body: &[u8]) -> [u32; 8] {
        if let Some((text, ts_len)) = dotted_u128(ts)
            && id.len() <= BLOCK_LEN - 16
        {
            let head = id.len() + ts_len;
            let total = head + body.len();
            let mut blocks = [Block::default(); 2];
            blocks[0][..id.len()].copy_from_slice(id);
            // The bytes past the timestamp are zeros: padding where the
            // body is shorter than they are, overwritten by it otherwise.
            blocks[0][id.len()..id.len() + 16].copy_from_slice(&text.to_le_bytes());
            if total > SHORT_LEN {
                // Longer: the first block, then the rest of the body.
                let (start, rest) = body.split_at(BLOCK_LEN - head);
                blocks[0][head..].copy_from_slice(start);
                return self.mac_after_first(&blocks[0], rest, total);
            }
            put(&mut blocks, head, body);
            blocks[total / BLOCK_LEN][total % BLOCK_LEN] = 0x80;
            let n = if total < BLOCK_LEN - 8 { 1 } else { 2 };
            let bits = ((BLOCK_LEN + total) as u64) * 8;
            blocks[n - 1][BLOCK_LEN - 8..].copy_from_slice(&bits.to_be_bytes());
            let mut state = self.inner;
            compress256(&mut state, &blocks[..n]);
            return self.outer_words(&state);
        }
        self.mac_v1_words_general(id, ts, body)
    }

    /// [`KeyedMac::mac_v1_words`] past its common case (an id over 48 bytes,
    /// a timestamp past 13 digits), kept out of line so that the common case
    /// stays small.
    #[inline(never)]
    fn mac_v1_words_general(&self, id: &[u8], ts: i64, body: &[u8]) -> [u32; 8] {
        let mut buf = [0u8; TS_BUF_LEN];
        self.mac3_words(id, dotted_i64(ts, &mut buf), body)
    }

    /// The MAC of `a ‖ b ‖ body` as SHA-256's eight big-endian words, which
    /// [`encode_mac_words`] encodes without going through bytes.
    #[inline]
    pub(super) fn mac3_words(&self, a: &[u8], b: &[u8], body: &[u8]) -> [u32; 8] {
        let mut state = self.inner;
        let head = a.len() + b.len();
        let total = head + body.len();
        if total <= SHORT_LEN {
            // A short message and its padding fill one or two blocks: both
            // are written before either is hashed, so that the second
            // block's loads do not wait on stores still in flight (a
            // store-forwarding stall that costs a small body several ns).
            let mut blocks = [Block::default(); 2];
            put(&mut blocks, 0, a);
            put(&mut blocks, a.len(), b);
            put(&mut blocks, head, body);
            put(&mut blocks, total, &[0x80]);
            let n = if total < BLOCK_LEN - 8 { 1 } else { 2 };
            let bits = ((BLOCK_LEN + total) as u64) * 8;
            blocks[n - 1][BLOCK_LEN - 8..].copy_from_slice(&bits.to_be_bytes());
            compress256(&mut state, &blocks[..n]);
            return self.outer_words(&state);
        }
        if head < BLOCK_LEN {
            // Longer: the first block (id, timestamp, start of the body)
            // on the stack, the rest as `mac_after_first` says.
            let (start, rest) = body.split_at(BLOCK_LEN - head);
            let mut first = Block::default();
            first[..a.len()].copy_from_slice(a);
            first[a.len()..head].copy_from_slice(b);
            first[head..].copy_from_slice(start);
            return self.mac_after_first(&first, rest, total);
        }
        // An id over 50 bytes or so: the general path.
        let mut buf = BlockBuffer::<U64, Eager>::default();
        buf.digest_blocks(a, |bs| compress256(&mut state, bs));
        buf.digest_blocks(b, |bs| compress256(&mut state, bs));
        buf.digest_blocks(body, |bs| compress256(&mut state, bs));
        // Bit length of key block and message; wraps only past 2^61 bytes.
        let bits = ((BLOCK_LEN + head) as u64)
            .wrapping_add(body.len() as u64)
            .wrapping_mul(8);
        buf.len64_padding_be(bits, |block| {
            compress256(&mut state, slice::from_ref(block));
        });
        self.outer_words(&state)
    }

    /// The MAC of a message longer than [`SHORT_LEN`] given its first block
    /// and the `rest` of it (`total` bytes in all): the whole blocks of
    /// `rest` are hashed straight from it in one call, and the last one or
    /// two (its end and the padding) are written to the stack before the
    /// first block is hashed, so that their loads do not wait on stores
    /// still in flight.
    #[inline(always)]
    fn mac_after_first(&self, first: &Block, rest: &[u8], total: usize) -> [u32; 8] {
        let (middle, tail) = rest.split_at(rest.len() / BLOCK_LEN * BLOCK_LEN);
        let mut last = [Block::default(); 2];
        put(&mut last, 0, tail);
        put(&mut last, tail.len(), &[0x80]);
        let n = if tail.len() < BLOCK_LEN - 8 { 1 } else { 2 };
        // Bit length of key block and message; wraps only past 2^61 bytes.
        let bits = ((BLOCK_LEN + total) as u64).wrapping_mul(8);
        last[n - 1][BLOCK_LEN - 8..].copy_from_slice(&bits.to_be_bytes());
        let mut state = self.inner;
        compress256(&mut state, slice::from_ref(first));
        // With nothing buffered, `digest_blocks` hands whole blocks over
        // without copying; `middle` is a whole number of blocks.
        let mut buf = BlockBuffer::<U64, Eager>::default();
        buf.digest_blocks(middle, |bs| compress256(&mut state, bs));
        debug_assert_eq!(buf.get_pos(), 0);
        compress256(&mut state, &last[..n]);
        self.outer_words(&state)
    }

    /// The outer hash of an inner hash state: one block, on the stack.
    #[inline(always)]
    fn outer_words(&self, state: &[u32; 8]) -> [u32; 8] {
        // Outer hash: key block (absorbed), then the 32-byte inner hash,
        // padded into a single block.
        // The constant second half is copied whole, in 16-byte pieces that
        // the compression's loads take straight from the stores.
        let mut block = Block::default();
        for (chunk, word) in block[..MAC_LEN].chunks_exact_mut(4).zip(*state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        block[MAC_LEN..].copy_from_slice(&OUTER_PAD);
        let mut outer = self.outer;
        compress256(&mut outer, slice::from_ref(&block));
        outer
    }
}

/// The second half of the outer hash's block: `0x80`, zeros, and the bit
/// length of the key block and the inner hash.
const OUTER_PAD: [u8; BLOCK_LEN - MAC_LEN] = {
    let mut pad = [0u8; BLOCK_LEN - MAC_LEN];
    pad[0] = 0x80;
    let bits = (((BLOCK_LEN + MAC_LEN) * 8) as u64).to_be_bytes();
    let mut i = 0;
    while i < 8 {
        pad[BLOCK_LEN - MAC_LEN - 8 + i] = bits[i];
        i += 1;
    }
    pad
};

/// Longest message whose padding (`0x80` and the 8-byte length) still fits
/// two blocks.
const SHORT_LEN: usize = 2 * BLOCK_LEN - 9;

/// Writes `src` at byte `at` of two consecutive blocks.
#[inline(always)]
fn put(blocks: &mut [Block; 2], at: usize, src: &[u8]) {
    let [first, second] = blocks;
    if at >= BLOCK_LEN {
        second[at - BLOCK_LEN..at - BLOCK_LEN + src.len()].copy_from_slice(src);
    } else {
        let split = src.len().min(BLOCK_LEN - at);
        first[at..at + split].copy_from_slice(&src[..split]);
        second[..src.len() - split].copy_from_slice(&src[split..]);
    }
}

/// Room for `.{i64}.`: 20 characters for `i64::MIN` and two dots.
pub(super) const TS_BUF_LEN: usize = 22;

/// `"00"` to `"99"`.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// [`DIGIT_PAIRS`] as little-endian `u16`s: the tens digit in the low byte.
static DIGIT_PAIRS_LE: [u16; 100] = {
    let mut table = [0u16; 100];
    let mut i = 0;
    while i < 100 {
        table[i] = u16::from_le_bytes([DIGIT_PAIRS[2 * i], DIGIT_PAIRS[2 * i + 1]]);
        i += 1;
    }
    table
};

/// `.{v}.` (`v` in decimal) as text in a `u128`, first character in the
/// low byte and zeros after the last, and its length; `None` past 16
/// characters (13 digits and a sign).
#[inline(always)]
pub(super) fn dotted_u128(v: i64) -> Option<(u128, usize)> {
    if (1_000_000_000..10_000_000_000).contains(&v) {
        // Ten digits: every timestamp from 2001 to 2286.
        return Some((dotted_ten_digits(v as u64), 12));
    }
    let mut n = v.unsigned_abs();
    if n >= 10_000_000_000_000 {
        return None;
    }
    // Built from the end: each character or pair shifts in at the front.
    let mut text = u128::from(b'.');
    let mut len = 1;
    while n >= 100 {
        text = text << 16 | u128::from(DIGIT_PAIRS_LE[(n % 100) as usize]);
        n /= 100;
        len += 2;
    }
    if n >= 10 {
        text = text << 16 | u128::from(DIGIT_PAIRS_LE[n as usize]);
        len += 2;
    } else {
        text = text << 8 | u128::from(b'0' + n as u8);
        len += 1;
    }
    if v < 0 {
        text = text << 8 | u128::from(b'-');
        len += 1;
    }
    Some((text << 8 | u128::from(b'.'), len + 1))
}

/// `.{n}.` for a ten-digit `n` as text in a `u128` (first character in the
/// low byte): two digits from [`DIGIT_PAIRS_LE`], the other eight at once
/// in the lanes of one `u64` (SWAR), a short chain of multiplies instead of
/// one division by 100 per pair.
#[inline(always)]
fn dotted_ten_digits(n: u64) -> u128 {
    debug_assert!((1_000_000_000..10_000_000_000).contains(&n));
    let (head, low) = (n / 100_000_000, n % 100_000_000);
    // Two 4-digit halves in 32-bit lanes, the leading half in the low lane.
    let v = (low / 10_000) | ((low % 10_000) << 32);
    // Per lane: x / 100 as (x * 5243) >> 19, exact for x < 43_699.
    let hundreds = ((v * 5243) >> 19) & 0x0000_007f_0000_007f;
    let pairs = hundreds | (v - hundreds * 100) << 16;
    // Per 16-bit lane: x / 10 as (x * 103) >> 10, exact for x < 179.
    let tens = ((pairs * 103) >> 10) & 0x000f_000f_000f_000f;
    let digits = tens | (pairs - tens * 10) << 8;
    u128::from(b'.')
        | u128::from(DIGIT_PAIRS_LE[head as usize]) << 8
        | u128::from(digits | 0x3030_3030_3030_3030) << 24
        | u128::from(b'.') << 88
}

/// Writes `.{v}.` (`v` in decimal) at the end of `buf` and returns it.
#[inline]
pub(super) fn dotted_i64(v: i64, buf: &mut [u8; TS_BUF_LEN]) -> &[u8] {
    let mut n = v.unsigned_abs();
    let mut i = buf.len() - 1;
    buf[i] = b'.';
    // Two digits per division: half the multiply chain of one at a time.
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    if v < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    i -= 1;
    buf[i] = b'.';
    &buf[i..]
}

/// Standard base64 alphabet.
const B64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 of every 12-bit value: two characters per lookup, half the
/// lookups of the 64-entry alphabet (8 KiB).
static B64_PAIRS: [[u8; 2]; 4096] = {
    let mut table = [[0u8; 2]; 4096];
    let mut i = 0;
    while i < 4096 {
        table[i] = [B64_ALPHABET[i >> 6], B64_ALPHABET[i & 63]];
        i += 1;
    }
    table
};

/// Length of the padded standard base64 of `n` bytes.
pub(super) const fn b64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Padded standard base64 of `src` into `dst`, which must be exactly
/// [`b64_len`]`(src.len())` bytes. Inlined so that fixed sizes unroll.
#[inline(always)]
pub(super) fn encode_b64(src: &[u8], dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), b64_len(src.len()));
    let full = src.len() / 3;
    let (groups, tail) = src.split_at(full * 3);
    let (dst_groups, dst_tail) = dst.split_at_mut(full * 4);
    for (s, d) in groups.chunks_exact(3).zip(dst_groups.chunks_exact_mut(4)) {
        let n = usize::from(s[0]) << 16 | usize::from(s[1]) << 8 | usize::from(s[2]);
        d[..2].copy_from_slice(&B64_PAIRS[n >> 12]);
        d[2..].copy_from_slice(&B64_PAIRS[n & 0xfff]);
    }
    match *tail {
        [a] => {
            let n = usize::from(a) << 4;
            dst_tail.copy_from_slice(&[B64_PAIRS[n][0], B64_PAIRS[n][1], b'=', b'=']);
        }
        [a, b] => {
            let n = usize::from(a) << 16 | usize::from(b) << 8;
            let hi = B64_PAIRS[n >> 12];
            dst_tail.copy_from_slice(&[hi[0], hi[1], B64_ALPHABET[(n >> 6) & 63], b'=']);
        }
        _ => {}
    }
}

/// Padded standard base64 of a MAC given as SHA-256's eight big-endian
/// words, into `dst` (44 bytes).
///
/// The words are taken as four 64-bit values, and each 12-bit half of a
/// 3-byte group (two characters, one [`B64_PAIRS`] lookup) is one shift of
/// one or two of them: about half the work of encoding from bytes, which
/// counts for small bodies. Each pair is stored on its own: fewer, wider
/// stores of several pairs measured slower (each then waits on more work,
/// and the end of the signature waits on the last of them).
#[inline(always)]
pub(super) fn encode_mac_words(w: &[u32; 8], dst: &mut [u8]) {
    let p = |i: usize| u64::from(w[2 * i]) << 32 | u64::from(w[2 * i + 1]);
    let (x0, x1, x2, x3) = (p(0), p(1), p(2), p(3));
    // Each 24-bit group as its two 12-bit halves.
    let halves: [u64; 20] = [
        x0 >> 52,
        x0 >> 40,
        x0 >> 28,
        x0 >> 16,
        x0 >> 4,
        x0 << 8 | x1 >> 56,
        x1 >> 44,
        x1 >> 32,
        x1 >> 20,
        x1 >> 8,
        x1 << 4 | x2 >> 60,
        x2 >> 48,
        x2 >> 36,
        x2 >> 24,
        x2 >> 12,
        x2,
        x3 >> 52,
        x3 >> 40,
        x3 >> 28,
        x3 >> 16,
    ];
    let (body, tail) = dst.split_at_mut(40);
    for (h, d) in halves.into_iter().zip(body.chunks_exact_mut(2)) {
        d.copy_from_slice(&B64_PAIRS[(h & 0xfff) as usize]);
    }
    // The last two bytes: 16 bits, three characters and one `=`.
    let last = (x3 & 0xffff) as usize;
    let hi = B64_PAIRS[last >> 4];
    tail.copy_from_slice(&[hi[0], hi[1], B64_ALPHABET[(last << 2) & 63], b'=']);
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, Mac};
    use rand::Rng as _;

    use super::*;

    #[test]
    fn mac3_matches_hmac_crate() {
        let mut rng = rand::rng();
        let data: Vec<u8> = (0..700).map(|_| rng.random()).collect();
        for key_len in [0, 1, 24, 32, 63, 64, 65, 100] {
            let key = &data[500..500 + key_len];
            let ours = KeyedMac::new(key);
            let reference = Hmac::<Sha256>::new_from_slice(key).unwrap();
            for (a_len, b_len) in [
                (0, 0),
                (1, 12),
                (31, 12),
                (52, 11),
                (53, 11),
                (60, 10),
                (64, 0),
                (70, 22),
            ] {
                for body_len in (0..=200).chain([255, 256, 257, 300, 400]) {
                    let (a, b) = (&data[..a_len], &data[100..100 + b_len]);
                    let body = &data[200..200 + body_len];
                    let mut mac = reference.clone();
                    mac.update(a);
                    mac.update(b);
                    mac.update(body);
                    let expected: [u8; MAC_LEN] = mac.finalize().into_bytes().into();
                    assert_eq!(
                        ours.mac3(a, b, body),
                        expected,
                        "key {key_len} a {a_len} b {b_len} body {body_len}"
                    );
                }
            }
        }
    }

    #[test]
    fn encode_mac_words_matches_base64_crate() {
        let mut rng = rand::rng();
        let mut cases = vec![[0u32; 8], [u32::MAX; 8]];
        cases.extend((0..2000).map(|_| rng.random::<[u32; 8]>()));
        for words in cases {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            let mut dst = [0u8; 44];
            encode_mac_words(&words, &mut dst);
            assert_eq!(&dst[..], STANDARD.encode(&bytes).as_bytes());
        }
    }

    #[test]
    fn mac_v1_words_matches_hmac_crate() {
        let mut rng = rand::rng();
        let data: Vec<u8> = (0..400).map(|_| rng.random()).collect();
        let key = &data[300..332];
        let ours = KeyedMac::new(key);
        let reference = Hmac::<Sha256>::new_from_slice(key).unwrap();
        let mut timestamps = vec![
            0,
            9,
            -9,
            10,
            99,
            100,
            -100,
            1_614_265_330,
            -1_614_265_330,
            999_999_999_999,
            9_999_999_999_999,
            -9_999_999_999_999,
            10_000_000_000_000,
            -10_000_000_000_000,
            i64::MAX,
            i64::MIN,
        ];
        timestamps.extend((0..20).map(|_| rng.random::<i64>() >> rng.random_range(0..63)));
        for ts in timestamps {
            for id_len in (0..=64).step_by(3).chain([31, 47, 48, 49, 70]) {
                for body_len in (0..=130).chain([183, 184, 200, 300, 1024, 1100]) {
                    let body: Vec<u8> = data
                        .iter()
                        .cycle()
                        .skip(100)
                        .take(body_len)
                        .copied()
                        .collect();
                    let (id, body) = (&data[..id_len], &body[..]);
                    let mut mac = reference.clone();
                    mac.update(id);
                    mac.update(format!(".{ts}.").as_bytes());
                    mac.update(body);
                    let expected: [u8; MAC_LEN] = mac.finalize().into_bytes().into();
                    let words = ours.mac_v1_words(id, ts, body);
                    let got: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
                    assert_eq!(got, expected, "ts {ts} id {id_len} body {body_len}");
                }
            }
        }
    }

    #[test]
    fn dotted_u128_matches_format() {
        let mut rng = rand::rng();
        let mut values = vec![
            0,
            1,
            -1,
            9,
            10,
            99,
            100,
            -100,
            1_614_265_330,
            i64::MAX,
            i64::MIN,
        ];
        for digits in 0..20 {
            let p = 10i64.saturating_pow(digits);
            values.extend([p - 1, p, p.saturating_add(1), 1 - p, -p, -p - 1]);
        }
        values.extend((0..10_000).map(|_| rng.random::<i64>() >> rng.random_range(0..63)));
        // The ten-digit fast path, its edges and every digit in each place.
        values.extend((0..20_000).map(|_| rng.random_range(1_000_000_000..10_000_000_000)));
        values.extend([1_999_999_999, 9_876_543_210, 1_000_000_001, 5_000_050_000]);
        for v in values {
            let text = format!(".{v}.");
            match dotted_u128(v) {
                Some((got, len)) => {
                    assert_eq!(len, text.len(), "{v}");
                    let mut expected = [0u8; 16];
                    expected[..len].copy_from_slice(text.as_bytes());
                    assert_eq!(got.to_le_bytes(), expected, "{v}");
                }
                None => assert!(v.unsigned_abs() >= 10_000_000_000_000, "{v}"),
            }
        }
    }

    #[test]
    fn dotted_i64_edges() {
        for v in [
            0,
            1,
            -1,
            9,
            10,
            99,
            100,
            101,
            -10,
            -100,
            1_614_265_330,
            i64::MAX,
            i64::MIN,
        ] {
            let mut buf = [0u8; TS_BUF_LEN];
            assert_eq!(dotted_i64(v, &mut buf), format!(".{v}.").as_bytes());
        }
        let mut rng = rand::rng();
        for _ in 0..10_000 {
            let v: i64 = rng.random();
            let mut buf = [0u8; TS_BUF_LEN];
            assert_eq!(dotted_i64(v, &mut buf), format!(".{v}.").as_bytes());
        }
    }

    #[test]
    fn encode_b64_matches_base64_crate() {
        let mut rng = rand::rng();
        for len in 0..=70 {
            for _ in 0..50 {
                let src: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                let mut dst = vec![0u8; b64_len(len)];
                encode_b64(&src, &mut dst);
                assert_eq!(dst, STANDARD.encode(&src).into_bytes(), "{len}");
            }
        }
        for fill in [0x00, 0xff] {
            let src = [fill; 64];
            let mut dst = [0u8; 88];
            encode_b64(&src, &mut dst);
            assert_eq!(&dst[..], STANDARD.encode(src).as_bytes());
        }
    }
}
