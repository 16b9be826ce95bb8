//! Throughput of `keyhook::signing::sign` (the whole `webhook-signature`
//! header value for one secret) against a raw pre-keyed `Hmac<Sha256>` over
//! the same signed content, concatenated once beforehand.
//!
//! Run with `cargo bench --bench signing`. Plain `fn main`, no harness; takes
//! about 10 seconds.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use keyhook::signing::{Signer, SigningSecret, sign};
use sha2::Sha256;

const SIZES: [usize; 3] = [64, 1024, 16 * 1024];
const ROUNDS: u32 = 3;
/// Wall time of one round of one variant; each variant gets `ROUNDS` of them.
const ROUND: Duration = Duration::from_millis(250);
const WARMUP: Duration = Duration::from_millis(40);
const MSG_ID: &str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
const TIMESTAMP: i64 = 1_700_000_000;
const TARGET_1K_RATIO: f64 = 0.87;
/// Iterations between clock reads.
const BATCH: u64 = 16;

/// Runs `op` on `threads` threads for `time`; returns operations per second.
fn run(threads: usize, time: Duration, op: &(dyn Fn() + Sync)) -> f64 {
    let barrier = Barrier::new(threads);
    let results: Vec<(u64, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    let deadline = start + time;
                    let mut n = 0u64;
                    loop {
                        for _ in 0..BATCH {
                            op();
                        }
                        n += BATCH;
                        let now = Instant::now();
                        if now >= deadline {
                            return (n, now - start);
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread panicked"))
            .collect()
    });
    results
        .iter()
        .map(|(n, d)| *n as f64 / d.as_secs_f64())
        .sum()
}

fn sha_extensions() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sha") {
            "yes (x86_64 SHA-NI)"
        } else {
            "no (x86_64 without SHA-NI)"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("sha2") {
            "yes (aarch64 SHA2)"
        } else {
            "no (aarch64 without SHA2)"
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "unknown (not x86_64 or aarch64)"
    }
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let secret = SigningSecret::generate().expect("OS random source");
    let signers = [Signer::new(&secret)];
    let raw_key = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC key");

    println!("keyhook signing bench: one secret, `sign` -> header String vs raw HMAC-SHA256");
    println!("SHA extensions detected: {}", sha_extensions());
    println!("threads available: {cores}; best of {ROUNDS} interleaved rounds of {ROUND:?}");
    println!("MB/s counts body bytes only (1 MB = 10^6 B)");
    println!();
    println!(
        "{:>7} {:>7} {:>13} {:>10} {:>13} {:>10} {:>9}",
        "size", "threads", "ours sig/s", "ours MB/s", "raw sig/s", "raw MB/s", "ours/raw"
    );

    let mut thread_counts = vec![1];
    if cores > 1 {
        thread_counts.push(cores);
    }
    let mut ratio_1k_single = None;

    for &size in &SIZES {
        let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let mut content = format!("{MSG_ID}.{TIMESTAMP}.").into_bytes();
        content.extend_from_slice(&body);

        // Sanity: both produce the same MAC.
        let header = sign(&signers, MSG_ID, TIMESTAMP, &body);
        let mut check = raw_key.clone();
        check.update(&content);
        let raw_sig = signers[0].sign(MSG_ID, TIMESTAMP, &body);
        assert_eq!(check.finalize().into_bytes().as_slice(), raw_sig.as_bytes());
        assert_eq!(header, raw_sig.to_string());

        let ours = || {
            black_box(sign(
                black_box(&signers),
                black_box(MSG_ID),
                black_box(TIMESTAMP),
                black_box(&body),
            ));
        };
        let raw = || {
            let mut mac = raw_key.clone();
            mac.update(black_box(&content));
            black_box(mac.finalize().into_bytes());
        };

        for &threads in &thread_counts {
            run(threads, WARMUP, &ours);
            run(threads, WARMUP, &raw);
            let (mut best_ours, mut best_raw) = (0f64, 0f64);
            for _ in 0..ROUNDS {
                best_ours = best_ours.max(run(threads, ROUND, &ours));
                best_raw = best_raw.max(run(threads, ROUND, &raw));
            }
            let ratio = best_ours / best_raw;
            let mb = |rate: f64| rate * size as f64 / 1e6;
            println!(
                "{:>7} {:>7} {:>13.0} {:>10.1} {:>13.0} {:>10.1} {:>9.3}",
                size,
                threads,
                best_ours,
                mb(best_ours),
                best_raw,
                mb(best_raw),
                ratio
            );
            if size == 1024 && threads == 1 {
                ratio_1k_single = Some(ratio);
            }
        }
    }

    println!();
    if let Some(ratio) = ratio_1k_single {
        let verdict = if ratio >= TARGET_1K_RATIO {
            "meets"
        } else {
            "BELOW"
        };
        println!("1 KiB single-thread ours/raw = {ratio:.3} ({verdict} target {TARGET_1K_RATIO})");
    }
}
