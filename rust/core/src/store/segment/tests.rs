//! Unit tests of the segment format (crafted files, not only damaged ones).

use std::path::Path;

use super::*;
use crate::maxsim::DocVectors;

/// Rewrites the sorted-id section of the segment at `path` with `sorted` and re-encodes the
/// header with this module's encoder (valid checksums: a crafted, not a damaged, file).
fn craft_sorted_table(path: &Path, sorted: &[u32]) -> u32 {
    let mut b = std::fs::read(path).expect("read");
    let h = &b[..HEADER_SIZE];
    let mut sections = [Section::default(); N_SECTIONS];
    for (i, s) in sections.iter_mut().enumerate() {
        let at = SECTIONS_AT + i * SECTION_DESC_LEN;
        *s = Section {
            offset: le_u64(h, at),
            len: le_u64(h, at + 8),
            crc: le_u32(h, at + 16),
        };
    }
    let (no_vectors, dtype, dim) = (
        le_u32(h, 8) == SEGMENT_VERSION_NO_VECTORS,
        Dtype::from_code(le_u32(h, 12)).expect("dtype"),
        le_u32(h, 16),
    );
    let (n_docs, n_tokens, block) = (le_u64(h, 24), le_u64(h, 32), le_u64(h, 40));
    let s = &mut sections[SEC_SORTED];
    let bytes: &[u8] = bytemuck::cast_slice(sorted);
    assert_eq!(bytes.len() as u64, s.len);
    b[s.offset as usize..(s.offset + s.len) as usize].copy_from_slice(bytes);
    s.crc = crc32c::crc32c(bytes);
    let header = encode_header(no_vectors, dtype, dim, n_docs, n_tokens, block, &sections);
    b[..HEADER_SIZE].copy_from_slice(&header);
    std::fs::write(path, &b).expect("write");
    le_u32(&header, HEADER_CRC_AT)
}

#[test]
fn crafted_sorted_id_tables_are_refused_at_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("seg-0000000000.lxs");
    for (sorted, why) in [
        (vec![0u32, 1, 2], "not sorted"), // ids are "b", "a", "c": [1, 0, 2] is sorted
        (vec![1u32, 1, 2], "permutation"), // "a" twice, "b" never
        (vec![1u32, 0, 3], "permutation"), // a document that does not exist
    ] {
        let mut w = SegmentWriter::create(tmp.path(), 2, Dtype::F32).expect("create");
        for id in ["b", "a", "c"] {
            w.add_doc(id, DocVectors::F32(&[1.0, 2.0])).expect("add");
        }
        w.finish(&path).expect("finish");
        let good = Segment::open(&path, 2, Dtype::F32, None).expect("a written segment opens");
        assert_eq!(good.find("a"), vec![1]);
        drop(good);
        let crc = craft_sorted_table(&path, &sorted);
        let e = match Segment::open(&path, 2, Dtype::F32, Some(crc)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{sorted:?}: a crafted sorted-id table was accepted"),
        };
        assert!(
            e.contains("sorted id table") && e.contains(why),
            "{sorted:?}: {e}"
        );
    }
}

#[test]
fn add_doc_checked_refuses_and_rolls_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut w = SegmentWriter::create(tmp.path(), 2, Dtype::F16).expect("create");
    w.add_doc_checked("a", DocVectors::F32(&[1.0, 2.0]), "e[0]")
        .expect("add");
    let pos = w.pos;
    // A bad value in a later piece than the first: the earlier pieces were written.
    let mut big = vec![0.5f32; 2 * (WRITE_CHUNK_VALUES + 10)];
    for (bad, what) in [
        (f32::NAN, "non-finite"),
        (1e10, "too large"),
        (70000.0, "float16 range"),
    ] {
        let at = big.len() - 3;
        big[at] = bad;
        let e = w
            .add_doc_checked("b", DocVectors::F32(&big), "e[1]")
            .expect_err("bad value");
        assert!(
            e.to_string().contains(what) && e.to_string().contains("e[1]"),
            "{e}"
        );
        let row = (at / 2).to_string();
        assert!(e.to_string().contains(&format!("row {row}")), "{e}");
        assert_eq!((w.pos, w.n_docs()), (pos, 1));
        assert_eq!(
            w.file
                .as_ref()
                .expect("file")
                .metadata()
                .expect("meta")
                .len(),
            pos
        );
        big[at] = 0.5;
    }
    w.add_doc_checked("b", DocVectors::F32(&big), "e[1]")
        .expect("add");
    w.finish(&tmp.path().join("seg-0000000000.lxs"))
        .expect("finish");
    let seg =
        Segment::open(&tmp.path().join("seg-0000000000.lxs"), 2, Dtype::F16, None).expect("open");
    seg.verify().expect("verify");
    assert_eq!(seg.n_tokens(), 1 + big.len() as u64 / 2);
}
