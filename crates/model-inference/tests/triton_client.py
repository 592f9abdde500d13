"""Triton's own Python clients against model-inference, used exactly as
their documentation shows: defaults first (binary tensors), then JSON only.
Prints one JSON line per check; exits non-zero on the first failure.

Usage: triton_client.py HTTP_URL MODEL VERSION REFERENCE_JSON
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url, model, version, reference_path = sys.argv[1:5]
with open(reference_path) as f:
    reference = json.load(f)
rows = np.array(reference["inputs"][:8], dtype=np.float32)
want = np.array(reference["outputs"][version]["probability"][:8], dtype=np.float32)

client = httpclient.InferenceServerClient(url=url)


def check(name, ok, detail=""):
    print(json.dumps({"check": name, "ok": bool(ok), "detail": str(detail)}), flush=True)
    if not ok:
        sys.exit(1)


check("server live", client.is_server_live())
check("server ready", client.is_server_ready())
check("model ready", client.is_model_ready(model))
check("model ready (version)", client.is_model_ready(model, version))
meta = client.get_server_metadata()
check("server metadata extensions", "binary_tensor_data" in meta["extensions"], meta)
mm = client.get_model_metadata(model)
check("model metadata", mm["inputs"][0]["name"] == "features" and mm["versions"] == [version], mm)
input_name = mm["inputs"][0]["name"]
config = client.get_model_config(model)
check("model config", config["input"][0]["dims"] == [rows.shape[1]] and config["max_batch_size"] >= 8, config)


def infer(binary_in, outputs, request_id):
    inp = httpclient.InferInput(input_name, list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows, binary_data=binary_in)
    return client.infer(model, [inp], outputs=outputs, request_id=request_id)


# Defaults: binary input, no outputs named (the client asks for every output in binary).
res = infer(True, None, "defaults")
got = res.as_numpy("probability").reshape(-1)
check("defaults: id echoed", res.get_response()["id"] == "defaults", res.get_response())
check("defaults: 8 rows equal the reference", np.allclose(got, want, atol=1e-5), got - want)
check("defaults: logit too", res.as_numpy("logit").shape == (8, 1))

# Binary input, one output asked for in binary (InferRequestedOutput's default).
res = infer(True, [httpclient.InferRequestedOutput("probability")], "filtered")
check("output filter: only probability", [o["name"] for o in res.get_response()["outputs"]] == ["probability"], res.get_response())
check("output filter: binary", "binary_data_size" in res.get_output("probability")["parameters"], res.get_output("probability"))
check("output filter: values", np.allclose(res.as_numpy("probability").reshape(-1), want, atol=1e-5))

# JSON only, both ways.
res = infer(False, [httpclient.InferRequestedOutput("probability", binary_data=False)], "json")
out = res.get_output("probability")
check("json only: data in JSON", "data" in out and "parameters" not in out, out)
check("json only: values", np.allclose(res.as_numpy("probability").reshape(-1), want, atol=1e-5))

# Mixed: JSON input, binary output.
res = infer(False, [httpclient.InferRequestedOutput("probability", binary_data=True)], "mixed")
check("mixed: values", np.allclose(res.as_numpy("probability").reshape(-1), want, atol=1e-5))

# The versioned path.
inp = httpclient.InferInput(input_name, list(rows.shape), "FP32")
inp.set_data_from_numpy(rows)
res = client.infer(model, [inp], model_version=version)
check("versioned infer", res.get_response()["model_version"] == version)

# A wrong shape is the server's clear 400, raised by the client.
bad = httpclient.InferInput(input_name, [1, rows.shape[1] - 1], "FP32")
bad.set_data_from_numpy(rows[:1, :-1])
try:
    client.infer(model, [bad])
    check("bad shape refused", False)
except InferenceServerException as e:
    check("bad shape refused", "features per row" in e.message(), e.message())

# Statistics: the five successful requests above are counted.
stats = client.get_inference_statistics(model)
s = stats["model_stats"][0]
check("statistics", s["name"] == model and s["inference_stats"]["success"]["count"] >= 5 and s["inference_count"] >= 40 and s["execution_count"] >= 1, s)
check("statistics (versioned)", client.get_inference_statistics(model, version)["model_stats"][0]["version"] == version)
check("statistics (all models)", len(client.get_inference_statistics()["model_stats"]) == 1)
print(json.dumps({"done": True}))
