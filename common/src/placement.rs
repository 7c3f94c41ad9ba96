//! Placement: object name → placement group (PG) → ordered OSD set, computed from the OSD map
//! alone, so every client and daemon derives the same answer without asking anyone.
//!
//! The whole decision is integer arithmetic. The one floating-point step is turning an OSD's
//! `f64` weight into 16.16 fixed point, which is exact and fully specified by IEEE 754 on every
//! platform; logarithms are computed bit by bit in fixed point.
//!
//! # Straw2
//!
//! Each candidate OSD draws `log2(u) / weight`, with `u` in (0, 1] derived from a hash of (pool,
//! PG seed, OSD id), and the highest draw wins. `-log2(u) / weight` is an exponential
//! variable of rate `weight` (up to a constant), so an OSD wins with probability exactly
//! `weight / total`, and an OSD's draw depends on nothing but its own id and weight: adding,
//! removing or reweighting one OSD can only move data to or from that OSD.
//!
//! A failure domain (a host, or a single OSD) draws the best draw of its placeable members. The
//! maximum of independent straw2 draws is itself a straw2 draw whose weight is the sum of theirs,
//! so a host is chosen with probability proportional to the summed weight of its placeable OSDs
//! and, inside it, each OSD in proportion to its own weight: the root → host → OSD descent of
//! CRUSH, with the one difference that the host's draw and its OSD's draw are the same number.
//! That is what keeps an OSD added to an existing host from shuffling the host's other OSDs.
//!
//! OSDs that are out, have weight 0, are missing from `osds` or are listed a second time are not
//! placeable: they draw nothing, so their PGs go to the next best. OSDs that are down but in are
//! placed: the PG is degraded ([`pg_acting`]), and no data moves until they are marked out.
//!
//! # Replicated pools ("firstn")
//!
//! The failure domains are ranked once by their draw and the first `size` taken, best first. This
//! is what CRUSH's firstn retries compute in distribution (weighted sampling without
//! replacement), but a ranking has an exact minimal-movement property retries lack: adding an OSD
//! puts at most that OSD into a PG's set (pushing out one member), and marking an OSD out changes
//! only the sets that contained it, each by swapping that OSD for one other. The set has no holes
//! and is shorter than `size` only when there are fewer placeable domains.
//!
//! # Erasure-coded pools ("indep")
//!
//! Positions matter (shard `i` lives at position `i`), so each position runs its own straw2
//! race. Rather than hashing anew, position `i` of `width` turns every OSD's hash by `i / width`
//! of a full turn: each race stays exactly weight-proportional (a turned uniform hash is
//! uniform), but the positions favour OSDs from disjoint stretches of the hash circle, so they
//! seldom want the same domain, and only such conflicts force knock-on moves. Positions then
//! claim failure domains strongest draw first: a domain goes to the position that drew it
//! highest, and a position whose favourite is taken falls back to its next. A position is
//! therefore filled whenever a domain is left for it, and an unfillable position is [`NO_OSD`].
//! When an OSD goes out its position takes its next claim and the other positions keep theirs,
//! except in the rare case that the replacement is one a weaker claim had taken (then that
//! position moves too); adding an OSD likewise moves positions to it, and now and then one more.
//! No placement can avoid such knock-ons in every case: for three positions over five OSDs, no
//! assignment to all the subsets of three or more OSDs keeps "only the lost OSD's position
//! changes" for every removal (an exhaustive search finds none).

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::maps::{FailureDomain, OsdMap, Pool, PoolKind};

/// A hole in a positional (erasure-coded) set: no OSD holds that shard. An OSD with this id is
/// never placed, so the value cannot be mistaken for a real OSD.
pub const NO_OSD: u32 = u32::MAX;

/// The widest pool that can be placed; a wider one gets no OSDs. It bounds the memory and time
/// of one placement (an erasure set is allocated at full width) whatever the map says.
pub const MAX_WIDTH: usize = 256;

/// Fractional bits of the fixed-point log2: far below the 2^-32 step of `u`, so the logarithm's
/// rounding never decides a draw that the hash did not already decide.
const LOG_FRAC_BITS: u32 = 48;

/// Salts keeping the PG key and the draw hash from sharing inputs by accident.
const PG_SALT: u64 = 0x9e37_79b9_7f4a_7c15;
const DRAW_SALT: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// The hash of an object name that picks its PG: 64-bit FNV-1a over the UTF-8 bytes, then the
/// splitmix64 finalizer (FNV alone mixes its last bytes poorly into the high bits), folded to 32
/// bits by xoring the halves. Part of the on-disk and on-wire contract: it must never change.
pub fn object_hash(name: &str) -> u32 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let fnv = name.bytes().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    let h = mix64(fnv);
    (h ^ (h >> 32)) as u32
}

/// The splitmix64 finalizer: a bijection on u64 in which every input bit flips about half of the
/// output bits.
fn mix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The mask [`stable_mod`] needs for `pg_num`: the next power of two at or above it, minus one
/// (0 for `pg_num` 0 or 1).
pub fn pg_num_mask(pg_num: u32) -> u32 {
    if pg_num <= 1 {
        0
    } else {
        u32::MAX >> (pg_num - 1).leading_zeros()
    }
}

