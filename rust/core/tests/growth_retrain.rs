//! A codec that follows the index's growth: `Compression::expected_tokens` (K and the sample
//! chosen for the expected size from the first training) and `Compression::retrain_growth`
//! (a retraining compaction after the commit that brings the index to that many times the size
//! its K suits). Checks that the trigger fires exactly when due and never twice at one size, that
//! K follows the automatic count of the current size, that search stays valid against exhaustive
//! MaxSim (scalar reference) after every retraining, with and without kept vectors, with deletes;
//! the configuration's version-4 bytes, older versions read, bad settings refused, that a
//! damaged codec file is reported, not retrained over; that the trigger compares with the K a
//! training gives (`Compression::trained_k`, clamped K never due again; checked against a real
//! training), that `retrain_growth` is refused with a given codec, and that segments carrying a
//! user hook's side files are not retrained (reported once, files kept). The fault-injection test
//! of a failing retraining is tests/test_growth.py (RLIMIT_FSIZE in a child process).

use std::collections::HashSet;
use std::path::Path;

use latix_core::compressed::default_n_centroids;
use latix_core::index::Index;
use latix_core::maxsim::DocVectors;
use latix_core::store::Dtype;
use latix_core::{CompressedSearch, Compression, LatixError};

mod common;
use common::{exact_topk, files, search, Data};

const DIM: usize = 32;

