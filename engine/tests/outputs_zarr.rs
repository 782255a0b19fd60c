//! Zarr writer tests: arrays written chunk by chunk (from several threads, ragged edges) are read back by this
//! crate and by zarr-python.

use std::path::Path;
use std::process::Command;

use arrayjob_engine::array::{ArrayMeta, Chunk, DType};
use arrayjob_engine::output::OutputError;
use arrayjob_engine::output::zarr::{ZarrWriter, read_all};
use ndarray::{ArrayD, IxDyn, SliceInfoElem};

mod common;
use common::python;

/// Opens the array with zarr-python; returns (shape, dtype name, flat values).
fn zarr_python_read(dir: &Path) -> (Vec<usize>, String, Vec<f64>) {
    let code = "import sys, json, zarr\n\
                a = zarr.open(sys.argv[1], mode='r')[...]\n\
                print(json.dumps({'shape': list(a.shape), 'dtype': str(a.dtype), 'values': a.ravel().tolist()}))\n";
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .arg(dir)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "zarr-python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let shape = v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|x| x.as_u64().expect("int") as usize)
        .collect();
    let values = v["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect();
    (
        shape,
        v["dtype"].as_str().expect("dtype").to_string(),
        values,
    )
}

/// The region of chunk `idx` of `whole`, as a chunk.
fn region<T: Clone>(whole: &ArrayD<T>, meta: &ArrayMeta, idx: &[usize]) -> ArrayD<T> {
    let (start, len) = meta.chunk_region(idx);
    let info: Vec<SliceInfoElem> = start
        .iter()
        .zip(&len)
        .map(|(&s, &l)| SliceInfoElem::Slice {
            start: s as isize,
            end: Some((s + l) as isize),
            step: 1,
        })
        .collect();
    whole.slice(info.as_slice()).to_owned()
}

fn attrs() -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("stage".into(), serde_json::json!("power"));
    m
}

#[test]
fn writer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ZarrWriter>();
}

#[test]
fn ragged_float32_array_written_from_threads_reads_back_in_zarr_python() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("power.zarr");
    let meta = ArrayMeta {
        shape: vec![5, 7, 3],
        chunks: vec![2, 3, 2],
        dtype: DType::Float32,
    };
    let whole = ArrayD::from_shape_fn(IxDyn(&meta.shape), |i| {
        (i[0] * 100 + i[1] * 10 + i[2]) as f32 + 0.25
    });
    let w = ZarrWriter::create(&dir, &meta, attrs()).expect("create");
    let indices = meta.chunk_indices();
    assert_eq!(indices.len(), 3 * 3 * 2);
    std::thread::scope(|s| {
        for part in indices.chunks(5) {
            let (w, whole, meta) = (&w, &whole, &meta);
            s.spawn(move || {
                for idx in part {
                    w.write_chunk(idx, &Chunk::F32(region(whole, meta, idx)))
                        .expect("write chunk");
                }
            });
        }
    });
    assert_eq!(
        read_all(&dir).expect("read back"),
        Chunk::F32(whole.clone())
    );

    let (shape, dtype, values) = zarr_python_read(&dir);
    assert_eq!(shape, vec![5, 7, 3]);
    assert_eq!(dtype, "float32");
    let want: Vec<f64> = whole.iter().map(|&v| v as f64).collect();
    assert_eq!(values, want);
    assert_eq!(values[3 * 7 * 3 + 5 * 3 + 1], 351.25);

    let meta_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("zarr.json")).expect("zarr.json"))
            .expect("json");
    assert_eq!(meta_json["zarr_format"], 3);
    assert_eq!(meta_json["attributes"]["stage"], "power");
    assert!(
        meta_json["codecs"].to_string().contains("zstd"),
        "{}",
        meta_json["codecs"]
    );
}

#[test]
fn uint8_array_reads_back_in_zarr_python() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("mean.zarr");
    let meta = ArrayMeta {
        shape: vec![9, 4],
        chunks: vec![4, 3],
        dtype: DType::Uint8,
    };
    let whole = ArrayD::from_shape_fn(IxDyn(&meta.shape), |i| (i[0] * 23 + i[1] * 5 + 3) as u8);
    let w = ZarrWriter::create(&dir, &meta, serde_json::Map::new()).expect("create");
    for idx in meta.chunk_indices() {
        w.write_chunk(&idx, &Chunk::U8(region(&whole, &meta, &idx)))
            .expect("write chunk");
    }
    let (shape, dtype, values) = zarr_python_read(&dir);
    assert_eq!((shape, dtype.as_str()), (vec![9, 4], "uint8"));
    assert_eq!(values, whole.iter().map(|&v| v as f64).collect::<Vec<_>>());
    assert_eq!(values[8 * 4 + 3], (8 * 23 + 3 * 5 + 3) as f64);
    assert_eq!(read_all(&dir).expect("read back"), Chunk::U8(whole));
}

