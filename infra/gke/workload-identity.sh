#!/usr/bin/env bash
# The Google service account the pipeline's pods, Dataflow workers and the Vertex AI training job
# act as, its roles, and the Workload Identity binding KSA kubeflow/deblur-pipeline -> GSA; and
# the read-only account the KFP UI server reads the run page's artifacts on gs:// as.
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
# Runs started from the KFP UI's form run as KFP's default account, pipeline-runner, unless the
# form names another: a PipelineSpec cannot carry a service account. Bind it to the same
# Google service account, so those runs read and write the bucket too.
gcloud iam service-accounts add-iam-policy-binding "$sa" \
    --member="serviceAccount:$PROJECT.svc.id.goog[$KFP_NAMESPACE/pipeline-runner]" \
    --role=roles/iam.workloadIdentityUser
kubectl -n "$KFP_NAMESPACE" annotate serviceaccount pipeline-runner --overwrite \
    iam.gke.io/gcp-service-account="$sa"

# The KFP UI server reads the run page's Markdown/HTML artifacts (and the Metrics' files) from
# gs:// itself, with its own identity (frontend/server: the Google Cloud Storage client with
# application default credentials), not the pipeline's. Give its Kubernetes service account
# (kubeflow/ml-pipeline-ui) a Google service account that may read the pipeline root only.
ui_sa="$UI_GSA@$PROJECT.iam.gserviceaccount.com"
gcloud iam service-accounts create "$UI_GSA" --display-name="KFP UI (reads run artifacts)" \
    || echo "$ui_sa exists"
root_prefix="pipeline_root/"   # = kubeflow.pipeline_root of the config, below gs://$BUCKET/
gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --member="serviceAccount:$ui_sa" \
    --role=roles/storage.objectViewer \
    --condition="title=kfp-ui-pipeline-root,expression=resource.name.startsWith('projects/_/buckets/$BUCKET/objects/$root_prefix')"
gcloud iam service-accounts add-iam-policy-binding "$ui_sa" \
    --member="serviceAccount:$PROJECT.svc.id.goog[$KFP_NAMESPACE/$UI_KSA]" \
    --role=roles/iam.workloadIdentityUser
kubectl -n "$KFP_NAMESPACE" annotate serviceaccount "$UI_KSA" --overwrite \
    iam.gke.io/gcp-service-account="$ui_sa"
kubectl -n "$KFP_NAMESPACE" rollout restart deployment/ml-pipeline-ui   # picks up the identity
