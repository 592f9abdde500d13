//! One model-inference endpoint as the frontend calls it: the protocol on
//! the wire (OIP REST with JSON or binary tensors, or gRPC) and the input
//! layout read from the model itself (the features are put in that order by
//! `features.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use bytes::Bytes;

use super::error::invalid;
use super::features::StoreColumns;
use super::http::Endpoint;
use super::learnt::Learnt;
use super::{MODEL, UpstreamError};

pub(super) type GrpcClient =
    oip::grpc::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>;

/// The model output the frontend reads: the purchase probability.
pub(super) const PROBABILITY: &str = "probability";

/// How one target is reached.
pub(super) enum Wire {
    Http {
        /// Parsed once: the request URIs are clones, not a parse per call.
        infer_url: Endpoint,
        metadata_url: Endpoint,
        /// The binary tensor data extension: raw FP32 both ways.
        binary: bool,
    },
    Grpc {
        /// One HTTP/2 connection, many streams; under a sidecar, Envoy
        /// balances each call (stream) on its own.
        client: GrpcClient,
        /// For spans and logs.
        url: String,
    },
}

/// How a model wants its input: tensor name and feature order, read from the
/// model's own metadata so the order is never kept by hand in two places.
#[derive(Debug)]
pub(super) struct Layout {
    pub input_name: String,
    /// Comma-separated, as the metadata gave it: sent back with every infer
    /// call (unless `fingerprint` stands for it) so a model with another
    /// order refuses (409 / FAILED_PRECONDITION) instead of mis-scoring.
    pub joined: String,
    /// The order's digest, when the model's metadata gives one: sent instead
    /// of `joined`, 16 bytes per call instead of ~1 KB to escape and parse.
    pub fingerprint: Option<String>,
    pub(super) feature_names: Vec<String>,
    /// Each feature's column.
    pub(super) columns: HashMap<Box<str>, usize>,
    /// Each of the feature store's columns' column here, for the store order
    /// last seen (worked out once, not per decision).
    pub(super) store_columns: StoreColumns,
}

pub(super) struct ModelTarget {
    pub wire: Wire,
    pub model: String,
    /// In `direct` mode the version this target serves even when it cannot say so.
    pub known_version: Option<&'static str>,
    /// Read from the model on first use, and again after the model refuses
    /// it (a new model version rolled out under this target).
    layout: Learnt<Layout>,
}

// === impl ModelTarget ===

impl ModelTarget {
    /// A REST target; `None` unless `base` is an absolute `http://` URL.
    pub fn http(
        base: &str,
        model: &str,
        binary: bool,
        known: Option<&'static str>,
    ) -> Option<Self> {
        let base = base.trim_end_matches('/');
        let wire = Wire::Http {
            infer_url: Endpoint::parse(&format!("{base}/v2/models/{model}/infer"))?,
            metadata_url: Endpoint::parse(&format!("{base}/v2/models/{model}"))?,
            binary,
        };
        Some(Self::with(wire, model, known))
    }

    /// A gRPC target; connects on first use, so the frontend starts before
    /// the model does, and reconnects after the model restarts.
    pub fn grpc(
        url: &str,
        model: &str,
        connect_timeout: Duration,
        known: Option<&'static str>,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout)
            // A dead connection is noticed between calls, not by a user.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let wire = Wire::Grpc {
            client: GrpcClient::new(channel),
            url: url.to_owned(),
        };
        Ok(Self::with(wire, model, known))
    }

    fn with(wire: Wire, model: &str, known_version: Option<&'static str>) -> Self {
        Self {
            wire,
            model: model.to_owned(),
            known_version,
            layout: Learnt::default(),
        }
    }

    /// Where this target is, for logs.
    pub fn describe(&self) -> &str {
        match &self.wire {
            Wire::Http { metadata_url, .. } => metadata_url.as_str(),
            Wire::Grpc { url, .. } => url,
        }
    }

    pub fn cached(&self) -> Option<Arc<Layout>> {
        self.layout.get()
    }

    pub fn remember(&self, layout: Arc<Layout>) {
        self.layout.set(layout);
    }

    /// Drops `stale` unless another request already replaced it.
    pub fn forget(&self, stale: &Arc<Layout>) {
        self.layout.forget(stale);
    }
}

// === impl Layout ===

