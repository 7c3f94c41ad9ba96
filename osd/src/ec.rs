//! Erasure coding for EC pools: Reed–Solomon over GF(2^8) applied stripe by stripe.
//!
//! An object is cut into stripes of `k × stripe_unit` logical bytes. Each stripe becomes k data
//! chunks (its consecutive stripe units) plus m coding chunks; shard i of the object is chunk i
//! of every stripe, concatenated. Logical bytes `[s·k·su + i·su, s·k·su + (i+1)·su)` therefore
//! live in shard i at shard bytes `[s·su, (s+1)·su)`, and any k of the k + m shards rebuild
//! the rest. The last stripe is zero-padded; the caller keeps the logical size, so padding is
//! never returned as data.
//!
//! Reed–Solomon works on each byte position independently, so coding the concatenated shards
//! in one call gives exactly the per-stripe result. That lets this module code many stripes per
//! call (in cache-sized batches) instead of paying per-stripe setup and allocations.

use std::ops::Range;

use reed_solomon_erasure::galois_8::ReedSolomon;

/// Most chunks (k + m) a stripe may have: the EC profile limit, one below the 256 that
/// Reed–Solomon over GF(2^8) could serve.
const MAX_SHARDS: usize = 255;

/// Stripe units are whole 512-byte sectors, so every shard offset (a multiple of the stripe
/// unit) stays sector-aligned for direct I/O.
const STRIPE_UNIT_ALIGN: usize = 512;

/// Bytes, summed over all k + m shards, that one Reed–Solomon call codes. One call over a
/// multi-megabyte object would stream every output shard through memory once per input shard;
/// batches this size keep inputs and outputs in L2 cache, and are still large enough that the
/// per-call bookkeeping is noise.
const BATCH_BYTES: usize = 256 << 10;

/// Why shards could not be coded, decoded, verified or joined.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EcError {
    #[error("invalid erasure-code profile: {0}")]
    InvalidProfile(String),
    #[error("expected {expected} shards, got {got}")]
    ShardCount { expected: usize, got: usize },
    #[error("shard {index} is {len} bytes but shard lengths must all be {expected}")]
    ShardLength {
        index: usize,
        len: usize,
        expected: usize,
    },
    #[error("shard {index} is {len} bytes, not a whole number of {stripe_unit}-byte stripe units")]
    Unaligned {
        index: usize,
        len: usize,
        stripe_unit: usize,
    },
    #[error("only {present} shards are present, decoding needs at least {needed}")]
    TooFewShards { present: usize, needed: usize },
    #[error("{wanted} logical bytes requested but the data shards hold only {available}")]
    ShardsTooShort { wanted: usize, available: usize },
    /// The library refused input this module already validated: a bug here, reported rather
    /// than panicking.
    #[error("reed-solomon: {0}")]
    Rs(#[from] reed_solomon_erasure::Error),
}

/// One erasure-code profile (k data chunks, m coding chunks, stripe unit) and its coder.
/// Shareable across threads: coding takes `&self`.
#[derive(Debug, Clone)]
pub struct Codec {
    k: usize,
    m: usize,
    stripe_unit: usize,
    rs: ReedSolomon,
}

impl Codec {
    /// A codec for k data + m coding chunks of `stripe_unit` bytes each per stripe.
    pub fn new(k: usize, m: usize, stripe_unit: usize) -> Result<Codec, EcError> {
        check_profile(k, m, stripe_unit)?;
        Ok(Codec {
            k,
            m,
            stripe_unit,
            rs: ReedSolomon::new(k, m)?,
        })
    }

    /// Data chunks per stripe: any k shards rebuild the object.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Coding chunks per stripe: how many lost shards the object survives.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Total shards per object, k + m.
    pub fn shard_count(&self) -> usize {
        self.k + self.m
    }

    /// Bytes of one chunk: a stripe's contribution to each shard.
    pub fn stripe_unit(&self) -> usize {
        self.stripe_unit
    }

    /// Logical bytes per stripe, k × stripe unit.
    pub fn stripe_width(&self) -> usize {
        self.k * self.stripe_unit
    }

