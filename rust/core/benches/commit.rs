//! Build throughput of a compressed index (issue 18): time of each commit of `--docs` documents
//! (latix defaults: 384-d, pool factor 2, codes only, vectors dropped; the first commit trains
//! the codec), split into stages by the timing spans of [`latix_core::profile`], each with wall
//! and process CPU time (CPU / wall is the parallelism a stage reaches; CPU time is what a loaded
//! machine changes least). Prints tokens per second of a commit (adds + commit) and a crc32c of
//! every inverted-list file, so that two builds of latix can be checked to write the same bytes.
//!
//! Run: `LATIX_NUM_THREADS=2 cargo bench -p latix-core --bench commit -- [--docs 5000]
//! [--commits 3] [--dir PATH]`. Data: seeded synthetic documents (unit vectors around a mixture
//! of 256 topic centres, 2-3 topics per document, 60-450 tokens, mean ~255 like SciFact's),
//! generated in pieces of 500 documents outside the timed spans.

use std::path::PathBuf;
use std::time::Instant;

use latix_core::compressed::kmeans::Rng;
use latix_core::maxsim::DocVectors;
use latix_core::{profile, Compression, Dtype, Index};

const DIM: usize = 384;
const TOPICS: usize = 256;
const PIECE: usize = 500;

fn gauss(rng: &mut Rng) -> f32 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

struct Gen {
    rng: Rng,
    centres: Vec<f32>,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        let mut rng = Rng::new(seed);
        let mut centres = Vec::with_capacity(TOPICS * DIM);
        for _ in 0..TOPICS {
            let mut c: Vec<f32> = (0..DIM).map(|_| gauss(&mut rng)).collect();
            normalise(&mut c);
            centres.extend(c);
        }
        Gen { rng, centres }
    }

    fn doc(&mut self) -> Vec<f32> {
        let n = 60 + self.rng.below(391);
        let topics: Vec<usize> = (0..2 + self.rng.below(2))
            .map(|_| self.rng.below(TOPICS))
            .collect();
        let mut out = Vec::with_capacity(n * DIM);
        for _ in 0..n {
            let t = topics[self.rng.below(topics.len())];
            let c = &self.centres[t * DIM..(t + 1) * DIM];
            let mut v: Vec<f32> = c.iter().map(|&x| x + 0.06 * gauss(&mut self.rng)).collect();
            normalise(&mut v);
            out.extend(v);
        }
        out
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n_docs: usize = arg(&args, "--docs").map_or(5000, |v| v.parse().expect("--docs"));
    let n_commits: usize = arg(&args, "--commits").map_or(3, |v| v.parse().expect("--commits"));
    let dir = arg(&args, "--dir").map_or_else(
        || std::env::temp_dir().join(format!("latix-bench-commit-{}", std::process::id())),
        PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&dir);
    profile::set_enabled(true);
    let threads = latix_core::parallel::default_num_threads();
    println!(
        "commit bench: {n_commits} commits of {n_docs} documents, dim {DIM}, {threads} threads \
         (LATIX_NUM_THREADS), {}",
        dir.display()
    );
    let ix =
        Index::create_with(&dir, DIM, Dtype::F16, Some(Compression::default())).expect("create");
    let mut gen = Gen::new(7);
    let mut next = 0usize;
    for c in 0..n_commits {
        let _ = profile::take();
        let (mut add_wall, mut add_cpu, mut tokens) = (0.0, 0.0, 0usize);
        let mut done = 0;
        while done < n_docs {
            let n = PIECE.min(n_docs - done);
            let docs: Vec<Vec<f32>> = (0..n).map(|_| gen.doc()).collect();
            tokens += docs.iter().map(|d| d.len() / DIM).sum::<usize>();
            let ids: Vec<String> = (next..next + n).map(|i| format!("d{i}")).collect();
            let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
            let dv: Vec<DocVectors<'_>> = docs.iter().map(|d| DocVectors::F32(d)).collect();
            let (t, cpu) = (Instant::now(), profile::process_cpu_s());
            ix.add(&refs, &dv, false).expect("add");
            add_wall += t.elapsed().as_secs_f64();
            add_cpu += profile::process_cpu_s() - cpu;
            next += n;
            done += n;
        }
        let _ = profile::take();
        let (t, cpu) = (Instant::now(), profile::process_cpu_s());
        ix.commit().expect("commit");
        let (wall, cpu) = (t.elapsed().as_secs_f64(), profile::process_cpu_s() - cpu);
        println!(
            "\ncommit {c}: {tokens} tokens; add wall {add_wall:.3} s cpu {add_cpu:.3} s; commit \
             wall {wall:.3} s cpu {cpu:.3} s; {:.0} tokens/s (add + commit, wall), {:.0} tokens/s \
             per CPU second",
            tokens as f64 / (add_wall + wall),
            tokens as f64 / (add_cpu + cpu)
        );
        for s in profile::take() {
            println!(
                "  {:<24} wall {:>8.3} s  cpu {:>8.3} s  cpu/wall {:>4.2}  ({} spans)",
                s.name,
                s.wall_s,
                s.cpu_s,
                s.cpu_s / s.wall_s.max(1e-9),
                s.count
            );
        }
    }
    let st = ix.stats().expect("stats");
    println!("\nK {:?}, {} segments", st.n_centroids, st.n_segments);
    let mut lists: Vec<(String, u32)> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("ivf"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // The file's own trailing crc32c seal would give every file the same crc: hashed
            // without it.
            let bytes = std::fs::read(e.path()).expect("read");
            let n = bytes.len().saturating_sub(4);
            (name, crc32c::crc32c(&bytes[..n]))
        })
        .collect();
    lists.sort();
    for (name, crc) in lists {
        println!("lists {name} crc32c {crc:08x} (before its seal)");
    }
    ix.close();
    if !args.iter().any(|a| a == "--keep") {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