fn add(ix: &Index, prefix: &str, docs: &[Vec<f32>]) -> Vec<(String, Vec<f32>)> {
    let ids: Vec<String> = (0..docs.len()).map(|i| format!("{prefix}{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    let dv: Vec<DocVectors<'_>> = docs.iter().map(|d| DocVectors::F32(d)).collect();
    ix.add(&refs, &dv, false).expect("add");
    ids.into_iter().zip(docs.iter().cloned()).collect()
}

fn cfg(keep: bool, pool_factor: usize, growth: u32) -> Compression {
    Compression {
        bytes_per_token: Some(8),
        keep_vectors: keep,
        train_min_tokens: 1500,
        train_sample_tokens: 4000,
        seed: 3,
        pool_factor,
        retrain_growth: growth,
        ..Default::default()
    }
}

/// Pooled live vectors as the growth check estimates them (live tokens / pool factor).
fn pooled(ix: &Index, pool: usize) -> u64 {
    ix.stats().expect("stats").n_tokens / pool as u64
}

/// Recall@10 of the index against exhaustive MaxSim over `live`, every list probed.
fn recall(ix: &Index, data: &mut Data, live: &[(String, Vec<f32>)], k_lists: usize) -> f64 {
    let opts = CompressedSearch {
        nprobe: Some(k_lists),
        refine: Some(1 << 20),
        ..Default::default()
    };
    let ids: HashSet<&str> = live.iter().map(|(i, _)| i.as_str()).collect();
    let (mut hit, mut tot) = (0usize, 0usize);
    for _ in 0..16 {
        let q = data.mat(8, 0.8);
        let want: HashSet<String> = exact_topk(&q, live, 10, DIM)
            .into_iter()
            .map(|x| x.0)
            .collect();
        let got = search(ix, &q, 10, opts);
        // Valid hits: live, each once, best first.
        let uniq: HashSet<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(uniq.len(), got.len(), "a document twice in one result");
        assert!(
            got.iter().all(|(i, _)| ids.contains(i.as_str())),
            "a dead id"
        );
        assert!(got.windows(2).all(|w| w[0].1 >= w[1].1), "not best first");
        hit += got.iter().filter(|(i, _)| want.contains(i)).count();
        tot += want.len();
    }
    hit as f64 / tot as f64
}

#[test]
fn growth_retraining_fires_when_due_and_k_follows_the_size() {
    for (keep, pool) in [(true, 1), (false, 1), (false, 2)] {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("ix");
        let c = cfg(keep, pool, 4);
        let ix = Index::create_with(&dir, DIM, Dtype::F16, Some(c.clone())).expect("create");
        let mut data = Data::new(11 + pool as u64, DIM, 20, 0.6);
        let mut live = Vec::new();
        let mut ks = Vec::new();
        for round in 0..14 {
            // Commits that grow the index by about 1.5x each.
            let n = 120 + (120.0 * 1.5f64.powi(round)) as usize / 4;
            live.extend(add(&ix, &format!("r{round}-"), &data.docs(n.min(1500))));
            if round == 6 {
                // Deletes are honoured by the retraining compaction.
                let gone: Vec<String> = live.iter().step_by(7).map(|(i, _)| i.clone()).collect();
                let refs: Vec<&str> = gone.iter().map(|s| s.as_str()).collect();
                ix.delete(&refs).expect("delete");
                live.retain(|(i, _)| !gone.contains(i));
            }
            ix.commit().expect("commit");
            let st = ix.stats().expect("stats");
            assert_eq!(st.merge_health.failures, 0, "{:?}", st.merge_health);
            assert_eq!(st.n_docs, live.len());
            let Some(k) = st.n_centroids else {
                assert!(!st.trained);
                continue;
            };
            let p = pooled(&ix, pool);
            // After every commit no retraining is left due (it ran inside the commit).
            assert!(
                !c.growth_due(k, p),
                "round {round}: K {k} at {p} pooled still due"
            );
            if ks.last() != Some(&k) {
                if !ks.is_empty() {
                    // A retraining compacted everything into one segment, with K of this size
                    // (the automatic count; pooled vectors are estimated here, counted there).
                    assert_eq!(st.n_segments, 1, "round {round}");
                    let want = default_n_centroids(p as usize);
                    assert!(
                        k == want || k * 2 == want || k == want * 2,
                        "round {round}: K {k}, automatic {want}"
                    );
                    assert!(k > *ks.last().unwrap_or(&0), "K shrank");
                }
                ks.push(k);
            }
            let r = recall(&ix, &mut data, &live, k);
            let floor = if keep { 0.95 } else { 0.5 };
            assert!(
                r >= floor,
                "keep {keep} pool {pool} round {round}: recall {r}"
            );
        }
        // K grew several times; each retraining is a doubling at least (geometric, so O(N)).
        assert!(
            ks.len() >= 3,
            "keep {keep} pool {pool}: K over the run {ks:?}"
        );
        assert!(ks.windows(2).all(|w| w[1] >= 2 * w[0]), "{ks:?}");
        // Reopened, the setting is still there and nothing is due.
        drop(ix);
        let ix = Index::open(&dir, latix_core::index::OpenMode::Read).expect("open");
        assert_eq!(ix.compression(), Some(&c));
        let st = ix.stats().expect("stats");
        assert!(!c.growth_due(st.n_centroids.expect("k"), pooled(&ix, pool)));
        ix.verify().expect("verify");
    }
}

#[test]
fn without_the_setting_k_stays_and_nothing_is_retrained() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ix");
    let ix = Index::create_with(&dir, DIM, Dtype::F16, Some(cfg(false, 1, 0))).expect("create");
    let mut data = Data::new(5, DIM, 20, 0.6);
    let mut first = None;
    for round in 0..8 {
        add(&ix, &format!("r{round}-"), &data.docs(150 + 60 * round));
        ix.commit().expect("commit");
        if let Some(k) = ix.stats().expect("stats").n_centroids {
            assert_eq!(
                *first.get_or_insert(k),
                k,
                "K changed without retrain_growth"
            );
        }
    }
    assert!(first.is_some());
}

#[test]
fn expected_tokens_sets_k_and_the_sample_from_the_first_training() {
    let mut data = Data::new(9, DIM, 20, 0.6);
    let docs = data.docs(600); // about 9,600 tokens
    let mut got = Vec::new();
    for expected in [None, Some(200_000u64), Some(3_000_000)] {
        let tmp = tempfile::tempdir().expect("tmp");
        let c = Compression {
            expected_tokens: expected,
            train_min_tokens: 8000,
            ..cfg(false, 2, 0)
        };
        let ix = Index::create_with(tmp.path().join("ix"), DIM, Dtype::F16, Some(c.clone()))
            .expect("create");
        let live = add(&ix, "d", &docs);
        ix.commit().expect("commit");
        let st = ix.stats().expect("stats");
        let k = st.n_centroids.expect("trained");
        let p = st.n_tokens / 2;
        let basis = c.k_basis(p) as usize;
        // The automatic K of the expected size, capped by a quarter of the sample (every pooled
        // vector here, about p: the sample grows to 32 per centroid, past train_sample_tokens).
        let auto = default_n_centroids(basis);
        assert!(
            k <= auto && k >= auto.min(p as usize / 4),
            "{expected:?}: K {k}, {auto}"
        );
        assert!(c.sample_tokens(default_n_centroids(basis)) >= c.train_sample_tokens);
        let r = recall(&ix, &mut data, &live, k);
        assert!(r >= 0.5, "{expected:?}: recall {r}");
        got.push(k);
    }
    assert!(got[0] < got[1] && got[1] <= got[2], "K by hint: {got:?}");
    // The sample follows K: 32 vectors per centroid, capped at 2^20.
    let c = cfg(false, 2, 0);
    assert_eq!(c.sample_tokens(64), c.train_sample_tokens);
    assert_eq!(c.sample_tokens(16_384), 16_384 * 32);
    assert_eq!(c.sample_tokens(1 << 20), 1 << 20);
    let fixed = Compression {
        n_centroids: Some(64),
        ..c
    };
    assert_eq!(fixed.sample_tokens(16_384), fixed.train_sample_tokens);
}

/// The configuration's bytes by hand: version 4 appends the fidelity code (52), then
/// `expected_tokens` (56, u64, 0 = none) and `retrain_growth` (64, u32), then the crc.
#[test]
fn version_4_configuration_layout_and_older_versions() {
    let c = Compression {
        expected_tokens: Some(123_456_789),
        retrain_growth: 4,
        ..Default::default()
    };
    let b = c.encode();
    assert_eq!(&b[..8], b"LTXCOMPR");
    assert_eq!(u32::from_le_bytes(b[8..12].try_into().expect("4")), 4);
    assert_eq!(b.len(), 72);
    assert_eq!(u32::from_le_bytes(b[52..56].try_into().expect("4")), 0);
    assert_eq!(
        u64::from_le_bytes(b[56..64].try_into().expect("8")),
        123_456_789
    );
    assert_eq!(u32::from_le_bytes(b[64..68].try_into().expect("4")), 4);
    let back = Compression::decode(&b, Path::new("c")).expect("decode");
    assert_eq!(back, c);
    // Only one of the two settings: still version 4, the other reads as unset.
    for c in [
        Compression {
            expected_tokens: Some(7),
            ..Default::default()
        },
        Compression {
            retrain_growth: 2,
            fidelity: latix_core::compressed::Fidelity::High,
            ..Default::default()
        },
    ] {
        let b = c.encode();
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().expect("4")), 4);
        assert_eq!(Compression::decode(&b, Path::new("c")).expect("decode"), c);
    }
    // Without them the version an older latix reads (2 for codes, 3 for a tier).
    let plain = Compression::default();
    assert_eq!(
        u32::from_le_bytes(plain.encode()[8..12].try_into().expect("4")),
        2
    );
    let tier = Compression {
        fidelity: latix_core::compressed::Fidelity::Balanced,
        ..Default::default()
    };
    let tb = tier.encode();
    assert_eq!(u32::from_le_bytes(tb[8..12].try_into().expect("4")), 3);
    let back = Compression::decode(&tb, Path::new("c")).expect("v3");
    assert_eq!((back.expected_tokens, back.retrain_growth), (None, 0));
    // A truncated or padded version 4 is refused.
    for cut in [b.len() - 1, 68, 60] {
        let mut t = b[..cut].to_vec();
        let crc = crc32c::crc32c(&t[..t.len() - 4]);
        let n = t.len();
        t[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(
            Compression::decode(&t, Path::new("c")).is_err(),
            "{cut} bytes"
        );
    }
}