    /// The whole stripes covering logical bytes `[offset, offset + len)`, as (first stripe,
    /// stripe count). Parity covers whole stripes, so EC reads and writes work in these units;
    /// in every shard they are bytes `[first·su, (first + count)·su)`. An empty range covers
    /// no stripes; a range running past `u64::MAX` is clamped there.
    pub fn stripe_range(&self, offset: u64, len: u64) -> (u64, u64) {
        let width = self.stripe_width() as u64;
        let first = offset / width;
        if len == 0 {
            return (first, 0);
        }
        let end = offset.saturating_add(len).div_ceil(width);
        (first, end - first)
    }

    /// Bytes each shard holds for an object of `logical_size` bytes: whole stripes, the last
    /// one padded. Saturates rather than overflowing for sizes near `u64::MAX`.
    pub fn shard_len(&self, logical_size: u64) -> u64 {
        let stripes = logical_size.div_ceil(self.stripe_width() as u64);
        stripes.saturating_mul(self.stripe_unit as u64)
    }

    /// Zero-pads `data` to whole stripes, the form in which it is coded. `encode` pads
    /// implicitly; this is for callers that need the padded logical bytes themselves (for
    /// example to merge a partial-stripe write into a stripe read back).
    pub fn pad_to_stripes(&self, data: &mut Vec<u8>) {
        let width = self.stripe_width();
        data.resize(data.len().div_ceil(width) * width, 0);
    }

    /// Codes logical bytes into k + m shards of `shard_len(data.len())` bytes each: data shards
    /// first, then coding shards. A last stripe short of `stripe_width` bytes is coded as if
    /// zero-padded, exactly as `pad_to_stripes` would pad it, without copying `data`.
    pub fn encode(&self, data: &[u8]) -> Vec<Vec<u8>> {
        let len = data.len().div_ceil(self.stripe_width()) * self.stripe_unit;
        let mut shards: Vec<Vec<u8>> = (0..self.shard_count()).map(|_| vec![0; len]).collect();
        let (data_shards, parity_shards) = shards.split_at_mut(self.k);
        for range in self.batches(len) {
            self.scatter(data, &range, data_shards);
            let inputs: Vec<&[u8]> = data_shards.iter().map(|s| &s[range.clone()]).collect();
            let mut outputs: Vec<&mut [u8]> = parity_shards
                .iter_mut()
                .map(|s| &mut s[range.clone()])
                .collect();
            self.rs
                .encode_sep(&inputs, &mut outputs)
                .expect("k inputs and m outputs of one non-empty length, by construction");
        }
        shards
    }

    /// Rebuilds every missing (`None`) shard of `shards`, which holds all k + m shards in
    /// order, present ones of one length in whole stripe units. Needs at least k present.
    /// Present shards are trusted: leave out any that failed their checksums.
    pub fn decode(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), EcError> {
        self.reconstruct(shards, false)
    }

    /// Like `decode`, but rebuilds only missing data shards, leaving missing coding shards
    /// `None`: all a read needs, at less cost.
    pub fn reconstruct_data(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), EcError> {
        self.reconstruct(shards, true)
    }

