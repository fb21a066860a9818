# Shared settings of the infra/gke scripts: `source infra/gke/env.sh` after editing, or export
# these before running a script. Defaults match infra/kubeflow.example.yaml.
export PROJECT="${PROJECT:-my-project}"
export REGION="${REGION:-us-central1}"
# A zone with both TPU v5e (ct5lp) and L4 GPUs; check `gcloud compute tpus accelerator-types
# list --zone=$ZONE` and `gcloud compute accelerator-types list --filter=zone:$ZONE`.
export ZONE="${ZONE:-us-central1-a}"
export CLUSTER="${CLUSTER:-deblur}"
export BUCKET="${BUCKET:-my-deblur-bucket}"
export REPO="${REPO:-deblur}"                        # Artifact Registry repository
export IMAGE="${IMAGE:-$REGION-docker.pkg.dev/$PROJECT/$REPO/deblur-pipeline:0.1.0}"
export GSA="${GSA:-deblur-pipeline}"                 # Google service account (name)
export KSA="${KSA:-deblur-pipeline}"                 # Kubernetes service account = kubeflow.service_account
export KFP_NAMESPACE="${KFP_NAMESPACE:-kubeflow}"
export KFP_VERSION="${KFP_VERSION:-2.0.5}"           # backend matching the kfp 2.5 SDK (v2beta1 API)
