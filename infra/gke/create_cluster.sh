#!/usr/bin/env bash
# A GKE Standard cluster for the pipeline: a CPU pool (KFP itself and the light tasks), a TPU v5e
# pool (the Trainer, 2x2 = 4 chips, one host) and an L4 GPU pool (the DeblurEvaluator); the
# accelerator pools scale from 0. Also the bucket and the image repository.
# Not run from the development machines (no cloud access there); read it before running it.
set -euo pipefail
source "$(dirname "$0")/env.sh"

gcloud config set project "$PROJECT"
gcloud services enable container.googleapis.com dataflow.googleapis.com aiplatform.googleapis.com \
    artifactregistry.googleapis.com storage.googleapis.com compute.googleapis.com

# data, pipeline root, Beam temp files (the same region as the cluster and Dataflow)
gcloud storage buckets create "gs://$BUCKET" --location="$REGION" --uniform-bucket-level-access \
    || echo "bucket gs://$BUCKET exists"
gcloud artifacts repositories create "$REPO" --repository-format=docker --location="$REGION" \
    || echo "repository $REPO exists"

# CPU pool = the default pool. Workload Identity on: pods act as Google service accounts
# (infra/gke/workload-identity.sh), no keys.
gcloud container clusters create "$CLUSTER" --zone="$ZONE" --release-channel=regular \
    --machine-type=e2-standard-8 --num-nodes=2 \
    --enable-autoscaling --min-nodes=1 --max-nodes=4 \
    --workload-pool="$PROJECT.svc.id.goog" --scopes=cloud-platform

# TPU v5e single-host slice: pods select it with cloud.google.com/gke-tpu-accelerator=
# tpu-v5-lite-podslice and cloud.google.com/gke-tpu-topology=2x2 and request google.com/tpu: 4
# (kubeflow.resources.Trainer). GKE taints it google.com/tpu and tolerates that taint for pods
# that request google.com/tpu.
gcloud container node-pools create tpu-v5e-2x2 --cluster="$CLUSTER" --zone="$ZONE" \
    --machine-type=ct5lp-hightpu-4t --tpu-topology=2x2 --num-nodes=0 \
    --enable-autoscaling --min-nodes=0 --max-nodes=1 --workload-metadata=GKE_METADATA

# L4 GPU pool for the evaluator (cloud.google.com/gke-accelerator=nvidia-l4, nvidia.com/gpu: 1);
# GKE installs the driver.
gcloud container node-pools create gpu-l4 --cluster="$CLUSTER" --zone="$ZONE" \
    --machine-type=g2-standard-8 --accelerator=type=nvidia-l4,count=1,gpu-driver-version=latest \
    --num-nodes=0 --enable-autoscaling --min-nodes=0 --max-nodes=2 --workload-metadata=GKE_METADATA

gcloud container clusters get-credentials "$CLUSTER" --zone="$ZONE"
kubectl get nodes