#[test]
fn bad_growth_settings_are_refused() {
    for (c, what) in [
        (
            Compression {
                retrain_growth: 1,
                ..Default::default()
            },
            "retrain_growth",
        ),
        (
            Compression {
                retrain_growth: (1 << 16) + 1,
                ..Default::default()
            },
            "retrain_growth",
        ),
        (
            Compression {
                retrain_growth: 4,
                n_centroids: Some(64),
                ..Default::default()
            },
            "n_centroids",
        ),
        (
            Compression {
                expected_tokens: Some(0),
                ..Default::default()
            },
            "expected_tokens",
        ),
        (
            Compression {
                expected_tokens: Some((1 << 48) + 1),
                ..Default::default()
            },
            "expected_tokens",
        ),
    ] {
        let tmp = tempfile::tempdir().expect("tmp");
        match Index::create_with(tmp.path().join("ix"), DIM, Dtype::F16, Some(c)) {
            Err(LatixError::InvalidArgument(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("{what}: {:?}", other.map(|_| ())),
        }
    }
    // growth_due itself: off, fixed K, or K already the automatic one: never due.
    let c = cfg(false, 1, 4);
    assert!(!Compression {
        retrain_growth: 0,
        ..c.clone()
    }
    .growth_due(16, 1 << 30));
    assert!(!c.growth_due(default_n_centroids(1 << 20), 1 << 20));
    assert!(c.growth_due(16, 1 << 20));
    // Due from G * (K / 3)^2 on: K 96 suits 1,024 pooled vectors.
    assert!(!c.growth_due(96, 4 * 1024 - 1));
    assert!(c.growth_due(96, 4 * 1024));
}

#[test]
fn a_damaged_codec_is_reported_not_retrained_over() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ix");
    let ix = Index::create_with(&dir, DIM, Dtype::F16, Some(cfg(false, 1, 4))).expect("create");
    let mut data = Data::new(21, DIM, 20, 0.6);
    add(&ix, "a", &data.docs(200));
    ix.commit().expect("commit");
    assert!(ix.stats().expect("stats").trained);
    drop(ix);
    let codec = files(&dir, "idx-codec");
    assert_eq!(codec.len(), 1);
    let p = dir.join(&codec[0]);
    let mut b = std::fs::read(&p).expect("read");
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&p, &b).expect("write");
    // The growth that would retrain: the commit's encoding loads the codec and refuses it.
    let ix = Index::open(&dir, latix_core::index::OpenMode::Write).expect("open");
    add(&ix, "b", &data.docs(2000));
    match ix.commit() {
        Err(LatixError::Corrupted { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_trigger_compares_with_the_k_a_training_gives() {
    // Codec::train clamps an automatic K to a quarter of its sample, and the sample stops at
    // 2^20 vectors: at 2^40 pooled vectors the automatic K is 2^20 but a training gives 2^18.
    let c = cfg(false, 1, 4);
    let huge = 1u64 << 40;
    assert_eq!(default_n_centroids(huge as usize), 1 << 20);
    assert_eq!(c.sample_tokens(1 << 20), 1 << 20);
    assert_eq!(c.trained_k(huge), 1 << 18);
    // The codec a retraining gives there (or a few centroids fewer, a short random sample) is
    // never due again, so a clamped K cannot retrain at every commit.
    for k in [(1 << 18) - 3, 1 << 18] {
        assert!(!c.growth_due(k, huge), "K {k}");
    }
    assert!(c.growth_due(1 << 17, huge));
    // trained_k against an independent reading of the rules on many sizes: the automatic K,
    // at most a quarter of min(sample, live), sample max(train_sample_tokens, 32 K, cap 2^20).
    let mut n = 1500u64;
    while n < 1 << 44 {
        let auto = default_n_centroids(n as usize) as u64;
        let sample = c.train_sample_tokens.max((32 * auto).min(1 << 20)).min(n);
        assert_eq!(c.trained_k(n) as u64, auto.min(sample / 4), "n {n}");
        // Due only when a retraining would at least double K.
        for k in [16usize, 64, 1 << 10, 1 << 14, 1 << 18] {
            if c.growth_due(k, n) {
                assert!(c.trained_k(n) >= 2 * k && n as f64 >= 4.0 * (k as f64 / 3.0).powi(2));
            }
        }
        n = n * 7 / 5;
    }
    // The K a real training gives matches trained_k (no clamp at this size).
    let mut data = Data::new(31, DIM, 20, 0.6);
    let docs = data.docs(400);
    let flat: Vec<f32> = docs.iter().flatten().copied().collect();
    let mut offsets = vec![0u64];
    for d in &docs {
        offsets.push(offsets.last().unwrap() + (d.len() / DIM) as u64);
    }
    let n_tok = *offsets.last().unwrap();
    let codec =
        latix_core::compressed::train_codec_on_documents(&c, DIM, &flat, &offsets, None, None)
            .expect("train");
    assert_eq!(codec.n_centroids(), c.trained_k(n_tok), "{n_tok} tokens");
}

#[test]
fn retrain_growth_is_refused_with_a_given_codec() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = Index::create_with(
        tmp.path().join("a"),
        DIM,
        Dtype::F16,
        Some(cfg(false, 1, 0)),
    )
    .expect("create");
    let mut data = Data::new(41, DIM, 20, 0.6);
    add(&src, "a", &data.docs(200));
    src.commit().expect("commit");
    let codec = src.codec_bytes().expect("codec").expect("trained");
    match Index::create_with_codec(
        tmp.path().join("b"),
        DIM,
        Dtype::F16,
        cfg(false, 1, 4),
        &codec,
    ) {
        Err(LatixError::InvalidArgument(m)) => assert!(m.contains("retrain_growth"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(!tmp.path().join("b").join("CURRENT").exists());
    Index::create_with_codec(
        tmp.path().join("c"),
        DIM,
        Dtype::F16,
        cfg(false, 1, 0),
        &codec,
    )
    .expect("without retrain_growth");
}

#[test]
fn segments_with_user_side_files_are_not_retrained_and_keep_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ix");
    let ix = Index::create_with(&dir, DIM, Dtype::F16, Some(cfg(false, 1, 4))).expect("create");
    let mut data = Data::new(51, DIM, 20, 0.6);
    add(&ix, "a", &data.docs(200));
    let mut hook = |ctx: &mut latix_core::store::CommitContext<'_>| -> latix_core::Result<()> {
        let mut b = b"user bytes".to_vec();
        latix_core::format::seal(&mut b);
        for s in ctx.new_segments().to_vec() {
            ctx.write_segment_file(&s, "user", &b)?;
        }
        Ok(())
    };
    ix.commit_with(Some(&mut hook)).expect("commit");
    let k0 = ix.stats().expect("stats").n_centroids.expect("trained");
    // The growth that makes a retraining due: it is skipped and reported, not run.
    add(&ix, "b", &data.docs(2000));
    let err = ix.commit_report().expect("commit").expect("reported");
    assert!(err.to_string().contains("side files"), "{err}");
    let st = ix.stats().expect("stats");
    assert_eq!(st.n_centroids, Some(k0));
    assert_eq!(st.merge_health.failures, 1);
    assert!(c_due(&ix, k0));
    let snap = ix.snapshot().expect("snap");
    assert!(snap
        .segments()
        .iter()
        .any(|v| v.entry.side_files.iter().any(|(n, _)| n == "user")));
    // Not tried again at the next commits (the index has not grown by another factor).
    add(&ix, "c", &data.docs(50));
    assert!(ix.commit_report().expect("commit").is_none());
    assert_eq!(ix.stats().expect("stats").merge_health.failures, 1);
}

/// True when the index (configured by `cfg(false, 1, 4)`) is still due at K `k`.
fn c_due(ix: &Index, k: usize) -> bool {
    cfg(false, 1, 4).growth_due(k, pooled(ix, 1))
}

#[test]
fn the_effective_growth_factor_is_a_power_of_4() {
    // The documented behaviour of growth_due: K doubles per 4x of size, so the size between two
    // retrainings is a power of 4 near G (2..7: ~4x, 8..31: ~16x, 32..127: ~64x).
    for (g, want) in [
        (2u32, 4.0),
        (4, 4.0),
        (7, 4.0),
        (8, 16.0),
        (31, 16.0),
        (32, 64.0),
    ] {
        let c = Compression {
            retrain_growth: g,
            train_sample_tokens: 262_144,
            ..cfg(false, 1, g)
        };
        let mut n = 1u64 << 15;
        let mut k = c.trained_k(n);
        let mut at = Vec::new();
        while n < 1 << 34 {
            n = n * 21 / 20;
            if c.growth_due(k, n) {
                k = c.trained_k(n);
                at.push(n as f64);
            }
        }
        assert!(at.len() >= 2, "G {g}: {at:?}");
        for w in at.windows(2) {
            let r = w[1] / w[0];
            assert!(r > want * 0.9 && r < want * 1.1, "G {g}: ratio {r}, {at:?}");
        }
    }
}