#[test]
fn zero_d_and_one_d_arrays() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("series.zarr");
    let meta = ArrayMeta {
        shape: vec![5],
        chunks: vec![5],
        dtype: DType::Float64,
    };
    let v = ArrayD::from_shape_vec(IxDyn(&[5]), vec![0.1, -2.0, 1e300, 0.0, 3.5]).expect("shape");
    let w = ZarrWriter::create(&dir, &meta, serde_json::Map::new()).expect("create");
    w.write_chunk(&[0], &Chunk::F64(v.clone())).expect("write");
    assert_eq!(
        zarr_python_read(&dir).2,
        v.iter().copied().collect::<Vec<_>>()
    );
}

#[test]
fn bad_chunks_and_directories_are_named_in_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("a.zarr");
    let meta = ArrayMeta {
        shape: vec![5, 4],
        chunks: vec![2, 4],
        dtype: DType::Uint16,
    };
    let w = ZarrWriter::create(&dir, &meta, serde_json::Map::new()).expect("create");
    let wrong_shape = Chunk::zeros(DType::Uint16, &[2, 4]);
    let e = w
        .write_chunk(&[2, 0], &wrong_shape)
        .expect_err("edge chunk is 1 row");
    assert!(
        matches!(e, OutputError::Invalid { name: "chunk", .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("a.zarr") && e.to_string().contains("[1, 4]"),
        "{e}"
    );
    let e = w
        .write_chunk(&[0, 0], &Chunk::zeros(DType::Uint8, &[2, 4]))
        .expect_err("wrong type");
    assert!(e.to_string().contains("uint8"), "{e}");
    let e = w
        .write_chunk(&[3, 0], &wrong_shape)
        .expect_err("outside the grid");
    assert!(matches!(e, OutputError::Invalid { name: "idx", .. }), "{e}");
    // the directory now holds zarr.json: creating again refuses
    let e = ZarrWriter::create(&dir, &meta, serde_json::Map::new()).expect_err("not empty");
    assert!(e.to_string().contains("not empty"), "{e}");
    // unwritten chunks read back as the fill value
    w.write_chunk(&[1, 0], &Chunk::U16(ArrayD::from_elem(IxDyn(&[2, 4]), 513)))
        .expect("write");
    let back = read_all(&dir).expect("read").to_f64();
    assert_eq!(back[[0, 0]], 0.0);
    assert_eq!(back[[3, 3]], 513.0);
    assert_eq!(back.sum(), 513.0 * 8.0);
}

#[test]
fn many_shards_of_fill_value_do_not_exhaust_the_shard_buffers() {
    // Shards whose chunks are all fill value store nothing; each must still give its buffer back, or the
    // fifth such shard waits forever for one.
    use arrayjob_engine::output::zarr::{ArrayPlace, ZarrOptions};
    let d = tempfile::tempdir().expect("tmp");
    let dir = d.path().join("a.zarr");
    let meta = ArrayMeta {
        shape: vec![4, 40],
        chunks: vec![4, 2],
        dtype: DType::Uint8,
    };
    let options = ZarrOptions {
        shard: Some(vec![4, 4]),
        zstd_level: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let place = ArrayPlace::Dir(dir.clone());
    std::thread::spawn(move || {
        let w = ZarrWriter::create_with(&place, &meta, &options, serde_json::Map::new())
            .expect("create");
        for s in 0..9 {
            w.write_chunk(&[0, s], &Chunk::zeros(DType::Uint8, &[4, 4]))
                .expect("write zeros");
        }
        let mut last = ArrayD::<u8>::zeros(IxDyn(&[4, 4]));
        last[[3, 3]] = 7;
        w.write_chunk(&[0, 9], &Chunk::U8(last)).expect("write");
        tx.send(w.finish()).expect("send");
    });
    let done = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the writer hung after shards of fill value");
    done.expect("finish");
    let back = read_all(&dir).expect("read back").to_f64();
    assert_eq!(back.iter().sum::<f64>(), 7.0);
    assert_eq!(back[[3, 39]], 7.0);
    let shards: Vec<_> = std::fs::read_dir(dir.join("c/0"))
        .expect("shard dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("name"))
        .collect();
    assert_eq!(shards, ["9"], "only the shard with data is stored");
}