impl Layout {
    /// From the REST model metadata: the first input and
    /// `parameters.feature_names`.
    pub fn from_metadata(body: &[u8]) -> Result<Self, UpstreamError> {
        let meta: oip::ModelMetadata =
            serde_json::from_slice(body).map_err(|e| invalid(MODEL, e))?;
        let input = meta
            .inputs
            .first()
            .ok_or_else(|| invalid(MODEL, "model metadata lists no inputs"))?;
        let joined = meta
            .parameters
            .as_ref()
            .and_then(|p| p.get(oip::FEATURE_NAMES))
            .and_then(|v| v.as_str())
            .ok_or_else(|| invalid(MODEL, "model metadata lacks parameters.feature_names"))?;
        let fingerprint = meta
            .parameters
            .as_ref()
            .and_then(|p| p.get(oip::FEATURE_FINGERPRINT))
            .and_then(|v| v.as_str());
        Ok(Self::new(&input.name, joined).with_fingerprint(fingerprint))
    }

    /// From Triton's model configuration over gRPC (gRPC's model metadata
    /// has no parameters): the first input and `parameters.feature_names`.
    pub fn from_config(config: Option<oip::grpc::ModelConfig>) -> Result<Self, UpstreamError> {
        let config = config.ok_or_else(|| invalid(MODEL, "the model sent no configuration"))?;
        let input = config
            .input
            .first()
            .ok_or_else(|| invalid(MODEL, "the model configuration lists no inputs"))?;
        let joined = config
            .parameters
            .get(oip::FEATURE_NAMES)
            .map(|p| p.string_value.as_str())
            .ok_or_else(|| {
                invalid(
                    MODEL,
                    "the model configuration lacks parameters.feature_names",
                )
            })?;
        let fingerprint = config
            .parameters
            .get(oip::FEATURE_FINGERPRINT)
            .map(|p| p.string_value.as_str());
        Ok(Self::new(&input.name, joined).with_fingerprint(fingerprint))
    }

    pub(super) fn new(input_name: &str, joined: &str) -> Self {
        let feature_names: Vec<String> = joined.split(',').map(str::to_owned).collect();
        let columns = feature_names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str().into(), i))
            .collect();
        Self {
            input_name: input_name.to_owned(),
            joined: joined.to_owned(),
            fingerprint: None,
            feature_names,
            columns,
            store_columns: StoreColumns::default(),
        }
    }

    /// A model older than the digest gives none: its calls carry the names.
    fn with_fingerprint(mut self, fingerprint: Option<&str>) -> Self {
        self.fingerprint = fingerprint.filter(|f| !f.is_empty()).map(str::to_owned);
        self
    }

    pub fn width(&self) -> usize {
        self.feature_names.len()
    }

    /// The OIP request parameters stating this layout's column order: its
    /// digest, or the names for a model that gives none.
    pub fn parameters(&self) -> oip::Parameters {
        let mut p = oip::Parameters::new();
        match &self.fingerprint {
            Some(f) => p.insert(oip::FEATURE_FINGERPRINT.into(), f.as_str().into()),
            None => p.insert(oip::FEATURE_NAMES.into(), self.joined.as_str().into()),
        };
        p
    }
}

// === the wire, per protocol ===

/// One infer call's request, ready to send (and to mirror).
#[derive(Clone)]
pub(super) enum Outbound {
    Http {
        body: Bytes,
        /// `Inference-Header-Content-Length` when tensors follow in binary.
        json_len: Option<HeaderValue>,
    },
    Grpc(oip::grpc::ModelInferRequest),
}

/// `values` as an infer request in `wire`'s protocol, asking for the
/// probability only.
pub(super) fn outbound(
    wire: &Wire,
    model: &str,
    layout: &Layout,
    values: Vec<f32>,
    request_id: &str,
) -> Outbound {
    let request = oip::Fp32Request {
        id: request_id,
        input: &layout.input_name,
        shape: vec![1, values.len() as i64],
        values,
        parameters: layout.parameters(),
        outputs: &[PROBABILITY],
    };
    match wire {
        Wire::Http { binary, .. } => {
            let (body, json_len) = request.rest(*binary);
            Outbound::Http {
                body: Bytes::from(body),
                json_len: json_len.map(HeaderValue::from),
            }
        }
        Wire::Grpc { .. } => Outbound::Grpc(request.grpc(model)),
    }
}

