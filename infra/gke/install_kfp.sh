#!/usr/bin/env bash
# Kubeflow Pipelines standalone, backend $KFP_VERSION (2.5.0: the v2beta1 API of the kfp 2.5 SDK,
# a run form that shows 0 defaults, recurring runs that follow the pipeline's newest version;
# `deblur compile` writes schemaVersion 2.1.0, which it runs).
# The manifests are the pinned kustomize bases of infra/gke/kfp/ (env/dev: in-cluster MySQL and
# MinIO for KFP's own metadata; the pipeline's artifacts go to gs:// via the pipeline root).
set -euo pipefail
source "$(dirname "$0")/env.sh"
here="$(cd "$(dirname "$0")" && pwd)"

kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$KFP_VERSION"
kubectl wait --for condition=established --timeout=120s crd/applications.app.k8s.io
kubectl apply -k "$here/kfp"
kubectl -n "$KFP_NAMESPACE" wait --for=condition=available --timeout=900s deployment/ml-pipeline
echo "KFP is up; reach the API/UI with:"
echo "  kubectl port-forward -n $KFP_NAMESPACE svc/ml-pipeline-ui 8080:80   # then --host http://localhost:8080"
