//! tract must reproduce onnxruntime's outputs (computed by models/train.py and
//! committed) for both models, batched and row by row.

mod common;

use common::{N_FEATURES, model_path, models_dir, reference};
use model_inference::engine::{Engine, EngineError};

const TOLERANCE: f64 = 1e-5;

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let diff = (f64::from(*g) - w).abs();
        assert!(
            diff <= TOLERANCE,
            "{what}[{i}]: tract {g} vs onnxruntime {w} (diff {diff:e})"
        );
    }
}

#[test]
fn tract_matches_onnxruntime_batched_and_single() {
    let r = reference();
    assert!(r.inputs.len() >= 5, "reference has too few rows");
    // Both plan kinds: symbolic batch only, and one concrete plan per batch size.
    for (version, concrete) in [("v1", 0), ("v1", 64), ("v2", 0), ("v2", 64)] {
        let engine = Engine::load_with_batches(&model_path(version), concrete).unwrap();
        let want = &r.outputs[version];
        let names: Vec<&str> = engine
            .spec()
            .outputs
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["logit", "probability"]);

        let mut session = engine.session().unwrap();
        let flat: Vec<f32> = r.inputs.iter().flatten().copied().collect();
        let out = session.run(&flat, r.inputs.len()).unwrap();
        assert_close(&out[0], &want.logit, &format!("{version} batched logit"));
        assert_close(
            &out[1],
            &want.probability,
            &format!("{version} batched probability"),
        );

        for (i, row) in r.inputs.iter().enumerate() {
            let out = session.run(row, 1).unwrap();
            assert_close(
                &out[1],
                &want.probability[i..=i],
                &format!("{version} user {}", r.user_ids[i]),
            );
        }
    }
}

#[test]
fn the_two_versions_really_differ() {
    let r = reference();
    let diff: f64 = r.outputs["v1"]
        .probability
        .iter()
        .zip(&r.outputs["v2"].probability)
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(
        diff > 0.01,
        "v1 and v2 give the same scores; the experiment would be meaningless"
    );
}

#[test]
fn spec_carries_the_feature_order_of_the_seed_rows() {
    let engine = Engine::load(&model_path("v1")).unwrap();
    let spec = engine.spec();
    assert_eq!(spec.input_name, "features");
    assert_eq!(spec.n_features, N_FEATURES);
    let csv = std::fs::read_to_string(models_dir().join("customers.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(&header[..3], ["user_id", "held_out", "purchase"]);
    assert_eq!(spec.feature_names, header[3..]);
    assert_eq!(
        Engine::load(&model_path("v2"))
            .unwrap()
            .spec()
            .feature_names,
        spec.feature_names
    );
}

#[test]
fn load_errors_name_the_file_and_the_reason() {
    let missing = models_dir().join("no-such-model.onnx");
    let err = Engine::load(&missing)
        .err()
        .expect("missing file must fail");
    assert!(matches!(err, EngineError::Load { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-model.onnx") && msg.contains("no such file"),
        "{msg}"
    );

    let not_onnx = models_dir().join("reference_outputs.json");
    let msg = Engine::load(&not_onnx)
        .err()
        .expect("a JSON file is not a model")
        .to_string();
    assert!(msg.contains("reference_outputs.json"), "{msg}");
}