    /// Whether the coding shards match the data shards (deep scrub). `shards` holds all k + m
    /// shards in order, of one length in whole stripe units. Memory use is one batch, not one
    /// shard, whatever the object size.
    pub fn verify<T: AsRef<[u8]>>(&self, shards: &[T]) -> Result<bool, EcError> {
        self.check_count(shards.len())?;
        let len = self.common_len(shards.iter().map(|s| s.as_ref().len()).enumerate())?;
        let mut scratch = vec![vec![0; self.batch_len().min(len)]; self.m];
        for range in self.batches(len) {
            let slices: Vec<&[u8]> = shards.iter().map(|s| &s.as_ref()[range.clone()]).collect();
            let mut expected: Vec<&mut [u8]> =
                scratch.iter_mut().map(|b| &mut b[..range.len()]).collect();
            if !self.rs.verify_with_buffer(&slices, &mut expected)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The first `out_len` logical bytes held by the data shards: the first k entries of
    /// `shards` (so all k + m decoded shards may be passed), of one length in whole stripe
    /// units. Shards read from stripe `first` on give logical bytes from `first × width` on.
    pub fn join_data<T: AsRef<[u8]>>(
        &self,
        shards: &[T],
        out_len: usize,
    ) -> Result<Vec<u8>, EcError> {
        let data = shards.get(..self.k).ok_or(EcError::ShardCount {
            expected: self.k,
            got: shards.len(),
        })?;
        let len = self.common_len(data.iter().map(|s| s.as_ref().len()).enumerate())?;
        let available = len * self.k;
        if out_len > available {
            return Err(EcError::ShardsTooShort {
                wanted: out_len,
                available,
            });
        }
        let su = self.stripe_unit;
        let mut out = Vec::with_capacity(out_len);
        for chunk in 0..out_len.div_ceil(su) {
            let at = chunk / self.k * su;
            let take = su.min(out_len - out.len());
            out.extend_from_slice(&data[chunk % self.k].as_ref()[at..at + take]);
        }
        Ok(out)
    }

    /// Shared body of `decode` and `reconstruct_data`: validates, allocates the shards to
    /// rebuild, then codes them batch by batch.
    fn reconstruct(&self, shards: &mut [Option<Vec<u8>>], data_only: bool) -> Result<(), EcError> {
        self.check_count(shards.len())?;
        let present: Vec<bool> = shards.iter().map(Option::is_some).collect();
        let have = present.iter().filter(|&&p| p).count();
        if have < self.k {
            return Err(EcError::TooFewShards {
                present: have,
                needed: self.k,
            });
        }
        let lens = shards
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.as_ref()?.len())));
        let len = self.common_len(lens)?;
        let wanted = if data_only {
            self.k
        } else {
            self.shard_count()
        };
        for shard in shards[..wanted].iter_mut().filter(|s| s.is_none()) {
            *shard = Some(vec![0; len]);
        }
        // Reed–Solomon rejects empty shards; an empty object's shards need no coding.
        if len == 0 || present[..wanted].iter().all(|&p| p) {
            return Ok(());
        }
        for range in self.batches(len) {
            let mut views: Vec<(&mut [u8], bool)> = shards
                .iter_mut()
                .zip(&present)
                .map(|(shard, &was_present)| match shard {
                    Some(buf) => (&mut buf[range.clone()], was_present),
                    None => (&mut [][..], false),
                })
                .collect();
            if data_only {
                self.rs.reconstruct_data(&mut views)?;
            } else {
                self.rs.reconstruct(&mut views)?;
            }
        }
        Ok(())
    }

    /// Copies the logical bytes of the stripes stored at shard bytes `range` into the data
    /// shards, whose padding is already zero.
    fn scatter(&self, data: &[u8], range: &Range<usize>, data_shards: &mut [Vec<u8>]) {
        let su = self.stripe_unit;
        let width = self.stripe_width();
        let lo = (range.start / su * width).min(data.len());
        let hi = (range.end / su * width).min(data.len());
        let first_chunk = range.start / su * self.k;
        for (n, bytes) in data[lo..hi].chunks(su).enumerate() {
            let chunk = first_chunk + n;
            let at = chunk / self.k * su;
            data_shards[chunk % self.k][at..at + bytes.len()].copy_from_slice(bytes);
        }
    }

    /// Shard byte ranges of at most one batch each, in whole stripe units, covering
    /// `[0, shard_len)`.
    fn batches(&self, shard_len: usize) -> impl Iterator<Item = Range<usize>> {
        let step = self.batch_len();
        (0..shard_len)
            .step_by(step)
            .map(move |start| start..shard_len.min(start.saturating_add(step)))
    }

    /// Per-shard bytes of one batch: as many stripe units as fit `BATCH_BYTES` across all
    /// shards, and at least one.
    fn batch_len(&self) -> usize {
        let stripe_bytes = self.shard_count().saturating_mul(self.stripe_unit);
        (BATCH_BYTES / stripe_bytes).max(1) * self.stripe_unit
    }

    fn check_count(&self, got: usize) -> Result<(), EcError> {
        if got == self.shard_count() {
            Ok(())
        } else {
            Err(EcError::ShardCount {
                expected: self.shard_count(),
                got,
            })
        }
    }

    /// The length shared by the given (index, length) shards, which must be whole stripe
    /// units since shards hold whole stripes; 0 when there are none.
    fn common_len(&self, lens: impl Iterator<Item = (usize, usize)>) -> Result<usize, EcError> {
        let mut expected = None;
        for (index, len) in lens {
            match expected {
                None if !len.is_multiple_of(self.stripe_unit) => {
                    return Err(EcError::Unaligned {
                        index,
                        len,
                        stripe_unit: self.stripe_unit,
                    })
                }
                None => expected = Some(len),
                Some(expected) if expected != len => {
                    return Err(EcError::ShardLength {
                        index,
                        len,
                        expected,
                    })
                }
                Some(_) => {}
            }
        }
        Ok(expected.unwrap_or(0))
    }
}

