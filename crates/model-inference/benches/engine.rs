//! tract (what the service runs) per model and batch size; with
//! `--features ort-bench`, onnxruntime on the same files and inputs beside it,
//! both single-threaded and called from Rust so neither pays Python overhead.
//!
//!     scripts/bench-engine.sh        # sets ORT_DYLIB_PATH to the PyPI wheel's library

use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use model_inference::engine::Engine;

const N_FEATURES: usize = 85;
const BATCHES: [usize; 2] = [1, 64];

fn model(version: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../models/propensity-{version}.onnx"))
}

/// Deterministic, feature-like inputs (small non-negative integers, as in Caravan).
fn input(rows: usize) -> Vec<f32> {
    (0..rows * N_FEATURES)
        .map(|i| ((i * 7919) % 10) as f32)
        .collect()
}

fn engines(c: &mut Criterion) {
    for version in ["v1", "v2"] {
        let mut group = c.benchmark_group(format!("engine/{version}"));
        for rows in BATCHES {
            let x = input(rows);
            group.throughput(Throughput::Elements(rows as u64));

            // What the service runs: a concrete plan per batch size.
            let engine = Engine::load_with_batches(&model(version), 64).unwrap();
            let mut session = engine.session().unwrap();
            group.bench_with_input(BenchmarkId::new("tract", rows), &rows, |b, &rows| {
                b.iter(|| session.run(std::hint::black_box(&x), rows).unwrap())
            });
            // For the record: the symbolic-batch plan alone.
            let engine = Engine::load(&model(version)).unwrap();
            let mut session = engine.session().unwrap();
            group.bench_with_input(
                BenchmarkId::new("tract-symbolic", rows),
                &rows,
                |b, &rows| b.iter(|| session.run(std::hint::black_box(&x), rows).unwrap()),
            );

            #[cfg(feature = "ort-bench")]
            {
                let mut ort_session = ort_bench::session(&model(version));
                group.bench_with_input(BenchmarkId::new("onnxruntime", rows), &rows, |b, &rows| {
                    b.iter(|| ort_bench::run(&mut ort_session, std::hint::black_box(&x), rows))
                });
            }
        }
        group.finish();
    }
}

#[cfg(feature = "ort-bench")]
mod ort_bench {
    use std::path::Path;

    use std::sync::OnceLock;

    use ort::environment::Environment;
    use ort::session::Session;
    use ort::session::builder::GraphOptimizationLevel;
    use ort::value::TensorRef;

    pub fn session(path: &Path) -> Session {
        static ENV: OnceLock<Environment> = OnceLock::new();
        let env = ENV.get_or_init(|| {
            let lib = std::env::var("ORT_DYLIB_PATH")
                .expect("set ORT_DYLIB_PATH to libonnxruntime.so (scripts/bench-engine.sh does)");
            ort::init_from(lib)
                .expect("load onnxruntime")
                .build()
                .expect("onnxruntime environment")
        });
        Session::builder(env)
            .unwrap()
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .unwrap()
            .with_intra_threads(1)
            .unwrap()
            .commit_from_file(path)
            .unwrap()
    }

    pub fn run(session: &mut Session, x: &[f32], rows: usize) -> f32 {
        let t = TensorRef::from_array_view(([rows, super::N_FEATURES], x)).unwrap();
        let out = session.run(ort::inputs!["features" => t]).unwrap();
        out["probability"].try_extract_tensor::<f32>().unwrap().1[0]
    }
}

criterion_group!(benches, engines);
criterion_main!(benches);
