#!/usr/bin/env bash
# Validates every manifest under conf/ offline: Kubernetes kinds against the Kubernetes schemas
# (kubernetes-validate, strict), NetworkAttachmentDefinitions against the CRD's own schema in
# conf/multihome-daemonset.yml, and each NAD's spec.config as a CNI config (JSON, a name-able
# conf or conflist with a type).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check kubernetes-validate jsonschema pyyaml 2>&1 | grep -v "as the .root. user" || true
manifests=(conf/*.yml conf/*.yaml)
kubernetes-validate --strict --quiet "${manifests[@]}"

python3 - "${manifests[@]}" <<'PY'
import json, sys
import jsonschema, yaml

docs = {f: [d for d in yaml.safe_load_all(open(f)) if d] for f in sys.argv[1:]}
crd = next(d for ds in docs.values() for d in ds if d.get("kind") == "CustomResourceDefinition")
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
nads = 0
for f, ds in docs.items():
    for d in ds:
        if d.get("kind") != "NetworkAttachmentDefinition":
            continue
        jsonschema.validate(d, schema)
        config = json.loads(d["spec"]["config"])
        plugins = config.get("plugins", [config])
        assert plugins and all(p.get("type") for p in plugins), f"{f}: {d['metadata']['name']}: a plugin without type"
        nads += 1
print(f"validate-manifests: {sum(len(d) for d in docs.values())} documents valid, {nads} NetworkAttachmentDefinitions against the CRD schema")
PY
