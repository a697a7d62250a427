"""deploy/kserve/: every manifest validates against KServe's CRD schemas (strictly: unknown fields are errors, as
`kubectl --validate=strict`), carries what OpenShift AI needs, and its container args (the runtime's, then the
InferenceService's, {{.Name}} substituted) parse and validate with Pagoda's own server CLI.

The CRDs are ../shared/kserve/ beside the repository (PAGODA_KSERVE_CRDS overrides); without them the schema
tests skip.
"""

from __future__ import annotations

import functools
import glob
import os

import pytest
import yaml

from pagoda.entrypoints.openai import cli_args
from pagoda.entrypoints.openai.api_server import make_parser

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KSERVE_DIR = os.path.join(REPO, "deploy", "kserve")
CRD_DIR = os.environ.get("PAGODA_KSERVE_CRDS") or os.path.join(os.path.dirname(REPO), "shared", "kserve")
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
CRDS = {("serving.kserve.io/v1alpha1", "ServingRuntime"): ("serving.kserve.io_servingruntimes.yaml", "v1alpha1"),
        ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): ("serving.kserve.io_clusterservingruntimes.yaml",
                                                                  "v1alpha1"),
        ("serving.kserve.io/v1beta1", "InferenceService"): ("serving.kserve.io_inferenceservices.yaml", "v1beta1")}
SEED_ARGS = ["--port=8080", "--model=/mnt/models", "--served-model-name={{.Name}}"]
MANIFESTS = sorted(glob.glob(os.path.join(KSERVE_DIR, "*.yaml")))


def _load(path: str) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.load_all(f, Loader=Loader) if doc]


def _docs(kind: str) -> list[tuple[str, dict]]:
    return [(os.path.basename(p), d) for p in MANIFESTS for d in _load(p) if d.get("kind") == kind]


def _strict(schema):
    """additionalProperties: False wherever a schema lists properties and allows nothing else (kubectl's strict)."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema and not schema.get(
                "x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


@functools.lru_cache(maxsize=None)
def _validator(api_version: str, kind: str):
    import jsonschema

    file, version = CRDS[(api_version, kind)]
    path = os.path.join(CRD_DIR, file)
    if not os.path.isfile(path):
        pytest.skip(f"KServe CRDs not found at {CRD_DIR} (set PAGODA_KSERVE_CRDS)")
    with open(path) as f:
        crd = yaml.load(f, Loader=Loader)
    schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version)
    return jsonschema.Draft7Validator(_strict(schema))


def test_the_manifests_are_all_there():
    names = {os.path.basename(p) for p in MANIFESTS}
    assert {"servingruntime.yaml", "clusterservingruntime.yaml", "inferenceservice.yaml", "data-connection.yaml",
            "inferenceservice-ngram.yaml", "inferenceservice-draft.yaml", "inferenceservice-multimodal.yaml",
            "inferenceservice-tensor-parallel.yaml", "inferenceservice-s3-direct.yaml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=os.path.basename)
def test_manifest_validates_against_kserve_crds(path):
    docs = _load(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key == ("v1", "Secret"):
            assert doc["metadata"]["labels"]["opendatahub.io/dashboard"] == "true"
            assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_S3_ENDPOINT", "AWS_S3_BUCKET"} <= set(
                doc["stringData"])
            continue
        assert key in CRDS, f"{os.path.basename(path)}: unexpected {key}"
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in _validator(*key).iter_errors(doc)]
        assert not errors, f"{os.path.basename(path)}:\n" + "\n".join(errors)


def test_the_bad_manifests_the_recipe_names_fail():
    """The validation is real: a misspelt field and a string port are rejected."""
    (_, runtime), = _docs("ServingRuntime")
    bad = yaml.safe_load(yaml.safe_dump(runtime))
    bad["spec"]["multiModell"] = False
    bad["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    messages = [e.message for e in _validator("serving.kserve.io/v1alpha1", "ServingRuntime").iter_errors(bad)]
    assert any("multiModell" in m for m in messages) and any("'8080' is not of type 'integer'" in m for m in messages)


@pytest.mark.parametrize("kind", ["ServingRuntime", "ClusterServingRuntime"])
def test_runtime_is_the_seeds(kind):
    (_, runtime), = _docs(kind)
    meta, spec = runtime["metadata"], runtime["spec"]
    assert meta["labels"]["opendatahub.io/dashboard"] == "true"
    assert meta["annotations"]["opendatahub.io/recommended-accelerators"] == '["nvidia.com/gpu"]'
    assert meta["annotations"]["openshift.io/display-name"]
    assert spec["annotations"] == {"prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}
    assert spec["multiModel"] is False and {"name": "pagoda", "autoSelect": True} in spec["supportedModelFormats"]
    (container,) = spec["containers"]
    assert container["command"] == ["python", "-m", "pagoda.entrypoints.openai.api_server"]
    assert container["args"] == SEED_ARGS
    assert {"name": "HF_HOME", "value": "/tmp/hf_home"} in container["env"]
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]


def _container_args(isvc: dict) -> list[str]:
    (_, runtime), = _docs("ServingRuntime")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["modelFormat"]["name"] == "pagoda"
    args = runtime["spec"]["containers"][0]["args"] + model.get("args", [])  # KServe appends the ISVC's args
    return [a.replace("{{.Name}}", isvc["metadata"]["name"]) for a in args]


@pytest.mark.parametrize("name,isvc", _docs("InferenceService"), ids=[n for n, _ in _docs("InferenceService")])
def test_inference_service_args_parse_with_pagodas_cli(name, isvc):
    predictor = isvc["spec"]["predictor"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in predictor["tolerations"]
    resources = predictor["model"]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
    storage = predictor["model"].get("storage")
    if storage is not None:
        assert storage["key"] == "aws-connection-my-storage" and storage["path"].startswith("models/")
    args = make_parser().parse_args(_container_args(isvc))
    assert args.port == 8080 and args.served_model_name == [isvc["metadata"]["name"]]
    if storage is not None:  # KServe's storage initializer fills /mnt/models
        assert args.model == "/mnt/models"
    else:  # Pagoda downloads the model itself
        assert args.model.startswith("s3://")
    cli_args.validate_args(args)  # every engine option Pagoda checks before loading a model
    if name == "inferenceservice-tensor-parallel.yaml":
        assert args.tensor_parallel_size == int(resources["limits"]["nvidia.com/gpu"]) == 2  # one rank per GPU
    if name == "inferenceservice-draft.yaml":
        assert args.speculative_model == "/mnt/models/draft" and args.num_speculative_tokens == 5
    if name == "inferenceservice-ngram.yaml":
        assert args.speculative_model == "[ngram]" and args.ngram_prompt_lookup_max == 3
    if name == "inferenceservice-multimodal.yaml":
        assert args.trust_remote_code is True
