#!/usr/bin/env python3
"""Train mlmesh's two caravan-insurance propensity models and export them to ONNX.

Reproducible and offline: the data ships inside the ISLP wheel (installed with
--no-deps so none of ISLP's torch stack is needed), every random choice is seeded.

    python3 -m venv .venv && . .venv/bin/activate
    pip install -r models/requirements.txt && pip install --no-deps ISLP==0.6.0
    python models/train.py            # rewrites the files listed in models/README.md

The ONNX graphs are written by hand with standard ops only (Gemm, Relu, Sigmoid)
because tract cannot run ai.onnx.ml's Scaler/LinearClassifier/ZipMap; feature
standardisation is folded into the first layer's weights.
"""

from __future__ import annotations

import csv
import json
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

SEED = 20001  # CoIL Challenge 2000
HERE = Path(__file__).resolve().parent
MODEL_NAME = "propensity"
INPUT_NAME = "features"
# Users whose reference outputs the Rust tests compare against (1-based row numbers).
REFERENCE_USERS = ["1", "2", "3", "42", "100", "777", "1000", "2500", "4000", "5822"]


def load_caravan() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read ISLP's bundled Caravan.csv without importing ISLP (whose import pulls torch)."""
    dist = metadata.distribution("ISLP")
    csv_path = next(Path(dist.locate_file(f)) for f in dist.files if str(f).endswith("data/Caravan.csv"))
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    assert header[-1] == "Purchase" and len(header) == 86, header
    x = np.array([[float(v) for v in r[:-1]] for r in body], dtype=np.float64)
    y = np.array([1 if r[-1] == "Yes" else 0 for r in body], dtype=np.int64)
    return header[:-1], x, y


def standardisation(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # a constant column contributes nothing; avoid dividing by zero
    return mean, std


def fold_scaling(w: np.ndarray, b: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite layer(x_std) = ((x - mean) / std) @ w + b as x @ w' + b'."""
    w_folded = w / std[:, None]
    b_folded = b - (mean / std) @ w
    return w_folded, b_folded


def build_graph(layers: list[tuple[np.ndarray, np.ndarray]], version: str, feature_names: list[str], doc: str) -> onnx.ModelProto:
    """Dense layers with Relu between them; outputs the last layer's logit and its sigmoid."""
    n_features = layers[0][0].shape[0]
    nodes, inits = [], []
    current = INPUT_NAME
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        w_name, b_name = f"W{i}", f"B{i}"
        inits += [
            numpy_helper.from_array(w.astype(np.float32), w_name),
            numpy_helper.from_array(b.astype(np.float32), b_name),
        ]
        out = "logit" if last else f"dense{i}"
        nodes.append(helper.make_node("Gemm", [current, w_name, b_name], [out], name=f"gemm{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            current = f"relu{i}"
    nodes.append(helper.make_node("Sigmoid", ["logit"], ["probability"], name="sigmoid"))
    graph = helper.make_graph(
        nodes,
        f"{MODEL_NAME}_{version}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_features])],
        [
            helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="mlmesh-train")
    model.ir_version = 8
    model.doc_string = doc
    helper.set_model_props(
        model,
        {
            "feature_names": ",".join(feature_names),
            "model_name": MODEL_NAME,
            "model_version": version,
            "dataset": "ISLP Caravan (CoIL Challenge 2000)",
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_outputs(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logit, prob = sess.run(["logit", "probability"], {INPUT_NAME: x.astype(np.float32)})
    return {"logit": logit, "probability": prob}


def main() -> None:
    feature_names, x, y = load_caravan()
    ids = np.arange(1, len(y) + 1)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=SEED, stratify=y)
    mean, std = standardisation(x[idx_train])
    xs = (x - mean) / std

    lr = LogisticRegression(C=0.05, max_iter=5000)
    lr.fit(xs[idx_train], y[idx_train])
    v1_layers = [fold_scaling(lr.coef_.T, lr.intercept_, mean, std)]

    mlp = MLPClassifier(
        hidden_layer_sizes=(32, 16),
        activation="relu",
        alpha=1.0,
        learning_rate_init=1e-3,
        max_iter=400,
        early_stopping=True,
        validation_fraction=0.2,
        n_iter_no_change=20,
        random_state=SEED,
    )
    mlp.fit(xs[idx_train], y[idx_train])
    v2_layers = [fold_scaling(mlp.coefs_[0], mlp.intercepts_[0], mean, std)]
    v2_layers += list(zip(mlp.coefs_[1:], mlp.intercepts_[1:]))

    models = {
        "v1": build_graph(v1_layers, "v1", feature_names, "Logistic regression (L2, C=0.05) on standardised features"),
        "v2": build_graph(v2_layers, "v2", feature_names, "MLP 85-32-16-1, ReLU, L2 alpha=1.0, early stopping"),
    }

    card = {"seed": SEED, "n_rows": int(len(y)), "n_train": int(len(idx_train)), "n_held_out": int(len(idx_test)),
            "positive_rate": float(y.mean()), "metrics": {}}
    for version, model in models.items():
        path = HERE / f"{MODEL_NAME}-{version}.onnx"
        onnx.save(model, path)
        p = ort_outputs(model, x[idx_test])["probability"][:, 0]
        # The exported graph must reproduce sklearn on the held-out rows, or the folding is wrong.
        sk = (lr if version == "v1" else mlp).predict_proba(xs[idx_test])[:, 1]
        assert np.max(np.abs(p - sk)) < 1e-4, f"{version}: ONNX export disagrees with sklearn"
        card["metrics"][version] = {
            "held_out_auc": round(float(roc_auc_score(y[idx_test], p)), 4),
            "held_out_log_loss": round(float(log_loss(y[idx_test], p)), 4),
            "held_out_mean_score": round(float(p.mean()), 4),
        }

    held_out = set(idx_test.tolist())
    with open(HERE / "customers.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["user_id", "held_out", "purchase", *feature_names])
        for i in range(len(y)):
            w.writerow([str(ids[i]), int(i in held_out), int(y[i]), *(int(v) for v in x[i])])

    ref_rows = np.array([x[int(u) - 1] for u in REFERENCE_USERS])
    reference = {
        "comment": "onnxruntime outputs for fixed customers; the Rust tests require tract to match within 1e-5",
        "onnxruntime_version": ort.__version__,
        "user_ids": REFERENCE_USERS,
        "inputs": ref_rows.astype(np.float32).tolist(),
        "outputs": {
            v: {k: a[:, 0].astype(float).tolist() for k, a in ort_outputs(m, ref_rows).items()}
            for v, m in models.items()
        },
    }
    (HERE / "reference_outputs.json").write_text(json.dumps(reference, indent=1) + "\n")
    (HERE / "metrics.json").write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