/// `x` reduced to `0..b`, Ceph's way: with `bmask = pg_num_mask(b)`, values whose masked bits
/// fall below `b` keep them, the others also drop the mask's top bit. Growing `b` to `b + 1`
/// therefore moves only the objects whose masked bits read `b`, all from one PG into the new PG
/// `b`; a plain `x % b` would move almost every object.
pub fn stable_mod(x: u32, b: u32, bmask: u32) -> u32 {
    if x & bmask < b {
        x & bmask
    } else {
        x & (bmask >> 1)
    }
}

/// A placement group: a pool and a seed in `0..pg_num`. Written `{pool}.{seed:x}`, e.g. `1.1f`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PgId {
    pub pool: u32,
    pub seed: u32,
}

impl fmt::Display for PgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:x}", self.pool, self.seed)
    }
}

impl FromStr for PgId {
    type Err = String;

    /// Parses `{pool}.{seed}`: the pool in decimal, the seed in hexadecimal.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid PG id {s:?}: expected <pool>.<seed in hex>, e.g. 1.1f");
        let (pool, seed) = s.split_once('.').ok_or_else(bad)?;
        // `from_str_radix` alone would also take a sign (`+1`); accept digits only.
        let digits = |t: &str, radix: u32| !t.is_empty() && t.chars().all(|c| c.is_digit(radix));
        if !digits(pool, 10) || !digits(seed, 16) {
            return Err(bad());
        }
        Ok(PgId {
            pool: pool.parse().map_err(|_| bad())?,
            seed: u32::from_str_radix(seed, 16).map_err(|_| bad())?,
        })
    }
}

/// The PG holding object `name` in pool `pool_id`. With `pg_num` 0 the pool has no PGs and the
/// answer is seed 0, which [`pg_raw`] places nowhere.
pub fn object_pg(pool_id: u32, pool: &Pool, name: &str) -> PgId {
    let seed = stable_mod(object_hash(name), pool.pg_num, pg_num_mask(pool.pg_num));
    PgId {
        pool: pool_id,
        seed,
    }
}

/// Every PG of the pool, in seed order.
pub fn all_pgs(pool_id: u32, pool: &Pool) -> impl Iterator<Item = PgId> {
    (0..pool.pg_num).map(move |seed| PgId {
        pool: pool_id,
        seed,
    })
}

/// How many OSDs a PG of the pool wants: `size` copies, or `k + m` shards.
pub fn pool_width(pool: &Pool) -> usize {
    match pool.kind {
        PoolKind::Replicated { size, .. } => size as usize,
        PoolKind::Erasure { k, m, .. } => k as usize + m as usize,
    }
}

/// The OSDs the map assigns to `pg`, up or down, in order: for a replicated pool the distinct
/// failure domains' OSDs, primary first, possibly fewer than `size`; for an erasure-coded pool
/// exactly `k + m` positions, [`NO_OSD`] where no failure domain is left. Empty when the PG is
/// not one of the pool's (seed ≥ `pg_num`) or the pool is wider than [`MAX_WIDTH`].
pub fn pg_raw(map: &OsdMap, pool: &Pool, pg: PgId) -> Vec<u32> {
    let width = pool_width(pool);
    if pg.seed >= pool.pg_num || width == 0 || width > MAX_WIDTH {
        return Vec::new();
    }
    let domains = failure_domains(map, pool.failure_domain);
    let key = pg_key(pg);
    match pool.kind {
        PoolKind::Replicated { .. } => firstn(&domains, key, width),
        PoolKind::Erasure { .. } => indep(&domains, key, width),
    }
}

/// The OSDs serving `pg` now: [`pg_raw`] without the OSDs that are down. A replicated set closes
/// up (order kept, so the next OSD becomes primary); an erasure-coded set keeps its positions and
/// shows [`NO_OSD`] for the missing shards.
pub fn pg_acting(map: &OsdMap, pool: &Pool, pg: PgId) -> Vec<u32> {
    let raw = pg_raw(map, pool, pg);
    let up = |id: u32| map.osds.get(&id).is_some_and(|osd| osd.up);
    match pool.kind {
        PoolKind::Replicated { .. } => raw.into_iter().filter(|&id| up(id)).collect(),
        PoolKind::Erasure { .. } => raw
            .into_iter()
            .map(|id| if up(id) { id } else { NO_OSD })
            .collect(),
    }
}

/// The primary of an acting set: its first OSD that is not a hole.
pub fn primary(acting: &[u32]) -> Option<u32> {
    acting.iter().copied().find(|&id| id != NO_OSD)
}

/// An OSD that may receive PGs, with its weight in 16.16 fixed point (never 0).
#[derive(Clone, Copy, Debug)]
struct Member {
    id: u32,
    weight: u64,
}