/// The probability in a REST answer, JSON or with a binary part.
pub(super) fn probability_of_http(
    body: &[u8],
    header_length: Option<&HeaderValue>,
) -> Result<f64, UpstreamError> {
    let (json, binary) = oip::split_body(body, header_length.map(HeaderValue::as_bytes))
        .map_err(|e| invalid(MODEL, e))?;
    let mut res: oip::InferResponse =
        serde_json::from_slice(json).map_err(|e| invalid(MODEL, e))?;
    res.take_binary(binary).map_err(|e| invalid(MODEL, e))?;
    probability(res.output(PROBABILITY))
}

/// The probability in a gRPC answer, raw or typed contents.
pub(super) fn probability_of_grpc(
    res: &oip::grpc::ModelInferResponse,
) -> Result<f64, UpstreamError> {
    let values = oip::output_of_grpc(res, PROBABILITY).map_err(|e| invalid(MODEL, e))?;
    probability(values.as_ref().map(|v| v.0.as_slice()))
}

fn probability(values: Option<&[f32]>) -> Result<f64, UpstreamError> {
    let p = values
        .and_then(|d| d.first().copied())
        .map(f64::from)
        .ok_or_else(|| invalid(MODEL, "no 'probability' output in the answer"))?;
    if p.is_finite() && (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(invalid(MODEL, format!("probability {p} is outside [0, 1]")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new("features", "a,b,c")
    }

    #[test]
    fn probability_must_be_a_probability() {
        let answer = |name: &str, data: &str| {
            format!(
                r#"{{"model_name":"m","outputs":[{{"name":"{name}","datatype":"FP32","shape":[1,1],"data":{data}}}]}}"#
            )
        };
        let p = |body: String| probability_of_http(body.as_bytes(), None);
        assert_eq!(p(answer("probability", "[0.25]")).unwrap(), 0.25);
        for bad in [
            answer("probability", "[1.5]"),
            answer("logit", "[0.1]"),
            answer("probability", "[]"),
            answer("probability", "[1e39]"),
            "not json".to_owned(),
        ] {
            assert_eq!(p(bad).unwrap_err().kind(), "invalid");
        }
    }

    #[test]
    fn every_protocol_carries_the_same_values_and_order() {
        let layout = layout();
        let values = vec![1.0, 2.5, -3.0];
        let url = Endpoint::parse("http://m:8080/").unwrap();
        let json = Wire::Http {
            infer_url: url.clone(),
            metadata_url: url.clone(),
            binary: false,
        };
        let Outbound::Http { body, json_len } = outbound(&json, "m", &layout, values.clone(), "r1")
        else {
            panic!("REST wire, REST request")
        };
        assert!(json_len.is_none());
        let req: oip::InferRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(req.inputs[0].data.as_ref().unwrap().0, values);
        assert_eq!(req.parameters.unwrap()[oip::FEATURE_NAMES], "a,b,c");
        // With the model's digest, the digest alone.
        let digested = Layout::new("features", "a,b,c").with_fingerprint(Some("00ff"));
        let Outbound::Http { body, .. } = outbound(&json, "m", &digested, values.clone(), "r1")
        else {
            panic!("REST wire, REST request")
        };
        let req: oip::InferRequest = serde_json::from_slice(&body).unwrap();
        let parameters = req.parameters.unwrap();
        assert_eq!(parameters[oip::FEATURE_FINGERPRINT], "00ff");
        assert!(
            parameters.get(oip::FEATURE_NAMES).is_none(),
            "{parameters:?}"
        );

        let binary = Wire::Http {
            infer_url: url.clone(),
            metadata_url: url,
            binary: true,
        };
        let Outbound::Http { body, json_len } =
            outbound(&binary, "m", &layout, values.clone(), "r1")
        else {
            panic!("REST wire, REST request")
        };
        let (head, raw) = oip::split_body(&body, json_len.as_ref().map(|v| v.as_bytes())).unwrap();
        let mut req: oip::InferRequest = serde_json::from_slice(head).unwrap();
        req.take_binary(raw).unwrap();
        assert_eq!(req.inputs[0].data.as_ref().unwrap().0, values);
        assert!(req.binary_data_output().unwrap());
    }
}