/// Rejects profiles the coder cannot serve, with the rule that was broken.
fn check_profile(k: usize, m: usize, stripe_unit: usize) -> Result<(), EcError> {
    let invalid = |why: String| Err(EcError::InvalidProfile(why));
    if k == 0 {
        return invalid("k (data chunks per stripe) must be at least 1".into());
    }
    if m == 0 {
        return invalid(
            "m (coding chunks per stripe) must be at least 1; without coding chunks a lost \
             shard loses data"
                .into(),
        );
    }
    if k > MAX_SHARDS || m > MAX_SHARDS - k {
        return invalid(format!(
            "k + m must be at most {MAX_SHARDS}, got k = {k}, m = {m}"
        ));
    }
    if stripe_unit == 0 || !stripe_unit.is_multiple_of(STRIPE_UNIT_ALIGN) {
        return invalid(format!(
            "stripe unit must be a positive multiple of {STRIPE_UNIT_ALIGN} bytes, got \
             {stripe_unit}"
        ));
    }
    if k.checked_mul(stripe_unit).is_none() {
        return invalid(format!(
            "stripe width k × stripe unit overflows: k = {k}, stripe unit = {stripe_unit}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};

    const SU: usize = 4096;
    const SHAPES: [(usize, usize); 3] = [(2, 1), (4, 2), (3, 2)];

    fn codec(k: usize, m: usize) -> Codec {
        Codec::new(k, m, SU).unwrap()
    }

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut bytes = vec![0; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
        bytes
    }

    /// The shards with those whose bit is set in `mask` erased.
    fn erase(shards: &[Vec<u8>], mask: u32) -> Vec<Option<Vec<u8>>> {
        let kept = |i: usize| mask & (1 << i) == 0;
        let erase_one = |(i, s): (usize, &Vec<u8>)| kept(i).then(|| s.clone());
        shards.iter().enumerate().map(erase_one).collect()
    }

    /// Every erasure mask over `n` shards with between 1 and `max` bits set.
    fn erasures(n: usize, max: usize) -> impl Iterator<Item = u32> {
        (1..1u32 << n).filter(move |mask| mask.count_ones() as usize <= max)
    }

    fn unwrap_all(shards: Vec<Option<Vec<u8>>>) -> Vec<Vec<u8>> {
        shards.into_iter().map(Option::unwrap).collect()
    }

    #[test]
    fn new_rejects_bad_profiles() {
        let bad = [
            (0, 1, SU),
            (1, 0, SU),
            (200, 56, SU),
            (256, 1, SU),
            (usize::MAX, 1, SU),
            (1, usize::MAX, SU),
            (2, 1, 0),
            (2, 1, 1000),
            (2, 1, 513),
            (4, 1, usize::MAX - 511),
        ];
        for (k, m, su) in bad {
            let err = Codec::new(k, m, su).unwrap_err();
            assert!(
                matches!(err, EcError::InvalidProfile(_)),
                "{k}+{m}/{su}: {err}"
            );
        }
        assert!(Codec::new(254, 1, 512).is_ok());
        assert!(Codec::new(1, 1, 512).is_ok());
    }

    #[test]
    fn accessors_report_the_profile() {
        let c = codec(3, 2);
        assert_eq!((c.k(), c.m(), c.shard_count()), (3, 2, 5));
        assert_eq!((c.stripe_unit(), c.stripe_width()), (SU, 3 * SU));
    }

    #[test]
    fn stripe_range_covers_odd_offsets() {
        let c = codec(3, 2);
        let w = (3 * SU) as u64;
        assert_eq!(c.stripe_range(0, 0), (0, 0));
        assert_eq!(c.stripe_range(w + 7, 0), (1, 0));
        assert_eq!(c.stripe_range(0, 1), (0, 1));
        assert_eq!(c.stripe_range(1, 1), (0, 1));
        assert_eq!(c.stripe_range(w - 1, 1), (0, 1));
        assert_eq!(c.stripe_range(w - 1, 2), (0, 2));
        assert_eq!(c.stripe_range(w, w), (1, 1));
        assert_eq!(c.stripe_range(w, w + 1), (1, 2));
        assert_eq!(c.stripe_range(5000, 20000), (0, 3));
        assert_eq!(c.stripe_range(3 * w + 4095, 2 * w), (3, 3));
        let (first, count) = c.stripe_range(u64::MAX - 1, 10);
        assert_eq!((first, count), (u64::MAX / w, 1));
    }

    #[test]
    fn shard_len_rounds_up_to_whole_stripes() {
        let c = codec(3, 2);
        let w = (3 * SU) as u64;
        let su = SU as u64;
        assert_eq!(c.shard_len(0), 0);
        assert_eq!(c.shard_len(1), su);
        assert_eq!(c.shard_len(w - 1), su);
        assert_eq!(c.shard_len(w), su);
        assert_eq!(c.shard_len(w + 1), 2 * su);
        assert_eq!(c.shard_len(10 * w + 12345), 12 * su);
        assert_eq!(codec(1, 1).shard_len(u64::MAX), u64::MAX);
    }

    #[test]
    fn pad_to_stripes_zero_fills_the_last_stripe() {
        let c = codec(3, 2);
        let mut empty = Vec::new();
        c.pad_to_stripes(&mut empty);
        assert!(empty.is_empty());
        let mut data = vec![7; 3 * SU + 1];
        c.pad_to_stripes(&mut data);
        assert_eq!(data.len(), 6 * SU);
        assert_eq!(data[3 * SU], 7);
        assert!(data[3 * SU + 1..].iter().all(|&b| b == 0));
        let whole = data.clone();
        c.pad_to_stripes(&mut data);
        assert_eq!(data, whole);
    }

    #[test]
    fn round_trips_every_shape_and_size() {
        for (k, m) in SHAPES {
            let c = codec(k, m);
            let sizes = [0, 1, SU - 1, SU, k * SU, k * SU + 1, (1 << 20) + 3333];
            for (seed, size) in sizes.into_iter().enumerate() {
                let data = random_bytes(size, seed as u64);
                let shards = c.encode(&data);
                assert_eq!(shards.len(), k + m);
                for shard in &shards {
                    assert_eq!(shard.len() as u64, c.shard_len(size as u64));
                }
                assert_eq!(c.verify(&shards), Ok(true), "{k}+{m} size {size}");
                assert_eq!(c.join_data(&shards, size).unwrap(), data);

                // Lose the first m shards: all data shards when k <= m.
                let mut lost = erase(&shards, (1 << m) - 1);
                c.decode(&mut lost).unwrap();
                assert_eq!(unwrap_all(lost), shards, "{k}+{m} size {size}");
            }
        }
    }

    #[test]
    fn encode_lays_out_chunk_i_of_every_stripe_in_shard_i() {
        for (k, m) in SHAPES {
            let c = codec(k, m);
            // Enough stripes for several batches and a partial last batch and stripe.
            let stripes = 3 * c.batch_len() / SU + 2;
            let data = random_bytes((stripes - 1) * c.stripe_width() + 100, 7);
            let shards = c.encode(&data);
            let mut padded = data.clone();
            c.pad_to_stripes(&mut padded);
            for (s, stripe) in padded.chunks(c.stripe_width()).enumerate() {
                let mut alone: Vec<Vec<u8>> = stripe.chunks(SU).map(<[u8]>::to_vec).collect();
                alone.resize(k + m, vec![0; SU]);
                c.rs.encode(&mut alone).unwrap();
                for (i, chunk) in alone.iter().enumerate() {
                    assert_eq!(
                        &shards[i][s * SU..(s + 1) * SU],
                        chunk,
                        "stripe {s} chunk {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn encode_pads_a_partial_stripe_like_pad_to_stripes() {
        let c = codec(4, 2);
        let mut data = random_bytes(5 * c.stripe_width() + 4097, 11);
        let shards = c.encode(&data);
        c.pad_to_stripes(&mut data);
        assert_eq!(c.encode(&data), shards);
    }

    #[test]
    fn decode_recovers_any_m_erasures() {
        for (k, m) in SHAPES {
            let c = codec(k, m);
            let size = 2 * c.batch_len() / SU * c.stripe_width() + 1234;
            let shards = c.encode(&random_bytes(size, (k * 10 + m) as u64));
            for mask in erasures(k + m, m) {
                let mut lost = erase(&shards, mask);
                c.decode(&mut lost).unwrap();
                assert_eq!(unwrap_all(lost), shards, "{k}+{m} mask {mask:#b}");
            }
        }
    }

    #[test]
    fn reconstruct_data_leaves_missing_parity_absent() {
        for (k, m) in SHAPES {
            let c = codec(k, m);
            let data = random_bytes(7 * c.stripe_width() + 99, 3);
            let shards = c.encode(&data);
            for mask in erasures(k + m, m) {
                let mut lost = erase(&shards, mask);
                c.reconstruct_data(&mut lost).unwrap();
                for (i, shard) in lost.iter().enumerate() {
                    let erased_parity = i >= k && mask & (1 << i) != 0;
                    let expected = (!erased_parity).then(|| &shards[i]);
                    assert_eq!(shard.as_ref(), expected, "{k}+{m} mask {mask:#b} shard {i}");
                }
                let data_shards: Vec<Vec<u8>> = lost.into_iter().take(k).flatten().collect();
                assert_eq!(c.join_data(&data_shards, data.len()).unwrap(), data);
            }
        }
    }

    #[test]
    fn decode_with_fewer_than_k_shards_fails() {
        for (k, m) in SHAPES {
            let c = codec(k, m);
            let shards = c.encode(&random_bytes(3 * c.stripe_width(), 5));
            for mask in (1..1u32 << (k + m)).filter(|mask| mask.count_ones() as usize > m) {
                let mut lost = erase(&shards, mask);
                let before = lost.clone();
                let err = c.decode(&mut lost).unwrap_err();
                assert_eq!(
                    err,
                    EcError::TooFewShards {
                        present: k + m - mask.count_ones() as usize,
                        needed: k
                    }
                );
                assert_eq!(c.reconstruct_data(&mut lost).unwrap_err(), err);
                assert_eq!(lost, before, "a failed decode leaves the shards alone");
            }
        }
    }

    #[test]
    fn decode_rejects_bad_shard_sets_without_panicking() {
        let c = codec(4, 2);
        let shards = c.encode(&random_bytes(2 * c.stripe_width(), 9));

        let mut short = erase(&shards[..5], 0b1);
        let err = c.decode(&mut short).unwrap_err();
        assert_eq!(
            err,
            EcError::ShardCount {
                expected: 6,
                got: 5
            }
        );

        let mut uneven = erase(&shards, 0b1);
        uneven[3].as_mut().unwrap().truncate(SU);
        let err = c.decode(&mut uneven).unwrap_err();
        assert_eq!(
            err,
            EcError::ShardLength {
                index: 3,
                len: SU,
                expected: 2 * SU
            }
        );

        let mut unaligned = erase(&shards, 0b1);
        for shard in unaligned.iter_mut().flatten() {
            shard.push(0);
        }
        let err = c.decode(&mut unaligned).unwrap_err();
        assert_eq!(
            err,
            EcError::Unaligned {
                index: 1,
                len: 2 * SU + 1,
                stripe_unit: SU
            }
        );
    }

    #[test]
    fn decode_fills_in_an_empty_object() {
        let c = codec(3, 2);
        let shards = c.encode(&[]);
        let mut lost = erase(&shards, 0b10010);
        c.decode(&mut lost).unwrap();
        assert_eq!(unwrap_all(lost), vec![Vec::<u8>::new(); 5]);
    }

    #[test]
    fn verify_detects_a_corrupted_byte() {
        for (k, m) in SHAPES {
            let c = codec(k, m);
            let size = 2 * c.batch_len() / SU * c.stripe_width() + 1;
            let mut shards = c.encode(&random_bytes(size, 13));
            let len = shards[0].len();
            for i in 0..k + m {
                for at in [0, SU - 1, len / 2, len - 1] {
                    shards[i][at] ^= 0x40;
                    assert_eq!(c.verify(&shards), Ok(false), "{k}+{m} shard {i} byte {at}");
                    shards[i][at] ^= 0x40;
                }
            }
            assert_eq!(c.verify(&shards), Ok(true));
        }
    }

    #[test]
    fn verify_rejects_bad_shard_sets_without_panicking() {
        let c = codec(2, 1);
        let mut shards = c.encode(&random_bytes(3 * c.stripe_width(), 17));
        let err = EcError::ShardCount {
            expected: 3,
            got: 2,
        };
        assert_eq!(c.verify(&shards[..2]), Err(err));
        shards[2].truncate(SU);
        let err = EcError::ShardLength {
            index: 2,
            len: SU,
            expected: 3 * SU,
        };
        assert_eq!(c.verify(&shards), Err(err));
        let odd = [vec![0; 100], vec![0; 100], vec![0; 100]];
        let err = EcError::Unaligned {
            index: 0,
            len: 100,
            stripe_unit: SU,
        };
        assert_eq!(c.verify(&odd), Err(err));
    }

    #[test]
    fn join_data_truncates_and_rejects_short_or_missing_shards() {
        let c = codec(3, 2);
        let data = random_bytes(2 * c.stripe_width() + 5000, 19);
        let shards = c.encode(&data);
        assert_eq!(c.join_data(&shards[..3], 4097).unwrap(), data[..4097]);
        assert_eq!(c.join_data(&shards, 0).unwrap(), Vec::<u8>::new());
        let padded_len = 3 * c.stripe_width();
        assert_eq!(c.join_data(&shards, padded_len).unwrap().len(), padded_len);

        let err = EcError::ShardsTooShort {
            wanted: padded_len + 1,
            available: padded_len,
        };
        assert_eq!(c.join_data(&shards, padded_len + 1), Err(err));
        let err = EcError::ShardCount {
            expected: 3,
            got: 2,
        };
        assert_eq!(c.join_data(&shards[..2], 1), Err(err));
        let uneven = [&shards[0][..], &shards[1][..SU], &shards[2][..]];
        let err = EcError::ShardLength {
            index: 1,
            len: SU,
            expected: 3 * SU,
        };
        assert_eq!(c.join_data(&uneven, 1), Err(err));
    }

    #[test]
    fn join_data_of_later_stripes_starts_at_their_logical_offset() {
        let c = codec(2, 1);
        let data = random_bytes(5 * c.stripe_width(), 23);
        let shards = c.encode(&data);
        let (first, count) = c.stripe_range(2 * c.stripe_width() as u64 + 10, 100);
        let range = first as usize * SU..(first + count) as usize * SU;
        let read: Vec<&[u8]> = shards.iter().map(|s| &s[range.clone()]).collect();
        let from = first as usize * c.stripe_width();
        assert_eq!(
            c.join_data(&read, c.stripe_width()).unwrap(),
            data[from..from + c.stripe_width()]
        );
    }

    #[test]
    fn codec_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Codec>();
    }
}