/// The failure domains with at least one placeable OSD, each as its placeable OSDs: one per host
/// (in host-name order) for [`FailureDomain::Host`], one per OSD for [`FailureDomain::Osd`].
/// Only OSDs in the hierarchy (`hosts`) are placed; an OSD listed twice counts where it is first
/// listed, so no set can hold it twice.
fn failure_domains(map: &OsdMap, domain: FailureDomain) -> Vec<Vec<Member>> {
    let mut seen = BTreeSet::new();
    let mut domains = Vec::new();
    for ids in map.hosts.values() {
        let members = ids
            .iter()
            .filter(|&&id| seen.insert(id))
            .filter_map(|&id| placeable(map, id));
        match domain {
            FailureDomain::Host => {
                let host: Vec<Member> = members.collect();
                if !host.is_empty() {
                    domains.push(host);
                }
            }
            FailureDomain::Osd => domains.extend(members.map(|member| vec![member])),
        }
    }
    domains
}

/// The OSD as a placement candidate, if it is known, in and of positive weight.
fn placeable(map: &OsdMap, id: u32) -> Option<Member> {
    let osd = map.osds.get(&id)?;
    let weight = fixed_weight(osd.weight);
    (id != NO_OSD && osd.in_cluster && weight > 0).then_some(Member { id, weight })
}

/// A weight in 16.16 fixed point, as CRUSH keeps them, but in 64 bits so that no weight the
/// monitors accept is clipped. Scaling by 2^16 is exact, and rounding and the saturating cast are
/// fully specified (NaN and negatives give 0), so every platform gets the same integer. Weights
/// under 2^-17 round to 0: such an OSD is not placed.
fn fixed_weight(weight: f64) -> u64 {
    (weight * 65536.0).round() as u64
}

/// What the draws of one PG are hashed from: pool and seed, so PGs of different pools with the
/// same seed land independently.
fn pg_key(pg: PgId) -> u64 {
    mix64(((u64::from(pg.pool) << 32) | u64::from(pg.seed)) ^ PG_SALT)
}

/// A straw2 draw, `log2(u) / weight` with `u` in (0, 1], kept as the exact fraction: comparing
/// two draws then needs no division and no rounding.
#[derive(Clone, Copy, Debug)]
struct Draw {
    /// `log2(u)` in fixed point with [`LOG_FRAC_BITS`] fractional bits: in `-32 .. 0`.
    log: i64,
    /// 16.16 fixed point, never 0.
    weight: u64,
}

impl Draw {
    /// The draw of OSD `member` for the PG with `key`, its hash turned back by `turn` (in
    /// 2^-32 of a full turn): any turn of a uniform hash is uniform, so every turn is a fair race.
    fn new(key: u64, member: Member, turn: u32) -> Draw {
        let hash = (mix64(key ^ mix64(u64::from(member.id) ^ DRAW_SALT)) >> 32) as u32;
        // u = (hash + 1) / 2^32 is in (0, 1], so log2(u) = log2(hash + 1) - 32.
        let turned = u64::from(hash.wrapping_sub(turn));
        let log = log2_fixed(turned + 1) as i64 - (32 << LOG_FRAC_BITS);
        Draw {
            log,
            weight: member.weight,
        }
    }

    /// Compares `log / weight` exactly: both weights are positive, so cross-multiplying keeps
    /// the order, and the products (under 2^53 · 2^64) fit an i128.
    fn compare(&self, other: &Draw) -> Ordering {
        let lhs = i128::from(self.log) * i128::from(other.weight);
        let rhs = i128::from(other.log) * i128::from(self.weight);
        lhs.cmp(&rhs)
    }
}

/// `log2(x)` for `x ≥ 1` in fixed point with [`LOG_FRAC_BITS`] fractional bits, by the classic
/// bit-by-bit method: normalise the mantissa to [1, 2), then each squaring of it yields the next
/// fractional bit (a square of 2 or more means the bit is 1, and halves the mantissa back). The
/// mantissa keeps 63 fractional bits, so the truncation at each step stays far below the last
/// bit produced. Integer-only, hence identical everywhere.
fn log2_fixed(x: u64) -> u64 {
    let x = x.max(1);
    let int = 63 - x.leading_zeros();
    let mut mantissa = x << (63 - int);
    let mut frac = 0u64;
    for bit in (0..LOG_FRAC_BITS).rev() {
        let square = (u128::from(mantissa) * u128::from(mantissa)) >> 63;
        if square >> 64 != 0 {
            frac |= 1 << bit;
            mantissa = (square >> 1) as u64;
        } else {
            mantissa = square as u64;
        }
    }
    (u64::from(int) << LOG_FRAC_BITS) | frac
}

/// A failure domain's bid for a PG position: its best member and that member's draw.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    draw: Draw,
    osd: u32,
    /// Index into the failure domains, to keep two picks off one domain.
    domain: usize,
}

impl Candidate {
    /// Best first: the higher draw, then (only on an exact tie) the lower OSD id, so the order
    /// is total and the result never depends on how the map happens to list things.
    fn rank(&self, other: &Candidate) -> Ordering {
        other
            .draw
            .compare(&self.draw)
            .then(self.osd.cmp(&other.osd))
    }
}

