//! Erasure-code benchmark (figures for BENCHMARKS.md, not a timed test): encode and rebuild
//! throughput of `reed-solomon-erasure` (SIMD, Cairn's choice) next to `reed-solomon-simd`
//! on the same data, Cairn's stripe codec (`osd::ec`, the crate plus the stripe layout) and,
//! as the machine's limit, a memcpy of the same bytes — all in one run.
//!
//! Usage: bench-ec [--mib N] (data per encode, default 4 MiB: one object; best of 20 runs)

use std::time::Instant;

use cairn_osd::ec::Codec;
use rand::RngCore;

const RUNS: usize = 20;
const SHAPES: [(usize, usize); 3] = [(2, 1), (4, 2), (8, 3)];

fn best_gbs(bytes: usize, mut f: impl FnMut()) -> f64 {
    best_gbs_prepared(bytes, || (), |()| f())
}

/// Like `best_gbs`, timing only `f`, not the `setup` that makes its input.
fn best_gbs_prepared<T>(bytes: usize, mut setup: impl FnMut() -> T, mut f: impl FnMut(T)) -> f64 {
    (0..RUNS)
        .map(|_| {
            let input = setup();
            let t = Instant::now();
            f(input);
            bytes as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let mib: usize = match argv.get(1).map(String::as_str) {
        Some("--mib") => argv.get(2).and_then(|v| v.parse().ok()).unwrap_or(64),
        _ => 4,
    };
    let total = mib << 20;
    let mut data = vec![0u8; total];
    rand::thread_rng().fill_bytes(&mut data);
    let mut copy = vec![0u8; total];
    let memcpy = best_gbs(total, || copy.copy_from_slice(&data));
    println!("data {mib} MiB per run, best of {RUNS}; memcpy of the same bytes: {memcpy:.1} GB/s");
    println!(
        "{:<6} {:>16} {:>16} {:>16} | {:>16} {:>16} {:>16}",
        "shape",
        "rse encode",
        "rs-simd encode",
        "cairn encode",
        "rse rebuild",
        "rs-simd rebuild",
        "cairn rebuild"
    );
    for (k, m) in SHAPES {
        let shard = total / k;
        let originals: Vec<&[u8]> = data.chunks(shard).collect();

        let rse = reed_solomon_erasure::galois_8::ReedSolomon::new(k, m).expect("shape");
        let mut parity = vec![vec![0u8; shard]; m];
        let rse_encode = best_gbs(total, || {
            let mut out: Vec<&mut [u8]> = parity.iter_mut().map(|p| p.as_mut_slice()).collect();
            rse.encode_sep(&originals, &mut out).expect("encode");
        });
        // Rebuilds into preallocated buffers: the crate's own speed, not the allocator's.
        let mut buffers: Vec<Vec<u8>> = originals
            .iter()
            .map(|s| s.to_vec())
            .chain(parity.iter().cloned())
            .collect();
        let rse_rebuild = best_gbs(shard, || {
            let mut shards: Vec<(&mut [u8], bool)> = buffers
                .iter_mut()
                .enumerate()
                .map(|(i, b)| (b.as_mut_slice(), i != 0))
                .collect();
            rse.reconstruct_data(&mut shards).expect("rebuild");
        });

        let simd_encode = best_gbs(total, || {
            reed_solomon_simd::encode(k, m, &originals).expect("encode");
        });
        let recovery = reed_solomon_simd::encode(k, m, &originals).expect("encode");
        let simd_rebuild = best_gbs(shard, || {
            let present = originals.iter().enumerate().skip(1).map(|(i, s)| (i, *s));
            let parity = recovery.iter().enumerate().map(|(i, s)| (i, s.as_slice()));
            reed_solomon_simd::decode(k, m, present, parity).expect("decode");
        });

        let codec = Codec::new(k, m, 4096).expect("shape");
        let cairn_encode = best_gbs(total, || {
            codec.encode(&data);
        });
        let encoded = codec.encode(&data);
        let cairn_rebuild = best_gbs_prepared(
            encoded[0].len(),
            || {
                let mut shards: Vec<Option<Vec<u8>>> = encoded.iter().cloned().map(Some).collect();
                shards[0] = None;
                shards
            },
            |mut shards| codec.reconstruct_data(&mut shards).expect("rebuild"),
        );
        println!(
            "{:<6} {:>11.1} GB/s {:>11.1} GB/s {:>11.1} GB/s | {:>11.1} GB/s {:>11.1} GB/s {:>11.1} GB/s",
            format!("{k}+{m}"),
            rse_encode,
            simd_encode,
            cairn_encode,
            rse_rebuild,
            simd_rebuild,
            cairn_rebuild
        );
    }
    println!("rebuild = one data shard lost, its bytes rebuilt per second (rse into a preallocated buffer; rs-simd and cairn allocate the rebuilt shard)");
}
