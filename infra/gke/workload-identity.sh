#!/usr/bin/env bash
# The Google service account the pipeline's pods, Dataflow workers and the Vertex AI training job
# act as, its roles, and the Workload Identity binding KSA kubeflow/deblur-pipeline -> GSA.
set -euo pipefail
source "$(dirname "$0")/env.sh"
sa="$GSA@$PROJECT.iam.gserviceaccount.com"

gcloud iam service-accounts create "$GSA" --display-name="deblur pipeline" || echo "$sa exists"
# pipeline root, data, Beam temp files
gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --member="serviceAccount:$sa" \
    --role=roles/storage.objectAdmin
# launch Dataflow jobs (from the DeblurIngest/StatisticsGen pods) and run as their workers
for role in roles/dataflow.admin roles/dataflow.worker roles/aiplatform.user \
            roles/artifactregistry.reader; do
  gcloud projects add-iam-policy-binding "$PROJECT" --member="serviceAccount:$sa" --role="$role" \
      --condition=None >/dev/null
done
# start Dataflow workers / Vertex jobs that run as this same account
gcloud iam service-accounts add-iam-policy-binding "$sa" --member="serviceAccount:$sa" \
    --role=roles/iam.serviceAccountUser
# Workload Identity: the Kubernetes SA may act as the Google SA
gcloud iam service-accounts add-iam-policy-binding "$sa" \
    --member="serviceAccount:$PROJECT.svc.id.goog[$KFP_NAMESPACE/$KSA]" \
    --role=roles/iam.workloadIdentityUser
kubectl -n "$KFP_NAMESPACE" annotate serviceaccount "$KSA" --overwrite \
    iam.gke.io/gcp-service-account="$sa"