/// The failure domains' bids with draws turned by `turn`, best first, at most `limit` of them.
fn ranked(domains: &[Vec<Member>], key: u64, turn: u32, limit: usize) -> Vec<Candidate> {
    let mut bids: Vec<Candidate> = domains
        .iter()
        .enumerate()
        .filter_map(|(domain, members)| {
            members
                .iter()
                .map(|&member| Candidate {
                    draw: Draw::new(key, member, turn),
                    osd: member.id,
                    domain,
                })
                .min_by(Candidate::rank)
        })
        .collect();
    bids.sort_unstable_by(Candidate::rank);
    bids.truncate(limit);
    bids
}

/// Replicated placement: the `width` best failure domains' OSDs, best first.
fn firstn(domains: &[Vec<Member>], key: u64, width: usize) -> Vec<u32> {
    ranked(domains, key, 0, width)
        .into_iter()
        .map(|bid| bid.osd)
        .collect()
}

/// Erasure-coded placement: position `i` draws with the hashes turned by `i / width` of a turn,
/// and domains go to the strongest bids first. A position only ever needs its `width` best
/// domains (the others can take at most `width - 1`), which bounds the work to `width²` bids.
fn indep(domains: &[Vec<Member>], key: u64, width: usize) -> Vec<u32> {
    let mut bids: Vec<(usize, Candidate)> = Vec::new();
    for pos in 0..width {
        // Below 2^32 since pos < width.
        let turn = ((pos as u64) << 32) / width as u64;
        bids.extend(
            ranked(domains, key, turn as u32, width)
                .into_iter()
                .map(|bid| (pos, bid)),
        );
    }
    // Strongest draw first; an exact tie goes to the lower position.
    bids.sort_unstable_by(|(pa, a), (pb, b)| {
        b.draw.compare(&a.draw).then(pa.cmp(pb)).then(a.rank(b))
    });
    let mut set = vec![NO_OSD; width];
    let mut taken = vec![false; domains.len()];
    for (pos, bid) in bids {
        if set[pos] == NO_OSD && !taken[bid.domain] {
            set[pos] = bid.osd;
            taken[bid.domain] = true;
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::maps::OsdInfo;

    const POOL: u32 = 1;

    /// A map whose host `h{i}` holds the OSDs `hosts[i]`, given as (id, weight), all up and in.
    fn cluster(hosts: &[&[(u32, f64)]]) -> OsdMap {
        let mut map = OsdMap::default();
        for (i, osds) in hosts.iter().enumerate() {
            for &(id, weight) in *osds {
                add_osd(&mut map, &format!("h{i}"), id, weight);
            }
        }
        map
    }

    /// `hosts` hosts of `per_host` OSDs of weight 1, numbered from 0 host by host.
    fn uniform(hosts: u32, per_host: u32) -> OsdMap {
        let mut map = OsdMap::default();
        for id in 0..hosts * per_host {
            add_osd(&mut map, &format!("h{}", id / per_host), id, 1.0);
        }
        map
    }

    fn add_osd(map: &mut OsdMap, host: &str, id: u32, weight: f64) {
        let info = OsdInfo {
            addr: format!("osd{id}:6800"),
            host: host.to_string(),
            weight,
            up: true,
            in_cluster: true,
            ..OsdInfo::default()
        };
        map.osds.insert(id, info);
        map.hosts.entry(host.to_string()).or_default().push(id);
    }

    fn replicated(size: u32, pg_num: u32, failure_domain: FailureDomain) -> Pool {
        Pool {
            name: "rep".into(),
            pg_num,
            kind: PoolKind::Replicated { size, min_size: 1 },
            failure_domain,
        }
    }

    fn erasure(k: u32, m: u32, pg_num: u32, failure_domain: FailureDomain) -> Pool {
        Pool {
            name: "ec".into(),
            pg_num,
            kind: PoolKind::Erasure {
                k,
                m,
                stripe_unit: 4096,
                min_size: k,
            },
            failure_domain,
        }
    }

    fn is_erasure(pool: &Pool) -> bool {
        matches!(pool.kind, PoolKind::Erasure { .. })
    }

    fn place(map: &OsdMap, pool: &Pool) -> Vec<Vec<u32>> {
        all_pgs(POOL, pool)
            .map(|pg| pg_raw(map, pool, pg))
            .collect()
    }

    /// PG-positions held by each OSD (holes not counted).
    fn counts(sets: &[Vec<u32>]) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        for &id in sets.iter().flatten().filter(|&&id| id != NO_OSD) {
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    fn members(set: &[u32]) -> BTreeSet<u32> {
        set.iter().copied().filter(|&id| id != NO_OSD).collect()
    }

    /// Checks that no two OSDs of `set` share a failure domain.
    fn assert_distinct(map: &OsdMap, pool: &Pool, set: &[u32]) {
        let osds: Vec<u32> = set.iter().copied().filter(|&id| id != NO_OSD).collect();
        let domains: BTreeSet<&str> = osds.iter().map(|id| map.osds[id].host.as_str()).collect();
        assert_eq!(members(set).len(), osds.len(), "duplicate OSD in {set:?}");
        if pool.failure_domain == FailureDomain::Host {
            assert_eq!(domains.len(), osds.len(), "two OSDs on one host in {set:?}");
        }
    }

    /// Largest relative deviation of any OSD's count from its weight share.
    fn worst_spread(map: &OsdMap, sets: &[Vec<u32>]) -> f64 {
        let counts = counts(sets);
        let total: usize = counts.values().sum();
        let weight: f64 = map.osds.values().map(|o| o.weight).sum();
        map.osds
            .iter()
            .map(|(id, osd)| {
                let expected = total as f64 * osd.weight / weight;
                let got = counts.get(id).copied().unwrap_or(0) as f64;
                (got - expected).abs() / expected
            })
            .fold(0.0, f64::max)
    }

    /// A deterministic stream of pseudo-random numbers for the randomised tests.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(PG_SALT);
            mix64(self.0) % n
        }
    }

    #[test]
    fn object_hash_is_pinned() {
        // Changing any of these re-homes every object of every existing pool.
        assert_eq!(object_hash(""), 0x5c9f_fd72);
        assert_eq!(object_hash("a"), 0x4ad4_9d47);
        assert_eq!(object_hash("rbd_data.12ab.0000000000000000"), 0xfff7_9a59);
        assert_eq!(object_hash("é"), 0x57b4_02ff);
        assert_ne!(object_hash("object-1"), object_hash("object-2"));
    }

    #[test]
    fn objects_spread_over_pgs() {
        let pool = replicated(3, 16, FailureDomain::Host);
        let mut per_pg = [0u32; 16];
        for i in 0..16_000 {
            let pg = object_pg(7, &pool, &format!("object-{i}"));
            assert_eq!(pg.pool, 7);
            per_pg[pg.seed as usize] += 1;
        }
        assert!(
            per_pg.iter().all(|&n| (900..=1100).contains(&n)),
            "{per_pg:?}"
        );
    }

    #[test]
    fn log2_fixed_is_exact_on_powers_and_close_elsewhere() {
        for k in 0..=32u32 {
            assert_eq!(log2_fixed(1 << k), u64::from(k) << LOG_FRAC_BITS);
        }
        let mut rng = Rng(1);
        let samples = (0..2000).map(|_| rng.below(1 << 32) + 1);
        for x in samples.chain([3, 5, 7, 1000, (1 << 32) - 1]) {
            let exact = (x as f64).log2() * (1u64 << LOG_FRAC_BITS) as f64;
            let error = (log2_fixed(x) as f64 - exact).abs();
            // 2^-44: sixteen units of the last bit, far below the 2^-32 step of a draw.
            assert!(error <= 16.0, "log2({x}) off by {error} units");
        }
    }

    #[test]
    fn placement_is_deterministic_and_pinned() {
        let map = uniform(5, 2);
        let rep = replicated(3, 64, FailureDomain::Host);
        let ec = erasure(2, 1, 64, FailureDomain::Osd);
        for pool in [&rep, &ec] {
            assert_eq!(place(&map, pool), place(&map.clone(), pool));
        }
        // Pinned so a change to the hash, the logarithm or the selection cannot pass unnoticed:
        // it would move data in every existing cluster.
        let pg = |seed| PgId { pool: POOL, seed };
        assert_eq!(pg_raw(&map, &rep, pg(0)), [8, 7, 1]);
        assert_eq!(pg_raw(&map, &rep, pg(0x2a)), [8, 4, 1]);
        assert_eq!(pg_raw(&map, &ec, pg(0)), [9, 6, 8]);
        assert_eq!(pg_raw(&map, &ec, pg(0x2a)), [8, 7, 9]);
    }

    #[test]
    fn sets_use_distinct_failure_domains() {
        let map = uniform(5, 2);
        let pools = [
            replicated(3, 256, FailureDomain::Host),
            replicated(4, 256, FailureDomain::Osd),
            erasure(2, 1, 256, FailureDomain::Host),
            erasure(4, 2, 256, FailureDomain::Osd),
        ];
        for pool in &pools {
            for set in place(&map, pool) {
                assert_eq!(set.len(), pool_width(pool));
                assert!(!set.contains(&NO_OSD), "{set:?}");
                assert_distinct(&map, pool, &set);
            }
        }
    }

    #[test]
    fn equal_weights_balance() {
        // 4096 PGs: over 1200 PG-positions per OSD, so sampling noise (about 3%) leaves room
        // to see a real imbalance against the 10% bound.
        let map = uniform(5, 2);
        let pools = [
            replicated(3, 4096, FailureDomain::Host),
            replicated(3, 4096, FailureDomain::Osd),
            erasure(2, 1, 4096, FailureDomain::Host),
            erasure(4, 2, 4096, FailureDomain::Osd),
        ];
        for pool in &pools {
            let spread = worst_spread(&map, &place(&map, pool));
            println!("equal weights, {pool:?}: worst OSD off its share by {spread:.3}");
            assert!(spread <= 0.10, "{pool:?}: spread {spread:.3}");
        }
    }

    #[test]
    fn unequal_weights_balance() {
        let mut map = uniform(5, 2);
        map.osds.get_mut(&0).expect("osd.0").weight = 2.0;
        // The first choice is a single straw2 race: exactly proportional to weight. 16384 PGs
        // give about 1500 primaries per light OSD, so sampling noise is under 3%.
        let sets = place(&map, &replicated(3, 16384, FailureDomain::Osd));
        let firsts: Vec<Vec<u32>> = sets.iter().map(|set| set[..1].to_vec()).collect();
        let spread = worst_spread(&map, &firsts);
        println!("unequal weights, primaries: worst OSD off its share by {spread:.3}");
        assert!(spread <= 0.10, "primaries spread {spread:.3}");
        // Over whole sets an OSD is picked at most once per PG (sampling without replacement),
        // which caps a heavy OSD below its share: 1.76 times a light one here, in theory.
        let pools = [
            replicated(3, 4096, FailureDomain::Osd),
            erasure(2, 1, 4096, FailureDomain::Osd),
        ];
        for pool in pools {
            let counts = counts(&place(&map, &pool));
            let light = counts.range(1..).map(|(_, &n)| n as f64).sum::<f64>() / 9.0;
            let ratio = counts[&0] as f64 / light;
            println!("unequal weights, {pool:?}: heavy / light = {ratio:.3}");
            assert!((1.6..=2.0).contains(&ratio), "{pool:?}: ratio {ratio:.3}");
        }
    }

    /// Moves measured when OSD 12 joins `host` of `uniform(6, 2)`: (moved, misplaced), as
    /// fractions of all PG-positions. Moved counts positions whose OSD changed; misplaced those
    /// among them that went elsewhere than the new OSD.
    fn movement_on_add(pool: &Pool, host: &str) -> (f64, f64) {
        let before_map = uniform(6, 2);
        let mut after_map = before_map.clone();
        add_osd(&mut after_map, host, 12, 1.0);
        let before = place(&before_map, pool);
        let after = place(&after_map, pool);
        let positions = (pool.pg_num as usize * pool_width(pool)) as f64;
        let (mut moved, mut misplaced) = (0, 0);
        for (old, new) in before.iter().zip(&after) {
            if is_erasure(pool) {
                let changed = old.iter().zip(new).filter(|(o, n)| o != n);
                for (_, &n) in changed {
                    moved += 1;
                    misplaced += usize::from(n != 12);
                }
            } else {
                let (old, new) = (members(old), members(new));
                let added: Vec<u32> = new.difference(&old).copied().collect();
                assert!(added.iter().all(|&id| id == 12), "{old:?} -> {new:?}");
                assert_eq!(old.difference(&new).count(), added.len());
                moved += added.len();
            }
        }
        (moved as f64 / positions, misplaced as f64 / positions)
    }

    /// Knock-on moves (positions that move although their OSD stayed, or not to the new OSD) an
    /// erasure-coded pool may make, as a fraction of all PG-positions, when one OSD joins or
    /// leaves `uniform(6, 2)`; they come from positions contending for one failure domain (see
    /// the module docs). Measured: up to 1.74% by host, 0.10% by OSD. Replicated: none.
    fn knock_on_bound(pool: &Pool) -> f64 {
        match (is_erasure(pool), pool.failure_domain) {
            (false, _) => 0.0,
            (true, FailureDomain::Host) => 0.025,
            (true, FailureDomain::Osd) => 0.005,
        }
    }

    #[test]
    fn adding_an_osd_moves_data_only_to_it() {
        let ideal = 1.0 / 13.0;
        for failure_domain in [FailureDomain::Host, FailureDomain::Osd] {
            let pools = [
                replicated(3, 2048, failure_domain),
                erasure(2, 1, 2048, failure_domain),
            ];
            for pool in &pools {
                for host in ["h0", "h6"] {
                    let (moved, misplaced) = movement_on_add(pool, host);
                    println!(
                        "add to {host}, {pool:?}: moved {moved:.4} (ideal {ideal:.4}), \
                         misplaced {misplaced:.4}"
                    );
                    assert!(
                        moved <= 1.5 * ideal && moved >= 0.5 * ideal,
                        "moved {moved:.4}"
                    );
                    assert!(
                        misplaced <= knock_on_bound(pool),
                        "misplaced {misplaced:.4}"
                    );
                }
            }
        }
    }

    #[test]
    fn marking_out_moves_only_the_pgs_it_held() {
        let before_map = uniform(6, 2);
        let mut out_map = before_map.clone();
        out_map.osds.get_mut(&3).expect("osd.3").in_cluster = false;
        let mut weightless_map = before_map.clone();
        weightless_map.osds.get_mut(&3).expect("osd.3").weight = 0.0;
        for failure_domain in [FailureDomain::Host, FailureDomain::Osd] {
            let pools = [
                replicated(3, 2048, failure_domain),
                erasure(2, 1, 2048, failure_domain),
            ];
            for pool in &pools {
                let before = place(&before_map, pool);
                let after = place(&out_map, pool);
                assert_eq!(
                    after,
                    place(&weightless_map, pool),
                    "out and weight 0 differ"
                );
                let mut knock_ons = 0;
                for (old, new) in before.iter().zip(&after) {
                    assert!(!new.contains(&3));
                    if !old.contains(&3) && !is_erasure(pool) {
                        assert_eq!(old, new);
                    } else if !is_erasure(pool) {
                        let (old, new) = (members(old), members(new));
                        assert_eq!(old.difference(&new).collect::<Vec<_>>(), vec![&3]);
                        assert_eq!(new.difference(&old).count(), 1);
                    } else {
                        let others = old.iter().zip(new).filter(|(&o, _)| o != 3);
                        knock_ons += others.filter(|(o, n)| o != n).count();
                    }
                }
                let positions = (pool.pg_num as usize * pool_width(pool)) as f64;
                let knock_ons = knock_ons as f64 / positions;
                println!("out osd.3, {pool:?}: other positions moved {knock_ons:.4}");
                assert!(
                    knock_ons <= knock_on_bound(pool),
                    "knock-ons {knock_ons:.4}"
                );
            }
        }
    }

    #[test]
    fn a_down_osd_stays_placed_but_leaves_the_acting_set() {
        let up_map = uniform(5, 2);
        let mut down_map = up_map.clone();
        down_map.osds.get_mut(&4).expect("osd.4").up = false;
        for pool in [
            replicated(3, 256, FailureDomain::Host),
            erasure(2, 2, 256, FailureDomain::Host),
        ] {
            let mut degraded = 0;
            for pg in all_pgs(POOL, &pool) {
                let raw = pg_raw(&down_map, &pool, pg);
                assert_eq!(raw, pg_raw(&up_map, &pool, pg));
                let acting = pg_acting(&down_map, &pool, pg);
                let expected: Vec<u32> = if is_erasure(&pool) {
                    raw.iter()
                        .map(|&id| if id == 4 { NO_OSD } else { id })
                        .collect()
                } else {
                    raw.iter().copied().filter(|&id| id != 4).collect()
                };
                assert_eq!(acting, expected);
                assert_eq!(
                    primary(&acting),
                    expected.iter().copied().find(|&id| id != NO_OSD)
                );
                degraded += usize::from(raw.contains(&4));
            }
            assert!(degraded > 0);
        }
    }

    #[test]
    fn too_few_domains_shorten_or_hole_the_set() {
        let map = uniform(2, 2);
        for set in place(&map, &replicated(3, 64, FailureDomain::Host)) {
            assert_eq!(set.len(), 2);
            assert_distinct(&map, &replicated(3, 64, FailureDomain::Host), &set);
        }
        let ec = erasure(2, 2, 64, FailureDomain::Host);
        for set in place(&map, &ec) {
            assert_eq!(set.len(), 4);
            assert_eq!(set.iter().filter(|&&id| id == NO_OSD).count(), 2, "{set:?}");
            assert_distinct(&map, &ec, &set);
        }
        let ec = erasure(4, 2, 64, FailureDomain::Osd);
        for set in place(&map, &ec) {
            assert_eq!(set.iter().filter(|&&id| id == NO_OSD).count(), 2, "{set:?}");
            assert_distinct(&map, &ec, &set);
        }
        let mut all_out = map.clone();
        all_out
            .osds
            .values_mut()
            .for_each(|osd| osd.in_cluster = false);
        assert!(place(&all_out, &replicated(3, 8, FailureDomain::Osd))
            .iter()
            .all(Vec::is_empty));
        assert!(place(&all_out, &ec)
            .iter()
            .flatten()
            .all(|&id| id == NO_OSD));
    }

    #[test]
    fn stable_mod_splits_only_the_new_pg() {
        let masks = [
            (0, 0),
            (1, 0),
            (2, 1),
            (3, 3),
            (5, 7),
            (12, 15),
            (16, 15),
            (17, 31),
        ];
        for (pg_num, mask) in masks {
            assert_eq!(pg_num_mask(pg_num), mask, "pg_num {pg_num}");
        }
        assert_eq!(pg_num_mask(u32::MAX), u32::MAX);
        let mut moved = 0;
        for i in 0..20_000 {
            let x = object_hash(&format!("object-{i}"));
            let old = stable_mod(x, 12, pg_num_mask(12));
            let new = stable_mod(x, 13, pg_num_mask(13));
            assert!(old < 12 && new < 13);
            if old != new {
                assert_eq!((old, new), (4, 12), "object-{i}");
                moved += 1;
            }
            let doubled = stable_mod(x, 16, pg_num_mask(16));
            assert!(doubled == stable_mod(x, 8, 7) || doubled == stable_mod(x, 8, 7) + 8);
        }
        // PG 4 held about 2/16 of the objects, half of which split off.
        assert!((1000..=1500).contains(&moved), "{moved} moved");
    }

    #[test]
    fn pg_ids_read_back_what_they_print() {
        let pg = PgId {
            pool: 1,
            seed: 0x1f,
        };
        assert_eq!(pg.to_string(), "1.1f");
        assert_eq!("1.1f".parse(), Ok(pg));
        assert_eq!("1.1F".parse(), Ok(pg));
        for pg in [(0, 0), (7, 0xabc), (u32::MAX, u32::MAX)].map(|(pool, seed)| PgId { pool, seed })
        {
            assert_eq!(pg.to_string().parse(), Ok(pg));
        }
        for bad in [
            "", "1", "1.", ".1", "x.1", "1.g", "1.1.1", "+1.1", "1.+1", "1.-1", " 1.1",
        ] {
            let err = bad.parse::<PgId>().unwrap_err();
            assert!(
                err.contains("expected <pool>.<seed in hex>"),
                "{bad:?}: {err}"
            );
        }
        assert!("4294967296.0".parse::<PgId>().is_err());
        assert!("1.100000000".parse::<PgId>().is_err());
    }

    #[test]
    fn odd_maps_and_pools_do_not_panic() {
        let empty = OsdMap::default();
        let rep = replicated(3, 8, FailureDomain::Host);
        let ec = erasure(2, 1, 8, FailureDomain::Host);
        assert!(place(&empty, &rep).iter().all(Vec::is_empty));
        assert!(place(&empty, &ec).iter().all(|set| set == &vec![NO_OSD; 3]));
        assert_eq!(primary(&[NO_OSD, NO_OSD]), None);
        assert_eq!(primary(&[]), None);

        let no_pgs = replicated(3, 0, FailureDomain::Host);
        assert_eq!(all_pgs(POOL, &no_pgs).count(), 0);
        let pg = object_pg(POOL, &no_pgs, "x");
        assert_eq!(pg_raw(&uniform(3, 1), &no_pgs, pg), Vec::<u32>::new());
        let beyond = PgId {
            pool: POOL,
            seed: 8,
        };
        assert!(pg_raw(&uniform(3, 1), &rep, beyond).is_empty());

        let mut odd = cluster(&[
            &[(0, f64::NAN), (1, -1.0), (2, f64::INFINITY)],
            &[(3, 1e-9), (4, 1.0), (NO_OSD, 1.0)],
        ]);
        odd.hosts.get_mut("h0").expect("h0").extend([4, 99, 2]);
        for set in place(&odd, &replicated(4, 32, FailureDomain::Osd)) {
            assert_eq!(members(&set), BTreeSet::from([2, 4]), "{set:?}");
        }
        let huge = [
            replicated(0, 4, FailureDomain::Osd),
            replicated(u32::MAX, 4, FailureDomain::Osd),
            erasure(u32::MAX, u32::MAX, 4, FailureDomain::Osd),
        ];
        for pool in &huge {
            assert!(place(&odd, pool).iter().all(Vec::is_empty));
        }
    }

    #[test]
    fn random_maps_keep_the_invariants() {
        let mut rng = Rng(42);
        let weights = [0.0, 0.5, 1.0, 1.0, 1.5, 4.0];
        for _ in 0..300 {
            let mut map = OsdMap::default();
            let mut next_id = 0;
            for host in 0..rng.below(6) {
                for _ in 0..rng.below(4) {
                    add_osd(
                        &mut map,
                        &format!("h{host}"),
                        next_id,
                        weights[rng.below(6) as usize],
                    );
                    let osd = map.osds.get_mut(&next_id).expect("just added");
                    osd.in_cluster = rng.below(5) != 0;
                    osd.up = rng.below(5) != 0;
                    next_id += 1 + rng.below(3) as u32;
                }
            }
            let failure_domain = [FailureDomain::Host, FailureDomain::Osd][rng.below(2) as usize];
            let (a, b, pg_num) = (
                rng.below(4) as u32,
                rng.below(3) as u32,
                rng.below(24) as u32,
            );
            let pool = if rng.below(2) == 0 {
                replicated(a + 1, pg_num, failure_domain)
            } else {
                erasure(a + 1, b, pg_num, failure_domain)
            };
            let placeable: Vec<u32> = map
                .osds
                .iter()
                .filter(|(_, o)| o.in_cluster && o.weight > 0.0)
                .map(|(&id, _)| id)
                .collect();
            let domains = match failure_domain {
                FailureDomain::Osd => placeable.len(),
                FailureDomain::Host => placeable
                    .iter()
                    .map(|id| &map.osds[id].host)
                    .collect::<BTreeSet<_>>()
                    .len(),
            };
            let width = pool_width(&pool);
            for pg in all_pgs(POOL, &pool) {
                let raw = pg_raw(&map, &pool, pg);
                assert_eq!(raw, pg_raw(&map, &pool, pg));
                assert_distinct(&map, &pool, &raw);
                assert!(members(&raw).iter().all(|id| placeable.contains(id)));
                assert_eq!(members(&raw).len(), width.min(domains));
                assert_eq!(
                    raw.len(),
                    if is_erasure(&pool) {
                        width
                    } else {
                        width.min(domains)
                    }
                );
                let acting = pg_acting(&map, &pool, pg);
                assert!(members(&acting).iter().all(|id| map.osds[id].up));
                assert!(members(&acting).is_subset(&members(&raw)));
            }
        }
    }
}
