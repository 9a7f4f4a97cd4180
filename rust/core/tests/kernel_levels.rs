//! Every kernel under every instruction-set level this CPU can run ([`simd::set_level`], the
//! run-time form of `LATIX_KERNEL`), against its oracle: MaxSim against the scalar loops,
//! fastscan's block scan and gather against their scalar versions (bit-exact, integers), linalg's
//! products against f64 dot products, and a whole compressed search (candidate generation,
//! refinement, fidelity scoring) against the same search at the scalar level. Its own test binary:
//! the level is process-wide, so nothing else may run meanwhile.

use latix_core::compressed::fastscan::{
    gather_block, gather_block_scalar, halves, scan_block, scan_block_scalar, BLOCK,
};
use latix_core::compressed::kmeans::Rng;
use latix_core::compressed::linalg::{scores, scores_half, HalfPanels, Panels};
use latix_core::compressed::Fidelity;
use latix_core::index::Index;
use latix_core::maxsim::{self, scalar::maxsim_f32, DocVectors, PreparedQuery};
use latix_core::simd::{self, Level};
use latix_core::{CompressedSearch, Compression, Dtype};

mod common;
use common::Data;

const DIM: usize = 40;

fn rand_vec(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| common::gauss(rng)).collect()
}

fn check_maxsim(rng: &mut Rng, level: Level) {
    for &dim in &[1usize, 7, 16, 40, 129] {
        let nq = 1 + rng.below(20);
        let lens: Vec<usize> = (0..9).map(|_| rng.below(30)).collect();
        let q = rand_vec(rng, nq * dim);
        let mut offsets = vec![0u64];
        for l in &lens {
            offsets.push(offsets.last().copied().unwrap_or(0) + *l as u64);
        }
        let d = rand_vec(rng, *offsets.last().unwrap_or(&0) as usize * dim);
        assert_eq!(
            PreparedQuery::new(&q, dim).expect("prepare").kernel(),
            level
        );
        let mut got = vec![0f32; lens.len()];
        maxsim::score_docs(&q, dim, DocVectors::F32(&d), &offsets, &mut got);
        for (i, g) in got.iter().enumerate() {
            let (a, b) = (offsets[i] as usize * dim, offsets[i + 1] as usize * dim);
            let want = maxsim_f32(&q, &d[a..b], dim);
            assert!(
                (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{}: dim {dim} doc {i}: {g} vs {want}",
                level.name()
            );
        }
    }
}

fn check_fastscan(rng: &mut Rng, level: Level) {
    for &m in &[2usize, 6, 8, 16, 32, 64, 94, 96] {
        let lut: Vec<u8> = (0..m * 16).map(|_| rng.below(256) as u8).collect();
        let block: Vec<u8> = (0..m * 16).map(|_| rng.below(256) as u8).collect();
        let (mut a, mut b) = ([0u16; BLOCK], [0u16; BLOCK]);
        scan_block(&lut, &block, m, simd::avx2(), &mut a);
        scan_block_scalar(&lut, &block, m, &mut b);
        assert_eq!(a, b, "{}: scan_block m {m}", level.name());
        // Gather: 1..=32 tokens, each (block, lane), from 6 blocks of codes.
        let bb = m * 16;
        let codes: Vec<u8> = (0..6 * bb).map(|_| rng.below(256) as u8).collect();
        let n = 1 + rng.below(BLOCK);
        let toks: Vec<(usize, usize)> = (0..n).map(|_| (rng.below(6), rng.below(BLOCK))).collect();
        let (mut ga, mut gb) = (vec![0u8; m * 16], vec![0u8; m * 16]);
        gather_block(&codes, m, &toks, &mut ga);
        gather_block_scalar(&codes, m, &toks, &mut gb);
        assert_eq!(ga, gb, "{}: gather_block m {m}", level.name());
        // The split-half layout of version-5 lists, the same codes: scan and gather.
        let (mut c, mut d) = ([0u16; BLOCK], [0u16; BLOCK]);
        halves::scan(&lut, &block, m, simd::avx2(), &mut c);
        halves::scan_scalar(&lut, &block, m, &mut d);
        assert_eq!(c, d, "{}: halves::scan m {m}", level.name());
        let (mut ha, mut hb) = (vec![0u8; m * 16], vec![0u8; m * 16]);
        halves::gather(&codes, m, &toks, &mut ha);
        halves::gather_scalar(&codes, m, &toks, &mut hb);
        assert_eq!(ha, hb, "{}: halves::gather m {m}", level.name());
    }
}

fn check_linalg(rng: &mut Rng, level: Level) {
    for &(rows, dim, m) in &[(5usize, 8usize, 1usize), (37, 40, 3), (64, 129, 7)] {
        let r = rand_vec(rng, rows * dim);
        let x = rand_vec(rng, m * dim);
        let p = Panels::new(&r, dim);
        let mut out = vec![0f32; m * p.n_padded()];
        scores(&x, &p, &mut out);
        // Half panels: the rows rounded to f16 (the products of the rounded rows are the oracle).
        let rh: Vec<f32> = r.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let hp = HalfPanels::new(&r, dim);
        let mut outh = vec![0f32; m * hp.n_padded()];
        scores_half(&x, &hp, &mut outh);
        for i in 0..m {
            for c in 0..rows {
                let dot = |rows: &[f32]| -> f64 {
                    (0..dim)
                        .map(|j| x[i * dim + j] as f64 * rows[c * dim + j] as f64)
                        .sum()
                };
                let (w, wh) = (dot(&r), dot(&rh));
                let g = out[i * p.n_padded() + c] as f64;
                let gh = outh[i * hp.n_padded() + c] as f64;
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{}", level.name());
                assert!(
                    (gh - wh).abs() <= 1e-4 * (1.0 + wh.abs()),
                    "{}",
                    level.name()
                );
            }
        }
    }
}

/// Ids and scores of 12 queries' top 10 on `ix`, for the tiers' search options.
fn search_all(ix: &Index, queries: &[Vec<f32>]) -> Vec<(Vec<String>, Vec<f32>)> {
    queries
        .iter()
        .map(|q| {
            let r = ix
                .search_with(&[q], 10, Some(1), None, CompressedSearch::default())
                .expect("search");
            (r.ids, r.scores)
        })
        .collect()
}

#[test]
fn every_kernel_under_every_available_level_matches_its_oracle() {
    let levels = Level::available();
    assert!(levels.contains(&Level::Scalar) && levels.contains(&Level::Portable));
    for l in Level::ALL {
        // A level the CPU cannot run is refused, and the level in use is unchanged.
        if !l.is_available() {
            let before = simd::level();
            let e = simd::set_level(l).expect_err("unavailable level accepted");
            assert!(e.to_string().contains(l.name()), "{e}");
            assert_eq!(simd::level(), before);
        }
    }
    // A compressed index with a fidelity tier, so that candidate generation, refinement and the
    // tier's scoring all run.
    let tmp = tempfile::tempdir().expect("tmp");
    let mut data = Data::new(41, DIM, 30, 0.5);
    let cfg = Compression {
        bytes_per_token: Some(8),
        n_centroids: Some(32),
        keep_vectors: false,
        train_min_tokens: 2000,
        train_sample_tokens: 4000,
        seed: 5,
        pool_factor: 1,
        fidelity: Fidelity::Balanced,
        ..Default::default()
    };
    simd::set_level(Level::Scalar).expect("scalar");
    let ix = Index::create_with(tmp.path().join("ix"), DIM, Dtype::F16, Some(cfg)).expect("ix");
    let docs = data.docs(300);
    let ids: Vec<String> = (0..docs.len()).map(|i| format!("d{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    let dv: Vec<DocVectors<'_>> = docs.iter().map(|d| DocVectors::F32(d)).collect();
    ix.add(&refs, &dv, false).expect("add");
    ix.commit().expect("commit");
    assert!(ix.stats().expect("stats").trained);
    let queries: Vec<Vec<f32>> = (0..12).map(|_| data.mat(8, 0.8)).collect();
    let oracle = search_all(&ix, &queries);
    let mut rng = Rng::new(9);
    for &l in &levels {
        simd::set_level(l).expect("available level");
        assert_eq!(simd::level(), l);
        assert_eq!(maxsim::kernel_name(), l.name());
        assert_eq!(simd::avx2(), l >= Level::Avx2);
        check_maxsim(&mut rng, l);
        check_fastscan(&mut rng, l);
        check_linalg(&mut rng, l);
        for (qi, ((ids, sc), (oids, osc))) in
            search_all(&ix, &queries).iter().zip(&oracle).enumerate()
        {
            for r in 0..sc.len() {
                assert!(
                    (sc[r] - osc[r]).abs() <= 2e-3 * (1.0 + osc[r].abs()),
                    "{}: query {qi} rank {r}: {} vs {}",
                    l.name(),
                    sc[r],
                    osc[r]
                );
                // Ids must agree wherever the oracle's score is clearly apart from its neighbours.
                let apart = (r == 0 || osc[r - 1] - osc[r] > 1e-2)
                    && (r + 1 == osc.len() || osc[r] - osc[r + 1] > 1e-2);
                if apart {
                    assert_eq!(ids[r], oids[r], "{}: query {qi} rank {r}", l.name());
                }
            }
        }
    }
}
