"""Triton's own Python clients against model-inference, used exactly as
their documentation shows: over HTTP defaults first (binary tensors), then
JSON only; then the gRPC client (raw tensors, as it always sends them).
Prints one JSON line per check; exits non-zero on the first failure.

Usage: triton_client.py HTTP_URL GRPC_URL MODEL VERSION REFERENCE_JSON
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url, grpc_url, model, version, reference_path = sys.argv[1:6]
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
columns = mm["parameters"]["feature_names"]
check("model config: the column order in parameters", config["parameters"]["feature_names"]["string_value"] == columns, config)


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

# gRPC: the same checks with Triton's gRPC client.
g = grpcclient.InferenceServerClient(url=grpc_url)
check("grpc: server live", g.is_server_live())
check("grpc: server ready", g.is_server_ready())
check("grpc: model ready", g.is_model_ready(model) and g.is_model_ready(model, version))
gmeta = g.get_server_metadata(as_json=True)
check("grpc: server metadata extensions", "statistics" in gmeta["extensions"], gmeta)
gm = g.get_model_metadata(model, as_json=True)
check("grpc: model metadata", gm["inputs"][0]["name"] == input_name and gm["versions"] == [version], gm)
gc = g.get_model_config(model, as_json=True)["config"]
check("grpc: model config", gc["input"][0]["dims"] == [str(rows.shape[1])] and gc["input"][0]["data_type"] == "TYPE_FP32", gc)
# Decoded with Triton's own model_config.proto: proves the field numbers.
check("grpc: model config parameters", gc["parameters"]["feature_names"]["string_value"] == columns, gc)

ginp = grpcclient.InferInput(input_name, list(rows.shape), "FP32")
ginp.set_data_from_numpy(rows)
res = g.infer(model, [ginp], request_id="grpc-defaults")
check("grpc: id echoed", res.get_response().id == "grpc-defaults")
check("grpc: 8 rows equal the reference", np.allclose(res.as_numpy("probability").reshape(-1), want, atol=1e-5))
res = g.infer(model, [ginp], outputs=[grpcclient.InferRequestedOutput("probability")], model_version=version)
check("grpc: output filter", [o.name for o in res.get_response().outputs] == ["probability"])
check("grpc: output filter values", np.allclose(res.as_numpy("probability").reshape(-1), want, atol=1e-5))

gbad = grpcclient.InferInput(input_name, [1, rows.shape[1] - 1], "FP32")
gbad.set_data_from_numpy(rows[:1, :-1])
try:
    g.infer(model, [gbad])
    check("grpc: bad shape refused", False)
except InferenceServerException as e:
    check("grpc: bad shape refused", e.status() == "StatusCode.INVALID_ARGUMENT" and "features per row" in e.message(), (e.status(), e.message()))

gs = g.get_inference_statistics(model, as_json=True)["model_stats"][0]
check("grpc: statistics", int(gs["inference_stats"]["success"]["count"]) >= 7 and gs["name"] == model, gs)
print(json.dumps({"done": True}))
