"""MLServer custom runtime serving an ONNX file with onnxruntime (bench-only).

MLServer has no ONNX runtime of its own; this is the smallest honest one:
one onnxruntime session on one thread, the request's first input decoded by
MLServer's own NumpyCodec, the `probability` output returned. Used by
scripts/bench-peers.sh; never shipped.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self.settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (probability,) = self._session.run(["probability"], {self._input: x})
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output("probability", probability)],
        )
