"""KServe's Python model server serving an ONNX file with onnxruntime (bench-only).

The KServe way to serve a custom model: a `kserve.Model` whose predict runs
one onnxruntime session on one thread, under KServe's own ModelServer (REST
V2 on --http_port, gRPC V2 on --grpc_port). Used by scripts/bench-peers.sh;
never shipped.

    python kserve_onnx.py --model_path M.onnx --model_name propensity --http_port P --grpc_port G --workers 1
"""

import argparse

import kserve
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxModel(Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        first = self.session.get_inputs()[0]
        self.input = first.name
        self.width = first.shape[1]
        self.ready = True
        return self.ready

    def get_input_types(self):
        return [{"name": self.input, "datatype": "FP32", "shape": [-1, self.width]}]

    def get_output_types(self):
        return [{"name": "probability", "datatype": "FP32", "shape": [-1, 1]}]

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        (probability,) = self.session.run(["probability"], {self.input: x})
        output = InferOutput(name="probability", shape=list(probability.shape), datatype="FP32")
        # Binary out when the client asked (REST binary_data_output, gRPC raw contents).
        binary = payload.use_binary_outputs
        output.set_data_from_numpy(probability, binary_data=binary)
        return InferResponse(
            model_name=self.name,
            infer_outputs=[output],
            response_id=payload.id,
            use_binary_outputs=binary,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    ModelServer().start([OnnxModel(args.model_name, args.model_path)])
